"""Patch samplers: they produce patch START positions ``(n, 3)`` in voxels ``(d, h, w)``, never pixels.

A patch is ``data[:, d:d+pd, h:h+ph, w:w+pw]``. Positions may lie partly outside the volume (negative or
past the end); readers pad those parts (constant ``pad_value``, as nnU-Net does), so a volume smaller than
the patch still yields full-size patches. Samplers take a ``numpy.random.Generator`` (never global state).

``CaseInfo`` carries what a sampler needs about one case: its spatial shape and, for label-aware sampling,
compact precomputed voxel lists per class (``medstack.data.prepare`` stores them), so label-balanced
sampling costs microseconds per patch instead of a pass over the label map.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from medstack.errors import ArgumentError, GeometryError

__all__ = ["CaseInfo", "GridSampler", "LabelSampler", "PatchSampler", "PatchSizeWarning", "UniformSampler", "WeightedSampler", "grid_positions"]


@dataclasses.dataclass
class CaseInfo:
    """Sampling facts about one case (no voxel data)."""

    shape: tuple[int, int, int]  # (D, H, W)
    class_voxels: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict)  # label -> (n, 3) coords
    background_voxels: np.ndarray | None = None  # (n, 3) coords with label 0 (a random subset)
    weights: np.ndarray | None = None  # (D, H, W) probability map for WeightedSampler (any scale)


class PatchSizeWarning(UserWarning):
    """A patch is larger than the volume along some axis: part of every patch is padding."""


def padding_fraction(shape, patch_size) -> float:
    """Fraction of a patch's voxels that lie outside a volume of ``shape`` (D, H, W) at best (0 when it fits)."""
    p = size3(patch_size)
    inside = np.minimum(np.asarray(shape, dtype=np.int64), p)
    return float(1.0 - np.prod(inside / p))


def warn_patch_larger(shape, patch_size, what: str, *, stacklevel: int = 3) -> bool:
    """Warn (:class:`PatchSizeWarning`) when ``patch_size`` exceeds ``shape`` (D, H, W) along any axis, giving
    the padding fraction; returns whether it warned. Callers warn once per volume / case."""
    p = size3(patch_size)
    shape = tuple(int(s) for s in shape)
    axes = [a for a in range(3) if p[a] > shape[a]]
    if not axes:
        return False
    frac = padding_fraction(shape, p)
    names = ", ".join("DHW"[a] for a in axes)
    warnings.warn(f"{what}: patch size {tuple(int(v) for v in p)} is larger than the volume {shape} along {names}; "
                  f"{frac:.1%} of each patch is padding (pad_value / label 0). Use a smaller patch_size or resample "
                  "the volume", PatchSizeWarning, stacklevel=stacklevel)  # fmt: skip
    return True


def size3(patch_size) -> np.ndarray:
    """A patch size as three ints ``(D, H, W)``: one value is repeated, three are kept (shared by datasets)."""
    p = np.asarray(patch_size, dtype=np.int64).reshape(-1)
    if p.size == 1:
        p = np.repeat(p, 3)
    if p.shape != (3,) or np.any(p < 1):
        raise ArgumentError(f"patch_size must be 1 or 3 positive ints (D, H, W), got {patch_size!r}")
    return p


class PatchSampler:
    """Base class. ``sample(case, rng, n)`` returns ``(n, 3)`` int64 start positions."""

    def __init__(self, patch_size):
        self.patch_size = size3(patch_size)

    def sample(self, case: CaseInfo, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def _centered(self, centers: np.ndarray, shape) -> np.ndarray:
        """Starts of patches centred on ``centers``, shifted to stay inside when the volume is large enough."""
        starts = centers - self.patch_size // 2
        hi = np.asarray(shape) - self.patch_size
        return np.where(hi >= 0, np.clip(starts, 0, np.maximum(hi, 0)), hi // 2)


class UniformSampler(PatchSampler):
    """Every patch fully inside the volume equally likely (volumes smaller than the patch: centred, padded)."""

    def sample(self, case, rng, n=1):
        hi = np.asarray(case.shape) - self.patch_size
        starts = np.empty((n, 3), np.int64)
        for a in range(3):
            starts[:, a] = rng.integers(0, hi[a] + 1, size=n) if hi[a] >= 0 else hi[a] // 2
        return starts


class WeightedSampler(PatchSampler):
    """Patch centres drawn with probability proportional to ``case.weights`` (D, H, W)."""

    def __init__(self, patch_size):
        super().__init__(patch_size)
        # (weights object, its cdf) of the last case: holding the object keeps its id from being reused by a new
        # array (a stale cdf for another case), and one tuple assignment is atomic across threads
        self._cdf_cache: tuple = (None, None)

    def sample(self, case, rng, n=1):
        if case.weights is None:
            raise ArgumentError("WeightedSampler needs CaseInfo.weights (a probability map)")
        cached, cdf = self._cdf_cache
        if cached is not case.weights or cdf is None:
            w = np.asarray(case.weights, dtype=np.float64).ravel()
            if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
                raise ArgumentError("WeightedSampler: weights must be finite, non-negative, not all zero")
            cdf = np.cumsum(w)
            self._cdf_cache = (case.weights, cdf)  # one case at a time: bounded memory
        flat = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        centers = np.stack(np.unravel_index(np.minimum(flat, cdf.size - 1), case.shape), axis=1)
        return self._centered(centers, case.shape)


class LabelSampler(PatchSampler):
    """Label-balanced centres, MONAI semantics.

    ``pos`` / ``neg``: RandCropByPosNegLabel — a patch is centred on a foreground voxel (any label > 0) with
    probability ``pos / (pos + neg)``, else on a background voxel. ``ratios``: RandCropByLabelClasses — a
    mapping or sequence of per-class weights (index = label value, 0 = background). Classes absent from a case
    are skipped (their weight is redistributed); a case with an empty label falls back to background/uniform
    centres — never an error.
    """

    def __init__(self, patch_size, *, pos: float = 1.0, neg: float = 1.0, ratios=None):
        super().__init__(patch_size)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ArgumentError(f"LabelSampler: pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        self.pos, self.neg = float(pos), float(neg)
        if ratios is not None and not isinstance(ratios, Mapping):
            ratios = dict(enumerate(ratios))
        if ratios is not None and (any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0):
            raise ArgumentError(f"LabelSampler: ratios must be non-negative and not all zero, got {ratios}")
        self.ratios = ratios

    def _pools(self, case: CaseInfo):
        pools, weights = [], []
        fg = {int(c): v for c, v in case.class_voxels.items() if int(c) > 0 and len(v)}
        bg = case.background_voxels if case.background_voxels is not None and len(case.background_voxels) else None
        if self.ratios is None:
            if fg and self.pos > 0:
                pools.append(np.concatenate(list(fg.values())))
                weights.append(self.pos)
            if self.neg > 0 or not pools:
                pools.append(bg)
                weights.append(self.neg if self.neg > 0 else 1.0)
        else:
            for c, r in self.ratios.items():
                if r <= 0:
                    continue
                pool = bg if int(c) == 0 else fg.get(int(c))
                if pool is not None:
                    pools.append(pool)
                    weights.append(float(r))
            if not pools:
                pools, weights = [bg], [1.0]
        return pools, np.asarray(weights) / np.sum(weights)

    def sample(self, case, rng, n=1):
        pools, weights = self._pools(case)
        choice = rng.choice(len(pools), size=n, p=weights)
        centers = np.empty((n, 3), np.int64)
        for i, k in enumerate(choice):
            pool = pools[k]
            if pool is None:  # no voxel list at all: uniform centre
                centers[i] = [rng.integers(0, s) for s in case.shape]
            else:
                centers[i] = pool[rng.integers(0, len(pool))]
        return self._centered(centers, case.shape)


def grid_positions(shape, patch_size, overlap=0.25) -> np.ndarray:
    """Starts of a grid of patches covering every voxel; the last patch on each axis ends at the volume's end
    (volumes smaller than the patch: one centred, padded patch on that axis). ``overlap`` in [0, 1)."""
    p = size3(patch_size)
    ov = np.broadcast_to(np.asarray(overlap, dtype=np.float64), (3,))
    if np.any(ov < 0) or np.any(ov >= 1):
        raise ArgumentError(f"overlap must be in [0, 1), got {overlap}")
    axes = []
    for n, size, o in zip(shape, p, ov):
        if n <= size:
            axes.append(np.array([(n - size) // 2]))
            continue
        step = max(1, int(np.floor(size * (1 - o))))
        starts = list(range(0, n - size + 1, step))
        if starts[-1] != n - size:
            starts.append(n - size)
        axes.append(np.array(starts))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


class GridSampler(PatchSampler):
    """All grid positions (see :func:`grid_positions`), in order; ``sample`` ignores ``rng`` and ``n``."""

    def __init__(self, patch_size, overlap=0.25):
        super().__init__(patch_size)
        self.overlap = overlap

    def sample(self, case, rng=None, n=None):
        return grid_positions(case.shape, self.patch_size, self.overlap)


def class_voxel_lists(label: np.ndarray, *, max_per_class: int = 20000, seed: int = 0):
    """Compact sampling information from a label map ``(D, H, W)``: for each label value (0 = background) a
    random subset of at most ``max_per_class`` voxel coordinates, plus per-class counts and bounding boxes."""
    rng = np.random.default_rng(seed)
    out, counts, boxes = {}, {}, {}
    flat = label.ravel()
    values = np.unique(flat)
    for v in values:
        mask = label == v
        counts[int(v)] = int(mask.sum())
        nz = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        boxes[int(v)] = [[int(n[0]) for n in nz], [int(n[-1]) + 1 for n in nz]]
        idx = np.flatnonzero(flat == v)
        if idx.size > max_per_class:  # subsample indices first: coordinates only for the kept voxels
            idx = idx[np.sort(rng.choice(idx.size, size=max_per_class, replace=False))]
        out[int(v)] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
    return out, counts, boxes


def _check_positions(starts: Sequence) -> np.ndarray:
    s = np.asarray(starts, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] != 3:
        raise GeometryError(f"patch positions must be (n, 3), got {s.shape}")
    return s
