"""Intensity transforms. Array functions work on NumPy arrays and torch tensors alike ``(C, D, H, W)``.

Numeric behaviour: every transform here returns float32 (float64 input stays float64) except
:class:`ToDtype`; integer inputs (uint8, int16 CT) are converted to float32 first, values unchanged.
NaNs propagate (they are never silently replaced); :func:`zscore` ignores them in its statistics.
"""

from __future__ import annotations

import numpy as np

from medstack.errors import ArgumentError, GeometryError
from medstack.transforms.base import RandomTransform, Transform, _as_range, uniform
from medstack.viz import WINDOWS
from medstack.volume import Volume

__all__ = [
    "Clip", "PercentileScale", "RandomBiasField", "RandomBlur", "RandomBrightness", "RandomContrast",
    "RandomGamma", "RandomNoise", "ScaleToRange", "ToDtype", "Window", "ZScore", "clip", "scale_to_range",
    "to_float", "window", "zscore",
]  # fmt: skip


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def to_float(x):
    """float32 copy-free when already floating (float64 kept), else converted."""
    if _is_torch(x):
        import torch

        return x if torch.is_floating_point(x) else x.to(torch.float32)
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def window(x, level: float, width: float, out_range=(0.0, 1.0)):
    """CT window: ``[level - width/2, level + width/2]`` mapped linearly to ``out_range`` and clipped."""
    if width <= 0:
        raise ArgumentError(f"window width must be positive, got {width}")
    lo = level - width / 2.0
    return scale_to_range(x, lo, lo + width, out_range, clip_output=True)


def clip(x, low: float, high: float):
    x = to_float(x)
    return x.clamp(low, high) if _is_torch(x) else np.clip(x, low, high)


def scale_to_range(x, a_min: float, a_max: float, out_range=(0.0, 1.0), *, clip_output: bool = False):
    """Map ``[a_min, a_max]`` linearly to ``out_range`` (MONAI's ScaleIntensityRange)."""
    if a_max == a_min:
        raise ArgumentError(f"scale_to_range: a_min == a_max == {a_min}")
    b0, b1 = out_range
    x = to_float(x)
    y = (x - a_min) * ((b1 - b0) / (a_max - a_min)) + b0
    if clip_output:
        lo, hi = min(b0, b1), max(b0, b1)
        y = y.clamp(lo, hi) if _is_torch(y) else np.clip(y, lo, hi)
    return y


def zscore(x, mask=None, *, nonzero: bool = False, per_channel: bool = True, eps: float = 1e-8):
    """``(x - mean) / std`` over the volume, a boolean ``mask`` (``(D, H, W)`` or ``(C, D, H, W)``) or the nonzero
    voxels, per channel by default. Voxels outside the mask are normalised with the same statistics."""
    x = to_float(x)
    xn = x.detach().cpu().numpy() if _is_torch(x) else x
    out = xn.copy()
    channels = range(xn.shape[0]) if per_channel else [slice(None)]
    for c in channels:
        v = xn[c]
        sel = np.isfinite(v)
        if mask is not None:
            m = np.asarray(mask.to_numpy() if isinstance(mask, Volume) else mask, dtype=bool)
            m = m[c] if m.ndim == 4 and per_channel else (m[0] if m.ndim == 4 else m)
            if m.shape != v.shape[-3:]:
                raise GeometryError(f"zscore: mask shape {m.shape} does not match the volume {v.shape[-3:]}")
            sel &= np.broadcast_to(m, v.shape)
        if nonzero:
            sel &= v != 0
        if not sel.any():
            continue
        vals = v[sel]
        mean, std = float(vals.mean()), float(vals.std())
        out[c] = (v - mean) / max(std, eps)
    if _is_torch(x):
        import torch

        return torch.from_numpy(out).to(x.device)
    return out


def _data(volume: Volume):
    return volume.data if not volume.is_lazy else volume.to_numpy()


class Window(Transform):
    """CT windowing to ``out_range`` with a preset (brain, subdural, lung, mediastinum, bone, liver,
    soft_tissue) or explicit ``level`` and ``width`` in HU."""

    def __init__(self, keys=("image",), preset: str | None = None, *, level=None, width=None, out_range=(0.0, 1.0),
                 allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if preset is not None:
            if preset.lower() not in WINDOWS:
                raise ArgumentError(f"Window: unknown preset {preset!r}; presets: {', '.join(sorted(WINDOWS))}")
            level, width = WINDOWS[preset.lower()]
        if level is None or width is None:
            raise ArgumentError("Window: give a preset or both level= and width=")
        if width <= 0:
            raise ArgumentError(f"Window: width must be positive, got {width}")
        self.level, self.width, self.out_range = float(level), float(width), out_range

    def apply(self, volume, params, key):
        return volume.replace(data=window(_data(volume), self.level, self.width, self.out_range))


class Clip(Transform):
    def __init__(self, keys=("image",), low: float = -1024.0, high: float = 3071.0, *, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.low, self.high = low, high

    def apply(self, volume, params, key):
        return volume.replace(data=clip(_data(volume), self.low, self.high))


class ScaleToRange(Transform):
    """Linear map ``[a_min, a_max] -> out_range`` (optionally clipped), like MONAI's ScaleIntensityRanged."""

    def __init__(self, keys=("image",), a_min: float = 0.0, a_max: float = 1.0, out_range=(0.0, 1.0), *,
                 clip: bool = False, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if a_max == a_min:
            raise ArgumentError("ScaleToRange: a_min == a_max")
        self.a_min, self.a_max, self.out_range, self.clip = a_min, a_max, out_range, clip

    def apply(self, volume, params, key):
        y = scale_to_range(_data(volume), self.a_min, self.a_max, self.out_range, clip_output=self.clip)
        return volume.replace(data=y)


class ZScore(Transform):
    """Z-score per channel over the volume, the nonzero voxels, or a mask key of the same sample."""

    def __init__(self, keys=("image",), *, mask_key: str | None = None, nonzero: bool = False,
                 per_channel: bool = True, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.mask_key, self.nonzero, self.per_channel = mask_key, nonzero, per_channel

    def call_params(self, sample, rng):
        if self.mask_key is None:
            return None
        if self.mask_key not in sample:
            raise ArgumentError(f"ZScore: mask key {self.mask_key!r} not in the sample")
        return sample[self.mask_key].to_numpy() > 0  # the mask travels as this call's parameter, not on self

    def apply(self, volume, params, key):
        return volume.replace(data=zscore(_data(volume), params, nonzero=self.nonzero,
                                          per_channel=self.per_channel))  # fmt: skip


class PercentileScale(Transform):
    """Map the ``lower``/``upper`` percentiles (per channel) to ``out_range``, optionally clipped."""

    def __init__(self, keys=("image",), lower: float = 0.5, upper: float = 99.5, out_range=(0.0, 1.0), *,
                 clip: bool = True, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if not 0 <= lower < upper <= 100:
            raise ArgumentError(f"PercentileScale: need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper, self.out_range, self.clip = lower, upper, out_range, clip

    def apply(self, volume, params, key):
        x = to_float(_data(volume))
        xn = x.detach().cpu().numpy() if _is_torch(x) else x
        chans = []
        for c in range(xn.shape[0]):
            lo, hi = np.nanpercentile(xn[c], [self.lower, self.upper])
            hi = hi if hi > lo else lo + 1.0
            chans.append(scale_to_range(xn[c : c + 1], lo, hi, self.out_range, clip_output=self.clip))
        out = np.concatenate(chans, axis=0)
        if _is_torch(x):
            import torch

            out = torch.from_numpy(out).to(x.device)
        return volume.replace(data=out)


class ToDtype(Transform):
    """Cast the data. ``scale=True`` maps integer ranges to [0, 1] for float output (uint8 / 255,
    uint16 / 65535, int16 from [-32768, 32767]); ``scale=False`` (default) keeps values (int16 HU -> float32 HU)."""

    def __init__(self, keys=("image",), dtype="float32", *, scale: bool = False, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.dtype, self.scale = np.dtype(dtype), scale

    def apply(self, volume, params, key):
        x = volume.to_numpy()
        if self.scale and x.dtype.kind in "iu" and self.dtype.kind == "f":
            info = np.iinfo(x.dtype)
            y = ((x.astype(np.float64) - info.min) / (info.max - info.min)).astype(self.dtype)
        else:
            y = x.astype(self.dtype)
        return volume.replace(data=y)


# -- random -------------------------------------------------------------------------------------------


class RandomGamma(RandomTransform):
    """``min + (max - min) * ((x - min) / (max - min)) ** gamma`` with ``log(gamma)`` uniform in ``log_gamma``."""

    def __init__(self, keys=("image",), log_gamma=(-0.3, 0.3), *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.log_gamma = _as_range(log_gamma, "log_gamma")

    def draw(self, sample, rng):
        return float(np.exp(uniform(rng, *self.log_gamma)))

    def apply_params(self, volume, gamma, key):
        x = to_float(_data(volume))
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            return volume.replace(data=x)
        y = ((x - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
        return volume.replace(data=y)


class RandomContrast(RandomTransform):
    """Scale around the mean: ``(x - mean) * f + mean`` with ``f`` uniform in ``factor``."""

    def __init__(self, keys=("image",), factor=(0.75, 1.25), *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.factor = _as_range(factor, "factor")

    def draw(self, sample, rng):
        return uniform(rng, *self.factor)

    def apply_params(self, volume, f, key):
        x = to_float(_data(volume))
        mean = float(x.mean())
        return volume.replace(data=(x - mean) * f + mean)


class RandomBrightness(RandomTransform):
    """Add ``b`` uniform in ``shift`` (in image units)."""

    def __init__(self, keys=("image",), shift=(-0.1, 0.1), *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.shift = _as_range(shift, "shift")

    def draw(self, sample, rng):
        return uniform(rng, *self.shift)

    def apply_params(self, volume, b, key):
        return volume.replace(data=to_float(_data(volume)) + b)


class RandomNoise(RandomTransform):
    """Additive Gaussian noise with standard deviation uniform in ``std`` (same draw for all keys' shapes)."""

    def __init__(self, keys=("image",), std=(0.0, 0.1), mean: float = 0.0, *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.std = _as_range(std, "std", symmetric=False)
        self.mean = mean

    def draw(self, sample, rng):
        import torch

        sigma = uniform(rng, *self.std)
        seed = int(torch.randint(0, 2**62, (), generator=rng).item())
        return sigma, seed

    def apply_params(self, volume, params, key):
        import torch

        sigma, seed = params
        x = to_float(_data(volume))
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(tuple(x.shape), generator=g, dtype=torch.float32) * sigma + self.mean
        if _is_torch(x):
            return volume.replace(data=x + noise.to(device=x.device, dtype=x.dtype))
        return volume.replace(data=x + noise.numpy().astype(x.dtype, copy=False))


def gaussian_blur(x, sigma_dhw):
    """Separable Gaussian blur of ``(C, D, H, W)`` with per-axis sigma in voxels (replicate borders)."""
    import torch
    import torch.nn.functional as F

    t = x if _is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    for a, s in enumerate(sigma_dhw):
        if s <= 0:
            continue
        r = max(1, int(np.ceil(3 * s)))
        k = torch.arange(-r, r + 1, dtype=t.dtype, device=t.device)
        k = torch.exp(-0.5 * (k / s) ** 2)
        k = (k / k.sum()).view(1, 1, -1)
        moved = t.movedim(a + 1, -1)
        shp = moved.shape
        flat = F.pad(moved.reshape(-1, 1, shp[-1]), (r, r), mode="replicate")
        t = F.conv1d(flat, k).reshape(shp).movedim(-1, a + 1)
    return t if _is_torch(x) else t.numpy()


class RandomBlur(RandomTransform):
    """Gaussian blur with per-axis sigma (mm) uniform in ``sigma_mm`` (converted with the voxel spacing)."""

    def __init__(self, keys=("image",), sigma_mm=(0.0, 1.5), *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.sigma_mm = _as_range(sigma_mm, "sigma_mm", symmetric=False)

    def draw(self, sample, rng):
        return [uniform(rng, *self.sigma_mm) for _ in range(3)]

    def apply_params(self, volume, sigmas, key):
        sig = [s / sp for s, sp in zip(sigmas, volume.spacing)]
        return volume.replace(data=gaussian_blur(to_float(_data(volume)), sig))


class RandomBiasField(RandomTransform):
    """Multiplicative smooth bias field ``exp(sum c_ijk x^i y^j z^k)`` (polynomial ``order``, coefficients uniform
    in ``coefficients``), as TorchIO's RandomBiasField."""

    def __init__(self, keys=("image",), coefficients=0.5, order: int = 3, *, p=1.0, allow_missing_keys=False):
        super().__init__(keys, p=p, allow_missing_keys=allow_missing_keys)
        self.coefficients = _as_range(coefficients, "coefficients")
        self.order = int(order)

    def draw(self, sample, rng):
        n = sum(1 for i in range(self.order + 1) for j in range(self.order + 1 - i) for _ in range(self.order + 1 - i - j))
        return [uniform(rng, *self.coefficients) for _ in range(n)]

    def apply_params(self, volume, coeffs, key):
        x = to_float(_data(volume))
        d, h, w = volume.spatial_shape
        zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (d, h, w)), indexing="ij")
        field = np.zeros((d, h, w), np.float32)
        it = iter(coeffs)
        for i in range(self.order + 1):
            for j in range(self.order + 1 - i):
                for k in range(self.order + 1 - i - j):
                    field += next(it) * xx**i * yy**j * zz**k
        field = np.exp(field)
        if _is_torch(x):
            import torch

            return volume.replace(data=x * torch.from_numpy(field).to(x.device, x.dtype))
        return volume.replace(data=x * field.astype(x.dtype, copy=False))
