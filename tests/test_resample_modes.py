"""Whole-volume resampling (method="volume", the CUDA path) against the slice path, anisotropic (separate-axis)
resampling and one-hot label resampling (nnU-Net style)."""

import importlib

import numpy as np
import pytest
import torch

from medstack import Volume
from medstack.errors import ArgumentError, GeometryError
from medstack.geometry import DHW
from medstack.resample import looks_like_label, resample, target_grid
from medstack.testing import axis_code_affine, random_affine, world_volume

R = importlib.import_module("medstack.resample")  # the module (medstack.resample is the function)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LPS_ANISO = axis_code_affine("LPS", (0.7, 0.8, 2.5), (5, 6, 7))  # spacing (i, j, k): slices are coarsest


def _grid(affine, shape):
    return Volume(np.zeros((1, *shape), np.float32), affine)


def _shifted_grid(vol, spacing, shift):
    """An axis-aligned grid that is not field-of-view keeping (shifted by a fraction of a voxel, partly outside)."""
    affine, shape = target_grid(vol, spacing=spacing)
    affine[:3, 3] += affine[:3, :3] @ np.array(shift)
    return _grid(affine, shape)


def _flipped_permuted_grid(vol, code, spacing_ijk, shape):
    """A grid with other axis directions (flips + permutation) centred on ``vol``."""
    affine = axis_code_affine(code, spacing_ijk)
    centre = vol.voxel_to_world(np.array(vol.spatial_shape[::-1]) / 2 - 0.5)
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array(shape[::-1]) / 2 - 0.5)
    return _grid(affine, shape)


def _ints(shape, rng, lo=-1000, hi=2000, dtype=np.int16, affine=LPS_ANISO):
    return Volume(rng.integers(lo, hi, size=shape).astype(dtype), affine)


def _index_encoded(shape_dhw, affine, n_channels=2):
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape_dhw), indexing="ij")
    code = (d * 1000 + h) * 1000 + w
    return Volume(np.stack([code + 10**7 * c for c in range(n_channels)]).astype(np.int32), affine)


def _blobs(shape=(18, 30, 28), affine=LPS_ANISO, values=(0, 3, 7), seed=0):
    """Nested ellipsoids: the outer one ``values[1]``, the inner one ``values[2]``, background ``values[0]``."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    r = (
        ((d - c[0]) / (shape[0] * 0.35)) ** 2
        + ((h - c[1]) / (shape[1] * 0.3)) ** 2
        + ((w - c[2]) / (shape[2] * 0.33)) ** 2
    )
    lab = np.full(shape, values[0], np.uint8)
    lab[r < 1.0] = values[1]
    if len(values) > 2:
        lab[r < 0.35] = values[2]
    return Volume(lab[None], affine)


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


# -- whole-volume path == slice path ------------------------------------------------------------------------------
TARGETS = [DHW(1.0, 1.0, 1.0), DHW(0.8, 1.3, 0.45), DHW(2.5, 0.7, 0.8), DHW(5.0, 1.6, 1.4)]


@pytest.mark.parametrize("spacing", TARGETS)
def test_volume_linear_equals_slices(spacing):
    vol = _ints((2, 10, 23, 17), np.random.default_rng(5))
    slices = resample(vol, spacing=spacing, method="slices")
    whole = resample(vol, spacing=spacing, method="volume")
    assert whole.dtype == np.float32 and whole.shape == slices.shape
    np.testing.assert_allclose(whole.data, slices.data, atol=1e-2)  # float32 positions: < 1e-5 voxel apart
    np.testing.assert_array_equal(whole.affine, slices.affine)


@pytest.mark.parametrize("spacing", TARGETS)
def test_volume_nearest_equals_slices_exactly_with_ties_up(spacing):
    """Spacing ratios of 2 put output centres exactly half-way between input centres: ITK's round half up."""
    vol = _index_encoded((9, 11, 13), LPS_ANISO)
    slices = resample(vol, spacing=spacing, mode="nearest", method="slices")
    whole = resample(vol, spacing=spacing, mode="nearest", method="volume")
    assert whole.dtype == np.int32
    np.testing.assert_array_equal(whole.data, slices.data)
    if spacing == DHW(5.0, 1.6, 1.4):  # ratio 2 on every axis: output k maps to src 2k + 0.5 -> index 2k + 1
        d, h, w = whole.spatial_shape
        expected = (np.minimum(2 * np.arange(d) + 1, 8)[:, None, None] * 1000 + np.minimum(2 * np.arange(h) + 1, 10)[
            :, None] ) * 1000 + np.minimum(2 * np.arange(w) + 1, 12)  # fmt: skip
        np.testing.assert_array_equal(whole.data[0], expected)


def test_volume_nearest_keeps_uint8_and_pads():
    lab = _blobs()
    like = _shifted_grid(lab, DHW(1.0, 0.5, 1.3), (0.37, -0.61, 1.9))
    slices = resample(lab, like=like, mode="nearest", pad_value=9, method="slices")
    whole = resample(lab, like=like, mode="nearest", pad_value=9, method="volume")
    assert whole.dtype == np.uint8
    np.testing.assert_array_equal(whole.data, slices.data)
    assert (whole.data == 9).any()


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_volume_equals_slices_on_shifted_and_flipped_permuted_grids(mode):
    rng = np.random.default_rng(7)
    vol = _ints((2, 9, 14, 12), rng)
    grids = [_shifted_grid(vol, DHW(1.1, 0.6, 0.9), (0.3, -0.4, 0.7)),
             _flipped_permuted_grid(vol, "SRA", (1.3, 0.9, 0.6), (15, 11, 9)),  # axes permuted and flipped
             _flipped_permuted_grid(vol, "RAI", (0.7, 0.8, 2.5), (9, 14, 12)),
             _grid(*target_grid(vol.reoriented("SLA"), spacing=DHW(0.6, 1.1, 0.9)))]  # permuted, field of view kept  # fmt: skip
    for like in grids:
        slices = resample(vol, like=like, mode=mode, method="slices")
        whole = resample(vol, like=like, mode=mode, method="volume")
        assert whole.shape == slices.shape
        if mode == "nearest":
            assert whole.dtype == np.int16
            np.testing.assert_array_equal(whole.data, slices.data)
        else:
            np.testing.assert_allclose(whole.data, slices.data, atol=1e-2)


@pytest.mark.parametrize("like_kind", ["spacing", "flipped"])
def test_volume_onehot_equals_slices_exactly(like_kind):
    lab = _blobs()
    kw = dict(spacing=DHW(1.0, 0.55, 0.6)) if like_kind == "spacing" else dict(
        like=_flipped_permuted_grid(lab, "ASL", (0.9, 0.6, 1.1), (26, 30, 20)))  # fmt: skip
    slices = resample(lab, **kw, label_mode="onehot", method="slices")
    whole = resample(lab, **kw, label_mode="onehot", method="volume")
    assert whole.dtype == np.uint8
    np.testing.assert_array_equal(whole.data, slices.data)


def test_auto_method_is_slices_on_cpu_and_volume_path_copies_nothing_to_host(monkeypatch):
    """The whole-volume path never calls .cpu() / .numpy() / .tolist() on volume-sized tensors (what the CUDA
    path runs), and on CPU tensors "auto" keeps the slice path."""
    lab = _blobs()
    img = _ints((1, 10, 23, 17), np.random.default_rng(1))
    t_lab = lab.replace(data=lab.to_tensor())
    t_img = img.replace(data=img.to_tensor())
    expected = [resample(t_img, spacing=DHW(1.0, 1.0, 1.0)).data, resample(t_lab, spacing=DHW(1.0, 1.0, 1.0)).data,
                resample(t_lab, spacing=DHW(1.0, 0.5, 0.5), label_mode="onehot").data]  # fmt: skip
    calls = []
    for name in ("cpu", "numpy", "tolist"):
        original = getattr(torch.Tensor, name)

        def guarded(self, *a, _original=original, _name=name, **k):
            if self.numel() > 64:
                calls.append((_name, tuple(self.shape)))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    monkeypatch.setattr(R, "_interpolate_fast", lambda *a, **k: pytest.fail("slice path used"))
    monkeypatch.setattr(R, "_nearest_slices", lambda *a, **k: pytest.fail("slice path used"))
    got = [resample(t_img, spacing=DHW(1.0, 1.0, 1.0), mode="linear", method="volume").data,  # no label detection
           resample(t_lab, spacing=DHW(1.0, 1.0, 1.0), mode="nearest", method="volume").data,
           resample(t_lab, spacing=DHW(1.0, 0.5, 0.5), label_mode="onehot", method="volume").data]  # fmt: skip
    assert calls == []
    for g, e in zip(got, expected):
        assert isinstance(g, torch.Tensor)
        torch.testing.assert_close(g, e, atol=1e-2, rtol=0)
    with pytest.raises(pytest.fail.Exception, match="slice path used"):
        resample(t_img, spacing=DHW(1.0, 1.0, 1.0), mode="linear")  # auto on CPU: the slice path


def test_label_detection_on_device_agrees_with_numpy():
    rng = np.random.default_rng(3)
    for arr, want in [(rng.integers(0, 5, (1, 40, 50, 60)).astype(np.uint8), True),
                      (rng.integers(0, 1000, (1, 40, 50, 60)).astype(np.int16), False),
                      (np.zeros((1, 3, 3, 3), bool), True)]:  # fmt: skip
        assert looks_like_label(Volume(arr, np.eye(4))) is want
        assert R._tensor_looks_like_label(torch.from_numpy(arr)) is want


@pytest.mark.gpu
@needs_cuda
def test_cuda_volume_path_equals_cpu():
    img = _ints((2, 12, 40, 36), np.random.default_rng(2))
    lab = _blobs()
    for vol, kw, exact in [(img, {}, False), (lab, dict(mode="nearest", is_label=True), True),
                           (lab, dict(label_mode="onehot"), None),
                           (img, dict(mode="cubic", anisotropic=True), False)]:  # fmt: skip
        cpu = resample(vol, spacing=DHW(1.0, 0.9, 0.6), method="slices", **kw)
        gpu = resample(vol.replace(data=vol.to_tensor(device="cuda")), spacing=DHW(1.0, 0.9, 0.6), **kw)
        assert gpu.data.device.type == "cuda" and gpu.data.dtype == torch.from_numpy(cpu.data).dtype
        if exact:
            np.testing.assert_array_equal(gpu.data.cpu().numpy(), cpu.data)
        elif exact is None:  # one-hot: float rounding may flip exact ties between two labels' masks
            assert np.mean(gpu.data.cpu().numpy() == cpu.data) > 0.999
        else:
            np.testing.assert_allclose(gpu.data.cpu().numpy(), cpu.data, atol=1e-2)


# -- anisotropic (separate-axis) resampling -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_anisotropic_world_correct_in_plane_and_nearest_across(mode):
    """Value = world coordinate: the in-plane axes (x, y of an axial LPS stack) read back exactly through the new
    affine; along the coarse slice axis (z) every output voxel holds the z of its nearest input slice."""
    vol = world_volume((12, 14, 16), LPS_ANISO)
    out = resample(vol, spacing=DHW(1.0, 0.5, 0.6), mode=mode, anisotropic=True)
    d, h, w = out.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = out.voxel_to_world(np.stack([ww, hh, dd], -1))
    src = vol.world_to_voxel(world)
    interior = np.all((src[..., :2] >= 1) & (src[..., :2] <= np.array([15, 13]) - 1), axis=-1)
    np.testing.assert_allclose(np.moveaxis(out.data, 0, -1)[..., :2][interior], world[..., :2][interior], atol=1e-3)
    k = np.clip(np.floor(src[..., 2] + 0.5 + 1e-9), 0, 11)
    z_expected = vol.voxel_to_world(np.stack([np.zeros_like(k), np.zeros_like(k), k], -1))[..., 2]
    np.testing.assert_allclose(out.data[2], z_expected, atol=1e-3)
    plain = resample(vol, spacing=DHW(1.0, 0.5, 0.6), mode=mode)
    assert not np.allclose(plain.data[2], out.data[2], atol=1e-2)  # plain interpolates z too


def test_anisotropic_auto_follows_nnunet_rule():
    vol = _ints((1, 8, 20, 18), np.random.default_rng(4))  # spacing (D, H, W) = (2.5, 0.8, 0.7): ratio 3.57
    target = DHW(1.0, 1.0, 1.0)
    sep = resample(vol, spacing=target, anisotropic=True)
    assert not np.allclose(sep.data, resample(vol, spacing=target).data)
    np.testing.assert_array_equal(resample(vol, spacing=target, anisotropic="auto").data, sep.data)
    high = resample(vol, spacing=target, anisotropic="auto", anisotropy_threshold=4.0)  # 3.57 < 4: not separate
    np.testing.assert_array_equal(high.data, resample(vol, spacing=target).data)
    same = resample(vol, spacing=target, anisotropic=True, out_of_plane_mode="linear")
    np.testing.assert_array_equal(same.data, resample(vol, spacing=target).data)
    # isotropic input, anisotropic target: the target's coarse axis (H here) is the separate one
    iso = Volume(vol.data[:, :, :8, :8], np.diag([1.0, 1.0, 1.0, 1.0]))
    out = resample(iso, spacing=DHW(0.9, 4.0, 1.1), anisotropic="auto")
    assert not np.allclose(out.data, resample(iso, spacing=DHW(0.9, 4.0, 1.1)).data)
    np.testing.assert_array_equal(out.data, resample(iso, spacing=DHW(0.9, 4.0, 1.1), anisotropic=True).data)
    # two equally coarse axes: no unique separate axis -> plain in "auto", an error for True
    flat = Volume(vol.data, np.diag([0.7, 3.0, 3.0, 1.0]))
    np.testing.assert_array_equal(resample(flat, spacing=1.0, anisotropic="auto").data,
                                  resample(flat, spacing=1.0).data)  # fmt: skip
    with pytest.raises(ArgumentError, match="no unique coarsest axis"):
        resample(flat, spacing=DHW(1.0, 1.0, 1.0), anisotropic=True)


def test_anisotropic_needs_axis_aligned_grids_and_valid_options():
    vol = _ints((1, 8, 12, 10), np.random.default_rng(0))
    aff = random_affine(np.random.default_rng(6), spacing_range=(0.4, 0.5))  # rotated: oblique to the volume
    aff[:3, 3] = vol.voxel_to_world(np.array(vol.spatial_shape[::-1]) / 2 - 0.5) - aff[:3, :3] @ [2.5, 2.5, 2.5]
    with pytest.raises(GeometryError, match="anisotropic resampling needs axis-aligned grids"):
        resample(vol, like=_grid(aff, (6, 6, 6)), anisotropic=True)
    for kwargs, match in [(dict(anisotropic="yes"), "anisotropic must be"),
                          (dict(anisotropy_threshold=0.5), "anisotropy_threshold must be"),
                          (dict(out_of_plane_mode="area"), "out_of_plane_mode must be"),
                          (dict(method="gpu"), "method must be"), (dict(label_mode="soft"), "label_mode must be")]:  # fmt: skip
        with pytest.raises(ArgumentError, match=match):
            resample(vol, spacing=1.0, **kwargs)


# -- one-hot labels -----------------------------------------------------------------------------------------------
def test_onehot_agrees_with_nearest_on_blobs_and_keeps_values():
    lab = _blobs(values=(0, 3, 200))
    for spacing in (DHW(1.0, 0.5, 0.5), DHW(3.0, 1.2, 1.1)):
        hot = resample(lab, spacing=spacing, label_mode="onehot")
        near = resample(lab, spacing=spacing, mode="nearest", is_label=True)
        assert hot.dtype == np.uint8 and hot.shape == near.shape
        assert set(np.unique(hot.data)) <= {0, 3, 200}
        for v in (3, 200):
            assert _dice(hot.data == v, near.data == v) > 0.95
    cubic = resample(lab, spacing=DHW(1.0, 0.5, 0.5), mode="cubic", label_mode="onehot", anisotropic="auto")
    assert set(np.unique(cubic.data)) <= {0, 3, 200}


def test_onehot_matches_nnunet_rule_when_tie_free():
    """nnU-Net (resize_segmentation): each label's mask interpolated (order 1, edge mode), ``>= 0.5`` assigns the
    label. The reference is scipy's map_coordinates at the output centres' source positions."""
    ndi = pytest.importorskip("scipy.ndimage")
    lab = _blobs(values=(0, 4), seed=2)
    hot = resample(lab, spacing=DHW(1.1, 0.55, 0.45), label_mode="onehot")
    d, h, w = hot.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    src = lab.world_to_voxel(hot.voxel_to_world(np.stack([ww, hh, dd], -1)))  # (i, j, k)
    coords = np.clip(np.stack([src[..., 2], src[..., 1], src[..., 0]]), 0, np.array(lab.spatial_shape)[:, None, None,
                     None] - 1)  # fmt: skip
    p = ndi.map_coordinates((lab.data[0] == 4).astype(np.float64), coords, order=1, mode="nearest")
    tie_free = np.abs(p - 0.5) > 1e-4
    assert tie_free.mean() > 0.99
    expected = np.where(p >= 0.5, 4, 0)
    np.testing.assert_array_equal(hot.data[0][tie_free], expected[tie_free])
    assert 0.01 < (expected == 4).mean() < 0.9


def test_onehot_flags_and_refusals():
    lab = _blobs()
    with pytest.raises(ArgumentError, match="is_label=False"):
        resample(lab, spacing=1.0, label_mode="onehot", is_label=False)
    frac = Volume(np.full((1, 4, 4, 4), 1.5, np.float32), np.eye(4))
    with pytest.raises(ArgumentError, match="non-integer values"):
        resample(frac, spacing=0.5, label_mode="onehot")
    with pytest.raises(ArgumentError, match="label_mode='onehot'"):
        resample(lab, spacing=0.5, mode="linear", label_mode="nearest")
    # a float label map with integer values: one-hot keeps its dtype and values; outside the FOV: pad_value
    flt = lab.replace(data=lab.data.astype(np.float32))
    like = _shifted_grid(flt, DHW(1.0, 0.5, 0.5), (0.0, 0.0, 5.0))
    out = resample(flt, like=like, label_mode="onehot", pad_value=0)
    assert out.dtype == np.float32 and set(np.unique(out.data)) <= {0.0, 3.0, 7.0}
    np.testing.assert_array_equal(out.data, resample(lab, like=like, label_mode="onehot", pad_value=0).data)
    # nearest label mode = is_label=True
    np.testing.assert_array_equal(resample(lab, spacing=DHW(1.0, 0.5, 0.5), label_mode="nearest").data,
                                  resample(lab, spacing=DHW(1.0, 0.5, 0.5), mode="nearest", is_label=True).data)  # fmt: skip


def test_onehot_oblique_grid_agrees_with_nearest():
    lab = _blobs(affine=axis_code_affine("RAS", (1.0, 1.0, 1.5)))
    aff = random_affine(np.random.default_rng(8), spacing_range=(0.8, 1.0))
    centre = lab.voxel_to_world(np.array(lab.spatial_shape[::-1]) / 2)
    aff[:3, 3] = centre - aff[:3, :3] @ [10, 10, 10]
    like = _grid(aff, (20, 20, 20))
    hot = resample(lab, like=like, label_mode="onehot", pad_value=0)
    near = resample(lab, like=like, mode="nearest", pad_value=0)
    assert set(np.unique(hot.data)) <= {0, 3, 7}
    assert _dice(hot.data == 3, near.data == 3) > 0.9


@pytest.mark.parametrize("method", ["slices", "volume"])
def test_onehot_exact_tie_goes_to_the_smaller_label(method):
    """An output centre exactly half-way between a 7 and a 3: both masks interpolate to 0.5; the smaller wins."""
    for row in ([7, 3], [3, 7]):
        lab = Volume(np.array(row, np.uint8).reshape(1, 1, 1, 2), np.eye(4))
        like = _grid(axis_code_affine("RAS", (1, 1, 1), (0.5, 0, 0)), (1, 1, 1))
        out = resample(lab, like=like, label_mode="onehot", method=method)
        assert out.data.ravel().tolist() == [3]
        assert resample(lab, like=like, mode="nearest", method=method).data.ravel().tolist() == [row[1]]  # half up
