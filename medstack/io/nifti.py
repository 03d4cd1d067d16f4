"""NIfTI-1 / NIfTI-2 reading and writing (.nii, .nii.gz; .hdr/.img pairs through nibabel).

Reading parses the header with nibabel and decodes the voxel block straight into the output array:
NIfTI stores ``x`` fastest, which is exactly C order for ``(C, D, H, W)``, so no transpose is needed.
``.nii.gz`` is inflated with ISA-L (``isal``) in bounded blocks and scaled/cast block by block, so a
float32 result never goes through a full-size intermediate array.

Affine choice (documented contract): the sform when ``sform_code > 0``; else the qform when
``qform_code > 0``; else the ANALYZE-style affine from ``pixdim`` (with a warning, as such files have
no reliable orientation). The choice is recorded in ``metadata["affine_source"]``.

Values: when ``scl_slope`` is neither 0/NaN nor 1, or ``scl_inter`` is neither 0/NaN, the stored values
are scaled (``slope * stored + inter``) and returned as float32 (float64 when stored as float64);
otherwise the stored dtype is kept. ``dtype=`` overrides both.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import FormatError, GeometryError, ReadError
from medstack.io._atomic import atomic_output
from medstack.volume import Volume

logger = logging.getLogger(__name__)

_BLOCK = 1 << 22  # bytes of decoded data handled per step: fits in L2/L3, amortises Python overhead
_GZ_MAGIC = b"\x1f\x8b"
EXTENSIONS = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz")


def is_nifti_header(head: bytes) -> bool:
    """True if ``head`` (the first bytes of an uncompressed stream) starts a NIfTI-1/2 single file."""
    if len(head) < 348:
        return False
    for order in "<>":
        n = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if n == 348 and head[344:347] == b"n+1":
            return True
        if n == 540 and head[4:7] == b"n+2":
            return True
    return False


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == _GZ_MAGIC
    if gz:
        from isal import igzip

        return igzip.open(path, "rb")
    return open(path, "rb")


def _read_header(f, path: Path):
    import nibabel as nib

    head = f.read(348)
    if len(head) < 348:
        raise FormatError(f"{path}: truncated NIfTI header ({len(head)} bytes, expected at least 348)")
    for order in "<>":
        n = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if n == 348:
            return nib.Nifti1Header(head, check=False), "nifti1", 348
        if n == 540:
            head += f.read(192)
            if len(head) < 540:
                raise FormatError(f"{path}: truncated NIfTI-2 header ({len(head)} bytes, expected 540)")
            return nib.Nifti2Header(head, check=False), "nifti2", 540
    raise FormatError(f"{path}: not a NIfTI file (sizeof_hdr is neither 348 nor 540)")


def choose_affine(header, path) -> tuple[np.ndarray, str]:
    """The affine of a NIfTI header by the documented sform > qform > pixdim rule, validated."""
    sform, scode = header.get_sform(coded=True)
    if scode and scode > 0:
        source, affine = "sform", sform
    else:
        qform, qcode = header.get_qform(coded=True)
        if qcode and qcode > 0:
            source, affine = "qform", qform
        else:
            source, affine = "pixdim", header.get_base_affine()
            warnings.warn(
                f"{path}: NIfTI has sform_code = qform_code = 0; using the pixdim (ANALYZE) affine, whose "
                "orientation is a guess",
                stacklevel=3,
            )
    try:
        return geometry.check_affine(affine, what=f"{path}: NIfTI {source}"), source
    except GeometryError as e:
        raise GeometryError(f"{e}; fix the header (e.g. with nibabel or fslorient) before loading") from None


def _scaling(header) -> tuple[float | None, float | None]:
    slope, inter = header.get_slope_inter()
    if slope is None or not np.isfinite(slope) or slope == 0:
        slope = None
    if inter is None or not np.isfinite(inter):
        inter = None
    if slope in (None, 1.0) and inter in (None, 0.0):
        return None, None
    return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))


def _layout(header, path) -> tuple[tuple[int, ...], tuple[int, int, int, int]]:
    shape = tuple(int(s) for s in header.get_data_shape())
    if not shape or any(s <= 0 for s in shape):
        raise FormatError(f"{path}: NIfTI header has an empty or invalid shape {shape}")
    xyz = (*shape, 1, 1, 1)[:3]
    c = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    return shape, (c, xyz[2], xyz[1], xyz[0])


def read_nifti(path, *, dtype=None, mmap: bool = False) -> Volume:
    """Read a NIfTI-1/2 file into a :class:`Volume` ``(C, D, H, W)``.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` (NIfTI-1 or NIfTI-2, either byte order). ``.hdr``/``.img`` pairs are
        read through nibabel.
    dtype : numpy dtype, optional
        Output dtype. Default: the stored dtype, or float32 when scl_slope/scl_inter scale the data.
    mmap : bool
        For an uncompressed, unscaled, native-order ``.nii`` with no ``dtype`` change, return a read-only
        memory map instead of reading the file.
    """
    path = Path(path)
    if path.suffix.lower() in (".hdr", ".img") or path.name.lower().endswith((".hdr.gz", ".img.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as e:
            raise FormatError(f"{path}: cannot read NIfTI/ANALYZE pair: {e}") from e
        return from_nibabel(img, dtype=dtype, source=path)
    try:
        f = _open(path)
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReadError(f"{path}: is a folder, expected a NIfTI file") from None
    with f:
        try:
            header, kind, consumed = _read_header(f, path)
            shape, cdhw = _layout(header, path)
            affine, source = choose_affine(header, path)
            slope, inter = _scaling(header)
            stored = header.get_data_dtype()
            out_dtype = np.dtype(dtype) if dtype is not None else _default_dtype(stored, slope)
            offset = int(header.get_data_offset())
            offset = max(offset, consumed + 4)  # single-file NIfTI: header + 4-byte extension flag
            nbytes = int(np.prod(cdhw)) * stored.itemsize
            if (
                mmap
                and slope is None
                and out_dtype == stored
                and stored.isnative
                and not path.name.lower().endswith(".gz")
            ):
                data = np.memmap(path, dtype=stored, mode="r", offset=offset, shape=cdhw)
                if data.nbytes < nbytes:
                    raise FormatError(f"{path}: truncated voxel data")
            else:
                f.read(offset - consumed)
                data = np.empty(cdhw, dtype=out_dtype)
                got = _decode_into(f, data.reshape(-1), stored, slope, inter)
                if got < nbytes:
                    raise FormatError(
                        f"{path}: truncated voxel data: header promises {nbytes} bytes "
                        f"({'x'.join(map(str, shape))} {stored}), file holds {got}"
                    )
        except (ReadError, GeometryError):
            raise
        except (EOFError, OSError, ValueError, *_decoder_errors()) as e:
            raise FormatError(f"{path}: corrupt or truncated NIfTI ({type(e).__name__}: {e})") from e
    meta = {
        "source": str(path),
        "format": kind,
        "affine_source": source,
        "stored_dtype": str(stored.newbyteorder("=")),
        "nifti_shape": list(shape),
    }
    if slope is not None:
        meta.update(scl_slope=slope, scl_inter=inter)
    descrip = header.get("descrip")
    if descrip is not None and bytes(descrip).strip(b"\0 "):
        meta["description"] = bytes(descrip).rstrip(b"\0").decode("latin-1").strip()
    return Volume(data, affine, meta)


def _decoder_errors() -> tuple[type[Exception], ...]:
    """Exceptions a corrupt gzip stream raises (ISA-L's IsalError is not an OSError)."""
    import zlib

    from isal import isal_zlib

    return zlib.error, isal_zlib.IsalError


def _default_dtype(stored: np.dtype, slope) -> np.dtype:
    if slope is None:
        return stored.newbyteorder("=")
    return np.dtype(np.float64) if stored == np.float64 else np.dtype(np.float32)


def _decode_into(f, out: np.ndarray, stored: np.dtype, slope, inter) -> int:
    """Read voxel bytes from ``f`` block by block into flat ``out`` (casting/scaling on the fly).

    Returns the number of stored bytes consumed (less than needed means truncated).
    """
    itemsize = stored.itemsize
    direct = slope is None and out.dtype == stored
    if direct:
        buf = memoryview(out.view(np.uint8))
        total = 0
        while total < len(buf):
            n = f.readinto(buf[total : total + _BLOCK * 4])
            if not n:
                break
            total += n
        return total
    n_items = out.size
    pos = 0
    total = 0
    step = max(_BLOCK // itemsize, 1)
    scratch = bytearray(step * itemsize)
    view = memoryview(scratch)
    while pos < n_items:
        want = min(step, n_items - pos) * itemsize
        got = 0
        while got < want:
            n = f.readinto(view[got:want])
            if not n:
                break
            got += n
        total += got
        k = got // itemsize
        if k == 0:
            break
        src = np.frombuffer(scratch, dtype=stored, count=k)
        dst = out[pos : pos + k]
        if slope is None:
            dst[...] = src
        else:
            np.multiply(src, slope, out=dst, casting="unsafe")
            if inter:
                dst += inter
        pos += k
        if got < want:
            break
    return total


def from_nibabel(img, *, dtype=None, source=None) -> Volume:
    """A :class:`Volume` from a nibabel NIfTI/ANALYZE image (same affine and scaling rules as :func:`read_nifti`)."""
    header = img.header
    where = source if source is not None else "nibabel image"
    if hasattr(header, "get_sform"):
        affine, source_kind = choose_affine(header, where)
    else:
        affine, source_kind = geometry.check_affine(img.affine, what=f"{where}: affine"), "affine"
    arr = np.asarray(img.dataobj)
    shape = arr.shape
    xyz = (*shape, 1, 1, 1)[:3]
    c = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    # (x, y, z, t, ...) Fortran layout -> (C, D, H, W): transpose of the flattened reshape
    arr = arr.reshape((*xyz, c), order="F").transpose(3, 2, 1, 0)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    meta = {"affine_source": source_kind, "nifti_shape": list(shape)}
    if source is not None:
        meta["source"] = str(source)
    return Volume(np.ascontiguousarray(arr), affine, meta)


def _nifti_array(volume: Volume) -> np.ndarray:
    arr = np.ascontiguousarray(volume.to_numpy())
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr


def _header_for(volume: Volume, arr: np.ndarray, *, nifti2: bool | None = None):
    import nibabel as nib

    c, d, h, w = arr.shape
    shape: tuple[int, ...] = (w, h, d) if c == 1 else (w, h, d, c)
    extra = volume.metadata.get("nifti_shape")
    if c > 1 and extra is not None and len(extra) > 4 and int(np.prod(extra[3:])) == c and list(extra[:3]) == [w, h, d]:
        shape = tuple(int(s) for s in extra)
    if nifti2 is None:
        nifti2 = max(shape) > 32767
    header = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(arr.dtype)
    affine = np.array(volume.affine)
    header.set_sform(affine, code=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qform cannot hold shear: nibabel stores the closest rotation
        header.set_qform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = 544 if nifti2 else 352
    desc = volume.metadata.get("description")
    if isinstance(desc, str):
        header["descrip"] = desc.encode("latin-1", "replace")[:79]
    return header


def to_nibabel(volume: Volume):
    """A ``nibabel.Nifti1Image`` view of a Volume: data ``(x, y, z[, c])``, sform = qform = affine."""
    import nibabel as nib

    arr = _nifti_array(volume)
    header = _header_for(volume, arr)
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    data = arr.transpose(3, 2, 1, 0).reshape(header.get_data_shape(), order="F") if arr.shape[0] > 1 else arr[0].T
    img = cls(data, np.array(volume.affine), header=header)
    img.set_sform(np.array(volume.affine), code=1)
    return img


def write_nifti(volume: Volume, path, *, overwrite: bool = False, compresslevel: int = 1) -> Path:
    """Write a Volume as NIfTI (``.nii`` or ``.nii.gz``), atomically.

    The sform and qform are both set to the affine (code 1, scanner); shear that a qform cannot hold
    is kept in the sform. ``compresslevel`` is ISA-L's 0-3 (1: fast, near zlib level 6 size).
    """
    path = Path(path)
    arr = _nifti_array(volume)
    header = _header_for(volume, arr)
    head = header.binaryblock
    pad = int(header["vox_offset"]) - len(head)
    gz = path.name.lower().endswith(".gz")
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as raw:
            if gz:
                from isal import igzip

                with igzip.IGzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as g:
                    _write_payload(g, head, pad, arr)
            else:
                _write_payload(raw, head, pad, arr)
    return path


def _write_payload(f, head: bytes, pad: int, arr: np.ndarray) -> None:
    f.write(head)
    f.write(b"\0" * pad)
    flat = memoryview(arr.reshape(-1).view(np.uint8))
    for start in range(0, len(flat), _BLOCK * 4):
        f.write(flat[start : start + _BLOCK * 4])
