"""Pass 1 of the DICOM reader: headers only, one compact record per 2D frame.

A file yields one :class:`Frame` per 2D image it holds: one for a classic single-frame file, one per
frame of an enhanced multi-frame file (per-frame functional groups), one per tile of a Siemens MOSAIC.
Pixel data are never read here; for uncompressed files the byte offset of the pixel data is recorded so
that pass 2 can read it straight into the output array.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from medstack.errors import ReadError
from medstack.io.dicom._vendors import (
    PRIVATE_TAGS,
    ge_polarity,
    image_component,
    is_derived_diffusion,
    mosaic_facts,
    private_number,
    private_value,
    uih_grid,
)

NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": ("<", False),  # implicit VR little endian
    "1.2.840.10008.1.2.1": ("<", True),  # explicit VR little endian
    "1.2.840.10008.1.2.2": (">", True),  # explicit VR big endian (retired)
}

#: Tags read in pass 1 (pydicom ``specific_tags``): everything the grouping, ordering, geometry and
#: scaling need, and nothing else.
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
    "SeriesNumber", "SeriesDescription", "ProtocolName", "Modality", "Manufacturer", "ImageType",
    "PatientID", "PatientName", "StudyDate", "SeriesDate", "StudyDescription", "AccessionNumber",
    "Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "AcquisitionNumber",
    "AcquisitionTime", "ContentTime", "EchoNumbers", "EchoTime", "TemporalPositionIdentifier", "TriggerTime",
    "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "SamplesPerPixel", "NumberOfFrames", "GantryDetectorTilt",
    "DiffusionBValue", "DiffusionGradientOrientation", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "PatientPosition", "WindowCenter", "WindowWidth",
    "DiffusionDirectionality", "ComplexImageComponent", "ImagesInAcquisition", "NumberOfSlices",
    (0x0019, 0x0010), (0x0019, 0x100A), (0x0019, 0x100C), (0x0043, 0x0010), (0x0043, 0x1039),
    (0x0029, 0x0010), (0x0029, 0x0011), (0x0029, 0x1010), *PRIVATE_TAGS,
]  # fmt: skip

_TAG_CACHE: list | None = None


def _header_tags() -> list:
    """HEADER_TAGS as pydicom Tag objects, converted once (pydicom would convert keywords on every read)."""
    global _TAG_CACHE
    if _TAG_CACHE is None:
        from pydicom.tag import Tag

        _TAG_CACHE = [Tag(t) for t in HEADER_TAGS]
    return _TAG_CACHE


class _Raw:
    """Fast reads of simple elements straight from pydicom's raw (unconverted) elements.

    ``ds.get(keyword)`` converts and validates every value (the dominant cost of a header scan); here the
    bytes of the few values we need are decoded directly. Already-converted elements are used as they are.
    """

    __slots__ = ("ds",)
    _tags: ClassVar[dict] = {}  # keyword -> tag, filled on first use

    def __init__(self, ds):
        self.ds = ds

    def _elem(self, keyword):
        tag = _Raw._tags.get(keyword)
        if tag is None:
            from pydicom.datadict import tag_for_keyword

            tag = _Raw._tags[keyword] = tag_for_keyword(keyword)
        d = getattr(self.ds, "_dict", None)  # pydicom's element dict: no Tag() conversion per lookup
        if d is not None:
            return d.get(tag)
        try:
            return self.ds.get_item(tag)
        except KeyError:
            return None

    def str(self, keyword, default=""):
        e = self._elem(keyword)
        if e is None or e.value is None:
            return default
        v = e.value
        if isinstance(v, bytes):
            v = v.decode("latin-1")
        elif not isinstance(v, str):
            v = "\\".join(map(str, v)) if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue" else str(v)
        v = v.strip("\x00 ")
        return v if v else default

    def strs(self, keyword) -> list[str]:
        text = self.str(keyword)
        return [t.strip() for t in text.split("\\")] if text else []

    def num(self, keyword, default=None, cast=float):
        vals = self.strs(keyword)
        return _num(vals[0], default, cast) if vals else default

    def vec(self, keyword, n):
        return _vec(self.strs(keyword) or None, n)

    def us(self, keyword, default=None):
        """An unsigned short (US) value (Rows, Columns, Bits*...)."""
        import struct

        e = self._elem(keyword)
        if e is None or e.value is None:
            return default
        v = e.value
        if isinstance(v, bytes):
            if len(v) < 2:
                return default
            little = getattr(e, "is_little_endian", True)
            return struct.unpack("<H" if little is not False else ">H", v[:2])[0]
        return int(v)


DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_TAGS = {(0x7FE0, 0x0010): "OB", (0x7FE0, 0x0008): "OF", (0x7FE0, 0x0009): "OD"}


@dataclasses.dataclass
class Frame:
    """One 2D image of a series, as found in pass 1 (no pixels)."""

    path: str
    file_index: int  # index into the scan's list of FileHeader
    frame: int  # frame number inside the file (0 for single-frame files)
    tile: int  # MOSAIC tile index (-1 when not a mosaic)
    ipp: np.ndarray | None  # ImagePositionPatient (LPS mm) of the frame's first pixel
    iop: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    slope: float
    intercept: float
    temporal: tuple  # keys that order the volumes of a 4D set at one position
    bvalue: float | None = None
    kind: tuple = ()  # what image this is: (component, echo number, echo time ms, derived); see image_kind
    flip_rows: bool = False  # stored with its rows reversed (GE reverse-polarity EPI): reversed back at load
    gradient: np.ndarray | None = None  # diffusion gradient direction (as the scanner wrote it)


@dataclasses.dataclass
class FileHeader:
    """Per-file facts from pass 1."""

    path: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    manufacturer: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    tile_rows: int
    tile_cols: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    samples_per_pixel: int
    n_frames: int
    transfer_syntax: str
    pixel_offset: int | None  # byte offset of native pixel data, None when encapsulated / absent
    pixel_value_bytes: int | None  # length of the pixel data element's value
    has_pixels: bool
    instance_number: int | None
    echo_number: int | None
    echo_time: float | None
    patient_id: str
    study_date: str
    series_date: str
    acquisition_time: str
    gantry_tilt: float
    thickness: float  # SpacingBetweenSlices, else SliceThickness (used only for single-slice series)
    mosaic: int  # number of tiles in a MOSAIC or grid, 0 otherwise
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    problem: str | None = None  # why this file cannot be decoded safely (the series is then refused at load)
    polarity: str | None = None  # GE epi_pepolar phase-encoding polarity: "reversed" / "forward"
    unreadable: str | None = None  # the pixel data cannot be read as the header describes it (sizes disagree)
    float_pixels: bool = False  # Float / Double Float Pixel Data (7FE0,0008 / 0009)
    notes: list[str] = dataclasses.field(default_factory=list)  # header values corrected in pass 1 (findings)
    frames: list[Frame] = dataclasses.field(default_factory=list)

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples_per_pixel * self.bits_allocated // 8


def _num(value, default=None, cast=float):
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except (TypeError, ValueError):
        return default


def _vec(value, n):
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _first(ds, *names):
    for name in names:
        v = ds.get(name)
        if v is not None and v != "":
            return v
    return None


def _pixel_element_position(fh, ds, path: str):
    """Offset and length of a native pixel data value, given the file position where pydicom stopped."""
    pos = fh.tell()
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    return _pixel_from_head(fh.read(12), pos, ts)


def _pixel_from_head(head: bytes, pos: int, ts: str):
    """(offset, length, has_pixels, float_bytes) of the pixel data element whose first 12 bytes ``head`` are at
    ``pos``; ``float_bytes`` is 4 for Float Pixel Data (7FE0,0008), 8 for Double Float (7FE0,0009), else 0."""
    import struct

    if len(head) < 8:
        return None, None, False, 0
    order, explicit = NATIVE_SYNTAXES.get(ts, ("<", True))
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group, elem) not in PIXEL_TAGS:
        return None, None, False, 0
    float_bytes = {0x0008: 4, 0x0009: 8}.get(elem, 0)
    if explicit:
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"OF", b"OD", b"UN", b"OL", b"OV"):
            length = struct.unpack(order + "I", head[8:12])[0]
            start = pos + 12
        else:
            length = struct.unpack(order + "H", head[6:8])[0]
            start = pos + 8
    else:
        length = struct.unpack(order + "I", head[4:8])[0]
        start = pos + 8
    if length == 0xFFFFFFFF or ts not in NATIVE_SYNTAXES:
        return None, None, True, float_bytes  # encapsulated (compressed): decoded through pydicom
    return start, length, True, float_bytes


#: frames x rows x columns above which a header is refused outright (a 2^31-frame or 65535^2 claim in a small file)
MAX_PIXELS = 1 << 34
#: decoded / compressed size above which an encapsulated (compressed) file is taken for a lying header
MAX_COMPRESSION = 2000


def _size_problem(rows, cols, n_frames, bits, spp, length, path, has_pixels) -> str | None:
    """Why the sizes in a header cannot be right (checked before anything is allocated), or None."""
    if not has_pixels:
        return None
    if rows <= 0 or cols <= 0 or n_frames <= 0:
        return f"Rows={rows}, Columns={cols}, NumberOfFrames={n_frames}: an image needs positive sizes"
    if bits not in (1, 8, 16, 32, 64):
        return f"BitsAllocated={bits} is not supported (8, 16, 32 or 64 expected)"
    expected = (rows * cols * n_frames * spp * bits + 7) // 8
    if rows * cols * n_frames > MAX_PIXELS:
        return (f"Rows x Columns x NumberOfFrames = {rows} x {cols} x {n_frames} is beyond any real image; "
                "the header is corrupt")  # fmt: skip
    if length is not None:  # native pixel data: the element's length must be what the header implies
        if length < expected:
            return (f"pixel data (7FE0,0010) holds {length} bytes but Rows x Columns x NumberOfFrames x "
                    f"SamplesPerPixel x BitsAllocated/8 = {rows} x {cols} x {n_frames} x {spp} x {bits // 8} = "
                    f"{expected} bytes: truncated file or wrong Rows/Columns/NumberOfFrames")  # fmt: skip
        if length > expected + 1 and bits >= 8:  # one padding byte keeps the length even
            return (f"pixel data (7FE0,0010) holds {length} bytes, more than the {expected} bytes that Rows "
                    f"x Columns x NumberOfFrames = {rows} x {cols} x {n_frames} imply: Rows/Columns/NumberOfFrames or "
                    "BitsAllocated are wrong; refusing to guess the image layout")  # fmt: skip
    else:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        if size and expected > MAX_COMPRESSION * size + (1 << 20):
            return (f"compressed pixel data of {size} bytes cannot hold {rows} x {cols} x {n_frames} "
                    f"frames ({expected} bytes decoded, > {MAX_COMPRESSION}x); the header is corrupt")  # fmt: skip
    return None


_WANTED: frozenset | None = None
_HEAD_BYTES = 1 << 16  # first read of a file in pass 1; headers are usually smaller (else doubled)


def _read_header(path: str):
    """(dataset of the wanted tags, transfer syntax, pixel offset, pixel length, has pixels): the fast walker
    (:mod:`._fastheader`) when it can, else pydicom."""
    import pydicom

    from medstack.io.dicom import _fastheader

    global _WANTED
    if _WANTED is None:
        _WANTED = frozenset(int(t) for t in _header_tags()) | {0x00080005}
    with open(path, "rb", buffering=0) as fh:
        buf = fh.read(_HEAD_BYTES)
        complete = len(buf) < _HEAD_BYTES
        res = _fastheader.walk(buf, _WANTED, complete)
        while res is _fastheader.MORE:  # a long header: read as much again (never called once complete)
            want = len(buf)
            more = fh.read(want)
            buf += more
            res = _fastheader.walk(buf, _WANTED, len(more) < want)
        if res is not None:
            raw, ts, implicit, pix = res
            ds = _fastheader.dataset(buf, raw, implicit)
            if pix is None:
                return ds, ts, None, None, False, 0
            return (ds, ts, *_pixel_from_head(buf[pix : pix + 12], pix, ts))
        fh.seek(0)
        ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_header_tags())
        ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")) if hasattr(ds, "file_meta") else ""
        if ts == DEFLATED:  # the file position is inside the deflated stream: ask pydicom whether pixels follow
            fh.seek(0)
            full = pydicom.dcmread(fh)
            float_bytes = 4 if "FloatPixelData" in full else 8 if "DoubleFloatPixelData" in full else 0
            return ds, ts, None, None, "PixelData" in full or float_bytes > 0, float_bytes
        return (ds, ts, *_pixel_element_position(fh, ds, path))


def _temporal_key(ds, frame_content=None) -> tuple:
    """Keys ordering the volumes of a 4D set at one slice position (smaller first)."""
    tpi = None
    if frame_content is not None:
        tpi = _num(frame_content.get("TemporalPositionIndex"), cast=int)
        if tpi is None:
            dims = frame_content.get("DimensionIndexValues")
            if dims is not None and not isinstance(dims, int | float) and len(dims) >= 3:
                tpi = int(dims[-1])
    r = _Raw(ds)
    if tpi is None:
        tpi = r.num("TemporalPositionIdentifier", None, int)
    return (
        tpi if tpi is not None else 0,
        r.num("TriggerTime", 0.0),
        r.num("InstanceNumber", 0, int),
        r.str("AcquisitionTime"),
    )


def _bvalue(ds, manufacturer: str = "") -> float | None:
    """b-value (s/mm2): the standard DiffusionBValue (0018,9087, FD), else GE / Siemens / UIH private tags."""
    try:
        v = ds.get("DiffusionBValue")  # FD: a binary double, decoded by pydicom (never as text)
        v = None if v is None else float(v[0] if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue"
                                          else v)  # fmt: skip
    except (TypeError, ValueError, IndexError):
        v = None
    if v is not None and math.isfinite(v):
        return v
    ge = ds.get((0x0043, 0x1039))
    if ge is not None:
        try:
            return float(ge.value[0]) % 1e9 if not isinstance(ge.value, str | bytes) else float(
                (ge.value.decode("latin-1") if isinstance(ge.value, bytes) else ge.value).split("\\")[0]) % 1e9
        except (TypeError, ValueError, IndexError):
            return None
    siemens = ds.get((0x0019, 0x100C))
    if siemens is not None:
        return _num(private_value(ds, (0x0019, 0x100C)))
    if manufacturer.upper().startswith("UIH") or str(private_value(ds, (0x0065, 0x0010)) or "") == "Image Private Header":
        return private_number(ds, (0x0065, 0x1009))
    return None


def _gradient(ds) -> np.ndarray | None:
    g = _vec(ds.get("DiffusionGradientOrientation"), 3)
    if g is None and str(private_value(ds, (0x0065, 0x0010)) or "") == "Image Private Header":
        v = private_value(ds, (0x0065, 0x1037))
        g = _vec(None if v is None or isinstance(v, str) else list(v), 3)
    return g


def image_kind(component, echo_number, echo_time, derived) -> tuple:
    """The kind of a frame: frames of one series with different kinds become named channels."""
    return (component or "", echo_number, None if echo_time is None else round(float(echo_time), 3), derived or "")


def parse_file(path: str, file_index: int = 0) -> FileHeader:
    """Read one file's header (no pixels) into a :class:`FileHeader` with its frames.

    Raises ``pydicom.errors.InvalidDicomError`` / ``OSError`` / ``ValueError`` on unreadable input; the
    caller turns those into findings or errors.
    """
    ds, ts, offset, length, has_pixels, float_bytes = _read_header(path)
    r = _Raw(ds)
    rows = r.us("Rows", 0)
    cols = r.us("Columns", 0)
    n_frames = r.num("NumberOfFrames", 1, int) or 1
    notes: list[str] = []  # header values medstack corrected (reported as findings)
    image_type = tuple(v.upper() for v in r.strs("ImageType"))
    manufacturer = r.str("Manufacturer")
    ps = r.vec("PixelSpacing", 2)
    problem = None
    if ps is None and r.strs("PixelSpacing"):
        problem = f"{path}: PixelSpacing {r.strs('PixelSpacing')} is not two finite numbers; the pixel size is unknown"
    if ps is None:
        ps = r.vec("ImagerPixelSpacing", 2)
    tiles = None  # MosaicFacts / GridFacts: several slices tiled in one image
    mosaic = 0
    tile_rows, tile_cols = rows, cols
    if "MOSAIC" in image_type and n_frames == 1:
        tiles = mosaic_facts(ds, path, rows, cols, r.vec("ImagePositionPatient", 3), r.vec("ImageOrientationPatient", 6), ps)
        problem = problem or tiles.problem
        if tiles.n_tiles > 1 and not problem:
            grid = math.ceil(math.sqrt(tiles.n_tiles))
            mosaic, tile_rows, tile_cols = tiles.n_tiles, rows // grid, cols // grid
    elif n_frames == 1:
        tiles = uih_grid(ds, path, rows, cols)
        if tiles is not None:
            problem = problem or tiles.problem
            if not problem:
                mosaic, tile_rows, tile_cols = len(tiles.positions), tiles.tile_rows, tiles.tile_cols
    bits_allocated = r.us("BitsAllocated", 16)
    if float_bytes:  # Float / Double Float Pixel Data: IEEE values, no rescale
        bits_allocated = 8 * float_bytes
    unreadable = _size_problem(rows, cols, n_frames, bits_allocated, r.us("SamplesPerPixel", 1), length, path,
                               has_pixels)  # fmt: skip
    header = FileHeader(
        path=path,
        sop_instance_uid=r.str("SOPInstanceUID"),
        series_uid=r.str("SeriesInstanceUID"),
        study_uid=r.str("StudyInstanceUID"),
        series_number=r.num("SeriesNumber", None, int),
        description=r.str("SeriesDescription") or r.str("ProtocolName"),
        modality=r.str("Modality"),
        manufacturer=manufacturer,
        image_type=image_type,
        rows=rows,
        cols=cols,
        tile_rows=tile_rows,
        tile_cols=tile_cols,
        bits_allocated=bits_allocated,
        bits_stored=r.us("BitsStored") or bits_allocated,
        pixel_representation=r.us("PixelRepresentation", 0),
        photometric=r.str("PhotometricInterpretation", "MONOCHROME2").upper(),
        samples_per_pixel=r.us("SamplesPerPixel", 1),
        n_frames=n_frames,
        transfer_syntax=ts,
        pixel_offset=offset,
        pixel_value_bytes=length,
        has_pixels=has_pixels,
        instance_number=r.num("InstanceNumber", None, int),
        echo_number=r.num("EchoNumbers", None, int),
        echo_time=r.num("EchoTime"),
        patient_id=r.str("PatientID"),
        study_date=r.str("StudyDate"),
        series_date=r.str("SeriesDate"),
        acquisition_time=r.str("AcquisitionTime"),
        gantry_tilt=r.num("GantryDetectorTilt", 0.0) or 0.0,
        thickness=r.num("SpacingBetweenSlices") or r.num("SliceThickness") or 1.0,
        mosaic=mosaic if mosaic > 1 else 0,
        sop_class_uid=r.str("SOPClassUID"),
        frame_of_reference_uid=r.str("FrameOfReferenceUID"),
        problem=problem,
        unreadable=unreadable,
        float_pixels=bool(float_bytes),
        notes=notes,
    )
    if not unreadable:  # a lying header builds no frames (NumberOfFrames = 2^31 must not become 2^31 objects)
        header.frames = _frames(ds, header, file_index, tiles if mosaic else None, ps)
    return header


ORIENTATION_TOL = 1e-3  # |1 - norm| and |cos| of ImageOrientationPatient normalised silently below this
ORIENTATION_FIX_TOL = 0.02  # ... corrected with a finding below this, refused above


def _checked(h: FileHeader, ipp, iop, ps, slope, inter, where=""):
    """Geometry and scaling values that can be trusted, corrected within tolerances (notes) or refused (problem).

    ImageOrientationPatient: unit, orthogonal direction cosines (normalised / orthogonalised when off by less than
    ORIENTATION_FIX_TOL, refused beyond); PixelSpacing: positive and finite; RescaleSlope 0 is read as 1 (as
    dcm2niix does), non-finite slope / intercept refused."""
    label = f"{h.path}{where}"
    if iop is not None:
        row, col = iop[:3], iop[3:]
        nr, nc = np.linalg.norm(row), np.linalg.norm(col)
        cos = float(row @ col) / (nr * nc) if nr > 0 and nc > 0 else 1.0
        off = max(abs(nr - 1), abs(nc - 1), abs(cos))
        if off > ORIENTATION_FIX_TOL:
            h.problem = h.problem or (f"{label}: ImageOrientationPatient {np.round(iop, 4).tolist()} is not two unit, "
                                      f"orthogonal direction cosines (norms {nr:.3g}, {nc:.3g}, cosine {cos:.3g}); the "
                                      "slice orientation cannot be trusted")  # fmt: skip
            iop = None
        elif off > 0:
            row = row / nr
            col = col - (col @ row) * row
            col = col / np.linalg.norm(col)
            if off > ORIENTATION_TOL:
                h.notes.append(f"{label}: ImageOrientationPatient normalised (norms {nr:.4g}, {nc:.4g}, cosine "
                               f"{cos:.3g})")  # fmt: skip
            iop = np.concatenate([row, col])
    if ps is not None and not (np.all(np.isfinite(ps)) and np.all(ps > 0)):
        h.problem = h.problem or f"{label}: PixelSpacing {ps.tolist()} is not positive; the pixel size is unknown"
        ps = None
    if ps is None and h.has_pixels and h.modality in ("CT", "MR", "PT", "NM") and not h.problem:
        h.notes.append(f"{label}: no PixelSpacing (0028,0030): 1 mm assumed")
    if slope is not None and (not math.isfinite(slope) or (inter is not None and not math.isfinite(inter))):
        h.problem = h.problem or f"{label}: RescaleSlope/Intercept {slope}/{inter} are not finite numbers"
    elif slope == 0:
        h.notes.append(f"{label}: RescaleSlope 0 read as 1 (as dcm2niix does)")
        slope = 1.0
    return ipp, iop, ps, slope, inter


def _frames(ds, h: FileHeader, file_index: int, tiles, ps) -> list[Frame]:
    r = _Raw(ds)
    ipp = r.vec("ImagePositionPatient", 3)
    iop = r.vec("ImageOrientationPatient", 6)
    slope, inter = r.num("RescaleSlope", 1.0), r.num("RescaleIntercept", 0.0)
    bval = _bvalue(ds, h.manufacturer)
    gradient = _gradient(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if h.n_frames > 1 else None
    if per_frame is None or len(per_frame) == 0:
        ipp, iop, ps, slope, inter = _checked(h, ipp, iop, ps, slope, inter)
    else:
        if len(per_frame) != h.n_frames:
            h.problem = h.problem or (f"{h.path}: NumberOfFrames is {h.n_frames} but PerFrameFunctionalGroupsSequence "
                                      f"has {len(per_frame)} items; the frames cannot be placed")  # fmt: skip
        shared = ds.get("SharedFunctionalGroupsSequence")
        shared = shared[0] if shared else None
        return [_enhanced_frame(ds, h, file_index, i, item, shared) for i, item in enumerate(per_frame)]
    temporal = _temporal_key(ds)
    polarity = ge_polarity(ds, temporal[0] or None) if h.manufacturer.upper().startswith("GE") else None
    if polarity == "unknown":
        h.problem = h.problem or (f"{h.path}: GE epi_pepolar image (0019,109C) whose reverse-polarity volumes "
                                  "alternate ((0019,10B3) = 2 or 3) but without TemporalPositionIdentifier "
                                  "(0020,0100): which rows are reversed is unknown")  # fmt: skip
    h.polarity = polarity if polarity in ("reversed", "forward") else None
    derived = is_derived_diffusion(ds, h.image_type, h.manufacturer, bval, gradient)
    component = image_component(ds, h.image_type, h.manufacturer)
    kind = image_kind(component, h.echo_number, h.echo_time, derived)
    flip = polarity == "reversed"
    spacing = None if ps is None else (ps[0], ps[1])
    if tiles is not None:
        positions = tiles.positions or [None] * h.mosaic
        return [Frame(h.path, file_index, 0, t, positions[t], iop, spacing, slope, inter, temporal, bval, kind, flip,
                      gradient) for t in range(h.mosaic)]  # fmt: skip
    return [
        Frame(h.path, file_index, i, -1, ipp, iop, spacing, slope, inter, (*temporal, i), bval, kind, flip, gradient)
        for i in range(h.n_frames)
    ]


def _group_attr(item, shared, seq_name, attr):
    for source in (item, shared):
        if source is None:
            continue
        seq = source.get(seq_name)
        if seq:
            v = seq[0].get(attr)
            if v is not None:
                return v
    return None


def _enhanced_frame(ds, h, file_index, i, item, shared) -> Frame:
    ipp = _vec(_group_attr(item, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
    iop = _vec(_group_attr(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    ps = _vec(_group_attr(item, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
    slope = _num(_group_attr(item, shared, "PixelValueTransformationSequence", "RescaleSlope"), None)
    inter = _num(_group_attr(item, shared, "PixelValueTransformationSequence", "RescaleIntercept"), None)
    if slope is None:
        slope = _num(ds.get("RescaleSlope"), 1.0)
    if inter is None:
        inter = _num(ds.get("RescaleIntercept"), 0.0)
    ipp, iop, ps, slope, inter = _checked(h, ipp, iop, ps, slope, inter, f" frame {i + 1}")
    content = item.get("FrameContentSequence")
    content = content[0] if content else None
    bval = _num(_group_attr(item, shared, "MRDiffusionSequence", "DiffusionBValue"), None)
    frame_type = _group_attr(item, shared, "MRImageFrameTypeSequence", "FrameType")
    frame_type = tuple(str(v).upper() for v in frame_type) if frame_type else ()
    component = _group_attr(item, shared, "MRImageFrameTypeSequence", "ComplexImageComponent")
    echo_time = _num(_group_attr(item, shared, "MREchoSequence", "EffectiveEchoTime"), None)
    directionality = _group_attr(item, shared, "MRDiffusionSequence", "DiffusionDirectionality")
    gradient = None
    seq = _group_attr(item, shared, "MRDiffusionSequence", "DiffusionGradientDirectionSequence")
    if seq:
        gradient = _vec(seq[0].get("DiffusionGradientOrientation"), 3)
    derived = "trace" if str(directionality or "").upper() == "ISOTROPIC" else None
    derived = derived or is_derived_diffusion(None, frame_type, h.manufacturer, bval, gradient)
    kind = image_kind(image_component(ds, h.image_type, h.manufacturer, frame_type, str(component or "")), None,
                      echo_time, derived)  # fmt: skip
    return Frame(h.path, file_index, i, -1, ipp, iop, None if ps is None else (ps[0], ps[1]), slope, inter,
                 (*_temporal_key(ds, content), i), bval, kind, False, gradient)  # fmt: skip


def list_files(path, recursive: bool = True) -> list[str]:
    """The files under ``path`` (a folder, one file, or a list of files), sorted; hidden folders skipped."""
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise ReadError(f"{p}: no such file or folder")
        if p.is_file():
            return [str(p)]
        walker = os.walk(p) if recursive else [(str(p), [], [e.name for e in os.scandir(p) if e.is_file()])]
        files = []
        for root, dirs, names in walker:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(root, n) for n in sorted(names))
        return files
    files = [str(f) for f in path]
    for f in files:
        if not os.path.isfile(f):
            raise ReadError(f"{f}: no such file")
    return files


SKIP_SUFFIXES = {
    ".txt", ".json", ".nii", ".gz", ".png", ".jpg", ".jpeg", ".xml", ".csv", ".md", ".h5", ".hdf5", ".nrrd",
    ".mha", ".mhd", ".raw", ".zip", ".tar", ".py", ".pdf", ".html", ".bval", ".bvec", ".log", ".ini", ".yaml",
}  # fmt: skip


def looks_like_dicom(path: str) -> bool:
    """Cheap content check: 'DICM' at byte 128, or (no preamble) a group 0x0008/0x0002 tag at byte 0."""
    name = os.path.basename(path)
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    if Path(name).suffix.lower() in SKIP_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[2:4] in (b"\x00\x00", b"\x05\x00",
                                                                                      b"\x08\x00", b"\x16\x00")
