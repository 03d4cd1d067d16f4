"""Patch samplers: they produce patch START positions ``(n, 3)`` in voxels ``(d, h, w)``, never pixels.

A patch is ``data[:, d:d+pd, h:h+ph, w:w+pw]``. Positions may lie partly outside the volume (negative or
past the end); readers pad those parts (constant ``pad_value``, as nnU-Net does), so a volume smaller than
the patch still yields full-size patches. Samplers take a ``numpy.random.Generator`` (never global state).

``CaseInfo`` carries what a sampler needs about one case: its spatial shape and, for label-aware sampling,
compact precomputed voxel lists per class (``medstack.data.prepare`` stores them), so label-balanced
sampling costs microseconds per patch instead of a pass over the label map.

Label-aware samplers place a patch around a chosen voxel in one of two ways (``border``): ``"shift"`` (MONAI,
the default of :class:`LabelSampler`) moves the patch back inside the volume, so near a border the chosen voxel
is no longer at the patch centre and the centre-class frequencies drift from the requested ratios;
``"pad"`` (nnU-Net) keeps the chosen voxel where ``offset`` puts it (``"center"``, or ``"random"``: a uniformly
random position inside the patch) and lets the patch pass the border, where the reader pads.

:class:`ForegroundOversampler` forces a fixed number of the items of every batch to contain foreground
(nnU-Net's ``oversample_foreground_percent``); which items is a function of the dataset index
(:meth:`PatchSampler.sample_item`), so the guarantee needs batches that hold one index of each slot
``index % batch_size``: use :class:`~medstack.data.BatchSlotSampler` as the loader's index sampler (or ``shuffle=False``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from medstack.errors import ArgumentError, GeometryError

__all__ = ["CaseInfo", "ForegroundOversampler", "GridSampler", "LabelSampler", "PatchSampler",
           "PatchSizeWarning", "UniformSampler", "WeightedSampler", "grid_positions"]  # fmt: skip

#: ``border`` values: move the patch inside the volume, or keep the chosen voxel's position and pad
BORDERS = ("shift", "pad")
#: ``offset`` values: the chosen voxel at the patch centre (``patch_size // 2``), or anywhere in the patch
OFFSETS = ("center", "random")


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
    """A patch size as three ints ``(D, H, W)``: one value is repeated, three are kept (shared by datasets). A
    MONAI ``spatial_size`` / TorchIO ``patch_size`` is ``(x, y, z)``: pass it as ``geometry.XYZ(...)`` (or a dict
    ``{"D": .., "H": .., "W": ..}``), see :func:`medstack.geometry.as_dhw`."""
    from medstack.geometry import as_dhw

    if isinstance(patch_size, np.ndarray) and patch_size.dtype.kind in "iu" and patch_size.shape == (3,):
        p = patch_size.astype(np.int64)  # the common case, already parsed
    else:
        try:
            p = np.asarray(as_dhw(patch_size, name="patch_size", integer=True), dtype=np.int64)
        except ArgumentError:
            raise ArgumentError(f"patch_size must be 1 or 3 positive ints in (D, H, W) order (slices, rows, columns; "
                                f"geometry.XYZ for MONAI / TorchIO order), got {patch_size!r}") from None  # fmt: skip
    if np.any(p < 1):
        raise ArgumentError(f"patch_size must be 1 or 3 positive ints in (D, H, W) order, got {patch_size!r}")
    return p


class PatchSampler:
    """Base class. ``sample(case, rng, n)`` returns ``(n, 3)`` int64 start positions."""

    def __init__(self, patch_size):
        self.patch_size = size3(patch_size)

    def sample(self, case: CaseInfo, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def sample_item(self, case: CaseInfo, rng: np.random.Generator, index: int) -> np.ndarray:
        """The start ``(3,)`` (d, h, w) of dataset item ``index`` (datasets call this, with ``rng`` the item's
        own stream). Default: one draw of :meth:`sample`; samplers whose choice depends on the item's slot in
        its batch (:class:`ForegroundOversampler`) override it."""
        return self.sample(case, rng, 1)[0]

    def _place(self, voxels: np.ndarray, shape, rng: np.random.Generator, border: str, offset: str) -> np.ndarray:
        """Starts ``(n, 3)`` of patches holding ``voxels`` ``(n, 3)`` (d, h, w): at the centre or at a random
        offset, then (``border="shift"``) moved inside the volume where it is large enough. The chosen voxel
        stays inside the patch in every mode."""
        voxels = np.asarray(voxels, dtype=np.int64)
        if offset == "center":
            starts = voxels - self.patch_size // 2
        else:
            starts = voxels - rng.integers(0, self.patch_size, size=voxels.shape)
        if border == "pad":
            return starts
        hi = np.asarray(shape, dtype=np.int64) - self.patch_size
        return np.where(hi >= 0, np.clip(starts, 0, np.maximum(hi, 0)), hi // 2)

    def _centered(self, centers: np.ndarray, shape) -> np.ndarray:
        """Starts of patches centred on ``centers``, shifted to stay inside when the volume is large enough."""
        starts = centers - self.patch_size // 2
        hi = np.asarray(shape) - self.patch_size
        return np.where(hi >= 0, np.clip(starts, 0, np.maximum(hi, 0)), hi // 2)


def _uniform_starts(shape, patch_size: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    hi = np.asarray(shape) - patch_size
    starts = np.empty((n, 3), np.int64)
    for a in range(3):
        starts[:, a] = rng.integers(0, hi[a] + 1, size=n) if hi[a] >= 0 else hi[a] // 2
    return starts


def _check_mode(value: str, allowed: tuple, what: str, where: str) -> str:
    if value not in allowed:
        raise ArgumentError(f"{where}: {what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


class UniformSampler(PatchSampler):
    """Every patch fully inside the volume equally likely (volumes smaller than the patch: centred, padded)."""

    def sample(self, case, rng, n=1):
        return _uniform_starts(case.shape, self.patch_size, rng, n)


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

    ``border="shift"`` (default, MONAI): a patch that would pass the volume's border is moved inside, so the
    chosen voxel may leave the centre and the centre-class frequencies drift from ``ratios`` (on thin volumes a
    lot). ``border="pad"`` (nnU-Net): the patch stays where ``offset`` puts the chosen voxel — ``"center"``
    (default; then the centre voxel ``start + patch_size // 2`` has exactly the requested class frequencies) or
    ``"random"`` (a uniformly random position inside the patch) — and parts outside are padded by the reader.
    Starts may then be negative or past the end. The chosen voxel is inside the patch in every mode.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 20, 20), np.uint8); lab[0, 10, 10] = 1
    >>> case = CaseInfo(lab.shape, {1: np.argwhere(lab == 1)}, np.argwhere(lab == 0))
    >>> LabelSampler((4, 8, 8), pos=1, neg=0, border="pad").sample(case, np.random.default_rng(0), 1)
    array([[-2,  6,  6]])
    >>> LabelSampler((4, 8, 8), pos=1, neg=0).sample(case, np.random.default_rng(0), 1)  # shifted inside
    array([[0, 6, 6]])
    """

    def __init__(self, patch_size, *, pos: float = 1.0, neg: float = 1.0, ratios=None, border: str = "shift",
                 offset: str = "center"):  # fmt: skip
        super().__init__(patch_size)
        self.border = _check_mode(border, BORDERS, "border", "LabelSampler")
        self.offset = _check_mode(offset, OFFSETS, "offset", "LabelSampler")
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
        return self._place(centers, case.shape, rng, self.border, self.offset)


class ForegroundOversampler(PatchSampler):
    """nnU-Net's batch-level foreground oversampling: in each batch of ``batch_size`` items, a fixed number
    (:attr:`n_forced`) are forced to contain foreground, the others are uniform (inside the volume when it fits).

    A forced item picks a foreground class uniformly among the classes present in its case (label > 0 with a
    non-empty voxel list), then a voxel of that class uniformly, and places the patch around it (``border`` /
    ``offset`` as in :class:`LabelSampler`; default ``"pad"`` + ``"center"``, so the voxel is always inside
    and at the patch centre). A case without foreground gets a uniform patch (no error).

    ``n_forced = batch_size - round(batch_size * (1 - fraction))``, nnU-Net's count (``get_do_oversample``):
    ``fraction=0.33`` forces 1 of 2, 1 of 3, 1 of 4, 2 of 6. nnU-Net forces the LAST items of a batch; here
    the FIRST ``n_forced`` slots are forced, so a trailing partial batch of ``r`` items still gets
    ``min(r, n_forced)``. Item ``index`` is forced when ``index % batch_size < n_forced``: the position within
    the batch comes from the dataset index, hence is deterministic per (seed, epoch, index) and independent of
    workers and threads. It equals the batch position (so every full batch holds exactly ``n_forced`` forced
    items) when each batch holds one index of each slot ``index % batch_size``:

    - :class:`~medstack.data.BatchSlotSampler` as the index sampler (``PatchLoader(ds, batch_size, sampler=...)`` or
      ``DataLoader(ds, batch_size, sampler=...)``, same ``batch_size``; any number of workers / threads);
    - ``shuffle=False`` (batches are runs of consecutive indices starting at multiples of ``batch_size``);
    - :class:`~medstack.data.CaseGroupedSampler` with ``samples_per_volume`` a multiple of ``batch_size``.

    A plain shuffled order (``PatchLoader(shuffle=True)``, ``DataLoader(shuffle=True)``, ``DistributedSampler``)
    keeps the epoch's forced fraction but not the per-batch count. :meth:`sample` treats its ``n`` patches
    as consecutive items ``0 .. n-1``.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((8, 32, 32), np.uint8); lab[2, 3, 4] = 1
    >>> case = CaseInfo(lab.shape, {1: np.argwhere(lab == 1)}, np.argwhere(lab == 0))
    >>> s = ForegroundOversampler(8, batch_size=2, fraction=0.33)
    >>> s.n_forced, s.forced(0), s.forced(1)
    (1, True, False)
    >>> s.sample_item(case, np.random.default_rng(0), index=4)  # slot 0: centred on the foreground voxel
    array([-2, -1,  0])
    """

    def __init__(self, patch_size, *, batch_size: int, fraction: float = 0.33, border: str = "pad",
                 offset: str = "center"):  # fmt: skip
        super().__init__(patch_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ArgumentError(f"ForegroundOversampler: batch_size must be an int >= 1 (the loader's batch size), "
                                f"got {batch_size!r}")  # fmt: skip
        if not 0.0 <= float(fraction) <= 1.0:
            raise ArgumentError(f"ForegroundOversampler: fraction must be in [0, 1], got {fraction}")
        self.batch_size, self.fraction = int(batch_size), float(fraction)
        self.n_forced = self.batch_size - round(self.batch_size * (1.0 - self.fraction))
        if self.fraction > 0 and self.n_forced == 0:
            raise ArgumentError(f"ForegroundOversampler: fraction {fraction} of batch_size {batch_size} forces no "
                                "item (nnU-Net's count round(batch_size * (1 - fraction)) keeps all uniform); use "
                                "fraction >= 0.5 with batch_size 1, a larger batch_size, or LabelSampler for a "
                                "per-item foreground probability")  # fmt: skip
        self.border = _check_mode(border, BORDERS, "border", "ForegroundOversampler")
        self.offset = _check_mode(offset, OFFSETS, "offset", "ForegroundOversampler")

    def forced(self, index: int) -> bool:
        """Whether dataset item ``index`` is forced to contain foreground (its slot is among the first
        :attr:`n_forced` of ``batch_size``)."""
        return int(index) % self.batch_size < self.n_forced

    def _start(self, case: CaseInfo, rng: np.random.Generator, force: bool) -> np.ndarray:
        if force:
            classes = sorted(int(c) for c, v in case.class_voxels.items() if int(c) > 0 and len(v))
            if classes:
                pool = case.class_voxels[classes[rng.integers(0, len(classes))]]
                voxel = np.asarray(pool[rng.integers(0, len(pool))], dtype=np.int64)[None]
                return self._place(voxel, case.shape, rng, self.border, self.offset)[0]
        return _uniform_starts(case.shape, self.patch_size, rng, 1)[0]

    def sample_item(self, case, rng, index):
        return self._start(case, rng, self.forced(index))

    def sample(self, case, rng, n=1):
        return np.stack([self._start(case, rng, self.forced(i)) for i in range(n)]) if n else np.empty((0, 3), np.int64)


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
