"""Stitch patch predictions back into a whole volume (sliding-window inference).

The aggregator keeps one array on the chosen device, the weighted sum ``(C, D, H, W)`` (float32), so memory is
bounded by the output size, not by the number of patches. The patch weights are separable
(``w(d, h, w) = wd(d) * wh(h) * ww(w)``), so when the patches form a grid (each start of a Cartesian product
of per-axis starts, added once, as :func:`sliding_window_inference` does) the weight sum is a product of three
1D sums: no weight map is accumulated or stored, and the final division is two broadcast passes in place.
Other sets of starts get their weight map accumulated at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medstack.errors import ArgumentError, GeometryError
from medstack.io._direct import inside_box
from medstack.patches.samplers import grid_positions, size3
from medstack.volume import Volume

__all__ = ["Aggregator", "gaussian_weights", "sliding_window_inference"]


def _outer3(a, b, c) -> np.ndarray:
    """``a[d] * b[h] * c[w]`` as a ``(D, H, W)`` array."""
    return a[:, None, None] * b[None, :, None] * c[None, None, :]


def _gaussian_1d(n: int, sigma_scale: float, floor: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n * sigma_scale)) ** 2)
    return np.maximum(g / g.max(), floor)


def gaussian_weights(patch_size, sigma_scale: float = 0.125, *, separable: bool = False):
    """nnU-Net-style importance map: a Gaussian with sigma = ``sigma_scale`` x patch size, max 1.

    The map is the outer product of three 1D Gaussians, each floored at 0.1 (so the map is >= 1e-3 and
    > 0 everywhere, as nnU-Net's clamp). ``separable=True`` returns the three 1D factors (float32) instead.
    """
    p = size3(patch_size)
    axes = [_gaussian_1d(int(n), sigma_scale, 0.1).astype(np.float32) for n in p]
    if separable:
        return axes
    return _outer3(*axes).astype(np.float32)


class Aggregator:
    """Accumulate patch predictions ``(B, C, pd, ph, pw)`` placed at start positions ``(B, 3)``.

    Parameters
    ----------
    shape : (D, H, W) of the full volume
    patch_size : (pd, ph, pw)
    n_channels : output channels C
    mode : "constant" (plain average where patches overlap) or "gaussian" (centre-weighted)
    device : torch device for the accumulator (CPU or CUDA)
    """

    def __init__(self, shape, patch_size, n_channels: int, *, mode: str = "gaussian", device="cpu"):
        import torch

        if mode not in ("constant", "gaussian"):
            raise ArgumentError(f"Aggregator mode must be 'constant' or 'gaussian', got {mode!r}")
        self.shape = tuple(int(s) for s in shape)
        self.patch_size = tuple(int(p) for p in size3(patch_size))
        self.device = torch.device(device)
        self.sum = torch.zeros((n_channels, *self.shape), dtype=torch.float32, device=self.device)
        if mode == "constant":
            factors = [np.ones(n, np.float32) for n in self.patch_size]
        else:
            factors = gaussian_weights(self.patch_size, separable=True)
        self._factors = factors
        w = _outer3(*factors)
        self.patch_weight = torch.from_numpy(w).to(self.device)
        self._starts: list[tuple[int, int, int]] = []

    def _clip(self, start):
        """(source slices in the patch, destination slices in the volume), or None when fully outside."""
        inside = inside_box(self.shape, start, self.patch_size)
        if inside is None:
            return None
        lo, hi, o = inside
        return tuple(slice(b, b + h - low) for low, h, b in zip(lo, hi, o)), tuple(slice(low, h) for low, h in zip(lo, hi))

    def add(self, predictions, starts) -> None:
        import torch

        preds = torch.as_tensor(predictions).to(self.device, torch.float32)
        starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
        if preds.ndim != 5 or preds.shape[0] != len(starts) or tuple(preds.shape[2:]) != self.patch_size:
            raise GeometryError(f"predictions must be (B, C, {self.patch_size}) for {len(starts)} starts, got "
                                f"{tuple(preds.shape)}")  # fmt: skip
        for pred, start in zip(preds, starts):
            clipped = self._clip(start)
            if clipped is None:
                continue
            src, dst = clipped
            self.sum[(slice(None), *dst)].addcmul_(pred[(slice(None), *src)], self.patch_weight[src])  # in place
            self._starts.append(tuple(int(v) for v in start))

    def _axis_sums(self):
        """Per-axis 1D weight sums when the starts are a Cartesian grid added once each, else None."""
        if not self._starts:
            return None
        per_axis = [sorted({s[a] for s in self._starts}) for a in range(3)]
        if len(self._starts) != len(per_axis[0]) * len(per_axis[1]) * len(per_axis[2]) or len(set(self._starts)) != len(self._starts):
            return None
        sums = []
        for a in range(3):
            acc = np.zeros(self.shape[a], np.float64)
            for s in per_axis[a]:
                lo, hi = max(s, 0), min(s + self.patch_size[a], self.shape[a])
                if hi > lo:
                    acc[lo:hi] += self._factors[a][lo - s : hi - s]
            sums.append(acc)
        return sums

    def weight_map(self):
        """The weight sum ``(D, H, W)`` (float32 tensor on the device)."""
        import torch

        sums = self._axis_sums()
        if sums is not None:
            return torch.from_numpy(_outer3(*sums).astype(np.float32)).to(self.device)
        weight = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        for start in self._starts:
            clipped = self._clip(start)
            if clipped is not None:
                weight[clipped[1]] += self.patch_weight[clipped[0]]
        return weight

    def result(self, affine=None, metadata=None):
        """The weighted average (torch tensor ``(C, D, H, W)``), or a Volume when ``affine`` is given.

        Divides the accumulator in place (no second output-sized array); the aggregator is spent afterwards.
        """
        import torch

        sums = self._axis_sums()
        if sums is not None:
            if min(float(s.min()) for s in sums) <= 0:
                raise GeometryError("Aggregator: some voxels were not covered by any patch")
            dh = torch.from_numpy((1.0 / (sums[0][:, None] * sums[1][None, :])).astype(np.float32)).to(self.device)
            dw = torch.from_numpy((1.0 / sums[2]).astype(np.float32)).to(self.device)
            out = self.sum.mul_(dh[:, :, None]).mul_(dw)
        else:
            weight = self.weight_map()
            if bool((weight == 0).any()):
                raise GeometryError("Aggregator: some voxels were not covered by any patch")
            out = self.sum.div_(weight)
        self._starts = []
        if affine is None:
            return out
        return Volume(out.cpu().numpy() if self.device.type == "cpu" else out, affine, dict(metadata or {}))


def sliding_window_inference(volume: Volume, predictor: Callable, patch_size, *, overlap: float = 0.25,
                             batch_size: int = 4, mode: str = "gaussian", device=None, pad_value: float = 0.0,
                             n_out_channels: int | None = None, dtype="float32") -> Volume:  # fmt: skip
    """Run ``predictor`` (tensor ``(B, C, pd, ph, pw)`` -> ``(B, K, pd, ph, pw)``) over a grid of patches and
    stitch the result; returns a Volume on ``volume``'s grid (same affine).

    Parameters
    ----------
    volume : Volume
        The image, NumPy, torch or lazy HDF5 (each window then reads only its bytes).
    predictor : callable
        A model or function of a window batch; called under ``torch.no_grad()``.
    patch_size : int or (D, H, W)
        Window size in voxels, in (slices, rows, columns) order.
    overlap : float
        Fraction of the window shared by neighbours, in [0, 1).
    mode : "gaussian" or "constant"
        Weights of the overlapping windows when stitched.
    device : torch device of the predictor, optional
        The windows are moved there and the weighted sum is kept there. Default: the volume's device when its data
        is a CUDA tensor (the windows are then sliced on the GPU: no copy through host memory), else "cpu". A
        volume in host memory or lazy HDF5 is streamed window batch by window batch; only the output lives on
        ``device``.
    dtype : torch dtype or its name, or None
        Windows of an integer volume (int16 CT, uint8) are cast to it on ``device`` (default float32, what a model's
        weights expect; the transfer is done in the stored dtype). Floating windows are left as they are; None
        passes every window in the volume's dtype.

    Examples
    --------
    >>> import numpy as np, torch, medstack
    >>> ct = medstack.Volume(np.zeros((1, 20, 24, 24), np.int16), np.eye(4))
    >>> model = torch.nn.Conv3d(1, 2, 3, padding=1)          # float32 weights, int16 input: cast per window
    >>> sliding_window_inference(ct, model, 16, overlap=0.5).shape
    (2, 20, 24, 24)
    """
    import torch

    from medstack.patches.reading import numpy_dtype, read_patch_into
    from medstack.resample import torch_dtype

    starts = grid_positions(volume.spatial_shape, patch_size, overlap)
    data = volume.data  # numpy, torch or lazy HDF5 (each window then reads only its bytes)
    p = tuple(int(v) for v in size3(patch_size))
    on_gpu = torch.is_tensor(data) and data.device.type != "cpu"
    device = torch.device(device if device is not None else (data.device if on_gpu else "cpu"))
    data, np_dtype = numpy_dtype(data)
    cast = None if dtype is None else torch_dtype(dtype)
    agg = None
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            if on_gpu:  # windows sliced on the volume's device
                x = torch.empty((len(chunk), data.shape[0], *p), dtype=data.dtype, device=data.device)
            else:
                x = torch.from_numpy(np.empty((len(chunk), data.shape[0], *p), dtype=np_dtype))
            for j, s in enumerate(chunk):  # each window straight into the batch (no per-window array + stack)
                read_patch_into(data, x[j], s, pad_value)
            x = x.to(device, non_blocking=True)
            if cast is not None and not x.dtype.is_floating_point:
                x = x.to(cast)
            y = predictor(x)
            if agg is None:
                k = n_out_channels or int(y.shape[1])
                agg = Aggregator(volume.spatial_shape, patch_size, k, mode=mode, device=device)
            agg.add(y, chunk)
    return agg.result(affine=volume.affine, metadata={"source": volume.metadata.get("source")})
