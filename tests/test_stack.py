import numpy as np
import pytest

import medstack
from medstack import Volume
from medstack.errors import GeometryError, MedstackError
from medstack.stack import stack
from medstack.testing import axis_code_affine, phantom_pair, random_affine, world_volume


def test_channels_agree_at_world_points_across_orientations():
    a = world_volume((12, 13, 14), axis_code_affine("RAS", (1, 1, 1.5)))
    b_aff = random_affine(np.random.default_rng(1), spacing_range=(0.8, 1.6))
    b_aff[:3, 3] += a.voxel_to_world([7, 6, 6]) - (b_aff[:3, :3] @ [7, 8, 5] + b_aff[:3, 3])  # overlap a's centre
    b = world_volume((10, 16, 15), b_aff)
    s = stack([a, b], names=["a", "b"])
    assert s.shape == (6, 12, 13, 14) and s.metadata["channel_names"] == ["a_0", "a_1", "a_2", "b_0", "b_1", "b_2"]
    np.testing.assert_allclose(s.affine, a.affine)
    d, h, w = s.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = s.voxel_to_world(np.stack([ww, hh, dd], -1))
    ijk_b = b.world_to_voxel(world)
    inside = np.all((ijk_b >= 0) & (ijk_b <= np.array(b.spatial_shape[::-1]) - 1), axis=-1)
    assert inside.sum() > 200
    np.testing.assert_allclose(s.data[3:].transpose(1, 2, 3, 0)[inside], s.data[:3].transpose(1, 2, 3, 0)[inside],
                               atol=1e-3)  # fmt: skip


def test_image_label_pair_and_label_nearest():
    img, lab = phantom_pair((20, 24, 22), random_affine(np.random.default_rng(3)), seed=3, kind="mr")
    ref = Volume(np.zeros((1, 16, 16, 16), np.float32), axis_code_affine("RAS", (1.5, 1.5, 1.5),
                 img.voxel_to_world([11, 12, 10]) - 12))  # fmt: skip
    s = stack([img, lab], reference=ref, names=["t1", "seg"], labels=[1])
    assert set(np.unique(s.data[1])) <= set(np.unique(lab.data)) | {0}


def test_same_grid_needs_no_resampling_and_keeps_dtype():
    a = world_volume((4, 5, 6), np.eye(4), n_channels=1, dtype=np.int16)
    s = stack([a, a, a])
    assert s.dtype == np.int16 and s.shape == (3, 4, 5, 6)


def test_resample_false_names_both_grids():
    a = world_volume((4, 5, 6), np.eye(4), n_channels=1)
    b = world_volume((4, 5, 6), axis_code_affine("LPS"), n_channels=1)
    with pytest.raises(GeometryError, match=r"volumes\[1\] is on another grid.*LPS.*RAS"):
        stack([a, b], resample=False)


def test_bad_arguments():
    a = world_volume((4, 5, 6), np.eye(4), n_channels=1)
    with pytest.raises(MedstackError, match="at least one"):
        stack([])
    with pytest.raises(MedstackError, match="names has 1 entries for 2"):
        stack([a, a], names=["x"])
    with pytest.raises(MedstackError, match=r"volumes\[1\] is a ndarray"):
        stack([a, a.data])
    with pytest.raises(MedstackError, match="out of range"):
        stack([a], reference=3)


def test_dicom_4d_stacks_as_its_channels():
    from tests.test_dicom_qa import QA

    if not QA.exists():
        pytest.skip("no dicom-qa")
    dwi = medstack.load(QA / "ge/dwi_4d")
    s = stack([dwi, dwi.replace(data=dwi.data[:1])], names=["dwi", "b0"])
    assert s.shape[0] == 8 and s.metadata["channel_names"][-1] == "b0"


def test_sample_mr_multicontrast():
    t1 = medstack.load("data_samples/nifti/mr_t1.nii.gz")
    t2 = medstack.load("data_samples/nifti/mr_t2.nii.gz")
    lab = medstack.load("data_samples/nifti/mr_label.nii.gz")
    s = medstack.stack([t1, t2, lab], names=["t1", "t2", "label"], labels=[2])
    assert s.shape == (3, *t1.spatial_shape) and s.metadata["channel_names"] == ["t1", "t2", "label"]
    # T2 resampled onto T1: the cyst (label 2) is bright on T2 (helper's phantom contrast)
    cyst = s.data[2] == 2
    assert cyst.any() and s.data[1][cyst].mean() > 2 * s.data[1][s.data[2] == 1].mean()
