"""Vendor rules of pass 1: facts that only private tags hold, read into plain values.

Each function takes a pydicom dataset read by pass 1 (``specific_tags``) and returns facts, never a
policy: Siemens MOSAIC slice count and slice positions (CSA header, else the ASCCONV protocol text),
United Imaging "save by slice" grids (tile size and per-tile positions), GE reverse-polarity EPI,
GE and enhanced-DICOM image kinds (magnitude / phase / real / imaginary / field map), and derived
diffusion volumes (trace / ADC). Where a rule cannot be applied safely the function says why in a
``problem`` string; the loader turns it into a refusal that names the file and the tag.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import warnings

import numpy as np

#: Private tags read in pass 1, by vendor (private creator block 0x10 assumed, checked where it matters).
PRIVATE_TAGS = [
    (0x0019, 0x109C), (0x0019, 0x10B3), (0x0043, 0x102F), (0x0043, 0x107C), (0x0021, 0x104F),  # GE
    (0x0021, 0x0010), (0x2001, 0x0010), (0x2005, 0x0010),  # private creators: pydicom decodes known VRs
    (0x0019, 0x1029),  # Siemens MosaicRefAcqTimes (one per tile)
    (0x0029, 0x1020),  # Siemens CSA series header (ASCCONV protocol text)
    (0x0065, 0x0010), (0x0065, 0x1004), (0x0065, 0x1009), (0x0065, 0x1037), (0x0065, 0x1050),
    (0x0065, 0x1051),  # UIH
    (0x2001, 0x1004), (0x2005, 0x1413),  # Philips diffusion direction, gradient number
]  # fmt: skip


#: binary private elements read here, with their value representation (struct code): in implicit-VR files, or
#: without their private creator, pydicom hands them over as undecoded bytes (VR UN)
_BINARY = {(0x0021, 0x104F): "h", (0x0043, 0x102F): "h", (0x0043, 0x1030): "h", (0x0019, 0x100A): "H",
           (0x0019, 0x1029): "d", (0x0065, 0x1009): "d", (0x0065, 0x1037): "d"}  # fmt: skip


def private_value(ds, tag):
    """The value of a private element, or None: bytes of an implicit-VR (UN) element decoded by the known VR of
    the tag (binary numbers) or as text."""
    try:
        elem = ds.get(tag)
    except Exception:  # a damaged private element: as if absent
        return None
    if elem is None:
        return None
    try:
        v = elem.value
    except Exception:
        return None
    if isinstance(v, bytes):
        code = _BINARY.get((tag[0], tag[1]))
        size = struct.calcsize(code) if code else 0
        if code and len(v) >= size and len(v) % size == 0:
            little = getattr(elem, "is_little_endian", True) is not False
            vals = struct.unpack(("<" if little else ">") + code * (len(v) // size), v)
            return vals[0] if len(vals) == 1 else list(vals)
        v = v.decode("latin-1", errors="replace").strip("\x00 ")
    return v


def private_number(ds, tag) -> float | None:
    v = private_value(ds, tag)
    if v is None:
        return None
    if isinstance(v, str):
        v = v.split("\\")[0]
    elif not isinstance(v, int | float) and hasattr(v, "__len__"):
        v = v[0] if len(v) else None
    try:
        out = float(v)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# -- Siemens MOSAIC ------------------------------------------------------------------------------------

_ASC_LINE = re.compile(r"^\s*([A-Za-z0-9_.\[\]]+)\s*=\s*(.*?)\s*$")


def ascconv(ds) -> dict[str, str]:
    """The ``### ASCCONV BEGIN ... END`` protocol text of the Siemens CSA series header (0029,1020), parsed
    into ``{key: value}`` strings (empty when absent). Values are as written (numbers, quoted strings)."""
    raw = private_value(ds, (0x0029, 0x1020))
    if raw is None:
        return {}
    text = raw if isinstance(raw, str) else str(raw)
    start = text.find("### ASCCONV BEGIN")
    if start < 0:
        return {}
    end = text.find("### ASCCONV END", start)
    out = {}
    for line in text[start:end if end > 0 else None].splitlines()[1:]:
        m = _ASC_LINE.match(line.split("#", 1)[0])
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _asc_float(asc, key, default=None):
    try:
        return float(asc[key])
    except (KeyError, ValueError):
        return default


@dataclasses.dataclass(frozen=True)
class MosaicFacts:
    """Where the tiles of one MOSAIC file lie: ``positions[t]`` (LPS, first pixel of tile ``t``)."""

    n_tiles: int
    positions: list | None  # per-tile first-pixel positions, LPS mm
    source: str  # "csa", "ascconv" or ""
    problem: str | None = None


def mosaic_facts(ds, path, rows, cols, ipp, iop, ps) -> MosaicFacts:
    """Slice count and tile positions of a Siemens MOSAIC (ImageType contains MOSAIC).

    Sources, in order: the CSA image header (NumberOfImagesInMosaic, SliceNormalVector; tile ``t`` lies
    ``t * SpacingBetweenSlices`` along the normal, as nibabel and dcm2niix compute it); else, when the image
    header was removed (anonymisation), the ASCCONV protocol of the CSA series header: ``sSliceArray.lSize``
    slices at ``sSliceArray.asSlice[k].sPosition``. Tile 0 is matched to the first or the last protocol slice
    through the file's ImagePositionPatient; when neither matches, or nothing gives the slice count, the
    mosaic is reported as a problem (never returned as one tiled slice).
    """
    n = None
    normal = None
    tag = private_number(ds, (0x0019, 0x100A))
    if tag is not None:
        n = int(tag)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom warns on import that it is experimental
            from nibabel.nicom import csareader

        csa = csareader.get_csa_header(ds, "image")
        if csa is not None:
            n = n or _int_or_none(csareader.get_n_mosaic(csa))
            sn = csareader.get_slice_normal(csa)
            normal = None if sn is None else np.asarray(sn, dtype=np.float64)
    except Exception:  # a damaged CSA header: use the protocol text
        normal = None
    if not n:
        times = private_value(ds, (0x0019, 0x1029))  # MosaicRefAcqTimes: one acquisition time per tile
        if times is not None and not isinstance(times, str) and hasattr(times, "__len__") and len(times) > 1:
            n = len(times)
    asc = ascconv(ds) if normal is None or not n else {}
    if not n:
        n = _int_or_none(asc.get("sSliceArray.lSize"))
    if not n or n < 1:
        return MosaicFacts(0, None, "", f"{path}: Siemens MOSAIC without a slice count: no CSA image header "
                           "(0029,1010), no NumberOfImagesInMosaic (0019,100A) and no sSliceArray.lSize in the "
                           "ASCCONV protocol (0029,1020); the tiles cannot be separated safely")  # fmt: skip
    grid = math.ceil(math.sqrt(n))
    tile_rows, tile_cols = rows // grid, cols // grid
    if tile_rows * grid != rows or tile_cols * grid != cols:
        return MosaicFacts(n, None, "", f"{path}: MOSAIC of {rows}x{cols} pixels cannot hold {n} tiles in a "
                           f"{grid}x{grid} grid (slice count from the headers is inconsistent)")  # fmt: skip
    if ipp is None or iop is None or ps is None:
        return MosaicFacts(n, None, "csa" if normal is not None else "ascconv")
    row_dir, col_dir = iop[:3], iop[3:]
    shift = col_dir * ps[0] * (rows - tile_rows) / 2.0 + row_dir * ps[1] * (cols - tile_cols) / 2.0
    ipp0 = ipp + shift
    if normal is not None and np.linalg.norm(normal) > 0:
        normal = normal / np.linalg.norm(normal)
        step = _num(ds, "SpacingBetweenSlices") or _num(ds, "SliceThickness") or 1.0
        return MosaicFacts(n, [ipp0 + t * step * normal for t in range(n)], "csa")
    if n == 1:
        return MosaicFacts(1, [ipp0], "ascconv")
    centres = []
    for k in range(n):
        keys = [f"sSliceArray.asSlice[{k}].sPosition.d{a}" for a in ("Sag", "Cor", "Tra")]
        if not any(key in asc for key in keys) and f"sSliceArray.asSlice[{k}].dThickness" not in asc:
            return MosaicFacts(n, None, "", f"{path}: Siemens MOSAIC without a CSA image header and without "
                               f"sSliceArray.asSlice[{k}] in the ASCCONV protocol: the slice order of the "
                               f"{n} tiles is unknown")  # fmt: skip
        centres.append(np.array([_asc_float(asc, key, 0.0) for key in keys]))  # ASCCONV omits zeros
    normal = np.cross(row_dir, col_dir)
    normal = normal / np.linalg.norm(normal)
    s = np.array([c @ normal for c in centres])
    p0 = float(ipp0 @ normal)
    tol = max(0.05, 0.25 * float(np.median(np.abs(np.diff(s))))) if n > 1 else 0.05
    if abs(p0 - s[0]) <= tol:
        order = list(range(n))
    elif abs(p0 - s[-1]) <= tol:
        order = list(range(n))[::-1]
    else:
        return MosaicFacts(n, None, "", f"{path}: Siemens MOSAIC without a CSA image header: the first tile "
                           f"(at {p0:.2f} mm along the slice normal) matches neither end of the ASCCONV slice "
                           f"array ({s[0]:.2f} .. {s[-1]:.2f} mm); the tile order is unknown")  # fmt: skip
    return MosaicFacts(n, [ipp0 + (s[k] - p0) * normal for k in order], "ascconv")


def _int_or_none(v):
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _num(ds, keyword):
    try:
        v = ds.get(keyword)
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- United Imaging "save by slice" grids --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridFacts:
    """A UIH grid: tiles of ``tile_rows x tile_cols`` in row-major order, ``positions[t]`` LPS per tile."""

    tile_rows: int
    tile_cols: int
    positions: list | None
    problem: str | None = None


def uih_grid(ds, path, rows, cols) -> GridFacts | None:
    """United Imaging files that hold a grid of slices (tag (0065,1051): one item per slice with its
    ImagePositionPatient; (0065,1004): the tile size as ``"R*C"``). None when the file is no such grid."""
    if str(private_value(ds, (0x0065, 0x0010)) or "").strip() != "Image Private Header":
        return None
    seq = private_value(ds, (0x0065, 0x1051))
    if seq is None or isinstance(seq, str) or len(seq) < 2:
        return None
    n = len(seq)
    size = str(private_value(ds, (0x0065, 0x1004)) or "")
    m = re.match(r"^\s*(\d+)\s*\*\s*(\d+)\s*$", size)
    if not m:
        return GridFacts(0, 0, None, f"{path}: United Imaging grid of {n} slices without a readable tile size "
                         f"in (0065,1004) (found {size!r}); the grid cannot be decoded")  # fmt: skip
    tr, tc = int(m.group(1)), int(m.group(2))
    if tr < 1 or tc < 1 or rows % tr or cols % tc or (rows // tr) * (cols // tc) < n:
        return GridFacts(tr, tc, None, f"{path}: United Imaging grid: {n} tiles of {tr}x{tc} (0065,1004) do not "
                         f"fit the {rows}x{cols} image; the grid cannot be decoded")  # fmt: skip
    positions = []
    for k, item in enumerate(seq):
        ipp = item.get("ImagePositionPatient")
        try:
            p = np.array([float(v) for v in ipp], dtype=np.float64)
        except (TypeError, ValueError):
            p = None
        if p is None or p.shape != (3,) or not np.all(np.isfinite(p)):
            return GridFacts(tr, tc, None, f"{path}: United Imaging grid item {k} of (0065,1051) has no valid "
                             "ImagePositionPatient; the slices cannot be placed")  # fmt: skip
        positions.append(p)
    return GridFacts(tr, tc, positions)


# -- image kinds ---------------------------------------------------------------------------------------

#: Complex image components, as ImageType values and their canonical names (dcm2niix's file order).
_COMPONENT = {"M": "magnitude", "MAGNITUDE": "magnitude", "P": "phase", "PHASE": "phase", "R": "real",
              "REAL": "real", "I": "imaginary", "IMAGINARY": "imaginary"}  # fmt: skip
COMPONENT_ORDER = ("magnitude", "phase", "real", "imaginary", "field_map_hz")
_GE_COMPONENT = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}


def image_component(ds, image_type: tuple[str, ...], manufacturer: str, frame_type=None,
                    complex_component: str | None = None) -> str | None:  # fmt: skip
    """magnitude / phase / real / imaginary / field_map_hz, or None when the headers do not say."""
    if complex_component:
        c = _COMPONENT.get(complex_component.upper())
        if c:
            return c
    types = list(frame_type or ()) + list(image_type)
    if "FIELDMAPHZ" in types or "FIELD_MAP" in types or "B0 MAP" in types:
        return "field_map_hz"
    for t in types[2:] if len(types) > 2 else types:
        c = _COMPONENT.get(t)
        if c:
            return c
    if manufacturer.upper().startswith("GE"):
        v = private_number(ds, (0x0043, 0x102F))
        seq_name = str(private_value(ds, (0x0019, 0x109C)) or "").lower()
        if "b0map" in seq_name:
            # GE 3D B0 map (pulse sequence B0map): field map (Hz) and magnitude share ImageType and (0043,102F).
            # As dcm2niix: when ImagesInAcquisition disagrees with GE's locations in acquisition (0021,104F), the
            # first (0021,104F) instance numbers are the field map in Hz, the rest the magnitude.
            locations = private_number(ds, (0x0021, 0x104F))
            images = _num(ds, "ImagesInAcquisition") or _num(ds, "NumberOfSlices")
            instance = _num(ds, "InstanceNumber")
            if locations and images and instance is not None and int(images) != int(locations):
                return "field_map_hz" if instance <= locations else "magnitude"
        if v is not None and int(v) in _GE_COMPONENT:
            return _GE_COMPONENT[int(v)]
    return None


def is_derived_diffusion(ds, image_type: tuple[str, ...], manufacturer: str, bvalue, gradient) -> str | None:
    """'trace' / 'adc' / 'fa' / 'exp' when a frame is a scanner-derived diffusion image, else None.

    Rules: ImageType values ADC / TRACEW / TRACE / FA / EADC / EXP / ISOTROPIC (Siemens, GE, Canon);
    DiffusionDirectionality (0018,9075) ISOTROPIC; Philips' diffusion direction (2001,1004) 'I' (isotropic),
    or a b > 0 with a zero gradient vector on Philips (its appended isotropic trace volume, which dcm2niix drops).
    """
    types = set(image_type)
    for name, kind in (("ADC", "adc"), ("EADC", "adc"), ("TRACEW", "trace"), ("TRACE", "trace"), ("FA", "fa"),
                       ("EXP", "exp"), ("ISOTROPIC", "trace")):  # fmt: skip
        if name in types:
            return kind
    directionality = ds.get("DiffusionDirectionality") if ds is not None else None
    if directionality is not None and str(directionality).upper() == "ISOTROPIC":
        return "trace"
    if manufacturer.upper().startswith("PHILIPS") and ds is not None:
        d = str(private_value(ds, (0x2001, 0x1004)) or "").strip().upper()
        if d == "I":
            return "trace"
        if bvalue is not None and bvalue > 0 and gradient is not None and np.allclose(gradient, 0):
            return "trace"
    return None


# -- GE reverse phase-encoding polarity ----------------------------------------------------------------


def ge_polarity(ds, temporal_position: int | None) -> str | None:
    """``"reversed"`` when GE stored this image with its rows reversed (``epi_pepolar`` reverse polarity),
    ``"forward"`` for the other volumes of such a series, ``"unknown"`` when the tags do not say, None when
    the file is not such a sequence.

    GE's ``epi_pepolar`` (pulse sequence name (0019,109C)) writes the reverse phase-encoding volumes with the
    row order reversed and an unchanged header. Which volumes: user data 12 (0019,10B3) rounded = 1: every
    volume; 2: the odd temporal positions (0020,0100); 3: the even ones (dcm2niix's rule; (0043,107C) present
    means the scanner already handled it). None when the file is not such a sequence.
    """
    name = str(private_value(ds, (0x0019, 0x109C)) or "")
    if "epi_pepolar" not in name.lower() or private_value(ds, (0x0043, 0x107C)) is not None:
        return None
    ud12 = private_number(ds, (0x0019, 0x10B3))
    mode = round(ud12) if ud12 is not None else 0
    if mode == 1:
        return "reversed"
    if mode in (2, 3):
        if temporal_position is None or temporal_position <= 0:
            return "unknown"
        odd = temporal_position % 2 == 1
        return "reversed" if odd == (mode == 2) else "forward"
    return "forward"
