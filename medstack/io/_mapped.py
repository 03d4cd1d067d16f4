"""Zero-copy reads of uncompressed HDF5 datasets through ``mmap``: a patch is copied once, from the page cache
straight into the caller's array, touching only its own bytes.

h5py reads whole chunks into its chunk cache and copies the selection out of them: for a 96^3 patch over
64^3 chunks that is ~4x the patch's bytes through memory, plus per-call overhead. An HDF5 dataset without
filters stores each chunk (or the whole contiguous array) as raw C-order bytes at a file offset that h5py
reports (``get_chunk_info`` / ``get_offset``), so those bytes can be viewed as NumPy arrays on a read-only
``mmap`` of the file and copied from directly (NumPy releases the GIL for these copies, so threads scale).

Memory: pages of a file mapping count in the process's RSS once touched. All mappings of a process share
one budget (:data:`MAP_BUDGET`, bytes spanned by recent reads): when it is exceeded, every mapping is told
``MADV_DONTNEED`` (the pages leave the RSS; the data stays in the page cache and is mapped back on the next
read). So RSS does not grow with the number of cases read.

Datasets that cannot be mapped (filters/compression, non-native byte order, unallocated chunks, file
drivers other than the default) return ``None`` from :meth:`MappedDataset.open`; callers fall back to h5py.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import weakref

import numpy as np

__all__ = ["MAP_BUDGET", "MappedDataset"]

MAP_BUDGET = 256 << 20  # bytes of mapped file pages a process keeps before dropping them (all mappings)

_lock = threading.Lock()
_live: weakref.WeakSet = weakref.WeakSet()
_spanned = [0]


def _account(nbytes: int) -> None:
    """Record ``nbytes`` of mapping touched; over the budget, drop the pages of every live mapping."""
    with _lock:
        _spanned[0] += nbytes
        if _spanned[0] <= MAP_BUDGET:
            return
        _spanned[0] = 0
        for m in list(_live):
            m.drop_pages()


class MappedDataset:
    """A read-only view of one uncompressed HDF5 dataset's bytes (see the module docstring)."""

    def __init__(self, path: str, shape, dtype, mm: mmap.mmap, *, offset=None, chunks=None, table=None):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self._mm = mm
        self._offset = offset  # contiguous: byte offset of the array
        self.chunks = None if chunks is None else tuple(chunks)
        self._table = table  # chunked: byte offset per chunk grid position
        self._chunk_bytes = 0 if chunks is None else int(np.prod(chunks)) * self.dtype.itemsize
        _live.add(self)

    @classmethod
    def open(cls, path, ds) -> MappedDataset | None:
        """Map ``ds`` (an open h5py Dataset of file ``path``), or None when its bytes are not raw on disk."""
        import h5py

        try:
            plist = ds.id.get_create_plist()
            if plist.get_nfilters() != 0 or ds.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
                return None
            if ds.dtype.kind not in "biuf" or ds.file.driver not in ("sec2", None):
                return None
            layout = plist.get_layout()
            fd = os.open(path, os.O_RDONLY)
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            if layout == h5py.h5d.CONTIGUOUS:
                offset = ds.id.get_offset()
                if offset is None:
                    return None
                return cls(path, ds.shape, ds.dtype, mm, offset=int(offset))
            if layout != h5py.h5d.CHUNKED:
                return None
            chunks = ds.chunks
            grid = tuple(-(-s // c) for s, c in zip(ds.shape, chunks))
            table = np.full(grid, -1, dtype=np.int64)
            full = int(np.prod(chunks)) * ds.dtype.itemsize
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.size != full or info.byte_offset is None:
                    return None
                table[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = info.byte_offset
            if (table < 0).any():  # never-written chunks (fill value): let h5py handle them
                return None
            return cls(path, ds.shape, ds.dtype, mm, chunks=chunks, table=table)
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    def drop_pages(self) -> None:
        """Let the kernel unmap the touched pages (they leave the RSS; the page cache keeps the data)."""
        try:
            self._mm.madvise(mmap.MADV_DONTNEED)
        except (ValueError, OSError, AttributeError):  # closed, or no madvise on this platform
            pass

    def read_into(self, out: np.ndarray, start) -> None:
        """``out[:] = dataset[:, d0:d0+pd, h0:h0+ph, w0:w0+pw]`` for the part of the box inside the dataset
        (``out`` has the box's shape ``(C, pd, ph, pw)``; the caller fills the parts outside)."""
        box = out.shape[1:]
        lo = [max(0, int(s)) for s in start]
        hi = [min(n, int(s) + b) for n, s, b in zip(self.shape[1:], start, box)]
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            return
        o = [lo_ - int(s) for lo_, s in zip(lo, start)]  # where the inside part starts in ``out``
        nc = self.shape[0]
        if self._table is None:
            arr = np.ndarray(self.shape, self.dtype, buffer=self._mm, offset=self._offset)
            src = arr[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            out[:, o[0] : o[0] + hi[0] - lo[0], o[1] : o[1] + hi[1] - lo[1], o[2] : o[2] + hi[2] - lo[2]] = src
            _account(nc * (hi[0] - lo[0]) * (hi[1] - lo[1]) * self.shape[3] * self.dtype.itemsize)
            return
        cc, cd, ch, cw = self.chunks
        spans = [range(lo[a] // c, (hi[a] - 1) // c + 1) for a, c in zip(range(3), (cd, ch, cw))]
        spanned = 0
        for c0 in range(0, nc, cc):
            c1 = min(nc, c0 + cc)
            for gd, gh, gw in itertools.product(*spans):
                base = (gd * cd, gh * ch, gw * cw)
                a = [max(lo[k], base[k]) for k in range(3)]
                b = [min(hi[k], base[k] + (cd, ch, cw)[k]) for k in range(3)]
                chunk = np.ndarray((cc, cd, ch, cw), self.dtype, buffer=self._mm,
                                   offset=int(self._table[c0 // cc, gd, gh, gw]))  # fmt: skip
                src = chunk[: c1 - c0, a[0] - base[0] : b[0] - base[0], a[1] - base[1] : b[1] - base[1],
                            a[2] - base[2] : b[2] - base[2]]  # fmt: skip
                dst = out[c0:c1, a[0] - lo[0] + o[0] : b[0] - lo[0] + o[0], a[1] - lo[1] + o[1] : b[1] - lo[1] + o[1],
                          a[2] - lo[2] + o[2] : b[2] - lo[2] + o[2]]  # fmt: skip
                dst[...] = src
                spanned += (c1 - c0) * (b[0] - a[0]) * ch * cw
        _account(spanned * self.dtype.itemsize)
