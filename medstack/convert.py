"""Batch conversion: DICOM archives and volume files to NIfTI / NRRD / MHA / HDF5, with JSON sidecars.

Guarantees (what ``medstack convert`` promises a lab pointing it at an archive):

- One task per series (or input file); a failing task is reported and the rest still convert.
- Every output is written atomically (temporary name in the target folder, then rename), and a JSON
  sidecar records source, geometry, QA findings, medstack version and options.
- Resumable: the sidecar is written first with ``"complete": false`` and rewritten with ``true`` after the
  volume; a re-run skips complete outputs with the same fingerprint and redoes incomplete ones.
- Nothing is overwritten without ``overwrite=True``: an output that exists and is not an interrupted
  conversion of the same source with the same options is an error for that task.
- No patient-identifying values in names or sidecars unless ``keep_phi=True``: ``{patient}`` and
  ``{study_date}`` in name templates become short hashes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import medstack
from medstack import io
from medstack.errors import MedstackError, OutputExistsError, UnknownFormatError
from medstack.io._atomic import atomic_output, clean_stale_partials

FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha", "h5": ".h5"}
DEFAULT_DICOM_TEMPLATE = "{series_number}_{description}_{uid8}"
DEFAULT_FILE_TEMPLATE = "{stem}"
LIST_SUFFIXES = (".txt", ".lst", ".list")
FOREIGN_SUFFIXES = (".mgz", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".vtk", ".mnc", ".img",
                    ".hdr", ".gz", ".zip", ".xyz")  # fmt: skip
#: volume-file extensions: every format of medstack.io's table except DICOM (the table is the one source)
VOLUME_SUFFIXES = tuple(sorted({e.lower() for f in io.FORMATS if f.name != "dicom" for e in f.extensions}))


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """What to produce. All but ``overwrite`` enter the fingerprint that decides whether to redo a task."""

    format: str = "nii.gz"
    template: str | None = None
    series: tuple[str, ...] = ()  # empty: all series
    orient: str | None = None
    spacing: tuple[float, float, float] | None = None
    interp: str = "linear"
    dtype: str | None = None
    on_gap: str = "error"
    tilt: str = "resample"
    keep_phi: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise UnknownFormatError(f"unknown output format {self.format!r}; use one of {', '.join(FORMATS)}")

    def recorded(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("overwrite")
        return d


@dataclasses.dataclass
class Task:
    """One output to produce."""

    key: str  # series UID or input file path
    kind: str  # "dicom" or "file"
    output: Path
    payload: object  # SeriesInfo or path
    label: str  # short human description
    input_root: str

    def fingerprint(self, options: ConvertOptions) -> str:
        """Identity of (source, options that change this output): equal fingerprints mean 'already done'.

        ``on_gap`` / ``tilt`` only count for series whose scan found a gap / tilt, so re-running a batch with
        ``--on-gap resample`` redoes the failed gap series and skips the others.
        """
        n = self.payload.n_files if self.kind == "dicom" else 1
        recorded = options.recorded()
        kinds = {f.kind for f in self.payload.findings} if self.kind == "dicom" else set()
        if not kinds & {"gap", "nonuniform_step"}:
            recorded.pop("on_gap")
        if "tilt" not in kinds:
            recorded.pop("tilt")
        recorded.pop("series")  # the selection does not change an output
        blob = json.dumps([self.key, n, recorded], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Result:
    task: Task
    status: str  # "converted", "skipped", "failed", "planned"
    message: str = ""
    seconds: float = 0.0
    nbytes: int = 0
    warnings: tuple[str, ...] = ()


def _short_hash(value: str, n: int = 8) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:n]


def _safe(value) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("._")
    return text[:80] or "unnamed"


def _render(template: str, fields: dict) -> str:
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise MedstackError(
            f"bad name template {template!r}: {e}; fields: {', '.join(sorted(fields))}"
        ) from None
    parts = [_safe(p) for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
    return "/".join(parts) or "unnamed"


def _dicom_fields(info, index: int, keep_phi: bool) -> dict:
    h0 = next(iter(info.headers.values()))
    patient = h0.patient_id if keep_phi else "p" + _short_hash(h0.patient_id)
    date = h0.study_date if keep_phi else "d" + _short_hash(h0.study_date + h0.study_uid)
    return {
        "patient": patient or "unknown",
        "study_date": date or "nodate",
        "series_number": info.series_number if info.series_number is not None else "x",
        "description": info.description or "series",
        "modality": info.modality or "OT",
        "series_uid": info.uid,
        "study_uid": info.study_uid,
        "uid8": _short_hash(info.uid),
        "index": index,
        "stem": _safe(info.description or "series"),
    }


def _file_fields(path: Path, index: int) -> dict:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return {"stem": name, "index": index, "uid8": _short_hash(str(path.resolve())), "series_number": "x",
            "description": name, "modality": "", "series_uid": "", "study_uid": "", "patient": "unknown",
            "study_date": "nodate"}  # fmt: skip


def _expand_inputs(inputs: Sequence) -> list[Path]:
    out = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise medstack.ReadError(f"{p}: no such file or folder")
        if p.is_file() and p.name.lower().endswith(LIST_SUFFIXES):
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    if not q.exists():
                        raise medstack.ReadError(f"{p}: listed path {line!r} does not exist")
                    out.append(q)
        else:
            out.append(p)
    return out


def plan(inputs: Sequence, output, options: ConvertOptions, *, workers: int | None = None) -> tuple[list[Task], list[Result]]:
    """Turn inputs into tasks (one per series / file) with their output paths; name collisions fail."""
    from medstack.io import dicom

    output = Path(output)
    known = output.name.lower().endswith(tuple(FORMATS.values()))
    if not known and output.suffix.lower() in FOREIGN_SUFFIXES and not output.is_dir():
        raise UnknownFormatError(f"{output}: medstack convert does not write {output.suffix} files; use a folder or "
                                 f"one of {', '.join('.' + f for f in FORMATS)}")  # fmt: skip
    if output.exists() and not output.is_dir() and not output.name.lower().endswith(tuple(FORMATS.values())):
        raise MedstackError(f"{output}: exists and is not a folder")
    ext = FORMATS[options.format]
    sources = _expand_inputs(inputs)
    tasks: list[Task] = []
    index = 0
    for src in sources:
        if src.is_dir() or (src.is_file() and not src.name.lower().endswith(VOLUME_SUFFIXES)):
            found = dicom.scan(src, workers=workers, on_gap=options.on_gap)
            if options.series:
                found = [s for s in found if _matches(s, options.series)]
            for info in found:
                index += 1
                name = _render(options.template or DEFAULT_DICOM_TEMPLATE, _dicom_fields(info, index, options.keep_phi))
                label = f"#{info.series_number} {info.description}".strip()
                tasks.append(Task(info.uid, "dicom", Path(name + ext), info, label, str(src)))
        else:
            index += 1
            name = _render(options.template or DEFAULT_FILE_TEMPLATE, _file_fields(src, index))
            tasks.append(Task(str(src.resolve()), "file", Path(name + ext), str(src), src.name, str(src.parent)))
    single_file = output.name.lower().endswith(tuple(FORMATS.values()))
    if single_file:
        if len(tasks) != 1:
            raise MedstackError(f"{output}: is a file name but the input holds {len(tasks)} series/files; "
                                "give an output folder")  # fmt: skip
        tasks[0].output = output
    else:
        for t in tasks:
            t.output = output / t.output
    failures = []
    by_out: dict[Path, list[Task]] = {}
    for t in tasks:
        by_out.setdefault(t.output, []).append(t)
    keep = []
    for out, group in by_out.items():
        if len(group) == 1:
            keep.append(group[0])
            continue
        for t in group:
            failures.append(Result(t, "failed", f"output name collision: {len(group)} series map to {out}; use a "
                                   "name template with {uid8} or {series_uid}"))  # fmt: skip
    return keep, failures


def _matches(info, selectors) -> bool:
    for sel in selectors:
        if sel == "all" or sel in (info.uid, info.series_uid, info.description) or sel == str(info.series_number):
            return True
    return False


def sidecar_path(output: Path) -> Path:
    name = output.name
    for suffix in sorted(FORMATS.values(), key=len, reverse=True):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_suffix(".json")


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(task: Task, options: ConvertOptions) -> str:
    """``"new"``, ``"complete"`` (skip), ``"incomplete"`` (ours, redo) or ``"exists"`` (foreign or different)."""
    side = _read_sidecar(sidecar_path(task.output))
    fp = task.fingerprint(options)
    if side is not None and side.get("fingerprint") == fp:
        return "complete" if side.get("complete") and task.output.exists() else "incomplete"
    if task.output.exists() or side is not None:
        return "exists"
    return "new"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


PHI_KEYS = ("patient_id", "study_date")


def _sidecar(task: Task, options: ConvertOptions, vol, fingerprint: str, complete: bool) -> dict:
    meta = dict(vol.metadata) if vol is not None else {}
    source = {"kind": task.kind, "input": task.input_root}
    if task.kind == "dicom":
        info = task.payload
        files = meta.get("files", info.files)
        source.update(series_uid=info.series_uid, study_uid=info.study_uid, unit_uid=info.uid,
                      series_number=info.series_number, description=info.description, modality=info.modality,
                      manufacturer=info.manufacturer, n_files=len(files),
                      files=[os.path.relpath(f, task.input_root) for f in files])  # fmt: skip
    else:
        source["file"] = os.path.basename(str(task.payload))
    payload = {
        "medstack_version": medstack.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "fingerprint": fingerprint,
        "output": task.output.name,
        "source": source,
        "options": options.recorded(),
    }
    if vol is not None:
        payload["geometry"] = {
            "shape": list(vol.shape), "spacing_dhw_mm": list(vol.spacing), "orientation": vol.orientation,
            "affine": np.asarray(vol.affine).tolist(), "dtype": str(vol.dtype),
        }  # fmt: skip
        payload["findings"] = meta.get("findings", [])
        for key in ("b_values", "gradients", "echo_time_ms", "slice_positions_mm", "tilt_deg", "channel_names",
                    "echo_times_ms", "image_kinds", "phase_encoding_polarity"):
            if key in meta:
                payload.setdefault("acquisition", {})[key] = meta[key]
    if options.keep_phi:
        payload["phi"] = {k: meta.get(k) for k in PHI_KEYS if k in meta}
    return payload


def run_task(task: Task, options: ConvertOptions) -> Result:
    """Convert one series / file. Never raises for data problems: failures come back as a Result."""
    t0 = time.perf_counter()
    try:
        state = status(task, options)
        if state == "complete" and not options.overwrite:
            return Result(task, "skipped", "already converted")
        if state == "exists" and not options.overwrite:
            raise OutputExistsError(f"{task.output}: exists (not from this conversion); pass --overwrite to replace it")
        fp = task.fingerprint(options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vol = _load(task, options)
            vol = _transform(vol, options)
            side = sidecar_path(task.output)
            _write_json(side, _sidecar(task, options, None, fp, complete=False))
            # replacing is allowed only for our own interrupted output or when asked
            medstack.save(vol, task.output, overwrite=options.overwrite or state == "incomplete")
            _write_json(side, _sidecar(task, options, vol, fp, complete=True))
        notes = tuple(str(w.message) for w in caught)
        return Result(task, "converted", "", time.perf_counter() - t0, vol.nbytes, notes)
    except (MedstackError, OSError, ValueError) as e:
        return Result(task, "failed", f"{type(e).__name__}: {e}".splitlines()[0], time.perf_counter() - t0)


def _load(task: Task, options: ConvertOptions):
    from medstack.io import dicom

    if task.kind == "dicom":
        return dicom.load_series(task.payload, on_gap=options.on_gap, tilt=options.tilt)
    return medstack.load(task.payload)


def _transform(vol, options: ConvertOptions):
    if options.orient:
        vol = vol.reoriented(options.orient)
    if options.spacing:
        from medstack.resample import resample

        vol = resample(vol, spacing=options.spacing, mode="nearest" if options.interp == "nearest" else "linear")
    if options.dtype:
        vol = vol.replace(data=vol.to_numpy().astype(options.dtype))
    return vol


@dataclasses.dataclass
class Summary:
    results: list[Result]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == "failed"]


def convert(
    inputs: Sequence,
    output,
    options: ConvertOptions,
    *,
    workers: int | None = None,
    dry_run: bool = False,
    dask_address: str | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_plan: Callable[[list[Task]], None] | None = None,
) -> Summary:
    """Plan and run a conversion batch; see the module docstring for the guarantees."""
    tasks, results = plan(inputs, output, options, workers=workers)
    out_root = Path(output) if not Path(output).name.lower().endswith(tuple(FORMATS.values())) else Path(output).parent
    clean_stale_partials(out_root)
    if on_plan is not None:
        on_plan(tasks)
    for r in results:
        if on_result:
            on_result(r)
    if dry_run:
        planned = [Result(t, "planned", status(t, options)) for t in tasks]
        for r in planned:
            if on_result:
                on_result(r)
        return Summary(results + planned)
    n_workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if dask_address:
        done = _run_dask(tasks, options, dask_address, on_result)
    elif n_workers == 1 or len(tasks) <= 1:
        done = []
        for t in tasks:
            r = run_task(t, options)
            done.append(r)
            if on_result:
                on_result(r)
    else:
        # largest series first: the batch does not end waiting on one big straggler
        ordered = sorted(tasks, key=lambda t: -(t.payload.n_files if t.kind == "dicom" else 1))
        done = _run_processes(ordered, options, min(n_workers, len(tasks)), on_result)
    return Summary(results + done)


def _run_processes(tasks, options, n_workers, on_result) -> list[Result]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    done = []
    pool = ProcessPoolExecutor(n_workers, mp_context=ctx)
    try:
        futures = {pool.submit(run_task, t, options): t for t in tasks}
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except Exception as e:  # a worker died (e.g. out of memory)
                r = Result(futures[fut], "failed", f"worker crashed: {type(e).__name__}: {e}")
            done.append(r)
            if on_result:
                on_result(r)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return done


def _run_dask(tasks, options, address, on_result) -> list[Result]:
    try:
        from distributed import Client, as_completed
    except ImportError as e:
        raise MedstackError("--dask needs the optional dependency: pip install 'medstack[distributed]'") from e
    done = []
    client = address if hasattr(address, "submit") else Client(address)
    try:
        futures = [client.submit(run_task, t, options, pure=False) for t in tasks]
        for fut in as_completed(futures):
            r = fut.result()
            done.append(r)
            if on_result:
                on_result(r)
    finally:
        if not hasattr(address, "submit"):
            client.close()
    return done
