"""DICOM series loading speed: medstack vs pydicom, SimpleITK, MONAI, TorchIO, dicom2nifti and dcm2niix.

Generates a CT series (default 300 slices of 512x512 int16, uncompressed Explicit VR Little Endian,
0.7 mm pixels, 1.0 mm slices, RescaleIntercept -1024, file names shuffled so that name order is not
space order) with :func:`medstack.testing.write_dicom_series` into ``benchmarks/_data/dicom/`` (reused
when present), then times every reader side by side, interleaved method by method in each repeat,
and reports the median over ``--repeats`` runs on a warm page cache (the files are read once before
timing; nothing is dropped from the cache). One untimed warm-up call per method excludes imports and
first-call costs.

Goals (from the issue; printed, never asserted):

- medstack faster than dcm2niix's whole process (``dcm2niix -z n``): medstack / dcm2niix <= 1.0;
- i.e. about 2x faster than a plain pydicom loop and SimpleITK, and >= 8x faster than MONAI.

A second benchmark times :func:`medstack.io.dicom.scan` (headers only) on a folder of ``--scan-files``
small files (default 5,000: 50 series x 100 slices of 64x64) with the default workers, ``workers=1``
and ``workers=2``, against a plain ``pydicom.dcmread(f, stop_before_pixels=True)`` loop.

Usage::

    python benchmarks/bench_dicom.py                                                 # full run (minutes)
    python benchmarks/bench_dicom.py --slices 40 --size 128 --repeats 3 --scan-files 500   # quick (seconds)
    python benchmarks/bench_dicom.py --profile          # also print a cProfile of medstack.load

Results are printed as tables and written to ``benchmarks/results/bench_dicom.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

#: Bump when the generated series change, so cached folders are regenerated.
DICOM_GENERATOR_VERSION = 1
PIXEL_MM = 0.7


# ------------------------------------------------------------------------------------------- data
def _manifest_ok(folder: Path, want: dict) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return False
    try:
        have = json.loads(manifest.read_text())
    except ValueError:
        return False
    return {k: have.get(k) for k in want} == want


def ensure_ct(slices: int, size: int, slice_mm: float, *, log=print) -> Path:
    """The CT series folder (generated once, deterministically; reused when the manifest matches).

    The folder holds only the ``.dcm`` files (the manifest lives next to it), so every reader sees
    exactly one series and nothing else.
    """
    from medstack.testing import axis_code_affine, center_affine, phantom, write_dicom_series

    folder = C.DATA / "dicom" / f"ct_{slices}x{size}x{size}_{slice_mm:g}mm"
    meta_dir = folder.with_name(folder.name + ".meta")
    want = {"generator_version": DICOM_GENERATOR_VERSION, "slices": slices, "size": size, "slice_mm": slice_mm,
            "pixel_mm": PIXEL_MM, "rescale_intercept": -1024.0, "shuffle_names": True}  # fmt: skip
    if _manifest_ok(meta_dir, want) and len(list(folder.glob("*.dcm"))) == slices:
        return folder
    t0 = time.perf_counter()
    shape = (slices, size, size)
    affine = center_affine(axis_code_affine("LPS", (PIXEL_MM, PIXEL_MM, slice_mm)), shape)
    vol = phantom(shape, affine, seed=0, kind="ct")
    t1 = time.perf_counter()
    tmp = folder.with_name(".tmp." + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    write_dicom_series(vol, tmp, rescale_intercept=-1024.0, shuffle_names=True, series_description="bench CT")
    del vol
    gc.collect()
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    meta_dir.mkdir(parents=True, exist_ok=True)
    nbytes = sum(p.stat().st_size for p in folder.glob("*.dcm"))
    (meta_dir / "manifest.json").write_text(json.dumps(dict(want, bytes=nbytes), indent=1))
    log(f"  generated {slices} slices of {size}x{size} in {folder.relative_to(C.ROOT)} "
        f"(phantom {t1 - t0:.1f} s, writing {time.perf_counter() - t1:.1f} s)")  # fmt: skip
    return folder


def scan_layout(n_files: int) -> tuple[int, int]:
    """(series, slices per series) for a scan folder of about ``n_files`` files: 100-slice series."""
    per = min(100, n_files)
    return max(1, n_files // per), per


def ensure_scan(n_files: int, *, log=print) -> tuple[Path, int, int]:
    """A flat folder of ``n_series x per`` small files (64x64 slices, one series per name prefix)."""
    from medstack.testing import axis_code_affine, center_affine, phantom, write_dicom_series

    n_series, per = scan_layout(n_files)
    folder = C.DATA / "dicom" / f"scan_{n_series}x{per}"
    meta_dir = folder.with_name(folder.name + ".meta")
    want = {"generator_version": DICOM_GENERATOR_VERSION, "n_series": n_series, "per_series": per, "size": 64}
    if _manifest_ok(meta_dir, want) and sum(1 for _ in os.scandir(folder)) == n_series * per:
        return folder, n_series, per
    t0 = time.perf_counter()
    shape = (per, 64, 64)
    vol = phantom(shape, center_affine(axis_code_affine("LPS", (1.5, 1.5, 1.5)), shape), seed=0, kind="ct")
    tmp = folder.with_name(".tmp." + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    for s in range(n_series):
        write_dicom_series(vol, tmp, series_number=s + 1, series_description=f"scan bench {s + 1}",
                           shuffle_names=True, file_prefix=f"s{s + 1:03d}_")  # fmt: skip
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    meta_dir.mkdir(parents=True, exist_ok=True)
    (meta_dir / "manifest.json").write_text(json.dumps(want, indent=1))
    log(f"  generated {n_series} series x {per} slices of 64x64 in {folder.relative_to(C.ROOT)} "
        f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return folder, n_series, per


def list_files(folder: Path) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def read_all_bytes(files) -> int:
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            total += len(fh.read())
    return total


def quiet() -> None:
    C.quiet()
    for name in ("dicom2nifti", "pydicom", "torchio", "monai", "medstack", "nibabel", "SimpleITK"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------------------- methods
def plain_pydicom_loop(folder) -> np.ndarray:
    """What a user writes: read every file, sort by position along the normal, stack rescaled slices."""
    import pydicom

    files = list_files(folder)
    dss = [pydicom.dcmread(f) for f in files]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    return np.stack([
        (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16) for ds in dss
    ])  # fmt: skip


def plain_positions(folder) -> np.ndarray:
    """Slice positions along the normal, in the plain loop's order (for the correctness check)."""
    import pydicom

    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in list_files(folder)]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return np.sort([float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)) for ds in dss])


def sitk_series(folder):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    return sitk.GetArrayViewFromImage(img), img  # keep the image alive with its view


def dcm2niix_run(exe: str, folder):
    with tempfile.TemporaryDirectory(prefix="bench_dcm2niix_") as out:
        r = subprocess.run([exe, "-z", "n", "-o", out, "-f", "x", str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"dcm2niix exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
        produced = [n for n in os.listdir(out) if n.endswith(".nii")]
        if not produced:
            raise RuntimeError("dcm2niix wrote no .nii")
        return os.path.getsize(os.path.join(out, produced[0]))


def dicom2nifti_run(folder):
    from dicom2nifti import convert_dicom

    with tempfile.TemporaryDirectory(prefix="bench_dicom2nifti_") as out:
        res = convert_dicom.dicom_series_to_nifti(str(folder), os.path.join(out, "x.nii"), reorient_nifti=False)
        return np.asanyarray(res["NII"].dataobj)


def dcm2niix_exe() -> str | None:
    """The native dcm2niix binary (the pip package's, else the one on PATH)."""
    try:
        import dcm2niix

        if Path(dcm2niix.bin).exists():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    return shutil.which("dcm2niix")


def dcm2niix_wrapper() -> str | None:
    """The pip package's console script (a Python wrapper that starts the binary), if there is one."""
    here = Path(sys.executable).parent / "dcm2niix"
    return str(here) if here.exists() and here.read_bytes()[:2] == b"#!" else None


def ct_methods(folder: Path, files: list[str]):
    """(name, kind, fn) rows; kind: 'medstack', 'medstack-part', 'other', 'floor'."""
    import pydicom
    import torchio as tio
    from monai.transforms import LoadImage

    import medstack
    from medstack.io import dicom

    info = dicom.scan(folder)[0]
    rows = [
        ("medstack.load(folder)", "medstack", lambda: medstack.load(folder).data),
        ("  medstack.io.dicom.scan alone", "medstack-part", lambda: dicom.scan(folder)),
        ("  medstack.io.dicom.load_series alone", "medstack-part", lambda: dicom.load_series(info).data),
        ("plain pydicom loop (dcmread, sort, stack)", "other", lambda: plain_pydicom_loop(folder)),
        ("SimpleITK ImageSeriesReader (GDCM names)", "other", lambda: sitk_series(folder)[0]),
        ("MONAI LoadImage(PydicomReader)", "other",
         lambda: LoadImage(reader="PydicomReader", image_only=True)(str(folder))),
        ("TorchIO ScalarImage(folder).data", "other", lambda: tio.ScalarImage(folder).data),
        ("dicom2nifti dicom_series_to_nifti (.nii)", "other", lambda: dicom2nifti_run(folder)),
    ]  # fmt: skip
    exe = dcm2niix_exe()
    if exe:
        rows.append(("dcm2niix -z n (whole process)", "other", lambda: dcm2niix_run(exe, folder)))
    wrapper = dcm2niix_wrapper()
    if wrapper:
        rows.append(("dcm2niix via the pip console script (+ Python start)", "other",
                     lambda: dcm2niix_run(wrapper, folder)))  # fmt: skip
    rows += [
        ("floor: pydicom headers only (stop_before_pixels)", "floor",
         lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files]),
        ("floor: read all file bytes", "floor", lambda: read_all_bytes(files)),
    ]  # fmt: skip
    return rows


def describe(res) -> tuple[str, str]:
    """(dtype, shape) of a benchmark result (array, tensor, or something else)."""
    if isinstance(res, tuple):
        res = res[0]
    shape = getattr(res, "shape", None)
    if shape is None:
        return ("-", "-")
    return C.dtype_of(res), "x".join(str(int(s)) for s in shape)


def run_interleaved(rows, repeats: int, *, log=print) -> dict:
    """Warm up each method once, then time ``repeats`` rounds (method 1, 2, ... per round)."""
    results = {name: {"kind": kind, "times": [], "error": None, "dtype": "-", "shape": "-"} for name, kind, _ in rows}
    for name, _, fn in rows:
        try:
            res = fn()
            results[name]["dtype"], results[name]["shape"] = describe(res)
            del res
        except Exception as e:  # a reader that cannot read this series: report, keep going
            results[name]["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e) else ''}"
            log(f"  {name.strip()}: FAILED ({results[name]['error']})")
        gc.collect()
    for r in range(repeats):
        for name, _, fn in rows:
            if results[name]["error"]:
                continue
            gc.collect()
            dt, res = C.timed(fn)
            del res
            results[name]["times"].append(dt)
        gc.collect()
        log(f"  round {r + 1}/{repeats} done")
    for v in results.values():
        v["median_s"] = C.median(v["times"]) if v["times"] else None
        v["min_s"] = min(v["times"]) if v["times"] else None
    return results


def check_identical(folder: Path) -> dict:
    """medstack's volume vs the plain loop's, both put in ascending slice-position order."""
    import medstack

    vol = medstack.load(folder)
    ms = np.asarray(vol.data)[0]
    ms_pos = np.asarray(vol.metadata["slice_positions_mm"], dtype=np.float64)
    ms = ms[np.argsort(ms_pos, kind="stable")]
    plain = plain_pydicom_loop(folder)  # already sorted by position along the normal
    pos = plain_positions(folder)
    same_positions = bool(np.allclose(np.sort(ms_pos), pos, atol=1e-4))
    same = ms.shape == plain.shape and ms.dtype == plain.dtype and bool(np.array_equal(ms, plain))
    return {"identical": bool(same and same_positions), "medstack_dtype": str(ms.dtype), "plain_dtype": str(plain.dtype),
            "medstack_shape": list(ms.shape), "plain_shape": list(plain.shape), "positions_match": same_positions,
            "affine": np.asarray(vol.affine).round(4).tolist()}  # fmt: skip


def print_ct_table(results: dict, ms: float) -> None:
    table = []
    for name, v in results.items():
        if v["error"]:
            table.append((name, "failed", "-", "-", "-", v["error"][:60]))
            continue
        ratio = v["median_s"] / ms
        table.append((name, C.fmt_s(v["median_s"]), C.fmt_s(v["min_s"]), f"{ratio:.2f}", v["dtype"], v["shape"]))
    print(C.format_table(["method", "median s", "min s", "ratio vs medstack", "dtype", "shape"], table,
                         ["<", ">", ">", ">", "<", "<"]))  # fmt: skip
    print("ratio = method median / medstack.load median (medstack = 1.00; > 1 = slower than medstack)")
    print("(the indented rows are the two halves of medstack.load)")


def goal_lines(results: dict, ms: float) -> dict:
    def med(prefix):
        for name, v in results.items():
            if name.startswith(prefix) and v["median_s"]:
                return v["median_s"]
        return None

    goals = {}
    d = med("dcm2niix -z n")
    if d:
        goals["medstack_over_dcm2niix"] = ms / d
        print(f"medstack / dcm2niix = {ms / d:.2f} (goal <= 1.0)  [{'met' if ms / d <= 1.0 else 'NOT met'}]")
    for key, prefix, goal in (("plain_loop_over_medstack", "plain pydicom", "~2x"),
                              ("simpleitk_over_medstack", "SimpleITK", "~2x"),
                              ("monai_over_medstack", "MONAI", ">= 8x"),
                              ("torchio_over_medstack", "TorchIO", None),
                              ("dicom2nifti_over_medstack", "dicom2nifti", None)):  # fmt: skip
        t = med(prefix)
        if t:
            goals[key] = t / ms
            label = prefix.split()[0] if prefix != "plain pydicom" else "plain loop"
            note = f" (goal {goal})" if goal else ""
            met = ""
            if goal == ">= 8x":
                met = f"  [{'met' if t / ms >= 8 else 'NOT met'}]"
            print(f"medstack vs {label}: {label} / medstack = {t / ms:.2f}x{note}{met}")
    h, b = med("floor: pydicom headers"), med("floor: read all")
    if h and b:
        print(f"floors: headers-only parse {C.fmt_s(h)} s, reading all bytes {C.fmt_s(b)} s "
              f"(sum {C.fmt_s(h + b)} s = {(h + b) / ms:.2f}x medstack's time)")  # fmt: skip
    return goals


# ------------------------------------------------------------------------------------------ scan
def bench_scan(n_files: int, repeats: int, *, log=print) -> dict:
    import pydicom

    from medstack.io import dicom

    folder, n_series, per = ensure_scan(n_files, log=log)
    files = list_files(folder)
    read_all_bytes(files)  # warm the page cache
    rows = [
        ("medstack scan (default workers)", "medstack", lambda: dicom.scan(folder)),
        ("medstack scan workers=1", "other", lambda: dicom.scan(folder, workers=1)),
        ("medstack scan workers=2", "other", lambda: dicom.scan(folder, workers=2)),
        ("plain pydicom loop (stop_before_pixels)", "other",
         lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in list_files(folder)]),
        ("floor: read all file bytes", "floor", lambda: read_all_bytes(list_files(folder))),
    ]  # fmt: skip
    found = dicom.scan(folder)
    ok = (len(found) == n_series and all(s.shape[1] == per for s in found)
          and sum(s.n_files for s in found) == len(files))  # fmt: skip
    results = run_interleaved(rows, repeats, log=log)
    base = results[rows[0][0]]["median_s"]
    table = []
    for name, v in results.items():
        if v["error"]:
            table.append((name, "failed", "-", "-", v["error"][:60]))
            continue
        table.append((name, C.fmt_s(v["median_s"]), f"{v['median_s'] / len(files) * 1e3:.3f}",
                      f"{v['median_s'] / base:.2f}"))  # fmt: skip
    print()
    print(f"scan: {len(files)} files ({n_series} series x {per} slices of 64x64), warm page cache, "
          f"median of {repeats}; {os.cpu_count()} CPUs")  # fmt: skip
    print(C.format_table(["method", "median s", "ms/file", "ratio vs default scan"], table))
    print(f"scan found {len(found)} series, slices per series {sorted({s.shape[1] for s in found})}, "
          f"{sum(s.n_files for s in found)} files: {'correct' if ok else 'WRONG'} "
          f"(expected {n_series} x {per})")  # fmt: skip
    return {"folder": str(folder), "n_files": len(files), "n_series": n_series, "per_series": per,
            "found_series": len(found), "correct": ok,
            "methods": {k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}}  # fmt: skip


# ------------------------------------------------------------------------------------------- main
def profile_load(folder: Path, top: int = 25) -> str:
    import cProfile
    import io
    import pstats

    import medstack

    medstack.load(folder)  # warm
    pr = cProfile.Profile()
    pr.enable()
    medstack.load(folder)
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slices", type=int, default=300, help="slices in the CT series (default 300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns per slice (default 512)")
    ap.add_argument("--slice-mm", type=float, default=1.0, help="slice step in mm (default 1.0)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (default 5)")
    ap.add_argument("--scan-files", type=int, default=5000, help="files in the scan benchmark (default 5000; 0 skips)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one medstack.load")
    ap.add_argument("--json", default="bench_dicom.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    if args.slices < 3 or args.size < 8 or args.repeats < 1 or args.scan_files < 0:
        raise SystemExit("need --slices >= 3, --size >= 8, --repeats >= 1, --scan-files >= 0")
    quiet()
    print(f"bench_dicom: CT series {args.slices} slices of {args.size}x{args.size} int16 (uncompressed, shuffled "
          f"names), warm page cache, median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    folder = ensure_ct(args.slices, args.size, args.slice_mm)
    files = list_files(folder)
    nbytes = read_all_bytes(files)  # warm the page cache
    payload = {"config": vars(args), "environment": C.environment(), "folder": str(folder), "files": len(files),
               "bytes": nbytes, "page_cache": "warm", "load_average_start": os.getloadavg()}  # fmt: skip
    try:
        payload["environment"]["pydicom"] = __import__("pydicom").__version__
        payload["environment"]["dicom2nifti"] = getattr(__import__("dicom2nifti"), "__version__", "?")
        exe = dcm2niix_exe()
        if exe:
            payload["environment"]["dcm2niix"] = subprocess.run([exe, "--version"], capture_output=True,
                                                                text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    except Exception:
        pass

    check = check_identical(folder)
    payload["correctness"] = check
    results = run_interleaved(ct_methods(folder, files), args.repeats)
    payload["methods"] = results
    ms = results["medstack.load(folder)"]["median_s"]
    print()
    print(f"load a {args.slices}-slice {args.size}x{args.size} CT series ({len(files)} files, "
          f"{nbytes / 1e6:.0f} MB), median of {args.repeats}:")  # fmt: skip
    print_ct_table(results, ms)
    print("MONAI ITKReader: not timed (needs the `itk` package)")
    print(f"dcm2niix: {dcm2niix_exe()} (native binary), output deleted after each run")
    print()
    payload["goals"] = goal_lines(results, ms)
    print(f"arrays identical: {check['identical']}  (medstack.load vs plain pydicom loop, both in slice-position "
          f"order; {check['medstack_dtype']} {tuple(check['medstack_shape'])})")  # fmt: skip

    if args.scan_files:
        payload["scan"] = bench_scan(args.scan_files, args.repeats)
    if args.profile:
        text = profile_load(folder)
        print()
        print("cProfile of one medstack.load (cumulative, then own time):")
        print(text)
    payload["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (> CPUs: other processes competed; compare ratios)")
    path = C.write_json(args.json, payload)
    print(f"\nresults: {path.relative_to(C.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
