"""Patches read with a margin and augmented into the centred patch on the device: rotated / zoomed patches hold
real voxels (padding < 2% at nnU-Net's ranges) and the batch affine still maps every voxel to its world position."""

import numpy as np
import pytest
import torch

from medstack.data import DevicePrefetcher, PatchDataset, PatchLoader, prepare
from medstack.patches import UniformSampler
from medstack.testing import axis_code_affine, world_volume
from medstack.transforms.gpu import BatchAugment

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    """One case whose 3 channels hold the world x, y, z (mm) of each voxel, offset to stay > 0."""
    out = tmp_path_factory.mktemp("margin")
    vol = world_volume((60, 64, 64), axis_code_affine("RAS", (1.0, 1.0, 1.0), (0, 0, 0)))
    vol = vol.replace(data=vol.to_numpy() + 100.0)  # strictly positive: padding (0) is visible
    prepare([{"id": "w", "image": vol}], out / "store", workers=1)
    return out / "store"


def _batches(store, margin, augment, n=8):
    ds = PatchDataset(store, UniformSampler(PATCH), samples_per_volume=n, seed=0, margin=margin)
    loader = PatchLoader(ds, batch_size=4, num_threads=1)
    return ds, list(DevicePrefetcher(loader, "cpu", augment=augment, seed=1, out_size=ds.out_size))


def test_margin_reads_the_larger_box_and_keeps_the_patch_start(world_store):
    plain = PatchDataset(world_store, UniformSampler(PATCH), samples_per_volume=4, seed=0)
    wide = PatchDataset(world_store, UniformSampler(PATCH), samples_per_volume=4, seed=0, margin=(2, 3, 4))
    assert tuple(wide.patch_size) == (20, 22, 24) and wide.out_size == PATCH
    for i in range(4):
        a, b = plain[i], wide[i]
        assert (b["start"] == a["start"] - torch.tensor([2, 3, 4])).all()
        torch.testing.assert_close(b["image"][:, 2:18, 3:19, 4:20], a["image"])


def test_augmented_patches_from_a_margin_hold_real_voxels_at_the_right_world_position(world_store):
    aug = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=PATCH, p_rotation=1.0, p_scale=1.0,
                              p_noise=0.0, p_blur=0.0, p_brightness=0.0, p_contrast=0.0, p_lowres=0.0,
                              p_gamma=0.0, p_gamma_inverted=0.0)  # fmt: skip
    margin = tuple(int(v) for v in aug.margin(PATCH))
    _, with_margin = _batches(world_store, margin, aug)
    _, without = _batches(world_store, 0, aug)
    pad_with = float(np.mean([(b["image"] == 0).float().mean() for b in with_margin]))
    pad_without = float(np.mean([(b["image"] == 0).float().mean() for b in without]))
    assert pad_with < 0.02 < pad_without, (pad_with, pad_without)
    for b in with_margin:
        assert b["image"].shape[2:] == PATCH
        d, h, w = np.meshgrid(*(np.arange(n) for n in PATCH), indexing="ij")
        vox = np.stack([w, h, d, np.ones_like(d)], -1).reshape(-1, 4).T.astype(np.float64)
        for j in range(b["image"].shape[0]):
            world = (b["affine"][j].numpy() @ vox)[:3].T.reshape(*PATCH, 3)
            got = b["image"][j].numpy().transpose(1, 2, 3, 0) - 100.0
            inside = (b["image"][j] != 0).all(0).numpy()
            np.testing.assert_allclose(got[inside], world[inside], atol=0.05)


def test_prefetcher_out_size_without_augment_centre_crops(world_store):
    ds, batches = _batches(world_store, (2, 2, 2), None, n=4)
    plain = PatchDataset(world_store, UniformSampler(PATCH), samples_per_volume=4, seed=0)
    ref = next(iter(PatchLoader(plain, batch_size=4, num_threads=1)))
    torch.testing.assert_close(batches[0]["image"], ref["image"].float())
    torch.testing.assert_close(batches[0]["affine"], ref["affine"])
