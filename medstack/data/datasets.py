"""Datasets for 3D training: patches read straight from the HDF5 store, a queue mode for whole-file formats,
and whole volumes.

Reproducibility: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` — its case, its patch
position and its augmentation — so results do not depend on ``num_workers``, and with a
``DistributedSampler`` each rank reads distinct indices, hence distinct patches. Files are opened lazily in
each worker process (never shared across fork). Items are plain dicts of tensors (``default_collate`` works):
``image`` (C, pd, ph, pw) in the stored dtype (int16 stays int16 until the GPU), ``label``, ``case_id``,
``start`` (voxel origin d, h, w), ``world_origin`` (RAS mm of the patch's first voxel), ``affine`` (patch).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, FormatError, GeometryError, ReadError
from medstack.patches.reading import read_patch
from medstack.patches.samplers import CaseInfo, PatchSampler, size3, warn_patch_larger
from medstack.volume import Volume

__all__ = ["CaseGroupedSampler", "CaseStore", "PatchDataset", "QueueDataset", "VolumeDataset"]

_CASE_LOCK = threading.Lock()  # CaseStore.case from several PatchLoader threads opens each case once


#: Purposes of the random streams: each purpose has its own constant, so no two purposes share a stream
#: (before, the case order of CaseGroupedSampler was item 0's stream and PatchLoader's shuffle item 24301's).
STREAM_ITEM = 0x6D73_0001  # an item's patch position (PatchDataset, QueueDataset)
STREAM_CASE_ORDER = 0x6D73_0002  # CaseGroupedSampler's case permutation
STREAM_SHUFFLE = 0x6D73_0003  # PatchLoader's index permutation
STREAM_SLOT_ORDER = 0x6D73_0004  # BatchSlotSampler's per-slot permutations


def stream(seed: int, epoch: int, purpose: int, index: int = 0) -> np.random.Generator:
    """The random stream of ``purpose`` (a ``STREAM_*`` constant) for ``(seed, epoch, index)``.

    Every field is encoded as exactly two 32-bit words before SeedSequence mixing (which would otherwise treat
    ``[a, b]`` and ``[a, b, 0]`` alike), so distinct ``(purpose, seed, epoch, index)`` give independent streams.
    ``seed`` is taken modulo 2**64; ``epoch`` may be -1."""
    words = []
    for what, v in (("purpose", purpose), ("seed", int(seed) & 0xFFFF_FFFF_FFFF_FFFF), ("epoch", int(epoch) + 1),
                    ("index", index)):  # fmt: skip
        v = int(v)
        if not 0 <= v < 1 << 64:
            raise FormatError(f"random stream {what} must be in [0, 2**64), got {v}")
        words += [v & 0xFFFF_FFFF, v >> 32]
    return np.random.default_rng(np.random.SeedSequence(np.array(words, dtype=np.uint32)))


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Item ``index``'s stream (its patch position)."""
    return stream(seed, epoch, STREAM_ITEM, index)


class _SharedEpoch:
    """``epoch`` kept in a shared-memory tensor, so ``set_epoch`` in the main process reaches DataLoader
    workers, persistent ones included (a plain attribute would stay at the value the workers were forked with)."""

    @property
    def epoch(self) -> int:
        return int(self._epoch_t[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        import torch

        if not hasattr(self, "_epoch_t"):
            self._epoch_t = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._epoch_t[0] = int(value)

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of each epoch (as with DistributedSampler) for fresh patches and augmentations."""
        self.epoch = int(epoch)


def _class_value(name: str, path) -> int:
    """The label value of a ``/sampling/class_<v>`` dataset name (FormatError otherwise)."""
    head, _, tail = name.partition("_")
    if head != "class" or not tail.isdigit():
        raise FormatError(f"{path}: /sampling/{name}: expected datasets named class_<label value>")
    return int(tail)


def _check_sampling(ds, n_voxels: int, path) -> None:
    """A sampling list is stored in its file, (n, 3) integers with n at most the volume's voxel count."""
    from medstack.io._direct import check_local_storage
    from medstack.io.store import check_read_size

    check_local_storage(ds, str(path))
    if len(ds.shape) != 2 or ds.shape[1] != 3 or ds.dtype.kind not in "iu":
        raise FormatError(f"{path}: {ds.name} has shape {ds.shape} / dtype {ds.dtype}; expected (n, 3) integers")
    if ds.shape[0] > n_voxels:
        raise FormatError(f"{path}: {ds.name} lists {ds.shape[0]} voxels, more than the volume's {n_voxels}")
    check_read_size(ds.shape, ds.dtype, f"{path}:{ds.name}")


class CaseStore:
    """The prepared cases of ``medstack.data.prepare`` (a folder with manifest.json, the manifest itself, or a
    list of case .h5 files). Opens files lazily, once per process."""

    def __init__(self, source):
        from medstack.data.prepare import load_manifest

        paths = []
        if isinstance(source, str | Path) and not Path(source).exists():
            raise ReadError(f"{source}: no such store (a folder made by medstack.data.prepare, its "
                            "manifest.json, or case .h5 files)")  # fmt: skip
        if isinstance(source, str | Path) and Path(source).is_dir():
            source = Path(source) / "manifest.json"
        if isinstance(source, str | Path) and str(source).endswith(".json"):
            manifest = Path(source)
            if not manifest.exists():
                raise ReadError(f"{manifest}: no manifest; run medstack.data.prepare first")
            entries = load_manifest(manifest)  # typed errors naming the file and field; plain file names only
            paths = [manifest.parent / e["file"] for e in entries]
            self.ids = [e["id"] for e in entries]
            self.shapes = [e.get("shape") for e in entries]  # (C, D, H, W) as prepare recorded it
        else:
            paths = [Path(p) for p in ([source] if isinstance(source, str | Path) else source)]
            self.ids = [p.stem for p in paths]
            self.shapes = [None] * len(paths)  # unknown until a case is opened
        if not paths:
            raise FormatError(f"{source}: CaseStore: no cases")
        for p in paths:
            if not p.exists():
                raise ReadError(f"{p}: case file missing (re-run prepare)")
        self.paths = [str(p) for p in paths]
        self._open: dict[int, tuple] = {}

    def __len__(self):
        return len(self.paths)

    def case(self, i: int):
        """(image H5Array-backed Volume, label Volume or None, CaseInfo), opened once per process."""
        import os

        key = (i, os.getpid())
        hit = self._open.get(key)
        if hit is not None:
            return hit
        with _CASE_LOCK:
            hit = self._open.get(key)
            return hit if hit is not None else self._open_case(i, key)

    def _open_case(self, i: int, key):
        import os

        import h5py

        from medstack.io.store import read_h5

        path = self.paths[i]
        image = read_h5(path, name="image", lazy=True)
        n_voxels = int(np.prod(image.spatial_shape, dtype=object))
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ReadError(f"{path}: cannot open the case file ({e})") from e
        with f:
            has_label = "label" in f["volumes"]
            voxels, bg = {}, None
            sampling = f.get("sampling")
            if sampling is not None:
                if not isinstance(sampling, h5py.Group) or sampling.file.filename != f.filename:
                    raise FormatError(f"{path}: /sampling is not a group of this file")
                for name in sampling:
                    v = _class_value(name, path)
                    ds = sampling.get(name)
                    if not isinstance(ds, h5py.Dataset) or ds.file.filename != f.filename:
                        raise FormatError(f"{path}: /sampling/{name} is not a dataset of this file")
                    _check_sampling(ds, n_voxels, path)
                    try:
                        coords = ds[()]
                    except (OSError, RuntimeError) as e:
                        raise ReadError(f"{path}: cannot read /sampling/{name} ({e})") from e
                    if v == 0:
                        bg = coords
                    else:
                        voxels[v] = coords
        label = read_h5(self.paths[i], name="label", lazy=True) if has_label else None
        info = CaseInfo(image.spatial_shape, voxels, bg)
        self._open = {k: v for k, v in self._open.items() if k[1] == os.getpid()}
        self._open[key] = (image, label, info)
        return self._open[key]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def _sample_start(sampler, info: CaseInfo, rng: np.random.Generator, index: int) -> np.ndarray:
    """Item ``index``'s patch start: ``sampler.sample_item`` (the item's slot may matter, as for
    ForegroundOversampler), or one draw of ``sample`` for a sampler without it."""
    if hasattr(sampler, "sample_item"):
        return np.asarray(sampler.sample_item(info, rng, index), dtype=np.int64)
    return sampler.sample(info, rng, 1)[0]


def _patch_item(case_id: str, image: Volume, label, start, patch_size, pad_value, transform, rng_torch):
    p = size3(patch_size)
    img = read_patch(image.data, start, p, pad_value)
    affine = geometry.box_affine(image.affine, start)
    sample = {"image": Volume(img, affine)}
    if label is not None:
        sample["label"] = Volume(read_patch(label.data, start, p, 0), affine)
    if transform is not None:
        sample = transform(sample, rng_torch)
    import torch

    out = {"case_id": case_id, "start": torch.as_tensor(np.asarray(start, np.int64))}
    for k, v in sample.items():
        if isinstance(v, Volume):
            out[k] = v.to_tensor()
            if k == "image":
                out["affine"] = torch.as_tensor(np.array(v.affine))
                out["world_origin"] = torch.as_tensor(np.asarray(v.affine)[:3, 3].copy())
        else:
            out[k] = v
    return out


class PatchDataset(_SharedEpoch):
    """Random patches read from the prepared HDF5 store (only each patch's chunks are read).

    Parameters
    ----------
    store : CaseStore, folder, manifest or list of case files
    sampler : PatchSampler (UniformSampler, LabelSampler, WeightedSampler)
    patch_size : (pd, ph, pw); the sampler's patch size is used when omitted
    samples_per_volume : patches drawn per case per epoch (len = cases x samples_per_volume)
    transform : a medstack transform / Compose applied to {"image", "label"} patch Volumes, or None
    seed : base seed; item i of epoch e depends on (seed, e, i) only
    pad_value : image value outside the volume (labels pad with 0)
    margin : int or (D, H, W) voxels, optional
        Read each patch with this many more voxels on every side (the box is ``patch + 2 * margin`` and starts
        ``margin`` before the sampled patch), so that a rotation / zoom on the GPU samples real voxels instead of
        padding: ``margin=augment.margin(patch)`` with ``DevicePrefetcher(..., augment=augment,
        out_size=dataset.out_size)`` (:meth:`~medstack.transforms.gpu.BatchAugment.margin`). Items then hold the
        larger box (``patch_size`` is the read size, ``out_size`` the sampler's patch).
    """

    def __init__(self, store, sampler: PatchSampler, patch_size=None, samples_per_volume: int = 8, *,
                 transform=None, seed: int = 0, pad_value: float = 0.0, margin=0):  # fmt: skip
        self.store = store if isinstance(store, CaseStore) else CaseStore(store)
        if not isinstance(sampler, PatchSampler):
            raise FormatError(f"sampler must be a medstack PatchSampler, got {type(sampler).__name__}")
        self.sampler = sampler
        out_size = sampler.patch_size if patch_size is None else size3(patch_size)
        if not np.array_equal(out_size, sampler.patch_size):
            raise GeometryError(f"patch_size {tuple(out_size)} differs from the sampler's {tuple(sampler.patch_size)}")
        m = np.zeros(3, np.int64) if np.all(np.asarray(margin) == 0) else size3(margin)
        self.margin = m
        self.out_size = tuple(int(v) for v in out_size)
        self.patch_size = out_size + 2 * m  # what is read per item
        if samples_per_volume < 1:
            raise FormatError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        self.samples_per_volume = int(samples_per_volume)
        self.transform, self.seed, self.pad_value = transform, int(seed), pad_value
        self.epoch = 0
        for case_id, shape in zip(self.store.ids, getattr(self.store, "shapes", [])):
            if isinstance(shape, list) and len(shape) >= 3:  # warned once per case, from the manifest
                warn_patch_larger(shape[-3:], out_size, f"case {case_id}")

    def __len__(self):
        return len(self.store) * self.samples_per_volume

    def locate(self, index: int) -> tuple[int, np.ndarray]:
        """(case index, start of the box read) of item ``index`` in the current epoch: the sampled patch start,
        minus ``margin``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = _rng(self.seed, self.epoch, index)
        case_i = index // self.samples_per_volume
        _, _, info = self.store.case(case_i)
        return case_i, _sample_start(self.sampler, info, rng, index) - self.margin

    def __getitem__(self, index: int):
        from medstack.transforms.base import generator_for

        case_i, start = self.locate(index)
        image, label, _ = self.store.case(case_i)
        gen = generator_for(self.seed, self.epoch, index) if self.transform is not None else None
        return _patch_item(self.store.ids[case_i], image, label, start, self.patch_size, self.pad_value,
                           self.transform, gen)  # fmt: skip


class CaseGroupedSampler:
    """Index order for :class:`QueueDataset`: cases shuffled per epoch (seeded), each case's patches
    consecutive, so a worker's small volume cache is hit ``samples_per_volume`` times per load. Handles ranks
    (``num_replicas``/``rank``: each rank gets distinct cases).

    With ``num_workers`` > 1, pass the loader's ``batch_size`` and ``num_workers``: a DataLoader hands batch
    ``j`` to worker ``j % num_workers``, so the order interleaves per-worker streams of cases and every batch
    of a case goes to the same worker (otherwise each worker would load every case). When the cases do not
    divide evenly among the workers, the last ones may be shared; ``samples_per_volume`` a multiple of
    ``batch_size`` keeps batches within one case.
    """

    def __init__(self, dataset, *, seed: int = 0, num_replicas: int = 1, rank: int = 0, batch_size: int = 1,
                 num_workers: int = 0):  # fmt: skip
        self.dataset, self.seed, self.num_replicas, self.rank = dataset, int(seed), int(num_replicas), int(rank)
        self.batch_size, self.num_workers = max(1, int(batch_size)), max(1, int(num_workers))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _cases(self):
        order = stream(self.seed, self.epoch, STREAM_CASE_ORDER).permutation(self.dataset.n_cases)
        return order[self.rank :: self.num_replicas]

    def __iter__(self):
        spv, bs, nw = self.dataset.samples_per_volume, self.batch_size, self.num_workers
        cases = [int(c) for c in self._cases()]
        if nw == 1:
            for c in cases:
                yield from range(c * spv, (c + 1) * spv)
            return
        streams = []  # worker k's batches: the indices of its cases (every nw-th case), cut into batches
        for k in range(nw):
            idx = [i for c in cases[k::nw] for i in range(c * spv, (c + 1) * spv)]
            streams.append([idx[j : j + bs] for j in range(0, len(idx), bs)])
        for j in range(max((len(st) for st in streams), default=0)):
            for st in streams:
                if j < len(st):
                    yield from st[j]

    def __len__(self):
        return len(self._cases()) * self.dataset.samples_per_volume


class BatchSlotSampler:
    """Index order for :class:`~medstack.patches.ForegroundOversampler`: a seeded shuffle per epoch in which every batch of
    ``batch_size`` consecutive indices holds one index of each slot ``index % batch_size`` (each slot's indices
    are permuted independently, then batch ``j`` takes the ``j``-th of each), so every full batch has exactly
    the oversampler's ``n_forced`` forced items, at batch positions ``0 .. n_forced - 1``. With
    ``len(dataset)`` not a multiple of ``batch_size``, the last batch holds slots ``0 .. r - 1``.

    Pass it as ``sampler=`` to :class:`~medstack.data.PatchLoader` or ``torch.utils.data.DataLoader`` with the
    same ``batch_size`` (and no ``shuffle``); call :meth:`set_epoch` each epoch (``PatchLoader.set_epoch`` does).
    The order depends on (seed, epoch) only. Not split across ranks (give each rank its own dataset seed).

    Examples
    --------
    >>> order = list(BatchSlotSampler(10, batch_size=4, seed=0))
    >>> sorted(order) == list(range(10))
    True
    >>> [sorted(i % 4 for i in order[j:j + 4]) for j in (0, 4, 8)]
    [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    """

    def __init__(self, dataset, *, batch_size: int | None = None, seed: int = 0):
        n = dataset if isinstance(dataset, int | np.integer) and not isinstance(dataset, bool) else None
        over = getattr(getattr(dataset, "sampler", None), "batch_size", None)
        if batch_size is None:
            batch_size = over
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ArgumentError(f"BatchSlotSampler: batch_size must be an int >= 1 (the loader's batch size), got "
                                f"{batch_size!r}")  # fmt: skip
        if over is not None and int(over) != int(batch_size):
            raise ArgumentError(f"BatchSlotSampler: batch_size {batch_size} differs from the dataset sampler's "
                                f"batch_size {over}; use the loader's batch size for both")  # fmt: skip
        self.dataset, self.n = dataset, n
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """A new order for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.n) if self.n is not None else len(self.dataset)

    def __iter__(self):
        n, bs = len(self), self.batch_size
        rng = stream(self.seed, self.epoch, STREAM_SLOT_ORDER)
        slots = [rng.permutation(np.arange(k, n, bs)) for k in range(bs)]
        for j in range(-(-n // bs)):
            for perm in slots:
                if j < len(perm):
                    yield int(perm[j])


def _as_volume(source):
    from medstack.data.prepare import _as_volume as load

    return load(source)


class QueueDataset(_SharedEpoch):
    """Queue mode for files that cannot be read partially (.nii.gz, DICOM) or in-memory Volumes (``cases`` as
    :func:`medstack.data.read_cases` takes them: paths, Volumes, or dicts of them): each worker loads a volume once
    (``medstack.load``), keeps up to ``cache_bytes`` of volumes (LRU, per worker) and draws several patches from
    it. Use with :class:`CaseGroupedSampler` so consecutive indices share a case. Items have the same form as
    :class:`PatchDataset`'s; item i of epoch e is a pure function of (seed, e, i)."""

    def __init__(self, cases: Sequence[dict], sampler: PatchSampler, samples_per_volume: int = 8, *,
                 transform=None, seed: int = 0, cache_bytes: int = 2 << 30, pad_value: float = 0.0,
                 label_max_per_class: int = 20000):  # fmt: skip
        from medstack.data.prepare import read_cases

        self.cases = read_cases(cases)
        self.sampler, self.samples_per_volume = sampler, int(samples_per_volume)
        self.transform, self.seed, self.cache_bytes, self.pad_value = transform, int(seed), int(cache_bytes), pad_value
        self.label_max_per_class = label_max_per_class
        self.epoch = 0
        self._cache: OrderedDict = OrderedDict()
        self._warned: set = set()  # cases warned about a patch larger than the volume (per process)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def __len__(self):
        return self.n_cases * self.samples_per_volume

    def _load(self, c: int):
        import medstack
        from medstack.patches.samplers import class_voxel_lists

        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        case = self.cases[c]
        vols = [_as_volume(p) for p in case["image"]]
        image = medstack.stack(vols) if len(vols) > 1 else vols[0]
        if c not in self._warned:
            self._warned.add(c)
            warn_patch_larger(image.spatial_shape, self.sampler.patch_size, f"case {case['id']!r}")
        label, info = None, CaseInfo(image.spatial_shape)
        if case["label"] is not None:
            label = _as_volume(case["label"])
            if label.spatial_shape != image.spatial_shape:
                label = medstack.resample(label, like=image, mode="nearest", is_label=True)
            voxels, _, _ = class_voxel_lists(label.to_numpy()[0], max_per_class=self.label_max_per_class)
            info = CaseInfo(image.spatial_shape, {k: v for k, v in voxels.items() if k > 0}, voxels.get(0))
        entry = (image, label, info)
        self._cache[c] = entry
        while len(self._cache) > 1 and sum(e[0].nbytes + (e[1].nbytes if e[1] else 0) for e in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, index: int):
        from medstack.transforms.base import generator_for

        if not 0 <= index < len(self):
            raise IndexError(index)
        c = index // self.samples_per_volume
        image, label, info = self._load(c)
        start = _sample_start(self.sampler, info, _rng(self.seed, self.epoch, index), index)
        gen = generator_for(self.seed, self.epoch, index) if self.transform is not None else None
        return _patch_item(self.cases[c]["id"], image, label, start, self.sampler.patch_size, self.pad_value,
                           self.transform, gen)  # fmt: skip

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state


class VolumeDataset(_SharedEpoch):
    """Whole volumes: item i is ``{"image": (C, D, H, W) tensor, "label"?, "affine", "case_id"}`` (batch size 1
    unless all volumes share a shape)."""

    def __init__(self, cases, *, transform=None, seed: int = 0):
        from medstack.data.prepare import read_cases

        self.cases, self.transform, self.seed = read_cases(cases), transform, int(seed)
        self.epoch = 0

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, index: int):
        import torch

        import medstack
        from medstack.transforms.base import generator_for

        case = self.cases[index]
        vols = [_as_volume(p) for p in case["image"]]
        sample = {"image": medstack.stack(vols) if len(vols) > 1 else vols[0]}
        if case["label"] is not None:
            sample["label"] = _as_volume(case["label"])
        if self.transform is not None:
            sample = self.transform(sample, generator_for(self.seed, self.epoch, index))
        out = {"case_id": case["id"], "affine": torch.as_tensor(np.array(sample["image"].affine))}
        out.update({k: v.to_tensor() for k, v in sample.items() if isinstance(v, Volume)})
        return out
