"""NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK, and Volume <-> SimpleITK.Image.

ITK stores geometry in LPS+ as origin, spacing and a direction matrix; medstack converts to and from
its RAS+ affine with :func:`medstack.geometry.lps_to_ras` only. Multi-component (vector) pixels become
channels; a 4D image's fourth axis becomes channels.

Before SimpleITK reads, the header text is parsed (:func:`check_header`): detached data files (MetaImage
``ElementDataFile``, NRRD ``data file``, single, ``LIST`` or numbered pattern) must be regular files inside the
header's folder unless ``allow_outside=True``, and the sizes must fit in the bytes present.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import FormatError, GeometryError, ReadError
from medstack.io import require_file
from medstack.io._atomic import atomic_output
from medstack.volume import Volume

EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")


def sitk_affine(image) -> np.ndarray:
    """RAS+ affine of a ``SimpleITK.Image`` (first three axes; 2D images get a unit third axis)."""
    n = image.GetDimension()
    k = min(n, 3)
    direction = np.eye(3)
    direction[:k, :k] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)[:k, :k]
    spacing = np.ones(3)
    spacing[:k] = image.GetSpacing()[:k]
    origin = np.zeros(3)
    origin[:k] = image.GetOrigin()[:k]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    return geometry.lps_to_ras(lps)


def from_sitk(image, *, dtype=None, metadata=None) -> Volume:
    """A :class:`Volume` from a ``SimpleITK.Image`` (2D, 3D or 4D; scalar or vector pixels)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # (z, y, x[, comp]) / (t, z, y, x) / (y, x)
    n = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    if n == 2:
        arr = arr[:, None]
    elif n == 4:
        if arr.shape[0] != 1:
            raise FormatError("4D images with vector pixels are not supported; split the components first")
        arr = arr[0]
    elif n != 3:
        raise FormatError(f"{n}D images are not supported (expected 2D, 3D or 4D)")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    affine = geometry.check_affine(sitk_affine(image), what="image geometry (origin/spacing/direction)")
    return Volume(np.ascontiguousarray(arr), affine, dict(metadata or {}))


def to_sitk(volume: Volume):
    """A ``SimpleITK.Image`` of a Volume: scalar for one channel, vector (components = channels) otherwise."""
    import SimpleITK as sitk

    arr = np.ascontiguousarray(volume.to_numpy())
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.shape[0] == 1:
        image = sitk.GetImageFromArray(arr[0])
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), isVector=True)
    lps = geometry.ras_to_lps(volume.affine)
    image.SetSpacing([float(s) for s in geometry.spacing(lps)])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in geometry.direction(lps).reshape(-1)])
    return image


def read_itk(path, *, dtype=None, allow_outside: bool = False) -> Volume:
    """Read NRRD / MHA / MHD with SimpleITK into a :class:`Volume`.

    Before SimpleITK opens anything, the header text is parsed (:func:`check_header`): a detached header
    (``.mhd`` ``ElementDataFile``, ``.nhdr`` ``data file``, including ``LIST`` and numbered patterns) may only
    name regular files inside its own folder, unless ``allow_outside=True``; and the sizes, element type and
    channel count must fit in the bytes the data file(s) hold. Either failure is a :class:`FormatError` naming
    the file and the header field, raised before any voxel memory is allocated.
    """
    import SimpleITK as sitk

    path = require_file(path)
    check_header(path, allow_outside=allow_outside)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "rror" in m or "ailed" in m), msg[-1] if msg else "")
        raise FormatError(f"{path}: SimpleITK cannot read it: {detail.strip()}") from e
    meta = {"source": str(path), "format": path.suffix.lower().lstrip(".")}
    try:
        return from_sitk(image, dtype=dtype, metadata=meta)
    except (FormatError, GeometryError) as e:
        raise type(e)(f"{path}: {e}") from None


# -- header checks (before SimpleITK reads) ---------------------------------------------------------------

_HEADER_MAX = 1 << 20  # bytes of header text looked at; a longer header is refused
_MAX_DEFLATE_RATIO = 1040  # deflate cannot expand data more than ~1032:1
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_NRRD_SIZES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}  # fmt: skip
_NRRD_TYPE = {name: size for size, names in _NRRD_SIZES.items() for name in names}


def _header_lines(path: Path, *, nrrd: bool) -> tuple[list[str], int]:
    """The header's lines and its length in bytes (where attached data start)."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_MAX)
    lines, pos = [], 0
    in_list = False
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            if len(head) == _HEADER_MAX:
                raise FormatError(f"{path}: header longer than {_HEADER_MAX} bytes; not a NRRD/MetaImage header")
            end = len(head)
        line = head[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if nrrd and not line.strip():
            break  # a blank line ends a NRRD header
        lines.append(line)
        if not nrrd and not in_list:
            key, value = _meta_split(path, line)
            if key == "elementdatafile":
                if not value.upper().startswith("LIST"):
                    break  # MetaImage: ElementDataFile is the last field (LOCAL data start right after it)
                in_list = True  # the remaining lines are file names
    return lines, pos


_META_LINE = re.compile(r"\s*([^\s=:]*)\s*([=:]?)\s*(.*?)\s*")


def _meta_split(path: Path, line: str) -> tuple[str, str]:
    """``(lower-case key, value)`` of a MetaImage header line; ``("", "")`` for a blank line.

    MetaIO takes ``=`` or ``:`` as the separator and, when a line has none, skips ahead to the next one, even
    on later lines: such a line is refused here, so no field (ElementDataFile above all) can hide from the
    checks.
    """
    if not line.strip():
        return "", ""
    m = _META_LINE.fullmatch(line)
    if m is None or not m.group(1) or not m.group(2):
        raise FormatError(f"{path}: malformed MetaImage header line {line[:80]!r} (expected 'Field = value')")
    return m.group(1).lower(), m.group(3)


def _ints(path, field: str, value: str, n: int | None = None) -> list[int]:
    try:
        out = [int(v) for v in value.split()]
    except ValueError:
        raise FormatError(f"{path}: header field {field} = {value!r} is not a list of integers") from None
    if not out or any(v < 1 for v in out) or (n is not None and len(out) != n):
        raise FormatError(f"{path}: header field {field} = {value!r} must be {n or 'one or more'} positive sizes")
    return out


def _pattern_files(path, field: str, value: str) -> list[str]:
    """Files of a numbered pattern ``"<printf format> <min> <max> <step> [<subdim>]"``."""
    parts = value.split()
    if not re.fullmatch(r"[^%]*%0?\d{0,2}[di][^%]*", parts[0]):
        raise FormatError(f"{path}: header field {field} = {value!r}: the file pattern must hold one %d (e.g. %03d)")
    try:
        fmt, lo, hi, step = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
        if step == 0 or (hi - lo) // step + 1 > 1_000_000:
            raise ValueError("bad range")
        return [fmt % i for i in range(lo, hi + (1 if step > 0 else -1), step)]
    except (ValueError, IndexError, TypeError, OverflowError) as e:
        raise FormatError(f"{path}: header field {field} = {value!r} is not a valid numbered file pattern ({e})") from None


def _data_files(path: Path, field: str, value: str, rest: list[str]) -> list[str]:
    if value.upper().startswith("LIST"):
        return [ln.strip() for ln in rest if ln.strip()]
    if "%" in value and len(value.split()) >= 4:
        return _pattern_files(path, field, value)
    return [value]


def _resolve(path: Path, field: str, name: str, allow_outside: bool) -> Path:
    try:
        folder = path.parent.resolve()
        target = Path(name) if Path(name).is_absolute() else path.parent / name
        real = target.resolve()
    except (ValueError, OSError, RuntimeError) as e:
        raise FormatError(f"{path}: header field {field} = {name!r} is not a usable file name ({e})") from None
    if not allow_outside and not real.is_relative_to(folder):
        raise FormatError(f"{path}: header field {field} = {name!r} points outside the header's folder ({real}); "
                          "refused (reading it would put another file's bytes into the voxels). Move the data "
                          "next to the header, or pass allow_outside=True if you trust this header")  # fmt: skip
    if not real.exists():
        raise ReadError(f"{path}: header field {field} = {name!r}: data file {real} does not exist")
    if not real.is_file():
        raise FormatError(f"{path}: header field {field} = {name!r}: {real} is not a regular file (a folder, "
                          "device or pipe); refused")  # fmt: skip
    return real


def _check_bytes(path: Path, what: str, need: int, have: int, *, compressed: bool) -> None:
    if compressed:
        if need > have * _MAX_DEFLATE_RATIO + (1 << 16):
            raise FormatError(f"{path}: SimpleITK cannot read it: the header ({what}) promises {need} bytes of "
                              f"voxels but the compressed data are only {have} bytes, which cannot inflate to that; "
                              "the header is corrupt or the data truncated")  # fmt: skip
    elif have < need:
        raise FormatError(f"{path}: SimpleITK cannot read it: truncated data: the header ({what}) promises {need} "
                          f"bytes of voxels, the data hold {max(have, 0)}")  # fmt: skip


def _check_inflate(path: Path, field: str, sources: list[tuple[Path, int]], need: int) -> None:
    """Inflate the compressed voxel stream(s) once, discarding the output (bounded memory), and refuse a corrupt
    or short stream: SimpleITK's MetaIO loops forever on some corrupt zlib streams instead of failing."""
    import zlib

    total = 0
    for src, start in sources:
        d = zlib.decompressobj(47)  # zlib or gzip header, detected
        with open(src, "rb") as f:
            f.seek(start)
            try:
                while total <= need and not d.eof:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    out = d.decompress(chunk, 1 << 22)
                    total += len(out)
                    while d.unconsumed_tail and total <= need:
                        out = d.decompress(d.unconsumed_tail, 1 << 22)
                        total += len(out)
            except zlib.error as e:
                raise FormatError(f"{path}: header field {field}: the compressed voxel data in {src.name} are "
                                  f"corrupt ({e}); refused before SimpleITK reads them") from None  # fmt: skip
        if total > need:
            return
    if total < need:
        raise FormatError(f"{path}: SimpleITK cannot read it: truncated data: the compressed voxels inflate to "
                          f"{total} bytes, the header promises {need}")  # fmt: skip


def check_header(path, *, allow_outside: bool = False) -> None:
    """Parse a NRRD / MetaImage header and refuse, before any voxel is read, data files outside the header's
    folder (unless ``allow_outside``), non-regular data files, and sizes the data bytes cannot hold."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4096)
    if magic.startswith(b"NRRD000"):
        _check_nrrd(path, allow_outside)
    elif path.suffix.lower() in (".mha", ".mhd") or _looks_meta(magic):
        _check_meta(path, allow_outside)


def _looks_meta(magic: bytes) -> bool:
    return magic.lstrip().startswith((b"ObjectType", b"NDims")) or b"\nElementDataFile" in magic


def _check_meta(path: Path, allow_outside: bool) -> None:
    lines, header_len = _header_lines(path, nrrd=False)
    fields: dict[str, str] = {}
    rest: list[str] = []
    for i, line in enumerate(lines):
        key, value = _meta_split(path, line)  # keys matched without case: a field MetaIO accepts is never missed
        if not key:
            continue
        fields[key] = value
        if key == "elementdatafile":
            rest = lines[i + 1 :]
            break
    _check_meta_arrays(path, fields)
    data = fields.get("elementdatafile")
    if data is None:
        return  # SimpleITK refuses a MetaImage without ElementDataFile
    files = [] if data.upper() == "LOCAL" else _data_files(path, "ElementDataFile", data, rest)
    real = [_resolve(path, "ElementDataFile", name, allow_outside) for name in files]
    if "dimsize" not in fields:
        return
    dims = _ints(path, "DimSize", fields["dimsize"], int(fields["ndims"]))
    etype = fields.get("elementtype", "").upper().removesuffix("_ARRAY")
    if etype not in _MET_SIZES:
        raise FormatError(f"{path}: header field ElementType = {fields.get('elementtype')!r} is not a MetaImage "
                          f"element type ({', '.join(_MET_SIZES)})")  # fmt: skip
    channels = _ints(path, "ElementNumberOfChannels", fields.get("elementnumberofchannels", "1"), 1)[0]
    need = math.prod(dims) * _MET_SIZES[etype] * channels
    compressed = fields.get("compresseddata", "False").strip().lower() in ("true", "1")
    try:
        skip = int(fields.get("headersize", "0"))
    except ValueError:
        raise FormatError(f"{path}: header field HeaderSize = {fields['headersize']!r} is not an integer") from None
    if not real:  # LOCAL: data follow the header in this file
        have = path.stat().st_size - header_len
    else:
        sizes = [p.stat().st_size for p in real]
        have = sum(sizes) - (max(skip, 0) * len(real) if not compressed else 0)
    what = f"DimSize = {fields['dimsize']}, ElementType = {fields.get('elementtype')}, channels = {channels}"
    _check_bytes(path, what, need, have, compressed=compressed)
    if compressed:
        _check_inflate(path, "CompressedData", [(path, header_len)] if not real else [(p, 0) for p in real], need)


#: MetaImage fields holding NDims numbers / NDims x NDims numbers (MetaIO reads them into NDims-sized arrays and
#: crashes, not errs, on a count it did not expect: checked here before SimpleITK sees them)
_META_VECTORS = ("DimSize", "ElementSpacing", "ElementSize", "Offset", "Origin", "Position", "CenterOfRotation")
_META_MATRICES = ("TransformMatrix", "Rotation", "Orientation")
_MAX_DIMS = 10


def _check_meta_arrays(path: Path, fields: dict[str, str]) -> None:
    raw = fields.get("ndims")
    if raw is None:
        raise FormatError(f"{path}: header field NDims is missing; a MetaImage header needs it first")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= _MAX_DIMS:
        raise FormatError(f"{path}: header field NDims = {raw!r} must be an integer in 1..{_MAX_DIMS}")
    for names, count in ((_META_VECTORS, n), (_META_MATRICES, n * n)):
        for name in names:
            text = fields.get(name.lower())
            if text is None:
                continue
            try:
                values = [float(v) for v in text.split()]
            except ValueError:
                values = []
            if len(values) != count or not all(math.isfinite(v) for v in values):
                raise FormatError(f"{path}: header field {name} = {text!r} must be {count} finite numbers "
                                  f"(NDims = {n})")  # fmt: skip


def _check_nrrd(path: Path, allow_outside: bool) -> None:
    lines, header_len = _header_lines(path, nrrd=True)
    fields: dict[str, str] = {}
    rest: list[str] = []
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("#") or ":=" in line.split(": ", 1)[0] or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        key = key.strip().lower()
        if key in ("data file", "datafile") and ("data file" in fields or "datafile" in fields):
            raise FormatError(f"{path}: header field {key} appears twice; refused (which one a reader uses differs)")
        fields[key] = value.strip()
        if key in ("data file", "datafile") and value.strip().upper().startswith("LIST"):
            rest = lines[i + 1 :]  # the remaining lines are file names
            break
    field = "data file" if "data file" in fields else "datafile"
    data = fields.get(field)
    files = [] if data is None else _data_files(path, field, data, rest)
    real = [_resolve(path, field, name, allow_outside) for name in files]
    if "sizes" not in fields or "type" not in fields:
        return  # SimpleITK refuses it
    dims = _ints(path, "sizes", fields["sizes"])
    tname = " ".join(fields["type"].lower().split())
    if tname == "block":
        return
    if tname not in _NRRD_TYPE:
        raise FormatError(f"{path}: header field type = {fields['type']!r} is not a NRRD type")
    count = math.prod(dims)
    encoding = fields.get("encoding", "raw").strip().lower()
    if not real:
        have = path.stat().st_size - header_len
    else:
        have = sum(p.stat().st_size for p in real)
    try:
        skip = int(fields.get("byte skip", "0"))
    except ValueError:
        raise FormatError(f"{path}: header field byte skip = {fields['byte skip']!r} is not an integer") from None
    what = f"sizes = {fields['sizes']}, type = {fields['type']}, encoding = {encoding}"
    if encoding == "raw":
        _check_bytes(path, what, count * _NRRD_TYPE[tname], have - max(skip, 0) * max(len(real), 1), compressed=False)
    elif encoding in ("gz", "gzip"):
        _check_bytes(path, what, count * _NRRD_TYPE[tname], have, compressed=True)
        _check_inflate(path, "encoding", [(path, header_len)] if not real else [(p, max(skip, 0)) for p in real],
                       count * _NRRD_TYPE[tname])  # fmt: skip
    elif encoding in ("txt", "text", "ascii"):
        _check_bytes(path, what, count, have, compressed=False)  # at least one character per value
    elif encoding == "hex":
        _check_bytes(path, what, count * _NRRD_TYPE[tname] * 2, have, compressed=False)


def write_itk(volume: Volume, path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a Volume as .nrrd / .nhdr / .mha / .mhd with SimpleITK, atomically (gzip by default)."""
    import SimpleITK as sitk

    path = Path(path)
    image = to_sitk(volume)
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path
