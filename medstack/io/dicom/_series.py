"""Grouping frames into stackable units, ordering them in space, and the QA findings.

Rules (the documented contract):

- Files are grouped by SeriesInstanceUID, then into units by geometry (ImageOrientationPatient,
  Rows/Columns) and localizer flag. Inside a unit, frames are split by their *kind*: ImageType, complex
  component (magnitude / phase / real / imaginary, also from GE's (0043,102F) and enhanced
  ComplexImageComponent), field map in Hz, echo (EchoNumbers / echo time) and scanner-derived diffusion
  images (trace / ADC). Kinds that cover the same slice positions with the same number of volumes become
  *named channels* of one volume (``channels``), ordered like dcm2niix's files (echo, then magnitude,
  phase, real, imaginary, field map); derived diffusion volumes mixed into a DWI series are dropped with a
  finding (as dcm2niix does). Kinds on other positions stay separate units.
- Slices are ordered by the projection of ImagePositionPatient on the slice normal
  (row direction x column direction), never by file name or InstanceNumber when geometry exists.
- The slice step is measured from the positions (not SliceThickness). Steps that differ from the
  median by more than ``max(0.01 mm, 1 %)`` are a gap (a whole multiple of the median: missing slices)
  or a non-uniform step.
- Gantry / detector tilt is detected from the positions: the in-plane drift of IPP from slice to slice.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict

import numpy as np

from medstack import geometry
from medstack.io.dicom._headers import FileHeader, Frame

POSITION_TOL_MM = 0.01
STEP_REL_TOL = 0.01
TILT_TOL_MM = 0.01  # in-plane drift per slice above which a series counts as tilted


@dataclasses.dataclass(frozen=True)
class Finding:
    """One QA observation about a series.

    ``kind`` is one of: ``gap``, ``nonuniform_step``, ``tilt``, ``duplicate``, ``localizer_removed``,
    ``other_orientation_removed``, ``instance_number_order``, ``no_geometry``, ``unreadable_file``,
    ``no_pixel_data``, ``inconsistent_volumes``, ``derived_removed``, ``named_channels``,
    ``undecodable``. ``severity`` is ``"info"`` (logged), ``"warning"`` (also a Python warning when the
    series is loaded) or ``"error"`` (the series cannot be loaded safely: :func:`load_series` refuses it
    with this message).
    """

    kind: str
    message: str
    severity: str = "warning"
    details: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, **self.details}


@dataclasses.dataclass
class SeriesInfo:
    """One stackable unit found by :func:`medstack.io.dicom.scan`: a 3D volume or a 4D set.

    Attributes
    ----------
    uid : str
        SeriesInstanceUID (with ``#n`` appended when a series holds several units).
    shape : tuple
        ``(C, D, H, W)`` of the volume :func:`load_series` will return (before gap resampling).
    spacing : tuple
        ``(D, H, W)`` mm; D is the measured slice step.
    findings : list of Finding
        Structured QA results (gaps, tilt, duplicates, removed localizers, ...).
    frames : list of list of Frame
        ``frames[c][d]``: the ordered plan of which 2D frame goes where.
    channels : list of dict
        One entry per channel ``c``: ``name``, ``image_kind`` (magnitude, phase, real, imaginary,
        field_map_hz or ""), ``echo_number``, ``echo_time_ms``, ``image_type`` and ``volume`` (index among
        the volumes of that kind). Facts only: the scan records them, :func:`load_series` selects.
    shear_affine : np.ndarray or None
        For a tilted series: the exact sheared affine of the stored voxels (used by ``tilt="shear"``).
    annotations : list of AnnotationInfo
        DICOM SEG / RTSTRUCT objects found by the same scan that annotate this series (paired by referenced
        SeriesInstanceUID, else FrameOfReferenceUID); read them with
        :func:`medstack.io.dicom.annotations.read_seg` / ``read_rtstruct``.
    """

    uid: str
    shape: tuple[int, int, int, int]
    affine: np.ndarray  # RAS, orthogonal (the voxel grid after tilt="resample"), before gap handling
    positions: np.ndarray  # (D,) slice positions along the normal (mm), ordered
    uniform_spacing: bool
    tilt_deg: float
    findings: list[Finding]
    frames: list[list[Frame]]
    headers: dict[str, FileHeader]
    is_localizer: bool = False
    channels: list[dict] = dataclasses.field(default_factory=list)
    shear_affine: np.ndarray | None = None  # tilted series: the exact sheared affine of the stored voxels
    annotations: list = dataclasses.field(default_factory=list)  # SEG / RTSTRUCT (AnnotationInfo) paired by scan

    def affine_for(self, tilt: str = "resample") -> np.ndarray:
        """The affine of the voxels :func:`load_series` returns under a tilt policy (facts -> geometry)."""
        if tilt == "shear" and self.shear_affine is not None:
            return self.shear_affine
        return self.affine

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.channels]

    # series-level tags come from the files' headers (one source of truth)
    @property
    def _h0(self) -> FileHeader:
        return self.headers[self.frames[0][0].path]

    series_uid = property(lambda self: self._h0.series_uid, doc="SeriesInstanceUID")
    study_uid = property(lambda self: self._h0.study_uid, doc="StudyInstanceUID")
    series_number = property(lambda self: self._h0.series_number, doc="SeriesNumber")
    description = property(lambda self: self._h0.description, doc="SeriesDescription (or ProtocolName)")
    modality = property(lambda self: self._h0.modality, doc="Modality")
    manufacturer = property(lambda self: self._h0.manufacturer, doc="Manufacturer")
    image_type = property(lambda self: self._h0.image_type, doc="ImageType values")

    @property
    def files(self) -> list[str]:
        """Source files in the order they are used (channel-major, then slice)."""
        seen, out = set(), []
        for vol in self.frames:
            for f in vol:
                if f.path not in seen:
                    seen.add(f.path)
                    out.append(f.path)
        return out

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in geometry.ijk_to_dhw(geometry.spacing(self.affine)))

    @property
    def orientation(self) -> str:
        return geometry.axcodes(self.affine)

    def summary(self) -> dict:
        """A JSON-ready description (no patient-identifying values)."""
        return {
            "uid": self.uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "manufacturer": self.manufacturer,
            "n_files": self.n_files,
            "shape": list(self.shape),
            "spacing": [round(s, 4) for s in self.spacing],
            "orientation": self.orientation,
            "uniform_spacing": self.uniform_spacing,
            "tilt_deg": round(self.tilt_deg, 3),
            "is_localizer": self.is_localizer,
            "channel_names": self.channel_names,
            "annotations": [a.summary() for a in self.annotations],
            "findings": [f.as_dict() for f in self.findings],
        }

    def __repr__(self) -> str:
        kinds = ",".join(sorted({f.kind for f in self.findings})) or "none"
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return (
            f"SeriesInfo(#{self.series_number} {self.description!r}, {self.modality}, {self.n_files} files, "
            f"shape={self.shape}, spacing=({sp}) mm, {self.orientation}, findings={kinds}, uid={self.uid})"
        )


def _is_localizer(h: FileHeader) -> bool:
    return "LOCALIZER" in h.image_type or "SCOUT" in h.image_type


def _unit_key(h: FileHeader, f: Frame) -> tuple:
    """(geometry, kind): frames of one geometry and one kind form a unit; kinds may merge into channels."""
    iop = None if f.iop is None else tuple(np.round(f.iop, 3))
    itype = tuple(t for t in h.image_type if t not in ("MOSAIC",))
    return (iop, h.tile_rows, h.tile_cols, _is_localizer(h)), (itype, *f.kind)


def build_series(headers: list[FileHeader], scan_findings: list[Finding]) -> list[SeriesInfo]:
    """Group pass-1 headers into :class:`SeriesInfo` units (see module docstring for the rules)."""
    # SeriesNumber too: some exports reuse one SeriesInstanceUID for several series (dcm2niix splits them)
    by_series: dict[tuple, list[FileHeader]] = defaultdict(list)
    for h in headers:
        by_series[(h.series_uid, h.series_number)].append(h)
    multi_number = defaultdict(set)
    for uid, number in by_series:
        multi_number[uid].add(number)
    out: list[SeriesInfo] = []
    for (series_uid, number), hs in by_series.items():
        base_uid = series_uid if len(multi_number[series_uid]) == 1 else f"{series_uid}#s{number}"
        units: dict[tuple, list[tuple[FileHeader, Frame]]] = defaultdict(list)
        sop_seen: dict[str, str] = {}
        findings: list[Finding] = list(scan_findings)
        by_path = {h.path: h for h in hs}
        for h in hs:
            first = by_path.get(sop_seen.get(h.sop_instance_uid, ""))
            if h.sop_instance_uid and first is not None:
                if _same_image(first, h):
                    findings.append(Finding("duplicate", f"{h.path}: a copy of {first.path} (same SOPInstanceUID, "
                                            "position and pixels); the copy is ignored", "info", {"file": h.path}))  # fmt: skip
                    continue
                findings.append(Finding("shared_sop_uid", f"{h.path} and {first.path} share a SOPInstanceUID but hold "
                                        "other positions or pixels (a broken anonymiser?); both are kept", "warning",
                                        {"files": [first.path, h.path]}))  # fmt: skip
            else:
                sop_seen[h.sop_instance_uid] = h.path
            for f in h.frames:
                units[_unit_key(h, f)].append((h, f))
        # the main units: not localizers, several slices; small/odd units are reported on the main ones
        ranked = sorted(units.items(), key=lambda kv: (kv[0][0][3], -len(kv[1])))
        main = [kv for kv in ranked if not kv[0][0][3] and len(kv[1]) > 1]
        if not main:
            main = ranked[:1] if len(ranked) == 1 else [kv for kv in ranked if len(kv[1]) > 1] or ranked
        removed = [kv for kv in ranked if kv not in main]
        removed_findings = []
        main_keys = {(geo[0], kind) for (geo, kind), _ in main}
        for (geo, kind_key), members in removed:
            h0 = members[0][0]
            files = sorted({m[0].path for m in members})
            if not _is_localizer(h0) and (geo[0], kind_key) in main_keys:  # same orientation and kind, other size
                removed_findings.append(Finding("dropped_slices", f"{len(members)} frame(s) of series {series_uid} "
                                                f"({', '.join(files[:3])}) have {h0.tile_rows}x{h0.tile_cols} pixels, "
                                                "unlike the rest of the series: they cannot be stacked"
                                                + "".join(f" ({p})" for p in sorted({m[0].problem for m in members
                                                                                     if m[0].problem})[:2]),
                                                "warning", {"files": files}))  # fmt: skip
                continue
            kind = "localizer_removed" if _is_localizer(h0) else "other_orientation_removed"
            removed_findings.append(Finding(kind, f"{len(members)} frame(s) of series {series_uid} with another "
                                            f"orientation/size/type ({', '.join(h0.image_type)}) are excluded",
                                            "info", {"files": files}))  # fmt: skip
        by_geometry: dict[tuple, list] = defaultdict(list)
        for (geo, kind), members in main:
            by_geometry[geo].append((kind, members))
        infos = []
        for group in by_geometry.values():
            group.sort(key=lambda km: _kind_order(km[0]))
            built = [(kind, _build_unit(base_uid, series_uid, members, findings + removed_findings))
                     for kind, members in group]  # fmt: skip
            infos.extend(_merge_kinds(built, series_uid))
        for n, info in enumerate(infos):
            info.uid = base_uid if len(infos) == 1 else f"{base_uid}#{n + 1}"
        out.extend(infos)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))
    return out


_COMPONENT_RANK = {"magnitude": 0, "": 0, "phase": 1, "real": 2, "imaginary": 3, "field_map_hz": 4}


def _same_image(a: FileHeader, b: FileHeader) -> bool:
    """Two files with one SOPInstanceUID are copies only with the same positions and identical pixel bytes."""
    pa = [None if f.ipp is None else tuple(np.round(f.ipp, 3)) for f in a.frames]
    pb = [None if f.ipp is None else tuple(np.round(f.ipp, 3)) for f in b.frames]
    if pa != pb or (a.rows, a.cols, a.n_frames) != (b.rows, b.cols, b.n_frames):
        return False
    try:
        with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
            if a.pixel_offset is not None and b.pixel_offset is not None:
                fa.seek(a.pixel_offset)
                fb.seek(b.pixel_offset)
                return fa.read(a.pixel_value_bytes or 0) == fb.read(b.pixel_value_bytes or 0)
            return fa.read() == fb.read()
    except OSError:
        return False


def _kind_order(kind: tuple):
    itype, component, echo_number, echo_time, derived = kind
    return (bool(derived), echo_number if echo_number is not None else 0, echo_time if echo_time is not None else 0.0,
            _COMPONENT_RANK.get(component, 5), itype)  # fmt: skip


def _kind_labels(kinds: list[tuple]) -> list[str]:
    """Short names for kinds, from what differs between them: component, echo, derived image, ImageType."""
    itypes, comps, echos, times, derived = (list(x) for x in zip(*kinds))
    labels = [[] for _ in kinds]
    if len(set(comps)) > 1 or any(comps):
        for lab, c in zip(labels, comps):
            lab.append(c or "image")
    if len(set(zip(echos, times))) > 1:
        keys = sorted(set(zip(echos, times)), key=lambda e: (e[0] if e[0] is not None else 0, e[1] or 0.0))
        numbers_tell = len({e for e in echos}) == len(keys) and None not in echos  # else number echoes by TE order
        for lab, e in zip(labels, zip(echos, times)):
            lab.append(f"e{e[0] if numbers_tell else keys.index(e) + 1}")
    for lab, d in zip(labels, derived):
        if d:
            lab.append(d)
    if len(set(map(tuple, labels))) < len(kinds):  # only the ImageType differs: name by its differing values
        common = set.intersection(*(set(t) for t in itypes))
        for lab, t in zip(labels, itypes):
            lab.append("_".join(v.lower() for v in t if v not in common) or "image")
    return ["_".join(lab) or "image" for lab in labels]


def _same_positions(a: SeriesInfo, b: SeriesInfo) -> bool:
    return (a.shape[1:] == b.shape[1:] and len(a.positions) == len(b.positions)
            and bool(np.allclose(a.positions, b.positions, atol=POSITION_TOL_MM * 10))
            and bool(np.allclose(a.affine, b.affine, atol=1e-3))
            and all(len(v) == a.shape[1] for v in a.frames + b.frames))  # fmt: skip


def _merge_kinds(built: list[tuple[tuple, SeriesInfo]], series_uid: str) -> list[SeriesInfo]:
    """Kinds on the same slice positions become named channels of one unit; the rest stay separate units."""
    labels = _kind_labels([k for k, _ in built])
    for (kind, info), label in zip(built, labels):
        n_vol = len(info.frames)
        info.channels = [_channel(kind, info, label if n_vol == 1 else f"{label}[{t}]", t) for t in range(n_vol)]
    if len(built) == 1:
        return [built[0][1]]
    base = [(k, i) for k, i in built if not k[4]]
    derived = [(k, i) for k, i in built if k[4]]
    kept_derived = []
    if base and sum(len(i.frames) for _, i in base) >= 2:
        for kind, info in derived:
            if _same_positions(base[0][1], info):
                files = sorted(set(info.files))
                base[0][1].findings.append(Finding(
                    "derived_removed", f"series {series_uid}: {len(info.frames)} scanner-derived {kind[4]} "
                    f"volume(s) mixed into the diffusion series are dropped (not acquired data; as dcm2niix)",
                    "info", {"files": files}))  # fmt: skip
            else:
                kept_derived.append((kind, info))
    else:
        kept_derived = derived
    groups: list[list[SeriesInfo]] = []
    for _, info in base + kept_derived:
        for g in groups:
            if _same_positions(g[0], info):
                g.append(info)
                break
        else:
            groups.append([info])
    return [_join(g, series_uid) if len(g) > 1 else g[0] for g in groups]


def _channel(kind, info, name, t) -> dict:
    itype, component, echo_number, echo_time, derived = kind
    h = info.headers[info.frames[t][0].path]
    return {"name": name, "image_kind": component or (derived or ""), "echo_number": echo_number,
            "echo_time_ms": echo_time if echo_time is not None else h.echo_time, "image_type": list(itype),
            "volume": t}  # fmt: skip


def _join(infos: list[SeriesInfo], series_uid: str) -> SeriesInfo:
    first = infos[0]
    findings, seen = [], set()
    for info in infos:
        for f in info.findings:
            if f.message not in seen:
                seen.add(f.message)
                findings.append(f)
    channels = [c for info in infos for c in info.channels]
    names = [c["name"] for c in channels]
    findings.append(Finding("named_channels", f"series {series_uid}: {len(infos)} image kinds on the same slices "
                            f"loaded as named channels {names} (select with echo= / image_type=)", "info"))  # fmt: skip
    return dataclasses.replace(
        first, shape=(len(channels), *first.shape[1:]), frames=[v for info in infos for v in info.frames],
        headers={p: h for info in infos for p, h in info.headers.items()}, findings=findings, channels=channels,
    )  # fmt: skip


def _cluster_positions(s: np.ndarray) -> list[list[int]]:
    order = np.argsort(s, kind="stable")
    groups: list[list[int]] = []
    last = None
    for idx in order:
        if last is None or s[idx] - last > POSITION_TOL_MM:
            groups.append([int(idx)])
        else:
            groups[-1].append(int(idx))
        last = s[idx]
    return groups


def _build_unit(uid, series_uid, members, findings) -> SeriesInfo:
    h0 = members[0][0]
    frames = [f for _, f in members]
    headers = {h.path: h for h, _ in members}
    findings = list(findings)
    placed = [f.ipp is not None and f.iop is not None for f in frames]
    has_geometry = all(placed)
    if any(placed) and not has_geometry:  # one bad slice must not throw away the geometry of all the others
        bad = sorted({f.path for f, ok in zip(frames, placed) if not ok})
        findings.append(Finding("undecodable", f"series {series_uid}: {len(bad)} file(s) ({', '.join(bad[:3])}) have no "
                                "valid ImagePositionPatient/ImageOrientationPatient while the others do: those slices "
                                "cannot be placed", "error", {"files": bad}))  # fmt: skip
        frames = [f for f, ok in zip(frames, placed) if ok]
        members = [m for m, ok in zip(members, placed) if ok]
        headers = {h.path: h for h, _ in members}
        has_geometry = True
    if has_geometry:
        iop = frames[0].iop
        row_dir, col_dir = iop[:3], iop[3:]
        normal = np.cross(row_dir, col_dir)
        normal /= np.linalg.norm(normal)
        s = np.array([f.ipp @ normal for f in frames])
        groups = _cluster_positions(s)
    else:
        findings.append(Finding("no_geometry", f"series {series_uid} has no ImagePositionPatient/"
                                "ImageOrientationPatient: slices ordered by InstanceNumber, orientation unknown "
                                "(identity direction assumed)", "warning"))  # fmt: skip
        order = sorted(range(len(frames)), key=lambda i: (headers[frames[i].path].instance_number or 0, frames[i].frame))
        groups = [[i] for i in order]
        s = np.arange(len(frames), dtype=np.float64)
    counts = [len(g) for g in groups]
    n_vol = max(counts)
    if len(set(counts)) != 1:
        # uneven: a duplicated position (resolved at load if pixels are identical) or a missing volume
        findings.append(Finding("inconsistent_volumes", f"series {series_uid}: slice positions hold different "
                                f"numbers of images ({min(counts)} to {n_vol}); duplicates are dropped at load if "
                                "their pixels are identical, otherwise loading fails", "warning",
                                {"counts": sorted(set(counts))}))  # fmt: skip
    per_pos = [sorted(g, key=lambda i: frames[i].temporal) for g in groups]
    if has_geometry and len(set(counts)) == 1 and n_vol > 1:
        for g in per_pos:  # volumes are ordered by temporal keys: equal keys from two files cannot be told apart
            pairs = [(frames[a], frames[b]) for a, b in itertools.pairwise(g) if frames[a].temporal == frames[b].temporal
                     and frames[a].path != frames[b].path]  # fmt: skip
            if pairs:
                a, b = pairs[0]
                findings.append(Finding("ambiguous_order", f"series {series_uid}: {a.path} and {b.path} lie at the "
                                        "same position with the same image kind, InstanceNumber, temporal position "
                                        "and times: their volume order cannot be told (two copies of one series, or "
                                        "two acquisitions under one SeriesInstanceUID?); pass the files of one "
                                        "acquisition", "error", {"files": [a.path, b.path]}))  # fmt: skip
                break
    if len(set(counts)) == 1:
        plan = [[frames[g[c]] for g in per_pos] for c in range(n_vol)]
    else:
        plan = [[frames[g[0]] for g in per_pos]] + [[frames[g[c]] for g in per_pos if len(g) > c] for c in range(1, n_vol)]
    positions = np.array([s[g[0]] for g in groups])
    affine, shear, uniform, tilt_deg, geo_findings = _geometry(plan[0], positions, series_uid, has_geometry,
                                                               h0.thickness)  # fmt: skip
    notes = [n for h in headers.values() for n in h.notes]
    for n in dict.fromkeys(notes[:3]):
        findings.append(Finding("header_corrected", n + (f" (and {len(notes) - 3} more)" if len(notes) > 3 else ""),
                                "warning"))  # fmt: skip
    reversed_files = [h.path for h in headers.values() if h.polarity == "reversed"]
    if reversed_files:
        findings.append(Finding("reverse_polarity", f"series {series_uid}: {len(reversed_files)} file(s) of GE "
                                "reverse phase-encoding polarity (epi_pepolar) store their rows reversed; they are "
                                "flipped back at load", "info", {"files": sorted(reversed_files)}))  # fmt: skip
    problems = sorted({h.problem for h in headers.values() if h.problem})
    for p in problems[:3]:
        findings.append(Finding("undecodable", p + f" ({len(problems)} file(s) in series {series_uid})", "error"))
    findings.extend(geo_findings)
    if has_geometry:
        inst = [headers[f.path].instance_number for f in plan[0]]
        if None not in inst and len(inst) > 2 and len(set(inst)) == len(inst):
            d = np.diff(inst)
            if not (np.all(d > 0) or np.all(d < 0)):
                findings.append(Finding("instance_number_order", f"series {series_uid}: InstanceNumber order "
                                        "disagrees with slice position; ordered by position", "info"))  # fmt: skip
    shape = (n_vol, len(groups), h0.tile_rows, h0.tile_cols)
    return SeriesInfo(
        uid=uid, shape=shape, affine=affine, positions=positions, uniform_spacing=uniform, tilt_deg=tilt_deg,
        findings=findings, frames=plan, headers=headers, is_localizer=_is_localizer(h0), shear_affine=shear,
    )  # fmt: skip


def _geometry(first_vol: list[Frame], positions, series_uid, has_geometry, thickness=1.0):
    """Orthogonal affine (RAS) of the ordered slices, the sheared one when tilted (else None), uniformity,
    tilt angle and findings. Facts only: which affine is used is the load's tilt policy."""
    findings: list[Finding] = []
    f0 = first_vol[0]
    ps = f0.pixel_spacing or (1.0, 1.0)
    if not has_geometry:
        lps = np.diag([ps[1], ps[0], thickness, 1.0])
        return geometry.lps_to_ras(lps), None, True, 0.0, findings
    row_dir, col_dir = f0.iop[:3], f0.iop[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    n = len(first_vol)
    uniform = True
    tilt_deg = 0.0
    step_vec = normal * 1.0
    if n > 1:
        steps = np.diff(positions)
        med = float(np.median(steps))
        tol = max(POSITION_TOL_MM, STEP_REL_TOL * med)
        bad = np.nonzero(np.abs(steps - med) > tol)[0]
        if bad.size:
            uniform = False
            for b in bad[:10]:
                ratio = steps[b] / med
                if abs(ratio - round(ratio)) * med <= tol and round(ratio) >= 2:
                    kind, why = "gap", f"(missing {round(ratio) - 1} slice(s)?)"
                else:
                    kind, why = "nonuniform_step", "(non-uniform slice spacing)"
                findings.append(Finding(kind, f"series {series_uid}: slice step jumps from {med:.4g} mm to "
                                        f"{steps[b]:.4g} mm between slices {b} and {b + 1} {why}", "warning",
                                        {"slice": int(b), "step_mm": float(steps[b]), "median_step_mm": med}))  # fmt: skip
        # tilt: in-plane drift of IPP per slice, from the first and last positions
        total = first_vol[-1].ipp - f0.ipp
        along = float(total @ normal)
        drift = (total - along * normal) / (n - 1)
        drift_mm = float(np.linalg.norm(drift))
        if drift_mm > TILT_TOL_MM and abs(along) > 0:
            tilt_deg = float(np.degrees(np.arctan2(drift_mm, abs(along) / (n - 1))))
            findings.append(Finding("tilt", f"series {series_uid}: slices are sheared by {tilt_deg:.2f} degrees "
                                    "(gantry/detector tilt)", "warning", {"tilt_deg": tilt_deg}))  # fmt: skip
            shear_step = total / (n - 1)
        step_vec = (along / (n - 1)) * normal
        if abs(med) > 0:
            step_vec = med * normal
    else:
        step_vec = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = f0.ipp
    shear = None
    if tilt_deg:
        sheared = lps.copy()
        sheared[:3, 2] = shear_step
        shear = geometry.lps_to_ras(sheared)
    return geometry.lps_to_ras(lps), shear, uniform, tilt_deg, findings
