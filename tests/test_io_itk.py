import os

import numpy as np
import pytest

import medstack
from medstack.errors import FormatError, OutputExistsError
from medstack.testing import random_affine, world_volume
from tests.test_volume import assert_world_encoded

sitk = pytest.importorskip("SimpleITK")  # the ITK readers need it; the module still collects without it

AFFINE = random_affine(np.random.default_rng(7))


@pytest.mark.parametrize("ext", ["nrrd", "nhdr", "mha", "mhd"])
def test_round_trip_keeps_values_and_world(tmp_path, ext):
    vol = world_volume((5, 6, 7), AFFINE)
    medstack.save(vol.replace(data=vol.data[:1]), tmp_path / f"one.{ext}")
    medstack.save(vol, tmp_path / f"three.{ext}")
    for name, expected in (("one", vol.data[:1]), ("three", vol.data)):
        back = medstack.load(tmp_path / f"{name}.{ext}")
        np.testing.assert_array_equal(back.data, expected)
        np.testing.assert_allclose(back.affine, AFFINE, atol=1e-6)
        assert_world_encoded(back)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporaries left


def test_itk_physical_points_agree(tmp_path):
    vol = world_volume((5, 6, 7), AFFINE, n_channels=1)
    medstack.save(vol, tmp_path / "a.mha")
    image = sitk.ReadImage(str(tmp_path / "a.mha"))
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(lps * [-1, -1, 1], vol.voxel_to_world(ijk), atol=1e-6)


def test_4d_nrrd_channels(tmp_path, rng):
    arr = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)  # (t, z, y, x)
    image = sitk.GetImageFromArray(arr, isVector=False)  # 4D scalar image
    sitk.WriteImage(image, str(tmp_path / "f.nrrd"))
    vol = medstack.load(tmp_path / "f.nrrd")
    assert vol.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(vol.data, arr)


def test_2d_image_becomes_one_slice(tmp_path, rng):
    arr = rng.integers(0, 255, size=(4, 5)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "s.mha"))
    vol = medstack.load(tmp_path / "s.mha")
    assert vol.shape == (1, 1, 4, 5)


def test_corrupt_itk_file(tmp_path):
    p = tmp_path / "c.nrrd"
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n" + b"\0" * 10)
    with pytest.raises(FormatError, match=r"c\.nrrd: SimpleITK cannot read"):
        medstack.load(p)


def test_mhd_no_overwrite(tmp_path):
    vol = world_volume((3, 4, 5), AFFINE, n_channels=1)
    medstack.save(vol, tmp_path / "x.mhd")
    with pytest.raises(OutputExistsError):
        medstack.save(vol, tmp_path / "x.mhd")
