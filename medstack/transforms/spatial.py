"""Spatial transforms. Each one is a change of sampling grid: the data are re-indexed or resampled AND the
affine is updated, so every voxel keeps its true world position (a world-coordinate phantom still reads
its own coordinates afterwards). Image and label keys share one random draw; labels use nearest.

Invertible transforms (flip, rot90, crop/pad, affine) record the grid they started from in
``metadata["transform_grids"]``; :func:`invert` maps a result (or a prediction tensor on that grid) back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, GeometryError
from medstack.transforms.base import RandomTransform, Transform, _as_range, interpolation_for, uniform
from medstack.volume import Volume

__all__ = [
    "CropForeground", "CropOrPad", "Flip", "RandomAffine", "RandomAnisotropy", "RandomElastic", "RandomFlip",
    "RandomRot90", "Rot90", "invert",
]  # fmt: skip

HISTORY = "transform_grids"


def _record(volume: Volume, new: Volume, name: str) -> Volume:
    hist = list(volume.metadata.get(HISTORY, []))
    hist.append({"name": name, "affine": np.asarray(volume.affine).tolist(), "shape": list(volume.spatial_shape)})
    meta = dict(new.metadata)
    meta[HISTORY] = hist
    return new.replace(metadata=meta)


def _xp_flip(data, axis):
    return np.flip(data, axis) if isinstance(data, np.ndarray) else data.flip(axis)


def flip_volume(volume: Volume, axes: Sequence[int]) -> Volume:
    """Flip spatial array axes (0 = D, 1 = H, 2 = W); the affine follows, world positions are kept."""
    vol = volume.materialized()
    data, affine = vol.data, np.array(vol.affine)
    for a in axes:
        ijk = 2 - a
        n = vol.spatial_shape[a]
        data = _xp_flip(data, a + 1)
        affine[:3, 3] = affine[:3, 3] + affine[:3, ijk] * (n - 1)
        affine[:3, ijk] = -affine[:3, ijk]
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    return vol.replace(data=data, affine=affine)


def swap_volume(volume: Volume, a: int, b: int) -> Volume:
    """Transpose spatial array axes ``a`` and ``b``; affine columns swap accordingly."""
    vol = volume.materialized()
    data = vol.data.swapaxes(a + 1, b + 1) if isinstance(vol.data, np.ndarray) else vol.data.transpose(a + 1, b + 1)
    affine = np.array(vol.affine)
    affine[:, [2 - a, 2 - b]] = affine[:, [2 - b, 2 - a]]
    return vol.replace(data=data, affine=affine)


def rot90_volume(volume: Volume, k: int, axes=(1, 2)) -> Volume:
    """``np.rot90`` on spatial axes ``axes`` (0 = D, 1 = H, 2 = W) with the affine updated exactly."""
    p, q = axes
    if p == q or not {p, q} <= {0, 1, 2}:
        raise ArgumentError(f"rot90 axes must be two different spatial axes in 0..2, got {axes}")
    k %= 4
    vol = volume
    if k == 1:  # numpy: transpose(flip(m, q))
        vol = swap_volume(flip_volume(vol, [q]), p, q)
    elif k == 2:
        vol = flip_volume(vol, [p, q])
    elif k == 3:  # numpy: flip(transpose(m), q)
        vol = flip_volume(swap_volume(vol, p, q), [q])
    if isinstance(vol.data, np.ndarray):
        vol = vol.replace(data=np.ascontiguousarray(vol.data))
    return vol


def crop_or_pad_volume(volume: Volume, start, size, pad_value=0.0) -> Volume:
    """The box ``[start, start + size)`` (voxels, ``(D, H, W)``, may exceed the volume: padded)."""
    vol = volume
    start = [int(s) for s in start]
    size = [int(s) for s in size]
    shape = vol.spatial_shape
    src = tuple(slice(max(0, s), min(n, s + z)) for s, z, n in zip(start, size, shape))
    if vol.is_lazy:
        data = vol.data[(slice(None), *src)]
    else:
        data = vol.data[(slice(None), *src)]
    before = [max(0, -s) for s in start]
    after = [z - b - (sl.stop - sl.start) for z, b, sl in zip(size, before, src)]
    if any(before) or any(after):
        pads = [(0, 0)] + [(b, max(0, a)) for b, a in zip(before, after)]
        if isinstance(data, np.ndarray):
            data = np.pad(data, pads, constant_values=pad_value)
        else:
            import torch.nn.functional as F

            flat = [v for pair in reversed(pads[1:]) for v in pair]
            data = F.pad(data, flat, value=float(pad_value))
    elif isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    return vol.replace(data=data, affine=geometry.box_affine(vol.affine, start))


def _fill(volume: Volume, pad_value):
    if pad_value == "min":
        return float(volume.to_numpy().min()) if not volume.is_lazy else 0.0
    return float(pad_value)


class Flip(Transform):
    """Flip spatial axes (0 = D, 1 = H, 2 = W)."""

    def __init__(self, keys=("image", "label"), axes: Sequence[int] = (2,), *, allow_missing_keys=True):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.axes = tuple(axes)
        if not set(self.axes) <= {0, 1, 2}:
            raise ArgumentError(f"Flip: axes must be spatial axes 0 (D), 1 (H), 2 (W), got {axes}")

    def apply(self, volume, params, key):
        return _record(volume, flip_volume(volume, self.axes), "flip")


class RandomFlip(RandomTransform):
    """Flip each of ``axes`` independently with probability ``axis_p``."""

    def __init__(self, keys=("image", "label"), axes=(0, 1, 2), axis_p: float = 0.5, *, p=1.0, allow_missing_keys=True):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.axes, self.axis_p = tuple(axes), axis_p

    def draw(self, sample, rng):
        import torch

        return [a for a in self.axes if torch.rand((), generator=rng).item() < self.axis_p]

    def apply_params(self, volume, axes, key):
        return _record(volume, flip_volume(volume, axes), "flip") if axes else volume


class Rot90(Transform):
    """Rotate by ``k`` quarter turns in the plane of spatial axes ``axes`` (like ``np.rot90``)."""

    def __init__(self, keys=("image", "label"), k: int = 1, axes=(1, 2), *, allow_missing_keys=True):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.k, self.axes = int(k), tuple(axes)

    def apply(self, volume, params, key):
        return _record(volume, rot90_volume(volume, self.k, self.axes), "rot90")


class RandomRot90(RandomTransform):
    """``k`` uniform in {0, 1, 2, 3} quarter turns in a plane drawn from ``planes``."""

    def __init__(self, keys=("image", "label"), planes=((1, 2),), *, p=1.0, allow_missing_keys=True):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.planes = [tuple(pl) for pl in planes]

    def draw(self, sample, rng):
        import torch

        k = int(torch.randint(0, 4, (), generator=rng).item())
        plane = self.planes[int(torch.randint(0, len(self.planes), (), generator=rng).item())]
        return k, plane

    def apply_params(self, volume, params, key):
        k, plane = params
        return _record(volume, rot90_volume(volume, k, plane), "rot90") if k else volume


class CropOrPad(Transform):
    """Crop and/or pad to ``size`` (D, H, W), centred on the volume or on the foreground of ``foreground_key``.

    Padding uses ``pad_value`` (a number, or "min" for each volume's minimum). With ``allow_pad=False`` a size
    larger than the volume is an error.
    """

    def __init__(self, keys=("image", "label"), size=(96, 96, 96), *, foreground_key: str | None = None,
                 pad_value=0.0, allow_pad: bool = True, allow_missing_keys=True):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.size = tuple(int(s) for s in size)
        if len(self.size) != 3 or min(self.size) < 1:
            raise ArgumentError(f"CropOrPad: size must be three positive ints (D, H, W), got {size}")
        self.foreground_key, self.pad_value, self.allow_pad = foreground_key, pad_value, allow_pad

    def call_params(self, sample, rng):
        """The crop/pad start (d, h, w) of this call, shared by all keys (computed, never stored on self)."""
        ref = next((sample[k] for k in self.keys if k in sample), None)
        if ref is None:
            return None
        shape = ref.spatial_shape
        if not self.allow_pad and any(z > n for z, n in zip(self.size, shape)):
            raise GeometryError(f"CropOrPad: size {self.size} is larger than the volume {shape} and allow_pad=False")
        center = [n / 2.0 for n in shape]
        if self.foreground_key is not None:
            if self.foreground_key not in sample:
                raise ArgumentError(f"CropOrPad: foreground key {self.foreground_key!r} not in the sample")
            fg = np.nonzero(sample[self.foreground_key].to_numpy().max(axis=0) > 0)
            if fg[0].size:
                center = [(ax.min() + ax.max() + 1) / 2.0 for ax in fg]
        start = [math.floor(c - z / 2.0) for c, z in zip(center, self.size)]
        if self.foreground_key is None or not self.allow_pad:
            start = [max(min(s, n - z), 0) if z <= n else s for s, z, n in zip(start, self.size, shape)]
        return start

    def apply(self, volume, params, key):
        start = params
        if start is None:  # apply() called directly on a Volume: centred
            start = [math.floor(n / 2.0 - z / 2.0) for n, z in zip(volume.spatial_shape, self.size)]
        return _record(volume, crop_or_pad_volume(volume, start, self.size, _fill(volume, self.pad_value)), "crop_or_pad")


class CropForeground(Transform):
    """Crop all keys to the bounding box of ``source_key > threshold`` plus ``margin`` voxels (clipped)."""

    def __init__(self, keys=("image", "label"), source_key: str = "image", *, threshold: float = 0.0,
                 margin: int | Sequence[int] = 0, allow_missing_keys=True):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.source_key, self.threshold = source_key, threshold
        self.margin = (int(margin),) * 3 if isinstance(margin, int) else tuple(int(m) for m in margin)

    def call_params(self, sample, rng):
        """The box ``(start, size)`` of this call, shared by all keys; ``None`` for an empty foreground."""
        if self.source_key not in sample:
            raise ArgumentError(f"CropForeground: source key {self.source_key!r} not in the sample")
        src = sample[self.source_key]
        fg = np.nonzero((src.to_numpy() > self.threshold).any(axis=0))
        if not fg[0].size:
            return None
        lo = [max(0, int(ax.min()) - m) for ax, m in zip(fg, self.margin)]
        hi = [min(n, int(ax.max()) + 1 + m) for ax, m, n in zip(fg, self.margin, src.spatial_shape)]
        return lo, [h - low for h, low in zip(hi, lo)]

    def apply(self, volume, params, key):
        if params is None:
            return volume  # empty foreground: nothing to crop to (documented)
        return _record(volume, crop_or_pad_volume(volume, *params), "crop_foreground")


def _grid(affine, shape) -> Volume:
    return Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def world_transform(center, angles_deg, scales, translation_mm, shears) -> np.ndarray:
    """4x4 world-space map: about ``center``, shear then scale then rotate (x, y, z Euler), then translate."""
    m = np.eye(4)
    sh = np.eye(3)
    sh[0, 1], sh[0, 2], sh[1, 2] = shears
    m[:3, :3] = _rotation(angles_deg) @ np.diag(scales) @ sh
    c = np.asarray(center, dtype=np.float64)
    m[:3, 3] = c + np.asarray(translation_mm, dtype=np.float64) - m[:3, :3] @ c
    return m


class RandomAffine(RandomTransform):
    """Random rotation (degrees), scale, translation (mm) and shear, fused into ONE resampling per key.

    The sampling grid is moved in world space about the volume centre; data are resampled onto it and the
    affine is the moved grid's, so geometry stays true. Labels use nearest (per-key ``mode``).
    """

    def __init__(self, keys=("image", "label"), *, rotation=10.0, scale=(0.9, 1.1), translation=0.0, shear=0.0,
                 mode=None, pad_value="min", p=1.0, allow_missing_keys=True):  # fmt: skip
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.rotation = [_as_range(rotation, "rotation")] * 3 if isinstance(rotation, int | float) else [
            _as_range(r, "rotation") for r in rotation]  # fmt: skip
        self.scale = _as_range(scale, "scale", symmetric=False) if not isinstance(scale, int | float) else (
            1 - scale, 1 + scale)  # fmt: skip
        self.translation = _as_range(translation, "translation")
        self.shear = _as_range(shear, "shear")
        self.modes = interpolation_for(self.keys, mode, "RandomAffine")
        self.pad_value = pad_value

    def draw(self, sample, rng):
        return {
            "angles": [uniform(rng, *r) for r in self.rotation],
            "scales": [uniform(rng, *self.scale) for _ in range(3)],
            "translation": [uniform(rng, *self.translation) for _ in range(3)],
            "shears": [uniform(rng, *self.shear) for _ in range(3)],
        }

    def apply_params(self, volume, params, key):
        from medstack.resample import resample

        shape = volume.spatial_shape
        center = volume.voxel_to_world((np.array(shape[::-1]) - 1) / 2.0)
        m = world_transform(center, params["angles"], params["scales"], params["translation"], params["shears"])
        new_affine = m @ np.asarray(volume.affine)
        mode = self.modes.get(key, "linear")
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # partial overlap is expected for large draws
                out = resample(volume, like=_grid(new_affine, shape), mode=mode, pad_value=_fill(volume, self.pad_value))
        return _record(volume, out.replace(metadata=dict(volume.metadata)), "affine")


class RandomElastic(RandomTransform):
    """Smooth random displacements (B-spline-like: a coarse grid of ``control_points`` displacements up to
    ``max_displacement_mm``, upsampled trilinearly). The affine is unchanged (the deformation is not affine)."""

    def __init__(self, keys=("image", "label"), *, control_points: int = 7, max_displacement_mm: float = 5.0,
                 mode=None, p=1.0, allow_missing_keys=True):  # fmt: skip
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        if control_points < 4:
            raise ArgumentError("RandomElastic: control_points must be >= 4")
        self.control_points, self.max_displacement_mm = int(control_points), float(max_displacement_mm)
        self.modes = interpolation_for(self.keys, mode, "RandomElastic")

    def draw(self, sample, rng):
        import torch

        n = self.control_points
        coarse = (torch.rand((3, n, n, n), generator=rng) * 2 - 1) * self.max_displacement_mm
        coarse[:, [0, -1]] = 0  # pin the border
        coarse[:, :, [0, -1]] = 0
        coarse[:, :, :, [0, -1]] = 0
        return coarse

    def apply_params(self, volume, coarse, key):
        import torch
        import torch.nn.functional as F

        vol = volume.materialized()
        x = vol.to_tensor()
        dtype_in = x.dtype
        xf = x.float()[None]
        d, h, w = vol.spatial_shape
        disp_mm = F.interpolate(coarse[None].to(xf.device), size=(d, h, w), mode="trilinear", align_corners=True)[0]
        # displacement (mm, along D, H, W axes) -> normalised grid units per axis (x = W, y = H, z = D)
        sp = vol.spacing
        zz, yy, xx = torch.meshgrid(*(torch.linspace(-1 + 1 / n, 1 - 1 / n, n, device=xf.device) for n in (d, h, w)),
                                    indexing="ij")  # fmt: skip
        gx = xx + disp_mm[2] / sp[2] * 2 / w
        gy = yy + disp_mm[1] / sp[1] * 2 / h
        gz = zz + disp_mm[0] / sp[0] * 2 / d
        grid = torch.stack([gx, gy, gz], dim=-1)[None]
        mode = "nearest" if self.modes.get(key) == "nearest" else "bilinear"
        out = F.grid_sample(xf, grid, mode=mode, padding_mode="border", align_corners=False)[0]
        if mode == "nearest":
            out = out.round().to(dtype_in) if not dtype_in.is_floating_point else out.to(dtype_in)
        data = out.numpy() if isinstance(vol.data, np.ndarray) else out
        return vol.replace(data=data)


class RandomAnisotropy(RandomTransform):
    """Simulate thick slices: downsample one axis by a factor in ``downsampling`` (nearest), resample back
    (linear). Geometry unchanged; for images (not labels)."""

    def __init__(self, keys=("image",), *, axes=(0, 1, 2), downsampling=(1.5, 5.0), p=1.0, allow_missing_keys=True):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.axes, self.downsampling = tuple(axes), _as_range(downsampling, "downsampling", symmetric=False)

    def draw(self, sample, rng):
        import torch

        axis = self.axes[int(torch.randint(0, len(self.axes), (), generator=rng).item())]
        return axis, uniform(rng, *self.downsampling)

    def apply_params(self, volume, params, key):
        from medstack.resample import resample

        axis, factor = params
        sp = list(volume.spacing)
        sp[axis] *= factor
        low = resample(volume, spacing=sp, mode="nearest")
        back = resample(low, like=volume, mode="linear")
        return back.replace(metadata=dict(volume.metadata))


def invert(x, *, reference: Volume | None = None, mode: str = "linear"):
    """Map a transformed Volume / sample / prediction tensor back onto the grid before the first recorded
    invertible transform (flip, rot90, crop/pad, affine), for test-time augmentation and predictions.

    ``x`` may be a Volume, a sample dict (each Volume with history is inverted; keys with label-like names use
    nearest), or a tensor / array ``(C, D, H, W)`` on the grid of ``reference`` (the transformed Volume).
    """
    from medstack.resample import resample
    from medstack.transforms.base import LABEL_HINTS

    if isinstance(x, dict):
        out = dict(x)
        for k, v in x.items():
            if isinstance(v, Volume) and v.metadata.get(HISTORY):
                out[k] = invert(v, mode="nearest" if any(h in k.lower() for h in LABEL_HINTS) else mode)
        return out
    if not isinstance(x, Volume):
        if reference is None:
            raise ArgumentError("invert: a tensor/array needs reference= (the transformed Volume it lies on)")
        if tuple(x.shape[-3:]) != reference.spatial_shape:
            raise GeometryError(f"invert: data shape {tuple(x.shape)} does not match the reference grid "
                                f"{reference.spatial_shape}")  # fmt: skip
        vol = invert(Volume(x, reference.affine, reference.metadata), mode=mode)
        return vol.data
    hist = x.metadata.get(HISTORY)
    if not hist:
        raise ArgumentError("invert: this volume has no recorded invertible transform (metadata['transform_grids'])")
    first = hist[0]
    target = _grid(np.array(first["affine"]), tuple(first["shape"]))
    meta = dict(x.metadata)
    meta.pop(HISTORY)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = resample(x.replace(metadata=meta), like=target, mode=mode, pad_value=0.0)
    return out
