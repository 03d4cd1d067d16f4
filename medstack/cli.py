"""The ``medstack`` command line.

Every error prints one ``medstack: error: ...`` line (followed by the message's indented lines where it has
them, e.g. the list of candidate series) and no traceback unless ``--debug``. Messages name CLI options
(``--series``, ``--on-gap``) where the library's say ``series=``, ``on_gap=``. Exit status:
0 success, 1 a data / file error (bad input, a failed series, nothing to convert, an unexpected error),
2 a usage error (bad option or option value), 130 interrupted. Text that comes from files (descriptions,
paths, messages) has its control characters escaped before printing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings

import numpy as np

import medstack
from medstack.errors import ArgumentError, FormatError, MedstackError, UnknownFormatError

EXIT_ERROR = 1  # data / file errors
EXIT_USAGE = 2  # bad options (as argparse)
EXIT_INTERRUPTED = 130


class UsageError(ArgumentError):
    """A bad command-line option value (exit status 2)."""


def clean(text) -> str:
    """``text`` with control / non-printable characters escaped (``\\x1b``, ``\\n``, ``\\u202e``), so text
    read from files cannot drive the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


# library keyword -> CLI option, for messages the CLI shows (the library's own messages stay as they are)
_CLI_OPTION = {"series": "--series", "on_gap": "--on-gap", "on_unreadable": "--on-unreadable", "tilt": "--tilt"}
_KEYWORD = re.compile(
    r"(?<![\w/.\-])(series|on_gap|on_unreadable|tilt)=((?:'[^']*'(?:(?:, | or )'[^']*')*)|[^\s;,)]+)?"
)


def cli_words(text) -> str:
    """``text`` with the API's keyword arguments named as CLI options: ``series=2`` -> ``--series 2``,
    ``pass on_gap='resample', 'warn' or 'split'`` -> ``pass --on-gap resample, warn or split``; ``echo=`` /
    ``image_type=`` (no CLI option) are pointed at the Python API."""
    text = str(text)
    text = text.replace("scan(..., on_gap='split') lists the uniform parts as series",
                        "--on-gap split converts the uniform parts as separate series")  # fmt: skip
    text = text.replace("(select with echo= / image_type=)",
                        "(select in Python: medstack.load(..., echo= / image_type=))")  # fmt: skip

    def option(m):
        value = m.group(2)
        if value is None:
            return _CLI_OPTION[m.group(1)]
        return _CLI_OPTION[m.group(1)] + " " + re.sub(r"'([^'\s]*)'", r"\1", value)

    text = _KEYWORD.sub(option, text)
    if re.search(r"(?<![\w.])(echo|image_type)=\S", text) and "medstack.load(" not in text:
        text += " (echo= / image_type= are Python options: medstack.load(..., echo=))"
    return text


def _say(*lines, err: bool = False) -> None:
    for line in lines:
        print(clean(line), file=sys.stderr if err else sys.stdout)


_WARNED: set[str] = set()  # messages already printed (a finding and its DicomWarning print once)


def _warn(text, message=None) -> None:
    _WARNED.add(str(message if message is not None else text))
    print("medstack: warning: " + clean(cli_words(" ".join(str(text).split("\n")))), file=sys.stderr)


def _value_range(vol) -> tuple[float, float]:
    data = vol.to_numpy()
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        return (float(finite.min()), float(finite.max())) if finite.size else (float("nan"), float("nan"))
    return float(data.min()), float(data.max())


def volume_info(vol) -> dict:
    """A JSON-ready summary of a Volume's geometry and values."""
    lo, hi = _value_range(vol)
    return {
        "shape": list(vol.shape),
        "spacing_dhw_mm": [round(s, 6) for s in vol.spacing],
        "orientation": vol.orientation,
        "origin_ras_mm": [round(v, 4) for v in vol.origin],
        "dtype": str(vol.dtype),
        "value_range": [lo, hi],
        "affine": np.round(np.asarray(vol.affine), 6).tolist(),
        "source": vol.metadata.get("source"),
    }


def _print_info(info: dict) -> None:
    print(f"source       {clean(info['source'])}")
    print(f"shape        {tuple(info['shape'])}  (C, D, H, W)")
    print(f"spacing      {tuple(info['spacing_dhw_mm'])} mm  (D, H, W)")
    print(f"orientation  {info['orientation']}  (voxel axes i, j, k = w, h, d)")
    print(f"origin       {tuple(info['origin_ras_mm'])} mm RAS")
    print(f"dtype        {info['dtype']}")
    print(f"range        [{info['value_range'][0]:.6g}, {info['value_range'][1]:.6g}]")
    print("affine       (voxel (i, j, k) -> RAS mm)")
    for row in info["affine"]:
        print("  " + " ".join(f"{v:12.5f}" for v in row))


def cmd_info(args) -> int:
    from pathlib import Path

    is_dir = Path(args.path).is_dir()
    if args.series and not is_dir:
        raise UsageError(f"--series selects a series of a DICOM folder; {args.path} is not a folder")
    if is_dir and not args.series:
        return _info_folder(args)
    if not is_dir and _is_hdf5(args.path):
        from medstack.io.store import list_h5

        try:
            names = list_h5(args.path)
        except FormatError as e:
            raise FormatError(str(e) + _h5_datasets(args.path)) from None
        if len(names) != 1:
            return _info_store(args, names)
    vol = medstack.load(args.path, **({"series": _series_arg(args.series)} if args.series else {}))
    if vol.dtype.kind not in "biuf":
        raise FormatError(f"{args.path}: voxel type {vol.dtype} (e.g. RGB) is not a scalar image; medstack "
                          "handles numeric voxels only")  # fmt: skip
    info = volume_info(vol)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    for f in vol.metadata.get("findings") or []:
        if isinstance(f, dict) and f.get("severity") in ("warning", "error"):
            _warn(f"{f.get('kind', 'finding')}: {f.get('message', '')}", f.get("message", ""))
    return 0


def _is_hdf5(path) -> bool:
    from medstack.io.store import is_hdf5

    try:
        with open(path, "rb") as f:
            return is_hdf5(f.read(8))
    except OSError:
        return False


def _h5_datasets(path, limit: int = 30) -> str:
    """For an HDF5 file medstack did not write: its datasets (name, shape, dtype) as indented lines, or ''."""
    try:
        import h5py

        found = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.append((name, obj.shape, obj.dtype))
                         if isinstance(obj, h5py.Dataset) else None)  # fmt: skip
    except Exception:  # the listing is a courtesy
        return ""
    if not found:
        return ""
    lines = [f"  /{name}  shape={tuple(shape)}  dtype={dtype}" for name, shape, dtype in found[:limit]]
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more dataset(s)")
    return "; its datasets:\n" + "\n".join(lines)


def _info_store(args, names) -> int:
    """A medstack HDF5 file holding several volumes (a cohort): one row per volume, read lazily (headers only)."""
    rows = []
    for name in names:
        vol = medstack.load(args.path, name=name, lazy=True)
        try:
            rows.append({"name": name, "shape": list(vol.shape), "dtype": str(vol.dtype),
                         "spacing_dhw_mm": [round(v, 6) for v in vol.spacing], "orientation": vol.orientation,
                         "origin_ras_mm": [round(v, 4) for v in vol.origin]})  # fmt: skip
        finally:
            close = getattr(vol.data, "close", None)
            if close is not None:
                close()
    if args.json:
        print(json.dumps({"source": str(args.path), "format": "medstack-hdf5", "volumes": rows}, indent=2))
        return 0
    _say(f"{args.path}: medstack HDF5 file, {len(rows)} volumes")
    if not rows:
        return 0
    width = max(12, *(len(clean(r["name"])) for r in rows))
    print(f"{'name':{width}}  {'shape (C, D, H, W)':22}  {'dtype':8}  {'spacing (D, H, W) mm':24}  orient")
    for r in rows:
        sp = "(" + ", ".join(f"{v:.4g}" for v in r["spacing_dhw_mm"]) + ")"
        _say(f"{clean(r['name']):{width}}  {tuple(r['shape'])!s:22}  {r['dtype']:8}  {sp:24}  {r['orientation']}")
    _say("one volume: medstack.load(PATH, name=NAME) in Python")
    return 0


def _info_folder(args) -> int:
    from medstack.io import dicom

    series = dicom.scan(args.path)
    if args.json:
        print(json.dumps([s.summary() for s in series], indent=2))
    if not series:
        volumes = dicom.volume_files(args.path)
        hint = f"; the folder holds {len(volumes)} volume file(s), e.g. {volumes[0]}: pass a file" if volumes else ""
        reasons = "".join(f"; {f.message}" for f in series.findings if f.severity != "info")[:500]
        raise medstack.DicomError(f"{args.path}: no DICOM image series found{hint}{reasons}")
    if args.json:
        return 0
    _say(f"{args.path}: {len(series)} series")
    print(f"{'#':>5}  {'description':28.28}  {'mod':4}  {'files':>5}  {'shape (C, D, H, W)':22}  "
          f"{'spacing (D, H, W) mm':22}  {'orient':6}  findings")  # fmt: skip
    for s in series:
        sp = "(" + ", ".join(f"{v:.3g}" for v in s.spacing) + ")"
        kinds = ", ".join(sorted({f.kind for f in s.findings})) or "-"
        num = "-" if s.series_number is None else str(s.series_number)
        _say(f"{num:>5}  {clean(s.description):28.28}  {clean(s.modality):4}  {s.n_files:>5}  {s.shape!s:22}  "
             f"{sp:22}  {s.orientation:6}  {kinds}")  # fmt: skip
        if any(f.kind == "named_channels" for f in s.findings):
            _say(f"{'':7}channels: {', '.join(s.channel_names)} (select in Python: medstack.load(..., echo= / "
                 "image_type=))")  # fmt: skip
        for a in s.annotations:
            _say(f"{'':7}annotation: {a.kind} {', '.join(a.names) or ''} ({a.path})")
        for f in s.findings:
            if f.severity in ("warning", "error"):
                _say(f"{'':7}{'!' if f.severity == 'warning' else 'x'} {f.message}")
    _say("uids:" if series else "")
    for s in series:
        _say(f"  #{s.series_number}: {s.uid}")
    return 0


def _triple(text: str, name: str) -> tuple[float, float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{name} must be numbers separated by commas, got {text!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise UsageError(f"{name} needs 1 or 3 values, got {text!r}")
    if not all(np.isfinite(v) for v in vals):
        raise UsageError(f"{name} values must be finite numbers, got {text!r}")
    return tuple(vals)


SPACING_HELP = ("in mm, in (D, H, W) order = slice step, row, column (the REVERSE of MONAI's pixdim / TorchIO's "
                "x,y,z): 'd,h,w', one value, or named: 'd=2,h=0.7,w=0.7' or 'x=0.7,y=0.7,z=2'")


def _spacing(text: str) -> tuple[float, float, float]:
    """``--spacing``: 'd,h,w', one value, or named 'd=..,h=..,w=..' / 'x=..,y=..,z=..' (any order of the names)."""
    from medstack.convert import check_spacing
    from medstack.geometry import as_dhw

    parts = [p.strip() for p in text.split(",")]
    try:
        if any("=" in p for p in parts):
            named = dict(p.split("=", 1) for p in parts)
            value = as_dhw({k.strip(): float(v) for k, v in named.items()}, name="--spacing")
        else:
            value = _triple(text, "--spacing")
            if len(set(parts)) > 1:
                _note_axis_order(value)
        return check_spacing(value)
    except ValueError as e:  # MedstackError children here are ValueErrors; float('a') too
        raise UsageError(f"--spacing {text!r}: {e}; {SPACING_HELP}") from None


def _note_axis_order(value) -> None:
    """A plain --spacing shaped like a MONAI pixdim (in-plane pair, then a coarser step): say how it is read."""
    d, h, w = value
    if abs(d - h) <= 0.1 * max(d, h) and w > 1.2 * max(d, h):
        _say(f"medstack: note: --spacing {d:g},{h:g},{w:g} is (D, H, W): slices of {d:g} mm, columns of {w:g} mm. "
             f"For MONAI / TorchIO (x, y, z) order write --spacing x={d:g},y={h:g},z={w:g}; write "
             f"d={d:g},h={h:g},w={w:g} to keep this reading without this note.", err=True)


def cmd_convert(args) -> int:
    from pathlib import Path

    from medstack.convert import FORMATS, ConvertOptions, OptionError, convert

    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise UsageError(f"--workers must be between 1 and 1024, got {args.workers}")

    fmt = args.format
    if fmt is None:
        out_name = Path(args.output).name.lower()
        fmt = next((f for f, ext in sorted(FORMATS.items(), key=lambda kv: -len(kv[1])) if out_name.endswith(ext)),
                   "nii.gz")  # fmt: skip
    if args.orient is not None:
        code = args.orient.upper()
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in code]
        if len(code) != 3 or None in axes or len(set(axes)) != 3:
            raise UsageError(f"--orient must be 3 letters, one of L/R, P/A, I/S each (e.g. RAS), got {args.orient!r}")
    try:
        options = ConvertOptions(
            format=fmt,
            template=args.name,
            series=tuple(s for s in (args.series or "").split(",") if s and s != "all"),
            orient=args.orient.upper() if args.orient else None,
            spacing=_spacing(args.spacing) if args.spacing else None,
            interp=args.interp,
            dtype=args.dtype,
            on_gap=args.on_gap,
            on_unreadable=args.on_unreadable,
            tilt=args.tilt,
            keep_phi=args.keep_phi,
            overwrite=args.overwrite,
            pseudonym_key=args.pseudonym_key,
        )
    except OptionError as e:
        raise UsageError(str(e)) from None
    progress = _Progress(dry_run=args.dry_run, overwrite=args.overwrite)
    try:
        summary = convert(args.input, args.output, options, workers=args.workers, dry_run=args.dry_run,
                          dask_address=args.dask, on_result=progress.update, on_plan=progress.start)  # fmt: skip
    except UnknownFormatError as e:
        if "is a file name but the input holds" not in str(e):
            raise
        raise UnknownFormatError(_one_output_hint(str(e), args, options)) from None
    finally:
        progress.close()
    return progress.report(summary)


def _one_output_hint(message: str, args, options, limit: int = 12) -> str:
    """The 'file name but several series' error on one line, naming the candidates (labels as convert prints
    them: identifying values redacted unless --keep-phi) and the --series option that picks one."""
    from pathlib import Path

    from medstack.convert import plan

    try:
        tasks, _ = plan(args.input, Path(args.output).parent, options, workers=args.workers, dry_run=True)
    except Exception:  # the listing is a courtesy: the original message stands without it
        return message
    labels = [clean(t.label) for t in tasks]
    if not labels:
        return message
    shown = ", ".join(labels[:limit]) + (f", ... ({len(labels) - limit} more)" if len(labels) > limit else "")
    head = message.split("; give an output folder")[0]
    return (f"{head}: {shown}; pick one with --series (SeriesNumber, UID or description), or give an output folder "
            "(see: medstack info FOLDER)")  # fmt: skip


class _Progress:
    """tqdm bar over series with throughput; failures printed above the bar; a final summary."""

    def __init__(self, dry_run: bool, overwrite: bool = False):
        self.dry_run = dry_run
        self.overwrite = overwrite
        self.bar = None
        self.nbytes = 0
        self.t0 = None

    def start(self, tasks):
        import time

        from tqdm import tqdm

        self.t0 = time.perf_counter()
        if not self.dry_run:
            tqdm.monitor_interval = 0
            self.bar = tqdm(total=len(tasks), unit="series", desc="convert", file=sys.stderr, dynamic_ncols=True)

    def update(self, r):
        import time

        if r.status == "planned":
            _say(f"{r.message:10}  {clean(r.task.label):30.30}  ->  {r.task.output}")
            return
        if r.status == "failed":  # the library's words here; the summary's "failed:" lines give the CLI's
            self._write(f"FAILED {r.task.label}: {r.message}")
        for kind, messages in _by_kind(r.findings).items():
            more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
            self._write(cli_words(f"warning: {r.task.label}: {kind}: {messages[0]}{more}"))
        if self.bar is not None:
            self.nbytes += r.nbytes
            rate = self.nbytes / max(time.perf_counter() - self.t0, 1e-9) / 2**20
            self.bar.set_postfix_str(f"{rate:.0f} MB/s")
            self.bar.update(1)

    def _write(self, text):
        text = clean(text)
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def report(self, summary) -> int:
        if self.dry_run:
            blocked = ("foreign",) if self.overwrite else ("foreign", "exists")
            problems = summary.failed + [r for r in summary.results if r.status == "planned" and r.message in blocked]
            _say(f"dry run: {summary.count('planned')} output(s) planned, {len(problems)} problem(s)")
            for r in problems:
                why = r.message if r.status == "failed" else f"{r.message}: would not be replaced"
                _say(f"  problem: {r.task.label} -> {r.task.output}: {cli_words(why)}", err=True)
            return EXIT_ERROR if problems or not summary.results else 0
        n_warn = sum(bool(r.findings) for r in summary.results)
        _say(f"converted {summary.count('converted')}, skipped {summary.count('skipped')} (already complete), "
             f"failed {len(summary.failed)}" + (f", {n_warn} with warnings" if n_warn else ""))  # fmt: skip
        for r in summary.failed:
            _say(f"  failed: {r.task.label} -> {r.task.output}: {cli_words(r.message)}", err=True)
        if not summary.results:
            _say("medstack: error: nothing was converted", err=True)
            return EXIT_ERROR
        return EXIT_ERROR if summary.failed else 0


def _by_kind(findings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, message in findings or ():
        out.setdefault(kind, []).append(message)
    return out


def cmd_preview(args) -> int:
    from medstack.viz import save_preview

    vol = medstack.load(args.path, **({"series": _series_arg(args.series)} if args.series else {}))
    label = medstack.load(args.label) if args.label else None
    at = _triple(args.at, "--at") if args.at else None
    out = save_preview(vol, args.output, overwrite=args.overwrite, at=at, label=label, window=args.window)
    _say(out)
    return 0


def cmd_prepare(args) -> int:
    from medstack.data import prepare

    spacing = _spacing(args.spacing) if args.spacing else None
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise UsageError(f"--workers must be between 1 and 1024, got {args.workers}")
    manifest = prepare(args.manifest, args.output, spacing=spacing, workers=args.workers, overwrite=args.overwrite,
                       progress=True, dask=args.dask)  # fmt: skip
    _say(manifest)
    return 0


def _series_arg(text):
    return int(text) if text.isdigit() else text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other medstack error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"medstack: error: {clean(message)} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medstack",
        description="Medical images to training-ready (C, D, H, W) volumes.",
        epilog="exit status: 0 success, 1 data or file error (bad input, failed series, nothing to convert), "
        "2 usage error (bad option value), 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"medstack {medstack.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "info",
        help="geometry, dtype and value range of a volume file, medstack .h5 file or DICOM folder",
        description="Print the geometry, dtype and value range of a volume file (NIfTI, NRRD, MHA/MHD, ...), the "
        "volumes of a medstack .h5 file (one row per volume when it holds several), or the table of series in a "
        "DICOM folder (any depth) with their findings; --series SERIES shows one series of the folder as a volume.",
    )
    p.add_argument("path", help="volume file (NIfTI, NRRD, MHA/MHD, ...), medstack .h5 file or DICOM folder")
    p.add_argument("--series", help="DICOM folder: show this series (UID, SeriesNumber or description)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert DICOM series / volume files (batch, parallel, resumable)")
    p.add_argument("input", nargs="+", help="DICOM folder(s) (any depth), volume file(s) or a .txt list of paths")
    p.add_argument("output", help="output folder, or a file name when the input holds one series")
    p.add_argument("--format", choices=["nii.gz", "nii", "nrrd", "mha", "h5"], help="default: from OUTPUT, else nii.gz")
    p.add_argument("--series", help="'all' (default) or comma-separated UIDs / SeriesNumbers / descriptions")
    p.add_argument("--name", help="output name template, e.g. '{patient}/{study_date}_{series_number}_{description}' "
                   "(fields: patient, study_date, series_number, description, modality, series_uid, study_uid, "
                   "uid8, index, stem)")  # fmt: skip
    p.add_argument("--orient", help="reorient (no interpolation), e.g. RAS or LPS")
    p.add_argument("--spacing", help="resample to this spacing " + SPACING_HELP)
    p.add_argument("--interp", choices=["linear", "nearest"], default="linear", help="interpolation for --spacing")
    p.add_argument("--dtype", help="output dtype, e.g. float32 or int16")
    p.add_argument("--on-gap", choices=["error", "warn", "resample", "split"], default="error")
    p.add_argument("--on-unreadable", choices=["error", "drop"], default="error",
                   help="a file of a series that cannot be read (truncated, other Rows/Columns): fail the series "
                        "(default) or convert without it, recording a finding")  # fmt: skip
    p.add_argument("--tilt", choices=["resample", "shear"], default="resample")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.add_argument("--keep-phi", action="store_true", help="allow patient-identifying values in names/sidecars")
    p.add_argument("--pseudonym-key", metavar="KEY", help="key of the {patient}/{study_date} pseudonyms (default: env "
                   "MEDSTACK_PSEUDONYM_KEY, else a random secret kept in OUTPUT/.medstack_secret)")  # fmt: skip
    p.add_argument("--dask", metavar="ADDRESS", help="run the tasks on an existing Dask cluster (scheduler address)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("prepare", help="cases (CSV/JSON manifest) -> HDF5 patch store + manifest.json")
    p.add_argument("manifest", help="CSV or JSON with columns id, image (';'-separated channels), label; or a "
                   "Decathlon / nnU-Net dataset.json or its folder, or a BIDS folder")  # fmt: skip
    p.add_argument("output", help="output folder")
    p.add_argument("--spacing", help="resample every case to this spacing " + SPACING_HELP)
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo every case (cases whose sources or options "
                   "changed are redone anyway)")  # fmt: skip
    p.add_argument("--dask", metavar="ADDRESS", help="run the cases on an existing Dask cluster (scheduler address)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("preview", help="PNG of three orthogonal slices")
    p.add_argument("path", help="volume file or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--series", help="DICOM series (UID, SeriesNumber or description)")
    p.add_argument("--at", help="world point x,y,z in RAS mm (default: centre)")
    p.add_argument("--label", help="label volume on the same grid, drawn as an overlay")
    p.add_argument("--window", help="CT preset (brain, subdural, lung, mediastinum, bone, liver, soft_tissue) or level,width")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_preview)
    return parser


_MAX_ERROR_LINES = 60


def _error_line(e: BaseException) -> str:
    """The error as the CLI prints it: one ``medstack: error:`` line, then the message's further lines (e.g. the
    candidate series, indented), at most ``_MAX_ERROR_LINES``; control characters escaped, CLI option names."""
    lines = [cli_words(ln.rstrip()) for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else repr(e)
    more = lines[1:] if isinstance(e, MedstackError) else []  # medstack's own messages: whole; others: first line
    if len(more) > _MAX_ERROR_LINES:
        more = more[:_MAX_ERROR_LINES] + [f"  ... and {len(more) - _MAX_ERROR_LINES} more line(s)"]
    if isinstance(e, MemoryError):
        text = "out of memory" + (f" ({text})" if lines else "") + "; try a coarser --spacing or fewer --workers"
    elif isinstance(e, KeyError):
        text = f"missing key {text}"
    if not isinstance(e, MedstackError):
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
            text = f"{e.filename}: {text}"
    first = f"medstack: error: {type(e).__name__}: {clean(text)}"
    return "\n".join([first, *(clean(ln if ln.startswith(" ") else "  " + ln) for ln in more)])


def _exit_code(e: BaseException) -> int:
    from medstack.convert import OptionError

    return EXIT_USAGE if isinstance(e, (UsageError, OptionError)) else EXIT_ERROR


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    if args.debug:
        return int(args.func(args) or 0)
    _WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("medstack: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except RecursionError as e:
            print(f"medstack: error: RecursionError: input nested too deeply ({clean(e)})", file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:  # output piped into e.g. head: stop quietly
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            return EXIT_ERROR
        except Exception as e:  # every error is one line (warnings before it are not printed); --debug: traceback
            print(_error_line(e), file=sys.stderr)
            return _exit_code(e)
        _print_warnings(caught)
    return code


def _print_warnings(caught, limit: int = 20) -> None:
    seen = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ResourceWarning)):
            continue
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen and str(w.message) not in _WARNED:
            seen.append(text)
    for text in seen[:limit]:
        _warn(text)
    if len(seen) > limit:
        _warn(f"... and {len(seen) - limit} more warning(s)")


if __name__ == "__main__":
    sys.exit(main())
