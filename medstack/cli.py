"""The ``medstack`` command line.

Errors on bad input print one line (``medstack: error: ...``) and exit with status 1; no traceback
unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import medstack
from medstack.errors import MedstackError

EXIT_ERROR = 1


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
    print(f"source       {info['source']}")
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

    if Path(args.path).is_dir():
        return _info_folder(args)
    vol = medstack.load(args.path)
    info = volume_info(vol)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _info_folder(args) -> int:
    from medstack.io import dicom

    series = dicom.scan(args.path)
    if args.json:
        print(json.dumps([s.summary() for s in series], indent=2))
        return 0
    if not series:
        raise medstack.DicomError(f"{args.path}: no DICOM image series found")
    print(f"{args.path}: {len(series)} series")
    print(f"{'#':>5}  {'description':28.28}  {'mod':4}  {'files':>5}  {'shape (C, D, H, W)':22}  "
          f"{'spacing (D, H, W) mm':22}  {'orient':6}  findings")  # fmt: skip
    for s in series:
        sp = "(" + ", ".join(f"{v:.3g}" for v in s.spacing) + ")"
        kinds = ", ".join(sorted({f.kind for f in s.findings})) or "-"
        num = "-" if s.series_number is None else str(s.series_number)
        print(f"{num:>5}  {s.description:28.28}  {s.modality:4}  {s.n_files:>5}  {s.shape!s:22}  {sp:22}  "
              f"{s.orientation:6}  {kinds}")  # fmt: skip
        if any(f.kind == "named_channels" for f in s.findings):
            print(f"{'':7}channels: {', '.join(s.channel_names)} (select with echo= / image_type=)")
        for a in s.annotations:
            print(f"{'':7}annotation: {a.kind} {', '.join(a.names) or ''} ({a.path})")
        for f in s.findings:
            if f.severity in ("warning", "error"):
                print(f"{'':7}{'!' if f.severity == 'warning' else 'x'} {f.message}")
    print("uids:" if series else "")
    for s in series:
        print(f"  #{s.series_number}: {s.uid}")
    return 0


def _triple(text: str, name: str) -> tuple[float, float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise medstack.MedstackError(f"{name} must be numbers separated by commas, got {text!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise medstack.MedstackError(f"{name} needs 1 or 3 values, got {text!r}")
    return tuple(vals)


def cmd_convert(args) -> int:
    from pathlib import Path

    from medstack.convert import FORMATS, ConvertOptions, convert

    fmt = args.format
    if fmt is None:
        out_name = Path(args.output).name.lower()
        fmt = next((f for f, ext in sorted(FORMATS.items(), key=lambda kv: -len(kv[1])) if out_name.endswith(ext)),
                   "nii.gz")  # fmt: skip
    options = ConvertOptions(
        format=fmt,
        template=args.name,
        series=tuple(s for s in (args.series or "").split(",") if s and s != "all"),
        orient=args.orient,
        spacing=_triple(args.spacing, "--spacing") if args.spacing else None,
        interp=args.interp,
        dtype=args.dtype,
        on_gap=args.on_gap,
        tilt=args.tilt,
        keep_phi=args.keep_phi,
        overwrite=args.overwrite,
    )
    progress = _Progress(dry_run=args.dry_run)
    summary = convert(args.input, args.output, options, workers=args.workers, dry_run=args.dry_run,
                      dask_address=args.dask, on_result=progress.update, on_plan=progress.start)  # fmt: skip
    progress.close()
    return progress.report(summary)


class _Progress:
    """tqdm bar over series with throughput; failures printed above the bar; a final summary."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
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
            print(f"{r.message:10}  {r.task.label:30.30}  ->  {r.task.output}")
            return
        if r.status == "failed":
            self._write(f"FAILED {r.task.label}: {r.message}")
        if self.bar is not None:
            self.nbytes += r.nbytes
            rate = self.nbytes / max(time.perf_counter() - self.t0, 1e-9) / 2**20
            self.bar.set_postfix_str(f"{rate:.0f} MB/s")
            self.bar.update(1)

    def _write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def report(self, summary) -> int:
        if self.dry_run:
            print(f"dry run: {summary.count('planned')} output(s) planned, {len(summary.failed)} problem(s)")
            return EXIT_ERROR if summary.failed else 0
        print(f"converted {summary.count('converted')}, skipped {summary.count('skipped')} (already complete), "
              f"failed {len(summary.failed)}")  # fmt: skip
        for r in summary.failed:
            print(f"  failed: {r.task.label} -> {r.task.output}: {r.message}", file=sys.stderr)
        return EXIT_ERROR if summary.failed else 0


def cmd_preview(args) -> int:
    from medstack.viz import save_preview

    vol = medstack.load(args.path, **({"series": _series_arg(args.series)} if args.series else {}))
    label = medstack.load(args.label) if args.label else None
    at = _triple(args.at, "--at") if args.at else None
    out = save_preview(vol, args.output, overwrite=args.overwrite, at=at, label=label, window=args.window)
    print(out)
    return 0


def cmd_prepare(args) -> int:
    from medstack.data import prepare

    spacing = _triple(args.spacing, "--spacing") if args.spacing else None
    manifest = prepare(args.manifest, args.output, spacing=spacing, workers=args.workers, overwrite=args.overwrite,
                       progress=True)  # fmt: skip
    print(manifest)
    return 0


def _series_arg(text):
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medstack", description="Medical images to training-ready (C, D, H, W) volumes."
    )
    parser.add_argument("--version", action="version", version=f"medstack {medstack.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print geometry, dtype and value range of a volume file")
    p.add_argument("path", help="NIfTI, NRRD, MHA/MHD or medstack .h5 file")
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
    p.add_argument("--spacing", help="resample to this spacing in mm: 'd,h,w' or one value")
    p.add_argument("--interp", choices=["linear", "nearest"], default="linear", help="interpolation for --spacing")
    p.add_argument("--dtype", help="output dtype, e.g. float32 or int16")
    p.add_argument("--on-gap", choices=["error", "warn", "resample", "split"], default="error")
    p.add_argument("--tilt", choices=["resample", "shear"], default="resample")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.add_argument("--keep-phi", action="store_true", help="allow patient-identifying values in names/sidecars")
    p.add_argument("--dask", metavar="ADDRESS", help="run the tasks on an existing Dask cluster (scheduler address)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("prepare", help="cases (CSV/JSON manifest) -> HDF5 patch store + manifest.json")
    p.add_argument("manifest", help="CSV or JSON with columns id, image (';'-separated channels), label")
    p.add_argument("output", help="output folder")
    p.add_argument("--spacing", help="resample every case to this spacing in mm: 'd,h,w' or one value")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo cases already prepared")
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except MedstackError as e:
        if args.debug:
            raise
        print(f"medstack: error: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("medstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
