"""Reading and writing volumes: :func:`load` and :func:`save` choose a format from an explicit table.

:data:`FORMATS` lists, in order, what medstack reads (and writes):

- medstack's own readers: NIfTI-1/2 and ANALYZE ``.hdr/.img`` (``medstack.io.nifti``), the medstack HDF5
  store (``medstack.io.store``), NRRD and MetaImage (``medstack.io.itk``), DICOM (``medstack.io.dicom``);
- through nibabel (``medstack.io.foreign``, affine checked): MINC1/MINC2 ``.mnc``, FreeSurfer ``.mgh/.mgz``,
  Philips PAR/REC (display values, as DICOM), ECAT7 ``.v``, AFNI ``.HEAD/.BRIK[.gz]``;
- last resorts, asked only when no row above knows the file: any other volume nibabel's loader recognises
  (e.g. ``.nii.bz2``), then anything one of SimpleITK's ImageIOs reads (VTK, GIPL, MRC, ...).

A file is recognised by content first (magic bytes, gzip looked through: NIfTI, MINC1 NetCDF, MINC2 =
HDF5 with a ``minc-2.0`` group, HDF5, NRRD, MetaImage, PAR, ECAT ``MATRIX7``, AFNI HEAD, DICOM), then by
extension (MGH has no reliable magic; ``.mnc`` breaks the tie for an HDF5 file), then by the last
resorts; :class:`~medstack.errors.UnknownFormatError` only when none of them can read it. A folder means a
DICOM series. Readers are imported when used: ``import medstack`` imports neither nibabel nor SimpleITK.
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
    #: "module:function" ``(path) -> bool``, asked only when no row recognises a file (the last resorts).
    probe: str | None = None

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
    """'DICM' after the 128-byte preamble, or a preamble-less file starting with a group 0x0002/0x0008 tag."""
    if head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[2:4] in (
        b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00")


def _sniff_itk(head: bytes) -> bool:
    return head.startswith(b"NRRD000") or head.lstrip().startswith((b"ObjectType", b"NDims"))


def _sniff_minc(head: bytes) -> bool:
    # MINC1 is NetCDF classic (CDF 1) or 64-bit offset (CDF 2); MINC2 is HDF5 whose root holds "minc-2.0"
    # (its name sits in the first KiB of the MINC2 files seen; the .mnc extension decides otherwise).
    return head[:4] in (b"CDF\x01", b"CDF\x02") or (_sniff_hdf5(head) and b"minc-2.0" in head)


def _sniff_parrec(head: bytes) -> bool:
    return head.startswith(b"#") and b"DATA DESCRIPTION FILE" in head[:256]


def _sniff_ecat(head: bytes) -> bool:
    return head[:7] == b"MATRIX7"  # ECAT7 main header magic ("MATRIX72v", "MATRIX71", ...)


def _sniff_afni(head: bytes) -> bool:
    start = head.lstrip()[:64]
    return start.startswith(b"type = ") and b"-attribute" in start


def _never(head: bytes) -> bool:
    return False


_NIBABEL = "medstack.io.foreign:read_nibabel"

#: The ordered format table. Content sniffers are tried in this order, then extensions, then the probes.
FORMATS: tuple[Format, ...] = (
    Format("nifti", (".nii.gz", ".nii", ".hdr", ".img", ".hdr.gz", ".img.gz"), _sniff_nifti,
           "medstack.io.nifti:read_nifti", "medstack.io.nifti:write_nifti"),
    Format("minc", (".mnc",), _sniff_minc, _NIBABEL, None),  # before hdf5: MINC2 is an HDF5 file
    Format("hdf5", (".h5", ".hdf5"), _sniff_hdf5, "medstack.io.store:read_h5", "medstack.io.store:write_h5"),
    Format("itk", (".nrrd", ".nhdr", ".mha", ".mhd"), _sniff_itk,
           "medstack.io.itk:read_itk", "medstack.io.itk:write_itk"),
    Format("mgh", (".mgz", ".mgh"), _never, _NIBABEL, None),  # no reliable magic; .mgz is gzip
    Format("par/rec", (".par", ".rec"), _sniff_parrec, _NIBABEL, None),
    Format("ecat", (".v",), _sniff_ecat, _NIBABEL, None),
    Format("afni", (".head", ".brik", ".brik.gz", ".brik.bz2"), _sniff_afni, _NIBABEL, None),
    Format("dicom", (".dcm", ".ima"), _sniff_dicom, "medstack.io.dicom:load", None),
    # last resorts, asked in this order only when no row above recognises the file
    Format("nibabel", (), _never, _NIBABEL, None, probe="medstack.io.foreign:nibabel_can_read"),
    Format("simpleitk", (), _never, "medstack.io.foreign:read_simpleitk", None,
           probe="medstack.io.foreign:simpleitk_can_read"),
)  # fmt: skip
_DICOM = next(f for f in FORMATS if f.name == "dicom")


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


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        head = f.read(n)
    if head[:2] == b"\x1f\x8b":
        import zlib

        try:
            return zlib.decompressobj(wbits=31).decompress(head, n)
        except zlib.error:
            return b""
    return head


def require_file(path) -> Path:
    """``path`` as a Path, or a :class:`ReadError` when it is missing or a folder (readers of single files)."""
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file")
    if path.is_dir():
        raise ReadError(f"{path}: is a folder, expected an image file")
    return path


def detect_format(path) -> Format:
    """The :class:`Format` of an existing file: by content (magic bytes), else by extension, else by probe.

    Raises
    ------
    ReadError
        The path does not exist or cannot be read.
    UnknownFormatError
        No row recognises the file and neither nibabel nor SimpleITK can read it.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _DICOM
    try:
        head = _head(path)
    except OSError as e:
        raise ReadError(f"{path}: cannot read: {e.strerror or e}") from e
    by_ext = _by_extension(path)
    for fmt in FORMATS:
        if fmt.sniff(head):
            if fmt.name == "hdf5" and by_ext is not None and by_ext.name == "minc":
                return by_ext  # HDF5 is a container: a .mnc one is MINC2 even without "minc-2.0" in its head
            return fmt
    if by_ext is not None:
        return by_ext
    for fmt in FORMATS:
        if fmt.probe is not None and fmt.call("probe", path):
            return fmt
    known = ", ".join(e for f in FORMATS for e in f.extensions)
    raise UnknownFormatError(
        f"{path}: unrecognised file format: neither its content nor its extension is one medstack knows, and "
        f"neither nibabel nor SimpleITK can read it; medstack reads {known} (and DICOM folders)"
    )


def load(path, *, dtype=None, lazy: bool = False, **options) -> Volume:
    """Load a volume from a file (NIfTI, NRRD, MHA/MHD, medstack HDF5, MINC, MGH/MGZ, PAR/REC, ECAT, AFNI,
    or anything else nibabel or SimpleITK reads) or a DICOM series.

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
        Passed to the format's reader (e.g. ``name=`` for a cohort HDF5 file, ``mmap=`` for .nii,
        ``scaling="fp"`` or ``permit_truncated=True`` for PAR/REC: see :func:`medstack.io.foreign.read_nibabel`).

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
    known = ", ".join(e for f in FORMATS if f.writer for e in f.extensions if not e.startswith((".hdr", ".img")))
    if fmt is None:
        raise UnknownFormatError(f"{path}: cannot tell the output format from the extension; use one of {known}")
    if fmt.writer is None:
        raise UnknownFormatError(f"{path}: medstack reads {fmt.name} files but does not write them; use one of {known}")
    return fmt.call("writer", volume, path, overwrite=overwrite, **options)
