"""DICOM series: scan folders (headers only), group and order slices in space, load volumes.

>>> from medstack.io import dicom
>>> series = dicom.scan("data_samples/dicom")          # doctest: +SKIP
>>> vol = dicom.load_series(series[0])                 # doctest: +SKIP

Geometry follows the DICOM standard: ImagePositionPatient is the centre of the first transmitted pixel,
the first ImageOrientationPatient triplet is the direction of increasing column index, the second of
increasing row index; LPS+ is converted to medstack's RAS+ affine.

Policies (documented defaults chosen for safety):

``on_gap``: what to do when slice steps are not uniform (a missing slice, a non-uniform step):
``"error"`` (default) refuses with the positions; ``"warn"`` stacks the slices as they are with a
warning (the affine assumes the median step; the measured positions are in
``metadata["slice_positions_mm"]``); ``"resample"`` interpolates linearly onto a uniform grid with the
median step; ``"split"`` (in :func:`scan` / :func:`load`) makes each uniform run its own series.

``tilt``: gantry/detector tilt (slices shifted in-plane from one to the next): ``"resample"`` (default,
like dcm2niix) shifts every slice with bilinear interpolation onto an orthogonal grid; ``"shear"`` keeps
the voxels untouched and returns a sheared affine (exact, but many tools ignore shear). :func:`scan`
records facts only (positions, orientations, image kinds); the policy is applied by :func:`load_series`,
which computes the affine for the policy it applies.

Several image kinds in one series (echoes, magnitude / phase / real / imaginary, GE field map + magnitude)
on the same slices load as named channels (``metadata["channel_names"]``, ``"channels"``), in dcm2niix's
file order; ``echo=`` and ``image_type=`` select among them. Vendor rules applied at load: GE
reverse-polarity EPI volumes (``epi_pepolar``) have their rows reversed back (``metadata[
"phase_encoding_polarity"]`` per channel); Siemens MOSAIC and United Imaging grids are cut into slices
placed by their recorded positions (or refused); scanner-derived trace/ADC volumes mixed into a DWI
series are dropped with a finding.
"""


import logging
import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from medstack.errors import DicomError, MedstackError
from medstack.io.dicom._headers import FileHeader, list_files, looks_like_dicom, parse_file
from medstack.io.dicom._pixels import (
    invert_monochrome1,
    is_colour,
    read_pixels,
    resample_positions,
    rescale,
    shift_slices,
)
from medstack.io.dicom._series import Finding, SeriesInfo, build_series
from medstack.io.dicom.annotations import ANNOTATION_SOP_CLASSES
from medstack.volume import Volume

__all__ = ["DicomWarning", "Finding", "SeriesInfo", "load", "load_series", "scan", "select_channels"]

logger = logging.getLogger(__name__)
ON_GAP = ("error", "warn", "resample", "split")
#: SOP classes that annotate images (their pixels are no image series): one table, owned by the annotations module
ANNOTATION_CLASSES = ANNOTATION_SOP_CLASSES
TILT = ("resample", "shear")
_PROCESS_THRESHOLD = 1000  # measured (bench_dicom ASL, 2 cores, fast header walk ~0.4 ms/file): 2 processes win from
# ~400 files (fork + pickling ~30-60 ms); 1.4x at 1,000 and 2,880 files


class DicomWarning(UserWarning):
    """QA findings of severity 'warning' on a loaded DICOM series (gaps under on_gap='warn', tilt, ...)."""


def _parse_one(args):
    path, index = args
    try:
        return parse_file(path, index), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _parse_all(files: list[str], workers: int | None):
    jobs = list(zip(files, range(len(files))))
    n_workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))
    if n_workers > 1 and len(files) >= (_PROCESS_THRESHOLD if workers is None else 2):
        from medstack.parallel import process_pool

        chunk = max(1, len(jobs) // (n_workers * 8))
        with process_pool(n_workers) as pool:
            return list(pool.map(_parse_one, jobs, chunksize=chunk))
    return [_parse_one(j) for j in jobs]


def scan(
    path: str | os.PathLike | Iterable,
    *,
    recursive: bool = True,
    workers: int | None = None,
    on_gap: str = "error",
    strict: bool = False,
) -> list[SeriesInfo]:
    """Find the DICOM series under ``path`` (a folder, one file, or a list of files), reading headers only.

    Parameters
    ----------
    path : path-like or iterable of paths
    recursive : bool
        Descend into sub-folders.
    workers : int, optional
        Processes for header parsing. Default: all cores from 1,000 files, else one (faster below that).
    on_gap : {"error", "warn", "resample", "split"}
        Only ``"split"`` changes the scan (uniform runs become separate series); the others apply when
        loading.
    strict : bool
        Raise on an unreadable or truncated DICOM file instead of skipping it with a finding.

    Returns
    -------
    list of SeriesInfo
        One per stackable unit, ordered by SeriesNumber. Pixel data are not read.
    """
    _check_policy(on_gap, "resample")
    files = list_files(path, recursive)
    where = str(path) if isinstance(path, str | os.PathLike) else f"{len(files)} files"
    candidates = [f for f in files if looks_like_dicom(f)]
    skipped = len(files) - len(candidates)
    if skipped:
        logger.debug("%s: skipped %d non-DICOM files", where, skipped)
    headers: list[FileHeader] = []
    scan_findings: list[Finding] = []
    annotation_files: list[str] = []
    for f, (h, err) in zip(candidates, _parse_all(candidates, workers)):
        if h is None:
            _unreadable(f, err, strict, scan_findings)
            continue
        if h.sop_class_uid in ANNOTATION_CLASSES:
            scan_findings.append(Finding("annotation", f"{f}: a DICOM {ANNOTATION_CLASSES[h.sop_class_uid]} "
                                         "(annotation, not an image series): paired with its image series in "
                                         "SeriesInfo.annotations", "info", {"file": f}))  # fmt: skip
            annotation_files.append(f)
            continue
        if h.unreadable:
            _unreadable(f, h.unreadable, strict, scan_findings, h.series_uid)
            continue
        if not h.has_pixels or not h.frames or h.rows == 0:
            scan_findings.append(Finding("no_pixel_data", f"{f}: no pixel data (not an image); skipped", "info",
                                         {"file": f}))  # fmt: skip
            continue
        if h.pixel_offset is not None and os.path.getsize(f) < h.pixel_offset + h.n_frames * h.frame_bytes:
            _unreadable(f, f"truncated pixel data ({os.path.getsize(f) - h.pixel_offset} of "
                        f"{h.n_frames * h.frame_bytes} bytes)", strict, scan_findings, h.series_uid)  # fmt: skip
            continue
        headers.append(h)
    series = ScanResult(build_series(headers, scan_findings))
    series.findings = scan_findings
    if on_gap == "split":
        series = ScanResult([part for s in series for part in _split(s)], findings=scan_findings)
    if annotation_files:
        _pair(series, annotation_files)
    return series


def _pair(series: list[SeriesInfo], files: list[str]) -> None:
    """Attach each SEG / RTSTRUCT to the image series it annotates (``SeriesInfo.annotations``)."""
    from medstack.io.dicom.annotations import describe_annotation, pair_annotations

    found = []
    for f in files:
        try:
            found.append(describe_annotation(f))
        except Exception as e:  # an unreadable annotation must not hide the image series
            logger.warning("%s: annotation header unreadable: %s", f, e)
    pairing = pair_annotations(series, found)
    for a in found:
        target = pairing.get(a.sop_instance_uid)
        if target is not None:
            target.annotations.append(a)
        else:
            logger.info("%s: %s not paired: %s", a.path, a.kind, pairing.unpaired.get(a.sop_instance_uid, "?"))


class ScanResult(list):
    """The list of :class:`SeriesInfo` of a scan; ``findings`` holds the scan-level findings (unreadable and
    skipped files), also when no series was found."""

    def __init__(self, items=(), findings=None):
        super().__init__(items)
        self.findings = list(findings or [])


def _unreadable(f, err, strict, findings, series_uid=None):
    if strict:
        raise DicomError(f"{f}: unreadable DICOM file: {err} (strict=True)")
    findings.append(Finding("unreadable_file", f"{f}: unreadable DICOM file: {err}", "warning",
                            {"file": f, "series_uid": series_uid}))  # fmt: skip


ON_UNREADABLE = ("error", "drop")


def _lost_files(info: SeriesInfo) -> list[Finding]:
    """Findings of files that belong (or may belong: same folder, series unknown) to ``info`` but were not read."""
    folders = {os.path.dirname(p) for p in info.files}
    out = []
    for f in info.findings:
        if f.kind == "dropped_slices":
            out.append(f)
        elif f.kind == "unreadable_file":
            uid = f.details.get("series_uid")
            if uid == info.series_uid or (uid is None and os.path.dirname(f.details.get("file", "")) in folders):
                out.append(f)
    return out


def _check_policy(on_gap, tilt):
    if on_gap not in ON_GAP:
        raise DicomError(f"on_gap must be one of {ON_GAP}, got {on_gap!r}")
    if tilt not in TILT:
        raise DicomError(f"tilt must be one of {TILT}, got {tilt!r}")


def _split(info: SeriesInfo) -> list[SeriesInfo]:
    if info.uniform_spacing or info.shape[1] < 3:
        return [info]
    headers = list(info.headers.values())
    pieces: list[list[int]] = [[0]]
    steps = np.diff(info.positions)
    med = float(np.median(steps))
    for d, step in enumerate(steps):
        if abs(step - med) > max(0.01, 0.01 * med):
            pieces.append([])
        pieces[-1].append(d + 1)
    out = []
    for n, idx in enumerate(pieces):
        members = []
        for vol in info.frames:
            keep = {id(vol[d]) for d in idx if d < len(vol)}
            members.extend(f for f in vol if id(f) in keep)
        import dataclasses

        keep_ids = {id(m) for m in members}
        subset = [dataclasses.replace(h, frames=[f for f in h.frames if id(f) in keep_ids])
                  for h in headers if any(f.path == h.path for f in members)]  # copies: the input stays intact
        part = build_series(subset, [])
        for p in part:
            p.uid = f"{info.uid}#part{n + 1}"
            p.findings = [Finding("split", f"series {info.series_uid} split at a gap/step change: part {n + 1} of "
                                  f"{len(pieces)} (slices {idx[0]}-{idx[-1]})", "info")] + p.findings  # fmt: skip
        out.extend(part)
    return out


def _emit(findings: list[Finding]) -> None:
    for f in findings:
        if f.severity == "warning":
            warnings.warn(f.message, DicomWarning, stacklevel=4)
        else:
            logger.info(f.message)


def select_channels(info: SeriesInfo, *, echo=None, image_type=None) -> SeriesInfo:
    """The channels of ``info`` whose echo and image kind match (a new SeriesInfo; ``info`` is unchanged).

    ``echo``: an echo number (1-based, EchoNumbers) or a list of them. ``image_type``: an image kind
    (``"magnitude"``, ``"phase"``, ``"real"``, ``"imaginary"``, ``"field_map_hz"``), a channel name, or an
    ImageType value (e.g. ``"DERIVED"``), or a list of those.
    """
    if echo is None and image_type is None:
        return info
    echoes = None if echo is None else {int(e) for e in (echo if isinstance(echo, list | tuple | set) else [echo])}
    kinds = None
    if image_type is not None:
        kinds = {str(k).lower() for k in (image_type if isinstance(image_type, list | tuple | set) else [image_type])}
    keep = []
    pairs = {(x.get("echo_number"), x["echo_time_ms"]) for x in info.channels}
    numbers_tell = None not in {n for n, _ in pairs} and len({n for n, _ in pairs}) == len(pairs)
    times = sorted({t for _, t in pairs if t is not None})
    for c, ch in enumerate(info.channels):
        echo_no = ch.get("echo_number")
        if not numbers_tell:  # echoes told apart by echo time only: number them by TE, as their names do
            echo_no = times.index(ch["echo_time_ms"]) + 1 if ch["echo_time_ms"] in times else None
        if echoes is not None and echo_no not in echoes:
            continue
        names = {ch["image_kind"].lower(), ch["name"].lower(), *(t.lower() for t in ch["image_type"])}
        if kinds is not None and not (kinds & names):
            continue
        keep.append(c)
    if not keep:
        have = ", ".join(f"{ch['name']} (echo {ch.get('echo_number')}, {ch['image_kind'] or 'image'})"
                         for ch in info.channels)  # fmt: skip
        raise DicomError(f"series {info.uid}: no channel matches echo={echo!r} image_type={image_type!r}; "
                         f"channels: {have}")  # fmt: skip
    import dataclasses

    return dataclasses.replace(info, frames=[info.frames[c] for c in keep], channels=[info.channels[c] for c in keep],
                               shape=(len(keep), *info.shape[1:]))  # fmt: skip


def load_series(
    info: SeriesInfo,
    *,
    on_gap: str = "error",
    tilt: str = "resample",
    dtype=None,
    emit: bool = True,
    echo=None,
    image_type=None,
    on_unreadable: str = "error",
) -> Volume:
    """Load one :class:`SeriesInfo` found by :func:`scan` into a :class:`Volume` ``(C, D, H, W)``.

    Pixel values: RescaleSlope/Intercept applied per slice (see :func:`medstack.io.dicom._pixels.rescale`
    for the dtype rule; ``dtype`` overrides), 12-bit data masked/sign-extended, MONOCHROME1 inverted,
    GE reverse-polarity rows reversed back. The affine is computed for the ``tilt`` policy applied here.
    ``echo`` / ``image_type`` select named channels (see :func:`select_channels`). The QA findings are in
    ``metadata["findings"]`` and emitted as :class:`DicomWarning` / log records; a finding of severity
    ``"error"`` (an undecodable file) refuses the series with a :class:`~medstack.errors.DicomError`.
    ``on_unreadable``: a file of the series that could not be read (truncated, unreadable, other Rows/Columns)
    refuses the series (``"error"``, default) or is left out with its finding kept (``"drop"``).
    """
    _check_policy(on_gap, tilt)
    if on_unreadable not in ON_UNREADABLE:
        raise DicomError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")
    info = select_channels(info, echo=echo, image_type=image_type)
    findings = list(info.findings)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise DicomError(errors[0].message)
    lost = _lost_files(info)
    if lost and on_unreadable == "error":
        raise DicomError(f"{lost[0].message}; {len(lost)} file(s) of series {info.uid} would be missing from the "
                         "volume: fix or remove them, or pass on_unreadable='drop' to load without them")  # fmt: skip
    try:
        return _load_checked(info, findings, on_gap, tilt, dtype, emit)
    except (MedstackError, Warning):  # warnings turned into errors by the caller's filters pass through
        raise
    except MemoryError as e:
        raise DicomError(f"series {info.uid}: not enough memory for shape {info.shape}: {e}") from e
    except Exception as e:  # a decoder or NumPy failing on bad data: typed, naming the series
        raise DicomError(f"series {info.uid} ({info.files[0]} ...): cannot read the pixel data: "
                         f"{type(e).__name__}: {e}") from e


def _load_checked(info, findings, on_gap, tilt, dtype, emit) -> Volume:
    gap_kinds = [f for f in findings if f.kind in ("gap", "nonuniform_step")]
    if gap_kinds and on_gap == "error":
        raise DicomError(f"{gap_kinds[0].message}; pass on_gap='resample', 'warn' or 'split'")
    if gap_kinds and on_gap == "split":
        raise DicomError(f"{gap_kinds[0].message}; scan(..., on_gap='split') lists the uniform parts as series")
    if is_colour(info):
        return _load_colour(info, findings, tilt, dtype, emit)
    raw = read_pixels(info)
    frames, raw = _drop_duplicates(info, raw, findings)
    raw = invert_monochrome1(raw, info.headers)
    flipped = [(c, d) for c, vol in enumerate(frames) for d, f in enumerate(vol[: raw.shape[1]]) if f.flip_rows]
    for c, d in flipped:  # GE epi_pepolar: stored with reversed rows under an unchanged header
        raw[c, d] = raw[c, d, ::-1].copy()
    slopes = np.array([[f.slope for f in vol] for vol in frames], dtype=np.float64)
    inters = np.array([[f.intercept for f in vol] for vol in frames], dtype=np.float64)
    slopes, inters = slopes[:, : raw.shape[1]], inters[:, : raw.shape[1]]
    data = rescale(raw, slopes, inters, dtype=None)
    affine = np.array(info.affine_for(tilt))
    positions = info.positions
    if info.tilt_deg:
        findings = [Finding(f.kind, f"{f.message}; tilt={tilt!r} applied", f.severity, f.details) if f.kind == "tilt"
                    else f for f in findings]  # fmt: skip
        if tilt == "resample":
            data = _untilt(data, frames[0], affine)
    if flipped:
        rev = sorted({c for c, _ in flipped})
        findings.append(Finding("polarity_reversed", f"series {info.uid}: GE reverse phase-encoding volumes "
                                f"{rev} were stored with reversed rows (epi_pepolar); flipped back as dcm2niix "
                                "does", "info", {"channels": rev}))  # fmt: skip
    if gap_kinds and on_gap == "resample":
        step = float(np.median(np.diff(positions)))
        data, positions = resample_positions(data, positions, step)
        findings.append(Finding("resampled", f"series {info.uid}: resampled onto {len(positions)} uniform slices of "
                                f"{step:.4g} mm (on_gap='resample')", "info"))  # fmt: skip
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    meta = _metadata(info, frames, findings, positions)
    if emit:
        _emit(findings)
    return Volume(np.ascontiguousarray(data), affine, meta)


def _load_colour(info: SeriesInfo, findings, tilt, dtype, emit) -> Volume:
    """Colour DICOM (RGB, e.g. colour FA maps, secondary captures): 3 channels per volume, no rescale."""
    if any(len(v) != info.shape[1] for v in info.frames):
        raise DicomError(f"series {info.uid}: colour series with missing slices in some volumes; cannot stack")
    if info.tilt_deg and tilt == "resample":
        raise DicomError(f"series {info.uid}: tilted colour series are not resampled; pass tilt='shear'")
    data = read_pixels(info)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    names = [f"{rgb}" if len(info.frames) == 1 else f"{rgb}[{c}]" for c in range(len(info.frames))
             for rgb in ("red", "green", "blue")]  # fmt: skip
    findings = [*findings, Finding("colour", f"series {info.uid}: colour images ({info.headers[info.files[0]].photometric})"
                                   f" loaded as {len(names)} channels {names}", "info")]  # fmt: skip
    meta = _metadata(info, info.frames, findings, info.positions)
    meta["channel_names"] = names
    meta["photometric"] = "RGB"
    if emit:
        _emit(findings)
    return Volume(np.ascontiguousarray(data), np.array(info.affine_for(tilt)), meta)


def _drop_duplicates(info: SeriesInfo, raw: np.ndarray, findings: list[Finding]):
    """(frames, raw) without channels that only repeat channel 0 at some positions (``info`` is not changed)."""
    lengths = [len(v) for v in info.frames]
    if len(set(lengths)) == 1:
        return info.frames, raw
    # channels 1.. with missing positions: each extra frame must duplicate channel 0's pixels
    full = lengths[0]
    keep = [0]
    for c in range(1, len(info.frames)):
        if lengths[c] == full:
            keep.append(c)
            continue
        for d, f in enumerate(info.frames[c]):
            base = next(i for i, g in enumerate(info.frames[0]) if abs(_pos(g, info) - _pos(f, info)) < 0.01)
            if not np.array_equal(raw[c, d], raw[0, base]):
                raise DicomError(f"series {info.uid}: {f.path} and {info.frames[0][base].path} share a slice "
                                 "position but hold different images (mixed acquisitions?); pass the files of one "
                                 "acquisition")  # fmt: skip
            findings.append(Finding("duplicate", f"{f.path}: duplicates {info.frames[0][base].path} (same position, "
                                    "identical pixels); dropped", "info", {"file": f.path}))  # fmt: skip
    return [info.frames[c] for c in keep], raw[keep]


def _pos(frame, info) -> float:
    iop = frame.iop
    n = np.cross(iop[:3], iop[3:])
    return float(frame.ipp @ (n / np.linalg.norm(n)))


def _untilt(data: np.ndarray, first, affine: np.ndarray) -> np.ndarray:
    """Shift each slice in-plane so that the sheared stack lands on the orthogonal grid of ``affine``."""
    f0 = first[0]
    row_dir, col_dir = f0.iop[:3], f0.iop[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    ps = f0.pixel_spacing
    shifts = []
    for f in first:
        off = f.ipp - f0.ipp
        off = off - (off @ normal) * normal
        shifts.append((off @ col_dir / ps[0], off @ row_dir / ps[1]))
    fill = float(data.min())
    return shift_slices(data, np.array(shifts), fill)


def _metadata(info: SeriesInfo, frames, findings, positions) -> dict:
    h0 = next(iter(info.headers.values()))
    meta = {
        "source": os.path.commonpath(info.files) if len(info.files) > 1 else info.files[0],
        "format": "dicom",
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "series_number": info.series_number,
        "description": info.description,
        "modality": info.modality,
        "manufacturer": info.manufacturer,
        "image_type": list(info.image_type),
        "patient_id": h0.patient_id,
        "study_date": h0.study_date,
        "n_files": info.n_files,
        "files": info.files,
        "slice_positions_mm": [float(p) for p in positions],
        "tilt_deg": info.tilt_deg,
        "findings": [f.as_dict() for f in findings],
    }
    channels = info.channels if len(info.channels) == len(frames) else []
    kinds = {(c["image_kind"], c["echo_number"], c["echo_time_ms"], tuple(c["image_type"])) for c in channels}
    if len(kinds) > 1:  # several image kinds: named channels
        meta["channel_names"] = [c["name"] for c in channels]
        meta["channels"] = [dict(c) for c in channels]
        meta["echo_times_ms"] = [c["echo_time_ms"] for c in channels]
        meta["image_kinds"] = [c["image_kind"] for c in channels]
    if len(frames) > 1:
        bvals = [f.bvalue for f in (vol[0] for vol in frames)]
        if any(b is not None and b > 0 for b in bvals):  # diffusion: b-values only where some volume has b > 0
            meta["b_values"] = [None if b is None else float(b) for b in bvals]
            grads = [vol[0].gradient for vol in frames]
            if any(g is not None for g in grads):
                meta["gradients"] = [None if g is None else [float(x) for x in g] for g in grads]
        meta["volume_times"] = [info.headers[vol[0].path].acquisition_time for vol in frames]
    polarity = [info.headers[vol[0].path].polarity for vol in frames]
    if any(p is not None for p in polarity):
        meta["phase_encoding_polarity"] = polarity
    if h0.echo_time is not None:
        meta["echo_time_ms"] = h0.echo_time
    return meta


def volume_files(folder) -> list[str]:
    from medstack.io import FORMATS

    suffixes = tuple(e.lower() for f in FORMATS if f.name != "dicom" for e in f.extensions)
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(suffixes))


def select(series: Sequence[SeriesInfo], choice=None, *, where: str = "") -> SeriesInfo:
    """Pick one series: by SeriesInfo, UID, SeriesNumber or description; or the single non-localizer."""
    if not series:
        reasons = [f.message for f in getattr(series, "findings", []) if f.severity != "info"][:3]
        raise DicomError(f"{where}: no DICOM image series found (no readable DICOM files with pixel data)"
                         + "".join(f"; {r}" for r in reasons))  # fmt: skip
    if isinstance(choice, SeriesInfo):
        return choice
    if choice is None:
        real = [s for s in series if not s.is_localizer]
        if len(real) == 1:
            return real[0]
        if len(series) == 1:
            return series[0]
        pool = real or list(series)
    else:
        if isinstance(choice, int):
            pool = [s for s in series if s.series_number == choice]
        else:
            pool = [s for s in series if choice in (s.uid, s.series_uid)] or [
                s for s in series if s.description == choice
            ]
        if len(pool) == 1:
            return pool[0]
        if not pool:
            raise DicomError(f"{where}: no series matches series={choice!r}; found:\n{_listing(series)}")
    raise DicomError(
        f"{where}: {len(pool)} candidate series; pass series= (UID, SeriesNumber or description):\n{_listing(pool)}"
    )


def _listing(series) -> str:
    def kinds(s):
        names = sorted({c["name"] for c in s.channels if c["name"]} - {"image"})
        return f" channels={names}" if names else ""

    return "\n".join(
        f"  #{s.series_number} {s.description!r} {s.modality} shape={s.shape}{kinds(s)} uid={s.uid}" for s in series
    )


def load(
    path,
    *,
    series=None,
    on_gap: str = "error",
    tilt: str = "resample",
    dtype=None,
    strict: bool = False,
    workers: int | None = None,
    recursive: bool = True,
    echo=None,
    image_type=None,
    on_unreadable: str = "error",
) -> Volume:
    """Scan ``path`` (folder, file or list of files) and load one series (see :func:`select` for ``series``).

    ``echo`` / ``image_type`` select named channels (see :func:`select_channels`); when the image kinds of a
    series could not be joined (different slices), they also pick the one series that holds them.
    """
    found = scan(path, recursive=recursive, workers=workers, on_gap=on_gap, strict=strict)
    where = str(path) if isinstance(path, str | os.PathLike) else "given files"
    if not found and isinstance(path, str | os.PathLike) and os.path.isdir(path):
        volumes = volume_files(path)
        if volumes:
            raise DicomError(f"{where}: no DICOM image series found, but the folder holds {len(volumes)} volume "
                             f"file(s) (e.g. {volumes[0]}): load one file at a time")  # fmt: skip
    if (echo is not None or image_type is not None) and series is None and len(found) > 1:
        matching = []
        for s in found:
            try:
                select_channels(s, echo=echo, image_type=image_type)
            except DicomError:
                continue
            matching.append(s)
        found = matching or found
    info = select(found, series, where=where)
    return load_series(info, on_gap=on_gap, tilt=tilt, dtype=dtype, echo=echo, image_type=image_type,
                       on_unreadable=on_unreadable)


