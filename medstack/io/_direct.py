"""Direct reads of uncompressed HDF5 datasets: a patch's bytes are taken at the file offsets h5py reports,
without h5py's chunk cache and per-call machinery.

An HDF5 dataset without filters stores each chunk (or the whole contiguous array) as raw C-order bytes at a
file offset (``get_chunk_info`` / ``get_offset``). Two ways to read them, both releasing the GIL (so reader
threads scale):

- ``mmap``: every chunk is a NumPy view on a read-only mapping of the file, and a patch is one strided copy
  per chunk it overlaps, from the page cache straight into the caller's array: only the patch's own bytes
  move. Mapped pages count in the process's RSS once touched, so a process maps datasets only up to a budget
  (:data:`MAP_BUDGET`, env ``MEDSTACK_MAP_BUDGET`` in bytes, default 256 MiB) of dataset bytes, first come
  first served; the others are read with ``preadv``. RSS stays below the budget whatever the store's size.
- ``preadv``: for each chunk, the slab of chunk planes the patch spans is read into a per-thread buffer and
  the patch's rows copied out. No RSS beyond one chunk per thread, but ~3x the patch's bytes move (1.3-1.5x
  slower per patch than the mapped copy on the benchmark box, with 2 threads).

Dropping mapped pages (``MADV_DONTNEED``) to map every dataset within a budget was measured and rejected: the
page faults after each drop made it slower than ``preadv`` once the store exceeds the budget.

h5py instead reads and caches whole chunks and copies through its own buffers (about 4x the patch's bytes for a
96^3 patch over 64^3 chunks, plus ~0.1 ms of overhead per call). Datasets that cannot be read this way
(filters/compression, non-native byte order, unallocated chunks, drivers other than the default) return
``None`` from :meth:`DirectDataset.open`; callers fall back to h5py.
"""

from __future__ import annotations

import math
import mmap
import os
import threading

import numpy as np

from medstack.errors import FormatError, ReadError

__all__ = ["MAP_BUDGET", "DirectDataset", "check_local_storage"]

MAP_BUDGET = int(os.environ.get("MEDSTACK_MAP_BUDGET", 256 << 20))  # dataset bytes mapped per process; 0: preadv

_local = threading.local()
_lock = threading.RLock()  # re-entrant: close() may run from __del__ inside a locked section
_mapped = {"pid": None, "bytes": 0}  # dataset bytes mapped by this process
_fds: dict = {}  # (pid, path) -> [descriptor, users]: the datasets of one file share a descriptor


def _open_fd(path: str) -> int:
    with _lock:
        key = (os.getpid(), path)
        entry = _fds.get(key)
        if entry is None:
            entry = _fds[key] = [os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), 0]
        entry[1] += 1
        return entry[0]


def _release_fd(path: str) -> None:
    with _lock:
        key = (os.getpid(), path)
        entry = _fds.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _fds[key]
                os.close(entry[0])


def _reserve(nbytes: int) -> bool:
    """Take ``nbytes`` of this process's mapping budget; False when it would be exceeded. Call under ``_lock``."""
    if _mapped["pid"] != os.getpid():  # a forked child starts with nothing mapped
        _mapped.update(pid=os.getpid(), bytes=0)
    if _mapped["bytes"] + nbytes > MAP_BUDGET:
        return False
    _mapped["bytes"] += nbytes
    return True


def inside_box(shape_dhw, start, box):
    """The part of the box of size ``box`` at voxel ``start`` (d, h, w) that lies inside an array of spatial
    shape ``shape_dhw``: ``(lo, hi, o)`` = its bounds in the array and where it starts in the box; None when the
    box is entirely outside. The box is partly outside (needs padding) iff ``hi - lo`` differs from ``box``."""
    lo = [max(0, int(s)) for s in start]
    hi = [min(int(n), int(s) + int(b)) for n, s, b in zip(shape_dhw, start, box)]
    if any(h <= low for low, h in zip(lo, hi)):
        return None
    return lo, hi, [low - int(s) for low, s in zip(lo, start)]


def padded_box(out, shape_dhw, start, pad_value):
    """For filling ``out`` (``(C, *box)``) with the box at ``start`` of an array of spatial shape ``shape_dhw``:
    sets ``out`` to ``pad_value`` when the box is not entirely inside, and returns :func:`inside_box`'s
    ``(lo, hi, o)`` for the part to copy (None: nothing to copy)."""
    box = out.shape[1:]
    inside = inside_box(shape_dhw, start, box)
    if inside is None or any(h - low != b for low, h, b in zip(inside[0], inside[1], box)):
        out[...] = pad_value
    return inside


def check_local_storage(ds, where: str) -> None:
    """Refuse an HDF5 dataset whose values come from outside its own file: EXTERNAL storage (raw bytes of
    other files named in the file) or a VIRTUAL dataset (mapped from other datasets / files). Reading such a
    dataset would turn arbitrary local files into voxels. Raises :class:`~medstack.errors.FormatError`."""
    import h5py

    try:
        plist = ds.id.get_create_plist()
        n_external = plist.get_external_count()
        layout = plist.get_layout()
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise FormatError(f"{where}: cannot read the storage layout of dataset {ds.name!r} ({e})") from e
    if n_external:
        raise FormatError(f"{where}: dataset {ds.name!r} has EXTERNAL storage ({n_external} outside file(s)); "
                          "medstack reads only data stored inside the file")  # fmt: skip
    if layout == h5py.h5d.VIRTUAL:
        raise FormatError(f"{where}: dataset {ds.name!r} is a VIRTUAL dataset (mapped from other datasets or "
                          "files); medstack reads only data stored inside the file")  # fmt: skip


def _buffer(nbytes: int) -> np.ndarray:
    """This thread's reusable read buffer, at least ``nbytes`` long."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _local.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buf


def _pread_into(fd: int, view: np.ndarray, offset: int, path: str) -> None:
    mv = memoryview(view).cast("B")
    if hasattr(os, "preadv"):
        n = os.preadv(fd, [mv], offset)
    else:  # pragma: no cover - platforms without preadv
        data = os.pread(fd, mv.nbytes, offset)
        n = len(data)
        mv[:n] = data
    if n != mv.nbytes:
        raise ReadError(f"{path}: short read ({n} of {mv.nbytes} bytes at offset {offset}); truncated file?")


class DirectDataset:
    """Read boxes of one uncompressed HDF5 dataset straight from its file (see the module docstring)."""

    def __init__(self, path: str, shape, dtype, *, offset=None, chunks=None, table=None):
        self.path, self.shape, self.dtype = str(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self._offset = offset  # contiguous: byte offset of the array
        self.chunks = None if chunks is None else tuple(int(c) for c in chunks)
        self._table = table  # chunked: byte offset per chunk grid position
        self._fd = None
        self._pid = None
        self._views = None  # chunk views on a mapping of the file; None with _map_pid == this process: preadv
        self._map_pid = None
        cells = math.prod(self.shape) if chunks is None else math.prod(-(-s // c) * c for s, c in zip(self.shape, self.chunks))
        self._nbytes = int(cells) * self.dtype.itemsize
        # end of the last byte of data: the file must be at least this long (checked at open and each mapped read)
        if chunks is None:
            self._extent = int(offset) + self._nbytes
        else:
            self._extent = max(_flat(table)) + math.prod(self.chunks) * self.dtype.itemsize

    @classmethod
    def open(cls, path, ds) -> DirectDataset | None:
        """For ``ds`` (an open h5py Dataset of file ``path``), or None when its bytes are not raw on disk.

        Raises :class:`~medstack.errors.FormatError` for data stored outside the file (EXTERNAL / VIRTUAL) and
        :class:`~medstack.errors.ReadError` when the file is shorter than its data (truncated)."""
        check_local_storage(ds, str(path))
        direct = cls._open(path, ds)
        if direct is not None:
            try:
                size = os.stat(path).st_size
            except OSError as e:
                raise ReadError(f"{path}: cannot stat the file ({e.strerror})") from e
            if direct._extent > size:
                raise ReadError(f"{path}: truncated file: dataset {ds.name!r} needs {direct._extent} bytes, the "
                                f"file has {size}")  # fmt: skip
        return direct

    @classmethod
    def _open(cls, path, ds) -> DirectDataset | None:
        import h5py

        try:
            plist = ds.id.get_create_plist()
            native = ("=", "|", "<" if np.little_endian else ">")
            if plist.get_nfilters() != 0 or ds.dtype.byteorder not in native or ds.dtype.kind not in "biuf":
                return None
            if ds.file.driver not in ("sec2", None) or len(ds.shape) != 4:
                return None
            layout = plist.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                offset = ds.id.get_offset()
                return None if offset is None else cls(path, ds.shape, ds.dtype, offset=int(offset))
            if layout != h5py.h5d.CHUNKED:
                return None
            chunks = ds.chunks
            grid = tuple(-(-s // c) for s, c in zip(ds.shape, chunks))
            if math.prod(grid) != ds.id.get_num_chunks():  # never-written chunks (fill value): let h5py handle them
                return None  # (checked before allocating the table: a huge claimed shape costs nothing here)
            table = np.full(grid, -1, dtype=np.int64)
            full = int(np.prod(chunks)) * ds.dtype.itemsize
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.size != full or info.byte_offset is None:
                    return None
                table[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = info.byte_offset
            if (table < 0).any():  # never-written chunks
                return None
            return cls(path, ds.shape, ds.dtype, chunks=chunks, table=table.tolist())
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            with _lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = _open_fd(self.path), os.getpid()
        return self._fd

    def close(self) -> None:
        with _lock:
            if self._fd is not None and self._pid == os.getpid():
                _release_fd(self.path)
            self._fd = None
            if self._views is not None and self._map_pid == os.getpid() and _mapped["pid"] == os.getpid():
                _mapped["bytes"] -= self._nbytes  # unmapped when the last view is gone
            self._views = self._map_pid = None

    def _mapping(self):
        """The chunk views (or the contiguous array view) on a mapping of the file, made once per process; None
        when this dataset is read with ``preadv`` here (over the budget, or no ``mmap``)."""
        pid = os.getpid()
        if self._map_pid == pid:
            return self._views
        with _lock:
            if self._map_pid == pid:
                return self._views
            self._views, self._map_pid = None, pid
            if MAP_BUDGET <= 0 or not _reserve(self._nbytes):
                return None
            try:
                fd = self._file()
                size = os.fstat(fd).st_size
                if size < self._extent:
                    _mapped["bytes"] -= self._nbytes
                    raise ReadError(f"{self.path}: truncated file: its data needs {self._extent} bytes, the file "
                                    f"has {size}")  # fmt: skip
                mm = mmap.mmap(fd, self._extent, access=mmap.ACCESS_READ)  # only the verified bytes
            except (OSError, ValueError) as e:
                if isinstance(e, ReadError):
                    raise
                _mapped["bytes"] -= self._nbytes
                return None
            try:
                raw = np.frombuffer(mm, dtype=np.uint8)  # one buffer export; views of it are cheap slices
                if self._table is None:
                    n = int(np.prod(self.shape)) * self.dtype.itemsize
                    views = raw[self._offset : self._offset + n].view(self.dtype).reshape(self.shape)
                else:
                    t, shape = self._table, self.chunks
                    n = int(np.prod(shape)) * self.dtype.itemsize

                    def chunk(off):
                        return raw[off : off + n].view(self.dtype).reshape(shape)

                    views = [[[[chunk(int(t[a][b][c][d])) for d in range(len(t[a][b][c]))] for c in range(len(t[a][b]))]
                              for b in range(len(t[a]))] for a in range(len(t))]  # fmt: skip
            except (TypeError, ValueError) as e:
                _mapped["bytes"] -= self._nbytes
                raise ReadError(f"{self.path}: truncated file? its data lies past the end of the file "
                                f"({len(mm)} bytes): {e}") from e  # fmt: skip
            self._views = views  # they keep the mapping alive
            return views

    def read_into(self, out: np.ndarray, lo, hi, o) -> None:
        """``out[:, o0:o0+(hi0-lo0), ...] = dataset[:, lo0:hi0, lo1:hi1, lo2:hi2]``: the inside part of a box
        (from :func:`inside_box`); the caller fills the parts outside. ``out`` may have another dtype (converted
        on copy)."""
        views = self._mapping()
        if views is not None:  # a mapped page past the end of a file truncated since: SIGBUS. Check first (cheap)
            try:
                size = os.fstat(self._file()).st_size
            except OSError as e:
                raise ReadError(f"{self.path}: cannot stat the file ({e.strerror})") from e
            if size < self._extent:
                raise ReadError(f"{self.path}: file truncated while open: its data needs {self._extent} bytes, "
                                f"the file now has {size}")  # fmt: skip
        if self._table is None:  # contiguous
            if views is not None:
                dst = out[:, o[0] : o[0] + hi[0] - lo[0], o[1] : o[1] + hi[1] - lo[1], o[2] : o[2] + hi[2] - lo[2]]
                dst[...] = views[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            else:
                self._pread_contiguous(out, lo, hi, o)
            return
        cc, cd, ch, cw = self.chunks
        item, plane = self.dtype.itemsize, ch * cw
        fd = self._file() if views is None else None
        buf = _buffer(cc * cd * plane * item) if views is None else None
        ranges = []
        for ax, c in enumerate((cd, ch, cw)):  # per axis: (chunk index, lo in chunk, hi in chunk, lo in out)
            r, g = [], lo[ax] // c
            while g * c < hi[ax]:
                a0, b0 = max(lo[ax], g * c), min(hi[ax], (g + 1) * c)
                r.append((g, a0 - g * c, b0 - g * c, a0 - lo[ax] + o[ax]))
                g += 1
            ranges.append(r)
        for gc in range(-(-self.shape[0] // cc)):
            c0, c1 = gc * cc, min(self.shape[0], gc * cc + cc)
            for gd, sd0, sd1, dd0 in ranges[0]:
                nd = sd1 - sd0
                for gh, sh0, sh1, dh0 in ranges[1]:
                    for gw, sw0, sw1, dw0 in ranges[2]:
                        if views is not None:  # a view of the mapped chunk
                            src = views[gc][gd][gh][gw][: c1 - c0, sd0:sd1]
                        elif cc == 1:  # preadv of the z-slab of planes sd0:sd1, contiguous in the chunk
                            src = buf[: nd * plane * item].view(self.dtype).reshape(1, nd, ch, cw)
                            _pread_into(fd, src, self._table[gc][gd][gh][gw] + sd0 * plane * item, self.path)
                        else:  # several channels per chunk: preadv of the whole chunk
                            src = buf[: cc * cd * plane * item].view(self.dtype).reshape(cc, cd, ch, cw)
                            _pread_into(fd, src, self._table[gc][gd][gh][gw], self.path)
                            src = src[: c1 - c0, sd0:sd1]
                        dst = out[c0:c1, dd0 : dd0 + nd, dh0 : dh0 + sh1 - sh0, dw0 : dw0 + sw1 - sw0]
                        dst[...] = src[:, :, sh0:sh1, sw0:sw1]

    def _pread_contiguous(self, out: np.ndarray, lo, hi, o) -> None:
        """Contiguous layout without a mapping: per channel and slice, one ``preadv`` of rows h0:h1 at full width."""
        fd, item = self._file(), self.dtype.itemsize
        nc, nd_, nh, nw = self.shape
        rows = hi[1] - lo[1]
        buf = _buffer(rows * nw * item)
        slab = buf[: rows * nw * item].view(self.dtype).reshape(rows, nw)
        dst_h, dst_w = slice(o[1], o[1] + rows), slice(o[2], o[2] + hi[2] - lo[2])
        for c in range(nc):
            for z in range(lo[0], hi[0]):
                _pread_into(fd, slab, self._offset + ((c * nd_ + z) * nh + lo[1]) * nw * item, self.path)
                out[c, z - lo[0] + o[0], dst_h, dst_w] = slab[:, lo[2] : hi[2]]


def _flat(table):
    """The values of a nested list (the chunk offset table)."""
    if isinstance(table, list):
        for t in table:
            yield from _flat(t)
    else:
        yield int(table)
