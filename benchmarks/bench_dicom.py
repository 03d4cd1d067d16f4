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

A 4D case (the per-file overhead on many small files): a Philips-like pCASL source series, ``--asl``
(default 20 slices x 144 volumes = 2,880 single-frame MR files of 80x80, ``--asl-size``), label and
control volumes alternating with their own RescaleSlope (1.25 / 1.375), TemporalPositionIdentifier,
InstanceNumber and AcquisitionTime per volume, Philips private groups (2001/2005, two undefined-length
private sequences; ~4.5 KB of header per file; ``--asl-plain`` leaves them out), files renamed ``IM_0001..``
in a random order. Timed: medstack.load and its halves, a plain pydicom 4D loop, dicom2nifti, dcm2niix
(-z n, whole process), SimpleITK as a reference (it stacks the files as 3D: no 4D; MONAI and TorchIO,
which do the same, are not timed). Goal (printed): medstack / dcm2niix <= 2.0. Checked: shape
(volumes, slices, size, size), values equal to those written, to the plain loop and to dcm2niix's.

A second benchmark times :func:`medstack.io.dicom.scan` (headers only) on a folder of ``--scan-files``
small files (default 5,000: 50 series x 100 slices of 64x64) with the default workers, ``workers=1``
and ``workers=2``, against a plain ``pydicom.dcmread(f, stop_before_pixels=True)`` loop.

Usage::

    python benchmarks/bench_dicom.py                                                 # full run (minutes)
    python benchmarks/bench_dicom.py --slices 40 --size 128 --repeats 3 --scan-files 500   # quick (seconds)
    python benchmarks/bench_dicom.py --profile          # also print a cProfile of medstack.load
    python benchmarks/bench_dicom.py --cases asl --repeats 3   # only the 2,880-file 4D ASL case (~1 min)
    python benchmarks/bench_dicom.py --cases asl --asl 8x40 --repeats 3   # quick 4D case (seconds)

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
OTHERS = r"benchmarks/bench_(io|store|convert|resample|transforms|patches)"  # other benchmarks (quiet check)
IDLE_CORES = 0.5  # "quiet" also needs the other processes to keep fewer cores than this busy


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


# ------------------------------------------------------------------------------------- ASL (4D)
#: A Philips-like pseudo-continuous ASL source series: label and control volumes alternate; each phase has
#: its own RescaleSlope (Philips scales every image on its own); one file per slice and volume.
ASL_PIXEL_MM, ASL_SLICE_MM, ASL_TR_S = 3.0, 5.0, 4.0
ASL_SLOPES = (1.25, 1.375)  # label, control: exact in DS and in float32


def parse_asl(text: str) -> tuple[int, int]:
    """``"20x144"`` -> (slices, volumes); ``"0"`` -> (0, 0) (skip the ASL case)."""
    if text.strip() in ("0", ""):
        return 0, 0
    parts = [int(p) for p in text.lower().replace(",", "x").split("x") if p.strip()]
    if len(parts) != 2 or min(parts) < 1:
        raise SystemExit(f"--asl wants SLICESxVOLUMES (e.g. 20x144) or 0, got {text!r}")
    return parts[0], parts[1]


def asl_geometry(slices: int, size: int) -> np.ndarray:
    from medstack.testing import axis_code_affine, center_affine

    shape = (slices, size, size)
    return center_affine(axis_code_affine("LPS", (ASL_PIXEL_MM, ASL_PIXEL_MM, ASL_SLICE_MM)), shape)


def asl_values(slices: int, size: int, volumes: int):
    """(affine, fn): ``fn(v)`` -> the float values written for volume ``v`` (D, H, W), deterministic."""
    from medstack.testing import phantom

    affine = asl_geometry(slices, size)
    base = np.asarray(phantom((slices, size, size), affine, seed=0, kind="mr").data[0], dtype=np.float64)
    base = base * 4.0 + 50.0  # ~50 .. 3900: label/control values of a typical Philips source image

    def volume(v: int) -> np.ndarray:
        label = v % 2 == 0
        noise = np.random.default_rng([11, v]).standard_normal(base.shape) * 6.0
        return np.clip(base * (0.985 if label else 1.0) + noise, 0.0, None)

    return affine, volume


def _philips_private(ds, v: int, d: int, slices: int, volumes: int, slope: float) -> None:
    """Philips-like private groups (2001, 2005): ~4.5 KB per file, ~300 elements, incl. two undefined-length
    sequences (the stack sequence (2001,105F) and the per-image copy of standard tags (2005,140F), as
    Philips writes them) that every parser must walk even when it wants nothing in them."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    b1 = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    b1.add_new(0x01, "FL", 0.0)
    b1.add_new(0x02, "FL", 0.0)
    b1.add_new(0x03, "FL", 0.0)  # diffusion b-factor: 0 for ASL
    b1.add_new(0x08, "IS", "1")  # phase number
    b1.add_new(0x0A, "IS", str(d + 1))  # slice number
    b1.add_new(0x0B, "CS", "TRANSVERSAL")
    b1.add_new(0x10, "CS", "NO")
    b1.add_new(0x11, "FL", 0.0)
    b1.add_new(0x12, "CS", "N")
    b1.add_new(0x13, "SL", 1)
    b1.add_new(0x14, "SL", 1)
    b1.add_new(0x16, "SL", 0)
    b1.add_new(0x17, "SL", 1)
    b1.add_new(0x18, "SL", slices)  # number of slices
    b1.add_new(0x19, "CS", "N")
    b1.add_new(0x1A, "FL", [0.0, 0.0, 0.0])
    b1.add_new(0x1B, "FL", [0.0, 0.0, 0.0])
    b1.add_new(0x1C, "CS", "N")
    b1.add_new(0x1D, "IS", "1")
    b1.add_new(0x1F, "CS", "NO")
    b1.add_new(0x20, "LO", "ASL")
    b1.add_new(0x21, "CS", "N")
    b1.add_new(0x22, "FL", 0.0)
    b1.add_new(0x23, "DS", "90")
    b1.add_new(0x24, "CS", "N")
    b1.add_new(0x25, "SH", "0")
    b1.add_new(0x2D, "SS", slices)
    b1.add_new(0x32, "FL", 0.0)
    b1.add_new(0x33, "FL", 0.0)
    b1.add_new(0x35, "SS", 1)
    b1.add_new(0x36, "CS", "U")
    b1.add_new(0x60, "SL", slices)
    b1.add_new(0x63, "CS", "NONE")
    b1.add_new(0x81, "IS", str(volumes))  # number of dynamic scans
    b1.add_new(0x82, "IS", "1")
    b1.add_new(0x83, "DS", "127.7")
    b1.add_new(0x85, "DS", "3.0")
    b1.add_new(0x86, "IS", "1")
    b1.add_new(0x87, "SH", "H")
    b1.add_new(0x88, "DS", "0")
    b1.add_new(0x8B, "SH", "FFE")
    b1.add_new(0x8C, "CS", "N")
    b1.add_new(0x90, "LO", "BREAST_SHORT")
    stacks = []
    for s in range(2):
        it = Dataset()
        ib = it.private_block(0x2001, "Philips Imaging DD 001", create=True)
        ib.add_new(0x2D, "SS", slices)
        ib.add_new(0x32, "FL", float(s))
        ib.add_new(0x33, "FL", 0.0)
        ib.add_new(0x35, "SS", 1)
        ib.add_new(0x36, "CS", "U")
        jb = it.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        for e in range(0x71, 0x80):  # stack angulations and off-centres
            jb.add_new(e, "FL", 0.0)
        stacks.append(it)
    b1.add_new(0x5F, "SQ", Sequence(stacks))
    _undefined_length(ds[0x2001, 0x105F])
    b5 = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    for e in range(0x00, 0x0D):
        b5.add_new(e, "FL", 0.0)
    b5.add_new(0x0D, "FL", 0.0)  # scale intercept
    b5.add_new(0x0E, "FL", 1.0 / slope)  # scale slope (Philips "precise" values: stored / (RS * SS))
    for e in range(0x0F, 0x6F):  # benign zeros: the many acquisition parameters Philips stores here
        b5.add_new(e, "FL", 0.0)
    b5.add_new(0x30, "FL", ASL_TR_S * 1000.0)
    b5.add_new(0x6F, "CS", "2D")
    for e in range(0x71, 0x7B):
        b5.add_new(e, "FL", 0.0)
    b5.add_new(0x86, "SS", 0)
    b5.add_new(0xA1, "CS", "ASL")
    b5.add_new(0xA9, "CS", "NO")
    for k in (2, 3, 4):  # (2005,0011..0013): so that DD 005 is (2005,14xx), as in Philips files
        ds.private_block(0x2005, f"Philips MR Imaging DD 00{k}", create=True).add_new(0x00, "SS", 0)
    b6 = ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
    per_image = Dataset()  # Philips copies the standard per-image tags into a private sequence
    for kw in ("ImageType", "AcquisitionTime", "ContentTime", "InstanceNumber", "ImagePositionPatient",
               "ImageOrientationPatient", "SliceLocation", "PixelSpacing", "SliceThickness", "RescaleIntercept",
               "RescaleSlope", "WindowCenter", "WindowWidth", "EchoTime", "RepetitionTime", "TemporalPositionIdentifier",
               "NumberOfTemporalPositions", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):  # fmt: skip
        if kw in ds:
            setattr(per_image, kw, ds.data_element(kw).value)
    pb = per_image.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    pb.add_new(0x0E, "FL", 1.0 / slope)
    pb.add_new(0x29, "CS", "LABEL" if v % 2 == 0 else "CONTROL")
    b6.add_new(0x0F, "SQ", Sequence([per_image]))  # (2005,140F)
    _undefined_length(ds[0x2005, 0x140F])
    b6.add_new(0x29, "CS", "LABEL" if v % 2 == 0 else "CONTROL")  # (2005,1429) ASL label type


def _undefined_length(elem) -> None:
    """Write a sequence and its items with undefined lengths and delimiters (as scanners do): a reader
    must walk every element inside to find the end."""
    elem.is_undefined_length = True
    for item in elem.value:
        item.is_undefined_length_sequence_item = True


def asl_manifest(slices: int, volumes: int, size: int, private: bool) -> dict:
    return {"generator_version": DICOM_GENERATOR_VERSION, "slices": slices, "volumes": volumes, "size": size,
            "pixel_mm": ASL_PIXEL_MM, "slice_mm": ASL_SLICE_MM, "tr_s": ASL_TR_S, "slopes": list(ASL_SLOPES),
            "philips_private": private, "undefined_length_sequences": private, "shuffle_names": True}  # fmt: skip


def ensure_asl(slices: int, volumes: int, size: int, *, private: bool = True, log=print) -> Path:
    """A Philips-like ASL source series folder: ``slices x volumes`` single-frame MR files of ``size^2``.

    Written with :func:`medstack.testing.write_dicom_series` once per volume (one SeriesInstanceUID);
    per file: InstanceNumber (volume-major), TemporalPositionIdentifier = volume + 1, AcquisitionTime =
    volume * TR + slice * TR / slices, RescaleSlope by phase (label / control); then the files are renamed
    ``IM_0001 ..`` in a seeded random order (no extension, like a Philips export), so neither name order nor
    directory order is space or time order. Reused while ``<folder>.meta/manifest.json`` matches.
    """
    from medstack.testing import write_dicom_series

    tag = "" if private else "_plain"
    folder = C.DATA / "dicom" / f"asl_{slices}x{volumes}x{size}{tag}"
    meta_dir = folder.with_name(folder.name + ".meta")
    want = asl_manifest(slices, volumes, size, private)
    if _manifest_ok(meta_dir, want) and folder.is_dir() and sum(1 for _ in os.scandir(folder)) == slices * volumes:
        return folder
    t0 = time.perf_counter()
    affine, volume = asl_values(slices, size, volumes)
    tmp = folder.with_name(".tmp." + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    series_uid = "2.25.2880000000000000000000000000000001" + f"{slices:03d}{volumes:04d}{size:03d}{int(private)}"
    study_uid = "2.25.2880000000000000000000000000000002"
    written: list[Path] = []
    for v in range(volumes):
        slope = ASL_SLOPES[v % 2]

        def per_slice(ds, d, v=v, slope=slope):
            ds.InstanceNumber = v * slices + d + 1
            ds.TemporalPositionIdentifier = v + 1
            ds.NumberOfTemporalPositions = volumes
            t = 12 * 3600 + v * ASL_TR_S + d * ASL_TR_S / (2 * slices)  # slices in the first half of the TR
            hhmmss = f"{int(t // 3600):02d}{int(t % 3600 // 60):02d}{t % 60:09.6f}"
            ds.AcquisitionTime = ds.ContentTime = hhmmss
            if private:
                _philips_private(ds, v, d, slices, volumes, slope)

        written += write_dicom_series(
            volume(v), tmp, affine=affine, series_uid=series_uid, study_uid=study_uid, series_number=701,
            series_description="SOURCE - pCASL", modality="MR", rescale_slope=slope, rescale_intercept=0.0,
            window=(1200.0, 2400.0), file_prefix=f"v{v:04d}_", per_slice=per_slice,
            extra_tags={"Manufacturer": "Philips Medical Systems", "ProtocolName": "pCASL",
                        "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], "RepetitionTime": "4000",
                        "EchoTime": "14", "FlipAngle": "90", "SpacingBetweenSlices": f"{ASL_SLICE_MM:g}"},
        )  # fmt: skip
    perm = np.random.default_rng(2880).permutation(len(written))
    for p, n in zip(written, perm):
        os.replace(p, tmp / f"IM_{int(n) + 1:04d}")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    meta_dir.mkdir(parents=True, exist_ok=True)
    sizes = [e.stat().st_size for e in os.scandir(folder)]
    (meta_dir / "manifest.json").write_text(json.dumps(dict(want, bytes=sum(sizes), file_bytes=sizes[0]), indent=1))
    log(f"  generated {slices} slices x {volumes} volumes of {size}x{size} ({len(sizes)} files of ~{sizes[0] / 1e3:.1f} KB) "
        f"in {folder.relative_to(C.ROOT)} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return folder


def plain_pydicom_loop_4d(folder) -> np.ndarray:
    """What a user writes for a 4D series: read every file, index it by (TemporalPositionIdentifier, slice
    position along the normal), fill a (volumes, slices, rows, cols) float32 array with rescaled pixels."""
    import pydicom

    dss = [pydicom.dcmread(f) for f in list_files(folder)]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    pos = [round(float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)), 3) for ds in dss]
    tpi = [int(ds.TemporalPositionIdentifier) for ds in dss]
    z = {p: i for i, p in enumerate(sorted(set(pos)))}
    t = {p: i for i, p in enumerate(sorted(set(tpi)))}
    out = np.empty((len(t), len(z), int(dss[0].Rows), int(dss[0].Columns)), dtype=np.float32)
    for ds, p, v in zip(dss, pos, tpi):
        out[t[v], z[p]] = ds.pixel_array * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
    return out


def dcm2niix_array(exe: str, folder) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's output (x, y, z, t) and its affine (for the correctness check)."""
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="bench_dcm2niix_") as out:
        r = subprocess.run([exe, "-z", "n", "-o", out, "-f", "x", str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"dcm2niix exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
        img = nib.load(os.path.join(out, "x.nii"))
        return np.asarray(img.dataobj), img.affine


def to_medstack_order(xyzt: np.ndarray, affine_nii, affine_ms) -> np.ndarray:
    """A NIfTI (x, y, z, t) array reoriented onto medstack's voxel axes, as (t, D, H, W)."""
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    ornt = ornt_transform(io_orientation(affine_nii), io_orientation(np.asarray(affine_ms)))
    arr = apply_orientation(xyzt if xyzt.ndim == 4 else xyzt[..., None], ornt)  # (i=W, j=H, k=D, t)
    return np.ascontiguousarray(arr.transpose(3, 2, 1, 0))


def check_asl(folder: Path, slices: int, volumes: int, size: int) -> dict:
    """medstack.load vs the values written (exact), the plain 4D loop and dcm2niix's output (reoriented)."""
    import medstack
    from medstack.io import dicom

    found = dicom.scan(folder)
    vol = medstack.load(folder)
    ms = np.asarray(vol.data)
    _, values = asl_values(slices, size, volumes)
    want_shape = (volumes, slices, size, size)
    expected = np.empty(want_shape, dtype=np.float32)
    for v in range(volumes):
        slope = ASL_SLOPES[v % 2]
        expected[v] = np.round(values(v) / slope).astype(np.int16).astype(np.float32) * np.float32(slope)
    out = {"series_found": len(found), "shape": list(ms.shape), "dtype": str(ms.dtype),
           "shape_ok": ms.shape == want_shape, "values_equal_written": bool(ms.shape == want_shape
                                                                             and np.array_equal(ms, expected))}  # fmt: skip
    times = vol.metadata.get("volume_times") or []
    out["volume_times_increasing"] = len(times) == volumes and times == sorted(times)
    plain = plain_pydicom_loop_4d(folder)
    out["plain_loop_equal"] = bool(plain.shape == ms.shape and np.array_equal(plain, ms))
    exe = dcm2niix_exe()
    if exe:
        try:
            arr, aff = dcm2niix_array(exe, folder)
            d2n = to_medstack_order(arr, aff, vol.affine)
            out["dcm2niix_shape"] = list(arr.shape)
            out["dcm2niix_equal"] = bool(d2n.shape == ms.shape and np.allclose(d2n, ms, rtol=1e-6, atol=1e-3))
        except Exception as e:
            out["dcm2niix_equal"] = f"{type(e).__name__}: {e}"
    out["ok"] = bool(out["shape_ok"] and out["values_equal_written"] and out["plain_loop_equal"]
                     and out["volume_times_increasing"] and len(found) == 1)  # fmt: skip
    return out


def asl_methods(folder: Path, files: list[str]):
    """(name, kind, fn) rows for the 4D ASL case. MONAI PydicomReader, TorchIO and SimpleITK's
    ImageSeriesReader cannot make a 4D image from single-frame files: they stack all files as one 3D image
    (80x80x2880) sorted by position; SimpleITK is timed only as a reference of per-file reading speed."""
    import pydicom

    import medstack
    from medstack.io import dicom

    info = dicom.scan(folder)[0]
    rows = [
        ("medstack.load(folder)", "medstack", lambda: medstack.load(folder).data),
        ("  medstack.io.dicom.scan alone", "medstack-part", lambda: dicom.scan(folder)),
        ("  medstack.io.dicom.load_series alone", "medstack-part", lambda: dicom.load_series(info).data),
        ("plain pydicom loop 4D (dcmread, index, fill)", "other", lambda: plain_pydicom_loop_4d(folder)),
        ("dicom2nifti dicom_series_to_nifti (.nii)", "other", lambda: dicom2nifti_run(folder)),
        ("ref: SimpleITK ImageSeriesReader (3D stack, not 4D)", "reference", lambda: sitk_series(folder)[0]),
    ]  # fmt: skip
    exe = dcm2niix_exe()
    if exe:
        rows.append(("dcm2niix -z n (whole process)", "other", lambda: dcm2niix_run(exe, folder)))
    rows += [
        ("floor: pydicom headers only (stop_before_pixels)", "floor",
         lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files]),
        ("floor: read all file bytes", "floor", lambda: read_all_bytes(files)),
    ]  # fmt: skip
    return rows


def bench_asl(slices: int, volumes: int, size: int, repeats: int, *, private: bool = True, max_wait: float = 0.0,
              profile: bool = False, log=print) -> dict:  # fmt: skip
    folder = ensure_asl(slices, volumes, size, private=private, log=log)
    files = list_files(folder)
    nbytes = read_all_bytes(files)  # warm the page cache
    check = check_asl(folder, slices, volumes, size)
    if max_wait > 0:
        C.wait_quiet(OTHERS, max_wait, max_other_cores=IDLE_CORES)
    results = run_interleaved(asl_methods(folder, files), repeats, log=log)
    ms = results["medstack.load(folder)"]["median_s"]
    n = len(files)
    print()
    print(f"load a Philips-like ASL source series: {volumes} volumes x {slices} slices of {size}x{size} "
          f"({n} files of {nbytes / n / 1e3:.1f} KB, {'with' if private else 'without'} Philips private groups), "
          f"warm page cache, median of {repeats}; {os.cpu_count()} CPUs:")  # fmt: skip
    table = []
    for name, v in results.items():
        if v["error"]:
            table.append((name, "failed", "-", "-", "-", "-", v["error"][:60]))
            continue
        table.append((name, C.fmt_s(v["median_s"]), C.fmt_s(v["min_s"]), f"{v['median_s'] / n * 1e3:.3f}",
                      f"{v['median_s'] / ms:.2f}", v["dtype"], v["shape"]))  # fmt: skip
    print(C.format_table(["method", "median s", "min s", "ms/file", "ratio vs medstack", "dtype", "shape"], table,
                         ["<", ">", ">", ">", ">", "<", "<"]))  # fmt: skip
    print("not timed: MONAI LoadImage(PydicomReader) and TorchIO ScalarImage(folder) (SimpleITK) stack every file "
          "as one 3D image (no 4D); the SimpleITK row is a per-file speed reference with that wrong shape")  # fmt: skip
    goals = {}
    d = results.get("dcm2niix -z n (whole process)", {}).get("median_s")
    if d:
        goals["medstack_over_dcm2niix"] = ms / d
        print(f"medstack / dcm2niix = {ms / d:.2f} (goal <= 2.0)  [{'met' if ms / d <= 2.0 else 'NOT met'}]")
    for key, name in (("plain_loop_over_medstack", "plain pydicom loop 4D (dcmread, index, fill)"),
                      ("dicom2nifti_over_medstack", "dicom2nifti dicom_series_to_nifti (.nii)")):  # fmt: skip
        t = results.get(name, {}).get("median_s")
        if t:
            goals[key] = t / ms
            print(f"{name.split(' (')[0]} / medstack = {t / ms:.2f}x")
    scan_s = results["  medstack.io.dicom.scan alone"]["median_s"]
    load_s = results["  medstack.io.dicom.load_series alone"]["median_s"]
    if scan_s and load_s:
        print(f"medstack per file: scan {scan_s / n * 1e3:.3f} ms + load_series {load_s / n * 1e3:.3f} ms")
    print(f"correct: {check['ok']}  (shape {tuple(check['shape'])} {check['dtype']}, values == written: "
          f"{check['values_equal_written']}, == plain 4D loop: {check['plain_loop_equal']}, == dcm2niix (reoriented): "
          f"{check.get('dcm2niix_equal')}, volume times increasing: {check['volume_times_increasing']})")  # fmt: skip
    out = {"folder": str(folder), "files": n, "bytes": nbytes, "slices": slices, "volumes": volumes, "size": size,
           "philips_private": private, "correctness": check, "goals": goals, "methods": results}  # fmt: skip
    if profile:
        text = profile_asl(folder)
        print()
        print(text)
        out["profile"] = text
    return out


def profile_asl(folder: Path, top: int = 20) -> str:
    """cProfile of medstack's scan and load_series on the ASL folder, separately (cumulative order)."""
    import cProfile
    import io
    import pstats

    from medstack.io import dicom

    info = dicom.scan(folder)[0]  # warm
    dicom.load_series(info)
    s = io.StringIO()
    for label, fn in (("scan", lambda: dicom.scan(folder)), ("load_series", lambda: dicom.load_series(info))):
        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        s.write(f"cProfile of one medstack.io.dicom.{label} on the ASL folder (cumulative):\n")
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue()


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


def bench_ct(args, payload: dict) -> None:
    print(f"bench_dicom: CT series {args.slices} slices of {args.size}x{args.size} int16 (uncompressed, shuffled "
          f"names), warm page cache, median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    folder = ensure_ct(args.slices, args.size, args.slice_mm)
    files = list_files(folder)
    nbytes = read_all_bytes(files)  # warm the page cache
    payload.update({"folder": str(folder), "files": len(files), "bytes": nbytes, "page_cache": "warm"})
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

    if args.profile:
        text = profile_load(folder)
        print()
        print("cProfile of one medstack.load (cumulative, then own time):")
        print(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slices", type=int, default=300, help="slices in the CT series (default 300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns per slice (default 512)")
    ap.add_argument("--slice-mm", type=float, default=1.0, help="slice step in mm (default 1.0)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (default 5)")
    ap.add_argument("--scan-files", type=int, default=5000, help="files in the scan benchmark (default 5000; 0 skips)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of one medstack.load (CT) and of scan / load_series (ASL)",
    )
    ap.add_argument("--cases", default="ct,scan,asl", help="comma list of ct, scan, asl (default all three)")
    ap.add_argument("--asl", default="20x144", help="4D ASL case: SLICESxVOLUMES (default 20x144 = 2,880 files)")
    ap.add_argument("--asl-size", type=int, default=80, help="rows = columns of the ASL images (default 80)")
    ap.add_argument("--asl-plain", action="store_true", help="ASL files without the Philips private groups")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="seconds to wait for a quiet machine before the ASL timing (default 60; 0 skips the check)",
    )
    ap.add_argument("--json", default="bench_dicom.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    if args.slices < 3 or args.size < 8 or args.repeats < 1 or args.scan_files < 0 or args.asl_size < 8:
        raise SystemExit("need --slices >= 3, --size >= 8, --repeats >= 1, --scan-files >= 0, --asl-size >= 8")
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases or cases - {"ct", "scan", "asl"}:
        raise SystemExit(f"--cases wants a comma list of ct, scan, asl; got {args.cases!r}")
    asl_slices, asl_volumes = parse_asl(args.asl)
    quiet()
    payload = {"config": vars(args), "environment": C.environment(), "load_average_start": os.getloadavg()}
    try:
        payload["environment"]["pydicom"] = __import__("pydicom").__version__
        payload["environment"]["dicom2nifti"] = getattr(__import__("dicom2nifti"), "__version__", "?")
        exe = dcm2niix_exe()
        if exe:
            payload["environment"]["dcm2niix"] = subprocess.run([exe, "--version"], capture_output=True,
                                                                text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    except Exception:
        pass
    if "ct" in cases:
        bench_ct(args, payload)
    if "scan" in cases and args.scan_files:
        payload["scan"] = bench_scan(args.scan_files, args.repeats)
    if "asl" in cases and asl_slices:
        payload["asl"] = bench_asl(asl_slices, asl_volumes, args.asl_size, args.repeats, private=not args.asl_plain,
                                   max_wait=args.max_wait, profile=args.profile)  # fmt: skip
    payload["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (> CPUs: other processes competed; compare ratios)")
    path = C.write_json(args.json, payload)
    print(f"\nresults: {path.relative_to(C.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
