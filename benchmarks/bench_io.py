"""Volume loading speed: medstack vs nibabel, SimpleITK, MONAI, TorchIO, and the I/O floors.

Generates ``--n-volumes`` CT-like int16 volumes (default 8 of 512x512x300, written with nibabel as
.nii into ``benchmarks/_data/io/nii/`` and as .nii.gz, at nibabel's default gzip level 1 unless
``--gzip-level``, into ``benchmarks/_data/io/gz<level>/``; reused when present), then times every
reader side by side, interleaved method by method in each repeat, and reports the median over
``--repeats`` per volume, averaged over the volumes. The page cache is warm (the files are read once
before timing); nothing is dropped from it. On the untimed warm-up call, the sum of all voxels each
reader returns is compared with medstack's ("data check"), so a reader that read something else shows.

Goals (from the issue; printed, never asserted):

- .nii.gz to float32: medstack / SimpleITK <= 1.0; medstack >= 2x faster than nibabel's default
  (``get_fdata()``, float64).
- .nii: medstack within 1.2x of the memory-map floor (``np.memmap`` + copy).
- HDF5 (``medstack.save`` to .h5, default chunks): a random 96^3 patch in under 10 ms.

Usage::

    python benchmarks/bench_io.py                                            # the full run (minutes)
    python benchmarks/bench_io.py --shape 128,128,64 --n-volumes 2 --repeats 3   # quick (seconds)

Results are printed as tables and written to ``benchmarks/results/bench_io.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


# ------------------------------------------------------------------------------------------- data
def ensure_data(shape_xyz, n: int, gzip_level: int = 1, *, log=print) -> list[dict]:
    """The benchmark files (generated once, deterministically; reused when the manifest matches).

    The ``.nii`` and ``.nii.gz`` files live in different folders on purpose: NIfTI's reference library
    (used by ITK, hence SimpleITK and TorchIO) opens ``x.nii`` instead of ``x.nii.gz`` when both exist
    (``nifti_findhdrname`` tries the uncompressed name first), which would time an uncompressed read.
    """
    import nibabel as nib

    nx, ny, nz = shape_xyz
    folders = {"nii": C.DATA / "io" / "nii", "gz": C.DATA / "io" / f"gz{gzip_level}"}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    note = ", nibabel's default" if gzip_level == 1 else ""
    writer = {"nii": f"nibabel {nib.__version__}", "gz": f"nibabel {nib.__version__} (gzip level {gzip_level}{note})"}
    out = []
    img = None
    for i in range(n):
        entry = {}
        for kind, folder in folders.items():
            stem = folder / f"ct_{nx}x{ny}x{nz}_{i:02d}"
            path, manifest = Path(f"{stem}.nii" + (".gz" if kind == "gz" else "")), Path(f"{stem}.json")
            want = {"generator_version": C.GENERATOR_VERSION, "shape_xyz": [nx, ny, nz], "seed": i,
                    "writer": writer[kind]}  # fmt: skip
            ok = path.exists() and manifest.exists()
            if ok:
                try:
                    ok = {k: v for k, v in json.loads(manifest.read_text()).items() if k in want} == want
                except ValueError:
                    ok = False
            if not ok:
                t0 = time.perf_counter()
                if img is None or img[0] != i:
                    vol = C.ct_like_volume(shape_xyz, seed=i)  # (D, H, W); NIfTI (x, y, z) is its transpose
                    im = nib.Nifti1Image(vol.T, C.ct_affine(shape_xyz))
                    im.set_sform(C.ct_affine(shape_xyz), code=1)
                    im.set_qform(C.ct_affine(shape_xyz), code=1)
                    im.header.set_xyzt_units("mm", "sec")
                    img = (i, im)
                tmp = path.with_name(".tmp." + path.name)
                saved = nib.openers.ImageOpener.default_compresslevel
                nib.openers.ImageOpener.default_compresslevel = gzip_level
                try:
                    nib.save(img[1], tmp)
                finally:
                    nib.openers.ImageOpener.default_compresslevel = saved
                os.replace(tmp, path)
                manifest.write_text(json.dumps(dict(want, bytes=path.stat().st_size), indent=1))
                log(f"  generated {path.relative_to(C.DATA)} in {time.perf_counter() - t0:.1f} s")
            entry[kind] = path
            entry[f"{kind}_bytes"] = path.stat().st_size
            entry[f"{kind}_writer"] = writer[kind]
        out.append(entry)
    del img
    gc.collect()
    return out


def warm_cache(paths) -> None:
    """Read each file once so every method sees a warm page cache."""
    buf = bytearray(1 << 24)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# ---------------------------------------------------------------------------------------- methods
def methods_gz():
    import gzip

    import nibabel as nib
    import SimpleITK as sitk
    import torchio as tio
    from isal import igzip
    from monai.transforms import LoadImage

    import medstack

    monai_load = LoadImage(image_only=True)
    return [
        ("medstack.load", "medstack", lambda p: medstack.load(p).data),
        ("medstack.load(dtype=float32)", "medstack", lambda p: medstack.load(p, dtype=np.float32).data),
        ("nibabel np.asanyarray(dataobj)", "other", lambda p: np.asanyarray(nib.load(p).dataobj)),
        ("nibabel get_fdata(dtype=float32)", "other", lambda p: nib.load(p).get_fdata(dtype=np.float32)),
        ("nibabel get_fdata() [default]", "other", lambda p: nib.load(p).get_fdata()),
        ("SimpleITK ReadImage + ArrayView", "other", _sitk_view(sitk, None)),
        ("SimpleITK ReadImage(sitkFloat32)", "other", _sitk_view(sitk, sitk.sitkFloat32)),
        ("MONAI LoadImage(image_only=True)", "other", lambda p: monai_load(p)),
        ("TorchIO ScalarImage(p).data", "other", lambda p: tio.ScalarImage(p).data),
        ("floor: isal igzip.decompress", "floor", lambda p: _bytes(igzip.decompress(_read(p)))),
        ("floor: Python gzip.decompress", "floor", lambda p: _bytes(gzip.decompress(_read(p)))),
    ]


def methods_nii(nbytes_file: int):
    import nibabel as nib
    import SimpleITK as sitk
    import torchio as tio
    from monai.transforms import LoadImage

    import medstack

    monai_load = LoadImage(image_only=True)
    prealloc = np.empty(nbytes_file, dtype=np.uint8)
    prealloc[:] = 0  # fault the pages in once: this floor measures the read alone

    def readinto_prealloc(p):
        with open(p, "rb", buffering=0) as f:
            f.readinto(memoryview(prealloc))
        return prealloc

    def readinto_new(p):
        out = np.empty(os.path.getsize(p), dtype=np.uint8)
        with open(p, "rb", buffering=0) as f:
            f.readinto(memoryview(out))
        return out

    def memmap_copy(p):
        return np.array(np.memmap(p, dtype=np.uint8, mode="r"), copy=True)

    return [
        ("medstack.load", "medstack", lambda p: medstack.load(p).data),
        ("medstack.load(dtype=float32)", "medstack", lambda p: medstack.load(p, dtype=np.float32).data),
        ("medstack.load(mmap=True) + copy", "medstack", lambda p: np.array(medstack.load(p, mmap=True).data)),
        ("nibabel dataobj (mmap) + copy", "other", lambda p: np.array(np.asanyarray(nib.load(p).dataobj))),
        ("nibabel get_fdata(dtype=float32)", "other", lambda p: nib.load(p).get_fdata(dtype=np.float32)),
        ("nibabel get_fdata() [default]", "other", lambda p: nib.load(p).get_fdata()),
        ("SimpleITK ReadImage + ArrayView", "other", _sitk_view(sitk, None)),
        ("SimpleITK ReadImage(sitkFloat32)", "other", _sitk_view(sitk, sitk.sitkFloat32)),
        ("MONAI LoadImage(image_only=True)", "other", lambda p: monai_load(p)),
        ("TorchIO ScalarImage(p).data", "other", lambda p: tio.ScalarImage(p).data),
        ("floor: np.memmap + copy", "floor", memmap_copy),
        ("floor: readinto new np.empty", "floor", readinto_new),
        ("floor: readinto preallocated", "floor", readinto_prealloc),
    ]


def _sitk_view(sitk, pixel_type):
    def run(p):
        img = sitk.ReadImage(str(p)) if pixel_type is None else sitk.ReadImage(str(p), pixel_type)
        return img, sitk.GetArrayViewFromImage(img)  # keep the image alive with its view

    return run


def _read(p) -> bytes:
    with open(p, "rb", buffering=0) as f:
        return f.read()


def _bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


def _checksum(res) -> float:
    if isinstance(res, tuple):
        res = res[-1]
    if not isinstance(res, np.ndarray):
        res = res.detach().cpu().numpy() if hasattr(res, "detach") else np.asarray(res)
        res = np.asarray(res)
    return float(np.sum(res, dtype=np.float64))


def _out_dtype(res) -> str:
    if isinstance(res, tuple):
        res = res[-1]
    return C.dtype_of(res)


# ---------------------------------------------------------------------------------------- timing
def time_methods(methods, paths, repeats: int, *, log=print) -> dict:
    """Per method: per-volume median seconds (methods interleaved inside each repeat) and output dtype.

    Each result is deleted before the next call; a full ``gc.collect()`` (not timed, ~0.1 s with torch
    and MONAI imported) runs after each call only for large files, where a leaked cycle would matter.
    """
    collect = os.path.getsize(paths[0]) > 16e6
    times = {name: [[] for _ in paths] for name, _, _ in methods}
    user = {name: [[] for _ in paths] for name, _, _ in methods}  # process CPU time, all threads
    system = {name: [[] for _ in paths] for name, _, _ in methods}  # kernel time: page faults, THP, reads
    dtypes, checks = {}, {}
    # warm-up on the first file: imports, first-call initialisation (not timed); the sum of all voxels
    # checks that every reader really read this file (layout-independent; floors return raw bytes)
    reference = None
    for name, kind, fn in methods:
        res = fn(paths[0])
        dtypes[name] = _out_dtype(res)
        if kind != "floor":
            total = _checksum(res)
            reference = total if reference is None else reference
            checks[name] = "ok" if total == reference else f"MISMATCH (sum {total} != {reference})"
        else:
            checks[name] = "-"
        del res
        gc.collect()
    for v, p in enumerate(paths):
        for _ in range(repeats):
            for name, _, fn in methods:
                c0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                res = fn(p)
                dt = time.perf_counter() - t0
                c1 = resource.getrusage(resource.RUSAGE_SELF)
                del res
                if collect:
                    gc.collect()
                times[name][v].append(dt)
                user[name][v].append(c1.ru_utime - c0.ru_utime)
                system[name][v].append(c1.ru_stime - c0.ru_stime)
        log(f"  volume {v + 1}/{len(paths)} done")
    return {
        name: {
            "per_volume_median_s": [C.median(t) for t in times[name]],
            "per_volume_median_user_s": [C.median(t) for t in user[name]],
            "per_volume_median_sys_s": [C.median(t) for t in system[name]],
            "dtype": dtypes[name],
            "kind": kind,
            "check": checks[name],
        }
        for name, kind, _ in methods
    }


def summarise(res: dict, nbytes: int) -> dict:
    """Mean over volumes of the per-volume medians, MB/s, and the ratio vs medstack of the same output dtype."""
    for r in res.values():
        r["s_per_volume"] = float(np.mean(r["per_volume_median_s"]))
        r["user_s_per_volume"] = float(np.mean(r["per_volume_median_user_s"]))
        r["sys_s_per_volume"] = float(np.mean(r["per_volume_median_sys_s"]))
        r["MB_per_s"] = nbytes / C.MB / r["s_per_volume"]
    ms_native = res["medstack.load"]["s_per_volume"]
    ms_f32 = res["medstack.load(dtype=float32)"]["s_per_volume"]
    for r in res.values():
        ref_name = "medstack.load(dtype=float32)" if r["dtype"].startswith("float") else "medstack.load"
        r["ratio_ref"] = ref_name
        r["ratio_vs_medstack"] = r["s_per_volume"] / (ms_f32 if ref_name.endswith("float32)") else ms_native)
    return res


def print_table(title: str, res: dict) -> str:
    rows = [
        (
            name,
            r["dtype"],
            C.fmt_s(r["s_per_volume"]),
            f"{r['MB_per_s']:.0f}",
            f"{r['ratio_vs_medstack']:.2f}",
            f"{r['user_s_per_volume']:.3f}",
            f"{r['sys_s_per_volume']:.3f}",
            r["check"],
        )
        for name, r in res.items()
    ]
    text = f"\n{title}\n" + C.format_table(
        ["method", "output", "median s/volume", "MB/s", "vs medstack", "user s", "sys s", "data check"], rows,
        ["<", "<", ">", ">", ">", ">", ">", "<"],
    )  # fmt: skip
    print(text)
    return text


# ----------------------------------------------------------------------------------------- HDF5
def bench_h5(files, shape_xyz, n_patches: int, repeats: int, patch: int, seed: int, *, log=print) -> dict:
    import h5py

    import medstack

    src = files[0]
    h5 = src["nii"].with_suffix(".h5")
    vol = medstack.load(src["nii"])
    t_write, _ = C.timed(lambda: medstack.save(vol, h5, overwrite=True))  # default chunks, no compression
    nbytes = vol.nbytes
    vol = None  # free it (not del: the lambda above refers to the name)
    gc.collect()
    warm_cache([h5])
    lazy = medstack.load(h5, lazy=True)
    chunks = getattr(lazy.data, "chunks", None)
    _, d, h, w = lazy.shape
    pd, ph, pw = min(patch, d), min(patch, h), min(patch, w)
    rng = np.random.default_rng(seed)
    starts = np.stack(
        [rng.integers(0, d - pd + 1, n_patches), rng.integers(0, h - ph + 1, n_patches),
         rng.integers(0, w - pw + 1, n_patches)], axis=1,
    )  # fmt: skip
    patch_bytes = pd * ph * pw * np.dtype(lazy.dtype).itemsize

    def patch_times(read):
        read(*starts[0])  # warm-up (open, first chunk index lookup)
        ts = []
        for z, y, x in starts:
            t0 = time.perf_counter()
            a = read(z, y, x)
            ts.append(time.perf_counter() - t0)
            if a.shape[1:] != (pd, ph, pw):  # a correctness check of the read, not of timing
                raise RuntimeError(f"patch read returned shape {a.shape}, expected (C, {pd}, {ph}, {pw})")
        return ts

    t_warm = patch_times(lambda z, y, x: lazy.data[:, z : z + pd, y : y + ph, x : x + pw])

    def new_handle(z, y, x):
        v = medstack.load(h5, lazy=True)
        a = v.data[:, z : z + pd, y : y + ph, x : x + pw]
        v.data.close()
        return a

    t_new = patch_times(new_handle)
    with h5py.File(h5, "r") as f:
        ds = f["volumes/volume/data"]
        t_h5py = patch_times(lambda z, y, x: ds[:, z : z + pd, y : y + ph, x : x + pw])
    mm = medstack.load(src["nii"], mmap=True)
    t_mmap = patch_times(lambda z, y, x: np.array(mm.data[:, z : z + pd, y : y + ph, x : x + pw]))
    lazy.data.close()
    mm = lazy = None

    t_whole = []
    for _ in range(repeats):
        dt, res = C.timed(lambda: medstack.load(h5).data)
        del res
        gc.collect()
        t_whole.append(dt)
    t_nii = []
    for _ in range(repeats):
        dt, res = C.timed(lambda: medstack.load(src["nii"]).data)
        del res
        gc.collect()
        t_nii.append(dt)

    def pstats(ts):
        ts = np.asarray(ts) * 1e3
        return {"median_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90)),
                "MB_per_s": patch_bytes / C.MB / (np.median(ts) / 1e3)}  # fmt: skip

    return {
        "file": h5.name,
        "file_bytes": h5.stat().st_size,
        "chunks": list(chunks) if chunks else None,
        "write_s": t_write,
        "patch_shape": [pd, ph, pw],
        "n_patches": n_patches,
        "patch_seed": seed,
        "patch_warm_handle": pstats(t_warm),
        "patch_new_handle": pstats(t_new),
        "patch_h5py_direct": pstats(t_h5py),
        "patch_nii_mmap_copy": pstats(t_mmap),
        "whole_h5_s": C.median(t_whole),
        "whole_h5_MB_per_s": nbytes / C.MB / C.median(t_whole),
        "whole_nii_s": C.median(t_nii),
        "whole_nii_MB_per_s": nbytes / C.MB / C.median(t_nii),
    }


def print_h5(r: dict) -> str:
    ps = "x".join(map(str, r["patch_shape"]))
    rows = [
        (f"{ps} patch, medstack lazy (one open handle)", f"{r['patch_warm_handle']['median_ms']:.2f}",
         f"{r['patch_warm_handle']['p90_ms']:.2f}", f"{r['patch_warm_handle']['MB_per_s']:.0f}"),
        (f"{ps} patch, medstack.load(lazy=True) each time", f"{r['patch_new_handle']['median_ms']:.2f}",
         f"{r['patch_new_handle']['p90_ms']:.2f}", f"{r['patch_new_handle']['MB_per_s']:.0f}"),
        (f"{ps} patch, h5py dataset slice (reference)", f"{r['patch_h5py_direct']['median_ms']:.2f}",
         f"{r['patch_h5py_direct']['p90_ms']:.2f}", f"{r['patch_h5py_direct']['MB_per_s']:.0f}"),
        (f"{ps} patch, .nii mmap slice + copy (reference)", f"{r['patch_nii_mmap_copy']['median_ms']:.2f}",
         f"{r['patch_nii_mmap_copy']['p90_ms']:.2f}", f"{r['patch_nii_mmap_copy']['MB_per_s']:.0f}"),
        ("whole volume, medstack.load(.h5)", f"{r['whole_h5_s'] * 1e3:.1f}", "", f"{r['whole_h5_MB_per_s']:.0f}"),
        ("whole volume, medstack.load(.nii) (reference)", f"{r['whole_nii_s'] * 1e3:.1f}", "",
         f"{r['whole_nii_MB_per_s']:.0f}"),
    ]  # fmt: skip
    chunks = "contiguous" if r["chunks"] is None else "x".join(map(str, r["chunks"]))
    text = (
        f"\n.h5 (medstack.save default: chunks {chunks}, no compression; {r['file_bytes'] / C.MB:.0f} MB; "
        f"write {r['write_s']:.2f} s incl. fsync; {r['n_patches']} seeded random positions, volume 0)\n"
        + C.format_table(["read", "median ms", "p90 ms", "MB/s"], rows)
    )
    print(text)
    return text


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--shape", default="512,512,300", help="volume size x,y,z (columns, rows, slices); default 512,512,300"
    )
    ap.add_argument("--n-volumes", type=int, default=8, help="number of volumes (default 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method and volume (default 5)")
    ap.add_argument("--formats", default="nii.gz,nii,h5", help="subset of nii.gz,nii,h5 (default all)")
    ap.add_argument("--patches", type=int, default=100, help="random patch positions for .h5 (default 100)")
    ap.add_argument("--patch", type=int, default=96, help="patch edge in voxels (default 96)")
    ap.add_argument(
        "--gzip-level",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="1-9",
        help="gzip level of the .nii.gz files (default 1, nibabel's default; 6 = gzip/pigz default)",
    )
    ap.add_argument("--json", default="bench_io.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    shape = C.parse_shape(args.shape)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if args.repeats < 1 or args.n_volumes < 1:
        ap.error("--repeats and --n-volumes must be >= 1")

    C.quiet()
    import medstack  # noqa: F401  (import errors surface before data generation)

    nbytes = int(np.prod(shape)) * 2
    print(f"bench_io: {args.n_volumes} volumes of {shape[0]}x{shape[1]}x{shape[2]} int16 "
          f"({nbytes / C.MB:.1f} MB each uncompressed), median of {args.repeats} runs per volume; "
          f"warm page cache; {os.cpu_count()} CPUs")  # fmt: skip
    files = ensure_data(shape, args.n_volumes, args.gzip_level)
    ratio = np.mean([f["nii_bytes"] / f["gz_bytes"] for f in files])
    print(f"data: benchmarks/_data/io/{{nii,gz{args.gzip_level}}}, written with {files[0]['gz_writer']}; "
          f"gzip ratio {ratio:.2f}x")  # fmt: skip
    print("MB/s = uncompressed voxel MB (1e6 B) per second; 'vs medstack' = time / medstack.load time with the "
          "same output dtype\n(int rows vs medstack.load, float rows vs medstack.load(dtype=float32), floors vs "
          "medstack.load); > 1 means slower than medstack; user s / sys s = median process CPU time (all\n"
          "threads) in user space / in the kernel (page faults, transparent-huge-page compaction, reads)")  # fmt: skip

    results = {"config": {"shape_xyz": list(shape), "n_volumes": args.n_volumes, "repeats": args.repeats,
                          "page_cache": "warm", "gzip_ratio": float(ratio), "gzip_level": args.gzip_level,
                          "writer": files[0]["gz_writer"]},
               "environment": C.environment(), "formats": {}, "goals": {}}  # fmt: skip
    tables, goals = [], []

    if "nii.gz" in formats:
        print("\ntiming .nii.gz ...")
        paths = [f["gz"] for f in files]
        warm_cache(paths)
        res = summarise(time_methods(methods_gz(), paths, args.repeats), nbytes)
        results["formats"]["nii.gz"] = res
        tables.append(print_table(".nii.gz", res))
        ms32 = res["medstack.load(dtype=float32)"]["s_per_volume"]
        ms = res["medstack.load"]["s_per_volume"]
        sitk32 = res["SimpleITK ReadImage(sitkFloat32)"]["s_per_volume"]
        nib64 = res["nibabel get_fdata() [default]"]["s_per_volume"]
        g = results["goals"]
        g["medstack_f32_over_sitk_f32"] = ms32 / sitk32
        g["nibabel_default_over_medstack"] = nib64 / ms
        g["nibabel_default_over_medstack_f32"] = nib64 / ms32
        g["python_gzip_over_isal"] = (res["floor: Python gzip.decompress"]["s_per_volume"]
                                      / res["floor: isal igzip.decompress"]["s_per_volume"])  # fmt: skip
        g["medstack_over_isal_floor"] = ms / res["floor: isal igzip.decompress"]["s_per_volume"]
        goals += [
            f"goal: medstack float32 / SimpleITK float32 <= 1.0: measured {g['medstack_f32_over_sitk_f32']:.2f}",
            f"medstack vs nibabel default (get_fdata, float64): {g['nibabel_default_over_medstack']:.2f} x faster "
            f"(medstack.load, int16; goal >= 2); {g['nibabel_default_over_medstack_f32']:.2f} x with dtype=float32",
            f".nii.gz medstack.load / isal decompress floor: {g['medstack_over_isal_floor']:.2f}; "
            f"Python gzip / isal decoder: {g['python_gzip_over_isal']:.2f} x",
        ]

    if "nii" in formats:
        print("\ntiming .nii ...")
        paths = [f["nii"] for f in files]
        warm_cache(paths)
        res = summarise(time_methods(methods_nii(files[0]["nii_bytes"]), paths, args.repeats), nbytes)
        results["formats"]["nii"] = res
        tables.append(print_table(".nii (mmap rows touch all data with a full copy: np.array(x))", res))
        ms = res["medstack.load"]["s_per_volume"]
        g = results["goals"]
        g["nii_medstack_over_memmap_floor"] = ms / res["floor: np.memmap + copy"]["s_per_volume"]
        g["nii_medstack_over_readinto_prealloc"] = ms / res["floor: readinto preallocated"]["s_per_volume"]
        g["nii_medstack_over_readinto_new"] = ms / res["floor: readinto new np.empty"]["s_per_volume"]
        goals += [
            f".nii medstack / floor: {g['nii_medstack_over_memmap_floor']:.2f} (goal <= 1.2; floor = np.memmap + "
            f"copy); vs readinto new array {g['nii_medstack_over_readinto_new']:.2f}, vs readinto preallocated "
            f"{g['nii_medstack_over_readinto_prealloc']:.2f}",
        ]

    if "h5" in formats:
        print("\ntiming .h5 ...")
        r = bench_h5(files, shape, args.patches, max(args.repeats, 3), args.patch, seed=1234)
        results["formats"]["h5"] = r
        tables.append(print_h5(r))
        ps = "x".join(map(str, r["patch_shape"]))
        results["goals"]["patch_ms"] = r["patch_warm_handle"]["median_ms"]
        goals += [
            f"{ps} patch: {r['patch_warm_handle']['median_ms']:.2f} ms (goal < 10 ms; one open lazy Volume, "
            f"median of {r['n_patches']}); {r['patch_new_handle']['median_ms']:.2f} ms with a new "
            "medstack.load(lazy=True) per patch",
        ]

    print("\n" + "\n".join(goals))
    path = C.write_json(args.json, results)
    print(f"\nwrote {path.relative_to(C.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
