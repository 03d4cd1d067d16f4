"""Batched augmentation of ``(B, C, D, H, W)`` tensors on their device (GPU after the DataLoader, or CPU).

Each sample of the batch gets its own random parameters (from one ``torch.Generator``); the spatial part
(flips, rotation, scale, translation, optional elastic displacement) is ONE fused ``grid_sample`` per batch
(images: linear; labels: nearest, same grid). Intensity (gamma, contrast, brightness, noise) follows,
vectorised over the batch.

Geometry: rotations are physical when ``spacing`` (D, H, W mm) is given (anisotropic voxels are accounted
for). If ``affines`` (B, 4, 4) are passed, the updated affines of the augmented grids are returned too, so
the world positions of the augmented voxels stay known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medstack.errors import ArgumentError, GeometryError

__all__ = ["BatchAugment"]


def _u(gen, n, lo, hi, device):
    import torch

    return torch.rand(n, generator=gen).to(device) * (hi - lo) + lo


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


class BatchAugment:
    """Random flips, affine (+ elastic), gamma/contrast/brightness and noise for a batch, per sample.

    Parameters
    ----------
    flip_axes : spatial axes (0 = D, 1 = H, 2 = W) flipped independently with probability ``flip_p``
    rotation : max |angle| in degrees about each axis (or ``(lo, hi)``)
    scale : ``(lo, hi)`` zoom factors (per axis, independent)
    translation : max |shift| as a fraction of the patch size
    elastic : max displacement in voxels of a smooth random field (0 disables)
    gamma, contrast, brightness, noise_std : ranges, or None to disable; applied per sample
    spacing : voxel size (D, H, W) mm, for physical rotations of anisotropic patches
    padding_mode : grid_sample padding ("zeros", "border", "reflection")
    """

    def __init__(self, *, flip_axes: Sequence[int] = (0, 1, 2), flip_p: float = 0.5, rotation=10.0, scale=(0.9, 1.1),
                 translation: float = 0.0, elastic: float = 0.0, elastic_points: int = 5, gamma=None, contrast=None,
                 brightness=None, noise_std=None, spacing=(1.0, 1.0, 1.0), padding_mode: str = "zeros"):  # fmt: skip
        self.flip_axes, self.flip_p = tuple(flip_axes), float(flip_p)
        self.rotation = (-float(rotation), float(rotation)) if isinstance(rotation, int | float) else tuple(rotation)
        self.scale, self.translation = tuple(scale), float(translation)
        self.elastic, self.elastic_points = float(elastic), int(elastic_points)
        self.gamma, self.contrast, self.brightness, self.noise_std = gamma, contrast, brightness, noise_std
        self.spacing = tuple(float(s) for s in spacing)
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ArgumentError(f"padding_mode must be zeros, border or reflection, got {padding_mode!r}")
        self.padding_mode = padding_mode

    def sample_params(self, batch: int, generator, device):
        """All random parameters of one batch (dict of tensors, one row per sample)."""
        import torch

        p = {
            "flip": torch.rand((batch, 3), generator=generator).to(device) < self.flip_p,
            "angles": _u(generator, (batch, 3), *self.rotation, device) * (math.pi / 180.0),
            "scales": _u(generator, (batch, 3), *self.scale, device),
            "shift": _u(generator, (batch, 3), -self.translation, self.translation, device) * 2.0,
        }
        for name in ("gamma", "contrast", "brightness", "noise_std"):
            rng = getattr(self, name)
            if rng is not None:
                p[name] = _u(generator, (batch,), float(rng[0]), float(rng[1]), device)
        if self.elastic > 0:
            n = self.elastic_points
            p["elastic"] = (torch.rand((batch, 3, n, n, n), generator=generator) * 2 - 1).to(device)
        if self.noise_std is not None:
            p["noise_seed"] = int(torch.randint(0, 2**62, (), generator=generator).item())
        return p

    def theta(self, params, shape_dhw, device, dtype):
        """(B, 3, 4) affine_grid matrices (normalised x, y, z = W, H, D), physical when spacing is given."""
        import torch

        b = params["angles"].shape[0]
        ext = torch.tensor([n * s for n, s in zip(shape_dhw[::-1], self.spacing[::-1])], device=device, dtype=dtype)
        a = params["angles"].to(dtype)
        cx, cy, cz = torch.cos(a[:, 2]), torch.cos(a[:, 1]), torch.cos(a[:, 0])
        sx, sy, sz = torch.sin(a[:, 2]), torch.sin(a[:, 1]), torch.sin(a[:, 0])
        one, zero = torch.ones_like(cx), torch.zeros_like(cx)
        rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(b, 3, 3)
        ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(b, 3, 3)
        rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(b, 3, 3)
        rot = rz @ ry @ rx
        scale = torch.diag_embed(1.0 / params["scales"].to(dtype).flip(-1))  # zoom in = sample a smaller region
        flips = torch.where(params["flip"].flip(-1), -1.0, 1.0).to(dtype)
        allowed = torch.zeros(3, dtype=torch.bool, device=device)
        allowed[[2 - a for a in self.flip_axes]] = True
        flips = torch.where(allowed, flips, torch.ones_like(flips))
        s = torch.diag(ext / 2)
        s_inv = torch.diag(2 / ext)
        lin = s_inv @ rot @ scale @ s @ torch.diag_embed(flips)
        shift = params["shift"].to(dtype).flip(-1)
        return torch.cat([lin, shift[..., None]], dim=-1)

    def __call__(self, images, labels=None, *, generator, affines=None):
        """Augment a batch. Returns ``images`` or ``(images, labels)`` (plus ``affines`` when given)."""
        import torch
        import torch.nn.functional as F

        if images.ndim != 5:
            raise GeometryError(f"BatchAugment expects (B, C, D, H, W), got shape {tuple(images.shape)}")
        if labels is not None and (labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]):
            raise GeometryError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        b, _, d, h, w = images.shape
        dev = images.device
        work = images.dtype if images.dtype.is_floating_point else torch.float32
        params = self.sample_params(b, generator, dev)
        theta = self.theta(params, (d, h, w), dev, work)
        grid = _affine_grid(theta, (d, h, w))
        if self.elastic > 0:
            disp = F.interpolate(params["elastic"].to(work), size=(d, h, w), mode="trilinear", align_corners=True)
            voxel = torch.tensor([2.0 / w, 2.0 / h, 2.0 / d], device=dev, dtype=work)
            grid = grid + disp.permute(0, 2, 3, 4, 1) * self.elastic * voxel
        out = F.grid_sample(images.to(work), grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)
        out = self._intensity(out, params, generator)
        results = [out]
        if labels is not None:
            lab = F.grid_sample(labels.to(work), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            results.append(lab.round().to(labels.dtype) if not labels.dtype.is_floating_point else lab)
        if affines is not None:
            results.append(self._affines(theta, (d, h, w), torch.as_tensor(affines, dtype=torch.float64)))
        return results[0] if len(results) == 1 else tuple(results)

    def _intensity(self, x, params, generator):
        """In place on ``x`` (the grid_sample output, owned here): no full-size temporaries but the noise."""
        import torch

        view = (-1, 1, 1, 1, 1)
        if "gamma" in params:
            lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)
            rng = (x.amax(dim=(1, 2, 3, 4), keepdim=True) - lo).clamp_min(1e-8)
            x.sub_(lo).div_(rng).clamp_(min=0).pow_(params["gamma"].view(view).to(x.dtype)).mul_(rng).add_(lo)
        if "contrast" in params:
            mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
            x.sub_(mean).mul_(params["contrast"].view(view).to(x.dtype)).add_(mean)
        if "brightness" in params:
            x.add_(params["brightness"].view(view).to(x.dtype))
        if "noise_std" in params:
            g = torch.Generator(device=x.device).manual_seed(params["noise_seed"])
            noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            x.add_(noise.mul_(params["noise_std"].view(view).to(x.dtype)))
        return x

    @staticmethod
    def _affines(theta, shape_dhw, affines):
        """New affines: output voxel -> normalised (align_corners=False) -> theta -> input voxel -> world."""
        import torch

        d, h, w = shape_dhw
        n = torch.tensor([w, h, d], dtype=torch.float64)
        vox_to_norm = torch.eye(4, dtype=torch.float64)
        vox_to_norm[:3, :3] = torch.diag(2.0 / n)
        vox_to_norm[:3, 3] = 1.0 / n - 1.0
        norm_to_vox = torch.linalg.inv(vox_to_norm)
        t = torch.eye(4, dtype=torch.float64).repeat(theta.shape[0], 1, 1)
        t[:, :3, :] = theta.detach().cpu().to(torch.float64)
        return affines @ norm_to_vox @ t @ vox_to_norm
