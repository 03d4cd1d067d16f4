import numpy as np
import pytest
import torch

import medstack
from medstack import Volume
from medstack.errors import GeometryError, MedstackError
from medstack.testing import axis_code_affine, random_affine, world_volume
from tests.test_geometry import ALL_CODES

SHAPE = (6, 7, 8)  # (D, H, W), all different so axis mix-ups show


def oblique_volume(seed=0, dtype=np.float32):
    return world_volume(SHAPE, random_affine(np.random.default_rng(seed)), dtype=dtype)


def assert_world_encoded(vol, atol=1e-3):
    """Every voxel of a world_volume holds its own RAS position under vol.affine."""
    c, d, h, w = vol.shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    ijk = np.stack([ww, hh, dd], axis=-1)
    expected = np.moveaxis(vol.voxel_to_world(ijk), -1, 0)
    np.testing.assert_allclose(np.asarray(vol.data, dtype=np.float64), expected[:c], atol=atol)


def test_derived_geometry_in_dhw_order():
    a = axis_code_affine("LPS", spacing=(0.7, 0.8, 2.5), origin=(1, 2, 3))
    vol = Volume(np.zeros((2, *SHAPE), np.int16), a)
    assert vol.shape == (2, 6, 7, 8)
    assert vol.spatial_shape == SHAPE
    assert vol.n_channels == 2
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert vol.origin == (1.0, 2.0, 3.0)
    assert vol.orientation == "LPS"
    np.testing.assert_allclose(vol.direction, np.diag([-1.0, -1.0, 1.0]))
    assert vol.nbytes == 2 * 6 * 7 * 8 * 2


def test_affine_is_read_only_float64_copy_and_volume_is_frozen():
    a = np.eye(4, dtype=np.float32)
    vol = Volume(np.zeros((1, 2, 2, 2)), a)
    a[0, 0] = 5
    assert vol.affine.dtype == np.float64 and vol.affine[0, 0] == 1
    with pytest.raises(ValueError):
        vol.affine[0, 0] = 2
    with pytest.raises(AttributeError):
        vol.data = None
    with pytest.raises(TypeError):
        vol.metadata["x"] = 1


def test_repr_shows_shape_spacing_orientation_dtype_size():
    vol = Volume(np.zeros((1, 64, 128, 128), np.int16), axis_code_affine("LPS", (0.7, 0.7, 2.5)))
    r = repr(vol)
    for part in ("(1, 64, 128, 128)", "2.5, 0.7, 0.7", "'LPS'", "int16", "2.0 MiB"):
        assert part in r


@pytest.mark.parametrize(
    "data, affine, match",
    [
        (np.zeros((4, 4, 4)), np.eye(4), r"\(C, D, H, W\).*data\[None\]"),
        (np.zeros((1, 0, 4, 4)), np.eye(4), "empty"),
        (np.zeros((1, 2, 2, 2)), np.zeros((4, 4)), "affine"),
        (np.zeros((1, 2, 2, 2)), np.diag([1, 1, np.nan, 1]), "NaN"),
        ([1, 2, 3], np.eye(4), "numpy array"),
    ],
)
def test_bad_volumes(data, affine, match):
    with pytest.raises(MedstackError, match=match):
        Volume(data, affine)


def test_to_tensor_shares_memory_when_possible():
    arr = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    vol = Volume(arr, np.eye(4))
    t = vol.to_tensor()
    assert t.data_ptr() == arr.__array_interface__["data"][0]
    assert vol.to_tensor(dtype=torch.float64).dtype == torch.float64
    tv = Volume(t, np.eye(4))
    assert tv.to_tensor() is t
    ro = arr.copy()
    ro.flags.writeable = False
    assert torch.equal(Volume(ro, np.eye(4)).to_tensor(), t)  # copied, no warning


@pytest.mark.parametrize("code", ALL_CODES)
def test_reorient_to_every_code_and_back_is_exact(code):
    vol = oblique_volume(3)
    out = vol.reoriented(code)
    assert out.orientation == code
    assert_world_encoded(out)
    back = out.reoriented(vol.orientation)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)


def test_reorient_torch_tensor_keeps_type():
    vol = oblique_volume(4)
    tv = vol.replace(data=vol.to_tensor())
    out = tv.reoriented("PIR")
    assert isinstance(out.data, torch.Tensor)
    np.testing.assert_array_equal(out.data.numpy(), vol.reoriented("PIR").data)


def test_reoriented_does_not_mutate_input():
    vol = oblique_volume(5)
    before = vol.data.copy()
    vol.reoriented("LIP")
    np.testing.assert_array_equal(vol.data, before)


def test_voxel_world_methods_use_ijk_order():
    vol = Volume(np.zeros((1, *SHAPE)), axis_code_affine("RAS", (1, 2, 3), (10, 20, 30)))
    np.testing.assert_allclose(vol.voxel_to_world([[1, 1, 1]]), [[11, 22, 33]])
    np.testing.assert_allclose(vol.world_to_voxel([11, 22, 33]), [1, 1, 1])


def _probe_points(vol):
    rng = np.random.default_rng(0)
    d, h, w = vol.spatial_shape
    return [(int(rng.integers(w)), int(rng.integers(h)), int(rng.integers(d))) for _ in range(10)]


def test_nibabel_round_trip_same_world_points(tmp_path):
    import nibabel as nib

    vol = oblique_volume(6)
    img = vol.to_nibabel()
    path = tmp_path / "v.nii.gz"
    medstack.save(vol, path)
    on_disk = nib.load(path)
    for img_ in (img, on_disk):
        arr = np.asanyarray(img_.dataobj)
        for i, j, k in _probe_points(vol):
            # nibabel indexes (x, y, z, c) = (i, j, k); its affine places it in the same world point
            np.testing.assert_allclose(img_.affine @ [i, j, k, 1], vol.affine @ [i, j, k, 1])
            np.testing.assert_allclose(arr[i, j, k, :], vol.data[:, k, j, i])
    back = Volume.from_nibabel(on_disk)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert_world_encoded(back)


def test_sitk_round_trip_same_world_points():
    vol = oblique_volume(7)
    for v in (vol, vol.replace(data=vol.data[:1])):
        image = v.to_sitk()
        arr = __import__("SimpleITK").GetArrayViewFromImage(image)
        for i, j, k in _probe_points(v):
            lps = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
            ras = vol.affine @ [i, j, k, 1]
            np.testing.assert_allclose(lps * [-1, -1, 1], ras[:3], atol=1e-6)
            value = arr[k, j, i] if v.n_channels == 1 else arr[k, j, i, :]
            np.testing.assert_allclose(value, v.data[:, k, j, i].squeeze())
        back = Volume.from_sitk(image)
        np.testing.assert_array_equal(back.data, v.data)
        np.testing.assert_allclose(back.affine, v.affine, atol=1e-9)


def test_monai_round_trip_same_world_points():
    from monai.transforms import Orientation

    vol = oblique_volume(8)
    mt = vol.to_monai()
    assert tuple(mt.shape) == (3, 8, 7, 6)  # (C, i, j, k)
    for i, j, k in _probe_points(vol):
        np.testing.assert_allclose(mt.affine.numpy() @ [i, j, k, 1], vol.affine @ [i, j, k, 1])
        np.testing.assert_allclose(mt[:, i, j, k].numpy(), vol.data[:, k, j, i])
    back = Volume.from_monai(mt)
    np.testing.assert_array_equal(back.to_numpy(), vol.data)
    np.testing.assert_allclose(back.affine, vol.affine)
    # MONAI's own reorientation agrees with ours, voxel for voxel
    ras = Orientation(axcodes="RAS")(mt)
    np.testing.assert_allclose(Volume.from_monai(ras).to_numpy(), vol.reoriented("RAS").data)


def test_from_monai_converts_lps_space():
    import torch
    from monai.data import MetaTensor

    a = axis_code_affine("RAS", origin=(5, 6, 7))
    mt = MetaTensor(torch.zeros(1, 3, 3, 3), affine=torch.as_tensor(a), meta={"space": "LPS"})
    back = Volume.from_monai(mt)
    np.testing.assert_allclose(back.origin, (-5, -6, 7))


def test_replace_validates():
    vol = oblique_volume(9)
    with pytest.raises(GeometryError):
        vol.replace(affine=np.zeros((4, 4)))
    assert vol.replace(metadata={"a": 1}).metadata["a"] == 1
