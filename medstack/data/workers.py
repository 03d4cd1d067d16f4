"""A patch loader whose reads and batch assembly run in worker processes, outside the training process's GIL.

:class:`~medstack.data.PatchLoader` reads with threads of the training process. The reads release the GIL, but
every batch still costs the threads some Python (locating the patch, slicing, collating) under the same
interpreter lock as a launch-bound training step (a 3D U-Net issues thousands of kernel launches from Python),
so adding threads slows the step and, past a few threads, the loader itself. :class:`ProcessPatchLoader` moves
all of it to worker processes: each one opens the store itself and writes whole batches, in the stored dtype,
into a ring of shared-memory batch slots; the training process only sends ``(slot, indices, epoch)``, receives
the small fields (``start``, ``affine``, ``case_id``) and wraps the slot in tensors (no copy).

Lifetime of a batch: its ``image``/``label`` tensors are views of a slot; the slot goes back to the ring only once
nothing refers to them any more (the batch dict, any tensor or view made from them), so a batch you keep is
never overwritten (keeping many makes the ring grow). A ``non_blocking`` copy to a GPU from a slot must have
finished before the slot is reused: :class:`~medstack.data.DevicePrefetcher` calls :meth:`ProcessPatchLoader.record_copy`
for this; with your own copies, call it after them (or keep the CPU batch until the copy is done).
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import threading
import time
import weakref
from collections import OrderedDict, deque
from multiprocessing import shared_memory

import numpy as np

from medstack import errors
from medstack.data.loader import PatchLoader, read_batch
from medstack.errors import ArgumentError, ReadError

__all__ = ["ProcessPatchLoader"]

ALIGN = 64  # byte alignment of each field in a slot
SMALL = 4096  # tensors below this many bytes travel through the pipe, not the slot
POLL_S = 0.5  # liveness check interval while waiting for a batch
_LIVE: weakref.WeakSet = weakref.WeakSet()  # loaders to close at interpreter exit
_PRELOAD_SET = [False]
#: modules the forkserver imports once, so each worker starts in milliseconds (torch alone takes ~1 s)
PRELOAD = ["torch", "h5py", "medstack.data.workers", "medstack.data.datasets", "medstack.io.store"]


def _close_all() -> None:
    for loader in list(_LIVE):
        loader.close()


atexit.register(_close_all)  # registered after multiprocessing's own hook, so it runs first


class _Segment(shared_memory.SharedMemory):
    """A shared-memory segment whose ``close`` is a no-op while tensors still view it (the mapping then lives
    until the last view is gone); ``unlink`` removes its name at once."""

    def close(self):
        try:
            super().close()
        except BufferError:  # views exported: the mmap is released with the last of them
            pass

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name.rpartition(".")[2])


# -- worker side ------------------------------------------------------------------------------------------
def _to_message(value):
    """A field for the pipe: NumPy arrays (by value) for tensors, as is otherwise."""
    import torch

    if not torch.is_tensor(value):
        return ("value", value)
    value = value.detach().contiguous()
    try:
        return ("array", value.numpy())
    except TypeError:  # bfloat16 & co.: raw bytes
        return ("raw", value.view(torch.uint8).numpy().tobytes(), str(value.dtype), tuple(value.shape))


def _fill(ds, indices, slot: np.ndarray | None):
    """The batch for ``indices`` written into ``slot`` (a flat uint8 array) where it fits; returns
    ``(fields, needed bytes)`` with fields ``key -> ("slot", offset, dtype, shape) | pipe message``."""
    import torch

    capacity = 0 if slot is None else slot.nbytes
    used = [0, 0]  # bytes placed in the slot, bytes wanted in all
    placed: dict[int, tuple] = {}

    def take(shape, dtype):
        """A tensor in the slot, or None when it does not fit."""
        nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        off = used[0]
        used[1] += _align(nbytes)
        if nbytes < SMALL or off + nbytes > capacity:
            return None
        used[0] = off + _align(nbytes)
        t = torch.from_numpy(slot[off : off + nbytes]).view(dtype).view(shape)
        placed[id(t)] = ("slot", off, str(dtype), tuple(shape))
        return t

    if ds.transform is None:
        from medstack.resample import torch_dtype

        def alloc(key, shape, dtype):
            t = take(shape, torch_dtype(dtype))
            return t if t is not None else torch.empty(shape, dtype=torch_dtype(dtype))

        batch = read_batch(ds, indices, alloc)
    else:
        from torch.utils.data import default_collate

        batch = default_collate([ds[i] for i in indices])
        for k, v in batch.items():
            if torch.is_tensor(v) and v.numel() * v.element_size() >= SMALL:
                t = take(tuple(v.shape), v.dtype)
                if t is not None:
                    t.copy_(v)
                    batch[k] = t
    fields = {k: placed.get(id(v)) or _to_message(v) for k, v in batch.items()}
    return fields, used[1]


def _describe(ds, indices) -> str:
    spv = getattr(ds, "samples_per_volume", 1)
    try:
        ids = sorted({ds.store.ids[int(i) // spv] for i in indices})
        return f"case(s) {', '.join(ids)}"
    except (AttributeError, IndexError, TypeError):
        return f"indices {list(indices)}"


def worker_main(wid: int, payload: bytes, conn, threads: int) -> None:
    """Entry point of a worker process: fill the batch slots the parent asks for until told to stop (or the
    parent is gone). Not for direct use."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    import torch

    torch.set_num_threads(max(1, threads))
    ds = pickle.loads(payload)  # small message from the parent (the dataset's settings); never from disk
    segments: OrderedDict = OrderedDict()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg[0] == "stop":
            return
        _, token, slot_id, name, indices, epoch = msg
        try:
            if ds.epoch != epoch:
                ds.epoch = epoch
            slot = None
            if name is not None:
                seg = segments.get(name)
                if seg is None:
                    seg = segments[name] = _Segment(name=name)
                    while len(segments) > 256:  # segments the parent dropped
                        segments.popitem(last=False)[1].close()
                segments.move_to_end(name)
                slot = np.frombuffer(seg.buf, dtype=np.uint8)
            fields, needed = _fill(ds, indices, slot)
            del slot
            reply = ("ok", token, slot_id, fields, needed)
        except Exception as e:  # reported to the parent, which raises it
            import traceback

            last = traceback.extract_tb(e.__traceback__)[-1:]
            at = f" (at {last[0].filename}:{last[0].lineno} in {last[0].name})" if last else ""
            reply = ("error", token, slot_id, type(e).__name__, f"{_describe(ds, indices)}: {type(e).__name__}: {e}{at}")
        try:
            conn.send(reply)
        except (OSError, EOFError):
            return


# -- parent side ------------------------------------------------------------------------------------------
class _Ring:
    """The batch slots: free ones, and ones handed out (views alive). Kept apart from the loader so finalizers
    of batches that outlive it do not keep it alive."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free: deque = deque()
        self.out: set = set()
        self.events: dict = {}  # slot id -> CUDA event of the last copy from it

    def give_back(self, slot_id: int) -> None:
        with self.lock:
            self.out.discard(slot_id)
            self.free.append(slot_id)


class ProcessPatchLoader(PatchLoader):
    """Batches of patches from a :class:`~medstack.data.PatchDataset`, read and assembled by worker processes
    into shared memory: the training process holds its GIL for a few microseconds per batch.

    Same promises as :class:`~medstack.data.PatchLoader`: batches equal ``default_collate`` of the dataset's
    items; item ``i`` of epoch ``e`` is the same patch whatever ``workers``, ``prefetch`` or rank; int16 stays
    int16 (slots hold the stored dtype); memory flat in the number of cases (each worker maps at most
    ``MEDSTACK_MAP_BUDGET`` of the store); nothing written to disk. CPU ``transform`` s of the dataset run in
    the workers. See the module docstring for how long a batch stays valid (as long as you refer to it).

    Workers start on the first iteration and persist across epochs (:meth:`set_epoch` reaches them with each
    batch request). :meth:`close` (also ``with``, garbage collection and interpreter exit) stops them and
    removes the shared memory. A worker error raises the matching :class:`~medstack.errors.MedstackError`
    (a :class:`~medstack.errors.ReadError` otherwise) naming the batch's cases; a worker that dies raises
    :class:`~medstack.errors.ReadError`; both stop the workers (the next iteration starts fresh ones).

    Parameters
    ----------
    dataset, batch_size, shuffle, sampler, seed, drop_last : as for :class:`~medstack.data.PatchLoader`
    workers : worker processes (default: all cores but one, at least 1)
    prefetch : batches requested ahead (default ``2 * workers``, at least 2)
    pin_memory : page-lock the slots (``cudaHostRegister``) for ``non_blocking`` copies (default: when CUDA
        is available)
    timeout : seconds without any batch (workers alive) before a :class:`~medstack.errors.ReadError`
    start_method : ``"forkserver"`` (default where available: workers fork from a server that imported
        medstack once) or ``"spawn"``; never ``"fork"`` (unsafe with threads and CUDA)
    threads_per_worker : torch intra-op threads in each worker (default 1)

    Examples
    --------
    >>> from medstack.data import PatchDataset
    >>> from medstack.patches import UniformSampler
    >>> ds = PatchDataset("store", UniformSampler(96), samples_per_volume=8)  # doctest: +SKIP
    >>> with ProcessPatchLoader(ds, batch_size=4, workers=8) as loader:  # doctest: +SKIP
    ...     for epoch in range(10):
    ...         loader.set_epoch(epoch)
    ...         for batch in loader:
    ...             pass  # batch["image"]: int16 (4, C, 96, 96, 96), a view of shared memory
    """

    def __init__(self, dataset, batch_size: int = 2, *, shuffle: bool = True, sampler=None, seed: int = 0,
                 workers: int | None = None, prefetch: int | None = None, drop_last: bool = False,
                 pin_memory: bool | None = None, timeout: float = 300.0, start_method: str | None = None,
                 threads_per_worker: int = 1):  # fmt: skip
        import multiprocessing as mp

        super().__init__(dataset, batch_size, shuffle=shuffle, sampler=sampler, seed=seed, num_threads=1,
                         prefetch=prefetch or 2, drop_last=drop_last, pin_memory=pin_memory)  # fmt: skip
        if workers is None:
            workers = max(1, (os.cpu_count() or 2) - 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ArgumentError(f"ProcessPatchLoader: workers must be an int >= 1, got {workers!r}")
        if prefetch is not None and int(prefetch) < 1:
            raise ArgumentError(f"ProcessPatchLoader: prefetch must be >= 1, got {prefetch!r}")
        if not timeout or timeout <= 0:
            raise ArgumentError(f"ProcessPatchLoader: timeout must be > 0 seconds, got {timeout!r}")
        methods = mp.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("forkserver", "spawn") or start_method not in methods:
            raise ArgumentError(f"ProcessPatchLoader: start_method must be 'forkserver' or 'spawn' (available "
                                f"here: {methods}), got {start_method!r}; 'fork' is unsafe with threads/CUDA")  # fmt: skip
        self.workers, self.timeout, self.start_method = workers, float(timeout), start_method
        self.prefetch = int(prefetch) if prefetch else max(2, 2 * workers)
        self.threads_per_worker = int(threads_per_worker)
        self._procs: list = []
        self._conns: list = []
        self._segments: list = []  # slot id -> (_Segment, flat uint8 array) or None once dropped
        self._ring = _Ring()
        self._capacity = self._estimate_capacity()
        self._generation = 0  # bumped by each iteration and each stop of the workers
        self._active = None  # generation of the iteration under way
        self._registered: list = []  # cudaHostRegister'ed pointers

    # -- setup ----------------------------------------------------------------------------------------------
    def _estimate_capacity(self) -> int:
        """Bytes of one batch's image + label in the stored dtypes (from the first case's header); 0 for a
        dataset with a transform (learnt from the first batches)."""
        ds = self.dataset
        if ds.transform is not None:
            return 0
        image, label, _ = ds.store.case(0)
        n = self.batch_size * int(np.prod([int(v) for v in ds.patch_size]))
        total = _align(n * image.shape[0] * np.dtype(image.data.dtype).itemsize)
        if label is not None:
            total += _align(n * label.shape[0] * np.dtype(label.data.dtype).itemsize)
        return total

    def _start(self) -> None:
        if self._procs:
            return
        import multiprocessing as mp

        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver" and not _PRELOAD_SET[0]:
            ctx.set_forkserver_preload(PRELOAD)  # import torch/medstack once, fork workers
            _PRELOAD_SET[0] = True
        payload = pickle.dumps(self.dataset)  # by value (also the epoch tensor): workers get a private copy
        try:
            for wid in range(self.workers):
                here, there = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=worker_main, args=(wid, payload, there, self.threads_per_worker),
                                   name=f"medstack-patches-{wid}", daemon=True)  # fmt: skip
                proc.start()
                there.close()
                self._procs.append(proc)
                self._conns.append(here)
        except BaseException:
            self._stop_workers()
            raise
        _LIVE.add(self)

    def _new_slot(self) -> int:
        size = max(self._capacity, ALIGN)
        try:
            st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
            free = None if st is None else st.f_bavail * st.f_frsize
        except OSError:
            free = None
        if free is not None and free < size:
            raise ReadError(f"ProcessPatchLoader: /dev/shm has {free >> 20} MiB free, a batch slot needs "
                            f"{size >> 20} MiB; enlarge it (docker run --shm-size=8g), lower prefetch/batch_size, "
                            "or use PatchLoader (threads)")  # fmt: skip
        seg = _Segment(create=True, size=size)
        flat = np.frombuffer(seg.buf, dtype=np.uint8)
        if self.pin_memory:
            self._pin(flat)
        self._segments.append((seg, flat))
        return len(self._segments) - 1

    def _pin(self, flat: np.ndarray) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        ptr = flat.ctypes.data
        err = torch.cuda.cudart().cudaHostRegister(ptr, flat.nbytes, 0)
        if int(getattr(err, "value", err)) == 0:
            self._registered.append(ptr)

    def _take_slot(self) -> int:
        ring = self._ring
        while True:
            with ring.lock:
                slot_id = ring.free.popleft() if ring.free else None
            if slot_id is None:
                return self._new_slot()
            with ring.lock:
                event = ring.events.pop(slot_id, None)
            if event is not None:
                event.synchronize()  # the last non_blocking copy from this slot has finished
            if self._segments[slot_id][1].nbytes < self._capacity:  # too small since the capacity grew
                self._drop_slot(slot_id)
                continue
            return slot_id

    def _drop_slot(self, slot_id: int) -> None:
        entry = self._segments[slot_id]
        if entry is None:
            return
        seg, flat = entry
        self._segments[slot_id] = None
        self._unpin(flat)
        del flat
        try:
            seg.unlink()
        except FileNotFoundError:
            pass
        seg.close()

    def _unpin(self, flat: np.ndarray) -> None:
        ptr = flat.ctypes.data
        if ptr in self._registered:
            import torch

            torch.cuda.cudart().cudaHostUnregister(ptr)
            self._registered.remove(ptr)

    def record_copy(self, stream=None) -> None:
        """Mark the batches handed out so far as being copied on ``stream`` (a CUDA stream; default the
        current one): their slots are reused only after the work queued on it so far has finished. Called by
        :class:`~medstack.data.DevicePrefetcher` after its ``non_blocking`` copies."""
        import torch

        if not torch.cuda.is_available():
            return
        event = torch.cuda.Event()
        event.record(stream)
        with self._ring.lock:
            for slot_id in self._ring.out:
                self._ring.events[slot_id] = event

    # -- iteration ------------------------------------------------------------------------------------------
    def __iter__(self):
        batches = self.batch_indices()
        if self._active is not None:  # another iteration is suspended: end it (its slots may be in flight)
            self._stop_workers()
        self._start()
        self._generation += 1
        gen, epoch = self._generation, int(self.dataset.epoch)
        self._active = gen
        load = [0] * len(self._procs)  # batches in flight per worker
        where: dict[int, tuple[int, int]] = {}  # seq -> (worker, slot) in flight
        done: dict[int, tuple] = {}  # seq -> reply received ahead of its turn
        sent = 0

        def request(limit):
            nonlocal sent
            while sent < min(limit, len(batches)):
                wid = min(range(len(load)), key=load.__getitem__)
                slot_id = self._take_slot()
                name = self._segments[slot_id][0].name if self._capacity > 0 else None
                try:
                    self._conns[wid].send(("batch", (gen, sent), slot_id, name, batches[sent], epoch))
                except OSError:  # BrokenPipeError: the worker died while it had no batch in flight
                    self._ring.give_back(slot_id)
                    proc = self._procs[wid]
                    proc.join(1.0)
                    raise ReadError(f"ProcessPatchLoader: worker {wid} (pid {proc.pid}) died (exit code "
                                    f"{proc.exitcode}) before reading {_describe(self.dataset, batches[sent])}; "
                                    "a crash in a reader or the system's out-of-memory killer?") from None  # fmt: skip
                where[sent] = (wid, slot_id)
                load[wid] += 1
                sent += 1

        clean = False
        try:
            for seq in range(len(batches)):
                request(seq + self.prefetch)
                while seq not in done:
                    self._receive(gen, where, done, load, batches)
                reply = done.pop(seq)
                where.pop(seq)
                batch = self._build(reply)
                request(seq + 1 + self.prefetch)  # `prefetch` batches in the works while the consumer runs
                yield batch
                del batch
                if gen != self._generation:
                    raise ReadError("ProcessPatchLoader: this iteration was ended by close() or by a newer "
                                    "iteration of the same loader; iterate again")  # fmt: skip
            clean = True
        except GeneratorExit:  # the consumer stopped early: collect what is in flight, keep the workers
            if gen == self._generation:
                try:
                    while where.keys() - done.keys():
                        self._receive(gen, where, done, load, batches)
                    clean = True
                finally:
                    for seq in list(where):
                        self._ring.give_back(where.pop(seq)[1])
            raise
        finally:
            if gen == self._generation:
                self._active = None
                if not clean:  # an error (ours, a worker's, Ctrl-C): stop the workers, their slots may be in use
                    self._stop_workers()

    def _receive(self, gen, where, done, load, batches) -> None:
        from multiprocessing.connection import wait

        t0 = time.monotonic()
        while True:
            busy = [self._conns[w] for w, n in enumerate(load) if n > 0]
            ready = wait(busy, timeout=POLL_S)
            for conn in ready:
                wid = self._conns.index(conn)
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    proc = self._procs[wid]
                    proc.join(1.0)
                    mine = [s for s, (w, _) in where.items() if w == wid and s not in done]
                    ds = self.dataset
                    what = "; ".join(_describe(ds, batches[s]) for s in mine) or "no batch"
                    raise ReadError(f"ProcessPatchLoader: worker {wid} (pid {proc.pid}) died (exit code "
                                    f"{proc.exitcode}) while reading {what}; a crash in a reader or the "
                                    "system's out-of-memory killer? Run PatchLoader (threads) on these cases "
                                    "to see the error") from None  # fmt: skip
                load[wid] -= 1
                kind, (g, seq), slot_id = reply[0], reply[1], reply[2]
                if g != gen:  # a stale reply (cannot happen after a clean drain); recycle its slot
                    self._ring.give_back(slot_id)
                    continue
                if kind == "error":
                    cls = getattr(errors, reply[3], None)
                    known = isinstance(cls, type) and issubclass(cls, errors.MedstackError)
                    hint = ("re-run medstack.data.prepare for a damaged case file" if known and issubclass(cls, ReadError)
                            else "iterate PatchLoader (threads) over the same dataset for the full traceback")  # fmt: skip
                    raise (cls if known else ReadError)(f"ProcessPatchLoader worker {wid}, batch {seq}: {reply[4]}; {hint}")
                done[seq] = reply
            if ready:
                return
            if time.monotonic() - t0 > self.timeout:  # (a dead worker's pipe reports EOF: seen above)
                raise ReadError(f"ProcessPatchLoader: no batch from {len(busy)} live worker(s) in "
                                f"{self.timeout:.0f} s (a hung read on a network file system?); raise timeout= "
                                "if the batches are that slow")  # fmt: skip

    def _build(self, reply) -> dict:
        import torch

        _, _, slot_id, fields, needed = reply
        if needed > self._capacity:  # learn the batch size (transforms); later slots are made this large
            self._capacity = _align(needed)
        flat = self._segments[slot_id][1]
        view = flat[:]  # the batch's own view: the slot returns to the ring when it (and all derived) is gone
        whole = torch.from_numpy(view)  # tensors made from it keep `view` alive (NumPy slices would not:
        used = False  # their base is `flat`)
        out = {}
        for key, f in fields.items():
            if f[0] == "slot":
                _, off, dtype, shape = f
                dt = _torch_dtype(dtype)
                nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dt).element_size()
                out[key] = whole[off : off + nbytes].view(dt).view(shape)
                used = True
            elif f[0] == "array":
                out[key] = torch.from_numpy(f[1])
            elif f[0] == "raw":
                out[key] = torch.frombuffer(bytearray(f[1]), dtype=_torch_dtype(f[2])).view(f[3])
            else:
                out[key] = f[1]
        del whole
        ring = self._ring
        if used:
            with ring.lock:
                ring.out.add(slot_id)
            weakref.finalize(view, ring.give_back, slot_id)
        else:
            ring.give_back(slot_id)
        return out

    # -- shutdown -------------------------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        procs, conns = self._procs, self._conns
        self._procs, self._conns = [], []
        self._generation += 1  # a suspended iteration of the stopped workers ends
        self._active = None
        for conn in conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
            if not proc.is_alive():
                proc.close()
        for conn in conns:
            conn.close()
        with self._ring.lock:  # every slot not viewed by a live batch is free again
            self._ring.free = deque(i for i, s in enumerate(self._segments) if s is not None and i not in self._ring.out)

    def close(self) -> None:
        """Stop the workers and remove the shared memory (batches still referenced stay valid: their memory is
        released with them). The loader can be iterated again (fresh workers)."""
        self._stop_workers()
        with self._ring.lock:
            events = list(self._ring.events.values())
            self._ring.events.clear()
        for event in events:
            event.synchronize()
        for slot_id in range(len(self._segments)):
            self._drop_slot(slot_id)
        self._segments = []
        self._ring = _Ring()
        _LIVE.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the resource tracker removes what is left
            pass
