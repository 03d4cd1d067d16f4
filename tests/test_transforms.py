import itertools

import numpy as np
import pytest
import torch

from medstack import Volume
from medstack import transforms as T
from medstack.errors import MedstackError
from medstack.testing import axis_code_affine, phantom_pair, random_affine, world_volume

SHAPE = (10, 12, 14)


def wv(seed=0):
    return world_volume(SHAPE, random_affine(np.random.default_rng(seed)))


def world_error(vol: Volume, mask=None):
    """max |value - world position| over voxels (optionally a (D, H, W) mask)."""
    d, h, w = vol.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = vol.voxel_to_world(np.stack([ww, hh, dd], -1))
    data = np.moveaxis(np.asarray(vol.to_numpy(), np.float64), 0, -1)
    sel = np.ones((d, h, w), bool) if mask is None else mask
    return float(np.abs(data[sel] - world[sel]).max())


def inside_source(src: Volume, out: Volume, margin=0.0):
    d, h, w = out.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    ijk = src.world_to_voxel(out.voxel_to_world(np.stack([ww, hh, dd], -1)))
    return np.all((ijk >= margin) & (ijk <= np.array(src.spatial_shape[::-1]) - 1 - margin), axis=-1)


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1, 2)])
def test_flip_keeps_world(axes):
    out = T.Flip(keys="image", axes=axes)({"image": wv()})["image"]
    assert world_error(out) < 1e-3
    np.testing.assert_array_equal(T.invert(out).data, wv().data)


@pytest.mark.parametrize("k, plane", list(itertools.product(range(4), [(0, 1), (0, 2), (1, 2), (2, 1)])))
def test_rot90_keeps_world_and_inverts(k, plane):
    v = wv(1)
    out = T.Rot90(keys="image", k=k, axes=plane)({"image": v})["image"]
    np.testing.assert_array_equal(out.data, np.rot90(v.data, k, axes=(plane[0] + 1, plane[1] + 1)))
    assert world_error(out) < 1e-3
    if k:
        np.testing.assert_allclose(T.invert(out).data, v.data, atol=1e-5)


@pytest.mark.parametrize("size", [(6, 8, 10), (14, 16, 18), (4, 20, 9)])
def test_crop_or_pad_keeps_world_where_not_padded(size):
    v = wv(2)
    out = T.CropOrPad(keys="image", size=size)({"image": v})["image"]
    assert out.spatial_shape == size
    assert world_error(out, inside_source(v, out, margin=-0.01)) < 1e-3
    back = T.invert(out)
    mask = inside_source(out, back, margin=-0.01)
    np.testing.assert_allclose(back.data[:, mask], v.data[:, mask], atol=1e-4)


def test_crop_or_pad_around_foreground_and_no_pad_error():
    img, lab = phantom_pair((20, 24, 22), axis_code_affine("RAS"), seed=1, kind="mr")
    out = T.CropOrPad(keys=("image", "label"), size=(8, 8, 8), foreground_key="label")({"image": img, "label": lab})
    assert out["label"].data.any()
    with pytest.raises(MedstackError, match=r"larger than the volume.*allow_pad=False"):
        T.CropOrPad(keys="image", size=(30, 8, 8), allow_pad=False)({"image": img})


def test_crop_foreground_with_margin():
    data = np.zeros((1, *SHAPE), np.float32)
    data[0, 3:5, 4:7, 5:9] = 1
    v = Volume(data, random_affine(np.random.default_rng(3)))
    out = T.CropForeground(keys="image", source_key="image", margin=1)({"image": v})["image"]
    assert out.spatial_shape == (4, 5, 6)
    np.testing.assert_allclose(out.voxel_to_world([0, 0, 0]), v.voxel_to_world([4, 3, 2]))


def test_random_affine_keeps_world_and_inverts():
    v = wv(4)
    # NaN padding marks what came from outside the field of view; NaN spreads through interpolation
    t = T.RandomAffine(keys="image", rotation=25, scale=(0.8, 1.2), translation=3, shear=0.1, pad_value=np.nan)
    for seed in range(3):
        out = t({"image": v}, rng=torch.Generator().manual_seed(seed))["image"]
        assert world_error(out, inside_source(v, out)) < 1e-3
        back = T.invert(out)
        # voxels whose interpolation used only out-voxels sampled strictly inside v (no edge extension)
        valid = out.replace(data=inside_source(v, out)[None].astype(np.float32))
        mask = (T.invert(valid).data[0] == 1.0) & inside_source(out, back, margin=0.5)
        assert mask.mean() > 0.2
        np.testing.assert_allclose(back.data[:, mask], v.data[:, mask], atol=1e-3)


def test_image_and_label_share_the_draw_and_label_uses_nearest():
    img, lab = phantom_pair((16, 18, 20), random_affine(np.random.default_rng(5)), seed=5, kind="mr")
    t = T.Compose([T.RandomFlip(), T.RandomRot90(planes=((0, 1), (1, 2))), T.RandomAffine(rotation=20)], seed=3)
    out = t({"image": img, "label": lab}, index=0)
    np.testing.assert_allclose(out["image"].affine, out["label"].affine)
    assert set(np.unique(out["label"].data)) <= set(np.unique(lab.data))
    assert out["label"].dtype == lab.dtype


def test_label_key_with_linear_warns():
    with pytest.warns(UserWarning, match="'label' looks like a label map"):
        T.RandomAffine(keys=("image", "label"), mode="linear")


def test_missing_keys():
    v = wv()
    with pytest.raises(MedstackError, match=r"key\(s\) \['label'\] not in the sample.*allow_missing_keys"):
        T.Window(keys=("image", "label"), preset="brain")({"image": v})
    out = T.Window(keys=("image", "label"), preset="brain", allow_missing_keys=True)({"image": v})
    assert "label" not in out


def test_random_without_rng_is_an_error():
    with pytest.raises(MedstackError, match="is random: call it with rng"):
        T.RandomFlip(keys="image")({"image": wv()})


def test_seeded_pipeline_is_pure_function_of_seed_epoch_index():
    v = wv(6)
    c = T.Compose([T.RandomAffine(keys="image", rotation=30), T.RandomNoise(keys="image", std=(0.1, 0.5))], seed=7)
    a = c({"image": v}, index=4, epoch=1)["image"].data
    b = c({"image": v}, index=4, epoch=1)["image"].data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c({"image": v}, index=5, epoch=1)["image"].data)
    assert not np.array_equal(a, c({"image": v}, index=4, epoch=2)["image"].data)
    c2 = T.Compose(c.transforms, seed=7)
    np.testing.assert_array_equal(a, c2({"image": v}, index=4, epoch=1)["image"].data)


class _DS(torch.utils.data.Dataset):
    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.vol = wv(7)

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.as_tensor(self.pipeline({"image": self.vol}, index=i, epoch=0)["image"].to_numpy())


def test_results_independent_of_num_workers():
    pipe = T.Compose([T.RandomFlip(keys="image"), T.RandomAffine(keys="image", rotation=15),
                      T.RandomNoise(keys="image", std=(0.0, 0.2))], seed=11)  # fmt: skip
    runs = []
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(_DS(pipe), batch_size=2, num_workers=workers)
        runs.append(torch.cat(list(loader)))
    torch.testing.assert_close(runs[0], runs[1])
    torch.testing.assert_close(runs[0], runs[2])


def test_transforms_do_not_mutate_input():
    v = wv(8)
    before = v.data.copy()
    T.Compose([T.Flip(keys="image"), T.Window(keys="image", level=0, width=100), T.RandomNoise(keys="image")],
              seed=0)({"image": v})  # fmt: skip
    np.testing.assert_array_equal(v.data, before)


def test_one_of_and_random_apply():
    v = wv(9)
    c = T.Compose([T.OneOf([T.Flip(keys="image", axes=(0,)), T.Flip(keys="image", axes=(1,))])], seed=0)
    outs = {c({"image": v}, index=i)["image"].data.tobytes() for i in range(20)}
    assert len(outs) == 2
    r = T.Compose([T.RandomApply(T.Flip(keys="image"), p=0.5)], seed=0)
    flipped = [not np.array_equal(r({"image": v}, index=i)["image"].data, v.data) for i in range(40)]
    assert 5 < sum(flipped) < 35


# -- intensity ---------------------------------------------------------------------------------------


def ct(values):
    return Volume(np.asarray(values, np.int16).reshape(1, 1, 1, -1), np.eye(4))


def test_window_presets_on_known_hu():
    v = ct([-1000, 0, 40, 80, 1000])
    out = T.Window(keys="image", preset="brain")(v)  # level 40, width 80 -> [0, 80]
    np.testing.assert_allclose(out.data.ravel(), [0, 0, 0.5, 1, 1])
    assert out.dtype == np.float32
    lung = T.Window(keys="image", preset="lung")(v).data.ravel()  # [-1350, 150]
    np.testing.assert_allclose(lung, [350 / 1500, 1350 / 1500, 1390 / 1500, 1430 / 1500, 1], rtol=1e-6)
    explicit = T.Window(keys="image", level=0, width=200, out_range=(-1, 1))(v).data.ravel()
    np.testing.assert_allclose(explicit, [-1, 0, 0.4, 0.8, 1])


def test_scale_clip_zscore_percentile_dtype():
    v = ct([0, 50, 100])
    np.testing.assert_allclose(T.ScaleToRange(keys="image", a_min=0, a_max=100, out_range=(-1, 1))(v).data.ravel(),
                               [-1, 0, 1])  # fmt: skip
    np.testing.assert_allclose(T.Clip(keys="image", low=10, high=60)(v).data.ravel(), [10, 50, 60])
    z = T.ZScore(keys="image")(v).data.ravel()
    np.testing.assert_allclose(z, (np.array([0, 50, 100]) - 50) / np.std([0, 50, 100]), rtol=1e-5)
    nz = T.ZScore(keys="image", nonzero=True)(v).data.ravel()
    np.testing.assert_allclose(nz[1:], [-1, 1], rtol=1e-5)
    p = T.PercentileScale(keys="image", lower=0, upper=100)(v).data.ravel()
    np.testing.assert_allclose(p, [0, 0.5, 1])
    u8 = Volume(np.array([0, 255], np.uint8).reshape(1, 1, 1, 2), np.eye(4))
    np.testing.assert_allclose(T.ToDtype(keys="image", scale=True)(u8).data.ravel(), [0, 1])
    np.testing.assert_allclose(T.ToDtype(keys="image")(ct([-1024, 3071])).data.ravel(), [-1024, 3071])


def test_zscore_within_mask_key():
    img = Volume(np.array([1, 2, 3, 100], np.float32).reshape(1, 1, 1, 4), np.eye(4))
    mask = Volume(np.array([1, 1, 1, 0], np.uint8).reshape(1, 1, 1, 4), np.eye(4))
    out = T.ZScore(keys="image", mask_key="mask")({"image": img, "mask": mask})["image"].data.ravel()
    np.testing.assert_allclose(out[:3], (np.array([1, 2, 3]) - 2) / np.std([1, 2, 3]), rtol=1e-5)


@pytest.mark.parametrize("t", [T.RandomGamma(keys="image"), T.RandomContrast(keys="image"),
                               T.RandomBrightness(keys="image"), T.RandomNoise(keys="image"),
                               T.RandomBlur(keys="image"), T.RandomBiasField(keys="image")])  # fmt: skip
def test_random_intensity_deterministic_and_changes_values(t):
    v = wv(10)
    a = t({"image": v}, rng=torch.Generator().manual_seed(1))["image"]
    b = t({"image": v}, rng=torch.Generator().manual_seed(1))["image"]
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.allclose(a.data, v.data)
    np.testing.assert_array_equal(a.affine, v.affine)


def test_nan_propagates():
    v = Volume(np.array([np.nan, 1.0, 2.0], np.float32).reshape(1, 1, 1, 3), np.eye(4))
    out = T.Window(keys="image", level=1, width=2)(v).data.ravel()
    assert np.isnan(out[0]) and np.isfinite(out[1:]).all()
    z = T.ZScore(keys="image")(v).data.ravel()  # statistics ignore NaN, NaN stays NaN
    assert np.isnan(z[0]) and np.allclose(z[1:], [-1, 1])


def test_elastic_and_anisotropy_run_and_keep_labels():
    img, lab = phantom_pair((16, 16, 16), axis_code_affine("RAS"), seed=2, kind="mr")
    out = T.RandomElastic(max_displacement_mm=3)({"image": img, "label": lab}, rng=torch.Generator().manual_seed(0))
    assert set(np.unique(out["label"].data)) <= set(np.unique(lab.data))
    np.testing.assert_array_equal(out["image"].affine, img.affine)
    an = T.RandomAnisotropy()({"image": img}, rng=torch.Generator().manual_seed(0))["image"]
    assert an.shape == img.shape and not np.allclose(an.data, img.data)


def test_invert_prediction_tensor():
    v = wv(11)
    out = T.Compose([T.Flip(keys="image", axes=(1,)), T.Rot90(keys="image", k=1), T.CropOrPad(keys="image", size=(8, 8, 8))],
                    seed=0)({"image": v})["image"]  # fmt: skip
    pred = torch.from_numpy(np.ascontiguousarray(out.data[:1]))
    back = T.invert(pred, reference=out)
    assert tuple(back.shape) == (1, *SHAPE)
    mask = inside_source(out, T.invert(out), margin=-0.01)
    np.testing.assert_allclose(np.asarray(back)[0][mask], v.data[0][mask], atol=1e-4)
    with pytest.raises(MedstackError, match="reference="):
        T.invert(pred)
