import importlib

import numpy as np
import pytest
import torch

import medstack
from medstack import Volume
from medstack.errors import GeometryError, MedstackError
from medstack.resample import resample, target_grid
from medstack.testing import axis_code_affine, phantom, random_affine, world_volume


def sitk_resample(vol: Volume, out_affine, out_shape, mode):
    sitk = pytest.importorskip("SimpleITK")  # optional peer: the module still collects without it
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[mode]
    image = vol.to_sitk()
    ref = Volume(np.zeros((1, *out_shape), np.float32), out_affine).to_sitk()
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(ref)
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(-12345)
    f.SetOutputPixelType(sitk.sitkFloat32 if interp == sitk.sitkLinear else image.GetPixelID())
    return sitk.GetArrayFromImage(f.Execute(image))


def interior_mask(src: Volume, out_affine, out_shape, margin=1.0):
    d, h, w = out_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = np.stack([ww, hh, dd], -1) @ out_affine[:3, :3].T + out_affine[:3, 3]
    ijk = src.world_to_voxel(world)
    hi = np.array(src.spatial_shape[::-1]) - 1 - margin
    return np.all((ijk >= margin) & (ijk <= hi), axis=-1)


@pytest.mark.parametrize("seed", range(4))
def test_linear_matches_simpleitk_on_random_oblique_grids(seed):
    rng = np.random.default_rng(seed)
    vol = phantom((24, 28, 26), random_affine(rng), seed=seed, kind="mr")
    out_affine = random_affine(rng, spacing_range=(0.6, 1.2))
    out_affine[:3, 3] = vol.voxel_to_world(np.array(vol.spatial_shape[::-1]) / 2) - out_affine[:3, :3] @ [6, 6, 6]
    out_shape = (12, 12, 12)
    like = Volume(np.zeros((1, *out_shape), np.float32), out_affine)
    ours = resample(vol, like=like)
    ref = sitk_resample(vol, out_affine, out_shape, "linear")
    mask = interior_mask(vol, out_affine, out_shape)
    assert mask.sum() > 100
    np.testing.assert_allclose(ours.data[0][mask], ref[mask], atol=1e-2 * np.abs(ref[mask]).max())
    np.testing.assert_allclose(ours.affine, out_affine)


@pytest.mark.parametrize("seed", range(3))
def test_nearest_matches_simpleitk_and_keeps_labels(seed):
    rng = np.random.default_rng(10 + seed)
    lab = phantom((24, 28, 26), random_affine(rng), seed=seed, kind="label")
    out_affine, out_shape = target_grid(lab, spacing=(1.3, 0.9, 1.1))
    ours = resample(lab, spacing=(1.3, 0.9, 1.1), mode="nearest", is_label=True)
    assert ours.dtype == lab.dtype
    assert set(np.unique(ours.data)) <= set(np.unique(lab.data))
    ref = sitk_resample(lab, out_affine, out_shape, "nearest")
    mask = interior_mask(lab, out_affine, out_shape)
    agree = (ours.data[0][mask] == ref[mask]).mean()
    assert agree > 0.995  # ties at exactly half a voxel may round differently


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_axis_aligned_world_exact_and_spacing(mode):
    vol = world_volume((12, 14, 16), axis_code_affine("LPS", (0.7, 0.8, 2.5), (5, 6, 7)))
    out = resample(vol, spacing=(1.0, 0.5, 1.3), mode=mode)
    assert out.spacing == pytest.approx((1.0, 0.5, 1.3))
    mask = interior_mask(vol, out.affine, out.spatial_shape, margin=1.0)
    d, h, w = out.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = out.voxel_to_world(np.stack([ww, hh, dd], -1))
    np.testing.assert_allclose(np.moveaxis(out.data, 0, -1)[mask], world[mask], atol=1e-3)


def test_field_of_view_is_kept():
    vol = Volume(np.zeros((1, 30, 40, 50), np.float32), axis_code_affine("RAS", (0.7, 0.7, 2.5), (1, 2, 3)))
    affine, shape = target_grid(vol, spacing=1.0)
    assert shape == (75, 28, 35)
    first_edge_old = vol.affine[:3, :3] @ [-0.5, -0.5, -0.5] + vol.affine[:3, 3]
    first_edge_new = affine[:3, :3] @ [-0.5, -0.5, -0.5] + affine[:3, 3]
    np.testing.assert_allclose(first_edge_new, first_edge_old)


def test_same_grid_is_identity_and_like_self_is_exact():
    vol = phantom((10, 12, 14), random_affine(np.random.default_rng(2)), kind="ct")
    same = resample(vol, like=vol)
    np.testing.assert_array_equal(same.data, vol.data.astype(np.float32))
    np.testing.assert_array_equal(resample(vol, like=vol, mode="nearest").data, vol.data)
    np.testing.assert_allclose(resample(vol, spacing=vol.spacing).data, vol.data, atol=1e-3)


def test_up_then_down_returns_close_to_original():
    vol = phantom((16, 20, 18), axis_code_affine("RAS", (1, 1, 2)), kind="mr", seed=3)
    up = resample(vol, spacing=(1.0, 0.5, 0.5))
    down = resample(up, like=vol)
    inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    err = np.abs(down.data[inner] - vol.data[inner])
    assert err.mean() < 0.02 * np.abs(vol.data).max()


def test_reorienting_never_interpolates_and_resample_agrees():
    vol = phantom((10, 12, 14), axis_code_affine("LPS", (1, 1, 2)), kind="ct", seed=1)
    ras = vol.reoriented("RAS")
    np.testing.assert_array_equal(resample(vol, like=ras, mode="nearest").data, ras.data)
    np.testing.assert_allclose(resample(vol, like=ras).data, ras.data.astype(np.float32))


def test_antialias_smooths_when_downsampling():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(1, 32, 32, 32)).astype(np.float32), np.eye(4))
    plain = resample(vol, spacing=4.0)
    smooth = resample(vol, spacing=4.0, antialias=True)
    assert smooth.data.std() < 0.6 * plain.data.std()


def test_torch_input_stays_torch():
    vol = phantom((8, 9, 10), random_affine(np.random.default_rng(4)), kind="mr")
    tv = vol.replace(data=vol.to_tensor())
    out = resample(tv, spacing=1.5)
    assert isinstance(out.data, torch.Tensor)
    np.testing.assert_allclose(out.data.numpy(), resample(vol, spacing=1.5).data)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    vol = phantom((20, 22, 24), random_affine(np.random.default_rng(5)), kind="mr")
    cpu = resample(vol, spacing=1.1)
    gpu = resample(vol.replace(data=vol.to_tensor(device="cuda")), spacing=1.1)
    assert gpu.data.device.type == "cuda"
    np.testing.assert_allclose(gpu.data.cpu().numpy(), cpu.data, atol=1e-3)
    obl = Volume(np.zeros((1, 10, 10, 10), np.float32), random_affine(np.random.default_rng(6)))
    np.testing.assert_allclose(
        resample(vol.replace(data=vol.to_tensor(device="cuda")), like=obl).data.cpu().numpy(),
        resample(vol, like=obl).data, atol=1e-3,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spacing=(0, 1, 1)), "spacing must be positive"),
        (dict(spacing=(-1, 1, 1)), "spacing must be positive"),
        (dict(shape=(0, 5, 5)), "shape must be positive"),
        (dict(spacing=1, shape=(2, 2, 2)), "exactly one"),
        (dict(spacing=1, mode="bogus"), "mode must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    vol = world_volume((4, 5, 6), np.eye(4))
    with pytest.raises(MedstackError, match=match):
        resample(vol, **kwargs)


def test_non_overlapping_grids_error_and_partial_warning():
    vol = world_volume((4, 5, 6), np.eye(4))
    far = Volume(np.zeros((1, 4, 5, 6)), axis_code_affine("RAS", origin=(1000, 0, 0)))
    with pytest.raises(GeometryError, match="does not overlap"):
        resample(vol, like=far)
    shifted = Volume(np.zeros((1, 4, 5, 6)), axis_code_affine("RAS", origin=(4, 0, 0)))
    with pytest.warns(UserWarning, match=r"only \d+% of the target grid overlaps"):
        out = resample(vol, like=shifted)
    assert np.all(out.data[:, :, :, 3:] == vol.data.min())


def test_float_label_and_linear_label_refused():
    lab = Volume(np.full((1, 3, 3, 3), 1.5, np.float32), np.eye(4))
    with pytest.raises(MedstackError, match="non-integer values"):
        resample(lab, spacing=0.5, mode="nearest", is_label=True)
    with pytest.raises(MedstackError, match=r"label map: resample it with mode='nearest'"):
        resample(lab.replace(data=np.ones((1, 3, 3, 3), np.uint8)), spacing=0.5, is_label=True)


def test_public_api():
    assert medstack.resample is resample


def _index_encoded(shape_dhw, affine, n_channels=2):
    """int32 voxels holding their own (d, h, w) index (plus 10^7 per channel): nearest picks are decodable."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape_dhw), indexing="ij")
    code = (d * 1000 + h) * 1000 + w
    return Volume(np.stack([code + 10**7 * c for c in range(n_channels)]).astype(np.int32), affine)


@pytest.mark.parametrize(("spacing", "shift"), [((1.0, 1.0, 1.0), None), ((0.9, 1.7, 0.6), None),
                                                ((1.0, 0.5, 1.3), (0.37, -0.61, 1.9))])  # fmt: skip
def test_nearest_picks_round_half_up_source_voxel(spacing, shift):
    """Nearest on axis-aligned grids (slice-by-slice path): every output voxel holds exactly the input voxel
    at floor(src + 0.5) of its centre, every channel, the dtype kept; outside the field of view: pad_value."""
    vol = _index_encoded((9, 11, 13), axis_code_affine("LPS", (0.7, 0.8, 2.5), (5, 6, 7)))
    affine, shape = target_grid(vol, spacing=spacing)
    if shift is not None:  # an arbitrary axis-aligned grid, partly outside the input
        affine[:3, 3] += affine[:3, :3] @ np.array(shift)
    out = resample(vol, like=Volume(np.zeros((1, *shape), np.float32), affine), mode="nearest", pad_value=-1)
    assert out.dtype == np.int32 and out.shape == (2, *shape)
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    src = vol.world_to_voxel(out.voxel_to_world(np.stack([w, h, d], -1)))  # (i, j, k) of each output centre
    inside = np.all((src >= -0.5) & (src <= np.array(vol.spatial_shape[::-1]) - 0.5), axis=-1)
    near = np.clip(np.floor(src + 0.5 + 1e-9), 0, np.array(vol.spatial_shape[::-1]) - 1).astype(int)
    expected = (near[..., 2] * 1000 + near[..., 1]) * 1000 + near[..., 0]
    for c in range(2):
        np.testing.assert_array_equal(out.data[c][inside], expected[inside] + 10**7 * c)
        assert np.all(out.data[c][~inside] == -1)
    assert inside.any() and (shift is None or (~inside).any())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 0.45), (2.5, 0.7, 0.7)])
def test_slice_by_slice_linear_equals_three_pass_path(monkeypatch, spacing):
    """The fused slice-by-slice linear path (int16 in, two channels) equals the generic 1D-pass path."""
    R = importlib.import_module("medstack.resample")

    rng = np.random.default_rng(5)
    vol = Volume(rng.integers(-1000, 2000, size=(2, 10, 23, 17)).astype(np.int16),
                 axis_code_affine("LPS", (0.7, 0.7, 2.5), (1, 2, 3)))  # fmt: skip
    fast = resample(vol, spacing=spacing)
    monkeypatch.setattr(R, "_interpolate_fast", lambda *a, **k: None)
    slow = resample(vol, spacing=spacing)
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    np.testing.assert_allclose(fast.data, slow.data, atol=1e-2)  # float32 positions: < 1e-5 voxel apart
