"""Direct reads of uncompressed HDF5 datasets: the bytes of a patch are read with ``preadv`` at the file offsets
h5py reports, without h5py's chunk cache and per-call machinery.

An HDF5 dataset without filters stores each chunk (or the whole contiguous array) as raw C-order bytes at a
file offset (``get_chunk_info`` / ``get_offset``). For each chunk a patch overlaps, only the slab of chunk
planes it spans is read (one ``preadv`` into a per-thread buffer), then the patch's rows are copied out of
it with NumPy. Both the system call and the NumPy copy release the GIL, so reader threads scale. h5py
instead reads and caches whole chunks and copies through its own buffers (about 4x the patch's bytes for a
96^3 patch over 64^3 chunks, plus ~0.1 ms of overhead per call).

Measured against ``mmap`` of the same bytes: equally fast once every page is mapped, but mapped pages count
in the process's RSS (growing with the number of cases read) and dropping them costs page faults on every
later read. ``preadv`` keeps memory flat: only the per-thread slab buffer (one chunk at most).

Datasets that cannot be read this way (filters/compression, non-native byte order, unallocated chunks,
drivers other than the default) return ``None`` from :meth:`DirectDataset.open`; callers fall back to h5py.
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["DirectDataset"]

_local = threading.local()


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
        from medstack.errors import ReadError

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

    @classmethod
    def open(cls, path, ds) -> DirectDataset | None:
        """For ``ds`` (an open h5py Dataset of file ``path``), or None when its bytes are not raw on disk."""
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
            table = np.full(grid, -1, dtype=np.int64)
            full = int(np.prod(chunks)) * ds.dtype.itemsize
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.size != full or info.byte_offset is None:
                    return None
                table[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = info.byte_offset
            if (table < 0).any():  # never-written chunks (fill value): let h5py handle them
                return None
            return cls(path, ds.shape, ds.dtype, chunks=chunks, table=table.tolist())
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass

    def read_into(self, out: np.ndarray, start) -> None:
        """``out[:] = dataset[:, d0:d0+pd, h0:h0+ph, w0:w0+pw]`` for the part of the box inside the dataset
        (``out`` has the box's shape ``(C, pd, ph, pw)``; the caller fills the parts outside). ``out`` may have
        another dtype (converted on copy)."""
        box = out.shape[1:]
        start = [int(s) for s in start]
        lo = [max(0, s) for s in start]
        hi = [min(n, s + b) for n, s, b in zip(self.shape[1:], start, box)]
        if any(h <= low for low, h in zip(lo, hi)):
            return
        o = [low - s for low, s in zip(lo, start)]  # where the inside part starts in ``out``
        fd, item = self._file(), self.dtype.itemsize
        nc, _, nh, nw = self.shape
        if self._table is None:  # contiguous: per channel and slice, the rows h0:h1 at full width
            rows = hi[1] - lo[1]
            buf = _buffer(rows * nw * item)
            dst_h, dst_w = slice(o[1], o[1] + rows), slice(o[2], o[2] + hi[2] - lo[2])
            for c in range(nc):
                for z in range(lo[0], hi[0]):
                    slab = buf[: rows * nw * item].view(self.dtype).reshape(rows, nw)
                    _pread_into(fd, slab, self._offset + ((c * self.shape[1] + z) * nh + lo[1]) * nw * item, self.path)
                    out[c, z - lo[0] + o[0], dst_h, dst_w] = slab[:, lo[2] : hi[2]]
            return
        cc, cd, ch, cw = self.chunks
        ranges = []
        for ax, c in enumerate((cd, ch, cw)):  # per axis: (chunk index, lo in chunk, hi in chunk, lo in out)
            r, g = [], lo[ax] // c
            while g * c < hi[ax]:
                a0, b0 = max(lo[ax], g * c), min(hi[ax], (g + 1) * c)
                r.append((g, a0 - g * c, b0 - g * c, a0 - lo[ax] + o[ax]))
                g += 1
            ranges.append(r)
        plane = ch * cw
        buf = _buffer(cc * cd * plane * item)
        for gc in range(-(-nc // cc)):
            c0, c1 = gc * cc, min(nc, gc * cc + cc)
            table_c = self._table[gc]
            for gd, sd0, sd1, dd0 in ranges[0]:
                nd = sd1 - sd0
                for gh, sh0, sh1, dh0 in ranges[1]:
                    offsets = table_c[gd][gh]
                    for gw, sw0, sw1, dw0 in ranges[2]:
                        if cc == 1:  # the z-slab of planes sd0:sd1 is contiguous in the chunk
                            slab = buf[: nd * plane * item].view(self.dtype).reshape(1, nd, ch, cw)
                            _pread_into(fd, slab, offsets[gw] + sd0 * plane * item, self.path)
                        else:  # several channels per chunk: read the whole chunk
                            slab = buf[: cc * cd * plane * item].view(self.dtype).reshape(cc, cd, ch, cw)
                            _pread_into(fd, slab, offsets[gw], self.path)
                            slab = slab[:, sd0:sd1]
                        dst = out[c0:c1, dd0 : dd0 + nd, dh0 : dh0 + sh1 - sh0, dw0 : dw0 + sw1 - sw0]
                        dst[...] = slab[: c1 - c0, :, sh0:sh1, sw0:sw1]
