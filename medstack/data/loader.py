"""Loaders: a thread-based patch loader (the fast path from the HDF5 store), DataLoader defaults, and a device
prefetcher with batched GPU augmentation."""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque

import numpy as np

from medstack import geometry
from medstack.errors import FormatError
from medstack.patches.reading import read_patch_into
from medstack.resample import torch_dtype

__all__ = ["DevicePrefetcher", "PatchLoader", "make_loader", "read_batch"]


class PatchLoader:
    """Batches of patches from a :class:`~medstack.data.PatchDataset`, assembled by threads of this process.

    Each patch is copied once from the store (``medstack.io._direct``: a memory map of the uncompressed chunks
    within ``MEDSTACK_MAP_BUDGET``, ``preadv`` beyond it) straight into a ``(B, C, pd, ph, pw)`` batch tensor in
    the stored dtype (pinned when CUDA is available; otherwise recycled once nothing refers to it). No worker
    processes: nothing is pickled or moved between processes (that transfer costs more than reading the
    patch), and memory does not multiply per worker. The copies and reads release the GIL, so
    ``num_threads`` threads read in parallel, also while the training step runs.

    Batches equal ``default_collate`` of the dataset's items for the same indices (``image``, ``label``,
    ``case_id``, ``start``, ``world_origin``, ``affine``), so item ``i`` of epoch ``e`` is the same patch as
    with a ``DataLoader`` and any ``num_workers``. A dataset with a CPU ``transform`` is supported (items are
    built and transformed in the threads, then collated) but augmentations are better done batched on the
    GPU (:class:`DevicePrefetcher` + :class:`~medstack.transforms.gpu.BatchAugment`).

    Parameters
    ----------
    dataset : PatchDataset
    batch_size : patches per batch
    shuffle : a seeded permutation per epoch (``seed``, epoch); ignored when ``sampler`` is given
    sampler : an index sampler (e.g. ``DistributedSampler``: each rank gets distinct patches); its
        ``set_epoch`` is called by :meth:`set_epoch`
    num_threads : reader threads (default: CPU count, at most 4)
    prefetch : batches in flight (default ``2 * num_threads``)
    drop_last : drop the last incomplete batch
    pin_memory : page-locked batches for ``non_blocking`` GPU copies (default: when CUDA is available)
    """

    def __init__(self, dataset, batch_size: int = 2, *, shuffle: bool = True, sampler=None, seed: int = 0,
                 num_threads: int | None = None, prefetch: int | None = None, drop_last: bool = False,
                 pin_memory: bool | None = None):  # fmt: skip
        import torch

        from medstack.data.datasets import PatchDataset

        if not isinstance(dataset, PatchDataset):
            raise FormatError(f"PatchLoader needs a medstack PatchDataset, got {type(dataset).__name__} "
                                "(use make_loader for other datasets)")  # fmt: skip
        if batch_size < 1:
            raise FormatError(f"batch_size must be >= 1, got {batch_size}")
        over = getattr(dataset.sampler, "batch_size", None)  # a ForegroundOversampler forces slots of each batch
        if sampler is None and shuffle and over is not None:
            from medstack.data.datasets import BatchSlotSampler

            sampler = BatchSlotSampler(dataset, batch_size=int(batch_size), seed=int(seed))  # checks the batch size
        self.dataset, self.batch_size, self.shuffle, self.sampler = dataset, int(batch_size), shuffle, sampler
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.num_threads = int(num_threads) if num_threads else max(1, min(4, os.cpu_count() or 1))
        if self.num_threads < 1:
            raise FormatError(f"num_threads must be >= 1, got {num_threads}")
        self.prefetch = int(prefetch) if prefetch else 2 * self.num_threads
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._pool = None
        self._buffers: dict = {}  # (batch shape, dtype) -> _BufferPool
        self._buffers_lock = threading.Lock()

    def set_epoch(self, epoch: int) -> None:
        """New patches (and order) for ``epoch``; forwarded to the dataset and the sampler."""
        self.dataset.set_epoch(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _order(self) -> list[int]:
        if self.sampler is not None:
            return [int(i) for i in self.sampler]
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        from medstack.data.datasets import STREAM_SHUFFLE, stream

        return stream(self.seed, self.dataset.epoch, STREAM_SHUFFLE).permutation(n).tolist()

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batch(self, indices: list[int]):
        ds = self.dataset
        if ds.transform is not None:
            from torch.utils.data import default_collate

            return default_collate([ds[i] for i in indices])

        def empty(key, shape, dtype):
            import torch

            if self.pin_memory:  # torch's pinned allocator caches its blocks
                return torch.empty(shape, dtype=torch_dtype(dtype), pin_memory=True)
            pool_key = ((self.batch_size, *shape[1:]), np.dtype(dtype))
            with self._buffers_lock:
                pool = self._buffers.setdefault(pool_key, _BufferPool(*pool_key))
            return torch.from_numpy(pool.take(shape[0]))

        return read_batch(ds, indices, empty)

    def batch_indices(self) -> list[list[int]]:
        """The dataset indices of each batch of the current epoch, in order (``drop_last`` applied)."""
        order = self._order()
        bs = self.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        batches = self.batch_indices()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="medstack-patches")
        pending: deque = deque()
        todo = iter(batches)
        try:
            for b in todo:
                pending.append(self._pool.submit(self._batch, b))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(self._pool.submit(self._batch, nxt))
                yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        """Stop the reader threads (also done when the loader is garbage collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def read_batch(dataset, indices, alloc) -> dict:
    """The batch of ``dataset`` (a :class:`~medstack.data.PatchDataset` without ``transform``) for ``indices``,
    equal to ``default_collate`` of its items, with ``image`` and ``label`` read straight into arrays from
    ``alloc(key, shape, numpy dtype)`` (a CPU tensor of that shape and the matching torch dtype).

    Shared by :class:`PatchLoader` (threads) and :class:`~medstack.data.workers.ProcessPatchLoader` (worker
    processes writing into shared memory), so both give the same batches.

    Raises
    ------
    FormatError
        When the batch's cases differ in channel count or in having a label (they cannot be stacked).
    """
    import torch

    ds = dataset
    located = [ds.locate(i) for i in indices]
    cases = [ds.store.case(c) for c, _ in located]
    p = tuple(int(v) for v in ds.patch_size)
    first_img, first_lab = cases[0][0], cases[0][1]
    for (c, _), (img, lab, _) in zip(located, cases):
        if img.shape[0] != first_img.shape[0] or (lab is None) != (first_lab is None):
            raise FormatError(f"case {ds.store.ids[c]} has {img.shape[0]} channel(s)"
                                f"{'' if lab is not None else ' and no label'}; batch cases must match "
                                f"case {ds.store.ids[located[0][0]]}")  # fmt: skip
    n = len(indices)
    image = alloc("image", (n, first_img.shape[0], *p), np.dtype(first_img.data.dtype))
    label = None
    if first_lab is not None:
        label = alloc("label", (n, first_lab.shape[0], *p), np.dtype(first_lab.data.dtype))
    affines = np.empty((n, 4, 4))
    for j, ((_, start), (img, lab, _)) in enumerate(zip(located, cases)):
        read_patch_into(img.data, image[j], start, ds.pad_value)
        if label is not None:
            read_patch_into(lab.data, label[j], start, 0)
        affines[j] = geometry.box_affine(img.affine, start)
    out = {"case_id": [ds.store.ids[c] for c, _ in located],
           "start": torch.as_tensor(np.stack([s for _, s in located]).astype(np.int64)),
           "image": image, "affine": torch.from_numpy(affines),
           "world_origin": torch.from_numpy(affines[:, :3, 3].copy())}  # fmt: skip
    if label is not None:
        out["label"] = label
    return out


class _BufferPool:
    """Batch buffers that are reused once nothing refers to them any more.

    A fresh multi-MB array per batch costs a page fault per 4 KiB on first touch (measured with 2 threads:
    900-930 batches' patches/s with fresh buffers, 1,000/s with recycled ones). Each batch
    handed out is a view of a buffer owned by the pool; a finalizer on that exact view (which the tensor made
    by ``torch.from_numpy`` keeps alive, as do all tensors and arrays derived from it) returns the buffer to
    the pool only when the last of them is gone, so a batch still held by the caller is never overwritten.
    """

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> np.ndarray:
        with self._lock:
            base = self._free.pop() if self._free else np.empty(self.shape, self.dtype)
        view = base[:n]
        weakref.finalize(view, self._give_back, base)
        return view

    def _give_back(self, base: np.ndarray) -> None:
        with self._lock:
            self._free.append(base)


def make_loader(dataset, batch_size: int = 2, *, num_workers: int | None = None, shuffle: bool = True,
                sampler=None, seed: int = 0, **kwargs):  # fmt: skip
    """A ``torch.utils.data.DataLoader`` with defaults for 3D patch training.

    workers: all cores but one (at least 1 when > 1 core); ``pin_memory`` when CUDA is available;
    ``persistent_workers`` (files stay open across epochs); ``prefetch_factor=4``; shuffling with a seeded
    generator (the items themselves are already a function of (seed, epoch, index)). Pass ``sampler=`` (e.g.
    ``DistributedSampler`` or :class:`CaseGroupedSampler`) to control the order.

    For a :class:`~medstack.data.PatchDataset` without CPU transforms, :class:`PatchLoader` (threads, no worker
    processes) gives the same batches several times faster and with less memory.
    """
    import torch

    if num_workers is None:
        cores = os.cpu_count() or 1
        num_workers = max(0, cores - 1) if cores > 2 else cores - 1 if cores > 1 else 0
    opts = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "drop_last": False,
    }
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4)
    if sampler is not None:
        opts["sampler"] = sampler
    elif shuffle:
        opts["shuffle"] = True
        opts["generator"] = torch.Generator().manual_seed(seed)
    opts.update(kwargs)
    return torch.utils.data.DataLoader(dataset, **opts)


class DevicePrefetcher:
    """Iterate a loader, preparing the NEXT batch on ``device`` while the current one is used: the copy
    (non_blocking, from pinned memory), the conversion to float32 and the optional
    :class:`~medstack.transforms.gpu.BatchAugment` run on a side CUDA stream, so they overlap the training step; the
    step's stream waits for that stream only (no device-wide synchronisation), and the tensors are recorded on
    the consuming stream so the allocator never reuses them early.

    ``image`` is converted to float32 on the device (int16 travels as int16: half the bytes over PCIe). With
    ``out_size`` (D, H, W), batches read with a margin (``PatchDataset(margin=augment.margin(patch))``) are
    augmented into the centred ``out_size`` output (``BatchAugment(..., out_size=)``), so rotated and zoomed
    patches hold real voxels, not padding; without ``augment`` they are centre-cropped. The batch's ``affine``
    follows the augmentation.

    Parameters
    ----------
    loader : PatchLoader, ProcessPatchLoader or DataLoader (batches of dicts of tensors)
    device : torch device
    augment : BatchAugment, optional
    seed : seed of the augmentation's generator (the draws follow the batch order)
    out_size : (D, H, W), optional; e.g. ``dataset.out_size``
    """

    def __init__(self, loader, device="cpu", *, augment=None, seed: int = 0, image_key: str = "image",
                 label_key: str = "label", out_size=None):  # fmt: skip
        import torch

        self.loader, self.device = loader, torch.device(device)
        self.augment, self.image_key, self.label_key = augment, image_key, label_key
        self.out_size = None if out_size is None else tuple(int(v) for v in out_size)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def __len__(self):
        return len(self.loader)

    def _to_device(self, batch):
        import torch

        out = {}
        for k, v in batch.items():
            out[k] = v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return out

    def _finish(self, batch):
        import torch

        img = batch[self.image_key]
        if not img.dtype.is_floating_point:
            img = img.to(torch.float32)
        batch[self.image_key] = img
        label = batch.get(self.label_key)
        if self.augment is not None:
            affines = batch.get("affine")
            res = self.augment(img, label, generator=self.generator, affines=affines, out_size=self.out_size)
            res = list(res) if isinstance(res, tuple) else [res]
            batch[self.image_key] = res.pop(0)
            if label is not None:
                batch[self.label_key] = res.pop(0)
            if affines is not None:
                batch["affine"] = res.pop(0).to(affines.device, affines.dtype)
                batch["world_origin"] = batch["affine"][:, :3, 3].clone()
        elif self.out_size is not None and tuple(img.shape[2:]) != self.out_size:
            lo = [(n - o) // 2 for n, o in zip(img.shape[2:], self.out_size)]
            if any(v < 0 for v in lo):
                from medstack.errors import GeometryError

                raise GeometryError(f"DevicePrefetcher: out_size {self.out_size} is larger than the batch "
                                    f"{tuple(img.shape[2:])}")  # fmt: skip
            box = (slice(None), slice(None), *(slice(a, a + o) for a, o in zip(lo, self.out_size)))
            batch[self.image_key] = img[box]
            if label is not None:
                batch[self.label_key] = label[box]
            if "affine" in batch:
                shift = torch.eye(4, dtype=batch["affine"].dtype, device=batch["affine"].device)
                shift[:3, 3] = torch.tensor(lo[::-1], dtype=shift.dtype)
                batch["affine"] = batch["affine"] @ shift
                batch["world_origin"] = batch["affine"][:, :3, 3].clone()
        return batch

    def __iter__(self):
        import torch

        it = iter(self.loader)

        def preload():
            try:
                b = next(it)
            except StopIteration:
                return None
            if self.stream is None:
                return b
            with torch.cuda.stream(self.stream):
                out = self._to_device(b)
                record = getattr(self.loader, "record_copy", None)
                if record is not None:  # shared-memory slots: not reused before this copy has finished
                    record(self.stream)
                return self._finish(out)  # conversion and augmentation on the side stream too

        nxt = preload()
        while nxt is not None:
            if self.stream is not None:
                main = torch.cuda.current_stream(self.device)
                main.wait_stream(self.stream)
                for v in nxt.values():
                    if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                        v.record_stream(main)  # made on the side stream, used on this one
                cur = nxt
            else:
                cur = self._finish(self._to_device(nxt))
            nxt = preload()
            yield cur
