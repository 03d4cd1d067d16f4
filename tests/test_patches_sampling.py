"""nnU-Net-style patch sampling: label-balanced patches that pad past the border instead of shifting (so the
centre class follows the requested ratios), random offsets, and batch-level foreground oversampling."""

import numpy as np
import pytest
import torch

import medstack
from medstack.data import (
    BatchSlotSampler,
    CaseGroupedSampler,
    PatchDataset,
    PatchLoader,
    QueueDataset,
    make_loader,
    prepare,
)
from medstack.errors import ArgumentError
from medstack.patches import CaseInfo, LabelSampler, class_voxel_lists, read_patch
from medstack.patches.samplers import ForegroundOversampler

CHI2_3DOF_P001 = 16.27  # chi-square quantile, 3 degrees of freedom, p = 0.001
CHI2_1DOF_P001 = 10.83


def chi2(counts, probs):
    counts = np.asarray(counts, np.float64)
    expected = counts.sum() * np.asarray(probs, np.float64)
    return float(((counts - expected) ** 2 / expected).sum())


def thin_case():
    """40 slices, 4 classes: class 1 at the first slices, 2 in the middle, 3 at the last slices."""
    shape = (40, 64, 64)
    lab = np.zeros(shape, np.uint8)
    lab[0:6, 10:30, 10:30] = 1
    lab[17:23, 30:50, 30:50] = 2
    lab[34:40, 40:60, 5:25] = 3
    voxels, _, _ = class_voxel_lists(lab, max_per_class=5000)
    return lab, CaseInfo(shape, {k: v for k, v in voxels.items() if k}, voxels[0])


def centre_classes(lab, starts, patch):
    """Class of each patch's centre voxel, read through the padding reader (label 0 outside)."""
    p = np.asarray(patch)
    return np.array([read_patch(lab[None], s, p, 0)[0][tuple(p // 2)] for s in starts])


@pytest.mark.parametrize("offset", ["center", "random"])
def test_pad_mode_keeps_requested_centre_class_ratios_where_shift_does_not(offset):
    lab, case = thin_case()
    patch = (32, 32, 32)
    rng = np.random.default_rng(0)
    shifted = LabelSampler(patch, ratios=[1, 1, 1, 1]).sample(case, rng, 400)
    counts_shift = np.bincount(centre_classes(lab, shifted, patch), minlength=4)
    assert chi2(counts_shift, [0.25] * 4) > 100  # border classes 1 and 3 are never at the centre
    padded = LabelSampler(patch, ratios=[1, 1, 1, 1], border="pad").sample(case, np.random.default_rng(0), 400)
    counts_pad = np.bincount(centre_classes(lab, padded, patch), minlength=4)
    assert chi2(counts_pad, [0.25] * 4) < CHI2_3DOF_P001, counts_pad
    assert (padded[:, 0] < 0).any() and (padded[:, 0] > 40 - 32).any()  # past both ends, the reader pads
    # unequal ratios hold as well
    s = LabelSampler(patch, ratios={0: 1, 1: 2, 2: 3, 3: 4}, border="pad")
    counts = np.bincount(centre_classes(lab, s.sample(case, np.random.default_rng(1), 600), patch), minlength=4)
    assert chi2(counts, [0.1, 0.2, 0.3, 0.4]) < CHI2_3DOF_P001, counts
    # a random offset keeps the class in the patch, not at its centre
    s = LabelSampler(patch, ratios=[0, 1, 1, 1], border="pad", offset=offset)
    starts = s.sample(case, np.random.default_rng(2), 200)
    assert all((read_patch(lab[None], st, patch, 0) > 0).any() for st in starts)


@pytest.mark.parametrize("border", ["shift", "pad"])
def test_random_offset_puts_the_chosen_voxel_anywhere_inside_the_patch(border):
    shape, patch = (40, 64, 64), np.array((16, 24, 8))
    lab = np.zeros(shape, np.uint8)
    for voxel in [(1, 2, 60), (20, 30, 30), (39, 63, 0)]:  # one voxel: the chosen voxel is known
        lab[:] = 0
        lab[voxel] = 1
        case = CaseInfo(shape, {1: np.argwhere(lab == 1)}, np.argwhere(lab == 0))
        s = LabelSampler(patch, pos=1, neg=0, border=border, offset="random")
        starts = s.sample(case, np.random.default_rng(3), 3000)
        where = np.asarray(voxel) - starts  # the voxel's position inside each patch
        assert ((where >= 0) & (where < patch)).all()
        if border == "pad" or voxel == (20, 30, 30):  # far from the border (or padded): uniform offsets
            for a in range(3):
                counts = np.bincount(where[:, a], minlength=patch[a])
                assert chi2(counts, np.full(patch[a], 1 / patch[a])) < 2.5 * patch[a] + 20, (a, counts)
        if border == "shift":
            assert ((starts >= 0) & (starts <= np.asarray(shape) - patch)).all()


def test_default_label_sampler_is_unchanged_and_bad_modes_raise():
    lab, case = thin_case()
    s = LabelSampler((32, 32, 32), ratios=[1, 1, 1, 1])
    assert (s.border, s.offset) == ("shift", "center")
    explicit = LabelSampler((32, 32, 32), ratios=[1, 1, 1, 1], border="shift", offset="center")
    np.testing.assert_array_equal(s.sample(case, np.random.default_rng(5), 50),
                                  explicit.sample(case, np.random.default_rng(5), 50))  # fmt: skip
    with pytest.raises(ArgumentError, match="border must be one of 'shift', 'pad', got 'clip'"):
        LabelSampler(8, border="clip")
    with pytest.raises(ArgumentError, match="offset must be one of"):
        ForegroundOversampler(8, batch_size=2, offset="edge")


@pytest.mark.parametrize(("bs", "fraction", "n"), [(2, 0.33, 1), (3, 0.33, 1), (4, 0.33, 1), (6, 0.33, 2),
                                                   (1, 0.5, 1), (4, 0.0, 0), (4, 1.0, 4), (5, 0.5, 3)])  # Python round: 2.5 -> 2  # fmt: skip
def test_forced_count_is_nnunets(bs, fraction, n):
    s = ForegroundOversampler(8, batch_size=bs, fraction=fraction)
    assert s.n_forced == n
    assert [s.forced(i) for i in range(2 * bs)] == [i % bs < n for i in range(2 * bs)]


def test_oversampler_bad_arguments():
    with pytest.raises(ArgumentError, match="forces no item"):
        ForegroundOversampler(8, batch_size=1, fraction=0.33)
    with pytest.raises(ArgumentError, match="batch_size must be an int >= 1"):
        ForegroundOversampler(8, batch_size=0)
    with pytest.raises(ArgumentError, match=r"fraction must be in \[0, 1\]"):
        ForegroundOversampler(8, batch_size=2, fraction=1.5)
    with pytest.raises(ArgumentError, match="differs from the dataset sampler's batch_size 4"):
        BatchSlotSampler(_FakeDataset(ForegroundOversampler(8, batch_size=4)), batch_size=2)
    with pytest.raises(ArgumentError, match="batch_size must be an int"):
        BatchSlotSampler(10)


class _FakeDataset:
    def __init__(self, sampler, n=10):
        self.sampler, self.n = sampler, n

    def __len__(self):
        return self.n


def test_forced_items_pick_a_present_class_uniformly_then_fall_back():
    lab, case = thin_case()  # three foreground classes of different sizes
    s = ForegroundOversampler((32, 32, 32), batch_size=3, fraction=1.0)
    starts = s.sample(case, np.random.default_rng(0), 600)
    counts = np.bincount(centre_classes(lab, starts, (32, 32, 32)), minlength=4)
    assert counts[0] == 0
    assert chi2(counts[1:], [1 / 3] * 3) < CHI2_3DOF_P001, counts
    # no foreground (empty lists, or none at all): uniform patches inside the volume, no error
    for empty in (CaseInfo(lab.shape, {1: np.zeros((0, 3), np.int32)}, case.background_voxels), CaseInfo(lab.shape)):
        st = s.sample(empty, np.random.default_rng(0), 50)
        assert ((st >= 0) & (st <= np.asarray(lab.shape) - 32)).all()
    # deterministic per (rng, index)
    a = [s.sample_item(case, np.random.default_rng(7), i) for i in range(6)]
    b = [s.sample_item(case, np.random.default_rng(7), i) for i in range(6)]
    np.testing.assert_array_equal(a, b)


def test_batch_slot_sampler_order():
    for n, bs in [(12, 4), (10, 4), (7, 3), (5, 1)]:
        order = list(BatchSlotSampler(n, batch_size=bs, seed=1))
        assert sorted(order) == list(range(n))
        for j in range(0, n, bs):
            assert [i % bs for i in order[j : j + bs]] == list(range(min(bs, n - j)))
    s = BatchSlotSampler(64, batch_size=4, seed=1)
    first = list(s)
    assert list(s) == first and len(s) == 64
    s.set_epoch(1)
    assert list(s) != first


# --- datasets and loaders -----------------------------------------------------------------------------------

FG = {"c0": {1: (3, 5, 40), 2: (30, 40, 8)}, "c1": {1: (38, 20, 20)}, "empty": {}}  # one voxel per class
SHAPE, PATCH, BS = (40, 48, 48), 16, 4


def _cases():
    cases = []
    for k, (cid, blobs) in enumerate(FG.items()):
        affine = np.diag([1.5, 0.8, 0.8, 1.0])
        affine[:3, 3] = (k, -3.0, 2.0)
        img = np.random.default_rng(k).integers(0, 1000, (1, *SHAPE)).astype(np.int16)
        lab = np.zeros((1, *SHAPE), np.uint8)
        for c, (d, h, w) in blobs.items():
            lab[0, d, h : h + 2, w : w + 2] = c
        cases.append({"id": cid, "image": medstack.Volume(img, affine), "label": medstack.Volume(lab, affine)})
    return cases


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("oversample")
    prepare(_cases(), root / "out", workers=1)
    return root / "out"


def _check_batches(batches, n_forced):
    """Every batch: its first n_forced items (the forced slots) contain foreground, unless their case has none;
    returns (forced items checked, batches)."""
    checked = n = 0
    for b in batches:
        n += 1
        has_fg = (b["label"].flatten(1) > 0).any(dim=1).tolist()
        n_fg_cases = 0
        for j, cid in enumerate(b["case_id"]):
            if j < n_forced and FG[cid]:
                assert has_fg[j], (cid, b["start"][j])
                centre = b["label"][j, 0, PATCH // 2, PATCH // 2, PATCH // 2]
                assert centre > 0  # pad + center: the forced voxel is the centre voxel
                checked += 1
                n_fg_cases += 1
        assert sum(has_fg) >= n_fg_cases
    return checked, n


def _starts(batches):
    return [(cid, tuple(s.tolist())) for b in batches for cid, s in zip(b["case_id"], b["start"])]


def test_every_batch_has_the_forced_foreground_patches_patch_loader_and_dataloader(store):
    sampler = ForegroundOversampler(PATCH, batch_size=BS, fraction=0.5)
    ds = PatchDataset(store, sampler, samples_per_volume=16, seed=3)
    runs = {}
    for threads in (1, 3):
        loader = PatchLoader(ds, batch_size=BS, sampler=BatchSlotSampler(ds, seed=4), num_threads=threads)
        batches = list(loader)
        checked, n = _check_batches(batches, sampler.n_forced)
        assert n == len(ds) // BS and checked >= n  # 2 forced per batch, 2/3 of them from cases with foreground
        runs[threads] = _starts(batches)
        loader.close()
    assert runs[1] == runs[3]
    reference = list(make_loader(ds, batch_size=BS, num_workers=0, sampler=BatchSlotSampler(ds, seed=4)))
    _check_batches(reference, sampler.n_forced)
    assert _starts(reference) == runs[1]
    # uniform items rarely hold the small blobs: the forcing is what puts foreground in
    fg = np.array([(b["label"].flatten(1) > 0).any(dim=1).numpy() for b in reference])
    assert fg[:, :2].mean() == pytest.approx(2 / 3) and fg[:, 2:].mean() < 0.3  # 1 case in 3 is empty
    # a new epoch: new order and patches, same guarantee
    loader = PatchLoader(ds, batch_size=BS, sampler=BatchSlotSampler(ds, seed=4), num_threads=2)
    loader.set_epoch(1)
    batches = list(loader)
    _check_batches(batches, sampler.n_forced)
    assert _starts(batches) != runs[1]
    loader.close()
    ds.set_epoch(0)


def test_dataloader_workers_give_the_same_patches(store):
    ds = PatchDataset(store, ForegroundOversampler(PATCH, batch_size=BS, fraction=0.33), samples_per_volume=8, seed=1)
    a = list(make_loader(ds, batch_size=BS, num_workers=0, sampler=BatchSlotSampler(ds)))
    b = list(make_loader(ds, batch_size=BS, num_workers=2, sampler=BatchSlotSampler(ds), persistent_workers=False))
    assert _starts(a) == _starts(b)
    _check_batches(b, 1)


def test_a_plain_shuffle_does_not_guarantee_the_count(store):
    """Why BatchSlotSampler exists: with a uniform shuffle, some batches get fewer forced slots."""
    sampler = ForegroundOversampler(PATCH, batch_size=BS, fraction=0.5)
    ds = PatchDataset(store, sampler, samples_per_volume=16, seed=3)
    loader = PatchLoader(ds, batch_size=BS, shuffle=True, seed=0, num_threads=1)
    fg_per_batch = [int((b["label"].flatten(1) > 0).any(dim=1).sum()) for b in loader]
    loader.close()
    assert min(fg_per_batch) < sampler.n_forced
    # shuffle=False batches are runs of consecutive indices: the guarantee holds
    loader = PatchLoader(ds, batch_size=BS, shuffle=False, num_threads=2)
    _check_batches(list(loader), sampler.n_forced)
    loader.close()


def test_queue_dataset_with_case_grouped_sampler(tmp_path):
    sampler = ForegroundOversampler(PATCH, batch_size=BS, fraction=0.5, offset="random")
    ds = QueueDataset(_cases(), sampler, samples_per_volume=2 * BS, seed=2)
    order = CaseGroupedSampler(ds, seed=0, batch_size=BS)
    loader = torch.utils.data.DataLoader(ds, batch_size=BS, sampler=order)
    batches = list(loader)
    for b in batches:
        has_fg = (b["label"].flatten(1) > 0).any(dim=1)
        if FG[b["case_id"][0]]:
            assert has_fg[: sampler.n_forced].all()
    # the same item as PatchDataset-style direct access, deterministic per (seed, epoch, index)
    again = QueueDataset(_cases(), sampler, samples_per_volume=2 * BS, seed=2)
    for i in (0, 5, 17):
        assert torch.equal(ds[i]["start"], again[i]["start"])


def test_patchloader_defaults_to_batch_slots_for_an_oversampler(tmp_path):
    """PatchLoader with a ForegroundOversampler and no sampler= shuffles by batch slot, so every batch keeps its
    forced items; a batch size other than the oversampler's is refused instead of silently breaking the rule."""
    from medstack.data import BatchSlotSampler, PatchDataset, PatchLoader, prepare
    from medstack.errors import ArgumentError

    vol = medstack.Volume(np.zeros((1, 16, 16, 16), np.int16), np.eye(4))
    lab = np.zeros((1, 16, 16, 16), np.uint8)
    lab[0, 2, 2, 2] = 1
    prepare([{"id": "c", "image": vol, "label": medstack.Volume(lab, np.eye(4))}], tmp_path / "s")
    ds = PatchDataset(tmp_path / "s", ForegroundOversampler(4, batch_size=3), samples_per_volume=12, seed=0)
    loader = PatchLoader(ds, batch_size=3, num_threads=1)
    assert isinstance(loader.sampler, BatchSlotSampler)
    for batch in loader:
        assert (batch["label"].flatten(1).amax(1) > 0).sum() >= 1
    with pytest.raises(ArgumentError, match="batch_size"):
        PatchLoader(ds, batch_size=4, num_threads=1)
