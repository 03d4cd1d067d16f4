"""The standard spatial vocabulary (Orient, Spacing / Resample, Resize, Pad, DivisiblePad, CropForeground options).

Every check uses a world-linear phantom: voxel value ``f(x, y, z) = 0.3 x - 0.2 y + 0.1 z + 5`` at the voxel's
RAS position, on an oblique, anisotropic grid. A correct spatial transform leaves ``value == f(world)`` under the
NEW affine (exactly for re-indexing ones, to rounding for linear interpolation, which reproduces a linear function
exactly between voxel centres), and :func:`medstack.transforms.invert` brings back the original grid.
"""

import numpy as np
import pytest
import torch

from medstack import Volume
from medstack import transforms as T
from medstack.errors import ArgumentError
from medstack.testing import axis_code_affine, random_affine, world_volume
from medstack.transforms.spatial import (
    DivisiblePad,
    Orient,
    Pad,
    Resample,
    Resize,
    Spacing,
    foreground_box,
    pad_volume,
    symmetric_pad_amounts,
)

SHAPE = (10, 12, 14)  # (D, H, W)
COEF = np.array([0.3, -0.2, 0.1])


def oblique_affine(seed=0, spacing_ijk=(0.9, 1.2, 2.0)):
    """A rotated grid with anisotropic voxels (k = D is the 2 mm axis)."""
    a = random_affine(np.random.default_rng(seed))
    a[:3, :3] = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0) * np.asarray(spacing_ijk)
    return a


def f_world(world):
    return world @ COEF + 5.0


def labels_of(values):
    """An integer label map that is a function of the value (hence of world position): 0..3."""
    return (np.floor(np.asarray(values, np.float64) / 2.0) % 4).astype(np.int16)


def world_of(vol: Volume):
    """RAS mm of every voxel centre, (D, H, W, 3)."""
    d, h, w = vol.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return vol.voxel_to_world(np.stack([ww, hh, dd], -1))


def index_in(src: Volume, out: Volume):
    """Fractional (i, j, k) in ``src`` of the voxel centres of ``out``, (D, H, W, 3)."""
    return src.world_to_voxel(world_of(out))


def inside(src: Volume, out: Volume, margin=0.0):
    """Voxels of ``out`` whose centre lies within ``src``'s voxel-centre hull (shrunk by ``margin`` voxels)."""
    ijk = index_in(src, out)
    hi = np.array(src.spatial_shape[::-1]) - 1 - margin
    return np.all((ijk >= margin - 1e-6) & (ijk <= hi + 1e-6), axis=-1)


def linear_sample(affine=None, shape=SHAPE, backend="numpy"):
    affine = oblique_affine() if affine is None else affine
    xyz = world_volume(shape, affine, n_channels=3, dtype=np.float64).data
    img = np.tensordot(COEF, xyz, axes=1)[None] + 5.0
    lab = labels_of(img)
    if backend == "torch":
        return {"image": Volume(torch.from_numpy(img), affine), "label": Volume(torch.from_numpy(lab), affine)}
    return {"image": Volume(img, affine), "label": Volume(lab, affine)}


def values(vol: Volume):
    return np.asarray(vol.to_numpy(), np.float64)[0]


def check_one_grid(out, backend, extra=()):
    img, lab = out["image"], out["label"]
    assert img.spatial_shape == lab.spatial_shape
    np.testing.assert_allclose(img.affine, lab.affine, atol=1e-9)
    assert isinstance(img.data, torch.Tensor if backend == "torch" else np.ndarray)
    assert isinstance(lab.data, torch.Tensor if backend == "torch" else np.ndarray)
    assert str(lab.dtype).endswith("int16")  # labels keep their integer dtype (nearest)
    assert set(np.unique(lab.to_numpy())) <= {0, 1, 2, 3, *extra}


def check_label_nearest(src: Volume, out: Volume):
    """Each output label is the source label of the nearest source voxel (at a tie, of either neighbour)."""
    ijk = index_in(src, out)
    n = np.array(src.spatial_shape[::-1])
    ok = np.all((ijk > -0.5) & (ijk < n - 0.5), axis=-1)
    lab = src.to_numpy()[0]
    lo = np.clip(np.floor(ijk[ok]), 0, n - 1).astype(int)
    hi = np.clip(lo + 1, 0, n - 1)
    tie = np.abs(ijk[ok] - np.floor(ijk[ok]) - 0.5) < 1e-3
    near = np.where(ijk[ok] - lo >= 0.5, hi, lo)
    got = out.to_numpy()[0][ok]
    allowed = np.zeros(got.shape, bool)
    for corner in np.ndindex(2, 2, 2):  # either neighbour along the axes where the position is a tie
        pick = np.where(tie & np.array(corner, bool), np.where(near == lo, hi, lo), near)
        allowed |= got == lab[pick[:, 2], pick[:, 1], pick[:, 0]]
    assert allowed.all()
    assert ok.mean() > 0.5


def check_inverse_close(original: Volume, transformed: Volume, back: Volume, atol):
    """``back`` is on ``original``'s grid; values match where the linear stencil in ``transformed`` used only
    voxels that were themselves inside ``original`` (exact values of f)."""
    assert back.spatial_shape == original.spatial_shape
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-9)
    good_t = inside(original, transformed)
    p = index_in(transformed, original)  # (D, H, W, 3) in transformed (i, j, k)
    n = np.array(transformed.spatial_shape[::-1])
    lo = np.floor(p + 1e-9).astype(int)
    mask = np.all((p >= -1e-9) & (p <= n - 1 + 1e-9), axis=-1)
    for corner in np.ndindex(2, 2, 2):
        c = np.clip(lo + np.array(corner), 0, n - 1)
        mask &= good_t[c[..., 2], c[..., 1], c[..., 0]]
    assert mask.mean() > 0.2, "test geometry leaves too few interior voxels"
    np.testing.assert_allclose(values(back)[mask], values(original)[mask], atol=atol)


BACKENDS = ["numpy", "torch"]


# -- Orient ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR", "ASL", "ILP"])
@pytest.mark.parametrize("oblique", [True, False])
def test_orient_keeps_world_and_inverts_exactly(code, backend, oblique):
    affine = oblique_affine(3) if oblique else axis_code_affine("LIA", spacing=(0.8, 1.1, 2.5), origin=(5, -3, 7))
    sample = linear_sample(affine, backend=backend)
    out = Orient(axcodes=code)(sample)
    check_one_grid(out, backend)
    img = out["image"]
    assert img.orientation == code
    assert sorted(img.spatial_shape) == sorted(SHAPE)
    np.testing.assert_allclose(values(img), f_world(world_of(img)), atol=1e-9)  # no interpolation: exact
    np.testing.assert_array_equal(out["label"].to_numpy()[0], labels_of(values(img)))
    back = T.invert(out)
    for key in ("image", "label"):
        assert back[key].spatial_shape == SHAPE
        np.testing.assert_allclose(back[key].affine, affine, atol=1e-9)
        np.testing.assert_array_equal(back[key].to_numpy(), sample[key].to_numpy())


@pytest.mark.parametrize("bad", ["RAX", "RRA", "RA", "RASL", "", 3, None])
def test_orient_bad_axcodes(bad):
    with pytest.raises(ArgumentError, match="axcodes"):
        Orient(axcodes=bad)


# -- Spacing / Resample --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pixdim", [1.5, (2.6, 0.8, 1.1), (1.0, 1.7, 0.7)])
def test_spacing_keeps_world_and_inverts(pixdim, backend):
    sample = linear_sample(backend=backend)
    src = sample["image"]
    out = Spacing(pixdim=pixdim)(sample)
    check_one_grid(out, backend)
    img = out["image"]
    want = np.broadcast_to(np.asarray(pixdim, float), (3,))
    np.testing.assert_allclose(img.spacing, want, atol=1e-9)
    np.testing.assert_allclose(img.direction, src.direction, atol=1e-9)
    # field of view kept (outer voxel edges, within one output voxel since the shape is rounded)
    ext_in = np.array(src.spacing) * SHAPE
    assert np.all(np.abs(np.array(img.spacing) * img.spatial_shape - ext_in) <= want / 2 + 1e-9)
    mask = inside(src, img)
    assert mask.mean() > 0.5
    np.testing.assert_allclose(values(img)[mask], f_world(world_of(img))[mask], atol=1e-6)
    check_label_nearest(sample["label"], out["label"])
    back = T.invert(out)
    check_inverse_close(src, img, back["image"], atol=1e-6)
    assert back["label"].spatial_shape == SHAPE
    np.testing.assert_allclose(back["label"].affine, src.affine, atol=1e-9)
    assert back["label"].to_numpy().dtype == np.int16


def test_resample_is_spacing_and_same_grid_is_left_alone():
    assert Resample is Spacing
    sample = linear_sample()
    out = Resample(pixdim=tuple(sample["image"].spacing))(sample)
    assert out["image"].data is sample["image"].data  # already on the grid: not resampled
    assert T.invert(out)["image"].spatial_shape == SHAPE


@pytest.mark.parametrize("backend", BACKENDS)
def test_spacing_like_another_key(backend):
    sample = linear_sample(backend=backend)
    src = sample["image"]
    # a reference grid rotated against the image (a 3D resampling), centred on the same region
    ref_aff = oblique_affine(7, spacing_ijk=(1.3, 1.0, 1.6))
    centre = src.voxel_to_world((np.array(SHAPE[::-1]) - 1) / 2)
    ref_shape = (8, 9, 11)
    ref_aff[:3, 3] = centre - ref_aff[:3, :3] @ ((np.array(ref_shape[::-1]) - 1) / 2)
    sample["ref"] = Volume(np.zeros((1, *ref_shape), np.float32), ref_aff)
    out = Spacing(pixdim=None, like="ref")(sample)
    check_one_grid(out, backend)
    img = out["image"]
    assert img.spatial_shape == ref_shape
    np.testing.assert_allclose(img.affine, ref_aff, atol=1e-9)
    mask = inside(src, img, margin=0.01)
    assert mask.mean() > 0.3
    np.testing.assert_allclose(values(img)[mask], f_world(world_of(img))[mask], atol=2e-3)  # float32 grid coords
    check_label_nearest(sample["label"], out["label"])
    back = T.invert(out)["image"]
    check_inverse_close(src, img, back, atol=2e-3)


def test_spacing_argument_errors():
    with pytest.raises(ArgumentError, match="exactly one of pixdim"):
        Spacing()
    with pytest.raises(ArgumentError, match="exactly one of pixdim"):
        Spacing(pixdim=1.0, like="image")
    for bad in (0.0, -1.0, (1.0, 2.0), (1.0, float("nan"), 1.0), "abc"):
        with pytest.raises(ArgumentError, match="pixdim"):
            Spacing(pixdim=bad)
    with pytest.raises(ArgumentError, match="like='ref' is not a Volume"):
        Spacing(like="ref")(linear_sample())
    with pytest.raises(ArgumentError, match="keys must be sample key names"):
        Spacing((1.0, 1.0, 1.0))  # a spacing passed where keys go


# -- Resize ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(7, -1, 9), (20, 5, 11), 6])
def test_resize_keeps_field_of_view_and_inverts(size, backend):
    sample = linear_sample(backend=backend)
    src = sample["image"]
    out = Resize(spatial_size=size)(sample)
    check_one_grid(out, backend)
    img = out["image"]
    want = tuple(n if s == -1 else s for s, n in zip(np.broadcast_to(size, (3,)), SHAPE))
    assert img.spatial_shape == want
    # the world box covered by the voxels (corner to corner) is the same
    for corner in ([-0.5, -0.5, -0.5], np.array(SHAPE[::-1]) - 0.5):
        new_corner = np.where(np.array(corner) < 0, -0.5, np.array(want[::-1]) - 0.5)
        np.testing.assert_allclose(img.voxel_to_world(new_corner), src.voxel_to_world(corner), atol=1e-9)
    np.testing.assert_allclose(img.direction, src.direction, atol=1e-9)
    mask = inside(src, img)
    np.testing.assert_allclose(values(img)[mask], f_world(world_of(img))[mask], atol=1e-6)
    check_label_nearest(sample["label"], out["label"])
    check_inverse_close(src, img, T.invert(out)["image"], atol=1e-6)


@pytest.mark.parametrize("bad", [(0, 4, 4), (4, 4), (-2, 4, 4), (4, 4, 4, 4), 2.5, (4.0, 4, 4), True, None])
def test_resize_bad_sizes(bad):
    with pytest.raises(ArgumentError, match="spatial_size"):
        Resize(spatial_size=bad)


def test_resize_size_in_place_of_keys_is_an_error():
    with pytest.raises(ArgumentError, match="Resize: keys must be sample key names"):
        Resize((64, 64, 64))


# -- Pad / DivisiblePad ------------------------------------------------------------------------------------------


def check_pad(sample, out, before, after, backend, mode="constant", value=0.0):
    check_one_grid(out, backend)
    src, img = sample["image"], out["image"]
    assert img.spatial_shape == tuple(n + b + a for n, b, a in zip(SHAPE, before, after))
    # every original voxel keeps its value and its world position
    core = tuple(slice(b, b + n) for b, n in zip(before, SHAPE))
    np.testing.assert_array_equal(values(img)[core], values(src))
    np.testing.assert_array_equal(out["label"].to_numpy()[0][core], sample["label"].to_numpy()[0])
    mask = inside(src, img)
    assert mask.sum() == np.prod(SHAPE)
    np.testing.assert_allclose(values(img)[mask], f_world(world_of(img))[mask], atol=1e-9)
    if mode == "constant" and (any(before) or any(after)):
        np.testing.assert_array_equal(values(img)[~mask], value)
        np.testing.assert_array_equal(out["label"].to_numpy()[0][~mask], value)
    back = T.invert(out)
    for key in ("image", "label"):
        assert back[key].spatial_shape == SHAPE
        np.testing.assert_allclose(back[key].affine, src.affine, atol=1e-9)
        np.testing.assert_array_equal(back[key].to_numpy(), sample[key].to_numpy())  # exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_to_size(mode, backend):
    sample = linear_sample(backend=backend)
    out = Pad(size=(15, 12, 9), mode=mode, value=0)(sample)  # D +5 (2 before, 3 after), H as is, W never cropped
    check_pad(sample, out, (2, 0, 0), (3, 0, 0), backend, mode)
    if mode == "edge":
        np.testing.assert_array_equal(values(out["image"])[0], values(sample["image"])[0])
    if mode == "reflect":
        np.testing.assert_array_equal(values(out["image"])[0], values(sample["image"])[2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border, before, after", [
    (2, (2, 2, 2), (2, 2, 2)),
    ((1, 0, 3), (1, 0, 3), (1, 0, 3)),
    ((1, 2, 0, 3, 2, 0), (1, 0, 2), (2, 3, 0)),
])  # fmt: skip
def test_pad_border(border, before, after, backend):
    sample = linear_sample(backend=backend)
    check_pad(sample, Pad(border=border, value=0)(sample), before, after, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, before, after", [(8, (3, 2, 1), (3, 2, 1)), ((1, 5, 4), (0, 1, 1), (0, 2, 1))])
def test_divisible_pad(k, before, after, backend):
    sample = linear_sample(backend=backend)
    out = DivisiblePad(k=k)(sample)
    kk = np.broadcast_to(k, (3,))
    assert all(n % q == 0 for n, q in zip(out["image"].spatial_shape, kk))
    check_pad(sample, out, before, after, backend)


def test_pad_amounts_match_monai_symmetric():
    monai = pytest.importorskip("monai")
    x = torch.zeros((1, 5, 6, 7))
    padded = monai.transforms.SpatialPad(spatial_size=(8, 6, 10), method="symmetric")(x)
    ours = symmetric_pad_amounts((5, 6, 7), (8, 6, 10))
    assert ours == ([1, 0, 1], [2, 0, 2])
    assert tuple(padded.shape[1:]) == (8, 6, 10)
    divisible = monai.transforms.DivisiblePad(k=4)(torch.arange(5.0)[None, :, None, None].expand(1, 5, 3, 3))
    # MONAI puts the odd voxel after: the data start at index 1 of 8
    mine = DivisiblePad(keys="image", k=4)(Volume(np.arange(5.0)[None, :, None, None].repeat(3, 2).repeat(3, 3),
                                                  np.eye(4)))  # fmt: skip
    np.testing.assert_array_equal(mine.to_numpy(), np.asarray(divisible))


def test_pad_value_min_and_volume_function():
    v = Volume(np.full((1, 2, 2, 2), 3.0), np.eye(4))
    out = Pad(keys="image", border=1, value="min")(v)
    assert np.all(out.to_numpy() == 3.0)
    padded = pad_volume(v, (1, 0, 0), (0, 0, 0), value=-1.0)
    assert padded.spatial_shape == (3, 2, 2) and padded.origin == (0.0, 0.0, -1.0)


def test_pad_argument_errors():
    with pytest.raises(ArgumentError, match="exactly one of size"):
        Pad()
    with pytest.raises(ArgumentError, match="exactly one of size"):
        Pad(size=4, border=1)
    for bad in [(0, 4, 4), (4, 4), (-3, 1, 1), 1.5]:
        with pytest.raises(ArgumentError, match="size"):
            Pad(size=bad)
    for bad in [-1, (1, 2), (1, 2, 3, 4, 5, -6), (1.0, 1, 1)]:
        with pytest.raises(ArgumentError, match="border"):
            Pad(border=bad)
    with pytest.raises(ArgumentError, match="mode must be one of"):
        Pad(border=1, mode="wrap")
    with pytest.raises(ArgumentError, match="value must be a number"):
        Pad(border=1, value="max")
    for bad in [0, -1, (4, 4), (4, 0, 4), 2.0]:
        with pytest.raises(ArgumentError, match="k must be"):
            DivisiblePad(k=bad)
    with pytest.raises(ArgumentError, match=r"reflect.*smaller than the axis"):
        Pad(border=(20, 0, 0), mode="reflect")(linear_sample())
    with pytest.raises(ArgumentError, match="keys must be sample key names"):
        DivisiblePad(16)


# -- CropForeground: select_fn, k_divisible, margin, allow_smaller -----------------------------------------------


def foreground_sample(backend="numpy"):
    sample = linear_sample(backend=backend)
    mask = np.zeros((1, *SHAPE), np.uint8)
    mask[0, 1:4, 4:9, 9:13] = 1  # near the D start and the W end: k_divisible boxes pass the border
    sample["mask"] = Volume(torch.from_numpy(mask) if backend == "torch" else mask, sample["image"].affine)
    return sample


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin, k, allow_smaller, start, size", [
    (0, 1, True, (1, 4, 9), (3, 5, 4)),  # the existing behaviour
    (1, 1, True, (0, 3, 8), (5, 7, 6)),  # margin clipped at the border
    (2, 1, False, (-1, 2, 7), (7, 9, 8)),  # margin may pass the border (MONAI allow_smaller=False)
    (0, 4, True, (1, 3, 9), (4, 8, 4)),  # rounded up, centred (odd voxel after)
    ((0, 1, 1), (8, 1, 6), True, (-1, 3, 8), (8, 7, 6)),  # D box [1, 4) grown to [-1, 7): padded before
])  # fmt: skip
def test_crop_foreground_box_world_and_inverse(margin, k, allow_smaller, start, size, backend):
    sample = foreground_sample(backend)
    t = T.CropForeground(keys=("image", "label"), source_key="mask", margin=margin, k_divisible=k,
                         allow_smaller=allow_smaller, pad_value=-7)  # fmt: skip
    out = t(sample)
    check_one_grid(out, backend, extra={-7})
    src, img = sample["image"], out["image"]
    assert img.spatial_shape == size
    np.testing.assert_allclose(img.voxel_to_world([0, 0, 0]), src.voxel_to_world(np.array(start[::-1], float)))
    mask = inside(src, img)
    np.testing.assert_allclose(values(img)[mask], f_world(world_of(img))[mask], atol=1e-9)
    np.testing.assert_array_equal(values(img)[~mask], -7.0)
    back = T.invert(out)
    for key in ("image", "label"):
        assert back[key].spatial_shape == SHAPE
        np.testing.assert_allclose(back[key].affine, src.affine, atol=1e-9)
        keep = inside(img, back[key])  # original voxels inside the box: exact
        np.testing.assert_array_equal(back[key].to_numpy()[:, keep], sample[key].to_numpy()[:, keep])
        assert keep.sum() == np.prod([min(SHAPE[a], start[a] + size[a]) - max(0, start[a]) for a in range(3)])


def test_crop_foreground_select_fn():
    sample = foreground_sample()
    thr = float(np.percentile(values(sample["image"]), 80))  # a corner region of the linear ramp
    seen = []

    def above(a):  # on the (C, D, H, W) source array; may return (D, H, W)
        seen.append(a.shape)
        return a[0] > thr

    out = T.CropForeground(keys=("image", "label"), source_key="image", select_fn=above)(sample)
    assert seen == [(1, *SHAPE)]
    fg = values(sample["image"]) > thr
    start, size = foreground_box(fg)
    assert 0 < fg.mean() < 0.9 and out["image"].spatial_shape == tuple(size) != SHAPE
    box = tuple(slice(a, a + z) for a, z in zip(start, size))
    assert fg[box].sum() == fg.sum()  # the box holds all of the foreground ...
    for axis in range(3):  # ... and is tight: its first and last slices along each axis touch it
        assert np.take(fg[box], 0, axis=axis).any() and np.take(fg[box], -1, axis=axis).any()
    np.testing.assert_array_equal(out["image"].to_numpy()[0], values(sample["image"])[box])
    np.testing.assert_array_equal(out["label"].to_numpy()[0], sample["label"].to_numpy()[0][box])
    # the default is x > threshold on any channel
    box = T.CropForeground(keys="image", source_key="mask", threshold=0)(sample)["image"]
    assert box.spatial_shape == (3, 5, 4)


def test_crop_foreground_errors():
    with pytest.raises(ArgumentError, match="k_divisible"):
        T.CropForeground(k_divisible=0)
    with pytest.raises(ArgumentError, match="margin"):
        T.CropForeground(margin=-1)
    with pytest.raises(ArgumentError, match="select_fn must be a callable"):
        T.CropForeground(select_fn=3)
    with pytest.raises(ArgumentError, match=r"mask of shape \(12, 14\)"):
        T.CropForeground(keys="image", select_fn=lambda a: a[0, 0] > 0)(linear_sample())
    with pytest.raises(ArgumentError, match="source key 'mask' not in the sample"):
        T.CropForeground(keys="image", source_key="mask")(linear_sample())


# -- together --------------------------------------------------------------------------------------------------


def test_pipeline_inverts_to_the_first_grid():
    sample = linear_sample(oblique_affine(5))
    pipe = T.Compose([Orient(axcodes="LPS"), Spacing(pixdim=1.4), DivisiblePad(k=8), Resize(spatial_size=(12, 12, 12))],
                     seed=0)  # fmt: skip
    out = pipe(sample)
    check_one_grid(out, "numpy")
    assert out["image"].spatial_shape == (12, 12, 12)
    assert [h["name"] for h in out["image"].metadata["transform_grids"]] == ["orient", "spacing", "pad", "resize"]
    back = T.invert(out)
    for key in ("image", "label"):
        assert back[key].spatial_shape == SHAPE
        np.testing.assert_allclose(back[key].affine, sample[key].affine, atol=1e-9)
    assert back["label"].to_numpy().dtype == np.int16
    assert "transform_grids" not in back["image"].metadata
    assert sample["image"].metadata == {}  # input not mutated


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tensor_on_device_matches_numpy(device):
    """Each transform on a torch Volume (on ``device``) gives the NumPy result and stays on the device."""
    ref = linear_sample()
    dev = {k: Volume(torch.from_numpy(v.data).to(device), v.affine) for k, v in ref.items()}
    for t in (Orient(axcodes="PIR"), Spacing(pixdim=1.5), Resize(spatial_size=(7, -1, 9)), Pad(size=(13, 12, 16)),
              DivisiblePad(k=8, mode="edge"), T.CropForeground(source_key="label", k_divisible=4)):  # fmt: skip
        want, got = t(ref), t(dev)
        for key in ("image", "label"):
            assert got[key].data.device.type == device
            np.testing.assert_allclose(got[key].affine, want[key].affine, atol=1e-9)
            np.testing.assert_allclose(got[key].to_numpy(), want[key].to_numpy(), atol=1e-5)
            back = T.invert(got)[key]
            assert back.data.device.type == device and back.spatial_shape == SHAPE


def test_spacing_passes_nnunet_resampling_options():
    """Spacing(anisotropic=, label_mode="onehot") = resample's nnU-Net modes, key by key; recorded in the repr."""
    from medstack.resample import resample

    rng = np.random.default_rng(1)
    aff = np.diag([0.8, 0.8, 4.0, 1.0])
    img = Volume(rng.normal(size=(1, 6, 20, 20)).astype(np.float32), aff)
    lab_data = np.zeros((1, 6, 20, 20), np.uint8)
    lab_data[0, 1:5, 4:15, 5:12] = 1
    lab_data[0, 2:4, 6:10, 6:9] = 2
    lab = Volume(lab_data, aff)
    t = T.Spacing(pixdim=(2.0, 1.0, 1.0), anisotropic="auto", label_mode="onehot")
    out = t({"image": img, "label": lab})
    ref_img = resample(img, spacing=(2.0, 1.0, 1.0), anisotropic="auto")
    ref_lab = resample(lab, spacing=(2.0, 1.0, 1.0), mode="linear", label_mode="onehot", anisotropic="auto")
    np.testing.assert_array_equal(out["image"].to_numpy(), ref_img.to_numpy())
    np.testing.assert_array_equal(out["label"].to_numpy(), ref_lab.to_numpy())
    assert out["label"].to_numpy().dtype == np.uint8 and set(np.unique(out["label"].to_numpy())) <= {0, 1, 2}
    assert "anisotropic='auto'" in repr(t) and "label_mode='onehot'" in repr(t)
    with pytest.raises(ArgumentError):
        T.Spacing(pixdim=1.0, label_mode="cubic")
