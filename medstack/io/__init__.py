"""Reading and writing volumes: :func:`load` and :func:`save` choose a format from an explicit table.

Formats are recognised by content first (magic bytes: gzip+NIfTI, NIfTI, HDF5, NRRD, MetaImage), then by
extension. A folder means a DICOM series (``medstack.io.dicom``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from medstack.errors import ReadError, UnknownFormatError
from medstack.volume import Volume

__all__ = ["FORMATS", "Format", "detect_format", "load", "save"]


@dataclasses.dataclass(frozen=True)
class Format:
    """One row of the format table: how to recognise, read and write a file format."""

    name: str
    extensions: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    reader: str  # "module:function", imported when used (keeps `import medstack` fast)
    writer: str | None

    def call(self, which: str, *args, **kwargs):
        import importlib

        module, func = getattr(self, which).split(":")
        return getattr(importlib.import_module(module), func)(*args, **kwargs)


def _sniff_nifti(head: bytes) -> bool:
    from medstack.io.nifti import is_nifti_header

    return is_nifti_header(head)


def _sniff_hdf5(head: bytes) -> bool:
    return head[:8] == b"\x89HDF\r\n\x1a\n"


def _sniff_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _sniff_itk(head: bytes) -> bool:
    return head.startswith(b"NRRD000") or head.lstrip().startswith((b"ObjectType", b"NDims"))


#: The ordered format table. Readers are tried in this order when sniffing content.
FORMATS: tuple[Format, ...] = (
    Format("nifti", (".nii.gz", ".nii", ".hdr", ".img", ".hdr.gz", ".img.gz"), _sniff_nifti,
           "medstack.io.nifti:read_nifti", "medstack.io.nifti:write_nifti"),
    Format("hdf5", (".h5", ".hdf5"), _sniff_hdf5, "medstack.io.store:read_h5", "medstack.io.store:write_h5"),
    Format("itk", (".nrrd", ".nhdr", ".mha", ".mhd"), _sniff_itk,
           "medstack.io.itk:read_itk", "medstack.io.itk:write_itk"),
    Format("dicom", (".dcm", ".ima"), _sniff_dicom, "medstack.io.dicom:load", None),
)  # fmt: skip
_DICOM = FORMATS[-1]


def _by_extension(path: Path) -> Format | None:
    name = path.name.lower()
    for fmt in FORMATS:
        if name.endswith(fmt.extensions):
            return fmt
    return None


def _by_name(name: str) -> Format:
    for fmt in FORMATS:
        if name.lower() in (fmt.name, *(e.lstrip(".") for e in fmt.extensions)):
            return fmt
    raise UnknownFormatError(f"unknown format {name!r}; known: {', '.join(f.name for f in FORMATS)}")


def _head(path: Path, n: int = 1024) -> bytes:
    with open(path, "rb") as f:
        head = f.read(n)
    if head[:2] == b"\x1f\x8b":
        import zlib

        try:
            return zlib.decompressobj(wbits=31).decompress(head, n)
        except zlib.error:
            return b""
    return head


def detect_format(path) -> Format:
    """The :class:`Format` of an existing file: by content (magic bytes), else by extension."""
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _DICOM
    try:
        head = _head(path)
    except OSError as e:
        raise ReadError(f"{path}: cannot read: {e.strerror or e}") from e
    for fmt in FORMATS:
        if fmt.sniff(head):
            return fmt
    fmt = _by_extension(path)
    if fmt is None:
        known = ", ".join(e for f in FORMATS for e in f.extensions)
        raise UnknownFormatError(f"{path}: unrecognised file format (content and extension); medstack reads {known}")
    return fmt


def load(path, *, dtype=None, lazy: bool = False, **options) -> Volume:
    """Load a volume from a file (NIfTI, NRRD, MHA/MHD, medstack HDF5) or a DICOM series.

    Parameters
    ----------
    path : path-like or list of paths
        A file (format recognised by content, then by extension), a folder (a DICOM series: see
        :func:`medstack.io.dicom.load` for ``series=``, ``on_gap=``, ``tilt=``, ``strict=``), or a list
        of DICOM files.
    dtype : numpy dtype, optional
        Cast the data; default keeps the stored dtype (NIfTI with scl_slope/scl_inter: float32).
    lazy : bool
        HDF5 only: return a Volume whose data is read on demand (slicing reads only the needed chunks).
    **options
        Passed to the format's reader (e.g. ``name=`` for a cohort HDF5 file, ``mmap=`` for .nii).

    Returns
    -------
    Volume
        Data ``(C, D, H, W)``, RAS+ affine, metadata including ``source``.
    """
    if isinstance(path, list | tuple):
        if lazy:
            raise UnknownFormatError("lazy=True needs a medstack HDF5 file (.h5), not DICOM files")
        return _DICOM.call("reader", list(path), dtype=dtype, **options)
    path = Path(path)
    fmt = detect_format(path)
    if lazy:
        if fmt.name != "hdf5":
            raise UnknownFormatError(f"{path}: lazy=True needs a medstack HDF5 file (.h5), this is {fmt.name}")
        options["lazy"] = True
    return fmt.call("reader", path, dtype=dtype, **options)


def save(volume: Volume, path, *, overwrite: bool = False, format: str | None = None, **options) -> Path:
    """Save a Volume, atomically (temporary file in the target folder, then rename).

    The format comes from ``format=`` or the extension (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd, .h5).
    An existing file is never replaced unless ``overwrite=True``.
    """
    path = Path(path)
    if not isinstance(volume, Volume):
        raise TypeError(f"save expects a medstack.Volume, got {type(volume).__name__}")
    fmt = _by_name(format) if format is not None else _by_extension(path)
    if fmt is None or fmt.writer is None:
        known = ", ".join(e for f in FORMATS if f.writer for e in f.extensions if not e.startswith((".hdr", ".img")))
        raise UnknownFormatError(f"{path}: cannot tell the output format from the extension; use one of {known}")
    return fmt.call("writer", volume, path, overwrite=overwrite, **options)
