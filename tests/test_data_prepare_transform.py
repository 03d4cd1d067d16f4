"""prepare(transform=...): a preprocessing stage run per case before the store is written, fingerprinted so a
changed source, option or transform rebuilds the affected cases; predictions map back to the source grid."""

import json
import logging
import os

import numpy as np
import pytest

import medstack
from medstack import transforms as T
from medstack.data import PatchDataset, prepare, to_original_grid
from medstack.errors import FormatError
from medstack.patches import UniformSampler
from medstack.testing import axis_code_affine


def _case(tmp_path, name="a", shape=(12, 16, 20), spacing=(3.0, 1.0, 1.0)):
    rng = np.random.default_rng(0)
    img = (rng.normal(100, 20, (1, *shape))).astype(np.int16)
    lab = np.zeros((1, *shape), np.uint8)
    lab[0, 3:8, 4:10, 5:12] = 1
    lab[0, 5:7, 6:8, 6:9] = 2
    aff = axis_code_affine("LPS", spacing[::-1], (3, -2, 7))
    ip, lp = tmp_path / f"{name}_img.nii.gz", tmp_path / f"{name}_lab.nii.gz"
    medstack.save(medstack.Volume(img, aff), ip)
    medstack.save(medstack.Volume(lab, aff), lp)
    return {"id": name, "image": str(ip), "label": str(lp)}


def _entries(manifest):
    return {e["id"]: e for e in json.loads(manifest.read_text())["cases"]}


def test_transform_runs_per_case_and_is_recorded(tmp_path):
    case = _case(tmp_path)
    seen = []

    def spy(sample):  # plain callable: sees the case context
        seen.append((sample["id"], sorted(sample), sample["label"].spatial_shape))
        return sample

    pipe = T.Compose([T.NormalizeIntensity(keys="image", nonzero=True), spy], seed=0)
    manifest = prepare([case], tmp_path / "store", transform=pipe, workers=1)
    assert seen == [("a", ["id", "image", "label", "sources"], (12, 16, 20))]
    entry = _entries(manifest)["a"]
    assert "NormalizeIntensity" in entry["applied"]["transform"] and entry["dtype"] == "float32"
    stored = medstack.load(tmp_path / "store" / "a.h5", name="image").to_numpy()
    assert abs(stored.mean()) < 1e-3 and abs(stored.std() - 1) < 1e-3  # normalised once, for the whole case
    assert medstack.load(tmp_path / "store" / "a.h5", name="label").to_numpy().max() == 2
    # training patches and inference read the same normalised values
    ds = PatchDataset(tmp_path / "store", UniformSampler(8), samples_per_volume=2, seed=0)
    item = ds[0]
    d, h, w = item["start"].tolist()
    np.testing.assert_array_equal(item["image"].numpy(), stored[:, d:d + 8, h:h + 8, w:w + 8])


def test_changed_options_rebuild_the_store_and_unchanged_ones_do_not(tmp_path, caplog):
    case = _case(tmp_path)
    out = tmp_path / "store"
    first = _entries(prepare([case], out, workers=1))["a"]
    assert first["shape"][1:] == [12, 16, 20]
    # the bug: a second prepare with another spacing reported success and kept the old shapes
    with caplog.at_level(logging.WARNING, logger="medstack.data.prepare"):
        second = _entries(prepare([case], out, spacing=2.0, workers=1))["a"]
    assert second["shape"][1:] == [18, 8, 10] and "changed" in caplog.text
    mtime = os.stat(out / "a.h5").st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medstack.data.prepare"):
        prepare([case], out, spacing=2.0, workers=1)  # nothing changed: nothing redone
    assert os.stat(out / "a.h5").st_mtime_ns == mtime and "changed" not in caplog.text
    # a transform parameter changes the fingerprint
    prepare([case], out, spacing=2.0, transform=T.Clip(low=0, high=120), workers=1)
    clipped = medstack.load(out / "a.h5", name="image").to_numpy()
    assert clipped.max() <= 120
    prepare([case], out, spacing=2.0, transform=T.Clip(low=0, high=110), workers=1)
    assert medstack.load(out / "a.h5", name="image").to_numpy().max() <= 110
    # a source file rewritten (new mtime / size) is redone
    img = medstack.load(case["image"])
    os.remove(case["image"])
    medstack.save(img.replace(data=img.to_numpy() + 1000), case["image"])
    prepare([case], out, spacing=2.0, transform=T.Clip(low=0, high=5000), workers=1)
    assert medstack.load(out / "a.h5", name="image").to_numpy().max() > 1000


def test_transform_description_is_stable_and_complete():
    from medstack.data.prepare import describe_transform

    a = T.Compose([T.ZScore(nonzero=True), T.RandomFlip()], seed=1)
    b = T.Compose([T.ZScore(nonzero=True), T.RandomFlip()], seed=2)  # Compose's seed: prepare's seed= is used
    assert describe_transform(a) == describe_transform(b)
    assert describe_transform(T.ZScore(nonzero=True)) != describe_transform(T.ZScore(nonzero=False))
    assert "0x" not in describe_transform(T.OneOf([T.RandomFlip(), T.RandomRot90()]))
    assert describe_transform(lambda s: s) != describe_transform(lambda s: dict(s))


def test_spatial_transform_and_spacing_map_back_to_the_source_grid(tmp_path):
    case = _case(tmp_path)
    pipe = T.Compose([T.Orient(axcodes="RAS"), T.CropForeground(source_key="label", margin=2)], seed=0)
    manifest = prepare([case], tmp_path / "store", spacing=(1.5, 1.0, 1.0), transform=pipe, workers=1)
    entry = _entries(manifest)["a"]
    assert entry["shape"][1:] != [12, 16, 20]
    stored_label = medstack.load(tmp_path / "store" / "a.h5", name="label")
    source_label = medstack.load(case["label"])
    back = to_original_grid(stored_label.data, entry)  # an array on the prepared grid (a network's output)
    assert back.spatial_shape == source_label.spatial_shape
    np.testing.assert_allclose(back.affine, source_label.affine, atol=1e-6)
    np.testing.assert_array_equal(back.to_numpy(), source_label.to_numpy())
    back_vol = to_original_grid(stored_label, tmp_path / "store" / "a.h5")  # a Volume, case from the .h5
    np.testing.assert_array_equal(back_vol.to_numpy(), source_label.to_numpy())
    with pytest.raises(medstack.GeometryError, match="prepared grid"):
        to_original_grid(np.zeros((1, 3, 3, 3)), entry)


def test_unpicklable_transform_runs_in_process_with_workers(tmp_path):
    cases = [_case(tmp_path, "a"), _case(tmp_path, "b")]
    manifest = prepare(cases, tmp_path / "store", transform=lambda s: {**s, "image": s["image"].replace(
        data=s["image"].to_numpy().astype(np.float32) * 0 + 7)}, workers=2)  # fmt: skip
    for e in _entries(manifest).values():
        assert np.all(medstack.load(tmp_path / "store" / e["file"], name="image").to_numpy() == 7)


def test_transform_that_separates_image_and_label_is_refused(tmp_path):
    case = _case(tmp_path)
    bad = T.CropOrPad(keys="image", size=(8, 8, 8))  # crops the image only
    with pytest.raises(FormatError, match="different grids"):
        prepare([case], tmp_path / "store", transform=bad, workers=1)


def test_random_prepare_transform_is_reproducible_per_case(tmp_path):
    cases = [_case(tmp_path, "a"), _case(tmp_path, "b")]
    pipe = T.Compose([T.RandomNoise(keys="image", std=(1.0, 5.0))])  # no seed: prepare's seed drives the draws
    m1 = prepare(cases, tmp_path / "s1", transform=pipe, workers=1, seed=3)
    m2 = prepare(cases[::-1], tmp_path / "s2", transform=pipe, workers=2, seed=3)
    for cid in ("a", "b"):
        a = medstack.load(tmp_path / "s1" / f"{cid}.h5", name="image").to_numpy()
        b = medstack.load(tmp_path / "s2" / f"{cid}.h5", name="image").to_numpy()
        np.testing.assert_array_equal(a, b)
    assert _entries(m1)["a"]["fingerprint"] == _entries(m2)["a"]["fingerprint"]


def test_prepare_on_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    cases = [_case(tmp_path, "a"), _case(tmp_path, "b")]
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        manifest = prepare(cases, tmp_path / "store", transform=T.Clip(low=0, high=100), dask=client)
    assert set(_entries(manifest)) == {"a", "b"}
    assert medstack.load(tmp_path / "store" / "b.h5", name="image").to_numpy().max() <= 100
