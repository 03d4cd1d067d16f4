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
    "CropForeground", "CropOrPad", "DivisiblePad", "Flip", "Orient", "Pad", "RandomAffine", "RandomAnisotropy",
    "RandomElastic", "RandomFlip", "RandomRot90", "Resample", "Resize", "Rot90", "Spacing", "foreground_box",
    "invert", "orient_volume", "pad_volume", "regrid_volume", "resize_volume", "spacing_volume",
    "symmetric_pad_amounts",
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
    """Crop all keys to the bounding box of the foreground of ``source_key``, plus ``margin`` voxels.

    Parameters
    ----------
    keys : str or sequence of str
        Keys cropped (all with the same box).
    source_key : str
        Key whose foreground defines the box.
    threshold : float
        Foreground is ``source > threshold`` (any channel), unless ``select_fn`` is given.
    select_fn : callable, optional
        ``select_fn(array) -> bool mask`` on the source's NumPy array ``(C, D, H, W)``; the mask is ``(C, D, H, W)``
        (any channel counts) or ``(D, H, W)``. Default: ``array > threshold``.
    margin : int or (D, H, W) ints
        Voxels added on each side of the box.
    k_divisible : int or (D, H, W) ints
        Round each box size up to a multiple of this, growing the box symmetrically about its centre (the extra
        voxel of an odd growth goes after); the grown box may pass the volume's border, which is padded with
        ``pad_value`` (as MONAI's ``CropForegroundd`` with ``allow_smaller=False``).
    allow_smaller : bool
        True (default): the margin stops at the volume's border. False: the margin may pass it (padded), as MONAI.
    pad_value : float or "min"
        Fill for voxels outside the volume.

    A sample whose source has no foreground is returned unchanged (nothing recorded). The box is recorded, so
    :func:`invert` puts the crop back on the original grid.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> data = np.zeros((1, 8, 8, 8), np.float32); data[0, 2:5, 3:4, 3:6] = 1
    >>> out = CropForeground(keys="image", k_divisible=4)(Volume(data, np.eye(4)))
    >>> out.spatial_shape
    (4, 4, 4)
    """

    def __init__(self, keys=("image", "label"), source_key: str = "image", *, threshold: float = 0.0,
                 select_fn=None, margin: int | Sequence[int] = 0, k_divisible: int | Sequence[int] = 1,
                 allow_smaller: bool = True, pad_value=0.0, allow_missing_keys=True):  # fmt: skip
        _check_str_keys(self, keys)
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if select_fn is not None and not callable(select_fn):
            raise ArgumentError(f"CropForeground: select_fn must be a callable array -> bool mask, got "
                                f"{type(select_fn).__name__}")  # fmt: skip
        self.source_key, self.threshold, self.select_fn = source_key, threshold, select_fn
        self.margin = _triple(margin, "CropForeground", "margin", low=0)
        self.k_divisible = _triple(k_divisible, "CropForeground", "k_divisible", low=1)
        self.allow_smaller, self.pad_value = bool(allow_smaller), pad_value

    def call_params(self, sample, rng):
        """The box ``(start, size)`` of this call, shared by all keys; ``None`` for an empty foreground."""
        if self.source_key not in sample:
            raise ArgumentError(f"CropForeground: source key {self.source_key!r} not in the sample")
        src = sample[self.source_key]
        arr = src.to_numpy()
        mask = np.asarray(arr > self.threshold if self.select_fn is None else self.select_fn(arr), dtype=bool)
        if mask.shape == arr.shape:
            mask = mask.any(axis=0)
        if mask.shape != src.spatial_shape:
            raise ArgumentError(f"CropForeground: select_fn returned a mask of shape {mask.shape}; expected "
                                f"{arr.shape} or {src.spatial_shape} (the source's (C, D, H, W) or (D, H, W))")  # fmt: skip
        return foreground_box(mask, self.margin, self.k_divisible, allow_smaller=self.allow_smaller)

    def apply(self, volume, params, key):
        if params is None:
            return volume  # empty foreground: nothing to crop to (documented)
        out = crop_or_pad_volume(volume, *params, _fill(volume, self.pad_value))
        return _record(volume, out, "crop_foreground")


def foreground_box(mask: np.ndarray, margin=(0, 0, 0), k_divisible=(1, 1, 1), *, allow_smaller: bool = True):
    """``(start, size)`` (voxels, ``(D, H, W)``) of the bounding box of a ``(D, H, W)`` mask, ``None`` when empty.

    ``margin`` voxels are added per side (clipped to the volume unless ``allow_smaller=False``); each size is then
    rounded up to a multiple of ``k_divisible``, growing symmetrically (MONAI's rule; may pass the border).

    >>> m = np.zeros((6, 6, 6), bool); m[1:3, 2, 2:5] = True
    >>> foreground_box(m, margin=(0, 1, 0), k_divisible=(4, 1, 1))
    ([0, 1, 2], [4, 3, 3])
    """
    fg = np.nonzero(mask)
    if not fg[0].size:
        return None
    lo = [int(ax.min()) - m for ax, m in zip(fg, margin)]
    hi = [int(ax.max()) + 1 + m for ax, m in zip(fg, margin)]
    if allow_smaller:
        lo = [max(0, v) for v in lo]
        hi = [min(n, v) for v, n in zip(hi, mask.shape)]
    size = [h - low for h, low in zip(hi, lo)]
    grown = [-(-z // k) * k for z, k in zip(size, k_divisible)]
    lo = [low - (g - z) // 2 for low, g, z in zip(lo, grown, size)]
    return lo, grown


# -- the standard vocabulary: orientation, spacing, size, padding (each recorded, so invert() undoes it) ---------

_AXCODE_LETTERS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
PAD_MODES = ("constant", "edge", "reflect")


def _check_str_keys(t: Transform, keys) -> None:
    """A non-str key is almost always a size passed where ``keys`` (the first argument) goes."""
    seq = (keys,) if isinstance(keys, str) else keys if isinstance(keys, Sequence) else (keys,)
    if not all(isinstance(k, str) for k in seq):
        raise ArgumentError(f"{type(t).__name__}: keys must be sample key names (str), got {keys!r}; keys come first "
                            "(MONAI order), so pass sizes by name, e.g. Resize(spatial_size=(64, 64, 64))")  # fmt: skip


def _triple(value, owner: str, name: str, *, low: int, keep: bool = False) -> tuple[int, int, int]:
    """One int or three ints ``(D, H, W)``, each ``>= low`` (or -1 meaning "keep this axis" when ``keep``)."""
    vals = [value] * 3 if isinstance(value, int | np.integer) else list(value) if isinstance(value, Sequence) else None
    ok = vals is not None and len(vals) == 3 and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and (v >= low or (keep and v == -1)) for v in vals)  # fmt: skip
    if not ok:
        extra = " or -1 (keep the axis)" if keep else ""
        raise ArgumentError(f"{owner}: {name} must be one int or three ints in (D, H, W) order, each >= {low}{extra}; "
                            f"got {value!r}")  # fmt: skip
    return tuple(int(v) for v in vals)


def _same_grid(volume: Volume, affine, shape) -> bool:
    return tuple(shape) == volume.spatial_shape and np.allclose(volume.affine, affine, rtol=0, atol=1e-9)


def orient_volume(volume: Volume, axcodes: str = "RAS") -> Volume:
    """``volume`` with its voxel axes permuted / flipped so that its orientation code is ``axcodes`` (letter ``n``
    is the world direction voxel axis ``i, j, k`` = ``W, H, D`` increases towards, nibabel's meaning).

    No interpolation: every voxel keeps its value and its world position (:meth:`Volume.reoriented`); an oblique
    volume gets the closest axis-aligned code.
    """
    out = volume.reoriented(axcodes)
    return out.replace(data=np.ascontiguousarray(out.data)) if isinstance(out.data, np.ndarray) else out


def regrid_volume(volume: Volume, affine, shape, mode: str = "linear", **options) -> Volume:
    """``volume`` resampled in world space (:func:`medstack.resample.resample`) onto the grid ``(affine, shape)``,
    ``shape`` in ``(D, H, W)`` order. The same grid returns the volume unchanged (no resampling, dtype kept).
    ``options`` go to :func:`~medstack.resample.resample` (``anisotropic=``, ``label_mode=``, ...)."""
    from medstack.resample import resample

    if _same_grid(volume, affine, shape):
        return volume
    out = resample(volume, like=_grid(np.asarray(affine, dtype=np.float64), tuple(shape)), mode=mode, pad_value=0.0,
                   **options)  # fmt: skip
    return out.replace(metadata=dict(volume.metadata))


def spacing_volume(volume: Volume, pixdim, mode: str = "linear", **options) -> Volume:
    """Resample to voxel size ``pixdim`` mm (one number, or ``(D, H, W)``; :class:`~medstack.geometry.XYZ` for
    MONAI's order), keeping the field of view (:func:`medstack.resample.target_grid`)."""
    from medstack.resample import target_grid

    affine, shape = target_grid(volume, spacing=pixdim)
    return regrid_volume(volume, affine, shape, mode, **options)


def resize_volume(volume: Volume, spatial_size, mode: str = "linear") -> Volume:
    """Resample to ``spatial_size`` voxels ``(D, H, W)`` (-1 keeps an axis), keeping the field of view (the world
    box covered by the voxels, corner to corner): the spacing scales by ``old / new`` size per axis."""
    from medstack.resample import target_grid

    size = tuple(n if s == -1 else int(s) for s, n in zip(spatial_size, volume.spatial_shape))
    affine, shape = target_grid(volume, shape=size)
    return regrid_volume(volume, affine, shape, mode)


def pad_volume(volume: Volume, before, after, *, mode: str = "constant", value: float = 0.0) -> Volume:
    """Pad ``before`` / ``after`` voxels per spatial axis ``(D, H, W)``; the affine's origin moves so that every
    voxel keeps its world position. ``mode``: "constant" (``value``), "edge" (repeat the border voxel) or
    "reflect" (mirror without repeating the border; each amount must be smaller than that axis)."""
    before, after = [int(b) for b in before], [int(a) for a in after]
    shape = volume.spatial_shape
    if min(before + after) < 0:
        raise ArgumentError(f"pad amounts must be >= 0, got before={before}, after={after}")
    if mode not in PAD_MODES:
        raise ArgumentError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if mode == "constant" or not any(before + after):
        start = [-b for b in before]
        return crop_or_pad_volume(volume, start, [n + b + a for n, b, a in zip(shape, before, after)], value)
    if mode == "reflect" and any(max(b, a) >= n for b, a, n in zip(before, after, shape)):
        raise ArgumentError(f"pad mode 'reflect' needs amounts smaller than the axis (shape {shape}, before={before}, "
                            f"after={after}); use mode='edge' or 'constant'")  # fmt: skip
    vol = volume.materialized()
    if isinstance(vol.data, np.ndarray):
        data = np.pad(vol.data, [(0, 0), *zip(before, after)], mode=mode)
    else:
        import torch.nn.functional as F

        flat = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
        x = vol.data if vol.data.is_floating_point() else vol.data.double()  # replicate/reflect need floats
        data = F.pad(x, flat, mode="replicate" if mode == "edge" else "reflect").to(vol.data.dtype)
    return vol.replace(data=data, affine=geometry.box_affine(vol.affine, [-b for b in before]))


def symmetric_pad_amounts(shape, size) -> tuple[list[int], list[int]]:
    """``(before, after)`` that pad ``shape`` up to ``size`` (``(D, H, W)``; -1 or a smaller size: that axis is
    not padded), half on each side, the odd voxel after (MONAI's ``SpatialPad(method="symmetric")``)."""
    total = [max(0, z - n) if z != -1 else 0 for z, n in zip(size, shape)]
    before = [t // 2 for t in total]
    return before, [t - b for t, b in zip(total, before)]


class Orient(Transform):
    """Reorient to ``axcodes`` (e.g. "RAS", "LPS") by axis flips and permutations only: no interpolation, every
    voxel keeps its value and world position (see :func:`orient_volume`). Recorded for :func:`invert`.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> from medstack.testing import axis_code_affine
    >>> vol = Volume(np.arange(24.0).reshape(1, 2, 3, 4), axis_code_affine("LPS"))
    >>> out = Orient(keys="image", axcodes="RAS")(vol)
    >>> out.orientation, out.spatial_shape
    ('RAS', (2, 3, 4))
    """

    def __init__(self, keys=("image", "label"), axcodes: str = "RAS", *, allow_missing_keys=True):
        _check_str_keys(self, keys)
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        code = str(axcodes).upper() if isinstance(axcodes, str) else None
        if code is None or len(code) != 3 or any(c not in _AXCODE_LETTERS for c in code) or len(
                {_AXCODE_LETTERS[c] for c in code}) != 3:  # fmt: skip
            raise ArgumentError(f"Orient: axcodes must be 3 letters, one of R/L, one of A/P and one of S/I (e.g. 'RAS', "
                                f"'LPS'), got {axcodes!r}")  # fmt: skip
        self.axcodes = code

    def apply(self, volume, params, key):
        return _record(volume, orient_volume(volume, self.axcodes), "orient")

    def __repr__(self):
        return f"Orient(keys={list(self.keys)}, axcodes={self.axcodes!r})"


class Spacing(Transform):
    """Resample to voxel size ``pixdim`` (mm), or onto the grid of another key of the sample (``like=``).

    Parameters
    ----------
    keys : str or sequence of str
        Keys resampled; each keeps its own field of view (with ``pixdim``).
    pixdim : float or (D, H, W) mm
        Target spacing; one number is isotropic. A plain tuple is ``(D, H, W)`` (slices, rows, columns), the reverse
        of MONAI's ``pixdim``: pass ``geometry.XYZ(x, y, z)`` to copy a MONAI value (a MONAI-looking plain tuple warns,
        see :func:`medstack.geometry.as_dhw`). The grid is :func:`medstack.resample.target_grid`'s.
    like : str, optional
        Instead of ``pixdim``: resample every key onto the grid (affine and shape) of ``sample[like]``, as it was
        before this transform.
    mode : str, sequence or dict, optional
        Interpolation per key (:func:`~medstack.transforms.base.interpolation_for`): label-like keys (label / seg /
        mask) nearest, others linear.
    anisotropic : False, True or "auto"
        nnU-Net's separate-axis order (:func:`medstack.resample.resample`): in-plane with ``mode``, along a much
        coarser axis (spacing ratio above ``anisotropy_threshold``) with nearest.
    label_mode : None, "nearest" or "onehot"
        For the keys resampled with nearest (labels): "onehot" interpolates each label's mask and takes the
        argmax (nnU-Net's resampling of segmentations).

    A volume already on the target grid is left as it is (not resampled). Recorded for :func:`invert`.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> vol = Volume(np.zeros((1, 4, 6, 6), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    >>> Spacing(keys="image", pixdim=1.5)(vol).spatial_shape
    (8, 4, 4)
    """

    def __init__(self, keys=("image", "label"), pixdim=None, *, like: str | None = None, mode=None,
                 anisotropic=False, anisotropy_threshold: float = 3.0, label_mode: str | None = None,
                 allow_missing_keys=True):  # fmt: skip
        _check_str_keys(self, keys)
        if anisotropic not in (False, True, "auto"):
            raise ArgumentError(f"{type(self).__name__}: anisotropic must be False, True or 'auto', got {anisotropic!r}")
        if label_mode not in (None, "nearest", "onehot"):
            raise ArgumentError(f"{type(self).__name__}: label_mode must be None, 'nearest' or 'onehot', got "
                                f"{label_mode!r}")  # fmt: skip
        self.anisotropic, self.anisotropy_threshold = anisotropic, float(anisotropy_threshold)
        self.label_mode = label_mode
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        name = type(self).__name__
        if (pixdim is None) == (like is None):
            raise ArgumentError(f"{name}: pass exactly one of pixdim= (a spacing in mm, (D, H, W)) or like= (a sample "
                                f"key whose grid to use), got pixdim={pixdim!r}, like={like!r}")  # fmt: skip
        if like is not None and not isinstance(like, str):
            raise ArgumentError(f"{name}: like= must be a sample key (str), got {type(like).__name__}")
        if pixdim is not None:
            dhw = np.array(geometry.as_dhw(pixdim, name=f"{name}: pixdim"), dtype=np.float64)  # ArgumentError if bad
            if not np.all(np.isfinite(dhw)) or np.any(dhw <= 0):
                raise ArgumentError(f"{name}: pixdim must be positive, finite mm in (D, H, W) order, got {pixdim!r}")
        self.pixdim, self.like = pixdim, like
        self.modes = interpolation_for(self.keys, mode, name)

    def call_params(self, sample, rng):
        """The target grid ``(affine, shape)`` of ``like`` (None with ``pixdim``: per key)."""
        if self.like is None:
            return None
        ref = sample.get(self.like)
        if not isinstance(ref, Volume):
            raise ArgumentError(f"{type(self).__name__}: like={self.like!r} is not a Volume in the sample (keys "
                                f"{sorted(map(str, sample))})")  # fmt: skip
        return np.array(ref.affine), ref.spatial_shape

    def apply(self, volume, params, key):
        mode = self.modes.get(key, "linear")
        if params is None and self.like is not None:
            raise ArgumentError(f"{type(self).__name__}(like={self.like!r}) needs the sample dict, not a bare Volume")
        options = {}
        if mode == "nearest" and self.label_mode == "onehot":
            mode, options["label_mode"] = "linear", "onehot"  # each label's mask interpolated linearly, then argmax
            if self.anisotropic:  # nnU-Net: the masks too, in-plane linear and nearest along a coarse axis
                options.update(anisotropic=self.anisotropic, anisotropy_threshold=self.anisotropy_threshold)
        elif mode != "nearest" and self.anisotropic:
            options.update(anisotropic=self.anisotropic, anisotropy_threshold=self.anisotropy_threshold)
        out = (spacing_volume(volume, self.pixdim, mode, **options) if params is None
               else regrid_volume(volume, *params, mode, **options))  # fmt: skip
        return _record(volume, out, "spacing")


Resample = Spacing
"""Alias of :class:`Spacing` (TorchIO's name)."""


class Resize(Transform):
    """Resample to ``spatial_size`` voxels ``(D, H, W)`` keeping the field of view (see :func:`resize_volume`).

    ``spatial_size`` is one int (all axes) or three in ``(D, H, W)`` order (the reverse of MONAI's), -1 keeping an
    axis. Label-like keys use nearest (``mode`` as in :class:`Spacing`). Recorded for :func:`invert`.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> out = Resize(keys="image", spatial_size=(-1, 3, 2))(Volume(np.zeros((1, 4, 6, 6)), np.eye(4)))
    >>> out.spatial_shape, out.spacing
    ((4, 3, 2), DHW(d=1.0, h=2.0, w=3.0))
    """

    def __init__(self, keys=("image", "label"), spatial_size=None, *, mode=None, allow_missing_keys=True):
        _check_str_keys(self, keys)
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.spatial_size = _triple(spatial_size, "Resize", "spatial_size", low=1, keep=True)
        self.modes = interpolation_for(self.keys, mode, "Resize")

    def apply(self, volume, params, key):
        out = resize_volume(volume, self.spatial_size, self.modes.get(key, "linear"))
        return _record(volume, out, "resize")

    def __repr__(self):
        return f"Resize(keys={list(self.keys)}, spatial_size={self.spatial_size})"


class Pad(Transform):
    """Pad to at least ``size`` voxels per axis (symmetric, as MONAI's ``SpatialPad``), or by ``border`` voxels.

    Parameters
    ----------
    size : int or (D, H, W) ints, optional
        Minimum size; an axis already this large (or -1) is left as it is (never cropped). The padding is split
        half before, half after (the odd voxel after).
    border : int, (D, H, W) or 6 ints, optional
        Instead of ``size``: voxels added on every side, per axis (both sides), or per side in the order
        ``(d_before, d_after, h_before, h_after, w_before, w_after)`` (MONAI's ``BorderPad``, in ``(D, H, W)``).
    mode : {"constant", "edge", "reflect"}
        Fill rule (see :func:`pad_volume`).
    value : float or "min"
        Fill of ``mode="constant"`` ("min": each volume's minimum).

    The affine's origin moves, so every voxel keeps its world position; recorded for :func:`invert`.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> out = Pad(keys="image", size=(4, 5, 2))(Volume(np.ones((1, 2, 2, 2)), np.eye(4)))
    >>> out.spatial_shape, out.origin
    ((4, 5, 2), (0.0, -1.0, -1.0))
    """

    def __init__(self, keys=("image", "label"), size=None, *, border=None, mode: str = "constant", value=0.0,
                 allow_missing_keys=True):  # fmt: skip
        _check_str_keys(self, keys)
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if (size is None) == (border is None):
            raise ArgumentError(f"Pad: pass exactly one of size= (a minimum (D, H, W) size) or border= (voxels per "
                                f"side), got size={size!r}, border={border!r}")  # fmt: skip
        self.size = None if size is None else _triple(size, "Pad", "size", low=1, keep=True)
        self.border = None if border is None else _border(border)
        _check_pad_mode(mode, value, "Pad")
        self.mode, self.value = mode, value

    def amounts(self, shape):
        """``(before, after)`` voxels per axis ``(D, H, W)`` for a volume of spatial ``shape``."""
        if self.border is not None:
            return list(self.border[0::2]), list(self.border[1::2])
        return symmetric_pad_amounts(shape, self.size)

    def apply(self, volume, params, key):
        before, after = self.amounts(volume.spatial_shape)
        out = pad_volume(volume, before, after, mode=self.mode, value=_fill(volume, self.value))
        return _record(volume, out, "pad")

    def __repr__(self):
        what = f"size={self.size}" if self.size is not None else f"border={self.border}"
        return f"{type(self).__name__}(keys={list(self.keys)}, {what}, mode={self.mode!r})"


class DivisiblePad(Pad):
    """Pad each axis up to the next multiple of ``k`` (one int or ``(D, H, W)``), symmetric like MONAI's
    ``DivisiblePad``; ``mode`` / ``value`` as :class:`Pad`. Recorded for :func:`invert`.

    Examples
    --------
    >>> import numpy as np
    >>> from medstack import Volume
    >>> DivisiblePad(keys="image", k=(1, 4, 8))(Volume(np.ones((1, 3, 5, 8)), np.eye(4))).spatial_shape
    (3, 8, 8)
    """

    def __init__(self, keys=("image", "label"), k=16, *, mode: str = "constant", value=0.0, allow_missing_keys=True):
        _check_str_keys(self, keys)
        Transform.__init__(self, keys, allow_missing_keys=allow_missing_keys)
        self.k = _triple(k, "DivisiblePad", "k", low=1)
        _check_pad_mode(mode, value, "DivisiblePad")
        self.size, self.border, self.mode, self.value = None, None, mode, value

    def amounts(self, shape):
        return symmetric_pad_amounts(shape, [-(-n // k) * k for n, k in zip(shape, self.k)])

    def __repr__(self):
        return f"DivisiblePad(keys={list(self.keys)}, k={self.k}, mode={self.mode!r})"


def _border(border) -> tuple[int, ...]:
    vals = [border] * 6 if isinstance(border, int | np.integer) else list(border) if isinstance(border, Sequence) else []  # fmt: skip
    if len(vals) == 3:
        vals = [v for v in vals for _ in range(2)]
    if len(vals) != 6 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0 for v in vals):
        raise ArgumentError(f"Pad: border must be one int, three (D, H, W) or six (d_before, d_after, h_before, "
                            f"h_after, w_before, w_after) ints >= 0, got {border!r}")  # fmt: skip
    return tuple(int(v) for v in vals)


def _check_pad_mode(mode, value, owner: str) -> None:
    if mode not in PAD_MODES:
        raise ArgumentError(f"{owner}: mode must be one of {PAD_MODES}, got {mode!r}")
    if value != "min" and not isinstance(value, int | float | np.number):
        raise ArgumentError(f"{owner}: value must be a number or 'min', got {value!r}")


def _grid(affine, shape) -> Volume:
    return Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)


def rotation_matrix(angles_deg) -> np.ndarray:
    """3x3 world rotation (float64) from Euler angles in degrees about x, y, z: ``Rz @ Ry @ Rx``. One
    implementation for CPU and GPU augmentation: this is :func:`medstack.transforms.gpu.rotation_matrices` (batched
    torch, radians in (D, H, W) = (z, y, x) order) for one sample."""
    import torch

    from medstack.transforms.gpu import rotation_matrices

    x, y, z = (math.radians(float(a)) for a in angles_deg)
    return rotation_matrices(torch.tensor([z, y, x], dtype=torch.float64)).numpy()


def world_transform(center, angles_deg, scales, translation_mm, shears) -> np.ndarray:
    """4x4 world-space map: about ``center``, shear then scale then rotate (x, y, z Euler), then translate."""
    m = np.eye(4)
    sh = np.eye(3)
    sh[0, 1], sh[0, 2], sh[1, 2] = shears
    m[:3, :3] = rotation_matrix(angles_deg) @ np.diag(scales) @ sh
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


def reindex_volume(volume: Volume, affine, shape, pad_value: float = 0.0) -> Volume | None:
    """``volume`` moved onto the grid ``(affine, shape)`` (``shape`` in ``(D, H, W)``) by re-indexing alone, when
    the two grids share their voxel centres (the map between them is a signed axis permutation plus a whole number
    of voxels: flips, rot90, reorientation, crops, pads); ``None`` otherwise. Values are copied exactly (dtype
    kept); target voxels outside ``volume`` get ``pad_value``."""
    m = np.linalg.inv(np.asarray(volume.affine)) @ np.asarray(affine, dtype=np.float64)  # target ijk -> source ijk
    r = np.round(m[:3])
    if np.abs(m[:3] - r).max() > 1e-6 or not np.array_equal(np.abs(r[:, :3]).sum(axis=0), [1, 1, 1]) or not (
            np.array_equal(np.abs(r[:, :3]).sum(axis=1), [1, 1, 1])):  # fmt: skip
        return None
    vol = volume.materialized()
    src = [int(np.argmax(np.abs(r[:, n]))) for n in range(3)]  # source ijk axis of target ijk axis n
    data = geometry.reorient_array(vol.data, src, [False] * 3)  # array axes now follow the target's
    start_ijk = []
    for n, a in enumerate(src):
        offset = int(r[a, 3])
        if r[a, n] < 0:  # index runs backwards: flip, then the offset counts from the other end
            data = _xp_flip(data, 3 - n)
            offset = vol.spatial_shape[2 - a] - 1 - offset
        start_ijk.append(offset)
    moved = Volume(data, np.eye(4), dict(vol.metadata))
    out = crop_or_pad_volume(moved, geometry.ijk_to_dhw(start_ijk), tuple(int(z) for z in shape), pad_value)
    return out.replace(affine=np.asarray(affine, dtype=np.float64))


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
    exact = reindex_volume(x.replace(metadata=meta), target.affine, target.spatial_shape)
    if exact is not None:  # only flips / permutations / crops / pads: re-index, no interpolation
        return exact
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = resample(x.replace(metadata=meta), like=target, mode=mode, pad_value=0.0)
    return out
