"""DICOM annotations: segmentations (SEG) and RT structure sets (RTSTRUCT) on the grid of the image they annotate.

Hospital ground truth usually lives in one of two DICOM objects next to the images:

- **DICOM SEG** (Segmentation Storage ``1.2.840.10008.5.1.4.1.1.66.4``; Label Map Segmentation Storage
  ``...66.7`` is read too): a multi-frame raster, one frame per (segment, plane), each frame placed in the
  world by its own ImagePositionPatient (per-frame functional groups).
- **RTSTRUCT** (RT Structure Set Storage ``1.2.840.10008.5.1.4.1.1.481.3``): polygons in patient
  coordinates (LPS mm), one or more per slice and region of interest (ROI).

Both are mapped onto a *reference* grid (a :class:`~medstack.Volume`, or the DICOM files of the image) **by
world position**: every SEG frame and every contour goes through LPS -> RAS -> ``inv(affine)`` to voxel
indices, never through frame order, file order or InstanceNumber. A frame or contour that does not land on
the reference grid is refused with a :class:`~medstack.errors.DicomError` naming the file, the frame and what
differs.

Grid tolerance (``tol``, default :data:`GRID_TOL_VOXEL` = 0.05 voxel): a SEG frame is accepted when every one
of its pixel centres lands within ``tol`` voxel of a reference voxel centre (checked at the four corners,
which bounds the whole frame since the map is affine); a contour is on a slice when all its points are within
``tol`` voxel of one grid plane. 0.05 voxel absorbs the rounding of DS strings (16 characters) and of direction
cosines over a 512-pixel frame, and still rejects any real misregistration (a quarter-voxel shift, a spacing
that differs by 1/1000 over 100+ pixels, a rotation of a tenth of a degree across a large frame).

>>> from medstack.io.dicom.annotations import find_annotations, read_seg   # doctest: +SKIP
>>> found = find_annotations("study/")                                  # doctest: +SKIP
>>> label = read_seg(found[0].path, "study/ct/")                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, DicomError, GeometryError, OutputExistsError, ReadError
from medstack.io.dicom._annotation_grid import (
    AXIS_NAMES,
    contour_plane,
    fill_even_odd,
    labels_from_channels,
    lps_to_ras_points,
    paste,
    plane_indices,
)
from medstack.io.dicom._headers import list_files
from medstack.volume import Volume

__all__ = [
    "ANNOTATION_SOP_CLASSES",
    "GRID_TOL_VOXEL",
    "AnnotationInfo",
    "Pairing",
    "annotation_kind",
    "describe_annotation",
    "find_annotations",
    "pair_annotations",
    "read_rtstruct",
    "read_seg",
    "write_seg",
]

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: SOPClassUID -> annotation kind (``"SEG"`` or ``"RTSTRUCT"``).
ANNOTATION_SOP_CLASSES: Mapping[str, str] = {
    SEG_SOP_CLASS: "SEG",
    LABELMAP_SEG_SOP_CLASS: "SEG",
    RTSTRUCT_SOP_CLASS: "RTSTRUCT",
}

#: Default tolerance (in voxels) for a SEG frame or a contour to count as lying on the reference grid.
GRID_TOL_VOXEL = 0.05

_SEG_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "SeriesDescription",
    "ContentLabel", "ContentDescription", "FrameOfReferenceUID", "ReferencedSeriesSequence", "SegmentSequence",
    "SegmentationType", "Modality", "NumberOfFrames",
]  # fmt: skip


# -- recognition and description -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AnnotationInfo:
    """What a DICOM SEG or RTSTRUCT file annotates, read from its header only.

    Attributes
    ----------
    path : str
        The file.
    kind : {"SEG", "RTSTRUCT"}
    sop_instance_uid, series_uid, study_uid : str
        Identifiers of the annotation object itself.
    series_number : int or None
    description : str
        SeriesDescription, else ContentLabel (SEG) / StructureSetLabel (RTSTRUCT).
    frame_of_reference_uid : str or None
        FrameOfReferenceUID (SEG), or the referenced frame of reference (RTSTRUCT).
    referenced_series_uids : tuple of str
        SeriesInstanceUIDs of the annotated images (SEG: ReferencedSeriesSequence; RTSTRUCT:
        ReferencedFrameOfReferenceSequence / RTReferencedStudySequence / RTReferencedSeriesSequence).
    referenced_sop_instance_uids : tuple of str
        SOPInstanceUIDs of the annotated images named in those sequences (RTSTRUCT: also ContourImageSequence).
    names, numbers : tuple
        Segment labels and SegmentNumbers (SEG) or ROI names and ROINumbers (RTSTRUCT), in file order.
    segmentation_type : str or None
        ``"BINARY"``, ``"FRACTIONAL"`` or ``"LABELMAP"`` (SEG only).
    """

    path: str
    kind: str
    sop_instance_uid: str
    series_uid: str
    series_number: int | None
    description: str
    frame_of_reference_uid: str | None
    referenced_series_uids: tuple[str, ...]
    referenced_sop_instance_uids: tuple[str, ...]
    names: tuple[str, ...]
    numbers: tuple[int, ...]
    study_uid: str = ""
    segmentation_type: str | None = None

    def summary(self) -> dict:
        """A JSON-ready description (UIDs, names and counts; no patient-identifying values, no folder path)."""
        return {
            "file": Path(self.path).name,
            "kind": self.kind,
            "sop_instance_uid": self.sop_instance_uid,
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "description": self.description,
            "segmentation_type": self.segmentation_type,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "referenced_series_uids": list(self.referenced_series_uids),
            "n_referenced_instances": len(self.referenced_sop_instance_uids),
            "names": list(self.names),
            "numbers": list(self.numbers),
        }


def annotation_kind(path) -> str | None:
    """``"SEG"`` or ``"RTSTRUCT"`` when ``path`` is a DICOM file of such an object, else ``None`` (cheap).

    Only the SOPClassUID is read (pydicom ``specific_tags``); folders, non-DICOM and unreadable files give
    ``None``.
    """
    import pydicom

    from medstack.io.dicom._headers import looks_like_dicom

    p = str(path)
    if not os.path.isfile(p) or not looks_like_dicom(p):
        return None
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception as e:  # sniffing any file: whatever pydicom raises means "not an annotation"
        logger.debug("%s: not readable as DICOM (%s: %s)", p, type(e).__name__, e)
        return None
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")
    return ANNOTATION_SOP_CLASSES.get(str(uid or ""))


def _read(path: Path, **kwargs):
    import pydicom

    if not path.is_file():
        raise ReadError(f"{path}: no such file")
    try:
        return pydicom.dcmread(path, **kwargs)
    except Exception as e:
        raise ReadError(f"{path}: not a readable DICOM file: {type(e).__name__}: {e}") from e


def _kind_of(ds, path: Path, want: str | None = None) -> str:
    uid = str(ds.get("SOPClassUID", ""))
    kind = ANNOTATION_SOP_CLASSES.get(uid)
    if kind is None or (want is not None and kind != want):
        from pydicom.uid import UID

        expected = "a DICOM SEG or RTSTRUCT" if want is None else f"a DICOM {want}"
        raise DicomError(f"{path}: SOPClassUID {uid or '(missing)'} ({UID(uid).name if uid else 'none'}) is not "
                         f"{expected}; use {'read_seg' if kind == 'SEG' else 'read_rtstruct' if kind else 'medstack.load'}"
                         " for this file")  # fmt: skip
    return kind


def _unique(values: Iterable) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(v) for v in values if v))


def _seq(ds, keyword: str) -> list:
    return list(ds.get(keyword) or [])


def _rt_referenced(ds) -> tuple[list[str], list[str], list[str]]:
    """(frame of reference UIDs, series UIDs, SOP instance UIDs) that an RTSTRUCT references."""
    frames, series, instances = [], [], []
    for fr in _seq(ds, "ReferencedFrameOfReferenceSequence"):
        frames.append(fr.get("FrameOfReferenceUID"))
        for study in _seq(fr, "RTReferencedStudySequence"):
            for s in _seq(study, "RTReferencedSeriesSequence"):
                series.append(s.get("SeriesInstanceUID"))
                instances += [im.get("ReferencedSOPInstanceUID") for im in _seq(s, "ContourImageSequence")]
    frames += [r.get("ReferencedFrameOfReferenceUID") for r in _seq(ds, "StructureSetROISequence")]
    for roi in _seq(ds, "ROIContourSequence"):
        for c in _seq(roi, "ContourSequence"):
            instances += [im.get("ReferencedSOPInstanceUID") for im in _seq(c, "ContourImageSequence")]
    return list(_unique(frames)), list(_unique(series)), list(_unique(instances))


def _seg_referenced(ds) -> tuple[list[str], list[str]]:
    series, instances = [], []
    for s in _seq(ds, "ReferencedSeriesSequence"):
        series.append(s.get("SeriesInstanceUID"))
        instances += [im.get("ReferencedSOPInstanceUID") for im in _seq(s, "ReferencedInstanceSequence")]
    return list(_unique(series)), list(_unique(instances))


def describe_annotation(path) -> AnnotationInfo:
    """Read the header of a DICOM SEG or RTSTRUCT file into an :class:`AnnotationInfo` (no pixel data).

    Raises
    ------
    ReadError
        The file is missing or not DICOM.
    DicomError
        The file is DICOM but neither a SEG nor an RTSTRUCT.
    """
    path = Path(path)
    kind = _kind_of(_read(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]), path)
    if kind == "SEG":
        ds = _read(path, stop_before_pixels=True, specific_tags=_SEG_HEADER_TAGS)
        series, instances = _seg_referenced(ds)
        segments = _seq(ds, "SegmentSequence")
        names = tuple(str(s.get("SegmentLabel", "")) for s in segments)
        numbers = tuple(int(s.SegmentNumber) for s in segments)
        frame_uid = str(ds.get("FrameOfReferenceUID", "")) or None
        description = str(ds.get("SeriesDescription", "") or ds.get("ContentLabel", ""))
        seg_type = str(ds.get("SegmentationType", "")).upper() or None
    else:
        ds = _read(path, stop_before_pixels=True)
        frames, series, instances = _rt_referenced(ds)
        rois = _seq(ds, "StructureSetROISequence")
        names = tuple(str(r.get("ROIName", "")) for r in rois)
        numbers = tuple(int(r.ROINumber) for r in rois)
        frame_uid = frames[0] if frames else None
        description = str(ds.get("SeriesDescription", "") or ds.get("StructureSetLabel", ""))
        seg_type = None
    number = ds.get("SeriesNumber")
    return AnnotationInfo(
        path=str(path), kind=kind, sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")), series_number=None if number in (None, "") else int(number),
        description=description, frame_of_reference_uid=frame_uid, referenced_series_uids=tuple(series),
        referenced_sop_instance_uids=tuple(instances), names=names, numbers=numbers,
        study_uid=str(ds.get("StudyInstanceUID", "")), segmentation_type=seg_type,
    )  # fmt: skip


def find_annotations(path, recursive: bool = True) -> list[AnnotationInfo]:
    """The DICOM SEG and RTSTRUCT objects under ``path`` (a folder, one file, or a list of files).

    Each file's SOPClassUID is read first (cheap); only annotation objects are described. Non-DICOM and
    unreadable files are skipped. Returned in path order.
    """
    return [describe_annotation(f) for f in list_files(path, recursive) if annotation_kind(f) is not None]


# -- the reference grid --------------------------------------------------------------------------------------


def _reference_volume(reference, referenced_series: Sequence[str], where: Path) -> Volume:
    """The Volume an annotation is mapped onto: given, or loaded from DICOM files / a folder."""
    if isinstance(reference, Volume):
        uid = reference.metadata.get("series_uid")
        if uid and referenced_series and uid not in referenced_series:
            logger.warning("%s: references series %s but the reference volume is series %s; mapping by world "
                           "position anyway", where, ", ".join(referenced_series), uid)  # fmt: skip
        return reference
    if not isinstance(reference, str | os.PathLike | list | tuple):
        raise ArgumentError(f"{where}: reference must be a medstack.Volume, a folder or a list of DICOM files, "
                            f"got {type(reference).__name__}")  # fmt: skip
    from medstack.io.dicom import load_series

    what = f"reference {reference}" if isinstance(reference, str | os.PathLike) else f"{len(reference)} reference files"
    info = _image_series(list_files(reference), referenced_series, where=f"{where}: {what}")
    return load_series(info)


def _image_series(files: list[str], referenced_series: Sequence[str], *, where: str):
    """The one image series among ``files`` (annotation objects excluded): the referenced one if present."""
    from medstack.io.dicom import scan

    images = [f for f in files if annotation_kind(f) is None]
    found = [s for s in scan(images) if not _is_annotation_series(s, ())]
    if not found:
        raise DicomError(f"{where}: no DICOM image series found; pass the folder or files of the annotated image")
    pool = [s for s in found if s.series_uid in referenced_series] or found
    if len(pool) > 1:
        pool = [s for s in pool if not s.is_localizer] or pool
    if len(pool) != 1:
        listing = "; ".join(f"#{s.series_number} {s.description!r} uid={s.uid}" for s in pool)
        raise DicomError(f"{where}: {len(pool)} candidate image series ({listing}); pass the files of one series "
                         "or a loaded medstack.Volume as reference")  # fmt: skip
    return pool[0]


# -- DICOM SEG -----------------------------------------------------------------------------------------------


def _fg(ds, frame: int, keyword: str):
    """Item 0 of functional-group sequence ``keyword`` for ``frame``: per-frame first, else shared, else None."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per) and keyword in per[frame] and len(per[frame][keyword].value):
        return per[frame][keyword].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword].value[0]
    return None


_FRAME_GEOMETRY = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)


def _frame_geometry(ds, frame: int, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImagePositionPatient, ImageOrientationPatient, PixelSpacing of one frame (per-frame or shared groups)."""
    values, missing = [], []
    for keyword, tag in _FRAME_GEOMETRY:
        item = _fg(ds, frame, keyword)
        if item is None or tag not in item:
            missing.append(f"{keyword}/{tag}")
        else:
            values.append(np.array([float(v) for v in item[tag].value], dtype=np.float64))
    if missing:
        raise DicomError(f"{path}: frame {frame + 1} has no {', '.join(missing)} (per-frame or shared functional "
                         "groups); medstack maps SEG frames by world position and cannot place this frame (a "
                         "TILED_FULL slide-microscopy SEG is not supported)")  # fmt: skip
    ipp, iop, ps = values
    return ipp, iop, ps


def _decode_frames(ds, path: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array  # pydicom unpacks BitsAllocated=1 frames, which may share bytes (PS3.5 8.1.1)
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise ReadError(f"{path}: cannot decode the SEG pixel data (transfer syntax {ts}): {type(e).__name__}: {e}; "
                        "install the pydicom codec plugins (pylibjpeg) for compressed SEG") from e  # fmt: skip
    return np.asarray(arr).reshape(int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns))


def read_seg(path, reference, *, as_labels: bool | None = None, tol: float = GRID_TOL_VOXEL) -> Volume:
    """Read a DICOM SEG onto the grid of the image it annotates, frame by frame by world position.

    Parameters
    ----------
    path : path-like
        The SEG file (BINARY, FRACTIONAL or LABELMAP segmentation type).
    reference : Volume, folder or list of DICOM files
        The annotated image. A Volume's affine is the grid; a folder or file list is loaded with
        :mod:`medstack.io.dicom` (annotation objects in it are ignored; the series the SEG references is chosen
        when several are present).
    as_labels : bool, optional
        ``True``: return one channel whose value is the SegmentNumber (BINARY or LABELMAP only, segments must not
        overlap). ``None``/``False`` (default): one channel per segment.
    tol : float
        Largest distance, in voxels, between a frame's pixel centres and the reference voxel centres.

    Returns
    -------
    Volume
        ``(C, D, H, W)`` with the reference's affine: C = number of segments (SegmentSequence order, by
        SegmentNumber), uint8 0/1 for BINARY/LABELMAP, float32 in [0, 1] for FRACTIONAL (stored value /
        MaximumFractionalValue); or ``(1, D, H, W)`` uint8/uint16 labels with ``as_labels=True``. Reference
        slices without a frame are empty. Metadata: ``segment_names`` (SegmentLabel), ``segment_numbers``,
        ``channel_names``, ``source``, ``format`` ("dicom-seg"), ``segmentation_type``,
        ``referenced_series_uid(s)``, ``series_uid``, ``sop_instance_uid``, ``frame_of_reference_uid``.

    Raises
    ------
    DicomError
        A frame is not on the reference grid (orientation, pixel spacing, off-slice position), has nonzero
        pixels outside the reference image, names an undescribed segment; or ``as_labels`` cannot be honoured.
    ReadError
        The file is missing, not DICOM, or its pixel data cannot be decoded.

    Notes
    -----
    Frames are placed by ImagePositionPatient (per-frame PlanePositionSequence) with the per-frame or shared
    PlaneOrientationSequence and PixelMeasuresSequence, never by frame order or DimensionIndexValues. Two frames
    of one segment on the same plane are combined with a maximum. In a LABELMAP SEG the pixel value is the
    segment number and 0 is background: a described segment 0 ("Background") gets no channel.
    """
    path = Path(path)
    ds = _read(path)
    _kind_of(ds, path, "SEG")
    seg_type = str(ds.get("SegmentationType", "")).upper()
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise DicomError(f"{path}: SegmentationType {seg_type or '(missing)'} is not BINARY, FRACTIONAL or LABELMAP")
    if as_labels and seg_type == "FRACTIONAL":
        raise DicomError(f"{path}: as_labels=True needs a BINARY segmentation, this one is FRACTIONAL (values in "
                         "[0, 1]); read the channels and threshold them, e.g. (vol.to_numpy() >= 0.5)")  # fmt: skip
    segments = sorted((int(s.SegmentNumber), str(s.get("SegmentLabel", ""))) for s in _seq(ds, "SegmentSequence"))
    if seg_type == "LABELMAP":  # pixel value 0 is the background (also where frames are omitted), not a channel
        segments = [s for s in segments if s[0] != 0]
    if not segments:
        raise DicomError(f"{path}: SegmentSequence is empty or missing: no segment is described")
    numbers = [n for n, _ in segments]
    names = [name for _, name in segments]
    channel_of = {n: c for c, n in enumerate(numbers)}
    series_refs, _ = _seg_referenced(ds)
    ref = _reference_volume(reference, series_refs, path)
    affine = np.asarray(ref.affine, dtype=np.float64)
    inv = np.linalg.inv(affine)
    frames = _decode_frames(ds, path)
    out = np.zeros((len(segments), *ref.spatial_shape), dtype=np.float32 if seg_type == "FRACTIONAL" else np.uint8)
    scale = None
    if seg_type == "FRACTIONAL":
        scale = float(ds.get("MaximumFractionalValue") or 0)
        if scale <= 0:
            raise DicomError(f"{path}: FRACTIONAL SEG without a positive MaximumFractionalValue (0062,000E)")
    for f in range(frames.shape[0]):
        where = f"{path}: frame {f + 1}"
        ipp, iop, ps = _frame_geometry(ds, f, path)
        ijk = plane_indices(ipp, iop, ps, frames.shape[1], frames.shape[2], affine, inv, tol, where)
        if seg_type == "LABELMAP":
            for number, c in channel_of.items():
                paste(out[c], (frames[f] == number).astype(np.uint8), ijk, f"{where} (segment {number})")
            continue
        ident = _fg(ds, f, "SegmentIdentificationSequence")
        number = None if ident is None else ident.get("ReferencedSegmentNumber")
        if number is None or int(number) not in channel_of:
            raise DicomError(f"{where}: ReferencedSegmentNumber {number} (SegmentIdentificationSequence) is not in "
                             f"SegmentSequence {numbers}")  # fmt: skip
        values = frames[f] / np.float32(scale) if scale else frames[f]
        paste(out[channel_of[int(number)]], values.astype(out.dtype, copy=False), ijk, f"{where} (segment {number})")
    meta = {
        "source": str(path), "format": "dicom-seg", "segmentation_type": seg_type, "segment_names": names,
        "segment_numbers": numbers, "channel_names": list(names),
        "referenced_series_uid": series_refs[0] if series_refs else None, "referenced_series_uids": series_refs,
        "series_uid": str(ds.get("SeriesInstanceUID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")) or None,
    }  # fmt: skip
    if as_labels:
        out = labels_from_channels(out, numbers, names, str(path))
        meta["channel_names"] = ["labels"]
    return Volume(out, affine, meta)


# -- RTSTRUCT ------------------------------------------------------------------------------------------------


def _select_rois(rois: list[tuple[int, str]], roi, path: Path) -> list[tuple[int, str]]:
    if roi is None:
        return rois
    wanted = [roi] if isinstance(roi, str | int) else list(roi)
    out = []
    for w in wanted:
        match = [r for r in rois if (r[0] == w if isinstance(w, int) else r[1] == str(w))]
        if not match:
            listing = ", ".join(f"{n}: {name!r}" for n, name in rois)
            raise DicomError(f"{path}: no ROI {w!r} (ROINumber or ROIName); the structure set has {listing}")
        out += [m for m in match if m not in out]
    return out


def read_rtstruct(path, reference, *, roi=None, as_labels: bool | None = None,
                  tol: float = GRID_TOL_VOXEL) -> Volume:  # fmt: skip
    """Rasterise the closed planar contours of a DICOM RTSTRUCT onto the grid of the image they were drawn on.

    Parameters
    ----------
    path : path-like
        The RT Structure Set file.
    reference : Volume, folder or list of DICOM files
        The annotated image (see :func:`read_seg`).
    roi : int, str or sequence of them, optional
        ROIs to read, by ROINumber (int) or ROIName (str). Default: every ROI of StructureSetROISequence.
    as_labels : bool, optional
        ``True``: one channel whose value is the ROINumber (ROIs must not overlap).
    tol : float
        Largest distance, in voxels, of a contour point from the reference plane it is assigned to.

    Returns
    -------
    Volume
        ``(C, D, H, W)`` uint8 0/1, one channel per ROI, with the reference's affine; metadata ``roi_names``,
        ``roi_numbers``, ``channel_names``, ``source``, ``format`` ("dicom-rtstruct"), ``referenced_series_uids``.

    Raises
    ------
    DicomError
        A contour is oblique to the grid, lies between grid planes or on a plane outside the reference image; an
        ROI asked for is not present; ``as_labels`` with overlapping ROIs.

    Notes
    -----
    ContourData (LPS mm) goes to voxel coordinates of the reference through its affine; each CLOSED_PLANAR
    contour is assigned to the grid plane it lies on (normally a slice; any grid plane of a reoriented reference
    works). All contours of one ROI on one plane are filled together with the even-odd rule, sampled at voxel
    centres: a contour inside another is a hole, overlapping contours cancel (XOR; CLOSEDPLANAR_XOR is read the
    same way). POINT and OPEN_PLANAR / OPEN_NONPLANAR contours enclose no area and are ignored (logged). Parts of a
    contour outside the image in-plane are clipped.
    """
    path = Path(path)
    ds = _read(path)
    _kind_of(ds, path, "RTSTRUCT")
    rois = [(int(r.ROINumber), str(r.get("ROIName", ""))) for r in _seq(ds, "StructureSetROISequence")]
    contours = {int(c.ReferencedROINumber): _seq(c, "ContourSequence") for c in _seq(ds, "ROIContourSequence")}
    rois += [(n, f"ROI {n}") for n in contours if n not in {r[0] for r in rois}]
    chosen = _select_rois(rois, roi, path)
    _, series_refs, _ = _rt_referenced(ds)
    ref = _reference_volume(reference, series_refs, path)
    affine = np.asarray(ref.affine, dtype=np.float64)
    shape = ref.spatial_shape  # (D, H, W) = sizes of axes (k, j, i)
    out = np.zeros((len(chosen), *shape), dtype=np.uint8)
    for ch, (number, name) in enumerate(chosen):
        planes: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        ignored: dict[str, int] = defaultdict(int)
        for n, contour in enumerate(contours.get(number, [])):
            gtype = str(contour.get("ContourGeometricType", "")).upper()
            data = np.asarray([float(v) for v in contour.get("ContourData") or []], dtype=np.float64)
            if gtype not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR") or data.size < 9:
                ignored[gtype or "(no type)"] += 1
                continue
            where = f"{path}: ROI {number} {name!r} contour {n + 1}"
            if data.size % 3:
                raise DicomError(f"{where}: ContourData holds {data.size} values, not (x, y, z) triplets")
            vox = geometry.world_to_voxel(affine, lps_to_ras_points(data.reshape(-1, 3)))
            axis, index = contour_plane(vox, tol, affine, where)
            if not 0 <= index < shape[2 - axis]:
                raise DicomError(f"{where} lies on plane {index} of axis {AXIS_NAMES[axis]}, outside the reference "
                                 f"image ({shape[2 - axis]} planes); is it the right series?")  # fmt: skip
            u_axis, v_axis = [a for a in (0, 1, 2) if a != axis]  # v: the slower (row) axis of the 2D plane
            planes[(axis, index)].append(vox[:, [u_axis, v_axis]])
        for gtype, count in ignored.items():
            logger.info("%s: ROI %d %r: %d %s contour(s) ignored (no enclosed area)", path, number, name, count, gtype)
        for (axis, index), polys in planes.items():
            u_axis, v_axis = [a for a in (0, 1, 2) if a != axis]
            mask = fill_even_odd(polys, (shape[2 - v_axis], shape[2 - u_axis]))
            sl: list = [slice(None)] * 3
            sl[2 - axis] = index
            out[ch][tuple(sl)] = mask
    numbers = [n for n, _ in chosen]
    names = [name for _, name in chosen]
    meta = {
        "source": str(path), "format": "dicom-rtstruct", "roi_names": names, "roi_numbers": numbers,
        "channel_names": list(names), "referenced_series_uids": series_refs,
        "referenced_series_uid": series_refs[0] if series_refs else None,
        "series_uid": str(ds.get("SeriesInstanceUID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }  # fmt: skip
    if as_labels:
        out = labels_from_channels(out, numbers, names, str(path))
        meta["channel_names"] = ["labels"]
    return Volume(out, affine, meta)


# -- writing a SEG -------------------------------------------------------------------------------------------


def _segment_names(segment_names, top: int, where: Path) -> list[str]:
    if segment_names is None:
        return [f"label {v}" for v in range(1, top + 1)]
    if isinstance(segment_names, Mapping):
        return [str(segment_names.get(v, f"label {v}")) for v in range(1, top + 1)]
    names = [str(n) for n in segment_names]
    if len(names) < top:
        raise ArgumentError(f"{where}: segment_names has {len(names)} names but the label's values go up to {top}; "
                            "give one name per value 1..max (or a dict {value: name})")  # fmt: skip
    return names[:top]


def write_seg(label: Volume, reference_files, path, *, segment_names=None, overwrite: bool = False) -> Path:
    """Write an integer label Volume as a BINARY DICOM SEG of the DICOM series it was drawn on (highdicom).

    Parameters
    ----------
    label : Volume
        ``(1, D, H, W)`` non-negative integer labels on exactly the grid of the reference series (as
        :func:`medstack.io.dicom.load` returns it). Each value ``v`` in ``1..max`` becomes segment number ``v``
        (DICOM numbers BINARY segments 1, 2, ... without gaps, so a value absent from the label is an empty
        segment); 0 is background.
    reference_files : list of path-like, or a folder
        The files of the annotated DICOM series (annotation objects among them are ignored).
    path : path-like
        The output file.
    segment_names : sequence or dict, optional
        SegmentLabel per value: ``names[v - 1]`` or ``{v: name}``; default ``"label v"``.
    overwrite : bool
        Replace an existing file (otherwise :class:`~medstack.errors.OutputExistsError`).

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    GeometryError
        The label grid is not the grid of the reference series.
    DicomError
        The label is not a single channel of non-negative integers, is empty, or the series has gaps.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.

    Notes
    -----
    Frames are written only where a segment is present (highdicom ``omit_empty_frames``), with the plane
    positions, orientation and pixel spacing of the label's own affine (so the SEG is world-correct by
    construction); highdicom links each frame to the source image at its position. Segments are described as
    MANUAL, category and type SCT "Tissue" (85756007): medstack does not know what the labels mean.
    :func:`read_seg` with ``as_labels=True`` gives the label back exactly.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    if not isinstance(label, Volume):
        raise ArgumentError(f"{path}: write_seg needs a medstack.Volume label, got {type(label).__name__}")
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    import medstack
    from medstack.io._atomic import atomic_output

    info = _image_series(list_files(reference_files), (), where=f"{path}: reference files")
    data = label.to_numpy()
    if data.shape[0] != 1:
        raise DicomError(f"{path}: the label must have one channel (values = segment numbers), has {data.shape[0]}")
    lab = data[0]
    if lab.dtype.kind == "b":
        lab = lab.astype(np.uint8)
    if lab.dtype.kind not in "iuf" or (lab.dtype.kind == "f" and not np.array_equal(lab, np.round(lab))):
        raise DicomError(f"{path}: the label must hold integers (segment numbers), got {lab.dtype} values")
    if lab.size and lab.min() < 0:
        raise DicomError(f"{path}: the label holds negative values; segment numbers are 1, 2, ... (0 = background)")
    top = int(lab.max(initial=0))
    if top == 0:
        raise DicomError(f"{path}: the label has no nonzero voxel; a DICOM SEG needs at least one segment")
    if top > 65535:
        raise DicomError(f"{path}: label value {top} exceeds the largest SegmentNumber (65535)")
    ref_affine = np.asarray(info.affine, dtype=np.float64)
    if tuple(label.spatial_shape) != tuple(info.shape[1:]) or not np.allclose(label.affine, ref_affine, atol=1e-3):
        raise GeometryError(f"{path}: the label grid (shape {label.spatial_shape}, affine\n{np.round(label.affine, 4)})"
                            f" is not the grid of the reference series {info.series_uid} (shape {info.shape[1:]}, "
                            f"affine\n{np.round(ref_affine, 4)}); resample it first: medstack.resample(label, like="
                            "medstack.io.dicom.load(files), mode='nearest', is_label=True)")  # fmt: skip
    if not info.uniform_spacing:
        raise DicomError(f"{path}: reference series {info.series_uid} has gaps or uneven slice steps; its slices are "
                         "not the label's grid planes, so the SEG frames could not reference them")  # fmt: skip
    names = _segment_names(segment_names, top, path)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=v, segment_label=names[v - 1][:64], segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for v in range(1, top + 1)
    ]  # fmt: skip
    source_files = list(dict.fromkeys(f.path for f in info.frames[0]))  # first volume of a 4D series
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    lps = geometry.ras_to_lps(label.affine)
    sp = geometry.spacing(label.affine)
    col_dir, row_dir = lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]
    thickness = float(abs(lps[:3, 2] @ np.cross(col_dir, row_dir)))
    positions = [hd.PlanePositionSequence("PATIENT", image_position=[float(v) for v in lps[:3, 2] * d + lps[:3, 3]])
                 for d in range(lab.shape[0])]  # fmt: skip
    orientation = hd.PlaneOrientationSequence("PATIENT", image_orientation=[float(v) for v in (*col_dir, *row_dir)])
    measures = hd.PixelMeasuresSequence(pixel_spacing=[float(sp[1]), float(sp[0])], slice_thickness=thickness,
                                        spacing_between_slices=thickness)  # fmt: skip
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=lab.astype(np.uint8 if top < 256 else np.uint16),
            segmentation_type="BINARY", segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=int(info.series_number or 0) + 1000, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medstack", manufacturer_model_name="medstack", software_versions=medstack.__version__,
            device_serial_number="0", content_label="LABELS", content_description="label map written by medstack",
            plane_positions=positions, plane_orientation=orientation, pixel_measures=measures,
            omit_empty_frames=True,
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomError(f"{path}: highdicom refused the segmentation of series {info.series_uid}: {e}") from e
    with atomic_output(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


# -- pairing annotations with image series -------------------------------------------------------------------


class Pairing(dict):
    """``{annotation SOPInstanceUID: SeriesInfo}`` from :func:`pair_annotations`; ``unpaired`` maps the
    SOPInstanceUID of each annotation left out to the reason."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unpaired: dict[str, str] = {}


def _is_annotation_series(s, annotation_paths) -> bool:
    if s.modality in ("SEG", "RTSTRUCT"):
        return True
    return any(getattr(h, "sop_class_uid", "") in ANNOTATION_SOP_CLASSES or p in annotation_paths
               for p, h in s.headers.items())  # fmt: skip


def _frame_of_reference(s) -> str:
    """FrameOfReferenceUID of a series: from its parsed header when present, else read from its first file."""
    h = s.headers[s.files[0]]
    uid = getattr(h, "frame_of_reference_uid", "")
    if uid:
        return uid
    import pydicom

    try:
        ds = pydicom.dcmread(s.files[0], stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
    except Exception as e:
        logger.debug("%s: cannot read FrameOfReferenceUID (%s)", s.files[0], e)
        return ""
    return str(ds.get("FrameOfReferenceUID", ""))


def _by_instances(a: AnnotationInfo, pool: list):
    """The series of ``pool`` holding most of the SOP instances ``a`` references, if one stands out."""
    refs = set(a.referenced_sop_instance_uids)
    if not refs:
        return None
    scores = [len(refs & {h.sop_instance_uid for h in s.headers.values()}) for s in pool]
    best = max(scores, default=0)
    return pool[scores.index(best)] if best and scores.count(best) == 1 else None


def _describe(pool) -> str:
    return ", ".join(f"#{s.series_number} {s.description!r}" for s in pool)


def _pair_one(a: AnnotationInfo, images: list, frame_uid_of) -> tuple[object | None, str]:
    """(series, "") or (None, why not) for one annotation; see :func:`pair_annotations` for the rules."""
    by_uid = [s for s in images if s.series_uid in a.referenced_series_uids]
    if len(by_uid) == 1:
        return by_uid[0], ""
    if by_uid:
        best = _by_instances(a, by_uid)
        return best, "" if best else (f"{len(by_uid)} series units share the referenced series UID "
                                      f"({_describe(by_uid)}) and its referenced instances do not single one out")  # fmt: skip
    best = _by_instances(a, images)
    if best is not None:
        return best, ""
    missing = (f"referenced series {', '.join(a.referenced_series_uids)} not found"
               if a.referenced_series_uids else "no referenced series")  # fmt: skip
    uid = a.frame_of_reference_uid
    if not uid:
        return None, f"{missing}, and no FrameOfReferenceUID to match"
    same = [s for s in images if frame_uid_of(s) == uid]
    same = [s for s in same if not s.is_localizer] or same
    if len(same) == 1:
        return same[0], ""
    if not same:
        return None, f"{missing}, and no image series has FrameOfReferenceUID {uid}"
    return None, f"{missing}, and {len(same)} image series share FrameOfReferenceUID {uid} ({_describe(same)}): ambiguous"


def pair_annotations(series: Sequence, annotations: Sequence[AnnotationInfo]) -> Pairing:
    """Match each annotation to the image series it annotates.

    Rules, in order:

    1. **Referenced series**: the series whose SeriesInstanceUID the annotation references (SEG:
       ReferencedSeriesSequence; RTSTRUCT: RTReferencedSeriesSequence). When several units share that UID
       (a series split by orientation or echo), the one holding most referenced SOP instances wins.
    2. **Referenced instances**: the one series holding most of the referenced SOPInstanceUIDs.
    3. **Frame of reference**: the one image series sharing the annotation's FrameOfReferenceUID (localizers
       are left out when another series shares it). The FrameOfReferenceUID of a series is read from its first
       file.

    Parameters
    ----------
    series : list of SeriesInfo
        From :func:`medstack.io.dicom.scan` (SEG/RTSTRUCT objects among them are ignored).
    annotations : list of AnnotationInfo
        From :func:`find_annotations` or :func:`describe_annotation`.

    Returns
    -------
    Pairing
        A dict ``{annotation SOPInstanceUID: SeriesInfo}``; its ``unpaired`` attribute gives, for every
        annotation not paired (none or several candidates), the reason. Reasons are also logged (INFO).
    """
    paths = {a.path for a in annotations}
    images = [s for s in series if not _is_annotation_series(s, paths)]
    cache: dict[int, str] = {}

    def frame_uid_of(s) -> str:
        if id(s) not in cache:
            cache[id(s)] = _frame_of_reference(s)
        return cache[id(s)]

    result = Pairing()
    for a in annotations:
        chosen, reason = _pair_one(a, images, frame_uid_of)
        if chosen is None:
            result.unpaired[a.sop_instance_uid] = reason
            logger.info("%s: %s not paired: %s", a.path, a.kind, reason)
        else:
            result[a.sop_instance_uid] = chosen
    return result
