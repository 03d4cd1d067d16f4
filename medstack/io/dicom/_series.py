"""Grouping frames into stackable units, ordering them in space, and the QA findings.

Rules (the documented contract):

- Files are grouped by SeriesInstanceUID, then into units by geometry (ImageOrientationPatient,
  Rows/Columns), ImageType and EchoNumbers, so that each unit is one 3D volume or one 4D set
  (time points / diffusion directions at the same positions, stacked on C).
- Slices are ordered by the projection of ImagePositionPatient on the slice normal
  (row direction x column direction), never by file name or InstanceNumber when geometry exists.
- The slice step is measured from the positions (not SliceThickness). Steps that differ from the
  median by more than ``max(0.01 mm, 1 %)`` are a gap (a whole multiple of the median: missing slices)
  or a non-uniform step.
- Gantry / detector tilt is detected from the positions: the in-plane drift of IPP from slice to slice.
"""

from __future__ import annotations

import dataclasses
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
    ``no_pixel_data``, ``inconsistent_volumes``. ``severity`` is ``"info"`` (logged) or ``"warning"``
    (also a Python warning when the series is loaded).
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
    """

    uid: str
    shape: tuple[int, int, int, int]
    affine: np.ndarray  # RAS, orthogonal (or sheared for tilt="shear"), before gap handling
    positions: np.ndarray  # (D,) slice positions along the normal (mm), ordered
    uniform_spacing: bool
    tilt_deg: float
    findings: list[Finding]
    frames: list[list[Frame]]
    headers: dict[str, FileHeader]
    is_localizer: bool = False

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
    iop = None if f.iop is None else tuple(np.round(f.iop, 3))
    # magnitude / phase / real / imaginary reconstructions are separate units (as dcm2niix writes them)
    itype = tuple(t for t in h.image_type if t not in ("MOSAIC",))
    return (iop, h.tile_rows, h.tile_cols, itype, h.echo_number)


def build_series(headers: list[FileHeader], scan_findings: list[Finding], *, tilt: str = "resample") -> list[SeriesInfo]:
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
        for h in hs:
            if h.sop_instance_uid and h.sop_instance_uid in sop_seen:
                findings.append(Finding("duplicate", f"{h.path}: same SOPInstanceUID as {sop_seen[h.sop_instance_uid]}; "
                                        "the copy is ignored", "info", {"file": h.path}))  # fmt: skip
                continue
            sop_seen[h.sop_instance_uid] = h.path
            for f in h.frames:
                units[_unit_key(h, f)].append((h, f))
        # the main units: not localizers, several slices; small/odd units are reported on the main ones
        ranked = sorted(units.items(), key=lambda kv: (_is_localizer(kv[1][0][0]), -len(kv[1])))
        main = [kv for kv in ranked if not _is_localizer(kv[1][0][0]) and len(kv[1]) > 1]
        if not main:
            main = ranked[:1] if len(ranked) == 1 else [kv for kv in ranked if len(kv[1]) > 1] or ranked
        removed = [kv for kv in ranked if kv not in main]
        removed_findings = []
        for _key, members in removed:
            h0 = members[0][0]
            kind = "localizer_removed" if _is_localizer(h0) else "other_orientation_removed"
            removed_findings.append(Finding(kind, f"{len(members)} frame(s) of series {series_uid} with another "
                                            f"orientation/size/type ({', '.join(h0.image_type)}) are excluded",
                                            "info", {"files": sorted({m[0].path for m in members})}))  # fmt: skip
        for n, (_key, members) in enumerate(main):
            uid = base_uid if len(main) == 1 else f"{base_uid}#{n + 1}"
            info = _build_unit(uid, series_uid, members, findings + removed_findings, tilt=tilt)
            out.append(info)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))
    return out


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


def _build_unit(uid, series_uid, members, findings, *, tilt) -> SeriesInfo:
    h0 = members[0][0]
    frames = [f for _, f in members]
    headers = {h.path: h for h, _ in members}
    findings = list(findings)
    has_geometry = all(f.ipp is not None and f.iop is not None for f in frames)
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
    if len(set(counts)) == 1:
        plan = [[frames[g[c]] for g in per_pos] for c in range(n_vol)]
    else:
        plan = [[frames[g[0]] for g in per_pos]] + [[frames[g[c]] for g in per_pos if len(g) > c] for c in range(1, n_vol)]
    positions = np.array([s[g[0]] for g in groups])
    affine, uniform, tilt_deg, geo_findings = _geometry(plan[0], positions, series_uid, has_geometry, tilt,
                                                        h0.thickness)
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
        findings=findings, frames=plan, headers=headers, is_localizer=_is_localizer(h0),
    )  # fmt: skip


def _geometry(first_vol: list[Frame], positions, series_uid, has_geometry, tilt, thickness=1.0):
    """Affine (RAS) of the ordered slices, plus uniformity, tilt angle and findings."""
    findings: list[Finding] = []
    f0 = first_vol[0]
    ps = f0.pixel_spacing or (1.0, 1.0)
    if not has_geometry:
        lps = np.diag([ps[1], ps[0], thickness, 1.0])
        return geometry.lps_to_ras(lps), True, 0.0, findings
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
                                    f"(gantry/detector tilt); tilt={tilt!r}", "warning",
                                    {"tilt_deg": tilt_deg, "policy": tilt}))  # fmt: skip
        step_vec = (along / (n - 1)) * normal
        if tilt_deg and tilt == "shear":
            step_vec = total / (n - 1)
        elif n > 1 and abs(med) > 0:
            step_vec = med * normal
    else:
        step_vec = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = f0.ipp
    return geometry.lps_to_ras(lps), uniform, tilt_deg, findings
