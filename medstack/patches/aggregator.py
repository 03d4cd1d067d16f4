"""Stitch patch predictions back into a whole volume (sliding-window inference).

The aggregator keeps two arrays on the chosen device: the weighted sum ``(C, D, H, W)`` and the weight sum
``(D, H, W)`` (float32): memory is bounded by the output size, not by the number of patches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medstack.errors import MedstackError
from medstack.patches.samplers import _size3, grid_positions
from medstack.volume import Volume

__all__ = ["Aggregator", "gaussian_weights", "sliding_window_inference"]


def gaussian_weights(patch_size, sigma_scale: float = 0.125):
    """nnU-Net-style importance map: a Gaussian with sigma = ``sigma_scale`` x patch size, max 1, min > 0."""
    p = _size3(patch_size)
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n * sigma_scale)) ** 2) for n in p]
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


class Aggregator:
    """Accumulate patch predictions ``(B, C, pd, ph, pw)`` placed at start positions ``(B, 3)``.

    Parameters
    ----------
    shape : (D, H, W) of the full volume
    patch_size : (pd, ph, pw)
    n_channels : output channels C
    mode : "constant" (plain average where patches overlap) or "gaussian" (centre-weighted)
    device : torch device for the accumulators (CPU or CUDA)
    """

    def __init__(self, shape, patch_size, n_channels: int, *, mode: str = "gaussian", device="cpu"):
        import torch

        if mode not in ("constant", "gaussian"):
            raise MedstackError(f"Aggregator mode must be 'constant' or 'gaussian', got {mode!r}")
        self.shape = tuple(int(s) for s in shape)
        self.patch_size = tuple(int(p) for p in _size3(patch_size))
        self.device = torch.device(device)
        self.sum = torch.zeros((n_channels, *self.shape), dtype=torch.float32, device=self.device)
        self.weight = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        w = np.ones(self.patch_size, np.float32) if mode == "constant" else gaussian_weights(self.patch_size)
        self.patch_weight = torch.from_numpy(w).to(self.device)

    def add(self, predictions, starts) -> None:
        import torch

        preds = torch.as_tensor(predictions).to(self.device, torch.float32)
        starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
        if preds.ndim != 5 or preds.shape[0] != len(starts) or tuple(preds.shape[2:]) != self.patch_size:
            raise MedstackError(f"predictions must be (B, C, {self.patch_size}) for {len(starts)} starts, got "
                                f"{tuple(preds.shape)}")  # fmt: skip
        for pred, start in zip(preds, starts):
            src, dst = [], []
            for a in range(3):
                lo, hi = int(start[a]), int(start[a]) + self.patch_size[a]
                clo, chi = max(lo, 0), min(hi, self.shape[a])
                if chi <= clo:
                    break
                dst.append(slice(clo, chi))
                src.append(slice(clo - lo, chi - lo))
            else:
                w = self.patch_weight[tuple(src)]
                self.sum[(slice(None), *dst)].addcmul_(pred[(slice(None), *src)], w)  # in place, no temporary
                self.weight[tuple(dst)] += w

    def result(self, affine=None, metadata=None):
        """The averaged prediction (torch tensor ``(C, D, H, W)``), or a Volume when ``affine`` is given."""
        if bool((self.weight == 0).any()):
            raise MedstackError("Aggregator: some voxels were not covered by any patch")
        out = self.sum / self.weight
        if affine is None:
            return out
        return Volume(out.cpu().numpy() if self.device.type == "cpu" else out, affine, dict(metadata or {}))


def sliding_window_inference(volume: Volume, predictor: Callable, patch_size, *, overlap: float = 0.25,
                             batch_size: int = 4, mode: str = "gaussian", device="cpu", pad_value: float = 0.0,
                             n_out_channels: int | None = None) -> Volume:  # fmt: skip
    """Run ``predictor`` (tensor ``(B, C, pd, ph, pw)`` -> ``(B, K, pd, ph, pw)``) over a grid of patches and
    stitch the result; returns a Volume on ``volume``'s grid (same affine)."""
    import torch

    from medstack.patches.reading import read_patch

    starts = grid_positions(volume.spatial_shape, patch_size, overlap)
    data = volume.data  # numpy, torch or lazy HDF5 (each window then reads only its chunks)
    agg = None
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            x = torch.from_numpy(np.stack([read_patch(data, s, patch_size, pad_value) for s in chunk]))
            y = predictor(x.to(device))
            if agg is None:
                k = n_out_channels or int(y.shape[1])
                agg = Aggregator(volume.spatial_shape, patch_size, k, mode=mode, device=device)
            agg.add(y, chunk)
    return agg.result(affine=volume.affine, metadata={"source": volume.metadata.get("source")})
