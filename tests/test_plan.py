"""medstack.plan: nnU-Net-style fingerprint (parallel, cached, resumable) -> Plan -> prepare -> training."""

import json
import os

import numpy as np
import pytest
import torch

import medstack
from medstack import plan as P
from medstack.errors import ArgumentError, FormatError, MedstackError
from medstack.plan import NormalizeChannels, Plan, fingerprint, make_plan, target_spacing
from medstack.testing import axis_code_affine

SLICES = (3.0, 4.0, 5.0, 5.0, 4.5)  # slice spacing per case (mm); in-plane 0.8 mm


def _ct(i, dz, shape=(20, 64, 64), background=-1000):
    """A CT-like case: air around a body cylinder (~40 HU) holding a labelled organ (~120 HU), int16."""
    rng = np.random.default_rng(i)
    d, h, w = shape
    img = np.full((1, *shape), background, np.int16)
    zz, yy, xx = np.mgrid[:d, :h, :w]
    body = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (0.4 * h) ** 2
    img[0][body] = rng.normal(40, 10, body.sum()).astype(np.int16)
    organ = ((yy - h // 2 + 2) ** 2 / 100 + (xx - w // 2 - 4) ** 2 / 64 + (zz - d // 2) ** 2 / 16) < 1
    img[0][organ] = rng.normal(120, 15, organ.sum()).astype(np.int16)
    aff = axis_code_affine("RAS", (0.8, 0.8, dz))
    return medstack.Volume(img, aff), medstack.Volume(organ[None].astype(np.uint8), aff)


def _nifti_cases(tmp_path, slices=SLICES):
    cases = []
    for i, dz in enumerate(slices):
        img, lab = _ct(i, dz)
        ip, lp = tmp_path / f"ct{i}_img.nii.gz", tmp_path / f"ct{i}_lab.nii.gz"
        medstack.save(img, ip)
        medstack.save(lab, lp)
        cases.append({"id": f"ct{i}", "image": str(ip), "label": str(lp), "modality": "CT"})
    return cases


def _volume_cases(slices=SLICES, **kw):
    out = []
    for i, dz in enumerate(slices):
        img, lab = _ct(i, dz, **kw)
        out.append({"id": f"ct{i}", "image": img, "label": lab, "modality": "CT"})
    return out


def test_fingerprint_values_match_numpy_on_the_pooled_samples(tmp_path):
    cases = _nifti_cases(tmp_path)
    fp = fingerprint(cases, workers=2, samples_per_case=300, seed=1)
    assert fp["computed"] == [c["id"] for c in cases] and fp["channel_names"] == ["CT"] and fp["n_channels"] == 1
    pooled = []
    for i, c in enumerate(cases):
        e = fp["cases"][c["id"]]
        np.testing.assert_allclose(e["spacing"], (SLICES[i], 0.8, 0.8), rtol=1e-5)
        assert e["shape"] == [20, 64, 64] and e["shape_after_crop"] == [20, 64, 64]  # air is -1000, not 0
        assert e["label_values"] == [0, 1]
        img, lab = _ct(i, SLICES[i])
        organ = img.data[0][lab.data[0] > 0]
        assert e["n_foreground"] == organ.size and len(e["foreground"][0]) == 300 < organ.size
        assert set(e["foreground"][0]) <= set(organ.astype(float).tolist())  # sampled from the labelled voxels
        pooled += e["foreground"][0]
    pooled = np.asarray(pooled)
    s = fp["intensity"][0]
    assert s["percentile_00_5"] == np.percentile(pooled, 0.5) and s["percentile_99_5"] == np.percentile(pooled, 99.5)
    assert s["mean"] == pytest.approx(pooled.mean()) and s["std"] == pytest.approx(pooled.std())
    assert s["median"] == np.median(pooled) and 90 < s["mean"] < 150  # the organ's HU, not the body's
    # seeded: the same samples again, other ones with another seed
    again = fingerprint(cases, workers=1, samples_per_case=300, seed=1)
    assert again["cases"]["ct0"]["foreground"] == fp["cases"]["ct0"]["foreground"]
    other = fingerprint(cases, workers=1, samples_per_case=300, seed=2)
    assert other["cases"]["ct0"]["foreground"] != fp["cases"]["ct0"]["foreground"]


def test_fingerprint_cache_is_reused_and_only_changed_or_new_cases_are_computed(tmp_path):
    cases = _nifti_cases(tmp_path)
    cache = tmp_path / "fp.json"
    first = fingerprint(cases[:4], cache=cache, workers=1, samples_per_case=200)
    assert len(first["computed"]) == 4 and cache.exists()
    on_disk = json.loads(cache.read_text())
    assert on_disk["format"] == "medstack-fingerprint" and sorted(on_disk["cases"]) == ["ct0", "ct1", "ct2", "ct3"]
    second = fingerprint(cases[:4], cache=cache, workers=1, samples_per_case=200)
    assert second["computed"] == [] and second["intensity"] == first["intensity"]
    # a changed source (new mtime) and a new case are computed; the rest comes from the cache
    p = cases[1]["image"]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = fingerprint(cases, cache=cache, workers=2, samples_per_case=200)
    assert sorted(third["computed"]) == ["ct1", "ct4"]
    # another samples_per_case is another fingerprint: all recomputed
    assert len(fingerprint(cases, cache=cache, workers=1, samples_per_case=100)["computed"]) == 5
    # a foreign cache file is an error, never overwritten
    bad = tmp_path / "bad.json"
    bad.write_text('{"cases": []}')
    with pytest.raises(FormatError, match="not a medstack fingerprint"):
        fingerprint(cases, cache=bad)
    assert bad.read_text() == '{"cases": []}'


def test_fingerprint_is_resumable_after_a_failing_case(tmp_path):
    cases = _nifti_cases(tmp_path, slices=(3.0, 4.0))
    broken = {"id": "broken", "image": str(tmp_path / "missing.nii.gz")}
    cache = tmp_path / "fp.json"
    with pytest.raises(MedstackError, match="broken"):
        fingerprint([*cases, broken], cache=cache, workers=1)
    assert sorted(json.loads(cache.read_text())["cases"]) == ["ct0", "ct1"]  # kept: the rerun resumes
    assert fingerprint(cases, cache=cache, workers=1)["computed"] == []


def test_fingerprint_without_labels_uses_nonzero_voxels_and_reads_metadata():
    rng = np.random.default_rng(0)
    mr = np.zeros((2, 10, 20, 20), np.float32)
    mr[:, 2:8, 5:15, 4:16] = rng.uniform(1, 2, (2, 6, 10, 12))
    vol = medstack.Volume(mr, np.diag([1.0, 1.0, 1.0, 1.0]))
    fp = fingerprint([{"id": "m", "image": vol, "channel_names": {"0": "T1", "1": "T2"}}], samples_per_case=50)
    e = fp["cases"]["m"]
    assert e["shape_after_crop"] == [6, 10, 12] and e["n_foreground"] == 720 and e["label_values"] == []
    assert fp["channel_names"] == ["T1", "T2"] and all(1 <= v <= 2 for v in e["foreground"][1])
    assert fp["median_relative_size_after_cropping"] == pytest.approx(720 / 4000)
    with pytest.raises(FormatError, match="channel"):
        fingerprint([{"id": "m", "image": vol, "modality": "CT"}])
    with pytest.raises(ArgumentError, match="samples_per_case"):
        fingerprint([vol], samples_per_case=0)


def test_fingerprint_reads_the_modality_of_a_decathlon_dataset(tmp_path):
    root = tmp_path / "Task09_Toy"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, dz in enumerate((3.0, 5.0)):
        img, lab = _ct(i, dz)
        medstack.save(img, root / "imagesTr" / f"toy_{i}.nii.gz")
        medstack.save(lab, root / "labelsTr" / f"toy_{i}.nii.gz")
        training.append({"image": f"./imagesTr/toy_{i}.nii.gz", "label": f"./labelsTr/toy_{i}.nii.gz"})
    meta = {"name": "Toy", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
            "numTraining": 2, "training": training}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    fp = fingerprint(root, workers=1, samples_per_case=50)
    assert fp["channel_names"] == ["CT"] and sorted(fp["cases"]) == ["toy_0", "toy_1"]
    assert make_plan(fp, gpu_memory_gb=0.05).normalization == ("ct",)


def test_target_spacing_median_and_the_anisotropy_exception():
    # isotropic-ish: the median per axis
    sp = [(1.0, 0.9, 0.9), (1.5, 0.7, 0.7), (1.2, 0.8, 0.8)]
    assert target_spacing(sp, [(100, 200, 200)] * 3) == (1.2, 0.8, 0.8)
    # thick slices (median 5 > 3 x 0.8) and few of them (30 x 3 < 512): the 10th percentile of that axis
    sp = [(5.0, 0.8, 0.8)] * 7 + [(1.0, 0.8, 0.8), (2.0, 0.8, 0.8), (6.0, 0.8, 0.8)]
    expected = np.percentile([s[0] for s in sp], 10)
    assert target_spacing(sp, [(30, 512, 512)] * 10) == pytest.approx((expected, 0.8, 0.8))
    assert expected < 5.0
    # anisotropic spacing but many slices: no exception
    assert target_spacing(sp, [(200, 512, 512)] * 10) == (5.0, 0.8, 0.8)
    # the exception never goes finer than the other axes
    sp = [(5.0, 1.0, 1.0)] * 8 + [(0.5, 1.0, 1.0)] * 2  # 10th percentile 0.5 < 1.0
    assert target_spacing(sp, [(30, 512, 512)] * 10)[0] == pytest.approx(1.0 + 1e-5)
    with pytest.raises(ArgumentError):
        target_spacing([], [])


def test_plan_patch_and_batch_fit_the_budget_and_are_divisible():
    fp = fingerprint(_volume_cases(), samples_per_case=500)
    expected_d = np.percentile(SLICES, 10)  # median 4.5 > 3 x 0.8, 20 slices x 3 < 64: the exception
    sizes = []
    for gb in (0.02, 0.05, 0.2, 8.0):
        plan = make_plan(fp, gpu_memory_gb=gb)
        assert plan.spacing == pytest.approx((expected_d, 0.8, 0.8)) and plan.anisotropic
        budget = P.REFERENCE_ELEMENTS * gb / P.REFERENCE_GB
        strides = P._topology(plan.spacing, plan.patch_size)[1]
        est = P.unet_feature_map_size(plan.patch_size, strides, plan.n_classes)
        assert est == plan.feature_map_elements and (est <= budget or gb == 8.0)
        for n, p in zip(plan.patch_size, plan.pools):
            assert n % 2**p == 0
        assert plan.batch_size >= 2 and plan.normalization == ("ct",) and plan.use_mask_for_norm == (False,)
        sizes.append(np.prod(plan.patch_size))
        np.testing.assert_allclose(plan.clip_low, fp["intensity"][0]["percentile_00_5"])
        np.testing.assert_allclose(plan.mean, fp["intensity"][0]["mean"])
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # the whole median case fits 8 GB: patch = the median shape padded to the divisors (nnU-Net pads up)
    big = make_plan(fp, gpu_memory_gb=8.0)
    assert all(p >= m for p, m in zip(big.patch_size, big.median_shape))
    # batch capped at 5% of the dataset voxels, never below min_batch_size
    assert big.batch_size == 2 and make_plan(fp, gpu_memory_gb=8.0, min_batch_size=3).batch_size == 3
    # a larger min_batch_size makes the patch fit the budget at that batch size
    four = make_plan(fp, gpu_memory_gb=0.05, min_batch_size=4)
    assert four.batch_size == 4 and four.feature_map_elements * 4 / 2 <= P.REFERENCE_ELEMENTS * 0.05 / 8
    assert np.prod(four.patch_size) < np.prod(make_plan(fp, gpu_memory_gb=0.05).patch_size)
    many = {**fp, "cases": {f"c{i}": e for i in range(400) for e in [next(iter(fp["cases"].values()))]}}
    large = make_plan(many, gpu_memory_gb=8.0)  # the patch is the whole case: memory left for a large batch
    by_memory = round(P.REFERENCE_ELEMENTS / large.feature_map_elements * 2)
    cap = round(np.prod(large.median_shape) * 400 * 0.05 / np.prod(large.patch_size))
    assert 2 < large.batch_size == min(by_memory, cap) and cap < by_memory
    with pytest.raises(ArgumentError, match="gpu_memory_gb"):
        make_plan(fp, gpu_memory_gb=1e-6)
    with pytest.raises(ArgumentError, match="modalities"):
        make_plan(fp, modalities=["CT", "MR"])


def test_normalization_scheme_and_mask_rule():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        mr = np.zeros((1, 16, 32, 32), np.float32)
        mr[0, 4:12, 8:24, 8:24] = rng.uniform(100, 200, (8, 16, 16))  # cropping keeps 1/8 of the volume
        cases.append({"id": f"m{i}", "image": medstack.Volume(mr, np.eye(4)), "modality": "T2"})
    fp = fingerprint(cases, samples_per_case=100)
    plan = make_plan(fp, gpu_memory_gb=0.05)
    assert plan.normalization == ("zscore",) and plan.use_mask_for_norm == (True,)
    assert make_plan(fp, gpu_memory_gb=0.05, modalities="CT").normalization == ("ct",)
    assert make_plan(fp, gpu_memory_gb=0.05, modalities="CT").use_mask_for_norm == (False,)
    out = NormalizeChannels(["zscore"], use_mask=[True])(cases[0]["image"]).data
    inside = out[0, 4:12, 8:24, 8:24]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-4 and (out[0, :4] == 0).all()
    holed = cases[0]["image"].data.copy()
    holed[0, 8, 16, 16] = 0  # a hole inside the nonzero region is in nnU-Net's mask (filled): normalised
    out = NormalizeChannels(["zscore"], use_mask=[True])(medstack.Volume(holed, np.eye(4))).data
    assert out[0, 8, 16, 16] < -2 and (out[0, :4] == 0).all()
    full = NormalizeChannels(["zscore"])(cases[0]["image"]).data
    assert abs(full.mean()) < 1e-4 and full[0, 0, 0, 0] < 0
    ct = NormalizeChannels(["ct"], clip_low=[-100], clip_high=[100], mean=[10], std=[20])
    x = medstack.Volume(np.array([-500, 0, 50, 500], np.int16).reshape(1, 1, 1, 4), np.eye(4))
    np.testing.assert_allclose(ct(x).data.ravel(), [-5.5, -0.5, 2.0, 4.5])
    with pytest.raises(ArgumentError, match="clip_low"):
        NormalizeChannels(["ct"])
    with pytest.raises(ArgumentError, match="channel"):
        NormalizeChannels(["zscore", "zscore"])(x)


def test_plan_json_round_trip(tmp_path):
    plan = make_plan(fingerprint(_volume_cases(), samples_per_case=100), gpu_memory_gb=0.05)
    again = Plan.from_json(plan.to_json())
    assert again == plan and isinstance(again.patch_size, tuple)
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert Plan.from_json(path) == plan == Plan.from_json(str(path))
    with pytest.raises(FormatError, match="not a medstack plan"):
        Plan.from_json('{"spacing": [1, 1, 1]}')
    data = json.loads(plan.to_json())
    del data["patch_size"]
    with pytest.raises(FormatError, match="patch_size"):
        Plan.from_json(json.dumps(data))
    with pytest.raises(FormatError, match="not valid JSON"):
        Plan.from_json("{oops")
    with pytest.raises(dataclasses_error()):
        plan.batch_size = 3


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_end_to_end_plan_prepare_train(tmp_path):
    from medstack.data import DevicePrefetcher, PatchDataset, PatchLoader, prepare

    cases = _nifti_cases(tmp_path, slices=(3.0, 4.0, 5.0, 4.5))
    fp = fingerprint(cases, cache=tmp_path / "fp.json", workers=2, samples_per_case=2000)
    plan = make_plan(fp, gpu_memory_gb=0.05)
    assert max(plan.patch_size) <= 32 and plan.anisotropic
    plan = Plan.from_json(plan.to_json())  # the plan as it would be loaded in a training job
    manifest = prepare(cases, tmp_path / "store", transform=plan.transform(), workers=2)
    entries = json.loads(manifest.read_text())["cases"]
    assert len(entries) == 4
    for e in entries:
        np.testing.assert_allclose(e["spacing"], plan.spacing, rtol=1e-4)
    stored = medstack.load(tmp_path / "store" / "ct0.h5", name="image").to_numpy()
    assert stored.dtype == np.float32
    lo, hi = (np.array([plan.clip_low[0], plan.clip_high[0]]) - plan.mean[0]) / plan.std[0]
    assert lo - 1e-3 <= stored.min() and stored.max() <= hi + 1e-3  # clipped to the percentiles, then z-scored
    lab = medstack.load(tmp_path / "store" / "ct0.h5", name="label").to_numpy()
    assert set(np.unique(lab)) == {0, 1}
    # the plan's transform describes itself stably: preparing again with a reloaded plan rebuilds nothing
    before = (tmp_path / "store" / "ct0.h5").stat().st_mtime_ns
    prepare(cases, tmp_path / "store", transform=Plan.from_json(plan.to_json()).transform(), workers=1)
    assert (tmp_path / "store" / "ct0.h5").stat().st_mtime_ns == before

    ds = PatchDataset(tmp_path / "store", plan.sampler(), samples_per_volume=2, seed=0)
    loader = PatchLoader(ds, batch_size=plan.batch_size, seed=0, num_threads=1)
    batches = DevicePrefetcher(loader, "cpu", augment=plan.augmentation(), seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(plan.n_channels, 4, 3, padding=1), torch.nn.LeakyReLU(),
                              torch.nn.Conv3d(4, plan.n_classes, 1))  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    losses = []
    for step, batch in enumerate(batches):
        if step == 3:
            break
        x, y = batch["image"], batch["label"]
        assert tuple(x.shape) == (plan.batch_size, 1, *plan.patch_size)
        loss = torch.nn.functional.cross_entropy(net(x), y[:, 0].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(losses) == 3 and all(np.isfinite(losses))
