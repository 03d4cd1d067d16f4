import json
import warnings

import numpy as np
import pytest
import torch

import medstack
from medstack.data import (
    CaseGroupedSampler,
    DevicePrefetcher,
    PatchDataset,
    PatchLoader,
    QueueDataset,
    VolumeDataset,
    make_loader,
    prepare,
)
from medstack.errors import MedstackError
from medstack.patches import (
    Aggregator,
    CaseInfo,
    GridSampler,
    LabelSampler,
    UniformSampler,
    WeightedSampler,
    class_voxel_lists,
    grid_positions,
    read_patch,
    read_patch_into,
    sliding_window_inference,
)
from medstack.patches.samplers import PatchSizeWarning
from medstack.testing import assert_same_batches, axis_code_affine, center_affine, phantom_pair, random_affine
from medstack.transforms.gpu import BatchAugment


def label_case(shape=(40, 48, 44)):
    lab = np.zeros(shape, np.uint8)
    lab[5:12, 6:14, 8:15] = 1
    lab[25:30, 30:36, 20:26] = 2
    voxels, counts, boxes = class_voxel_lists(lab, max_per_class=5000)
    return lab, CaseInfo(shape, {k: v for k, v in voxels.items() if k}, voxels[0]), counts


def centre_labels(lab, starts, patch):
    c = starts + np.asarray(patch) // 2
    c = np.clip(c, 0, np.array(lab.shape) - 1)
    return lab[c[:, 0], c[:, 1], c[:, 2]]


def test_pos_neg_ratio_holds():
    lab, case, _ = label_case()
    s = LabelSampler(8, pos=3, neg=1)
    starts = s.sample(case, np.random.default_rng(0), 4000)
    # small patches fit everywhere, so the centre is the drawn voxel
    frac = (centre_labels(lab, starts, (8, 8, 8)) > 0).mean()
    assert abs(frac - 0.75) < 0.03


def test_class_ratios_hold_and_missing_class_is_skipped():
    lab, case, _ = label_case()
    s = LabelSampler(8, ratios={0: 1, 1: 1, 2: 2, 3: 5})  # class 3 absent: its weight is dropped
    values = centre_labels(lab, s.sample(case, np.random.default_rng(1), 4000), (8, 8, 8))
    fr = np.bincount(values, minlength=3) / len(values)
    np.testing.assert_allclose(fr, [0.25, 0.25, 0.5], atol=0.03)


def test_empty_label_falls_back_gracefully():
    lab = np.zeros((20, 20, 20), np.uint8)
    voxels, _, _ = class_voxel_lists(lab)
    case = CaseInfo(lab.shape, {}, voxels[0])
    starts = LabelSampler(8, pos=1, neg=0).sample(case, np.random.default_rng(0), 50)
    assert starts.shape == (50, 3) and (starts >= 0).all()
    starts = LabelSampler(8).sample(CaseInfo((20, 20, 20)), np.random.default_rng(0), 10)  # no lists at all
    assert starts.shape == (10, 3)


def test_uniform_covers_the_volume_and_small_volumes_pad():
    case = CaseInfo((30, 20, 25))
    starts = UniformSampler((10, 10, 10)).sample(case, np.random.default_rng(0), 20000)
    assert starts.min(axis=0).tolist() == [0, 0, 0]
    assert starts.max(axis=0).tolist() == [20, 10, 15]
    assert len(np.unique(starts[:, 0])) == 21
    small = UniformSampler((40, 10, 10)).sample(case, np.random.default_rng(0), 3)
    assert (small[:, 0] == -5).all()  # centred, padded


def test_weighted_sampler_follows_the_map():
    w = np.zeros((20, 20, 20))
    w[15, 15, 15] = 1.0
    starts = WeightedSampler(4).sample(CaseInfo(w.shape, weights=w), np.random.default_rng(0), 10)
    assert (starts == [13, 13, 13]).all()
    with pytest.raises(MedstackError, match="weights"):
        WeightedSampler(4).sample(CaseInfo(w.shape), np.random.default_rng(0))


@pytest.mark.parametrize("shape, patch, overlap", [((50, 37, 20), (16, 16, 16), 0.25), ((10, 64, 64), (16, 32, 32), 0.5)])
def test_grid_covers_every_voxel(shape, patch, overlap):
    starts = grid_positions(shape, patch, overlap)
    cover = np.zeros(shape, int)
    for s in starts:
        lo = np.maximum(s, 0)
        hi = np.minimum(s + patch, shape)
        cover[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += 1
    assert cover.min() >= 1
    np.testing.assert_array_equal(GridSampler(patch, overlap).sample(CaseInfo(shape)), starts)


def test_read_patch_pads_outside():
    data = np.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    p = read_patch(data, (-1, 3, 4), (3, 4, 4), pad_value=-7)
    assert p.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(p[:, 1:, :2, :2], data[:, 0:2, 3:5, 4:6])
    assert (p[:, 0] == -7).all() and (p[:, :, 2:] == -7).all()


def test_read_patch_into_sources_and_targets():
    """Every source kind (writable, read-only and bool NumPy, torch) into NumPy or torch targets, padded."""
    base = np.arange(2 * 6 * 7 * 8).reshape(2, 6, 7, 8)
    frozen = base.astype(np.int16)
    frozen.flags.writeable = False
    for src in (base.astype(np.float32), frozen, base % 3 == 0, torch.from_numpy(base.astype(np.int32))):
        ref = read_patch(np.asarray(src), (-2, 3, 5), (4, 5, 6), pad_value=0)
        for out in (np.empty((2, 4, 5, 6), ref.dtype), torch.empty((2, 4, 5, 6), dtype=torch.float64)):
            read_patch_into(src, out, (-2, 3, 5), 0)
            np.testing.assert_array_equal(np.asarray(out, dtype=np.float64), ref.astype(np.float64))
        assert (ref[:, :2] == 0).all() and (ref[:, 2:, :4, :3] == np.asarray(src)[:, :2, 3:7, 5:8]).all()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    cases = []
    for k in range(3):
        affine = center_affine(random_affine(np.random.default_rng(k), oblique=False, spacing_range=(2, 4)), (24, 28, 26))
        img, lab = phantom_pair((24, 28, 26), affine, seed=k, kind="ct")
        medstack.save(img, root / f"img{k}.nii.gz")
        medstack.save(lab, root / f"lab{k}.nii.gz")
        cases.append({"id": f"case{k}", "image": str(root / f"img{k}.nii.gz"), "label": str(root / f"lab{k}.nii.gz")})
    manifest = prepare(cases, root / "out", workers=1)
    return root, cases, manifest


def test_prepare_writes_store_and_manifest(store):
    root, cases, manifest = store
    entries = json.loads(manifest.read_text())["cases"]
    assert [e["id"] for e in entries] == ["case0", "case1", "case2"]
    vol = medstack.load(root / "out" / "case1.h5", name="image")
    src = medstack.load(root / "img1.nii.gz")
    np.testing.assert_array_equal(vol.data, src.data)
    np.testing.assert_allclose(vol.affine, src.affine)
    assert vol.dtype == np.int16  # native dtype kept
    assert set(entries[1]["classes"]) >= {"0", "1"}


def test_prepare_is_resumable_and_reports_failures(store, tmp_path):
    root, cases, manifest = store
    before = (root / "out" / "case0.h5").stat().st_mtime_ns
    prepare(cases, root / "out", workers=1)
    assert (root / "out" / "case0.h5").stat().st_mtime_ns == before
    bad = cases[:1] + [{"id": "broken", "image": str(root / "missing.nii.gz"), "label": None}]
    with pytest.raises(MedstackError, match=r"1 case\(s\) failed: broken: ReadError"):
        prepare(bad, tmp_path / "o", workers=1)
    assert [e["id"] for e in json.loads((tmp_path / "o" / "manifest.json").read_text())["cases"]] == ["case0"]
    assert not list((tmp_path / "o").glob("*.partial"))


def test_patch_from_store_equals_crop_of_eager_volume(store):
    root, cases, manifest = store
    with pytest.warns(PatchSizeWarning, match="padding"):  # the patch pads past the border on purpose
        ds = PatchDataset(root / "out", UniformSampler((12, 40, 10)), samples_per_volume=5, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        case_i = i // 5
        eager = medstack.load(cases[case_i]["image"]).data
        expected = read_patch(eager, item["start"].numpy(), (12, 40, 10), 0)
        np.testing.assert_array_equal(item["image"].numpy(), expected)
        assert item["image"].dtype == torch.int16
        src = medstack.load(cases[case_i]["image"])
        np.testing.assert_allclose(item["world_origin"].numpy(), src.voxel_to_world(item["start"].numpy()[::-1]))


def _collect(ds, workers, sampler=None):
    loader = make_loader(ds, batch_size=3, num_workers=workers, shuffle=False, sampler=sampler)
    return [(b["case_id"], b["start"], b["image"]) for b in loader]


def test_reproducible_across_workers_and_runs_and_epochs(store):
    root, _, _ = store
    ds = PatchDataset(root / "out", LabelSampler(16, pos=1, neg=1), samples_per_volume=4, seed=5)
    a = _collect(ds, 0)
    b = _collect(ds, 2)
    c = _collect(PatchDataset(root / "out", LabelSampler(16, pos=1, neg=1), samples_per_volume=4, seed=5), 0)
    for x, y, z in zip(a, b, c):
        assert x[0] == y[0] == z[0]
        torch.testing.assert_close(x[2], y[2])
        torch.testing.assert_close(x[2], z[2])
    ds.set_epoch(1)
    d = _collect(ds, 0)
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(a, d))


def test_distinct_patches_across_ranks(store):
    from torch.utils.data.distributed import DistributedSampler

    root, _, _ = store
    ds = PatchDataset(root / "out", UniformSampler(8), samples_per_volume=8, seed=1)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        seen.append({(c, tuple(s.tolist())) for b in _collect(ds, 0, sampler) for c, s in zip(b[0], b[1])})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])


def test_queue_mode_matches_store_patches(store):
    root, cases, _ = store
    q = QueueDataset(cases, UniformSampler(10), samples_per_volume=4, seed=9, cache_bytes=1 << 20)
    p = PatchDataset(root / "out", UniformSampler(10), samples_per_volume=4, seed=9)
    for i in range(len(q)):
        np.testing.assert_array_equal(q[i]["image"].numpy(), p[i]["image"].numpy())
        np.testing.assert_array_equal(q[i]["label"].numpy(), p[i]["label"].numpy())
    order = list(CaseGroupedSampler(q, seed=0))
    assert sorted(order) == list(range(len(q)))
    assert all(order[k] // 4 == order[k + 1] // 4 for k in range(0, len(order), 4) for _ in [0] if k + 1 < len(order))
    batches = _collect(q, 2, CaseGroupedSampler(q, seed=0))
    assert sum(len(b[0]) for b in batches) == len(q)


def test_volume_dataset(store):
    _, cases, _ = store
    ds = VolumeDataset(cases)
    item = ds[1]
    assert item["image"].shape == (1, 24, 28, 26) and item["label"].shape == (1, 24, 28, 26)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_aggregator_identity_reproduces_input(mode):
    img, _ = phantom_pair((30, 26, 34), axis_code_affine("RAS"), seed=1, kind="mr")
    out = sliding_window_inference(img, lambda x: x, (16, 16, 16), overlap=0.3, batch_size=3, mode=mode)
    np.testing.assert_allclose(out.data, img.data, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(out.affine, img.affine)
    agg = Aggregator((4, 4, 4), 4, 1)
    with pytest.raises(MedstackError, match="not covered"):
        agg.result()


def test_device_prefetcher_with_batch_augment_on_cpu(store):
    root, _, _ = store
    ds = PatchDataset(root / "out", LabelSampler(16), samples_per_volume=2, seed=0)
    loader = make_loader(ds, batch_size=2, num_workers=0, shuffle=False)
    batches = list(DevicePrefetcher(loader, "cpu", augment=BatchAugment(rotation=10), seed=0))
    assert len(batches) == 3
    assert batches[0]["image"].dtype == torch.float32 and batches[0]["label"].dtype == torch.uint8


def test_bad_dataset_arguments(store):
    root, _, _ = store
    with pytest.raises(MedstackError, match="sampler must be"):
        PatchDataset(root / "out", object())
    with pytest.raises(MedstackError, match="differs from the sampler"):
        PatchDataset(root / "out", UniformSampler(8), patch_size=16)
    with pytest.raises(MedstackError, match="no such store"):
        PatchDataset(root / "nothing", UniformSampler(8))


def test_prepare_with_spacing_and_back_to_original_grid(store, tmp_path):
    from medstack.data import to_original_grid

    root, cases, _ = store
    manifest = prepare(cases[:1], tmp_path / "iso", spacing=3.0, workers=1)
    entry = json.loads(manifest.read_text())["cases"][0]
    prepared_label = medstack.load(tmp_path / "iso" / entry["file"], name="label")
    assert prepared_label.spacing == pytest.approx((3.0, 3.0, 3.0))
    back = to_original_grid(prepared_label, entry)
    original = medstack.load(cases[0]["label"])
    assert back.spatial_shape == original.spatial_shape
    np.testing.assert_allclose(back.affine, original.affine)
    assert (back.data == original.data).mean() > 0.9  # nearest round trip through a coarser grid
    same = medstack.load(cases[0]["label"])
    assert to_original_grid(same, tmp_path / "iso" / entry["file"]) is same  # already on the grid


def test_set_epoch_reaches_persistent_workers(store):
    root, _, _ = store
    ds = PatchDataset(root / "out", UniformSampler(8), samples_per_volume=2, seed=4)
    loader = make_loader(ds, batch_size=2, num_workers=2, shuffle=False)  # persistent workers
    first = [b["start"] for b in loader]
    ds.set_epoch(1)
    second = [b["start"] for b in loader]
    reference = [b["start"] for b in make_loader(ds, batch_size=2, num_workers=0, shuffle=False)]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    for a, b in zip(second, reference):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("sampler", "patch"), [(UniformSampler, 16), (LabelSampler, (20, 32, 12))])
def test_patch_loader_equals_dataloader_batches(store, sampler, patch):
    """Threaded batches (mmap reads, padding where the patch passes the volume's edge) equal default_collate
    of the dataset's items, for any number of threads."""
    root, _, _ = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchSizeWarning)  # one case is smaller than the patch on purpose
        ds = PatchDataset(root / "out", sampler(patch), samples_per_volume=5, seed=2)
    reference = list(make_loader(ds, batch_size=4, num_workers=0, shuffle=False))
    for threads in (1, 3):
        assert_same_batches(PatchLoader(ds, batch_size=4, shuffle=False, num_threads=threads, prefetch=2), reference)
    loader = PatchLoader(ds, batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == len(list(loader)) == len(ds) // 4
    assert len(PatchLoader(ds, batch_size=4)) == -(-len(ds) // 4)


def test_patch_loader_shuffle_epochs_ranks_and_transforms(store):
    from torch.utils.data.distributed import DistributedSampler

    from medstack.transforms import Compose, RandomFlip

    root, _, _ = store
    ds = PatchDataset(root / "out", UniformSampler(12), samples_per_volume=6, seed=1)
    a = list(PatchLoader(ds, batch_size=3, seed=7, num_threads=1))
    b = list(PatchLoader(ds, batch_size=3, seed=7, num_threads=2))
    assert_same_batches(a, b)
    assert sorted(s for x in a for s in x["case_id"]) == sorted(ds.store.ids * 6)
    loader = PatchLoader(ds, batch_size=3, seed=7)
    loader.set_epoch(1)
    c = list(loader)
    assert any(not torch.equal(x["start"], y["start"]) for x, y in zip(a, c))
    ds.set_epoch(0)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        seen.append({(cid, tuple(s.tolist())) for x in PatchLoader(ds, batch_size=4, sampler=sampler)
                     for cid, s in zip(x["case_id"], x["start"])})  # fmt: skip
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    aug = PatchDataset(root / "out", UniformSampler(12), samples_per_volume=2, seed=1,
                       transform=Compose([RandomFlip(axes=(0, 1, 2))]))  # fmt: skip
    assert_same_batches(PatchLoader(aug, batch_size=2, shuffle=False, num_threads=2),
                  make_loader(aug, batch_size=2, num_workers=0, shuffle=False))  # fmt: skip


def test_patch_loader_bad_arguments(store):
    root, cases, _ = store
    with pytest.raises(MedstackError, match="needs a medstack PatchDataset"):
        PatchLoader(VolumeDataset(cases))
    with pytest.raises(MedstackError, match="batch_size must be"):
        PatchLoader(PatchDataset(root / "out", UniformSampler(8)), batch_size=0)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_aggregator_grid_and_free_starts_agree(mode):
    """The separable weight sum of a grid equals the accumulated weight map; free (non-grid, repeated,
    partly outside) starts take the accumulated path; both reproduce the input with an identity model."""
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(2, 21, 18, 25)).astype(np.float32)
    patch = (8, 7, 9)
    grid = grid_positions(vol.shape[1:], patch, 0.4)
    agg = Aggregator(vol.shape[1:], patch, 2, mode=mode)
    agg.add(torch.from_numpy(np.stack([read_patch(vol, s, patch) for s in grid])), grid)
    fast = agg.weight_map()
    assert agg._axis_sums() is not None
    agg._starts.append((10**6, 0, 0))  # not a grid any more -> accumulated map (the far start adds nothing)
    assert agg._axis_sums() is None
    torch.testing.assert_close(agg.weight_map(), fast, rtol=1e-5, atol=1e-6)
    agg._starts.pop()
    np.testing.assert_allclose(agg.result().numpy(), vol, rtol=1e-5, atol=1e-5)
    free = np.concatenate([grid, rng.integers(-4, 20, size=(15, 3)), grid[:3]])
    agg = Aggregator(vol.shape[1:], patch, 2, mode=mode)
    for k in range(0, len(free), 4):
        agg.add(np.stack([read_patch(vol, s, patch) for s in free[k : k + 4]]), free[k : k + 4])
    assert agg._axis_sums() is None
    np.testing.assert_allclose(agg.result().numpy(), vol, rtol=1e-5, atol=1e-5)


def test_gaussian_weights_and_torch_input():
    from medstack.patches import gaussian_weights

    w = gaussian_weights((16, 12, 20))
    assert w.shape == (16, 12, 20) and w.max() == pytest.approx(1.0, abs=1e-6) and w.min() >= 1e-3 - 1e-9
    f = gaussian_weights((16, 12, 20), separable=True)
    np.testing.assert_allclose(w, f[0][:, None, None] * f[1][None, :, None] * f[2][None, None, :], rtol=1e-6)
    img, _ = phantom_pair((20, 22, 18), axis_code_affine("RAS"), seed=2, kind="mr")
    tv = img.replace(data=torch.from_numpy(img.data.astype(np.float32)))
    out = sliding_window_inference(tv, lambda x: x * 2, (12, 12, 12), overlap=0.5, batch_size=5)
    np.testing.assert_allclose(np.asarray(out.data), 2 * img.data, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("n_cases", "spv", "bs", "nw"), [(4, 8, 4, 2), (5, 8, 4, 2), (6, 4, 2, 3), (3, 6, 3, 1)])
def test_case_grouped_sampler_keeps_each_case_on_one_worker(store, n_cases, spv, bs, nw):
    """With batch_size/num_workers given, DataLoader's round-robin (batch j -> worker j % nw) sends every batch
    of a case to the same worker, so each case is loaded once per epoch (when the cases do not divide evenly
    among workers, the last ones may be shared); all indices appear once."""
    _, cases, _ = store
    q = QueueDataset([dict(c, id=f"{c['id']}_{k}") for k in range(2) for c in cases][:n_cases], UniformSampler(8),
                     samples_per_volume=spv)  # fmt: skip
    order = list(CaseGroupedSampler(q, seed=3, batch_size=bs, num_workers=nw))
    assert sorted(order) == list(range(len(q)))
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    owner = {}
    for j, b in enumerate(batches):
        for i in b:
            owner.setdefault(i // spv, set()).add(j % nw)
    shared = [c for c, w in owner.items() if len(w) > 1]
    assert len(shared) <= (n_cases % nw and nw - 1), owner


def test_device_prefetcher_over_patch_loader(store):
    root, _, _ = store
    ds = PatchDataset(root / "out", LabelSampler(16), samples_per_volume=4, seed=0)
    loader = PatchLoader(ds, batch_size=4, num_threads=2, seed=1)
    batches = list(DevicePrefetcher(loader, "cpu", augment=BatchAugment(rotation=10), seed=0))
    assert len(batches) == len(loader) == 3
    raw = list(loader)
    assert [b["case_id"] for b in batches] == [b["case_id"] for b in raw]
    assert batches[0]["image"].dtype == torch.float32 and batches[0]["label"].dtype == torch.uint8


def test_patch_loader_reuses_buffers_only_when_released(store):
    """Batch memory is recycled, but never while the caller (or a view of a batch) still holds it."""
    import gc

    root, _, _ = store
    ds = PatchDataset(root / "out", UniformSampler(8), samples_per_volume=40, seed=3)
    loader = PatchLoader(ds, batch_size=4, shuffle=False, num_threads=2, prefetch=2, pin_memory=False)
    it = iter(loader)
    held = next(it)
    kept_copy = held["image"].clone()
    view = next(it)["image"][1]  # a view outliving its batch dict
    view_copy = view.clone()
    for _ in range(10):
        next(it)
    gc.collect()
    torch.testing.assert_close(held["image"], kept_copy)
    torch.testing.assert_close(view, view_copy)
    for _ in it:
        pass
    pools = list(loader._buffers.values())
    assert pools and all(len(p._free) <= 2 + 2 + 2 for p in pools)  # bounded: prefetch + held + in flight
    reference = list(make_loader(ds, batch_size=4, num_workers=0, shuffle=False))
    assert_same_batches(PatchLoader(ds, batch_size=4, shuffle=False, num_threads=2, pin_memory=False), reference)
