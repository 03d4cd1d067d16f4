"""The main job on data_samples/: load every sample, print its geometry, write converted copies.

Run by ``make demo``. Outputs go under ``--out`` (default ``demo_output/``); existing outputs are only
replaced with ``--overwrite`` (``make demo`` passes it: the folder is the demo's own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def describe(name: str, vol) -> None:
    print(f"  {name}")
    print(f"    {vol!r}")
    print(f"    origin (RAS mm) {tuple(round(v, 2) for v in vol.origin)}")


def main(argv=None) -> int:
    import numpy as np

    import medstack

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_output", type=Path)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out: Path = args.out
    t0 = time.perf_counter()

    print(f"medstack {medstack.__version__} demo: samples in {HERE}, outputs in {out.resolve()}")
    print("NIfTI samples -> NRRD and HDF5 (patch-friendly) copies:")
    for path in sorted((HERE / "nifti").glob("*.nii.gz")):
        vol = medstack.load(path)
        describe(path.name, vol)
        stem = path.name.removesuffix(".nii.gz")
        for ext in ("nrrd", "h5"):
            target = medstack.save(vol, out / "nifti" / f"{stem}.{ext}", overwrite=args.overwrite)
            back = medstack.load(target, lazy=(ext == "h5"))
            same = np.allclose(back.affine, vol.affine, atol=1e-6) and np.array_equal(back.to_numpy(), vol.to_numpy())
            print(f"    -> {target}  (reloaded: {'identical' if same else 'DIFFERENT'})")
            if not same:
                print("demo: round trip changed the data", file=sys.stderr)
                return 1
    print("DICOM samples -> NIfTI and HDF5 with JSON sidecars (medstack convert):")
    from medstack.convert import ConvertOptions, convert, sidecar_path

    for fmt in ("nii.gz", "h5"):
        summary = convert([HERE / "dicom"], out / "dicom" / fmt.split(".")[0],
                          ConvertOptions(format=fmt, overwrite=args.overwrite))  # fmt: skip
        for r in summary.results:
            print(f"  {r.status:9} {r.task.label:22} -> {r.task.output}  (+ {sidecar_path(r.task.output).name})")
            if r.status == "failed":
                print(f"demo: {r.message}", file=sys.stderr)
                return 1
    from medstack.viz import save_preview

    ct = medstack.load(HERE / "dicom")  # the one non-localizer series
    png = save_preview(ct, out / "ct_phantom_preview.png", overwrite=args.overwrite, window="soft_tissue")
    print(f"  preview of {ct!r}\n    -> {png}")
    print("3D patch training (examples/train_patches.py, short run):")
    sys.path.insert(0, str(HERE.parent / "examples"))
    import train_patches

    train_patches.main(["--out", str(out / "train"), "--iterations", "6", "--threads", "1"])
    print(f"done in {time.perf_counter() - t0:.1f} s; outputs under {out.resolve()}")
    return 0


if __name__ == "__main__":
    from medstack.errors import MedstackError

    try:
        sys.exit(main())
    except MedstackError as e:
        print(f"demo: {e}", file=sys.stderr)
        sys.exit(1)
