"""Batched augmentation of ``(B, C, D, H, W)`` tensors on their device (GPU after the DataLoader, or CPU).

Each sample of the batch gets its own random parameters, all drawn from the one ``torch.Generator`` handed to
the call (a fixed number of draws per batch, so a seed reproduces the batch whatever the probabilities decide).
Every operation has its own probability ``p_<op>`` (per sample; a few also have a per-channel probability).

The spatial part (flips, rotation, zoom, translation, optional elastic displacement) is ONE fused
``grid_sample`` per batch (images: linear; labels: nearest, same grid; labels never get intensity operations).
The intensity part follows, in this order (nnU-Net's order for the operations it has), each vectorised over the
samples it applies to: bias field, motion, ghosting, spike (k-space, ``torch.fft``), Gaussian noise, Rician
noise, blur, sharpen, multiplicative brightness, additive brightness, contrast, low resolution, inverted gamma,
gamma.

Units and axes: every spatial tuple is ``(D, H, W)`` (the reverse of MONAI's pixdim and TorchIO's (x, y, z)).
``spacing`` is the voxel size (D, H, W) in mm; rotations are in degrees about the array axes D, H, W in mm space
(physical for anisotropic voxels), translations and elastic displacements in mm, blur sigmas in mm. With an
axis-aligned RAS affine (i = W -> R, j = H -> A, k = D -> S) the angles and translation ``(D, H, W)`` equal
:class:`~medstack.transforms.spatial.RandomAffine`'s world ``(z, y, x)`` ones: same rotation matrix
(``Rz @ Ry @ Rx``), same centre, same direction. ``scale`` is a ZOOM factor (> 1 enlarges the anatomy), the
reciprocal of RandomAffine's ``scale``.

Margins: a patch read at its final size and then rotated/zoomed out samples outside itself (zero padding).
:meth:`BatchAugment.margin` gives the margin (voxels per side) that avoids it at the configured maximum ranges;
read ``patch + 2 * margin`` and call with ``out_size=patch``: the grid is built for the output and mapped into
the larger input, so the output is filled with real voxels.

If ``affines`` (B, 4, 4) are passed, the affines of the augmented output grids are returned too (elastic
displacement, being non-affine, is not in them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medstack.errors import ArgumentError, GeometryError

__all__ = ["BatchAugment", "rotation_matrices"]

#: intensity operations, in the order they are applied
INTENSITY_OPS = ("bias_field", "motion", "ghosting", "spike", "noise", "rician", "blur", "sharpen", "brightness_mult",
                 "brightness", "contrast", "lowres", "gamma_inverted", "gamma")  # fmt: skip
SPATIAL_OPS = ("rotation", "scale", "translation", "elastic")


# -- argument helpers -----------------------------------------------------------------------------------------


def _range(value, name: str, *, symmetric: bool = True, low: float | None = None, high: float | None = None):
    """``x`` -> ``(-x, x)`` (symmetric) or ``(x, x)``; ``(lo, hi)`` checked; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, int | float):
        lo, hi = (-abs(float(value)), abs(float(value))) if symmetric else (float(value), float(value))
    else:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"BatchAugment: {name} must be a number or a (low, high) pair, got {value!r}") from e
    if lo > hi:
        raise ArgumentError(f"BatchAugment: {name} range ({lo}, {hi}) has low > high; pass (low, high)")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ArgumentError(f"BatchAugment: {name} range ({lo}, {hi}) must lie within [{low}, {high}]")
    return lo, hi


def _prob(value, name: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ArgumentError(f"BatchAugment: {name} is a probability, expected 0 <= {name} <= 1, got {value!r}")
    return p


def _axes(value, name: str) -> tuple[int, ...]:
    axes = tuple(int(a) for a in value)
    if not set(axes) <= {0, 1, 2}:
        raise ArgumentError(f"BatchAugment: {name} must be spatial axes 0 (D), 1 (H), 2 (W), got {value!r}")
    return axes


def _rotation_ranges(rotation) -> list[tuple[float, float]]:
    """Degrees: a number (+-x on every axis), a ``(lo, hi)`` pair, or three pairs (about D, H, W)."""
    if isinstance(rotation, int | float):
        return [_range(rotation, "rotation")] * 3
    items = list(rotation)
    if len(items) == 3 and all(not isinstance(r, int | float) for r in items):
        return [_range(r, "rotation") for r in items]
    return [_range(items, "rotation")] * 3


# -- random draws (CPU, from the generator; fixed count per call) ---------------------------------------------


def _u(gen, shape, lo, hi, device=None):
    import torch

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    t = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return t if device is None else t.to(device)


def _factor(gen, shape, rng, split: bool):
    """Factors in ``rng``; ``split``: half the draws in (lo, 1), half in (1, hi) (nnU-Net's BGContrast)."""
    import torch

    lo, hi = rng
    u = _u(gen, shape, 0.0, 1.0)
    if not split or not lo < 1.0 < hi:
        return u * (hi - lo) + lo
    below = torch.rand(u.shape, generator=gen) < 0.5
    return torch.where(below, lo + u * (1.0 - lo), 1.0 + u * (hi - 1.0))


def _seed(gen) -> int:
    import torch

    return int(torch.randint(0, 2**62, (), generator=gen).item())


# -- geometry -------------------------------------------------------------------------------------------------


def rotation_matrices(angles_dhw):
    """Rotation matrices ``(..., 3, 3)`` in (x, y, z) = (W, H, D) order from angles ``(..., 3)`` in RADIANS about
    the D, H, W array axes: ``Rz(a_D) @ Ry(a_H) @ Rx(a_W)``.

    The same matrix as the world-space rotation of :func:`medstack.transforms.spatial.world_transform` with
    angles ``(x, y, z) = (a_W, a_H, a_D)`` (in degrees there).

    Examples
    --------
    >>> import math, torch
    >>> r = rotation_matrices(torch.tensor([math.pi / 2, 0.0, 0.0]))  # 90 degrees about D: x -> y
    >>> [round(v) for v in (r @ torch.tensor([1.0, 0.0, 0.0])).tolist()]
    [0, 1, 0]
    """
    import torch

    a = torch.as_tensor(angles_dhw)
    cz, cy, cx = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sz, sy, sx = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    shape = (*a.shape[:-1], 3, 3)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(shape)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(shape)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(shape)
    return rz @ ry @ rx


def _affine_grid(theta, shape_dhw):
    """``F.affine_grid(theta, (B, 1, D, H, W), align_corners=False)`` built as a sum of three broadcast
    per-axis terms (about 3x faster on CPU than the generic batched matrix product)."""
    import torch

    d, h, w = shape_dhw
    dev, dt = theta.device, theta.dtype

    def base(n):
        return (2.0 * torch.arange(n, device=dev, dtype=dt) + 1.0) / n - 1.0

    tx, ty, tz, t0 = theta[..., 0], theta[..., 1], theta[..., 2], theta[..., 3]  # (B, 3) each
    grid = (base(d)[None, :, None, None, None] * tz[:, None, None, None, :]) + t0[:, None, None, None, :]
    grid = grid.expand(-1, d, h, w, -1).clone()
    grid += base(h)[None, None, :, None, None] * ty[:, None, None, None, :]
    grid += base(w)[None, None, None, :, None] * tx[:, None, None, None, :]
    return grid


def _physical_theta(rot, zoom_xyz, flips_xyz, shift_mm_xyz, ext_out, ext_in):
    """(B, 3, 4) normalised output -> normalised input map: ``p_in = R Z^-1 F p_out + t`` in mm."""
    import torch

    lin = torch.diag(2.0 / ext_in) @ rot @ torch.diag_embed(1.0 / zoom_xyz) @ torch.diag(ext_out / 2.0)
    lin = lin @ torch.diag_embed(flips_xyz)
    shift = shift_mm_xyz * (2.0 / ext_in)
    return torch.cat([lin, shift[..., None]], dim=-1)


# -- batched intensity kernels (x: (N, C, D, H, W) float, parameters per row) ---------------------------------


def _blur(x, sigma_vox):
    """Separable Gaussian blur, per-(sample, channel, axis) sigma in voxels ``(N, C, 3)`` (0: no blur), replicate
    borders, radius ``ceil(3 sigma)`` (the kernel of :func:`medstack.transforms.intensity.gaussian_blur`)."""
    import torch
    import torch.nn.functional as F

    n, c = x.shape[:2]
    out = x.reshape(1, n * c, *x.shape[2:])
    sig_cpu = sigma_vox.reshape(n * c, 3).cpu()  # kernel radii from the host copy: no device sync
    sig = sig_cpu.to(device=x.device, dtype=x.dtype)
    for a in range(3):
        s = sig[:, a]
        smax = float(sig_cpu[:, a].max())
        if smax <= 0:
            continue
        r = max(1, math.ceil(3 * smax))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / s.clamp_min(1e-6)[:, None]) ** 2)
        k = k / k.sum(-1, keepdim=True)
        shape = [n * c, 1, 1, 1, 1]
        shape[2 + a] = 2 * r + 1
        pad = [0] * 6
        pad[2 * (2 - a)] = pad[2 * (2 - a) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape), groups=n * c)
    return out.reshape(x.shape)


def _lowres(x, factors, axes):
    """Nearest downsampling of each (sample, channel) to ``round(n * f)`` along ``axes`` then linear upsampling
    back (``F.interpolate`` 'nearest-exact' then 'linear', align_corners=False), batched as separable gathers."""
    import torch

    n, c = x.shape[:2]
    f = factors.to(device=x.device, dtype=torch.float64).reshape(n, c)
    for a in axes:
        size = x.shape[2 + a]
        m = torch.round(f * size).clamp(1, size)  # (n, c) low-res sizes
        # float32 index arithmetic, as F.interpolate's kernels (same rounding at exact .5 boundaries)
        i = torch.arange(size, device=x.device, dtype=torch.float32)
        pos = ((i + 0.5) * (m[..., None] / size).float() - 0.5).clamp_min(0)  # linear upsampling source
        j0 = pos.floor()
        j1 = torch.minimum(j0 + 1, m[..., None].float() - 1)
        w1 = (pos - j0).to(x.dtype)

        def src(j, m=m, size=size):  # low-res index j -> original index (nearest-exact downsampling)
            return torch.floor((j + 0.5) * (size / m[..., None]).float()).clamp(max=size - 1).long()

        view = [n, c, 1, 1, 1]
        view[2 + a] = size
        idx0, idx1 = src(j0).reshape(view), src(j1).reshape(view)
        full = list(x.shape)
        g0 = torch.gather(x, 2 + a, idx0.expand(full))
        g1 = torch.gather(x, 2 + a, idx1.expand(full))
        w1 = w1.reshape(view)
        x = g0 + (g1 - g0) * w1
    return x


def _bias_basis(shape_dhw, order, device, dtype):
    """(T, D, H, W) monomials ``x^i y^j z^k`` (x = W, y = H, z = D in [-1, 1]) in RandomBiasField's order."""
    import torch

    d, h, w = shape_dhw
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in (d, h, w)),
                                indexing="ij")  # fmt: skip
    terms = [xx**i * yy**j * zz**k for i in range(order + 1) for j in range(order + 1 - i)
             for k in range(order + 1 - i - j)]  # fmt: skip
    return torch.stack(terms)


def _n_bias_terms(order: int) -> int:
    return sum(1 for i in range(order + 1) for j in range(order + 1 - i) for _ in range(order + 1 - i - j))


def _signed_freq(n, device):
    import torch

    k = torch.arange(n, device=device)
    return torch.where(k <= n // 2, k, k - n)


class BatchAugment:
    """Random spatial and intensity augmentation of a batch ``(B, C, D, H, W)``, per sample, on its device.

    Every range is ``(low, high)`` (a number ``x`` means ``(-x, x)`` for rotation / translation / brightness / bias);
    ``None`` disables an operation; ``p_<op>`` is the probability that a sample gets it (default 1, so the
    keywords of earlier versions behave as before). Axes and spatial tuples are ``(D, H, W)``.

    Parameters
    ----------
    flip_axes, flip_p : axes (0 = D, 1 = H, 2 = W) flipped independently, each with probability ``flip_p``
    rotation : degrees: a number (+-x about each axis), ``(lo, hi)``, or three ranges (about D, H, W)
    scale : ``(lo, hi)`` zoom factors (> 1 enlarges), independent per axis unless ``scale_isotropic``;
        only ``scale_axes`` are zoomed
    translation : max |shift| in mm per axis (or ``(lo, hi)``)
    elastic : max displacement in mm of a smooth random field: uniform control-point displacements on a
        grid of ``elastic_points`` per axis over the output patch, or one every ``elastic_grid_mm`` mm when
        given (then independent of the patch size), upsampled trilinearly
    noise_std : Gaussian noise standard deviation range (image units)
    rician_std : Rician noise ``sqrt((x + n1)^2 + n2^2)``, standard deviation range
    blur_sigma : Gaussian blur sigma range, mm (voxels if ``blur_in_voxels``), drawn per axis and channel;
        ``blur_p_channel`` is the probability per channel once the sample is chosen
    sharpen, sharpen_sigma : unsharp mask ``x + s (x - blur(x))``: strength range and sigma range (mm)
    brightness_mult : multiplicative factor range, per channel
    brightness : additive shift range (image units), per sample
    contrast : factor range about each channel's mean; ``contrast_preserve_range`` clips to the channel's range
    lowres : size factor range in (0, 1]: nearest downsampling along ``lowres_axes`` to ``round(n * f)``, linear
        upsampling back; per channel with probability ``lowres_p_channel``
    log_gamma : log-gamma range (or ``x`` for ``(-x, x)``), the CPU :class:`~medstack.transforms.RandomGamma`'s
        vocabulary: ``gamma = exp(uniform(lo, hi))`` per channel (instead of ``gamma=``)
    gamma, gamma_inverted : gamma value ranges (nnU-Net's vocabulary; ``log_gamma=`` for RandomGamma's) of
        ``lo + (hi - lo) * n ** g`` with ``n`` the channel min-max normalised; the inverted one is
        ``lo + (hi - lo) * (1 - (1 - n) ** g)`` (nnU-Net's ``invert_image``); ``gamma_retain_stats`` restores
        each channel's mean and std afterwards
    bias_field, bias_order : multiplicative ``exp(polynomial)`` field, coefficient range (as RandomBiasField)
    spike : k-space spike intensity range (times the spectrum's largest magnitude), one spike per sample
    ghosting, ghosting_num, ghosting_axes : k-space planes ``k % num == 0`` (k != 0) along a random axis of
        ``ghosting_axes`` attenuated by ``1 - intensity``; ``ghosting`` is the intensity range in [0, 1]
    motion, motion_transforms : ``(degrees, mm)`` maxima of ``motion_transforms`` rigid movements; k-space is
        filled segment by segment (along a random axis) from the moved copies, then the magnitude is taken
        (a simplified TorchIO RandomMotion)
    split_factors : draw multiplicative factors (brightness_mult, contrast, gamma) half the time in
        ``(lo, 1)`` and half in ``(1, hi)``, as nnU-Net's ``BGContrast``
    spacing : voxel size (D, H, W) in mm of the batch
    padding_mode : grid_sample padding ("zeros", "border", "reflection"); read a margin instead (:meth:`margin`)

    Examples
    --------
    >>> import torch
    >>> aug = BatchAugment(rotation=15, p_rotation=0.5, noise_std=(0, 0.1), p_noise=0.2, spacing=(2.0, 1.0, 1.0))
    >>> x, y = torch.rand(2, 1, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    >>> out, lab = aug(x, y, generator=torch.Generator().manual_seed(0))
    >>> out.shape, lab.dtype
    (torch.Size([2, 1, 8, 8, 8]), torch.int64)
    >>> m = aug.margin((4, 6, 6))                    # read (4, 6, 6) + 2 * m, get (4, 6, 6) back
    >>> big = torch.rand(2, 1, *(n + 2 * k for n, k in zip((4, 6, 6), m)))
    >>> aug(big, generator=torch.Generator().manual_seed(0), out_size=(4, 6, 6)).shape
    torch.Size([2, 1, 4, 6, 6])
    """

    def __init__(self, *, flip_axes: Sequence[int] = (0, 1, 2), flip_p: float = 0.5,
                 rotation=10.0, p_rotation: float = 1.0,
                 scale=(0.9, 1.1), p_scale: float = 1.0, scale_isotropic: bool = False,
                 scale_axes: Sequence[int] = (0, 1, 2),
                 translation=0.0, p_translation: float = 1.0,
                 elastic: float = 0.0, elastic_points: int = 5, elastic_grid_mm: float | None = None,
                 p_elastic: float = 1.0,
                 noise_std=None, p_noise: float = 1.0, rician_std=None, p_rician: float = 1.0,
                 blur_sigma=None, p_blur: float = 1.0, blur_p_channel: float = 1.0, blur_in_voxels: bool = False,
                 sharpen=None, sharpen_sigma=(0.5, 1.0), p_sharpen: float = 1.0,
                 brightness_mult=None, p_brightness_mult: float = 1.0, brightness=None, p_brightness: float = 1.0,
                 contrast=None, p_contrast: float = 1.0, contrast_preserve_range: bool = False,
                 lowres=None, p_lowres: float = 1.0, lowres_p_channel: float = 1.0,
                 lowres_axes: Sequence[int] = (0, 1, 2),
                 gamma=None, p_gamma: float = 1.0, log_gamma=None, gamma_inverted=None, p_gamma_inverted: float = 1.0,
                 gamma_retain_stats: bool = False,
                 bias_field=None, bias_order: int = 3, p_bias_field: float = 1.0,
                 spike=None, p_spike: float = 1.0,
                 ghosting=None, ghosting_num=(4, 10), ghosting_axes: Sequence[int] = (0, 1, 2),
                 p_ghosting: float = 1.0,
                 motion=None, motion_transforms: int = 2, p_motion: float = 1.0,
                 split_factors: bool = False, spacing=(1.0, 1.0, 1.0), padding_mode: str = "zeros"):  # fmt: skip
        self.flip_axes, self.flip_p = _axes(flip_axes, "flip_axes"), _prob(flip_p, "flip_p")
        self.rotation = _rotation_ranges(0.0 if rotation is None else rotation)
        self.scale = _range((1.0, 1.0) if scale is None else scale, "scale", symmetric=False, low=1e-3)
        self.scale_isotropic, self.scale_axes = bool(scale_isotropic), _axes(scale_axes, "scale_axes")
        self.translation = _range(0.0 if translation is None else translation, "translation")
        self.elastic, self.elastic_points = float(elastic), int(elastic_points)
        if self.elastic < 0 or self.elastic_points < 2:
            raise ArgumentError(f"BatchAugment: elastic must be >= 0 mm and elastic_points >= 2, got {elastic}, "
                                f"{elastic_points}")  # fmt: skip
        if elastic_grid_mm is not None and float(elastic_grid_mm) <= 0:
            raise ArgumentError(f"BatchAugment: elastic_grid_mm must be positive (mm), got {elastic_grid_mm}")
        self.elastic_grid_mm = None if elastic_grid_mm is None else float(elastic_grid_mm)
        self.noise_std = _range(noise_std, "noise_std", symmetric=False, low=0.0)
        self.rician_std = _range(rician_std, "rician_std", symmetric=False, low=0.0)
        self.blur_sigma = _range(blur_sigma, "blur_sigma", symmetric=False, low=0.0)
        self.blur_p_channel, self.blur_in_voxels = _prob(blur_p_channel, "blur_p_channel"), bool(blur_in_voxels)
        self.sharpen = _range(sharpen, "sharpen", symmetric=False, low=0.0)
        self.sharpen_sigma = _range(sharpen_sigma, "sharpen_sigma", symmetric=False, low=0.0)
        self.brightness_mult = _range(brightness_mult, "brightness_mult", symmetric=False, low=0.0)
        self.brightness = _range(brightness, "brightness")
        self.contrast = _range(contrast, "contrast", symmetric=False, low=0.0)
        self.contrast_preserve_range = bool(contrast_preserve_range)
        self.lowres = _range(lowres, "lowres", symmetric=False, low=1e-3, high=1.0)
        self.lowres_p_channel, self.lowres_axes = _prob(lowres_p_channel, "lowres_p_channel"), _axes(
            lowres_axes, "lowres_axes")  # fmt: skip
        if gamma is not None and log_gamma is not None:
            raise ArgumentError("BatchAugment: pass gamma= (gamma values) or log_gamma= (as RandomGamma), not both")
        self.log_gamma = _range(log_gamma, "log_gamma")  # RandomGamma's vocabulary: gamma = exp(uniform(lo, hi))
        self.gamma = (_range(gamma, "gamma", symmetric=False, low=1e-3) if self.log_gamma is None
                      else tuple(math.exp(v) for v in self.log_gamma))  # fmt: skip
        self.gamma_inverted = _range(gamma_inverted, "gamma_inverted", symmetric=False, low=1e-3)
        self.gamma_retain_stats = bool(gamma_retain_stats)
        self.bias_field, self.bias_order = _range(bias_field, "bias_field"), int(bias_order)
        self.spike = _range(spike, "spike", symmetric=False)
        self.ghosting = _range(ghosting, "ghosting", symmetric=False, low=0.0, high=1.0)
        self.ghosting_num = _range(ghosting_num, "ghosting_num", symmetric=False, low=1.0)
        self.ghosting_axes = _axes(ghosting_axes, "ghosting_axes")
        if motion is not None and (isinstance(motion, int | float) or len(motion) != 2):
            raise ArgumentError(f"BatchAugment: motion must be (max degrees, max mm), got {motion!r}")
        self.motion = None if motion is None else (abs(float(motion[0])), abs(float(motion[1])))
        self.motion_transforms = int(motion_transforms)
        if self.motion_transforms < 1:
            raise ArgumentError(f"BatchAugment: motion_transforms must be >= 1, got {motion_transforms}")
        self.split_factors = bool(split_factors)
        self.p = {name: _prob(value, f"p_{name}") for name, value in (
            ("rotation", p_rotation), ("scale", p_scale), ("translation", p_translation), ("elastic", p_elastic),
            ("noise", p_noise), ("rician", p_rician), ("blur", p_blur), ("sharpen", p_sharpen),
            ("brightness_mult", p_brightness_mult), ("brightness", p_brightness), ("contrast", p_contrast),
            ("lowres", p_lowres), ("gamma", p_gamma), ("gamma_inverted", p_gamma_inverted),
            ("bias_field", p_bias_field), ("spike", p_spike), ("ghosting", p_ghosting), ("motion", p_motion))}  # fmt: skip
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ArgumentError(f"BatchAugment: spacing must be three positive mm values (D, H, W), got {spacing!r}")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ArgumentError(f"padding_mode must be zeros, border or reflection, got {padding_mode!r}")
        self.padding_mode = padding_mode

    # -- presets ---------------------------------------------------------------------------------------------

    @classmethod
    def nnunet(cls, *, spacing, patch_size, **overrides) -> BatchAugment:
        """nnU-Net v2's default training augmentation (``nnUNetTrainer.get_training_transforms``).

        Checked against MIC-DKFZ/nnUNet ``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py``
        (``get_training_transforms``, ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``),
        ``nnunetv2/configuration.py`` (``ANISO_THRESHOLD = 3``) and batchgeneratorsv2 (``SpatialTransform``,
        ``GaussianNoiseTransform``, ``GaussianBlurTransform``, ``BGContrast``, ``GammaTransform``,
        ``SimulateLowResolutionTransform``):

        - rotation p = 0.2: +-30 degrees about each axis; for anisotropic patches
          (``max(patch) / patch[0] > 3``, nnU-Net's "dummy 2D" augmentation) rotation is in-plane only
          (about D) over +-180 degrees, as in nnU-Net's source, and zoom and low resolution are in-plane only;
        - scaling p = 0.2, nnU-Net's grid factor 0.7 - 1.4 (larger = smaller objects), same on all axes: here
          zoom ``(1 / 1.4, 1 / 0.7)`` (uniform in the zoom, not in its reciprocal); no elastic deformation;
        - Gaussian noise p = 0.1 with "variance" (0, 0.1), which batchgeneratorsv2 uses as the standard
          deviation (``np.random.normal(0, sigma)``): ``noise_std=(0, 0.1)``;
        - blur p = 0.2, sigma 0.5 - 1 voxel per axis and channel, each channel with p = 0.5;
        - multiplicative brightness 0.75 - 1.25 p = 0.15; contrast 0.75 - 1.25 p = 0.15 preserving the range
          (both per channel, BGContrast sampling: half below 1, half above);
        - low resolution 0.5 - 1 p = 0.25, each channel with p = 0.5, same factor on all axes;
        - gamma 0.7 - 1.5 (BGContrast) with inversion p = 0.1, then without p = 0.3, retaining mean and std;
        - mirroring of every axis with p = 0.5.

        Differences: medstack rotates in mm space using ``spacing`` (nnU-Net in voxels of data already resampled
        to its target spacing), its Gaussian noise field is drawn per channel (nnU-Net shares one field across
        channels), and low resolution upsamples linearly (as batchgeneratorsv2).

        Parameters
        ----------
        spacing : voxel size (D, H, W) in mm
        patch_size : output patch size (D, H, W) in voxels (for the anisotropy rule)
        **overrides : any constructor keyword, replacing the preset's value (e.g. ``p_rotation=1``)

        Examples
        --------
        >>> aug = BatchAugment.nnunet(spacing=(3.0, 0.8, 0.8), patch_size=(16, 160, 160))
        >>> aug.rotation, aug.scale_axes, aug.p["rotation"]
        ([(-180.0, 180.0), (0.0, 0.0), (0.0, 0.0)], (1, 2), 0.2)
        """
        patch = tuple(int(n) for n in patch_size)
        if len(patch) != 3 or min(patch) < 1:
            raise ArgumentError(f"BatchAugment.nnunet: patch_size must be three positive ints (D, H, W), got "
                                f"{patch_size!r}")  # fmt: skip
        aniso = max(patch) / patch[0] > 3  # nnunetv2.configuration.ANISO_THRESHOLD
        plane = (1, 2) if aniso else (0, 1, 2)
        kw = dict(
            flip_axes=(0, 1, 2), flip_p=0.5,
            rotation=[(-180.0, 180.0), (0.0, 0.0), (0.0, 0.0)] if aniso else 30.0, p_rotation=0.2,
            scale=(1 / 1.4, 1 / 0.7), p_scale=0.2, scale_isotropic=True, scale_axes=plane,
            translation=0.0, elastic=0.0,
            noise_std=(0.0, 0.1), p_noise=0.1,
            blur_sigma=(0.5, 1.0), blur_in_voxels=True, p_blur=0.2, blur_p_channel=0.5,
            brightness_mult=(0.75, 1.25), p_brightness_mult=0.15,
            contrast=(0.75, 1.25), p_contrast=0.15, contrast_preserve_range=True,
            lowres=(0.5, 1.0), p_lowres=0.25, lowres_p_channel=0.5, lowres_axes=plane,
            gamma_inverted=(0.7, 1.5), p_gamma_inverted=0.1, gamma=(0.7, 1.5), p_gamma=0.3, gamma_retain_stats=True,
            split_factors=True, spacing=spacing, padding_mode="zeros",
        )  # fmt: skip
        kw.update(overrides)
        return cls(**kw)

    # -- margins ---------------------------------------------------------------------------------------------

    def margin(self, patch_size) -> tuple[int, int, int]:
        """Voxels to read on each side of a ``patch_size`` (D, H, W) patch so that, at the configured maximum
        rotation, zoom-out, translation and elastic displacement, every output voxel of ``out_size=patch_size``
        samples inside the input (no padding). Operations with probability 0 do not count.

        Examples
        --------
        >>> BatchAugment(rotation=0, scale=(1, 1)).margin((8, 8, 8))
        (0, 0, 0)
        >>> BatchAugment(rotation=[(0, 0), (0, 0), (-90, 90)], scale=(1, 1)).margin((4, 8, 8))  # about W: D <-> H
        (3, 1, 0)
        """
        from medstack.patches.samplers import size3

        patch = size3(patch_size).astype(np.float64)  # one int, three (D, H, W), DHW / XYZ
        sp = np.asarray(self.spacing)
        half = (patch - 1) / 2 * sp  # mm from the centre to the outermost output voxel centre (D, H, W)
        zoom_out = np.ones(3)
        if self.p["scale"] > 0:
            zoom_out[list(self.scale_axes)] = 1.0 / self.scale[0]
        a = half * zoom_out
        ranges = self.rotation if self.p["rotation"] > 0 else [(0.0, 0.0)] * 3
        moving = [r for r in ranges if r[1] > r[0]]
        per_axis = max(2, round(2e5 ** (1 / max(1, len(moving)))))
        grids = [np.radians(np.linspace(lo, hi, 1 if hi <= lo else min(per_axis, math.ceil(hi - lo) * 4 + 1)))
                 for lo, hi in ranges]  # fmt: skip
        ang = np.stack(np.meshgrid(*grids, indexing="ij"), -1)
        rot = _np_rotations(ang)[..., ::-1, ::-1]  # (x, y, z) -> (D, H, W) rows and columns
        reach = np.abs(rot) @ a  # (..., 3): max over the patch corners of |(R Z^-1 o)_k|, mm
        slack = sum(np.abs(np.diff(reach, axis=i)).reshape(-1, 3).max(0) / 2 for i in range(3) if reach.shape[i] > 1)
        reach = reach.reshape(-1, 3).max(0) + slack  # the maximum between grid points (Lipschitz bound)
        if self.p["translation"] > 0:
            reach += max(abs(self.translation[0]), abs(self.translation[1]))
        if self.p["elastic"] > 0:
            reach += self.elastic
        m = np.ceil(reach / sp - (patch - 1) / 2 - 1e-6)
        return tuple(int(v) for v in np.maximum(m, 0))

    # -- parameters ------------------------------------------------------------------------------------------

    def _enabled(self, op: str) -> bool:
        value = {"rotation": any(hi > lo or lo != 0 for lo, hi in self.rotation), "scale": self.scale != (1.0, 1.0),
                 "translation": self.translation != (0.0, 0.0), "elastic": self.elastic > 0,
                 "noise": self.noise_std, "rician": self.rician_std, "blur": self.blur_sigma,
                 "sharpen": self.sharpen}.get(op, getattr(self, op, None))  # fmt: skip
        return bool(value) and self.p[op] > 0

    def sample_params(self, batch: int, generator, device=None, *, channels: int = 1, shape_dhw=None) -> dict:
        """All random parameters of one batch (dict of CPU tensors, one row per sample).

        ``apply_<op>`` (bool, ``(B,)``) says which samples get each enabled operation. Draws happen for every
        enabled operation whatever the probabilities, so the stream is fixed by the configuration and seed.
        ``shape_dhw`` is the output patch shape (for ``elastic_grid_mm``); ``device`` is accepted for
        compatibility (parameters are moved where they are used).
        """
        import torch

        gen, b, c = generator, int(batch), int(channels)
        p: dict = {}

        def applies(op):
            u = torch.rand(b, generator=gen)
            p[f"apply_{op}"] = u < self.p[op] if self._enabled(op) else torch.zeros(b, dtype=torch.bool)
            return p[f"apply_{op}"]

        flip = torch.rand((b, 3), generator=gen) < self.flip_p
        allowed = torch.zeros(3, dtype=torch.bool)
        allowed[list(self.flip_axes)] = True
        p["flip"] = flip & allowed
        on = applies("rotation")
        ang = torch.stack([_u(gen, b, lo, hi) for lo, hi in self.rotation], -1)
        p["angles"] = torch.where(on[:, None], ang, 0.0) * (math.pi / 180.0)  # (B, 3) about D, H, W
        on = applies("scale")
        z = _u(gen, (b, 3), *self.scale)
        if self.scale_isotropic:
            z = z[:, :1].expand(b, 3)
        keep = torch.zeros(3, dtype=torch.bool)
        keep[list(self.scale_axes)] = True
        p["zooms"] = torch.where(on[:, None] & keep, z, 1.0)
        on = applies("translation")
        p["shift_mm"] = torch.where(on[:, None], _u(gen, (b, 3), *self.translation), 0.0)
        if self._enabled("elastic"):
            on = applies("elastic")
            if self.elastic_grid_mm is not None and shape_dhw is not None:
                n = [max(2, round(s * sp / self.elastic_grid_mm) + 1) for s, sp in zip(shape_dhw, self.spacing)]
            else:
                n = [self.elastic_points] * 3
            field = (torch.rand((b, 3, *n), generator=gen, dtype=torch.float64) * 2 - 1) * self.elastic
            p["elastic"] = torch.where(on[:, None, None, None, None], field, 0.0)  # mm along D, H, W
        if self._enabled("bias_field"):
            applies("bias_field")
            p["bias_coeffs"] = _u(gen, (b, _n_bias_terms(self.bias_order)), *self.bias_field)
        if self._enabled("motion"):
            applies("motion")
            t = self.motion_transforms
            deg, mm = self.motion
            p["motion_angles"] = _u(gen, (b, t, 3), -deg, deg) * (math.pi / 180.0)
            p["motion_shift_mm"] = _u(gen, (b, t, 3), -mm, mm)
            p["motion_times"] = torch.sort(_u(gen, (b, t), 0.0, 1.0), dim=-1).values
            p["motion_axis"] = torch.randint(0, 3, (b,), generator=gen)
        if self._enabled("ghosting"):
            applies("ghosting")
            p["ghosting_intensity"] = _u(gen, b, *self.ghosting)
            lo, hi = self.ghosting_num
            p["ghosting_num"] = torch.floor(_u(gen, b, lo, hi + 1 - 1e-9)).long().clamp(int(lo), int(hi))
            axes = torch.tensor(self.ghosting_axes)
            p["ghosting_axis"] = axes[torch.randint(0, len(axes), (b,), generator=gen)]
        if self._enabled("spike"):
            applies("spike")
            p["spike_intensity"] = _u(gen, b, *self.spike)
            sign = torch.where(torch.rand((b, 3), generator=gen) < 0.5, -1.0, 1.0)
            p["spike_position"] = sign * _u(gen, (b, 3), 0.1, 0.5)  # fraction of the k-space extent per axis
        for op, rng in (("noise", self.noise_std), ("rician", self.rician_std)):
            if self._enabled(op):
                applies(op)
                p[f"{op}_std"] = _u(gen, b, *rng)
                p[f"{op}_seed"] = _seed(gen)
        if self._enabled("blur"):
            on = applies("blur")
            chan = torch.rand((b, c), generator=gen) < self.blur_p_channel
            sig = _u(gen, (b, c, 3), *self.blur_sigma)
            if not self.blur_in_voxels:
                sig = sig / torch.tensor(self.spacing, dtype=sig.dtype)
            p["blur_sigma_vox"] = torch.where((on[:, None] & chan)[..., None], sig, 0.0)
        if self._enabled("sharpen"):
            applies("sharpen")
            p["sharpen_strength"] = _u(gen, (b, c), *self.sharpen)
            p["sharpen_sigma_vox"] = _u(gen, (b, c, 3), *self.sharpen_sigma) / torch.tensor(self.spacing,
                                                                                           dtype=torch.float64)  # fmt: skip
        if self._enabled("brightness_mult"):
            applies("brightness_mult")
            p["brightness_mult"] = _factor(gen, (b, c), self.brightness_mult, self.split_factors)
        if self._enabled("brightness"):
            applies("brightness")
            p["brightness"] = _u(gen, b, *self.brightness)
        if self._enabled("contrast"):
            applies("contrast")
            p["contrast"] = _factor(gen, (b, c), self.contrast, self.split_factors)
        if self._enabled("lowres"):
            on = applies("lowres")
            chan = torch.rand((b, c), generator=gen) < self.lowres_p_channel
            p["lowres"] = torch.where(on[:, None] & chan, _u(gen, (b, c), *self.lowres), 1.0)
        for op in ("gamma_inverted", "gamma"):
            if self._enabled(op):
                applies(op)
                if op == "gamma" and self.log_gamma is not None:  # log-uniform, exactly as the CPU RandomGamma
                    p[op] = torch.exp(_u(gen, (b, c), *self.log_gamma))
                else:
                    p[op] = _factor(gen, (b, c), getattr(self, op), self.split_factors)
        return p

    def theta(self, params, shape_dhw, device, dtype, *, in_shape_dhw=None):
        """(B, 3, 4) ``affine_grid`` matrices (normalised x, y, z = W, H, D) mapping the output grid
        ``shape_dhw`` into the input grid ``in_shape_dhw`` (default: the same), both centred, in mm space."""
        import torch

        in_shape = shape_dhw if in_shape_dhw is None else in_shape_dhw
        sp = self.spacing[::-1]
        ext_out = torch.tensor([n * s for n, s in zip(shape_dhw[::-1], sp)], device=device, dtype=dtype)
        ext_in = torch.tensor([n * s for n, s in zip(in_shape[::-1], sp)], device=device, dtype=dtype)
        rot = rotation_matrices(params["angles"].to(device=device, dtype=dtype))
        flips = torch.where(params["flip"].to(device).flip(-1), -1.0, 1.0).to(dtype)
        zoom = params["zooms"].to(device=device, dtype=dtype).flip(-1)
        shift = params["shift_mm"].to(device=device, dtype=dtype).flip(-1)
        return _physical_theta(rot, zoom, flips, shift, ext_out, ext_in)

    # -- the call --------------------------------------------------------------------------------------------

    def __call__(self, images, labels=None, *, generator, affines=None, out_size=None):
        """Augment a batch. Returns ``images`` or ``(images, labels)`` (plus ``affines`` when given).

        Parameters
        ----------
        images : (B, C, D, H, W) tensor (any float dtype; integers are converted to float32)
        labels : optional (B, L, D, H, W) tensor on the same grid; only the spatial operations (nearest)
        generator : torch.Generator, the only source of randomness
        affines : optional (B, 4, 4) voxel -> world affines of the inputs; the output grids' are returned
        out_size : optional output (D, H, W), at most the input size: the centred output of that size, its grid
            mapped into the larger input (read the input with :meth:`margin` voxels on each side)
        """
        import torch
        import torch.nn.functional as F

        if images.ndim != 5:
            raise GeometryError(f"BatchAugment expects (B, C, D, H, W), got shape {tuple(images.shape)}")
        if labels is not None and (labels.ndim != 5 or labels.shape[0] != images.shape[0]
                                   or labels.shape[2:] != images.shape[2:]):  # fmt: skip
            raise GeometryError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        b, c, d, h, w = images.shape
        in_shape = (d, h, w)
        out_shape = in_shape if out_size is None else tuple(int(n) for n in out_size)
        if len(out_shape) != 3 or any(o < 1 or o > n for o, n in zip(out_shape, in_shape)):
            raise GeometryError(f"BatchAugment: out_size {out_size!r} must be three sizes (D, H, W) within the input "
                                f"{in_shape}; read the input with margin(patch) voxels on each side")  # fmt: skip
        dev = images.device
        work = images.dtype if images.dtype.is_floating_point else torch.float32
        params = self.sample_params(b, generator, dev, channels=c, shape_dhw=out_shape)
        theta = self.theta(params, out_shape, dev, work, in_shape_dhw=in_shape)
        plain = self.plain_samples(params, in_shape, out_shape)
        warp = (~plain).nonzero().squeeze(1).to(dev)
        grid = _affine_grid(theta[warp], out_shape) if len(warp) else None  # only the samples that are resampled
        if grid is not None and "elastic" in params and bool(params["apply_elastic"].any()):
            disp = F.interpolate(params["elastic"].to(dev, work)[warp], size=out_shape, mode="trilinear",
                                 align_corners=True)  # fmt: skip
            to_norm = torch.tensor([2.0 / (n * s) for n, s in zip(in_shape, self.spacing)], device=dev, dtype=work)
            grid = grid + (disp * to_norm[None, :, None, None, None]).flip(1).permute(0, 2, 3, 4, 1)
        out = self._spatial(images, grid, warp, plain, params, out_shape, work, "bilinear", self.padding_mode)
        out = self._intensity(out, params)
        results = [out]
        if labels is not None:
            lab = self._spatial(labels, grid, warp, plain, params, out_shape, work, "nearest", "zeros")
            results.append(lab)
        if affines is not None:
            results.append(self._affines(theta, out_shape, torch.as_tensor(affines, dtype=torch.float64),
                                         in_shape_dhw=in_shape))  # fmt: skip
        return results[0] if len(results) == 1 else tuple(results)

    @staticmethod
    def plain_samples(params, in_shape, out_shape):
        """(B,) bool: samples whose spatial draw is only flips (no rotation, zoom, shift or elastic field) on a
        centred output an even number of voxels smaller than the input. Their output is a flipped crop of the
        input: exact, and no resampling work (with nnU-Net's probabilities, about two thirds of the samples)."""
        import torch

        plain = ((params["angles"] == 0).all(-1) & (params["zooms"] == 1).all(-1)
                 & (params["shift_mm"] == 0).all(-1)).cpu()  # fmt: skip
        if "apply_elastic" in params:
            plain &= ~params["apply_elastic"].cpu()
        if any((n - o) % 2 for n, o in zip(in_shape, out_shape)):
            plain = torch.zeros_like(plain)
        return plain

    @staticmethod
    def _spatial(x, grid, warp, plain, params, out_shape, work, mode, padding_mode):
        """The spatial part for one tensor: ``grid_sample`` for the warped samples, flipped crops for the plain
        ones; labels keep their dtype (nearest)."""
        import torch
        import torch.nn.functional as F

        keep = not x.dtype.is_floating_point and mode == "nearest"
        out = torch.empty((x.shape[0], x.shape[1], *out_shape), dtype=x.dtype if keep else work, device=x.device)
        if len(warp):  # grid: one row per warped sample
            res = F.grid_sample(x[warp].to(work), grid, mode=mode, padding_mode=padding_mode, align_corners=False)
            out[warp] = res.round().to(x.dtype) if keep else res
        lo = [(n - o) // 2 for n, o in zip(x.shape[2:], out_shape)]
        box = (slice(None), *(slice(a, a + o) for a, o in zip(lo, out_shape)))
        flips = params["flip"].cpu()
        for i in plain.nonzero().squeeze(1).tolist():
            dims = [1 + a for a in range(3) if bool(flips[i, a])]
            crop = x[i][box]
            out[i] = (crop.flip(dims) if dims else crop).to(out.dtype)
        return out

    # -- intensity -------------------------------------------------------------------------------------------

    def _intensity(self, x, params):
        """Each enabled operation on the samples drawn for it (others untouched); ``x`` is owned here."""
        for op in INTENSITY_OPS:
            mask = params.get(f"apply_{op}")
            if mask is None or not bool(mask.any()):
                continue
            idx = mask.nonzero().squeeze(1)
            sub = getattr(self, f"_op_{op}")(x[idx.to(x.device)], params, idx)
            x[idx.to(x.device)] = sub
        return x

    @staticmethod
    def _rows(params, key, idx, x, shape=()):
        return params[key][idx].to(device=x.device, dtype=x.dtype).reshape(len(idx), *shape)

    def _op_bias_field(self, x, params, idx):
        import torch

        basis = _bias_basis(x.shape[2:], self.bias_order, x.device, x.dtype)
        coeffs = self._rows(params, "bias_coeffs", idx, x, (-1,))
        field = torch.exp(torch.einsum("nt,tdhw->ndhw", coeffs, basis))
        return x * field[:, None]

    def _op_motion(self, x, params, idx):
        import torch
        import torch.nn.functional as F

        n, c = x.shape[:2]
        t = self.motion_transforms
        shape = tuple(x.shape[2:])
        ext = torch.tensor([s * sp for s, sp in zip(shape[::-1], self.spacing[::-1])], device=x.device, dtype=x.dtype)
        rot = rotation_matrices(self._rows(params, "motion_angles", idx, x, (t, 3)).reshape(n * t, 3))
        shift = self._rows(params, "motion_shift_mm", idx, x, (t, 3)).reshape(n * t, 3).flip(-1)
        ones = torch.ones(n * t, 3, device=x.device, dtype=x.dtype)
        theta = _physical_theta(rot, ones, ones, shift, ext, ext)
        moved = F.grid_sample(x.repeat_interleave(t, 0), _affine_grid(theta, shape), mode="bilinear",
                              padding_mode="border", align_corners=False)  # fmt: skip
        copies = torch.cat([x[:, None], moved.reshape(n, t, c, *shape)], 1)  # (n, t + 1, c, D, H, W)
        spectra = torch.fft.fftn(copies, dim=(-3, -2, -1))
        times = params["motion_times"][idx].to(x.device)
        axis = params["motion_axis"][idx].to(x.device)
        seg = torch.zeros((n, *shape), dtype=torch.long, device=x.device)
        for a, size in enumerate(shape):
            k = torch.arange(size, device=x.device)
            frac = ((k + size // 2) % size).to(times.dtype) / size  # acquisition time of each (centred) line
            s = (times[:, None, :] <= frac[None, :, None]).sum(-1)  # (n, size): segment of each line
            view = [n, 1, 1, 1]
            view[1 + a] = size
            seg = torch.where((axis == a).view(n, 1, 1, 1), s.view(view).expand(n, *shape), seg)
        mixed = torch.gather(spectra, 1, seg[:, None, None].expand(n, 1, c, *shape)).squeeze(1)
        return torch.fft.ifftn(mixed, dim=(-3, -2, -1)).abs().to(x.dtype)

    def _op_ghosting(self, x, params, idx):
        import torch

        n = x.shape[0]
        spec = torch.fft.fftn(x, dim=(-3, -2, -1))
        inten = self._rows(params, "ghosting_intensity", idx, x)
        num = params["ghosting_num"][idx].to(x.device)
        axis = params["ghosting_axis"][idx].to(x.device)
        factor = torch.ones((n, *x.shape[2:]), device=x.device, dtype=x.dtype)
        for a, size in enumerate(x.shape[2:]):
            k = _signed_freq(size, x.device)
            hit = (torch.remainder(k[None], num[:, None]) == 0) & (k[None] != 0)  # (n, size)
            f = torch.where(hit, 1.0 - inten[:, None], torch.ones_like(inten)[:, None])
            view = [n, 1, 1, 1]
            view[1 + a] = size
            factor = torch.where((axis == a).view(n, 1, 1, 1), f.view(view).expand_as(factor), factor)
        return torch.fft.ifftn(spec * factor[:, None], dim=(-3, -2, -1)).real.to(x.dtype)

    def _op_spike(self, x, params, idx):
        import torch

        n, c = x.shape[:2]
        spec = torch.fft.fftn(x, dim=(-3, -2, -1))
        peak = spec.abs().amax(dim=(-3, -2, -1))  # (n, c)
        pos = params["spike_position"][idx]
        k = [torch.remainder(torch.round(pos[:, a] * s), s).long().to(x.device) for a, s in enumerate(x.shape[2:])]
        rows = torch.arange(n, device=x.device)[:, None].expand(n, c)
        chans = torch.arange(c, device=x.device)[None].expand(n, c)
        inten = self._rows(params, "spike_intensity", idx, x, (1,))
        spec[rows, chans, k[0][:, None], k[1][:, None], k[2][:, None]] += inten * peak
        return torch.fft.ifftn(spec, dim=(-3, -2, -1)).real.to(x.dtype)

    def _noise(self, x, params, idx, op):
        import torch

        g = torch.Generator(device=x.device).manual_seed(params[f"{op}_seed"])
        std = self._rows(params, f"{op}_std", idx, x, (1, 1, 1, 1))
        return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * std

    def _op_noise(self, x, params, idx):
        return x + self._noise(x, params, idx, "noise")

    def _op_rician(self, x, params, idx):
        import torch

        both = self._noise(torch.cat([x, x]), params, torch.cat([idx, idx]), "rician")
        n1, n2 = both[: len(idx)], both[len(idx) :]
        return torch.sqrt((x + n1) ** 2 + n2**2)

    def _op_blur(self, x, params, idx):
        return _blur(x, params["blur_sigma_vox"][idx])

    def _op_sharpen(self, x, params, idx):
        s = self._rows(params, "sharpen_strength", idx, x, (x.shape[1], 1, 1, 1))
        return x + s * (x - _blur(x, params["sharpen_sigma_vox"][idx]))

    def _op_brightness_mult(self, x, params, idx):
        return x * self._rows(params, "brightness_mult", idx, x, (x.shape[1], 1, 1, 1))

    def _op_brightness(self, x, params, idx):
        return x + self._rows(params, "brightness", idx, x, (1, 1, 1, 1))

    def _op_contrast(self, x, params, idx):
        f = self._rows(params, "contrast", idx, x, (x.shape[1], 1, 1, 1))
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        y = (x - mean) * f + mean
        if self.contrast_preserve_range:
            y = y.clamp(x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True))
        return y

    def _op_lowres(self, x, params, idx):
        return _lowres(x, params["lowres"][idx], self.lowres_axes)

    def _gamma(self, x, g, invert: bool):
        import torch

        dims = (2, 3, 4)
        if self.gamma_retain_stats:
            mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
        lo = x.amin(dim=dims, keepdim=True)
        rng = x.amax(dim=dims, keepdim=True) - lo
        norm = ((x - lo) / rng.clamp_min(1e-7)).clamp(0, 1)
        y = 1 - (1 - norm) ** g if invert else norm**g
        y = y * rng + lo
        if self.gamma_retain_stats:
            y = (y - y.mean(dim=dims, keepdim=True)) * (std / torch.clamp(y.std(dim=dims, keepdim=True), min=1e-7))
            y = y + mean
        return y

    def _op_gamma_inverted(self, x, params, idx):
        return self._gamma(x, self._rows(params, "gamma_inverted", idx, x, (x.shape[1], 1, 1, 1)), True)

    def _op_gamma(self, x, params, idx):
        return self._gamma(x, self._rows(params, "gamma", idx, x, (x.shape[1], 1, 1, 1)), False)

    # -- geometry out ----------------------------------------------------------------------------------------

    @staticmethod
    def _affines(theta, shape_dhw, affines, *, in_shape_dhw=None):
        """New affines: output voxel -> normalised output (align_corners=False) -> theta -> normalised input ->
        input voxel -> world."""
        import torch

        def vox_to_norm(shape):
            d, h, w = shape
            n = torch.tensor([w, h, d], dtype=torch.float64)
            m = torch.eye(4, dtype=torch.float64)
            m[:3, :3] = torch.diag(2.0 / n)
            m[:3, 3] = 1.0 / n - 1.0
            return m

        in_shape = shape_dhw if in_shape_dhw is None else in_shape_dhw
        t = torch.eye(4, dtype=torch.float64).repeat(theta.shape[0], 1, 1)
        t[:, :3, :] = theta.detach().cpu().to(torch.float64)
        return affines @ torch.linalg.inv(vox_to_norm(in_shape)) @ t @ vox_to_norm(shape_dhw)


def _np_rotations(angles_dhw_rad: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`rotation_matrices` (for :meth:`BatchAugment.margin`)."""
    import torch

    return rotation_matrices(torch.from_numpy(np.asarray(angles_dhw_rad, np.float64))).numpy()
