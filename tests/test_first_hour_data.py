"""A researcher's first hour: label maps are not interpolated silently; in-memory Volumes are cases too."""

import json
import logging
import warnings

import h5py
import numpy as np
import pytest

import medstack
from medstack.data import QueueDataset, VolumeDataset, prepare, read_cases
from medstack.errors import FormatError
from medstack.patches import LabelSampler, UniformSampler, samplers
from medstack.resample import resample
from medstack.stack import stack
from medstack.volume import Volume


def _seg(shape=(12, 14, 16), dtype=np.uint8):
    lab = np.zeros((1, *shape), dtype)
    lab[0, 3:8, 4:10, 5:11] = 1
    lab[0, 6:10, 2:6, 9:14] = 2
    return Volume(lab, np.diag([1.0, 1.0, 1.0, 1.0]))


# --- (a) label maps resampled with nearest by default -----------------------------------------------------------


def test_resample_label_like_defaults_to_nearest(caplog):
    seg = _seg()
    with caplog.at_level(logging.INFO, logger="medstack.resample"):
        out = resample(seg, spacing=(0.7, 1.3, 0.9))
    assert out.data.dtype == np.uint8
    assert set(np.unique(out.data)) <= {0, 1, 2}
    np.testing.assert_array_equal(out.data, resample(seg, spacing=(0.7, 1.3, 0.9), mode="nearest").data)
    assert "label map" in caplog.text


def test_resample_explicit_mode_and_is_label_false_respected():
    seg = _seg()
    lin = resample(seg, spacing=(0.7, 1.3, 0.9), mode="linear")
    assert lin.data.dtype == np.float32 and len(np.unique(lin.data)) > 3
    np.testing.assert_array_equal(resample(seg, spacing=(0.7, 1.3, 0.9), is_label=False).data, lin.data)


def test_images_still_interpolated_by_default():
    rng = np.random.default_rng(0)
    ct = Volume(rng.integers(-1000, 2000, (1, 12, 14, 16)).astype(np.int16), np.eye(4))
    from medstack.resample import looks_like_label

    assert not looks_like_label(ct)
    out = resample(ct, spacing=0.7)
    assert out.data.dtype == np.float32
    floats = Volume(_seg().data.astype(np.float32), np.eye(4))  # float volumes never look like labels
    assert not looks_like_label(floats)
    assert resample(floats, spacing=0.7).data.dtype == np.float32


def test_looks_like_label_rule():
    from medstack.resample import looks_like_label

    assert looks_like_label(_seg(dtype=np.int32))
    assert looks_like_label(Volume(np.zeros((1, 3, 3, 3), bool), np.eye(4)))
    many = Volume(np.arange(4 * 5 * 6, dtype=np.uint16).reshape(1, 4, 5, 6), np.eye(4))
    assert not looks_like_label(many)
    # large volume: the strided sample is looked at first, the full count confirms
    big = np.zeros((1, 64, 64, 64), np.uint8)
    big[0, 10:20, 10:20, 10:20] = 7
    assert looks_like_label(Volume(big, np.eye(4)))
    big16 = big.astype(np.uint16)
    idx = np.arange(1, 400)
    idx = idx[idx % 4 != 0][:65]  # 65 extra values hidden between the sampled voxels (step 4 here)
    big16.reshape(-1)[idx] = np.arange(100, 165)
    assert not looks_like_label(Volume(big16, np.eye(4)))


def test_stack_without_labels_keeps_label_values():
    rng = np.random.default_rng(1)
    img = Volume(rng.random((1, 10, 12, 14), dtype=np.float32), np.diag([0.8, 0.8, 0.8, 1.0]))
    seg = _seg()
    out = stack([img, seg])
    assert set(np.unique(out.data[1])) <= {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(out.data[1], stack([img, seg], labels=[1]).data[1])
    forced = stack([img, seg], mode="linear")  # explicit mode respected
    assert not set(np.unique(forced.data[1])) <= {0.0, 1.0, 2.0}


def test_patch_larger_than_volume_warns_once_per_case():
    img = Volume(np.ones((1, 8, 20, 20), np.float32), np.eye(4))
    q = QueueDataset([img], UniformSampler((16, 16, 16)), samples_per_volume=3, seed=0)
    PatchSizeWarning = getattr(samplers, "PatchSizeWarning", UserWarning)
    with pytest.warns(PatchSizeWarning, match=r"along D; 50\.0% of each patch is padding") as rec:
        for i in range(len(q)):
            q[i]
    assert len([w for w in rec if issubclass(w.category, PatchSizeWarning)]) == 1
    assert samplers.padding_fraction((8, 20, 20), 16) == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QueueDataset([img], UniformSampler((8, 16, 16)), samples_per_volume=2)[0]


# --- (b) in-memory Volumes as cases ---------------------------------------------------------------------------


def _pair(n, shape=(14, 16, 18)):
    rng = np.random.default_rng(n)
    affine = np.diag([0.9, 1.1, 1.2, 1.0])
    affine[:3, 3] = (n, -5.0, 3.0)
    img = Volume(rng.integers(-500, 1500, (1, *shape)).astype(np.int16), affine)
    lab = np.zeros((1, *shape), np.uint8)
    lab[0, 2 + n : 8 + n, 3:9, 4:12] = 1
    lab[0, 9:12, 10:14, 2:7] = 2
    return img, Volume(lab, affine)


def _saved(tmp_path, pairs):
    cases = []
    for n, (img, lab) in enumerate(pairs):
        ip, lp = tmp_path / f"case{n}.nii.gz", tmp_path / f"case{n}_seg.nii.gz"
        medstack.save(img, ip)
        medstack.save(lab, lp)
        cases.append({"id": f"case{n}", "image": str(ip), "label": str(lp)})
    return cases


def _store_content(root):
    manifest = json.loads((root / "manifest.json").read_text())
    out = {}
    for e in manifest["cases"]:
        with h5py.File(root / e["file"], "r") as f:
            items = {}
            f.visititems(lambda name, obj, items=items: items.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
            items["image_affine"] = f["volumes/image"].attrs["affine"]
            items["sampling_counts"] = f["sampling"].attrs["counts"]
        out[e["id"]] = (items, e["shape"], e["spacing"], e["dtype"], e.get("classes"))
    return out


@pytest.mark.parametrize("spacing", [None, 1.0])
def test_prepare_volumes_equals_prepare_files(tmp_path, spacing):
    pairs = [_pair(0), _pair(1)]
    files = _saved(tmp_path, pairs)
    loaded = [(medstack.load(c["image"]), medstack.load(c["label"])) for c in files]
    prepare(files, tmp_path / "from_files", spacing=spacing, workers=1)
    vol_cases = [{"image": img, "label": lab} for img, lab in loaded]  # ids from the metadata source names
    prepare(vol_cases, tmp_path / "from_volumes", spacing=spacing, workers=2)
    a, b = _store_content(tmp_path / "from_files"), _store_content(tmp_path / "from_volumes")
    assert a.keys() == b.keys() == {"case0", "case1"}
    for k in a:
        (ia, *ra), (ib, *rb) = a[k], b[k]
        assert ra == rb
        assert ia.keys() == ib.keys()
        for name in ia:
            np.testing.assert_array_equal(ia[name], ib[name], err_msg=name)
    manifest = json.loads((tmp_path / "from_volumes" / "manifest.json").read_text())
    assert manifest["cases"][0]["sources"] == [f"<in-memory Volume from {files[0]['image']}>"]
    assert not list((tmp_path / "from_volumes").glob("*.pkl"))


def test_read_cases_accepts_paths_volumes_and_dicts(tmp_path):
    (img0, lab0), (img1, _) = _pair(0), _pair(1)
    p = tmp_path / "scan_a.nii.gz"
    medstack.save(img0, p)
    rows = read_cases([str(p), img0, {"image": [img1, str(p)], "label": lab0}, {"id": "mine", "image": img1}])
    assert [r["id"] for r in rows] == ["scan_a", "case1", "case2", "mine"]
    assert rows[0]["image"] == [str(p)] and rows[1]["image"][0] is img0
    assert rows[2]["label"] is lab0
    with pytest.raises(FormatError, match=r"field 'id'.*path separator"):
        read_cases([{"id": "a/b", "image": img0}])
    with pytest.raises(FormatError, match="unique"):
        read_cases([img0.replace(metadata={"source": "/x/s.nii"}), img1.replace(metadata={"source": "/y/s.nii"})])
    with pytest.raises(FormatError, match=r"field 'label' must be a path or a medstack\.Volume"):
        read_cases([{"image": img0, "label": 3}])


@pytest.mark.parametrize("sampler", [UniformSampler(8), LabelSampler(8, pos=2, neg=1)])
def test_queue_dataset_volumes_equal_files(tmp_path, sampler):
    pairs = [_pair(0), _pair(1)]
    files = _saved(tmp_path, pairs)
    loaded = [(medstack.load(c["image"]), medstack.load(c["label"])) for c in files]
    qa = QueueDataset(files, sampler, samples_per_volume=4, seed=7)
    qb = QueueDataset([{"id": c["id"], "image": img, "label": lab} for c, (img, lab) in zip(files, loaded)],
                      sampler, samples_per_volume=4, seed=7)  # fmt: skip
    assert len(qa) == len(qb) == 8
    for i in range(len(qa)):
        x, y = qa[i], qb[i]
        assert x["case_id"] == y["case_id"]
        for k in ("start", "image", "label", "affine"):
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(x[k].numpy(), y[k].numpy(), err_msg=k)
    # a plain list of Volumes (no labels) works too, as in VolumeDataset
    qc = QueueDataset([img for img, _ in loaded], UniformSampler(8), samples_per_volume=2, seed=7)
    assert qc[0]["image"].shape == (1, 8, 8, 8)
    assert VolumeDataset([img for img, _ in loaded])[1]["image"].shape == (1, 14, 16, 18)
