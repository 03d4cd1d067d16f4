"""The porting guide's three workflows, run end to end on synthetic data through ``prepare(transform=...)`` with
no glue beyond the pipeline definition, each next to the peer pipeline it ports (MONAI spleen tutorial, TorchIO
Queue recipe, nnU-Net-style preprocessing) and compared with it where both exist."""

import json

import numpy as np
import pytest
import torch

import medstack
from medstack import transforms as T
from medstack.data import PatchDataset, PatchLoader, prepare
from medstack.geometry import XYZ
from medstack.patches import LabelSampler
from medstack.testing import axis_code_affine


@pytest.fixture(scope="module")
def ct_cases(tmp_path_factory):
    """Three CT-like cases (LPS, 0.8 x 0.8 x 2.5 mm): air -1000 HU, a body ~40 HU, an organ labelled 1."""
    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(0)
    cases = []
    for n in range(3):
        shape = (20 + 2 * n, 40, 44)
        d, h, w = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
        body = ((h - 20) / 15.0) ** 2 + ((w - 22) / 17.0) ** 2 < 1
        organ = body & (((d - 10) / 5.0) ** 2 + ((h - 18) / 5.0) ** 2 + ((w - 20) / 6.0) ** 2 < 1)
        img = np.where(body, 40 + rng.normal(0, 10, shape), -1000).astype(np.int16)
        img[organ] += 60
        aff = axis_code_affine("LPS", (0.8, 0.8, 2.5), (10.0 * n, -5, 3))
        ip, lp = root / f"ct{n}.nii.gz", root / f"ct{n}_seg.nii.gz"
        medstack.save(medstack.Volume(img[None], aff), ip)
        medstack.save(medstack.Volume(organ[None].astype(np.uint8), aff), lp)
        cases.append({"id": f"ct{n}", "image": str(ip), "label": str(lp)})
    return cases


def _stored(store, case_id, name="image"):
    return medstack.load(store / f"{case_id}.h5", name=name)


# -- 1. MONAI spleen tutorial -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI's LoadImage registers every reader it knows
def test_monai_spleen_pipeline_ported(ct_cases, tmp_path):
    # medstack: the pipeline definition is the port (6 lines); prepare + PatchDataset + PatchLoader replace
    # CacheDataset + RandCropByPosNegLabeld + DataLoader (3 lines)
    spleen = T.Compose([
        T.ScaleIntensityRange(keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        T.CropForeground(keys=("image", "label"), source_key="image"),
        T.Orient(keys=("image", "label"), axcodes="RAS"),
        T.Spacing(keys=("image", "label"), pixdim=XYZ(1.5, 1.5, 2.0)),   # MONAI's pixdim is (x, y, z)
    ])  # fmt: skip
    prepare(ct_cases, tmp_path / "spleen", transform=spleen, workers=1)
    ds = PatchDataset(tmp_path / "spleen", LabelSampler((12, 12, 12), pos=1, neg=1), samples_per_volume=4, seed=0)
    batch = next(iter(PatchLoader(ds, batch_size=2, num_threads=1)))
    assert batch["image"].shape == (2, 1, 12, 12, 12) and batch["label"].shape == (2, 1, 12, 12, 12)

    # the MONAI original on the same files: same grid (orientation, spacing, cropped field of view)
    mt = pytest.importorskip("monai.transforms")
    monai_pre = mt.Compose([
        mt.LoadImaged(keys=["image", "label"], reader="NibabelReader"),
        mt.EnsureChannelFirstd(keys=["image", "label"]),
        mt.ScaleIntensityRanged(keys=["image"], a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys=["image", "label"], source_key="image"),
        mt.Orientationd(keys=["image", "label"], axcodes="RAS"),
        mt.Spacingd(keys=["image", "label"], pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
    ])  # fmt: skip
    for case in ct_cases:
        ref = monai_pre({"image": case["image"], "label": case["label"]})
        ours = _stored(tmp_path / "spleen", case["id"])
        ref_aff = np.asarray(ref["image"].affine)
        assert ours.orientation == "RAS"
        np.testing.assert_allclose(ours.spacing, (2.0, 1.5, 1.5), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(ref_aff[:3, :3], axis=0), (1.5, 1.5, 2.0), atol=1e-6)
        ref_shape = tuple(ref["image"].shape[1:])[::-1]  # MONAI (x, y, z) -> (D, H, W)
        assert all(abs(a - b) <= 1 for a, b in zip(ours.spatial_shape, ref_shape)), (ours.spatial_shape, ref_shape)
        # the field of view: first voxel centres within one output voxel of each other
        assert np.all(np.abs(ours.affine[:3, 3] - ref_aff[:3, 3]) <= np.array([1.5, 1.5, 2.0]))
        # the intensities after ScaleIntensityRange: the same range and nearly the same mean
        assert float(ours.to_numpy().max()) <= 1.0 + 1e-6 and float(ours.to_numpy().min()) >= -1e-6
        assert abs(float(ours.to_numpy().mean()) - float(ref["image"].mean())) < 0.05


# -- 2. TorchIO Queue recipe ----------------------------------------------------------------------------------------


def test_torchio_queue_recipe_ported(ct_cases, tmp_path):
    prepare(ct_cases, tmp_path / "tio", workers=1, transform=T.Compose([
        T.Orient(keys=("image", "label"), axcodes="RAS"),          # tio.ToCanonical()
        T.Spacing(keys=("image", "label"), pixdim=1.5),            # tio.Resample(1.5)
        T.ZScore(keys="image", nonzero=True, background="normalize"),  # tio.ZNormalization(masking_method=nonzero)
    ]))  # fmt: skip
    augment = T.Compose([T.RandomAffine(), T.RandomFlip(), T.RandomNoise()])
    ds = PatchDataset(tmp_path / "tio", LabelSampler(16, ratios={0: 1, 1: 1}), samples_per_volume=4, transform=augment,
                      seed=0)  # fmt: skip
    loader = PatchLoader(ds, batch_size=4, num_threads=2)
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["image"].shape == (4, 1, 16, 16, 16)

    # the TorchIO original: the same orientation and spacing, the field of view within a voxel (TorchIO's Resample
    # floors the size and centres the grid; medstack rounds the size and keeps the outer voxel edges, as SimpleITK)
    tio = pytest.importorskip("torchio")
    pre = tio.Compose([tio.ToCanonical(), tio.Resample(1.5), tio.ZNormalization(masking_method=lambda x: x != 0)])
    for case in ct_cases:
        subject = pre(tio.Subject(image=tio.ScalarImage(case["image"]), label=tio.LabelMap(case["label"])))
        ours = _stored(tmp_path / "tio", case["id"])
        ref_aff = np.asarray(subject["image"].affine)
        np.testing.assert_allclose(ours.affine[:3, :3], ref_aff[:3, :3], atol=1e-6)
        ref_shape = tuple(subject["image"].shape[1:])[::-1]
        assert all(abs(a - b) <= 1 for a, b in zip(ours.spatial_shape, ref_shape)), (ours.spatial_shape, ref_shape)
        centre = ours.voxel_to_world([(np.array(ours.spatial_shape[::-1]) - 1) / 2])[0]
        ref_centre = ref_aff[:3, :3] @ ((np.array(ref_shape[::-1]) - 1) / 2) + ref_aff[:3, 3]
        assert np.all(np.abs(centre - ref_centre) <= 1.5)
        # z-scored with nonzero statistics, every voxel shifted (TorchIO's semantics): air is no longer 0
        data, ref = ours.to_numpy()[0], subject["image"].data[0].numpy()
        assert abs(float(np.median(data)) - float(np.median(ref))) < 0.1
        assert abs(float(data.min()) - float(ref.min())) < 0.1


# -- 3. nnU-Net-style preprocessing: crop to nonzero, clip to foreground percentiles, z-score, resample ------------------


def test_nnunet_style_preprocessing_ported(ct_cases, tmp_path):
    nnunet = T.Compose([
        T.CropForeground(keys=("image", "label"), source_key="image", select_fn=lambda x: x > -500),
        T.ClipPercentile(keys="image", lower=0.5, upper=99.5),
        T.NormalizeIntensity(keys="image"),
        T.Spacing(keys=("image", "label"), pixdim=(2.5, 1.0, 1.0)),   # (D, H, W): slice step first
    ])  # fmt: skip
    manifest = prepare(ct_cases, tmp_path / "nnunet", transform=nnunet, workers=1)
    entries = {e["id"]: e for e in json.loads(manifest.read_text())["cases"]}
    for case in ct_cases:
        img = _stored(tmp_path / "nnunet", case["id"])
        np.testing.assert_allclose(img.spacing, (2.5, 1.0, 1.0), atol=1e-6)
        assert entries[case["id"]]["applied"]["transform"].startswith("Compose(")
        # cropped to the body: no air column left at the borders of the rows/columns
        source = medstack.load(case["image"])
        assert img.spatial_shape[1] * 1.0 < source.spatial_shape[1] * 0.8
        data = img.to_numpy()
        assert abs(float(data.mean())) < 0.1 and abs(float(data.std()) - 1) < 0.1
        lab = _stored(tmp_path / "nnunet", case["id"], "label").to_numpy()
        assert set(np.unique(lab)) <= {0, 1} and lab.sum() > 0
    batch = next(iter(PatchLoader(PatchDataset(tmp_path / "nnunet", LabelSampler(16), samples_per_volume=2, seed=0),
                                  batch_size=2, num_threads=1)))  # fmt: skip
    assert torch.isfinite(batch["image"].float()).all()
