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

Bad headers: before any voxel memory is allocated, the fields that size the data are checked (datatype known
and supported, bitpix consistent with it, dim[0] in 1..7 and every used dim positive, vox_offset finite and
non-negative) and the promised bytes (product of dims x item size, computed without overflow) must be in the
file (``.nii``: its size; ``.nii.gz``: what the compressed size can inflate to at most, then the bounded
reader's count). Failures are :class:`~medstack.errors.FormatError` naming the file and the field; a
NaN/zero/singular affine is a :class:`~medstack.errors.GeometryError`; pixdim values the chosen sform did not
need are recorded in ``metadata["header_findings"]``. RGB24 / RGBA32 (datatype 128 / 2304) voxels load as
3 / 4 uint8 channels (``metadata["color"]``).
"""

from __future__ import annotations

import logging
import math
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
        if n == 348:  # the byte order is sizeof_hdr's (nibabel would guess it from dim[0], which may be corrupt)
            return nib.Nifti1Header(head, endianness=order, check=False), "nifti1", 348
        if n == 540:
            head += f.read(192)
            if len(head) < 540:
                raise FormatError(f"{path}: truncated NIfTI-2 header ({len(head)} bytes, expected 540)")
            return nib.Nifti2Header(head, endianness=order, check=False), "nifti2", 540
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


#: NIfTI datatype code -> (numpy dtype, values per voxel). 128 (RGB24) and 2304 (RGBA32) are interleaved
#: uint8 colour components: they become 3 / 4 channels. Codes not here (0 unknown, 1 binary, 1536 float128,
#: 2048 complex256, and any other number) are refused with a FormatError naming the datatype field.
DATATYPES = {
    2: ("u1", 1), 4: ("i2", 1), 8: ("i4", 1), 16: ("f4", 1), 32: ("c8", 1), 64: ("f8", 1), 128: ("u1", 3),
    256: ("i1", 1), 512: ("u2", 1), 768: ("u4", 1), 1024: ("i8", 1), 1280: ("u8", 1), 1792: ("c16", 1),
    2304: ("u1", 4),
}  # fmt: skip
_DATATYPE_NAMES = {0: "unknown (DT_UNKNOWN)", 1: "binary (1 bit)", 1536: "float128", 2048: "complex256"}
#: deflate cannot expand data more than ~1032:1; a .nii.gz claiming more voxel bytes than that is corrupt
_MAX_DEFLATE_RATIO = 1040


def _field(header, name):
    try:
        return np.asarray(header[name])
    except (KeyError, ValueError) as e:  # pragma: no cover - every NIfTI header has these fields
        raise FormatError(f"header has no field {name}: {e}") from None


def _layout(header, path, *, kind: str = "nifti1"):
    """Validate the header fields that size the voxel block, BEFORE anything is allocated.

    Returns ``(shape, cdhw, stored dtype, components per voxel)``; raises :class:`FormatError` naming the
    file and the header field (datatype, bitpix, dim) that is unknown, unsupported or inconsistent.
    """
    code = int(_field(header, "datatype"))
    if code not in DATATYPES:
        what = _DATATYPE_NAMES.get(code, "not a NIfTI data type code")
        raise FormatError(f"{path}: NIfTI header field datatype = {code} is {what}; medstack reads datatype codes "
                          f"{sorted(DATATYPES)}")  # fmt: skip
    base, k = DATATYPES[code]
    order = "<" if getattr(header, "endianness", "<") in ("<", "little") else ">"
    stored = np.dtype(base).newbyteorder(order) if np.dtype(base).itemsize > 1 else np.dtype(base)
    bitpix = int(_field(header, "bitpix"))
    if bitpix != stored.itemsize * k * 8:
        raise FormatError(f"{path}: NIfTI header field bitpix = {bitpix} does not match datatype = {code} "
                          f"({stored.itemsize * k * 8} bits per voxel); the header is corrupt")  # fmt: skip
    dim = [int(v) for v in _field(header, "dim").reshape(-1)]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise FormatError(f"{path}: NIfTI header field dim[0] = {ndim} (number of dimensions) must be 1..7")
    shape = tuple(dim[1 : ndim + 1])
    bad = [i + 1 for i, s in enumerate(shape) if s < 1]
    if bad:
        raise FormatError(f"{path}: NIfTI header field dim[{bad[0]}] = {shape[bad[0] - 1]} must be a positive "
                          f"size (dim = {dim[: ndim + 1]})")  # fmt: skip
    xyz = (*shape, 1, 1, 1)[:3]
    c = math.prod(shape[3:]) if len(shape) > 3 else 1
    return shape, (c, xyz[2], xyz[1], xyz[0]), stored, k


def _data_offset(header, path, consumed: int) -> int:
    raw = float(_field(header, "vox_offset"))
    if not math.isfinite(raw) or raw < 0 or raw > 2**62:
        raise FormatError(f"{path}: NIfTI header field vox_offset = {raw} is not a valid byte offset")
    offset = int(raw)
    if 0 < offset < consumed + 4:
        raise FormatError(f"{path}: NIfTI header field vox_offset = {raw:g} lies inside the {consumed}-byte header "
                          f"and its 4-byte extension flag (a single-file NIfTI's data start at {consumed + 4} or later)")  # fmt: skip
    return max(offset, consumed + 4)  # 0: legacy 'right after the header and extension flag'


def _check_size(path, nbytes: int, offset: int, shape, stored, k, *, gz: bool, file_size: int) -> None:
    """Refuse, before allocating, a header whose voxel block cannot be in the file."""
    desc = f"dim = {'x'.join(map(str, shape))} of {stored.newbyteorder('=')}" + (f" x{k}" if k > 1 else "")
    if gz:
        if nbytes + offset > file_size * _MAX_DEFLATE_RATIO + (1 << 16):
            raise FormatError(f"{path}: NIfTI header fields dim/datatype promise {nbytes} bytes of voxels ({desc}) "
                              f"but the gzip file has only {file_size} bytes, which cannot inflate to that much; "
                              "the header is corrupt or the file truncated")  # fmt: skip
    elif file_size - offset < nbytes:
        raise FormatError(f"{path}: truncated voxel data: NIfTI header fields dim/datatype/vox_offset promise "
                          f"{nbytes} bytes ({desc}) from byte {offset}, the file holds {max(file_size - offset, 0)}")  # fmt: skip


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

        _precheck_pair_header(path)
        try:
            img = nib.load(str(path))
        except Exception as e:
            raise FormatError(f"{path}: cannot read NIfTI/ANALYZE pair: {e}") from e
        _check_pair(img, path)
        try:
            return from_nibabel(img, dtype=dtype, source=path)
        except (ReadError, GeometryError):
            raise
        except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, ZeroDivisionError,
                *_decoder_errors()) as e:  # fmt: skip
            raise FormatError(f"{path}: corrupt or truncated NIfTI/ANALYZE pair ({type(e).__name__}: {e})") from e
    try:
        f = _open(path)
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReadError(f"{path}: is a folder, expected a NIfTI file") from None
    gz = _is_gz(path)
    with f:
        try:
            header, kind, consumed = _read_header(f, path)
            shape, cdhw, stored, k = _layout(header, path, kind=kind)
            affine, source = choose_affine(header, path)
            slope, inter = _scaling(header) if k == 1 else (None, None)  # scaling never applies to RGB
            out_dtype = np.dtype(dtype) if dtype is not None else _default_dtype(stored, slope)
            offset = _data_offset(header, path, consumed)
            nbytes = math.prod(cdhw) * stored.itemsize * k
            _check_size(path, nbytes, offset, shape, stored, k, gz=gz, file_size=path.stat().st_size)
            if k > 1:
                data = _read_components(f, path, offset - consumed, cdhw, k, nbytes, out_dtype)
            elif mmap and slope is None and out_dtype == stored and stored.isnative and not gz:
                data = np.memmap(path, dtype=stored, mode="r", offset=offset, shape=cdhw)
                if data.nbytes < nbytes:
                    raise FormatError(f"{path}: truncated voxel data")
            else:
                _skip(f, offset - consumed)
                data = _empty(cdhw, out_dtype, path, nbytes)
                got = _decode_into(f, data.reshape(-1), stored, slope, inter)
                if got < nbytes:
                    raise FormatError(
                        f"{path}: truncated voxel data: header promises {nbytes} bytes "
                        f"({'x'.join(map(str, shape))} {stored}), file holds {got}"
                    )
        except (ReadError, GeometryError):
            raise
        except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, ZeroDivisionError,
                *_decoder_errors()) as e:  # fmt: skip
            raise FormatError(f"{path}: corrupt or truncated NIfTI ({type(e).__name__}: {e})") from e
        except Exception as e:
            if type(e).__name__ != "HeaderDataError":  # nibabel's, raised on inconsistent header fields
                raise
            raise FormatError(f"{path}: corrupt NIfTI header ({e})") from e
    meta = {
        "source": str(path),
        "format": kind,
        "affine_source": source,
        "stored_dtype": str(stored.newbyteorder("=")) if k == 1 else ("rgb24" if k == 3 else "rgba32"),
        "nifti_shape": list(shape),
    }
    if slope is not None:
        meta.update(scl_slope=slope, scl_inter=inter)
    if k > 1:
        meta["color"] = "RGB" if k == 3 else "RGBA"
    findings = _pixdim_findings(header, source)
    if findings:
        meta["header_findings"] = findings
    descrip = header.get("descrip")
    if descrip is not None and bytes(descrip).strip(b"\0 "):
        meta["description"] = bytes(descrip).rstrip(b"\0").decode("latin-1").strip()
    return Volume(data, affine, meta)


def _decoder_errors() -> tuple[type[Exception], ...]:
    """Exceptions a corrupt gzip stream raises (ISA-L's IsalError is not an OSError)."""
    import zlib

    from isal import isal_zlib

    return zlib.error, isal_zlib.IsalError


def _pixdim_findings(header, source: str) -> list[str]:
    """pixdim[1..3] that are not positive finite numbers, when the affine did not need them (sform)."""
    try:
        pixdim = [float(v) for v in np.asarray(header["pixdim"]).reshape(-1)[1:4]]
    except (KeyError, TypeError, ValueError):  # pragma: no cover
        return []
    return [f"NIfTI header field pixdim[{i}] = {v} is not a positive finite voxel size; the affine comes from the "
            f"{source}, which is used as is" for i, v in enumerate(pixdim, 1) if not (math.isfinite(v) and v > 0)]  # fmt: skip


def _precheck_pair_header(path: Path) -> None:
    """The .hdr of a pair through :func:`_layout` before nibabel parses it (field-named errors, not nibabel's)."""
    name = path.name
    low = name.lower()
    for img_ext, hdr_ext in ((".img.gz", ".hdr.gz"), (".img", ".hdr")):
        if low.endswith(img_ext):
            candidates = [path.with_name(name[: -len(img_ext)] + h) for h in (hdr_ext, hdr_ext.upper())]
            hdr = next((c for c in candidates if c.is_file()), None)
            break
    else:
        hdr = path
    if hdr is None or not hdr.is_file():
        return  # nibabel reports the missing header
    try:
        f = _open(hdr)
    except OSError:
        return
    with f:
        try:
            header, _, _ = _read_header(f, hdr)
        except FormatError:
            return  # not a NIfTI/ANALYZE-348 header we can pre-check: nibabel decides
        except (OSError, EOFError, *_decoder_errors()) as e:
            raise FormatError(f"{hdr}: corrupt or truncated header ({type(e).__name__}: {e})") from e
        _layout(header, hdr)


def _check_pair(img, path: Path) -> None:
    """The header checks of :func:`read_nifti` for a .hdr/.img pair, before nibabel reads the .img."""
    header = img.header
    shape, cdhw, stored, k = _layout(header, path)
    try:
        data_path = Path(img.file_map["image"].filename)
        raw = float(header["vox_offset"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: cannot locate the voxel file of the pair: {e}") from None
    if not math.isfinite(raw) or raw < 0 or raw > 2**62:
        raise FormatError(f"{path}: NIfTI/ANALYZE header field vox_offset = {raw} is not a valid byte offset")
    if not data_path.is_file():
        raise ReadError(f"{data_path}: the voxel file of {path} is missing")
    nbytes = math.prod(cdhw) * stored.itemsize * k
    _check_size(data_path, nbytes, int(raw), shape, stored, k, gz=_is_gz(data_path), file_size=data_path.stat().st_size)


def _is_gz(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZ_MAGIC


def _skip(f, n: int) -> None:
    """Read and drop ``n`` bytes in bounded blocks (a huge vox_offset never becomes one huge read)."""
    while n > 0:
        got = len(f.read(min(n, _BLOCK)))
        if not got:
            return
        n -= got


def _empty(shape, dtype, path, nbytes: int) -> np.ndarray:
    try:
        return np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as e:
        raise FormatError(f"{path}: cannot allocate the {nbytes} bytes the NIfTI header (dim, datatype) "
                          f"promises: {type(e).__name__}: {e}") from None  # fmt: skip


def _read_components(f, path, skip: int, cdhw, k: int, nbytes: int, out_dtype) -> np.ndarray:
    """RGB24 / RGBA32 voxels (interleaved uint8 components) as ``(C * k, D, H, W)``: components are channels."""
    _skip(f, skip)
    raw = _empty((*cdhw, k), np.uint8, path, nbytes)
    got = _decode_into(f, raw.reshape(-1), np.dtype(np.uint8), None, None)
    if got < nbytes:
        raise FormatError(f"{path}: truncated voxel data: header promises {nbytes} bytes of RGB voxels, file holds {got}")
    c, d, h, w = cdhw
    data = np.ascontiguousarray(np.moveaxis(raw, -1, 1)).reshape(c * k, d, h, w)
    return data if out_dtype == np.uint8 else data.astype(out_dtype)


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
    color = None
    if arr.dtype.names:  # RGB24 / RGBA32: structured voxels, one channel per component
        color = "".join(arr.dtype.names)
        arr = arr.reshape(arr.shape + (1,) * (3 - arr.ndim))
        arr = np.stack([arr[name] for name in arr.dtype.names], axis=3)  # channel = t * k + component
    shape = arr.shape
    xyz = (*shape, 1, 1, 1)[:3]
    c = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    # (x, y, z, t, ...) Fortran layout -> (C, D, H, W): transpose of the flattened reshape
    arr = arr.reshape((*xyz, c), order="F").transpose(3, 2, 1, 0)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    meta = {"affine_source": source_kind, "nifti_shape": list(shape)}
    if color:
        meta["color"] = color
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
