"""Batch conversion: DICOM archives and volume files to NIfTI / NRRD / MHA / HDF5, with JSON sidecars.

Guarantees (what ``medstack convert`` promises a lab pointing it at an archive):

- One task per series (or input file); a failing task is reported and the rest still convert.
- Every output is written atomically (temporary name in the target folder, then rename), and a JSON
  sidecar records source, geometry, QA findings, medstack version and options.
- Resumable: the sidecar is written first with ``"complete": false`` and rewritten with ``true`` after the
  volume; a re-run skips complete outputs with the same fingerprint and redoes incomplete ones.
- Nothing is overwritten without ``overwrite=True``: an output that exists and is not an interrupted
  conversion of the same source with the same options is an error for that task.
- No patient-identifying values in names, sidecars or output metadata unless ``keep_phi=True``:
  ``{patient}`` and ``{study_date}`` in name templates become keyed pseudonyms (HMAC-SHA256 with a
  per-archive secret ``<output>/.medstack_secret``, or ``pseudonym_key`` / ``MEDSTACK_PSEUDONYM_KEY``);
  patient keys, dates and source file lists are removed from the metadata written to any output.
- A file at a sidecar path that medstack did not write is never replaced, not even with ``overwrite``.
- Name templates are checked: unknown fields, absolute paths, ``..`` or empty components are refused;
  field values never add folders.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import medstack
from medstack import io
from medstack.errors import ArgumentError, DicomError, OutputExistsError, ReadError, UnknownFormatError
from medstack.io._atomic import atomic_output, clean_stale_partials

FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha", "h5": ".h5"}
DEFAULT_DICOM_TEMPLATE = "{series_number}_{description}_{uid8}"
DEFAULT_FILE_TEMPLATE = "{stem}"
LIST_SUFFIXES = (".txt", ".lst", ".list")
FOREIGN_SUFFIXES = (".mgz", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".vtk", ".mnc", ".img",
                    ".hdr", ".gz", ".zip", ".xyz")  # fmt: skip
#: volume-file extensions: every format of medstack.io's table except DICOM (the table is the one source)
VOLUME_SUFFIXES = tuple(sorted({e.lower() for f in io.FORMATS if f.name != "dicom" for e in f.extensions}))
#: fields a ``--name`` template may use
TEMPLATE_FIELDS = ("patient", "study_date", "series_number", "description", "modality", "series_uid", "study_uid",
                   "uid8", "index", "stem")  # fmt: skip
SECRET_NAME = ".medstack_secret"
KEY_ENV = "MEDSTACK_PSEUDONYM_KEY"
#: most voxels (C * D * H * W) a --spacing resampling may produce (env MEDSTACK_MAX_VOXELS overrides)
MAX_VOXELS = 2**30
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


class OptionError(ArgumentError):
    """A bad option (name template, dtype, spacing, key): a usage error, not a data error."""


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
    on_unreadable: str = "error"
    tilt: str = "resample"
    keep_phi: bool = False
    overwrite: bool = False
    pseudonym_key: str | None = dataclasses.field(default=None, repr=False)  # never recorded nor printed

    def __post_init__(self):
        if self.format not in FORMATS:
            raise UnknownFormatError(f"unknown output format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.template is not None:
            check_template(self.template)
        if self.dtype is not None:
            check_dtype(self.dtype)
        if self.spacing is not None:
            check_spacing(self.spacing)

    def recorded(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("overwrite")
        d.pop("pseudonym_key")
        return d


def check_dtype(dtype) -> np.dtype:
    """The numpy dtype for ``--dtype``; only plain numeric dtypes every output format stores."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise OptionError(f"--dtype: {str(dtype)!r} is not a supported output dtype; use one of {', '.join(DTYPES)}")
    return dt


def check_spacing(spacing, lo: float = 0.01, hi: float = 1000.0) -> tuple[float, float, float]:
    """``--spacing`` values: 3 finite numbers in [lo, hi] mm."""
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise OptionError(f"--spacing must be numbers in mm, got {spacing!r}") from None
    if len(vals) != 3 or not all(np.isfinite(v) and lo <= v <= hi for v in vals):
        raise OptionError(f"--spacing must be 1 or 3 finite values between {lo} and {hi} mm, got {vals}")
    return vals


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
        if not kinds & {"unreadable_file", "dropped_slices"}:
            recorded.pop("on_unreadable", None)
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
    findings: tuple[tuple[str, str], ...] = ()  # (kind, message) of warning-severity findings, for printing


def _short_hash(value: str, n: int = 8) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:n]


def pseudonym(value, key: bytes, n: int = 16) -> str:
    """A keyed pseudonym: the first ``n`` hex digits of HMAC-SHA256(key, value)."""
    return hmac.new(key, str(value).encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:n]


def _safe(value) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("._")
    return text[:80] or "unnamed"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPEC = re.compile(r"[<>=^]?[+ -]?0?\d{0,2}(\.\d{1,2})?[sdxXbo]?")


def _template_error(template: str, why: str) -> OptionError:
    return OptionError(f"bad name template {template!r}: {why}; allowed fields: "
                       + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))  # fmt: skip


def check_template(template) -> list[tuple[str, str | None, str]]:
    """Parse and check a ``--name`` template; returns its (literal, field, spec) parts.

    Fields must be plain names from :data:`TEMPLATE_FIELDS` (no ``.attr``, ``[index]``, ``!conversion``,
    nested or wide format specs); ``/`` in the literal text makes folders, but the template may not be
    absolute, hold ``..`` / ``.`` / empty components or control characters.
    """
    if not isinstance(template, str) or not template.strip():
        raise _template_error(str(template), "empty template")
    if _CONTROL.search(template):
        raise _template_error(template, "control characters are not allowed")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise _template_error(template, str(e)) from None
    parts: list[tuple[str, str | None, str]] = []
    skeleton = ""
    for literal, field, spec, conversion in parsed:
        skeleton += literal
        if field is None:
            parts.append((literal, None, ""))
            continue
        if field not in TEMPLATE_FIELDS:
            raise _template_error(template, f"unknown field {{{field}}}")
        if conversion:
            raise _template_error(template, f"conversion !{conversion} is not allowed")
        if spec and not _SPEC.fullmatch(spec):
            raise _template_error(template, f"format spec {spec!r} of {{{field}}} is not allowed")
        parts.append((literal, field, spec or ""))
        skeleton += "X"
    if re.match(r"^([\\/]|[A-Za-z]:)", skeleton):
        raise _template_error(template, "absolute paths are not allowed (names are relative to the output folder)")
    for comp in re.split(r"[\\/]", skeleton):
        if comp in ("", ".", ".."):
            raise _template_error(template, f"empty, '.' or '..' path component {comp!r}")
    return parts


def _render(template: str, fields: dict) -> str:
    """The output name (without extension) for ``fields``; field values never add folders or escape."""
    out = []
    for literal, field, spec in check_template(template):
        out.append(literal)
        if field is None:
            continue
        value = fields.get(field, "")
        try:
            text = format(value, spec) if spec else str(value)
        except (TypeError, ValueError):  # e.g. {series_number:03d} of a series without a number ('x')
            text = str(value)
        out.append(_safe(text))
    parts = [_safe(p) for p in re.split(r"[\\/]+", "".join(out))]
    if any(p in ("", ".", "..") for p in parts):
        raise _template_error(template, "renders an empty or relative path component")
    return "/".join(parts)


def _dicom_fields(info, index: int, keep_phi: bool, key: bytes | None = None) -> dict:
    h0 = next(iter(info.headers.values()))
    if keep_phi:
        patient, date = h0.patient_id, h0.study_date
    else:
        if key is None:  # names that do not use {patient} / {study_date}: no key needed
            key = secrets.token_bytes(32)
        patient = "p" + pseudonym(h0.patient_id, key) if h0.patient_id else ""
        date = "d" + pseudonym(h0.study_date + "|" + h0.study_uid, key) if h0.study_date else ""
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


def pseudonym_key(out_root: Path, options: ConvertOptions, *, create: bool = True) -> bytes:
    """The key of ``{patient}`` / ``{study_date}`` pseudonyms: ``options.pseudonym_key``, else the
    ``MEDSTACK_PSEUDONYM_KEY`` environment variable, else the archive's secret ``<out_root>/.medstack_secret``
    (random, created with mode 0600 when missing; never printed). With ``create=False`` (dry run) a missing
    secret gives a throw-away key."""
    given = options.pseudonym_key if options.pseudonym_key is not None else os.environ.get(KEY_ENV)
    if given is not None:
        if len(given) < 8:
            raise OptionError("--pseudonym-key / MEDSTACK_PSEUDONYM_KEY must be at least 8 characters")
        return given.encode("utf-8", "surrogateescape")
    path = Path(out_root) / SECRET_NAME
    if not path.exists() and not path.is_symlink():
        if not create:
            return secrets.token_bytes(32)
        _create_secret(path)
    if path.is_symlink() or not path.is_file():
        raise ReadError(f"{path}: the pseudonym secret is not a regular file; remove it or pass --pseudonym-key")
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ReadError(f"{path}: cannot read the pseudonym secret: {type(e).__name__}") from None
    if len(text) < 32:
        raise ReadError(f"{path}: the pseudonym secret is too short (corrupt?); remove it or pass --pseudonym-key")
    return text.encode()


def _create_secret(path: Path) -> None:
    """Write a random secret at ``path`` (mode 0600), complete or not at all; a concurrent creator's wins."""
    tmp = path.with_name(f"{SECRET_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if it exists: never replaces a secret
        except FileExistsError:
            pass
    except OSError as e:
        raise ReadError(f"{path}: cannot create the pseudonym secret: {e.strerror or e}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


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
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ReadError(f"{p}: cannot read the list of inputs ({type(e).__name__}: {e})") from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    if "\0" in line:
                        raise ReadError(f"{p}: listed path {line!r} contains a NUL character")
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    if not q.exists():
                        raise medstack.ReadError(f"{p}: listed path {line!r} does not exist")
                    out.append(q)
        else:
            out.append(p)
    return out


def _needs_key(template: str | None, keep_phi: bool) -> bool:
    if keep_phi or template is None:
        return False
    return any(field in ("patient", "study_date") for _, field, _ in check_template(template))


def _count_files(paths, limit: int = 100_000) -> int:
    n = 0
    for p in paths:
        if p.is_file():
            n += 1
            continue
        for _root, _dirs, files in os.walk(p):
            n += len(files)
            if n >= limit:
                return n
    return n


def plan(inputs: Sequence, output, options: ConvertOptions, *, workers: int | None = None,
         dry_run: bool = False) -> tuple[list[Task], list[Result]]:  # fmt: skip
    """Turn inputs into tasks (one per series / file) with their output paths; name collisions fail.

    Inputs that hold no image series / volume file at all are an error (never an empty, successful batch).
    """
    from medstack.io import dicom

    output = Path(output)
    known = output.name.lower().endswith(tuple(FORMATS.values()))
    if not known and output.suffix.lower() in FOREIGN_SUFFIXES and not output.is_dir():
        raise UnknownFormatError(f"{output}: medstack convert does not write {output.suffix} files; use a folder or "
                                 f"one of {', '.join('.' + f for f in FORMATS)}")  # fmt: skip
    if output.exists() and not output.is_dir() and not known:
        raise OutputExistsError(f"{output}: exists and is not a folder")
    if known and output.is_dir():
        raise OutputExistsError(f"{output}: is a folder; give a file name without a volume extension for a folder")
    ext = FORMATS[options.format]
    if known and not output.name.lower().endswith(ext):
        raise OptionError(f"{output}: the file name does not end in {ext}, the extension of --format "
                          f"{options.format}; make them agree")  # fmt: skip
    sources = _expand_inputs(inputs)
    out_root = output.parent if known else output
    key = None
    if _needs_key(options.template, options.keep_phi):
        key = pseudonym_key(out_root, options, create=not dry_run)
    tasks: list[Task] = []
    index = 0
    n_series = 0
    for src in sources:
        if src.is_dir() or (src.is_file() and not src.name.lower().endswith(VOLUME_SUFFIXES)):
            found = dicom.scan(src, workers=workers, on_gap=options.on_gap)
            n_series += len(found)
            if options.series:
                found = [s for s in found if _matches(s, options.series)]
            for info in found:
                index += 1
                fields = _dicom_fields(info, index, options.keep_phi, key)
                name = _render(options.template or DEFAULT_DICOM_TEMPLATE, fields)
                label = f"#{info.series_number} {info.description}".strip()
                task = Task(info.uid, "dicom", Path(name + ext), info, label, str(src))
                if not options.keep_phi:
                    task.label = _scrub(label, task, _phi_values(task))
                tasks.append(task)
        else:
            index += 1
            n_series += 1
            name = _render(options.template or DEFAULT_FILE_TEMPLATE, _file_fields(src, index))
            tasks.append(Task(str(src.resolve()), "file", Path(name + ext), str(src), src.name, str(src.parent)))
    if not tasks:
        where = ", ".join(str(s) for s in sources) or "(no input)"
        if n_series:
            raise DicomError(f"{where}: --series {','.join(options.series)} matched none of the {n_series} series "
                             "found (see: medstack info FOLDER)")  # fmt: skip
        raise DicomError(f"{where}: no readable DICOM image series or volume file found "
                         f"({_count_files(sources)} file(s) looked at); nothing to convert")  # fmt: skip
    if options.spacing:
        _check_resample_size(tasks, options.spacing)
    if known:
        if len(tasks) != 1:
            raise UnknownFormatError(f"{output}: is a file name but the input holds {len(tasks)} series/files; "
                                     "give an output folder")  # fmt: skip
        tasks[0].output = output
    else:
        for t in tasks:
            t.output = output / t.output
    failures = []
    by_out: dict[Path, list[Task]] = {}
    for t in tasks:
        by_out.setdefault(t.output, []).append(t)
    inputs_seen = _input_files(tasks)
    keep = []
    for out, group in by_out.items():
        if len(group) > 1:
            for t in group:
                failures.append(Result(t, "failed", f"output name collision: {len(group)} series map to {out}; use a "
                                       "name template with {uid8} or {series_uid}"))  # fmt: skip
            continue
        t = group[0]
        clash = [p for p in (t.output, sidecar_path(t.output)) if _real(p) in inputs_seen]
        if clash:
            failures.append(Result(t, "failed", f"{clash[0]}: is an input file; refusing to overwrite an input "
                                   "(choose another output folder or --name)"))  # fmt: skip
            continue
        keep.append(t)
    return keep, failures


def _check_resample_size(tasks: list[Task], spacing) -> None:
    """Refuse a --spacing whose resampled DICOM series would exceed the voxel limit, before loading anything."""
    limit = _max_voxels()
    for t in tasks:
        if t.kind != "dicom":
            continue  # files are checked after loading their header, still before resampling
        try:
            c = int(t.payload.shape[0])
            old = np.asarray(t.payload.shape[1:], dtype=np.float64) * np.asarray(t.payload.spacing, dtype=np.float64)
        except (TypeError, ValueError, IndexError):
            continue
        if old.shape != (3,) or not np.all(np.isfinite(old)) or np.any(old <= 0):
            continue
        shape = np.maximum(1, np.round(old / np.asarray(spacing, dtype=np.float64)))
        n = c * int(np.prod([int(s) for s in shape], dtype=object))
        if n > limit:
            raise OptionError(f"--spacing {','.join(f'{v:g}' for v in spacing)}: series {t.label} would become "
                              f"{n:,} voxels {tuple(int(s) for s in shape)}, more than the limit {limit:,} "
                              "(MEDSTACK_MAX_VOXELS raises it); use a coarser spacing")  # fmt: skip


def _real(p) -> str:
    try:
        return os.path.realpath(p)
    except (OSError, ValueError):
        return str(p)


def _input_files(tasks: list[Task]) -> set[str]:
    seen = set()
    for t in tasks:
        files = t.payload.files if t.kind == "dicom" else [t.payload]
        seen.update(_real(f) for f in files)
    return seen


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
    """The sidecar at ``path`` if medstack wrote it (a JSON object with medstack_version and fingerprint)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            raw = f.read(16 * 2**20 + 1)
        side = json.loads(raw) if len(raw) <= 16 * 2**20 else None
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(side, dict) and isinstance(side.get("medstack_version"), str) and "fingerprint" in side:
        return side
    return None


def _foreign_sidecar(path: Path) -> bool:
    """Something is at the sidecar path and it is not medstack's sidecar: never replace it."""
    return (path.exists() or path.is_symlink()) and _read_sidecar(path) is None


def status(task: Task, options: ConvertOptions) -> str:
    """``"new"``, ``"complete"`` (skip), ``"incomplete"`` (ours, redo), ``"exists"`` (foreign or different
    output) or ``"foreign"`` (a file medstack did not write sits at the sidecar path: never replaced)."""
    path = sidecar_path(task.output)
    if _foreign_sidecar(path):
        return "foreign"
    side = _read_sidecar(path)
    fp = task.fingerprint(options)
    if side is not None and side.get("fingerprint") == fp:
        return "complete" if side.get("complete") and task.output.is_file() else "incomplete"
    if task.output.exists() or task.output.is_symlink() or side is not None:
        return "exists"
    return "new"


def _write_json(path: Path, payload: dict, *, overwrite: bool = True) -> None:
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


#: metadata keys that identify a patient (dropped from every output without keep_phi), plus any key that
#: names a patient, a date/time, an institution or a person (see :func:`_is_phi_key`)
PHI_KEYS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "patient_age", "patient_weight",
            "patient_size", "study_date", "study_time", "series_date", "series_time", "acquisition_date",
            "acquisition_time", "acquisition_datetime", "content_date", "content_time", "accession_number",
            "study_id", "institution_name", "institution_address", "station_name", "device_serial_number",
            "referring_physician_name", "performing_physician_name", "operators_name", "other_patient_ids",
            "files", "source")  # fmt: skip
_PHI_KEY = re.compile(r"patient|birth|physician|operator|institution|accession|(^|_)(date|time|datetime)s?$|"
                      r"^(source|files|path|paths|filename|file_names?)$", re.I)  # fmt: skip
_KEEP_KEYS = {"echo_time_ms", "echo_times_ms", "repetition_time_ms", "inversion_time_ms"}


def _is_phi_key(key) -> bool:
    k = str(key)
    return k not in _KEEP_KEYS and not k.endswith("_ms") and (k in PHI_KEYS or bool(_PHI_KEY.search(k)))


def _phi_values(task: Task) -> list[str]:
    """Identifying strings of a DICOM task (patient id, study date) and the absolute input root, to redact."""
    values = []
    if task.kind == "dicom":
        for h in list(task.payload.headers.values())[:1]:
            for v in (getattr(h, "patient_id", ""), getattr(h, "study_date", ""), getattr(h, "patient_name", "")):
                v = str(v or "").strip()
                if len(v) >= 4:
                    values += [v, _safe(v)]
    return sorted({v for v in values if v}, key=len, reverse=True)


def _scrub(obj, task: Task, values: list[str], key=None):
    """``obj`` without PHI keys; strings with the input root made relative and identifying values redacted."""
    if isinstance(obj, dict):
        return {k: _scrub(v, task, values, k) for k, v in obj.items() if not _is_phi_key(k)}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, task, values) for v in obj]
    if isinstance(obj, str):
        if key is not None and str(key).lower().endswith("uid"):
            return obj
        roots = {os.path.abspath(task.input_root), _real(task.input_root)}
        for root in sorted(roots, key=len, reverse=True):
            if len(root) > 1 and root != os.sep:
                obj = obj.replace(root.rstrip(os.sep) + os.sep, "").replace(root, ".")
        for v in values:
            obj = obj.replace(v, "[redacted]")
        return obj
    return obj


def output_metadata(vol, task: Task, options: ConvertOptions) -> dict:
    """The metadata written into an output file: without keep_phi, no patient keys, dates or file paths."""
    meta = dict(vol.metadata)
    if options.keep_phi:
        return meta
    return _scrub(meta, task, _phi_values(task))


def _sidecar(task: Task, options: ConvertOptions, vol, fingerprint: str, complete: bool) -> dict:
    meta = dict(vol.metadata) if vol is not None else {}
    phi_free = not options.keep_phi
    source = {"kind": task.kind}
    if not phi_free:
        source["input"] = task.input_root
    if task.kind == "dicom":
        info = task.payload
        files = meta.get("files", info.files)
        source.update(series_uid=info.series_uid, study_uid=info.study_uid, unit_uid=info.uid,
                      series_number=info.series_number, description=info.description, modality=info.modality,
                      manufacturer=info.manufacturer, n_files=len(files))  # fmt: skip
        if not phi_free:
            source["files"] = [os.path.relpath(f, task.input_root) for f in files]
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
    if phi_free:
        values = _phi_values(task)
        payload = {k: (v if k in ("options", "fingerprint") else _scrub(v, task, values, k))
                   for k, v in payload.items()}  # fmt: skip
    else:
        payload["phi"] = {k: meta.get(k) for k in PHI_KEYS if k in meta and k not in ("files", "source")}
    return payload


def _warning_findings(vol, caught) -> tuple[tuple[str, str], ...]:
    """(kind, message) of the warning-severity findings of ``vol`` and of the warnings caught while loading."""
    out = []
    for f in (vol.metadata.get("findings") or []) if vol is not None else []:
        if isinstance(f, dict) and f.get("severity") == "warning":
            out.append((str(f.get("kind", "warning")), str(f.get("message", ""))))
    messages = {m for _, m in out}
    for w in caught:
        text = str(w.message)
        if text not in messages:
            messages.add(text)
            out.append((getattr(w.category, "__name__", "warning"), text))
    return tuple(out)


def run_task(task: Task, options: ConvertOptions) -> Result:
    """Convert one series / file. Never raises for data problems: failures come back as a Result."""
    t0 = time.perf_counter()
    try:
        state = status(task, options)
        side = sidecar_path(task.output)
        if state == "foreign":
            raise OutputExistsError(f"{side}: exists and is not a medstack sidecar; refusing to replace it (even "
                                    "with --overwrite): move it away or choose another --name")  # fmt: skip
        if state == "complete" and not options.overwrite:
            return Result(task, "skipped", "already converted")
        if state == "exists" and not options.overwrite:
            raise OutputExistsError(f"{task.output}: exists (not from this conversion); pass --overwrite to replace it")
        if task.output.is_dir():
            raise OutputExistsError(f"{task.output}: is a folder; refusing to replace it")
        fp = task.fingerprint(options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vol = _load(task, options)
            vol = _transform(vol, options)
            if _foreign_sidecar(side):  # appeared meanwhile
                raise OutputExistsError(f"{side}: exists and is not a medstack sidecar; refusing to replace it")
            _write_json(side, _sidecar(task, options, None, fp, complete=False), overwrite=side.exists())
            # replacing is allowed only for our own interrupted output or when asked
            out_vol = vol.replace(metadata=output_metadata(vol, task, options))
            try:
                medstack.save(out_vol, task.output, overwrite=options.overwrite or state == "incomplete")
            except OutputExistsError:
                # someone else's file appeared meanwhile: drop our 'incomplete' claim, or a re-run would replace it
                if state == "new":
                    side.unlink(missing_ok=True)
                raise
            _write_json(side, _sidecar(task, options, vol, fp, complete=True))
        found = _warning_findings(vol, caught)
        if not options.keep_phi:  # messages are printed: paths relative to the input, no patient values
            values = _phi_values(task)
            found = tuple((k, _scrub(m, task, values)) for k, m in found)
        notes = tuple(m for _, m in found)
        return Result(task, "converted", "", time.perf_counter() - t0, vol.nbytes, notes, found)
    except KeyboardInterrupt:
        raise
    except MemoryError:
        return Result(task, "failed", "MemoryError: out of memory (try fewer --workers or a coarser --spacing)",
                      time.perf_counter() - t0)  # fmt: skip
    except Exception as e:  # any data problem, expected or not, fails this task only
        message = _one_line(e)
        if not options.keep_phi:
            try:
                message = _scrub(message, task, _phi_values(task))
            except Exception:  # never lose the failure over its message
                pass
        return Result(task, "failed", message, time.perf_counter() - t0)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else repr(e)}"


def _load(task: Task, options: ConvertOptions):
    from medstack.io import dicom

    if task.kind == "dicom":
        return dicom.load_series(task.payload, on_gap=options.on_gap, tilt=options.tilt,
                                 on_unreadable=options.on_unreadable)
    return medstack.load(task.payload)


def _max_voxels() -> int:
    try:
        return max(1, int(os.environ.get("MEDSTACK_MAX_VOXELS", MAX_VOXELS)))
    except ValueError:
        return MAX_VOXELS


def _transform(vol, options: ConvertOptions):
    if options.orient:
        vol = vol.reoriented(options.orient)
    if options.spacing:
        from medstack.resample import resample, target_grid

        _, shape = target_grid(vol, spacing=options.spacing)  # no allocation: check the size first
        n = int(np.prod([int(s) for s in shape], dtype=object)) * int(vol.shape[0])
        if n > _max_voxels():
            raise OptionError(f"--spacing {','.join(f'{v:g}' for v in options.spacing)}: the resampled volume would "
                              f"have {n:,} voxels {tuple(shape)} (more than the limit {_max_voxels():,}; "
                              "MEDSTACK_MAX_VOXELS raises it); use a coarser spacing")  # fmt: skip
        vol = resample(vol, spacing=options.spacing, mode="nearest" if options.interp == "nearest" else "linear")
    if options.dtype:
        vol = vol.replace(data=_cast(vol.to_numpy(), check_dtype(options.dtype)))
    return vol


def _cast(data: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``data`` as ``dt``; refuses values the dtype cannot hold (NaN / out of range) instead of wrapping."""
    if data.dtype == dt:
        return data
    if dt.kind in "iu" and data.size:
        info = np.iinfo(dt)
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)):
                raise OptionError(f"--dtype {dt.name}: the volume has NaN/inf values an integer dtype cannot hold")
            data = np.rint(data)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise OptionError(f"--dtype {dt.name}: values [{lo:.6g}, {hi:.6g}] do not fit {dt.name} "
                             f"[{info.min}, {info.max}]; use a wider dtype")  # fmt: skip
    elif dt.kind == "f" and data.size and np.finfo(dt).max < np.abs(data).max():
        raise OptionError(f"--dtype {dt.name}: values overflow {dt.name}; use float64")
    return data.astype(dt)


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
    tasks, results = plan(inputs, output, options, workers=workers, dry_run=dry_run)
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
    from concurrent.futures import as_completed

    from medstack.parallel import process_pool

    done = []
    pool = process_pool(n_workers)  # forkserver: safe from a notebook or any process with threads
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
        raise ReadError("--dask needs the optional dependency: pip install 'medstack[distributed]'") from e
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
