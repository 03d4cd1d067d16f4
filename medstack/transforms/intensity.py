"""Intensity transforms. Array functions work on NumPy arrays and torch tensors alike ``(C, D, H, W)``.

Numeric behaviour: every transform here returns float32 (float64 input stays float64) except
:class:`ToDtype`; integer inputs (uint8, int16 CT) are converted to float32 first, values unchanged.
NaNs propagate (they are never silently replaced); statistics (:func:`zscore`, :func:`normalize_intensity`,
:func:`clip_percentiles`) ignore them. Torch tensors stay on their device. The affine is never changed.

Two "nonzero" normalisations, named after the libraries whose semantics they follow:

- :class:`NormalizeIntensity` ``(nonzero=True)``: MONAI / nnU-Net. Statistics from the nonzero voxels and only
  those voxels are normalised; the background stays exactly 0.
- :class:`ZScore` ``(nonzero=True)`` (``background="normalize"``, the default): TorchIO. Statistics from the
  nonzero voxels, then *every* voxel is shifted and scaled, so the background becomes ``-mean / std``.
  ``ZScore(..., background="keep")`` gives the MONAI behaviour with ZScore's options (mask key).
"""

from __future__ import annotations

import numpy as np

from medstack.errors import ArgumentError, GeometryError
from medstack.transforms.base import RandomTransform, Transform, _as_range, uniform
from medstack.viz import WINDOWS
from medstack.volume import Volume

__all__ = [
    "Clip", "ClipPercentile", "NormalizeIntensity", "PercentileScale", "RandomBiasField", "RandomBlur",
    "RandomBrightness", "RandomContrast", "RandomGamma", "RandomNoise", "ScaleIntensityRange", "ScaleToRange",
    "ToDtype", "Window", "ZScore", "clip", "clip_percentiles", "normalize_intensity", "percentiles",
    "scale_intensity_range", "scale_to_range", "to_float", "window", "zscore",
]  # fmt: skip

BACKGROUNDS = ("normalize", "keep")


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


def scale_intensity_range(x, a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0, *,
                          clip: bool = False):  # fmt: skip
    """Map ``[a_min, a_max]`` linearly to ``[b_min, b_max]``, optionally clipped (MONAI's ScaleIntensityRange).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)`` (any shape works); integers become float32, torch stays on its device.
    a_min, a_max : float
        Input values mapped to ``b_min`` and ``b_max`` (e.g. a CT window in HU). Must differ.
    b_min, b_max : float
        Output values of ``a_min`` and ``a_max``.
    clip : bool
        Clip the output to ``[min(b_min, b_max), max(b_min, b_max)]``.

    Notes
    -----
    Same values as MONAI's ``ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)``, with two documented
    differences: ``a_min == a_max`` raises :class:`~medstack.errors.ArgumentError` (MONAI warns and only
    subtracts ``a_min``), and float64 input stays float64 (MONAI returns float32).

    Examples
    --------
    >>> import numpy as np
    >>> scale_intensity_range(np.array([-1000.0, 0.0, 1000.0, 2000.0]), -1000, 1000, 0, 1, clip=True)
    array([0. , 0.5, 1. , 1. ])
    """
    return scale_to_range(x, a_min, a_max, (b_min, b_max), clip_output=clip)


def percentiles(x, q):
    """Percentiles ``q`` (0-100) of ``x`` ignoring NaN, linear interpolation (``numpy.nanpercentile``'s default).

    Torch tensors are sorted on their own device (no host copy, no size limit unlike ``torch.quantile``).
    Returns a list of Python floats (NaN when every value is NaN).

    Examples
    --------
    >>> percentiles(np.arange(11.0), [10, 50, 95])
    [1.0, 5.0, 9.5]
    """
    qs = [float(v) for v in np.atleast_1d(np.asarray(q, dtype=np.float64))]
    if any(not 0.0 <= v <= 100.0 for v in qs):
        raise ArgumentError(f"percentiles: q must be in [0, 100], got {qs}")
    if not _is_torch(x):
        xn = np.asarray(x)
        if xn.dtype.kind == "f" and np.isnan(xn).all():
            return [float("nan")] * len(qs)
        return [float(v) for v in np.nanpercentile(xn, qs)]
    import torch

    v = x.reshape(-1)
    if torch.is_floating_point(v):
        v = v[~torch.isnan(v)]
    n = int(v.numel())
    if n == 0:
        return [float("nan")] * len(qs)
    s = torch.sort(v.to(torch.float64)).values
    out = []
    for qv in qs:
        pos = qv / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        a, b = s[lo].item(), s[hi].item()
        out.append(a + (b - a) * (pos - lo))
    return out


def clip_percentiles(x, lower: float = 0.5, upper: float = 99.5, *, channel_wise: bool = True):
    """Clip to the ``lower``/``upper`` percentiles (per channel by default); values inside are unchanged.

    Unlike :class:`PercentileScale` nothing is rescaled: the output keeps the input's units (HU, a.u.).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)``; integers become float32, torch stays on its device.
    lower, upper : float
        Percentiles in [0, 100], ``lower <= upper``. NaN voxels are ignored in the percentiles and stay NaN.
    channel_wise : bool
        Percentiles of each channel (default), or of all channels together.

    Examples
    --------
    >>> clip_percentiles(np.arange(11.0).reshape(1, 1, 1, 11), 10, 90).ravel()
    array([1., 1., 2., 3., 4., 5., 6., 7., 8., 9., 9.])
    """
    if not 0.0 <= lower <= upper <= 100.0:
        raise ArgumentError(f"clip_percentiles: need 0 <= lower <= upper <= 100, got lower={lower}, upper={upper}")
    x = to_float(x)

    def one(v, _):
        lo, hi = percentiles(v, [lower, upper])
        if np.isnan(lo):
            return v
        return v.clamp(lo, hi) if _is_torch(v) else np.clip(v, lo, hi)

    return _per_group(x, channel_wise, one)


def _per_group(x, channel_wise: bool, fn):
    """``fn(channel, c)`` for each channel, stacked; or ``fn(x, None)`` on the whole array."""
    if not channel_wise:
        return fn(x, None)
    outs = [fn(x[c], c) for c in range(x.shape[0])]
    if _is_torch(x):
        import torch

        return torch.stack(outs)
    return np.stack(outs)


def _masked_stats(v, sel):
    """(mean, population std) of ``v[sel]`` in float64, or None when nothing is selected."""
    if _is_torch(v):
        import torch

        vals = v[sel].to(torch.float64)
        if vals.numel() == 0:
            return None
        return vals.mean().item(), vals.std(correction=0).item()
    vals = v[sel]
    if vals.size == 0:
        return None
    return float(vals.mean(dtype=np.float64)), float(vals.std(dtype=np.float64))


def _finite_sel(v):
    """Boolean array: not NaN."""
    if _is_torch(v):
        import torch

        return ~torch.isnan(v)
    return ~np.isnan(v)


def _standardize(v, sub: float, div: float, region):
    """``(v - sub) / div`` where ``region`` (everywhere when None); other voxels unchanged."""
    y = (v - sub) / div
    if region is None:
        return y
    if _is_torch(v):
        import torch

        return torch.where(region, y, v)
    return np.where(region, y, v)


def _channel_values(value, name: str, n: int, channel_wise: bool, owner: str):
    """None, one float for all channels, or one float per channel (checked against ``n`` channels)."""
    if value is None:
        return None
    arr = np.asarray(value.detach().cpu() if _is_torch(value) else value, dtype=np.float64)
    if arr.ndim == 0:
        vals = [float(arr)] * (n if channel_wise else 1)
    elif arr.ndim == 1:
        if not channel_wise:
            raise ArgumentError(f"{owner}: {name} has {arr.size} values but channel_wise=False takes one number; "
                                "pass a single number or channel_wise=True")  # fmt: skip
        if arr.size != n:
            raise ArgumentError(f"{owner}: {name} has {arr.size} values for an image with {n} channels; give one "
                                "value per channel or a single number")  # fmt: skip
        vals = [float(v) for v in arr]
    else:
        raise ArgumentError(f"{owner}: {name} must be a number or one number per channel, got shape {arr.shape}")
    if not np.all(np.isfinite(vals)):
        raise ArgumentError(f"{owner}: {name} must be finite, got {value!r}")
    return vals


def _check_channel_values(value, name: str, owner: str):
    """Validate a subtrahend/divisor at construction time (type only; the length is checked per call)."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ArgumentError(f"{owner}: {name} must be a number or a sequence of numbers, got {value!r}") from e
    if arr.ndim > 1 or not np.all(np.isfinite(arr)):
        raise ArgumentError(f"{owner}: {name} must be a finite number or one finite number per channel, got {value!r}")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


def normalize_intensity(x, *, subtrahend=None, divisor=None, nonzero: bool = False, channel_wise: bool = True):
    """``(x - subtrahend) / divisor`` with MONAI's NormalizeIntensity semantics (also nnU-Net's z-score).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)``; integers become float32 (float64 stays float64), torch stays on its device.
    subtrahend, divisor : float or sequence of float, optional
        Values to use instead of the computed mean / population standard deviation: one number, or one per
        channel (``channel_wise=True``). A divisor (given or computed) of 0 is replaced by 1.
    nonzero : bool
        Statistics from the nonzero voxels **and only those voxels are normalised: the background stays exactly
        0** (MONAI / nnU-Net). For TorchIO's behaviour (statistics from the nonzero voxels, every voxel shifted)
        use :func:`zscore` with ``nonzero=True`` (``background="normalize"``).
    channel_wise : bool
        Statistics per channel (default; MONAI's default is ``channel_wise=False``, one set of statistics over
        all channels).

    Notes
    -----
    Matches MONAI's ``NormalizeIntensity`` (population std, ``divisor == 0 -> 1``, an all-zero channel with
    ``nonzero=True`` is returned unchanged) except: NaN voxels are ignored in the statistics (MONAI's become
    NaN everywhere) and stay NaN; float64 input stays float64 (MONAI returns float32); statistics are
    accumulated in float64.

    Examples
    --------
    >>> x = np.array([0.0, 0.0, 2.0, 4.0]).reshape(1, 1, 1, 4)
    >>> normalize_intensity(x, nonzero=True).ravel()
    array([ 0.,  0., -1.,  1.])
    >>> normalize_intensity(x, subtrahend=1.0, divisor=2.0).ravel()
    array([-0.5, -0.5,  0.5,  1.5])
    """
    owner = "normalize_intensity"
    x = to_float(x)
    subs = _channel_values(subtrahend, "subtrahend", x.shape[0], channel_wise, owner)
    divs = _channel_values(divisor, "divisor", x.shape[0], channel_wise, owner)

    def one(v, c):
        i = 0 if c is None else c
        region = (v != 0) if nonzero else None
        if region is not None and not bool(region.any()):
            return v
        sub = None if subs is None else subs[i]
        div = None if divs is None else divs[i]
        if sub is None or div is None:
            sel = _finite_sel(v)
            if region is not None:
                sel = sel & region
            stats = _masked_stats(v, sel)
            if stats is None:  # every selected voxel is NaN
                return v
            sub = stats[0] if sub is None else sub
            div = stats[1] if div is None else div
        return _standardize(v, sub, 1.0 if div == 0 else div, region)

    return _per_group(x, channel_wise, one)


def zscore(x, mask=None, *, nonzero: bool = False, per_channel: bool = True, eps: float = 1e-8,
           background: str = "normalize"):  # fmt: skip
    """``(x - mean) / max(std, eps)`` with statistics over the volume, a ``mask`` or the nonzero voxels.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)``; integers become float32, torch stays on its device.
    mask : array_like, torch.Tensor or Volume, optional
        Boolean ``(D, H, W)`` or ``(C, D, H, W)``: statistics from these voxels only.
    nonzero : bool
        Statistics from the nonzero voxels only (combined with ``mask`` when both are given).
    per_channel : bool
        Statistics per channel (default) or over all channels.
    eps : float
        Lower bound of the standard deviation (population std, ddof=0).
    background : {"normalize", "keep"}
        What happens to voxels outside the statistics region (outside ``mask`` / the zero voxels):
        ``"normalize"`` (default): **TorchIO's ZNormalization semantics**: every voxel is shifted and scaled
        with the same statistics, so a zero background becomes ``-mean / std``.
        ``"keep"``: **MONAI / nnU-Net semantics**, as :func:`normalize_intensity` ``(nonzero=True)``: only the
        region is normalised, voxels outside keep their value (a zero background stays 0).

    Notes
    -----
    NaN voxels are ignored in the statistics and stay NaN. A channel with no selected voxel is unchanged.
    TorchIO uses the sample std (ddof=1); medstack and MONAI the population std (ddof=0).

    Examples
    --------
    >>> x = np.array([0.0, 0.0, 2.0, 4.0]).reshape(1, 1, 1, 4)
    >>> zscore(x, nonzero=True).ravel()                        # TorchIO: the background moves too
    array([-3., -3., -1.,  1.])
    >>> zscore(x, nonzero=True, background="keep").ravel()     # MONAI / nnU-Net: the background stays 0
    array([ 0.,  0., -1.,  1.])
    """
    if background not in BACKGROUNDS:
        raise ArgumentError(f"zscore: background must be one of {BACKGROUNDS}, got {background!r}")
    x = to_float(x)
    m = None
    if mask is not None:
        if isinstance(mask, Volume):
            mask = mask.data if _is_torch(mask.data) else mask.to_numpy()
        if _is_torch(x):
            import torch

            m = torch.as_tensor(mask.detach() if _is_torch(mask) else np.asarray(mask), device=x.device).bool()
        else:
            m = np.asarray(mask.detach().cpu().numpy() if _is_torch(mask) else mask).astype(bool)
        if m.ndim not in (3, 4) or tuple(m.shape[-3:]) != tuple(x.shape[-3:]):
            raise GeometryError(f"zscore: mask shape {tuple(m.shape)} does not match the volume {tuple(x.shape[-3:])} "
                                "(expected (D, H, W) or (C, D, H, W) on the image grid); resample the mask first")  # fmt: skip

    def one(v, c):
        region = None
        if m is not None:
            mc = m if m.ndim == 3 else (m[c] if c is not None else m[0])
            region = mc.expand(v.shape) if _is_torch(v) else np.broadcast_to(mc, v.shape)
        if nonzero:
            region = (v != 0) if region is None else region & (v != 0)
        sel = _finite_sel(v) if region is None else _finite_sel(v) & region
        stats = _masked_stats(v, sel)
        if stats is None:
            return v
        mean, std = stats
        return _standardize(v, mean, max(std, eps), region if background == "keep" else None)

    return _per_group(x, per_channel, one)


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
            raise ArgumentError(f"{type(self).__name__}: a_min == a_max == {a_min}: the input range is empty; give "
                                "a_max != a_min")  # fmt: skip
        self.a_min, self.a_max, self.out_range, self.clip = a_min, a_max, out_range, clip

    def apply(self, volume, params, key):
        y = scale_to_range(_data(volume), self.a_min, self.a_max, self.out_range, clip_output=self.clip)
        return volume.replace(data=y)


class ScaleIntensityRange(ScaleToRange):
    """MONAI's ScaleIntensityRange: ``[a_min, a_max] -> [b_min, b_max]``, optionally clipped.

    :class:`ScaleToRange` with MONAI's argument names (``b_min``, ``b_max`` instead of ``out_range``); see
    :func:`scale_intensity_range` for the documented differences from MONAI.

    Examples
    --------
    >>> import numpy as np, medstack
    >>> ct = medstack.Volume(np.array([-1000, 0, 1000], np.int16).reshape(1, 1, 1, 3), np.eye(4))
    >>> ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0, b_max=1)(ct).data.ravel()
    array([0. , 0.5, 1. ], dtype=float32)
    """

    def __init__(self, keys=("image",), a_min: float = 0.0, a_max: float = 1.0, b_min: float = 0.0,
                 b_max: float = 1.0, *, clip: bool = False, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, a_min, a_max, (b_min, b_max), clip=clip, allow_missing_keys=allow_missing_keys)
        self.b_min, self.b_max = b_min, b_max


class ZScore(Transform):
    """Z-score per channel over the volume, the nonzero voxels, or a mask key of the same sample.

    ``background="normalize"`` (default) is **TorchIO's semantics**: statistics from the nonzero / masked voxels,
    then every voxel is shifted and scaled (a zero background becomes ``-mean / std``). ``background="keep"`` is
    **MONAI / nnU-Net's**: only the nonzero / masked voxels are normalised, the others keep their value, as
    :class:`NormalizeIntensity` ``(nonzero=True)``. See :func:`zscore`.
    """

    def __init__(self, keys=("image",), *, mask_key: str | None = None, nonzero: bool = False,
                 per_channel: bool = True, background: str = "normalize", allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if background not in BACKGROUNDS:
            raise ArgumentError(f"ZScore: background must be one of {BACKGROUNDS} (TorchIO's or MONAI's semantics), "
                                f"got {background!r}")  # fmt: skip
        self.mask_key, self.nonzero, self.per_channel, self.background = mask_key, nonzero, per_channel, background

    def call_params(self, sample, rng):
        if self.mask_key is None:
            return None
        if self.mask_key not in sample:
            raise ArgumentError(f"ZScore: mask key {self.mask_key!r} not in the sample")
        return sample[self.mask_key].to_numpy() > 0  # the mask travels as this call's parameter, not on self

    def apply(self, volume, params, key):
        return volume.replace(data=zscore(_data(volume), params, nonzero=self.nonzero, per_channel=self.per_channel,
                                          background=self.background))  # fmt: skip


class NormalizeIntensity(Transform):
    """MONAI's NormalizeIntensity: ``(x - subtrahend) / divisor`` with computed or given statistics.

    With ``nonzero=True`` only the nonzero voxels are normalised and **the background stays exactly 0**
    (MONAI / nnU-Net semantics). :class:`ZScore` ``(nonzero=True)`` is TorchIO's instead (every voxel shifted).
    See :func:`normalize_intensity` for the parameters and the differences from MONAI.

    Examples
    --------
    >>> import numpy as np, medstack
    >>> mr = medstack.Volume(np.array([0, 0, 2, 4], np.float32).reshape(1, 1, 1, 4), np.eye(4))
    >>> NormalizeIntensity(nonzero=True)(mr).data.ravel()
    array([ 0.,  0., -1.,  1.], dtype=float32)
    """

    def __init__(self, keys=("image",), *, subtrahend=None, divisor=None, nonzero: bool = False,
                 channel_wise: bool = True, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.subtrahend = _check_channel_values(subtrahend, "subtrahend", "NormalizeIntensity")
        self.divisor = _check_channel_values(divisor, "divisor", "NormalizeIntensity")
        if not channel_wise and (isinstance(self.subtrahend, tuple) or isinstance(self.divisor, tuple)):
            raise ArgumentError("NormalizeIntensity: per-channel subtrahend/divisor need channel_wise=True")
        self.nonzero, self.channel_wise = nonzero, channel_wise

    def apply(self, volume, params, key):
        y = normalize_intensity(_data(volume), subtrahend=self.subtrahend, divisor=self.divisor,
                                nonzero=self.nonzero, channel_wise=self.channel_wise)  # fmt: skip
        return volume.replace(data=y)


class ClipPercentile(Transform):
    """Clip each channel to its ``lower``/``upper`` percentiles; values inside are unchanged (no rescaling,
    unlike :class:`PercentileScale`). See :func:`clip_percentiles`.

    Examples
    --------
    >>> import numpy as np, medstack
    >>> v = medstack.Volume(np.arange(11, dtype=np.float32).reshape(1, 1, 1, 11), np.eye(4))
    >>> ClipPercentile(lower=10, upper=90)(v).data.ravel()
    array([1., 1., 2., 3., 4., 5., 6., 7., 8., 9., 9.], dtype=float32)
    """

    def __init__(self, keys=("image",), lower: float = 0.5, upper: float = 99.5, *, channel_wise: bool = True,
                 allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if not 0 <= lower <= upper <= 100:
            raise ArgumentError(f"ClipPercentile: need 0 <= lower <= upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.channel_wise = lower, upper, channel_wise

    def apply(self, volume, params, key):
        y = clip_percentiles(_data(volume), self.lower, self.upper, channel_wise=self.channel_wise)
        return volume.replace(data=y)


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

        def one(v, _):
            lo, hi = percentiles(v, [self.lower, self.upper])
            hi = hi if hi > lo else lo + 1.0
            return scale_to_range(v, lo, hi, self.out_range, clip_output=self.clip)

        return volume.replace(data=_per_group(x, True, one))


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
