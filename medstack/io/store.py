"""The medstack HDF5 volume file (``.h5``): chunked for fast 3D patch reads, readable with plain h5py.

Layout (format ``medstack-volume``, version 1)::

    /                         attrs: medstack_format="medstack-volume", medstack_format_version=1
    /volumes/<name>/data      dataset (C, D, H, W), native dtype, chunked (1, cd, ch, cw), optional compression
    /volumes/<name>           attrs: affine (4x4 float64, voxel (i, j, k) = (w, h, d) -> RAS+ mm),
                                     metadata (JSON text)

One file may hold several volumes (a cohort); a single-volume file names it ``"volume"``.
``read_h5(..., lazy=True)`` returns a Volume whose data is an :class:`H5Array`: slicing it reads only
the chunks the slice touches. No pickle anywhere: affine and metadata are plain attributes/JSON.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import FormatError, MedstackError, ReadError
from medstack.io._atomic import atomic_output
from medstack.io._direct import padded_box
from medstack.volume import Volume

FORMAT = "medstack-volume"
FORMAT_VERSION = 1
EXTENSIONS = (".h5", ".hdf5")
#: Default chunk edge (voxels) along D, H, W. 64^3 int16 chunks (512 KiB) gave the fastest random
#: 96^3 patch reads in benchmarks/bench_store.py (see its docstring for the table).
DEFAULT_CHUNK = (64, 64, 64)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_OPEN_LOCK = threading.RLock()


def is_hdf5(head: bytes) -> bool:
    return head[:8] == _HDF5_MAGIC


class H5Array:
    """A read-on-demand ``(C, D, H, W)`` array backed by an HDF5 dataset.

    Behaves like a read-only NumPy array for ``shape``, ``dtype``, ``ndim``, slicing and
    ``np.asarray``. The file is opened on first access and reopened in a new process (safe with
    DataLoader workers); pickling (for multiprocessing, never to disk) sends only path and name.
    """

    def __init__(self, path, dataset: str, shape, dtype, chunks=None, *, cast=None):
        self.path = str(path)
        self.dataset = dataset
        self.shape = tuple(int(s) for s in shape)
        self.cast = None if cast is None else np.dtype(cast)  # convert each read (lazy load with dtype=)
        self.dtype = self.cast if self.cast is not None else np.dtype(dtype)
        self.chunks = None if chunks is None else tuple(int(c) for c in chunks)
        self._file = None
        self._ds = None
        self._pid = None
        self._direct = None  # DirectDataset, or False when the dataset cannot be read directly
        self._direct_pid = None  # the process _direct was made in

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def _dataset(self):
        """The h5py Dataset, opened once per process (the path lookup costs ~0.1 ms per read otherwise)."""
        import h5py

        with _OPEN_LOCK:  # threads of one process share the handle
            if self._ds is None or self._pid != os.getpid():
                if self._pid != os.getpid():
                    self._direct, self._direct_pid = None, None
                # small chunk cache: one open dataset per case per worker must not cost h5py's default 8 MiB
                try:
                    self._file = h5py.File(self.path, "r", rdcc_nbytes=1 << 20)
                    self._ds = self._file[self.dataset]
                except (OSError, KeyError) as e:
                    raise ReadError(f"{self.path}: cannot read dataset {self.dataset!r} ({e})") from e
                self._pid = os.getpid()
            return self._ds

    def _direct_reader(self):
        """Direct access to the dataset's bytes (``medstack.io._direct``: mmap or preadv), or None (compressed...).

        Once it exists, the h5py file is closed again: patch reads need only the direct reader's descriptor
        (shared by the datasets of one file), so a store of many cases does not hold two handles per case."""
        pid = os.getpid()
        if self._direct_pid == pid:
            return self._direct or None
        from medstack.io._direct import DirectDataset

        with _OPEN_LOCK:
            if self._direct_pid != pid:
                self._direct = DirectDataset.open(self.path, self._dataset()) or False
                self._direct_pid = pid
                if self._direct and self._file is not None:
                    self._file.close()
                    self._file = self._ds = None
        return self._direct or None

    def read_patch_into(self, out: np.ndarray, start, pad_value=0) -> np.ndarray:
        """Fill ``out`` (shape ``(C, pd, ph, pw)``) with the box of that size at voxel ``start`` (d, h, w);
        voxels outside the array are ``pad_value``. Uncompressed datasets are read directly (a copy from the
        mapped page cache, or ``preadv``: ``medstack.io._direct``); others through h5py. ``out`` may have another dtype
        (converted on copy). Safe to call from several threads."""
        if out.shape[0] != self.shape[0] or out.ndim != 4:
            raise MedstackError(f"{self.path}:{self.dataset}: out has shape {out.shape}, expected ({self.shape[0]}, pd, ph, pw)")  # fmt: skip
        inside = padded_box(out, self.shape[1:], start, pad_value)
        if inside is None:
            return out
        lo, hi, o = inside
        direct = self._direct_reader()
        if direct is not None:
            direct.read_into(out, lo, hi, o)
        else:
            dst = out[(slice(None), *(slice(b, b + h - low) for low, h, b in zip(lo, hi, o)))]
            dst[...] = self._dataset()[(slice(None), *(slice(low, h) for low, h in zip(lo, hi)))]
        return out

    def _out(self, arr):
        return arr if self.cast is None else arr.astype(self.cast, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        return self._out(self._dataset()[key])

    def read_box(self, start, stop) -> np.ndarray:
        """Read ``[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]`` (clipped to the array)."""
        return self[(slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))]

    def __array__(self, dtype=None, copy=None):
        arr = self._out(self._dataset()[()])
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __len__(self):
        return self.shape[0]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._ds = None
        if self._direct and self._direct_pid == os.getpid():
            self._direct.close()
        self._direct = self._direct_pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_ds"] = None
        state["_pid"] = None
        state["_direct"] = None
        state["_direct_pid"] = None
        return state

    def __repr__(self):
        return f"H5Array({self.path}:{self.dataset}, shape={self.shape}, dtype={self.dtype}, chunks={self.chunks})"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serialisable")


def metadata_json(metadata: Mapping) -> str:
    """Metadata as JSON text (numpy values and paths converted); a clear error for anything else."""
    try:
        return json.dumps(dict(metadata), default=_json_default, sort_keys=True)
    except TypeError as e:
        raise MedstackError(f"cannot store metadata as JSON: {e}; convert it to str/number/list/dict") from e


def _chunks_for(shape, chunks) -> tuple[int, ...] | None:
    if chunks is None or chunks is False:
        return None
    edge = DEFAULT_CHUNK if chunks in (True, "auto") else tuple(chunks)[-3:]
    return (1, *(max(1, min(int(e), int(s))) for e, s in zip(edge, shape[1:])))


def write_h5(
    volumes: Volume | Mapping[str, Volume],
    path,
    *,
    overwrite: bool = False,
    chunks="auto",
    compression: str | None = None,
    compression_opts=None,
) -> Path:
    """Write one Volume (or a ``{name: Volume}`` cohort) to a medstack HDF5 volume file, atomically.

    Parameters
    ----------
    chunks : "auto", tuple or None
        Chunk edge along ``(D, H, W)`` (the channel axis is chunked by 1). ``"auto"`` uses
        :data:`DEFAULT_CHUNK` clipped to the volume. ``None`` stores contiguously.
    compression : None, "gzip" or "lzf"
        HDF5 filter; ``None`` (default) gives the fastest patch reads.
    """
    import h5py

    path = Path(path)
    items = {"volume": volumes} if isinstance(volumes, Volume) else dict(volumes)
    if not items:
        raise MedstackError(f"{path}: nothing to write (empty cohort)")
    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["medstack_format"] = FORMAT
        f.attrs["medstack_format_version"] = FORMAT_VERSION
        group = f.create_group("volumes")
        for name, vol in items.items():
            if not isinstance(vol, Volume):
                raise MedstackError(f"{path}: cohort entry {name!r} is a {type(vol).__name__}, expected a Volume")
            arr = vol.to_numpy()
            g = group.create_group(str(name))
            g.create_dataset(
                "data",
                data=arr,
                chunks=_chunks_for(arr.shape, chunks),
                compression=compression,
                compression_opts=compression_opts,
            )
            g.attrs["affine"] = np.array(vol.affine)
            g.attrs["metadata"] = metadata_json(vol.metadata)
    return path


def list_h5(path) -> list[str]:
    """Names of the volumes in a medstack HDF5 file."""
    import h5py

    with _open(path, h5py) as f:
        return list(f["volumes"].keys())


def _open(path, h5py):
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path}: not a readable HDF5 file ({e})") from e
    if f.attrs.get("medstack_format") != FORMAT or "volumes" not in f:
        f.close()
        raise FormatError(
            f"{path}: HDF5 file is not a medstack volume file (no medstack_format attribute); "
            "write it with medstack.save or read the dataset with h5py"
        )
    version = int(f.attrs.get("medstack_format_version", 0))
    if version > FORMAT_VERSION:
        f.close()
        raise FormatError(f"{path}: format version {version} is newer than this medstack reads ({FORMAT_VERSION})")
    return f


def read_h5(path, *, name: str | None = None, lazy: bool = False, dtype=None) -> Volume:
    """Read one volume of a medstack HDF5 file (``name`` needed when the file holds several)."""
    import h5py

    path = Path(path)
    with _open(path, h5py) as f:
        names = list(f["volumes"].keys())
        if name is None:
            if len(names) != 1:
                raise MedstackError(
                    f"{path}: holds {len(names)} volumes; pass name= one of {names[:20]}"
                    + (" ..." if len(names) > 20 else "")
                )
            name = names[0]
        if name not in f["volumes"]:
            raise MedstackError(f"{path}: no volume named {name!r}; it holds {names[:20]}")
        g = f["volumes"][name]
        ds = g["data"]
        affine = geometry.check_affine(g.attrs["affine"], what=f"{path}:{name} affine")
        meta = json.loads(g.attrs.get("metadata", "{}"))
        meta.setdefault("source", str(path))
        meta["store_name"] = name
        if lazy:
            data = H5Array(path, ds.name, ds.shape, ds.dtype, ds.chunks, cast=dtype)
        else:
            data = ds[()]
            if dtype is not None:
                data = data.astype(dtype, copy=False)
    return Volume(data, affine, meta)
