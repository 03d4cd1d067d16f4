"""Formats medstack reads through nibabel or SimpleITK without a reader of its own.

nibabel: Philips PAR/REC (``.PAR`` + ``.REC``), FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``), MINC1 (NetCDF) and
MINC2 (HDF5) (``.mnc``), ECAT7 (``.v``) and AFNI BRIK/HEAD (``+orig.HEAD`` + ``.BRIK[.gz]``); also any other
nibabel volume its own loader recognises (e.g. ``.nii.bz2``, which goes through the NIfTI rules of
:func:`medstack.io.nifti.from_nibabel`). SimpleITK: whatever one of its ImageIOs reads (VTK, GIPL, MRC,
BioRad, ...), through :func:`medstack.io.itk.read_itk`.

Geometry: nibabel's array is ``(x, y, z[, t, ...])`` with an affine mapping ``(x, y, z)`` voxel indices to
RAS+ mm, i.e. medstack's ``(i, j, k)``. So ``data[c] = arr[..., c].transpose(2, 1, 0)`` and the affine is
kept as it is; axes after the third become channels (Fortran order, as for NIfTI). MINC files may store a
non-spatial axis first (``time, zspace, yspace, xspace``): the spatial axes are found by name. The affine
is checked (finite, non-singular: :class:`~medstack.errors.GeometryError` otherwise). Where the file holds
no real orientation (an MGH header with ``goodRASFlag = 0``; ECAT, whose affine nibabel builds from voxel
sizes and offsets only) a warning names the file and ``metadata["orientation_known"]`` is False.

Values: nibabel's scaling is applied (MINC image-min/max, ECAT and AFNI scale factors, PAR/REC, see below).
Scaled integers come back as float32 (float64 when stored as float64), as for NIfTI and DICOM; unscaled
data keep the stored dtype in native byte order. ``dtype=`` overrides.

PAR/REC scaling: ``scaling="dv"`` (default) gives the *display value* ``RS * stored + RI``, the value
Philips exports to DICOM and the one medstack's DICOM reader returns (RescaleSlope/Intercept), so a PAR/REC
and the DICOM export of the same scan load alike. ``scaling="fp"`` gives the Philips floating-point value
``(RS * stored + RI) / (RS * SS)``, comparable across scans (quantitative maps). The choice is recorded in
``metadata["parrec_scaling"]``.

Every nibabel or SimpleITK failure becomes a :class:`~medstack.errors.FormatError` (or
:class:`~medstack.errors.ReadError` for a missing companion file) naming the file; warnings nibabel emits
while reading are re-emitted with the file name and kept in ``metadata["reader_warnings"]``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, FormatError, GeometryError, MedstackError, ReadError, UnknownFormatError
from medstack.io import _head, require_file  # _head: first bytes of a file, gzip looked through
from medstack.volume import Volume

__all__ = ["nibabel_can_read", "read_nibabel", "read_simpleitk", "simpleitk_can_read"]

logger = logging.getLogger(__name__)

#: nibabel class name -> medstack format name (``metadata["format"]``).
_FORMAT_NAMES = {
    "PARRECImage": "par/rec",
    "MGHImage": "mgh",
    "Minc1Image": "minc",
    "Minc2Image": "minc",
    "EcatImage": "ecat",
    "AFNIImage": "afni",
    "Nifti1Image": "nifti1",
    "Nifti2Image": "nifti2",
    "Nifti1Pair": "nifti1",
    "Nifti2Pair": "nifti2",
    "AnalyzeImage": "analyze",
    "Spm99AnalyzeImage": "analyze",
    "Spm2AnalyzeImage": "analyze",
}
#: Reader options per format (beyond ``dtype``), with their defaults.
_OPTIONS = {"par/rec": {"scaling": "dv", "permit_truncated": False, "strict_sort": False}}
_QUIET = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


# ---------------------------------------------------------------------------------------------- nibabel


def _image_classes():
    import nibabel as nib
    from nibabel.ecat import EcatImage
    from nibabel.spatialimages import SpatialImage

    return [k for k in (*nib.all_image_classes, EcatImage) if issubclass(k, SpatialImage)]


def _nibabel_class(path: Path):
    """``(class, by_name)``: the nibabel volume class for ``path`` by nibabel's own rule (extension, then its
    sniff; ``by_name`` True), else by content (``by_name`` False), else ``(None, False)``.

    Content covers single-file formats whose name nibabel does not accept: MINC1 (NetCDF ``CDF``), MINC2
    (HDF5 with a ``minc-2.0`` group) and ECAT7 (``MATRIX7``).
    """
    sniff = None
    classes = _image_classes()
    for klass in classes:
        try:
            ok, sniff = klass.path_maybe_image(str(path), sniff)
        except Exception:  # a probe that cannot decide says no
            ok = False
        if ok:
            return klass, True
    try:
        head = _head(path)
    except OSError:
        return None, False
    from nibabel.ecat import EcatImage
    from nibabel.minc1 import Minc1Image
    from nibabel.minc2 import Minc2Image

    if head[:4] in (b"CDF\x01", b"CDF\x02"):
        return Minc1Image, False
    if head[:8] == b"\x89HDF\r\n\x1a\n" and b"minc-2.0" in head:
        return Minc2Image, False
    if head[:7] == b"MATRIX7":
        return EcatImage, False
    return None, False


def nibabel_can_read(path) -> bool:
    """True if nibabel has a volume class for ``path`` (by its name or content); reads no voxel data."""
    path = Path(path)
    try:
        return path.is_file() and _nibabel_class(path)[0] is not None
    except ImportError:
        return False


def _file_map(klass, path: Path, by_name: bool):
    from nibabel.fileholders import FileHolder

    if by_name:
        return klass.filespec_to_file_map(str(path))
    # a single-file format found by content under a name nibabel does not accept: every role is this file
    return {key: FileHolder(filename=str(path)) for key, _ in klass.files_types}


def _one_line(e: BaseException) -> str:
    return re.sub(r"\s+", " ", f"{type(e).__name__}: {e}").strip()


def _check_options(kind: str, path: Path, options: dict) -> dict:
    allowed = _OPTIONS.get(kind, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = f"it takes {', '.join(allowed)}" if allowed else "it takes only dtype="
        raise ArgumentError(f"{path}: option(s) {', '.join(unknown)} do not apply to a {kind} file; {hint}")
    merged = {**allowed, **options}
    if kind == "par/rec" and merged["scaling"] not in ("dv", "fp"):
        raise ArgumentError(f"{path}: scaling must be 'dv' (display value, as DICOM) or 'fp' (floating point), "
                            f"got {merged['scaling']!r}")  # fmt: skip
    return merged


def _spatial_axes(img, kind: str, ndim: int, path: Path) -> list[int]:
    """Array axes that the affine's voxel columns ``(i, j, k)`` index, in that order."""
    if kind != "minc":
        return list(range(min(ndim, 3)))
    minc = getattr(img.dataobj, "minc_file", None)
    names, spatial = getattr(minc, "_dim_names", None), getattr(minc, "_spatial_dims", None)
    if names is None or spatial is None:
        raise FormatError(f"{path}: cannot tell which MINC axes are spatial with this nibabel version; "
                          "convert the file with mincconvert or nibabel to NIfTI")  # fmt: skip
    names = list(names)
    return [names.index(s) for s in spatial]


def _orientation(img, kind: str, path: Path) -> tuple[str, bool]:
    """``(affine_source, orientation_known)`` for a nibabel image."""
    if kind == "mgh":
        head = _head(path)  # .mgz: the header inflated
        flag = int(np.frombuffer(head[28:30], dtype=">i2")[0]) if len(head) >= 30 else 1
        if flag <= 0:
            return "mgh default (goodRASFlag = 0: FreeSurfer's coronal LIA axes, centre at 0 mm)", False
        return "mgh vox2ras (Mdc, delta, Pxyz_c)", True
    if kind == "ecat":
        return "ecat voxel sizes and offsets (ECAT stores no orientation; axes taken as RAS)", False
    if kind == "minc":
        minc = getattr(img.dataobj, "minc_file", None)
        dims = getattr(minc, "_dims", None) or []
        names = list(getattr(minc, "_dim_names", []) or [])
        spatial = [dims[names.index(s)] for s in getattr(minc, "_spatial_dims", []) if s in names and dims]
        if spatial and not all(hasattr(d, "direction_cosines") for d in spatial):
            return "minc start/step; direction_cosines missing for some axes (MINC default: the world axes)", True
        return "minc direction_cosines, start, step", True
    if kind == "par/rec":
        return "par/rec angulation and off-centre", True
    if kind == "afni":
        return "afni ORIENT_SPECIFIC, ORIGIN, DELTA", True
    return "nibabel affine", True


def _to_cdhw(arr: np.ndarray, spatial: list[int]) -> np.ndarray:
    """nibabel ``(x, y, z, rest...)`` (spatial axes anywhere) -> ``(C, D, H, W)``."""
    rest = [a for a in range(arr.ndim) if a not in spatial]
    arr = arr.transpose(*spatial, *rest)
    xyz = (*arr.shape[: len(spatial)], 1, 1, 1)[:3]
    c = int(np.prod(arr.shape[len(spatial) :], dtype=np.int64))
    return arr.reshape((*xyz, c), order="F").transpose(3, 2, 1, 0)


def _affine4(affine, nspatial: int) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (4, 4) or nspatial >= 3 or a.shape != (nspatial + 1, nspatial + 1):
        return a
    out = np.eye(4)
    out[:nspatial, :nspatial] = a[:nspatial, :nspatial]
    out[:nspatial, 3] = a[:nspatial, nspatial]
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def _extra_metadata(img, kind: str, options: dict) -> dict:
    meta: dict = {}
    with contextlib.suppress(Exception):  # labels are informative; a header without them is still an image
        if kind == "par/rec":
            meta["parrec_scaling"] = options["scaling"]
            labels = img.header.get_volume_labels()
            if labels:
                meta["channel_labels"] = _jsonable(dict(labels))
        elif kind == "afni":
            labels = img.header.get_volume_labels()
            if labels:
                meta["channel_labels"] = _jsonable(list(labels))
    return meta


def _default_dtype(arr: np.ndarray, stored: np.dtype) -> np.dtype:
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 8 and np.dtype(stored).itemsize != 8:
        return np.dtype(np.float32)  # scaled integers (or float32): float32, as for NIfTI and DICOM
    return arr.dtype.newbyteorder("=")


def read_nibabel(path, *, dtype=None, **options) -> Volume:
    """Read a volume through nibabel into a :class:`Volume` ``(C, D, H, W)`` with a checked RAS+ affine.

    Parameters
    ----------
    path : path-like
        A PAR/REC (either file of the pair), MGH/MGZ, MINC1/MINC2, ECAT7, AFNI (``.HEAD`` or ``.BRIK[.gz]``)
        file, or any other volume nibabel recognises.
    dtype : numpy dtype, optional
        Output dtype. Default: the stored dtype (native byte order), or float32 when the format's scaling
        turned integers into floats.
    **options
        PAR/REC only: ``scaling`` (``"dv"``, default, display values as in DICOM; or ``"fp"``),
        ``permit_truncated`` (bool, load an interrupted scan), ``strict_sort`` (bool, sort volumes by
        more header fields).

    Returns
    -------
    Volume
        ``data`` ``(C, D, H, W)`` (a 4th and later axes become channels), ``affine`` as nibabel's, and
        ``metadata`` with ``source``, ``format``, ``nibabel_class``, ``stored_dtype``, ``foreign_shape``,
        ``affine_source``, ``orientation_known`` (and ``parrec_scaling``, ``channel_labels`` where known).

    Raises
    ------
    ReadError
        The file or its companion (``.REC``, ``.BRIK``) is missing.
    FormatError
        nibabel cannot read it (corrupt, truncated, unsupported variant).
    GeometryError
        The affine is not finite or is singular.
    """
    path = require_file(path)
    try:
        klass, by_name = _nibabel_class(path)
    except ImportError as e:  # pragma: no cover - nibabel is a dependency
        raise FormatError(f"{path}: reading this format needs nibabel (pip install nibabel): {e}") from e
    if klass is None:
        raise UnknownFormatError(f"{path}: nibabel has no reader for this file name or content")
    kind = _FORMAT_NAMES.get(klass.__name__, klass.__name__.removesuffix("Image").lower())
    opts = _check_options(kind, path, options)
    try:
        vol, notes = _read(klass, by_name, kind, path, opts, dtype)
    except (MedstackError, MemoryError):
        raise
    except FileNotFoundError as e:
        raise ReadError(f"{path}: a file of this {kind} image is missing: {e.filename or e}; the header and "
                        "data files must sit side by side with the same name") from e  # fmt: skip
    except Exception as e:  # any nibabel failure on this file is a format error (chained, not swallowed)
        hint = ""
        if kind == "par/rec" and re.search(r"inconsisten|truncat|expected", str(e), re.IGNORECASE):
            hint = "; if the scan was interrupted, pass permit_truncated=True to load the volumes present"
        raise FormatError(f"{path}: nibabel cannot read this {kind} file ({_one_line(e)}){hint}") from e
    if notes:
        vol = vol.replace(metadata={**vol.metadata, "reader_warnings": notes})
        for text in notes:
            warnings.warn(f"{path}: nibabel: {text}", UserWarning, stacklevel=2)
    if not vol.metadata.get("orientation_known", True):
        warnings.warn(f"{path}: {vol.metadata['affine_source']}; the orientation is a guess, check it before "
                      "combining this volume with others", UserWarning, stacklevel=2)  # fmt: skip
    return vol


def _read(klass, by_name: bool, kind: str, path: Path, opts: dict, dtype) -> tuple[Volume, list[str]]:
    """The Volume and the texts of the warnings nibabel emitted while reading (not re-emitted here).

    The warnings are caught with ``warnings.catch_warnings``, which is process-wide: a warning another
    thread emits while nibabel reads may be recorded here instead of shown.
    """
    from nibabel.openers import ImageOpener

    file_map = _file_map(klass, path, by_name)
    image_name = file_map["image"].filename
    with contextlib.ExitStack() as stack:
        # nibabel 5 leaves the data file open (PAR/REC, ECAT, uncompressed MGH): open every holder of the data file
        # here (binary), close it after reading. A separate text header (.PAR, .HEAD) nibabel opens and closes.
        for holder in file_map.values():
            if holder.filename == image_name:
                holder.fileobj = stack.enter_context(ImageOpener(holder.filename, "rb"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = klass.from_file_map(file_map, mmap=False, **opts)
            if kind not in ("nifti1", "nifti2", "analyze"):
                stored = np.dtype(img.get_data_dtype(0) if kind == "ecat" else img.get_data_dtype())  # ECAT: per frame
                arr = np.asarray(img.dataobj)
        notes = []
        for w in caught:
            if issubclass(w.category, _QUIET):
                logger.debug("%s: %s", path, w.message)
            else:
                notes.append(re.sub(r"\s+", " ", str(w.message)).strip())
        notes = list(dict.fromkeys(notes))  # nibabel repeats some (once per check)
        if kind in ("nifti1", "nifti2", "analyze"):
            from medstack.io.nifti import from_nibabel

            vol = from_nibabel(img, dtype=dtype, source=path)  # the NIfTI affine and scaling rules
            return vol.replace(metadata={**vol.metadata, "format": kind, "nibabel_class": klass.__name__}), notes
    if isinstance(arr, np.memmap):
        arr = np.array(arr)
    shape = [int(s) for s in arr.shape]
    spatial = _spatial_axes(img, kind, arr.ndim, path)
    if img.affine is None:
        raise GeometryError(f"{path}: nibabel found no affine in this {kind} file")
    affine = geometry.check_affine(_affine4(img.affine, len(spatial)), what=f"{path}: {kind} affine")
    data = _to_cdhw(arr, spatial)
    out_dtype = np.dtype(dtype) if dtype is not None else _default_dtype(arr, stored)
    data = np.ascontiguousarray(data, dtype=out_dtype)
    source, known = _orientation(img, kind, path)
    meta = {
        "source": str(path),
        "format": kind,
        "nibabel_class": klass.__name__,
        "stored_dtype": str(stored.newbyteorder("=")),
        "foreign_shape": shape,
        "affine_source": source,
        "orientation_known": known,
        **_extra_metadata(img, kind, opts),
    }
    return Volume(data, affine, meta), notes


# -------------------------------------------------------------------------------------------- SimpleITK


@contextlib.contextmanager
def _locale_kept():
    """Restore the process locale afterwards: ITK's VTKImageIO sets it to "C" and leaves it so, after which
    Python's default text encoding (``open``, ``subprocess(text=True)``) is ASCII."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


def _image_io(path: Path) -> str:
    """The name of the SimpleITK ImageIO that reads ``path``, ``""`` when none does (reads the header only)."""
    import SimpleITK as sitk

    return sitk.ImageFileReader.GetImageIOFromFileName(str(path))


def simpleitk_can_read(path) -> bool:
    """True if one of SimpleITK's ImageIOs can read ``path`` (reads its header only)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with _locale_kept():
            return bool(_image_io(path))
    except (RuntimeError, ImportError):
        return False


def read_simpleitk(path, *, dtype=None) -> Volume:
    """Read any file one of SimpleITK's ImageIOs reads (VTK, GIPL, MRC, ...) into a :class:`Volume`.

    The last resort of :func:`medstack.load`. Conversion is :func:`medstack.io.itk.read_itk`'s (LPS origin,
    spacing, direction -> RAS+ affine; vector pixels and a 4th axis become channels).
    ``metadata["format"]`` is the ImageIO's name without ``ImageIO`` (``"vtk"``, ``"gipl"``, ...).
    """
    from medstack.io.itk import read_itk

    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file")
    with _locale_kept():
        try:
            io = _image_io(path)
        except RuntimeError as e:
            raise FormatError(f"{path}: SimpleITK cannot read it: {_one_line(e)}") from e
        if not io:
            raise FormatError(f"{path}: SimpleITK cannot read it: none of its ImageIOs recognises the file")
        vol = read_itk(path, dtype=dtype)
    name = io.removesuffix("ImageIO").lower() or io
    return vol.replace(metadata={**vol.metadata, "format": name, "itk_image_io": io})
