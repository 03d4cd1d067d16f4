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
    vol = medstack.load(args.path)
    info = volume_info(vol)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


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
