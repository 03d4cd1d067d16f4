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
from medstack.errors import FormatError, GeometryError, MedstackError, ReadError
from medstack.io._atomic import WriteError, atomic_output, check_free_space
from medstack.io._direct import check_local_storage, padded_box
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


def read_limit() -> int | None:
    """The most bytes medstack allocates to read one dataset into memory: ``MEDSTACK_MAX_READ_BYTES`` (env, bytes)
    when set, else the memory available now (``MemAvailable``); None when neither is known."""
    env = os.environ.get("MEDSTACK_MAX_READ_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_read_size(shape, dtype, where: str) -> int:
    """Refuse to allocate a dataset read whose logical size (``shape`` x itemsize) exceeds :func:`read_limit`
    (a file claiming a huge shape with little data); returns the size in bytes. Raises ReadError naming ``where``."""
    try:
        nbytes = 1
        for s in shape:
            nbytes *= int(s)
        nbytes *= np.dtype(dtype).itemsize
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: invalid shape {shape} / dtype {dtype} ({e})") from e
    limit = read_limit()
    if limit is not None and nbytes > limit:
        raise ReadError(f"{where}: shape {tuple(int(s) for s in shape)} of {np.dtype(dtype)} needs {nbytes} bytes to "
                        f"read, more than the limit of {limit} (available memory, or MEDSTACK_MAX_READ_BYTES); "
                        "read it lazily (lazy=True) or raise the limit")  # fmt: skip
    return nbytes


def _local_child(group, name: str, where: str, kind):
    """``group[name]`` when it is a ``kind`` (h5py.Group / Dataset) stored in this file (hard or soft link, never
    an external link to another file); FormatError naming the missing / foreign member otherwise."""
    import h5py

    try:
        link = group.get(name, getlink=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{where}: cannot read member {name!r} of {group.name!r} ({e})") from e
    if link is None:
        raise FormatError(f"{where}: {group.name.rstrip('/')}/{name} is missing; not a medstack volume file?")
    if isinstance(link, h5py.ExternalLink):
        raise FormatError(f"{where}: {group.name.rstrip('/')}/{name} is an external link to {link.filename!r}; "
                          "medstack reads only data stored inside the file")  # fmt: skip
    try:
        obj = group[name]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{where}: {group.name.rstrip('/')}/{name} cannot be opened ({e})") from e
    if not isinstance(obj, kind):
        raise FormatError(f"{where}: {group.name.rstrip('/')}/{name} is a {type(obj).__name__}, expected a "
                          f"{kind.__name__}")  # fmt: skip
    return obj


def _volume_dataset(f, name: str, where: str):
    """The ``data`` dataset of volume ``name``: local, 4D, numeric (FormatError otherwise)."""
    import h5py

    vols = _local_child(f, "volumes", where, h5py.Group)
    g = _local_child(vols, name, where, h5py.Group)
    ds = _local_child(g, "data", where, h5py.Dataset)
    check_local_storage(ds, where)
    if len(ds.shape) != 4:
        raise FormatError(f"{where}: dataset {ds.name!r} has shape {ds.shape}; a volume is (C, D, H, W)")
    if ds.dtype.kind not in "biuf":
        raise FormatError(f"{where}: dataset {ds.name!r} has dtype {ds.dtype}; expected a numeric type")
    return g, ds


def _metadata(g, where: str) -> dict:
    """The JSON ``metadata`` attribute of a volume group as a dict (FormatError naming the field otherwise)."""
    raw = g.attrs.get("metadata", "{}")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if not isinstance(raw, str):
        raise FormatError(f"{where}: {g.name} attribute 'metadata' is a {type(raw).__name__}, expected JSON text")
    return json_object(raw, f"{where}: {g.name} attribute 'metadata'")


def json_object(text: str, what: str) -> dict:
    """``text`` parsed as a JSON object, or a FormatError naming ``what`` (a file, or a file and its field)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise FormatError(f"{what} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise FormatError(f"{what} is JSON {type(value).__name__}, expected an object")
    return value


def read_json_object(path, what: str) -> dict:
    """The JSON object stored in the file ``path``: ReadError when it cannot be read, FormatError naming ``what``
    (e.g. ``"<path>: manifest"``) when it is not UTF-8 text holding a JSON object."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} is not UTF-8 text ({e})") from e
    except OSError as e:
        raise ReadError(f"{what}: cannot read ({e.strerror or e})") from e
    return json_object(text, what)


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
                    f = h5py.File(self.path, "r", rdcc_nbytes=1 << 20)
                except OSError as e:
                    raise ReadError(f"{self.path}: cannot read dataset {self.dataset!r} ({e})") from e
                try:
                    ds = f.get(self.dataset)
                    if not isinstance(ds, h5py.Dataset) or ds.file.filename != f.filename:
                        raise ReadError(f"{self.path}: dataset {self.dataset!r} is missing or not stored in this file")
                    check_local_storage(ds, self.path)
                    if tuple(ds.shape) != self.shape:
                        raise ReadError(f"{self.path}: dataset {self.dataset!r} changed shape since it was opened "
                                        f"({self.shape} -> {ds.shape})")  # fmt: skip
                except BaseException as e:
                    f.close()
                    if isinstance(e, (OSError, KeyError, ValueError)) and not isinstance(e, MedstackError):
                        raise ReadError(f"{self.path}: cannot read dataset {self.dataset!r} ({e})") from e
                    raise
                self._file, self._ds = f, ds
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
            raise GeometryError(f"{self.path}:{self.dataset}: out has shape {out.shape}, expected ({self.shape[0]}, pd, ph, pw)")  # fmt: skip
        inside = padded_box(out, self.shape[1:], start, pad_value)
        if inside is None:
            return out
        lo, hi, o = inside
        direct = self._direct_reader()
        if direct is not None:
            direct.read_into(out, lo, hi, o)
        else:
            dst = out[(slice(None), *(slice(b, b + h - low) for low, h, b in zip(lo, hi, o)))]
            dst[...] = self._read((slice(None), *(slice(low, h) for low, h in zip(lo, hi))))
        return out

    def _read(self, key):
        """``dataset[key]`` through h5py; its errors (truncated or corrupt file) become ReadError."""
        ds = self._dataset()
        try:
            return ds[key]
        except (OSError, RuntimeError) as e:
            raise ReadError(f"{self.path}: cannot read dataset {self.dataset!r} ({e}); truncated or corrupt file?") from e

    def _out(self, arr):
        return arr if self.cast is None else arr.astype(self.cast, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        return self._out(self._read(key))

    def read_box(self, start, stop) -> np.ndarray:
        """Read ``[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]`` (clipped to the array)."""
        return self[(slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))]

    def __array__(self, dtype=None, copy=None):
        check_read_size(self.shape, self.dtype, f"{self.path}:{self.dataset}")
        arr = self._out(self._read(()))
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
        raise FormatError(f"cannot store metadata as JSON: {e}; convert it to str/number/list/dict") from e


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
        raise FormatError(f"{path}: nothing to write (empty cohort)")
    for name, vol in items.items():
        if not isinstance(vol, Volume):
            raise FormatError(f"{path}: cohort entry {name!r} is a {type(vol).__name__}, expected a Volume")
        if not str(name) or "/" in str(name) or str(name) in (".", ".."):
            raise FormatError(f"{path}: cohort entry name {name!r} is not a plain name (no '/', not empty)")
    # uncompressed size + margin must fit (HDF5 on a full disk can crash the process instead of failing)
    check_free_space(path, sum(int(v.nbytes) for v in items.values()))
    try:
        with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["medstack_format"] = FORMAT
            f.attrs["medstack_format_version"] = FORMAT_VERSION
            group = f.create_group("volumes")
            for name, vol in items.items():
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
    except MedstackError:
        raise
    except OSError as e:
        raise WriteError(e.errno, f"{path}: writing the HDF5 file failed ({e}); nothing was written") from e
    return path


def list_h5(path) -> list[str]:
    """Names of the volumes in a medstack HDF5 file."""
    import h5py

    with _open(path, h5py) as f:
        return list(_local_child(f, "volumes", str(path), h5py.Group).keys())


def _open(path, h5py):
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path}: not a readable HDF5 file ({e})") from e
    try:
        if not is_medstack_file(f):
            raise FormatError(
                f"{path}: HDF5 file is not a medstack volume file (no medstack_format attribute); "
                "write it with medstack.save or read the dataset with h5py"
            )
        try:
            version = int(np.asarray(f.attrs.get("medstack_format_version", 0)).reshape(()))
        except (TypeError, ValueError, OSError) as e:
            raise FormatError(f"{path}: attribute medstack_format_version is not an integer ({e})") from e
        if version > FORMAT_VERSION:
            raise FormatError(f"{path}: format version {version} is newer than this medstack reads ({FORMAT_VERSION})")
    except BaseException:
        f.close()
        raise
    return f


def is_medstack_file(f) -> bool:
    """Whether an open h5py File carries medstack's format attribute (written by medstack) and a volumes group."""
    try:
        fmt = f.attrs.get("medstack_format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", errors="replace")
        return isinstance(fmt, str) and fmt == FORMAT and "volumes" in f
    except (OSError, ValueError, TypeError, KeyError):
        return False


def read_h5(path, *, name: str | None = None, lazy: bool = False, dtype=None) -> Volume:
    """Read one volume of a medstack HDF5 file (``name`` needed when the file holds several)."""
    import h5py

    path = Path(path)
    where = str(path)
    with _open(path, h5py) as f:
        names = list(_local_child(f, "volumes", where, h5py.Group).keys())
        if name is None:
            if len(names) != 1:
                raise FormatError(
                    f"{path}: holds {len(names)} volumes; pass name= one of {names[:20]}"
                    + (" ..." if len(names) > 20 else "")
                )
            name = names[0]
        if name not in names:
            raise FormatError(f"{path}: no volume named {name!r}; it holds {names[:20]}")
        g, ds = _volume_dataset(f, name, where)
        if "affine" not in g.attrs:
            raise FormatError(f"{path}: {g.name} has no 'affine' attribute")
        try:
            raw_affine = g.attrs["affine"]
        except (OSError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: {g.name} attribute 'affine' cannot be read ({e})") from e
        affine = geometry.check_affine(raw_affine, what=f"{path}:{name} affine")
        meta = _metadata(g, where)
        meta.setdefault("source", str(path))
        meta["store_name"] = name
        if lazy:
            data = H5Array(path, ds.name, ds.shape, ds.dtype, ds.chunks, cast=dtype)
        else:
            check_read_size(ds.shape, ds.dtype, f"{path}:{ds.name}")
            try:
                data = ds[()]
            except (OSError, RuntimeError) as e:
                raise ReadError(f"{path}: cannot read dataset {ds.name!r} ({e}); truncated or corrupt file?") from e
            if dtype is not None:
                data = data.astype(dtype, copy=False)
    return Volume(data, affine, meta)
