"""Batch DICOM -> .nii.gz conversion: ``medstack convert`` vs ``dcm2niix`` and ``dicom2nifti``, whole processes.

Generates a synthetic archive (default 20 CT series of 512x512 int16, a seeded mix of 100-300 slices,
``patientNN/studyN/seriesNN`` folders, shuffled file names, each series its own SeriesInstanceUID and
SeriesNumber) with :func:`medstack.testing.write_dicom_series` into ``benchmarks/_data/convert_archive/``
(reused when its manifest matches), then times each converter as a **whole process** (``subprocess``,
imports and start-up included) on the same input, with the output folder emptied (and ``sync`` run)
before each run, methods interleaved in each repeat, on a warm page cache:

- ``medstack convert ARCHIVE OUT --workers 2`` (the CLI, .nii.gz: ISA-L level 1, one fsync per file)
  and ``--workers 1``;
- ``dcm2niix -z y -o OUT ARCHIVE`` (gzip level 6: pigz when installed, else its internal single-thread
  zlib; the table says which) and ``dcm2niix -z n`` for reference;
- ``dicom2nifti.convert_directory(ARCHIVE, OUT, compression=True, reorient=False)`` in a subprocess.

Goal (from the issue; printed, never asserted): medstack --workers 2 no slower than dcm2niix -z y on
the same cores: ``medstack --workers 2 / dcm2niix -z y <= 1.0``.

Afterwards it checks medstack's output (one .nii.gz + one .json per series) and compares two series
with dcm2niix's (same shape, same world geometry and same values after ``.reoriented("RAS")``). With
``--profile`` (default ``auto``: only when the goal is missed) it times the phases of a serial
conversion in-process (scan, load_series, NIfTI gzip write incl. fsync, sidecars), the gzip
levels on one series, and prints a cProfile of ``medstack.convert.convert(..., workers=1)``.

Usage::

    python benchmarks/bench_convert.py                    # full run: ~2 GB archive, 3 repeats (~15-20 min)
    python benchmarks/bench_convert.py --series 4 --min-slices 20 --max-slices 40 --size 128 --repeats 1

Results are printed as a table and written to ``benchmarks/results/bench_convert.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

#: Bump when the generated archive changes, so cached folders are regenerated.
ARCHIVE_GENERATOR_VERSION = 1
PIXEL_MM_512 = 0.7  # in-plane spacing at 512 columns; smaller --size keeps the same field of view
SLICE_MM = 1.0
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2

DICOM2NIFTI_SNIPPET = """
import logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
import dicom2nifti
dicom2nifti.convert_directory(sys.argv[1], sys.argv[2], compression=True, reorient=False)
"""


# ------------------------------------------------------------------------------------------- data
def archive_layout(n_series: int, min_slices: int, max_slices: int, seed: int = 0) -> list[dict]:
    """Per series: folder, slice count, first slice in the shared phantom, patient, series number."""
    rng = np.random.default_rng([seed, 20])
    counts = rng.integers(min_slices, max_slices + 1, size=n_series)
    top = int(counts.max())
    layout = []
    for i, n in enumerate(counts):
        study_global = i // SERIES_PER_STUDY
        patient, study = study_global // STUDIES_PER_PATIENT, study_global % STUDIES_PER_PATIENT
        layout.append({
            "index": i, "slices": int(n), "start": int(rng.integers(0, top - int(n) + 1)),
            "patient_id": f"BENCH^P{patient + 1:02d}", "study_seed": study + 1, "series_number": i + 1,
            "folder": f"patient{patient + 1:02d}/study{study + 1}/series{i + 1:02d}",
        })  # fmt: skip
    return layout


def ensure_archive(n_series: int, min_slices: int, max_slices: int, size: int, *, log=print) -> tuple[Path, list]:
    """The archive folder (generated once, deterministically; reused when the manifest matches).

    One phantom of ``max(slices)`` slices is computed; series ``i`` writes slices
    ``[start, start + n)`` of it with the matching affine (shifted origin), its own SeriesInstanceUID,
    SeriesNumber ``i + 1`` and its own seeded file-name permutation. The manifest lives beside the
    archive (``<name>.meta/manifest.json``) so the converters see only DICOM files.
    """
    from medstack.testing import axis_code_affine, center_affine, phantom, write_dicom_series

    root = C.DATA / "convert_archive"
    folder = root / f"ct_{n_series}series_{min_slices}-{max_slices}x{size}"
    meta_dir = folder.with_name(folder.name + ".meta")
    layout = archive_layout(n_series, min_slices, max_slices)
    pixel_mm = PIXEL_MM_512 * 512 / size
    want = {"generator_version": ARCHIVE_GENERATOR_VERSION, "n_series": n_series, "min_slices": min_slices,
            "max_slices": max_slices, "size": size, "pixel_mm": pixel_mm, "slice_mm": SLICE_MM, "layout": layout,
            "rescale_intercept": -1024.0, "shuffle_names": True}  # fmt: skip
    n_files = sum(s["slices"] for s in layout)
    manifest = meta_dir / "manifest.json"
    if manifest.exists() and folder.is_dir():
        try:
            have = json.loads(manifest.read_text())
        except ValueError:
            have = {}
        if {k: have.get(k) for k in want} == want and sum(len(f) for _, _, f in os.walk(folder)) == n_files:
            return folder, layout
    t0 = time.perf_counter()
    top = max(s["slices"] for s in layout)
    shape = (top, size, size)
    affine = center_affine(axis_code_affine("LPS", (pixel_mm, pixel_mm, SLICE_MM)), shape)
    vol = phantom(shape, affine, seed=0, kind="ct")
    data = np.asarray(vol.data)[0]
    t1 = time.perf_counter()
    tmp = folder.with_name(".tmp." + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    for s in layout:
        aff = np.array(vol.affine, dtype=np.float64)
        aff[:3, 3] += s["start"] * aff[:3, 2]  # origin of the first written slice
        write_dicom_series(data[s["start"] : s["start"] + s["slices"]], tmp / s["folder"], affine=aff,
                           series_number=s["series_number"], series_description=f"bench CT {s['series_number']}",
                           patient_id=s["patient_id"], seed=s["study_seed"],
                           shuffle_names=1000 + s["index"], rescale_intercept=-1024.0)  # fmt: skip
    del vol, data
    gc.collect()
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    meta_dir.mkdir(parents=True, exist_ok=True)
    nbytes = sum(p.stat().st_size for p in folder.rglob("*.dcm"))
    manifest.write_text(json.dumps(dict(want, bytes=nbytes), indent=1))
    log(f"  generated {n_series} series ({n_files} files, {nbytes / 1e9:.2f} GB) in {folder.relative_to(C.ROOT)} "
        f"(phantom {t1 - t0:.1f} s, writing {time.perf_counter() - t1:.1f} s)")  # fmt: skip
    return folder, layout


def read_all_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(root, n), "rb", buffering=0) as fh:
                total += len(fh.read())
    return total


# ---------------------------------------------------------------------------------------- methods
def medstack_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "medstack"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "medstack.cli"]


def dcm2niix_exe() -> str | None:
    here = Path(sys.executable).parent / "dcm2niix"
    return str(here) if here.exists() else shutil.which("dcm2niix")


def methods(archive: Path, out: Path) -> list[tuple[str, str, list[str]]]:
    """(name, key, argv) rows; ``out`` is the method's output folder (emptied before each run)."""
    ms = medstack_cmd()
    rows = [
        ("medstack convert --workers 2", "medstack_w2", [*ms, "convert", str(archive), str(out / "medstack_w2"),
                                                         "--workers", "2"]),
        ("medstack convert --workers 1", "medstack_w1", [*ms, "convert", str(archive), str(out / "medstack_w1"),
                                                         "--workers", "1"]),
    ]  # fmt: skip
    exe = dcm2niix_exe()
    if exe:
        rows += [
            ("dcm2niix -z y", "dcm2niix_zy", [exe, "-z", "y", "-o", str(out / "dcm2niix_zy"), str(archive)]),
            ("dcm2niix -z n (.nii, reference)", "dcm2niix_zn",
             [exe, "-z", "n", "-o", str(out / "dcm2niix_zn"), str(archive)]),
        ]  # fmt: skip
    rows.append(("dicom2nifti.convert_directory", "dicom2nifti",
                 [sys.executable, "-c", DICOM2NIFTI_SNIPPET, str(archive), str(out / "dicom2nifti")]))  # fmt: skip
    return rows


def out_folder(argv: list[str], key: str) -> Path:
    return Path(next(a for a in argv if a.endswith(key)))


def reset(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.sync()  # the previous run's dirty pages are not written back during the next run


def run_one(argv: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the process tree, completed process)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), proc


def outputs(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file() and ".partial" not in str(p)]
    images = [p for p in files if p.name.endswith((".nii.gz", ".nii"))]
    return {"images": len(images), "json": sum(p.suffix == ".json" for p in files),
            "image_bytes": sum(p.stat().st_size for p in images)}  # fmt: skip


def run_interleaved(rows, repeats: int, *, log=print) -> dict:
    results = {key: {"name": name, "times": [], "cpu": [], "error": None, "outputs": None} for name, key, _ in rows}
    for r in range(repeats):
        for name, key, argv in rows:
            if results[key]["error"]:
                continue
            folder = out_folder(argv, key)
            reset(folder)
            wall, cpu, proc = run_one(argv)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                results[key]["error"] = f"exit {proc.returncode}: {tail[-1][:200] if tail else ''}"
                log(f"  {name}: FAILED ({results[key]['error']})")
                continue
            results[key]["times"].append(wall)
            results[key]["cpu"].append(cpu)
            results[key]["outputs"] = outputs(folder)
            if r == 0:
                results[key]["stdout_tail"] = (proc.stdout + proc.stderr)[-2000:]
            log(f"  round {r + 1}/{repeats}: {name:34} {wall:8.2f} s wall, {cpu:8.2f} s CPU")
    for v in results.values():
        v["median_s"] = C.median(v["times"]) if v["times"] else None
        v["min_s"] = min(v["times"]) if v["times"] else None
        v["cpu_median_s"] = C.median(v["cpu"]) if v["cpu"] else None
    return results


def dcm2niix_gzip(results: dict) -> str:
    """Which gzip dcm2niix -z y used (pigz found on PATH or internal single-thread zlib)."""
    pigz = shutil.which("pigz")
    text = (results.get("dcm2niix_zy", {}).get("stdout_tail") or "").lower()
    if pigz and "pigz" in text:
        return f"pigz ({pigz}), level 6"
    return "internal single-thread zlib, level 6 (no pigz on PATH)" if not pigz else f"unclear (pigz at {pigz})"


# --------------------------------------------------------------------------------------- checking
def _sidecar_series(folder: Path, key: str) -> dict[int, Path]:
    """SeriesNumber -> image path, from the JSON sidecars (medstack's and dcm2niix's)."""
    found = {}
    for js in folder.rglob("*.json"):
        try:
            meta = json.loads(js.read_text())
        except ValueError:
            continue
        num = meta.get("source", {}).get("series_number") if key == "medstack" else meta.get("SeriesNumber")
        stem = js.name[: -len(".json")]
        img = next((p for p in (js.with_name(stem + ".nii.gz"), js.with_name(stem + ".nii")) if p.exists()), None)
        if num is not None and img is not None:
            found[int(num)] = img
    return found


def verify(out: Path, layout: list, results: dict) -> dict:
    import medstack

    n = len(layout)
    ms_out = outputs(out / "medstack_w2") if results["medstack_w2"]["times"] else {"images": 0, "json": 0}
    check = {"expected_series": n, "medstack_nii_gz": sum(1 for _ in (out / "medstack_w2").rglob("*.nii.gz")),
             "medstack_json": ms_out["json"]}  # fmt: skip
    check["medstack_outputs_ok"] = check["medstack_nii_gz"] == n and check["medstack_json"] == n
    if not results.get("dcm2niix_zy", {}).get("times"):
        check["geometry_agrees"] = None
        return check
    ms = _sidecar_series(out / "medstack_w2", "medstack")
    dc = _sidecar_series(out / "dcm2niix_zy", "dcm2niix")
    check["dcm2niix_outputs"] = len(dc)
    nums = sorted(set(ms) & set(dc))
    picks = [nums[0], nums[len(nums) // 2]] if len(nums) >= 2 else nums
    agree, details = bool(picks), []
    for num in dict.fromkeys(picks):
        a = medstack.load(ms[num]).reoriented("RAS")
        b = medstack.load(dc[num]).reoriented("RAS")
        same_shape = a.shape == b.shape
        same_affine = bool(np.allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-3))
        same_values = same_shape and bool(np.array_equal(np.asarray(a.to_numpy(), np.float32),
                                                         np.asarray(b.to_numpy(), np.float32)))  # fmt: skip
        details.append({"series_number": num, "medstack": ms[num].name, "dcm2niix": dc[num].name,
                        "shape": list(a.shape), "dcm2niix_shape": list(b.shape), "same_shape": same_shape,
                        "same_affine": same_affine, "same_values": same_values,
                        "medstack_affine": np.round(np.asarray(a.affine), 4).tolist()})  # fmt: skip
        agree = agree and same_shape and same_affine
        del a, b
    check["geometry_agrees"] = agree
    check["values_agree"] = all(d["same_values"] for d in details) if details else None
    check["spot_checks"] = details
    return check


# -------------------------------------------------------------------------------------- profiling
def profile_phases(archive: Path, *, log=print) -> dict:
    """Serial conversion split in phases, gzip level costs on one series, and a cProfile of convert()."""
    import cProfile
    import io
    import pstats
    import zlib

    import isal
    from isal import isal_zlib

    from medstack.convert import ConvertOptions, convert
    from medstack.io import dicom
    from medstack.io.nifti import write_nifti

    isal_version = isal.__version__
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_convert_prof_", dir=C.DATA) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        series = dicom.scan(archive, workers=1)
        t_scan = time.perf_counter() - t0
        t_load = t_gz = t_nii = 0.0
        biggest = None
        for i, info in enumerate(series):
            t0 = time.perf_counter()
            vol = dicom.load_series(info)
            t1 = time.perf_counter()
            write_nifti(vol, tmp / f"{i}.nii.gz")
            t2 = time.perf_counter()
            write_nifti(vol, tmp / f"{i}.nii")
            t3 = time.perf_counter()
            t_load, t_gz, t_nii = t_load + t1 - t0, t_gz + t2 - t1, t_nii + t3 - t2
            (tmp / f"{i}.nii").unlink()
            if biggest is None or vol.nbytes > biggest.nbytes:
                biggest = vol
            del vol
        out["phases_s"] = {"scan (workers=1)": t_scan, "load_series (all)": t_load,
                           "write .nii.gz, ISA-L level 1 + fsync (all)": t_gz,
                           "write .nii + fsync (all, reference)": t_nii}  # fmt: skip
        raw = np.ascontiguousarray(np.asarray(biggest.data)).tobytes()[: 64 * 2**20]  # 64 MiB is enough for MB/s
        levels = {}
        for label, fn in (("isal level 0", lambda b: isal_zlib.compress(b, 0)),
                          ("isal level 1 (medstack default)", lambda b: isal_zlib.compress(b, 1)),
                          ("isal level 2", lambda b: isal_zlib.compress(b, 2)),
                          ("isal level 3", lambda b: isal_zlib.compress(b, 3)),
                          ("zlib level 1", lambda b: zlib.compress(b, 1)),
                          ("zlib level 6 (Python's zlib; gzip's default)", lambda b: zlib.compress(b, 6))):  # fmt: skip
            t0 = time.perf_counter()
            n = len(fn(raw))
            dt = time.perf_counter() - t0
            levels[label] = {"s": dt, "MB_per_s": len(raw) / dt / C.MB, "ratio": len(raw) / n}
        out["gzip_one_series"] = {"shape": list(biggest.shape), "MB": len(raw) / C.MB, "levels": levels,
                                  "isal_version": isal_version}  # fmt: skip
        del raw, biggest
        gc.collect()
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        convert([archive], tmp / "conv", ConvertOptions(), workers=1)
        pr.disable()
        out["cprofile_total_s"] = time.perf_counter() - t0
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
        out["cprofile_tottime"] = s.getvalue()
    return out


def print_profile(prof: dict, voxel_mb: float) -> None:
    print()
    print("profile: serial conversion in-process, by phase")
    ph = prof["phases_s"]
    total = sum(v for k, v in ph.items() if "reference" not in k)
    rows = [(k, C.fmt_s(v), f"{100 * v / total:.0f}%" if "reference" not in k else "-", f"{voxel_mb / v:.0f}")
            for k, v in ph.items()]  # fmt: skip
    print(C.format_table(["phase", "s", "share", "MB/s"], rows))
    g = prof["gzip_one_series"]
    print(f"gzip in memory, one thread: the first {g['MB']:.0f} MB of the largest series {tuple(g['shape'])}:")
    print(C.format_table(["compressor", "s", "MB/s", "ratio"],
                         [(k, C.fmt_s(v["s"]), f"{v['MB_per_s']:.0f}", f"{v['ratio']:.2f}")
                          for k, v in g["levels"].items()]))  # fmt: skip
    print(f"cProfile of convert(..., workers=1): {prof['cprofile_total_s']:.2f} s; top functions by own time:")
    lines = prof["cprofile_tottime"].splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    print("\n".join(ln for ln in lines[start:] if ln.strip()))


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--series", type=int, default=20, help="series in the archive (default 20)")
    ap.add_argument("--min-slices", type=int, default=100, help="fewest slices per series (default 100)")
    ap.add_argument("--max-slices", type=int, default=300, help="most slices per series (default 300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns per slice (default 512)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3; median)")
    ap.add_argument("--skip", default="", help="comma-separated method keys not to run (e.g. dicom2nifti)")
    ap.add_argument("--profile", choices=["auto", "yes", "no"], default="auto",
                    help="profile a serial medstack conversion: auto = only when the goal is missed")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the converted outputs (default: deleted)")
    ap.add_argument("--json", default="bench_convert.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    if args.series < 1 or args.size < 8 or args.repeats < 1 or not 3 <= args.min_slices <= args.max_slices:
        raise SystemExit("need --series >= 1, --size >= 8, --repeats >= 1, 3 <= --min-slices <= --max-slices")
    C.quiet()
    for name in ("dicom2nifti", "pydicom", "medstack", "nibabel"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    load0 = os.getloadavg()
    print(f"bench_convert: {args.series} CT series, {args.min_slices}-{args.max_slices} slices of "
          f"{args.size}x{args.size} int16, whole processes, warm page cache, median of {args.repeats}; "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.2f}")  # fmt: skip
    archive, layout = ensure_archive(args.series, args.min_slices, args.max_slices, args.size)
    n_slices = sum(s["slices"] for s in layout)
    voxel_bytes = n_slices * args.size * args.size * 2
    file_bytes = read_all_bytes(archive)  # warm the page cache
    print(f"archive: {archive.relative_to(C.ROOT)}: {args.series} series, {n_slices} files, "
          f"{file_bytes / 1e9:.2f} GB; voxel data {voxel_bytes / 1e6:.0f} MB")  # fmt: skip
    out = C.DATA / "convert_out"
    skip = {s for s in args.skip.split(",") if s}
    rows = [r for r in methods(archive, out) if r[1] not in skip]
    env = C.environment()
    exe = dcm2niix_exe()
    try:
        env["pydicom"] = __import__("pydicom").__version__
        env["dicom2nifti"] = getattr(__import__("dicom2nifti"), "__version__", "?")
        if exe:
            env["dcm2niix"] = subprocess.run([exe, "--version"], capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    except Exception:
        pass
    subprocess.run([*medstack_cmd(), "--version"], capture_output=True)  # warm the interpreter and executables
    if exe:
        subprocess.run([exe, "--version"], capture_output=True)

    t_start = time.perf_counter()
    results = run_interleaved(rows, args.repeats)
    load1 = os.getloadavg()
    base = results["medstack_w2"]["median_s"]
    gzip_impl = dcm2niix_gzip(results) if "dcm2niix_zy" in results else None
    table = []
    for v in results.values():
        if v["error"] or not v["median_s"]:
            table.append((v["name"], "failed", "-", "-", "-", "-", "-", (v["error"] or "")[:50]))
            continue
        o = v["outputs"]
        table.append((v["name"], C.fmt_s(v["median_s"]), f"{args.series / v['median_s']:.2f}",
                      f"{voxel_bytes / v['median_s'] / C.MB:.0f}", f"{v['median_s'] / base:.2f}" if base else "-",
                      f"{v['cpu_median_s']:.1f}", f"{o['image_bytes'] / 1e6:.0f}", f"{o['images']}+{o['json']}"))  # fmt: skip
    print()
    print(f"convert {args.series} series ({n_slices} slices of {args.size}x{args.size}, {voxel_bytes / 1e6:.0f} MB "
          f"of voxels) to NIfTI, whole process, median of {args.repeats}:")  # fmt: skip
    print(C.format_table(["method", "median wall s", "series/s", "MB/s", "ratio", "CPU s", "out MB", "files"],
                         table))  # fmt: skip
    print("ratio = method / medstack convert --workers 2 (medstack = 1.00; > 1 = slower); MB/s of uncompressed "
          "voxel data; CPU s = user+sys of the process tree; files = images + JSON sidecars")  # fmt: skip
    if gzip_impl:
        print(f"dcm2niix -z y compressed with: {gzip_impl}; medstack: ISA-L (isal {env.get('isal')}) level 1, "
              "one thread per worker, fsync per file")  # fmt: skip
    goals = {}
    dz = results.get("dcm2niix_zy", {}).get("median_s")
    if base and dz:
        goals["medstack_w2_over_dcm2niix_zy"] = base / dz
        print(f"medstack --workers 2 / dcm2niix -z y = {base / dz:.2f} (goal <= 1.0)  "
              f"[{'met' if base / dz <= 1.0 else 'NOT met'}]")  # fmt: skip
    dn = results.get("dcm2niix_zn", {}).get("median_s")
    if base and dn:
        goals["medstack_w2_over_dcm2niix_zn"] = base / dn
        print(f"medstack --workers 2 (.nii.gz) / dcm2niix -z n (.nii) = {base / dn:.2f} (reference)")
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; the converters use <= 2 cores "
          f"themselves, so more than ~{min(2, os.cpu_count() or 1) + 0.5:.1f} after the run means other work "
          "competed for the CPUs (compare ratios, not seconds)")  # fmt: skip

    payload = {"config": vars(args), "environment": env, "archive": str(archive), "layout": layout,
               "n_slices": n_slices, "voxel_bytes": voxel_bytes, "file_bytes": file_bytes, "page_cache": "warm",
               "dcm2niix_gzip": gzip_impl, "loadavg_before": load0, "loadavg_after": load1,
               "bench_seconds": time.perf_counter() - t_start, "methods": results, "goals": goals}  # fmt: skip
    if "medstack_w2" in results and results["medstack_w2"]["times"]:
        check = verify(out, layout, results)
        payload["verification"] = check
        print(f"medstack outputs: {check['medstack_nii_gz']} .nii.gz + {check['medstack_json']} .json for "
              f"{check['expected_series']} series: {'OK' if check['medstack_outputs_ok'] else 'WRONG'}")  # fmt: skip
        if check.get("geometry_agrees") is not None:
            nums = ", ".join(f"#{d['series_number']} {tuple(d['shape'])}" for d in check["spot_checks"])
            print(f"geometry agrees: {check['geometry_agrees']}  (medstack vs dcm2niix -z y, series {nums}, "
                  f"shape + affine after .reoriented('RAS'); values equal: {check['values_agree']})")  # fmt: skip
    missed = bool(dz and base and base / dz > 1.0)
    if args.profile == "yes" or (args.profile == "auto" and missed):
        print("\nprofiling a serial medstack conversion (goal missed)" if missed else "\nprofiling")
        prof = profile_phases(archive)
        payload["profile"] = prof
        print_profile(prof, voxel_bytes / C.MB)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    path = C.write_json(args.json, payload)
    print(f"\nresults: {path.relative_to(C.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
