"""HDF5 volume-file layout: which chunk shape and compression give the fastest random patch reads.

For one CT-like int16 volume (default 512x512x300, the same content as bench_io's volume 0, generated
in memory from a seeded rng), writes a medstack HDF5 file per layout with
``medstack.io.store.write_h5(vol, path, chunks=(cd, ch, cw) or None, compression=...)``:

- chunk edges 32^3, 48^3, 64^3, 96^3, 128^3, whole slices ``(1, H, W)``, and contiguous (no chunks);
- compression None, lzf, gzip level 1 (HDF5 filters need chunks, so contiguous is uncompressed only);

and measures write time (including the fsync of medstack's atomic write), file size, the median time
of random 96^3 patch reads through ``medstack.load(path, lazy=True).data[:, z:z+96, y:y+96, x:x+96]``
(the same seeded positions for every layout; one open lazy Volume per pass, first read untimed), and
the whole-volume read ``medstack.load(path)``. Layouts are measured interleaved (every layout once per
repeat, then the next repeat) on a warm page cache, so drift on a shared machine hits them alike.

Usage::

    python benchmarks/bench_store.py                                          # full (minutes)
    python benchmarks/bench_store.py --shape 128,128,64 --patch 32 --repeats 2   # quick (seconds)

Prints a table and a recommended default; writes ``benchmarks/results/bench_store.json``.

Measured (512x512x300 int16, 2-CPU shared VM, warm page cache; medians of 64 positions x 3 passes)::

    chunks (D,H,W)  compression  file MB  patch ms  p90 ms  whole s
    32^3            none           167.9      1.03    1.13    0.084
    48^3            none           187.4      0.95    1.09    0.067
    64^3            none           167.8      1.00    1.42    0.061
    96^3            none           254.8      1.41    1.63    0.064
    128^3           none           201.3      2.11    4.36    0.085
    1x512x512       none           157.3      4.79    5.99    0.049
    contiguous      none           157.3      1.36    1.55    0.035
    32^3            lzf             92.4     12.35   12.75    0.459
    64^3            lzf             94.3     18.86   35.89    0.457
    64^3            gzip1           62.6     19.26   35.62    0.650

32^3, 48^3 and 64^3 tie on patch reads (run-to-run noise ~15%); 64^3 divides 512 (48^3 grows the file
12% with whole edge chunks) and reads whole volumes fastest of the three, hence ``DEFAULT_CHUNK``.
Compression costs 12-19x on patch reads (over the 10 ms goal) for a 0.37-0.56x file.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

CHUNK_CHOICES = {"32": 32, "48": 48, "64": 64, "96": 96, "128": 128, "slice": "slice", "none": None}
COMPRESSIONS = {"none": (None, None), "lzf": ("lzf", None), "gzip1": ("gzip", 1)}


def chunk_arg(choice, dhw):
    """The ``chunks=`` argument of write_h5 for a chunk choice (edges along D, H, W)."""
    if choice is None:
        return None
    if choice == "slice":
        return (1, dhw[1], dhw[2])
    return (choice, choice, choice)


def chunk_label(choice, dhw) -> str:
    if choice is None:
        return "contiguous"
    if choice == "slice":
        return f"1x{dhw[1]}x{dhw[2]} (slices)"
    return f"{choice}^3"


def amplification(chunks, starts, p, dhw) -> float:
    """Mean (voxels in the chunks a patch touches) / (voxels in the patch); None when contiguous."""
    if chunks is None:
        return None
    c = np.asarray(chunks[-3:])
    s = np.asarray(starts)
    first, last = s // c, (s + np.asarray(p) - 1) // c
    touched = np.prod((last - first + 1) * c, axis=1)
    return float(np.mean(touched) / np.prod(p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="512,512,300", help="volume size x,y,z (columns, rows, slices)")
    ap.add_argument("--patch", type=int, default=96, help="patch edge in voxels (default 96)")
    ap.add_argument("--patches", type=int, default=64, help="random patch positions per pass (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="passes over all layouts (default 3)")
    ap.add_argument("--chunks", default="32,48,64,96,128,slice,none",
                    help="subset of 32,48,64,96,128,slice,none (default all)")  # fmt: skip
    ap.add_argument("--compression", default="none,lzf,gzip1", help="subset of none,lzf,gzip1 (default all)")
    ap.add_argument("--keep", action="store_true", help="keep the .h5 files in benchmarks/_data/store")
    ap.add_argument("--json", default="bench_store.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    shape = C.parse_shape(args.shape)
    try:
        chunk_choices = [CHUNK_CHOICES[c.strip()] for c in args.chunks.split(",") if c.strip()]
        compressions = [c.strip() for c in args.compression.split(",") if c.strip()]
        [COMPRESSIONS[c] for c in compressions]
    except KeyError as e:
        ap.error(f"unknown choice {e}")

    C.quiet()
    import medstack
    from medstack.io import store

    nx, ny, nz = shape
    dhw = (nz, ny, nx)
    p = tuple(min(args.patch, s) for s in dhw)
    nbytes = int(np.prod(dhw)) * 2
    patch_bytes = int(np.prod(p)) * 2
    print(f"bench_store: {nx}x{ny}x{nz} int16 CT-like volume ({nbytes / C.MB:.1f} MB); {'x'.join(map(str, p))} "
          f"patches at {args.patches} seeded random positions x {args.repeats} passes; warm page cache; "
          f"{__import__('os').cpu_count()} CPUs; medstack DEFAULT_CHUNK = {store.DEFAULT_CHUNK}")  # fmt: skip

    t0 = time.perf_counter()
    vol = medstack.Volume(C.ct_like_volume(shape, seed=0)[None], C.ct_affine(shape))
    print(f"generated the volume in {time.perf_counter() - t0:.1f} s (seed 0, same content as bench_io volume 0)")
    rng = np.random.default_rng(1234)
    starts = np.stack([rng.integers(0, s - q + 1, args.patches) for s, q in zip(dhw, p)], axis=1)

    folder = C.DATA / "store"
    folder.mkdir(parents=True, exist_ok=True)
    layouts = []
    for choice in chunk_choices:
        for comp in compressions:
            if choice is None and comp != "none":
                continue  # HDF5 filters need a chunked dataset
            name = f"{chunk_label(choice, dhw).split(' ')[0].replace('^3', 'cube')}_{comp}"
            path = folder / f"ct_{nx}x{ny}x{nz}_{name}.h5"
            compression, opts = COMPRESSIONS[comp]
            t0 = time.perf_counter()
            store.write_h5(vol, path, overwrite=True, chunks=chunk_arg(choice, dhw), compression=compression,
                           compression_opts=opts)  # fmt: skip
            t_write = time.perf_counter() - t0
            lazy = medstack.load(path, lazy=True)
            chunks = lazy.data.chunks
            lazy.data.close()
            layouts.append({
                "chunks_label": chunk_label(choice, dhw), "chunks": list(chunks) if chunks else None,
                "compression": comp, "path": path, "file_MB": path.stat().st_size / C.MB, "write_s": t_write,
                "amplification": amplification(chunks, starts, p, dhw), "patch_s": [], "whole_s": [],
            })  # fmt: skip
            print(f"  wrote {path.name}: {path.stat().st_size / C.MB:.1f} MB in {t_write:.2f} s")
    del vol
    gc.collect()

    for rep in range(args.repeats):
        for lay in layouts:
            with open(lay["path"], "rb") as f:  # warm the page cache (the file was just written anyway)
                while f.read(1 << 24):
                    pass
            lazy = medstack.load(lay["path"], lazy=True)
            z, y, x = starts[-1]
            lazy.data[:, z : z + p[0], y : y + p[1], x : x + p[2]]  # untimed first read: open, index
            for z, y, x in starts:
                t0 = time.perf_counter()
                a = lazy.data[:, z : z + p[0], y : y + p[1], x : x + p[2]]
                lay["patch_s"].append(time.perf_counter() - t0)
                if a.shape[1:] != p:
                    raise RuntimeError(f"{lay['path']}: patch read returned {a.shape}, expected (1, *{p})")
            lazy.data.close()
            del lazy
            t0 = time.perf_counter()
            a = medstack.load(lay["path"]).data
            lay["whole_s"].append(time.perf_counter() - t0)
            del a
            gc.collect()
        print(f"  pass {rep + 1}/{args.repeats} done")

    rows, out = [], []
    for lay in layouts:
        ps = np.asarray(lay["patch_s"]) * 1e3
        r = {k: v for k, v in lay.items() if k not in ("patch_s", "whole_s", "path")}
        r.update(file=lay["path"].name, patch_median_ms=float(np.median(ps)), patch_p90_ms=float(np.percentile(ps, 90)),
                 patch_MB_per_s=patch_bytes / C.MB / (np.median(ps) / 1e3), whole_s=C.median(lay["whole_s"]),
                 whole_MB_per_s=nbytes / C.MB / C.median(lay["whole_s"]), n_patch_reads=len(ps))  # fmt: skip
        out.append(r)
        rows.append((r["chunks_label"], r["compression"], f"{r['file_MB']:.1f}", f"{r['write_s']:.2f}",
                     f"{r['patch_median_ms']:.2f}", f"{r['patch_p90_ms']:.2f}",
                     f"{r['amplification']:.2f}" if r["chunks"] else "-",
                     f"{r['whole_s']:.3f}", f"{r['whole_MB_per_s']:.0f}"))  # fmt: skip
    headers = ["chunks (D,H,W)", "compression", "file MB", "write s", "patch ms", "p90 ms", "read ampl.",
               "whole s", "whole MB/s"]  # fmt: skip
    print(f"\n{'x'.join(map(str, p))} patch reads (median over {args.patches} positions x {args.repeats} passes); "
          "'read ampl.' = voxels in the chunks a patch touches / patch voxels")  # fmt: skip
    print(C.format_table(headers, rows, ["<", "<", ">", ">", ">", ">", ">", ">", ">"]))
    print("(file MB: edge chunks are stored whole, so edges that do not divide 512 or 300 grow the file)")

    rec = recommend(out)
    print("\n" + "\n".join(rec["lines"]))
    path = C.write_json(args.json, {
        "config": {"shape_xyz": list(shape), "patch": list(p), "n_patches": args.patches, "repeats": args.repeats,
                   "patch_seed": 1234, "page_cache": "warm", "medstack_DEFAULT_CHUNK": list(store.DEFAULT_CHUNK)},
        "environment": C.environment(), "layouts": out, "recommendation": rec,
    })  # fmt: skip
    print(f"\nwrote {path.relative_to(C.ROOT)}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def recommend(rows) -> dict:
    """Default chunk: among uncompressed chunked layouts within 25% of the fastest patch read (run-to-run
    noise on a shared machine is about 15%), the one with
    the smallest file (edge chunks are stored whole), then the fastest whole-volume read. Compression: the
    compressed layout with the fastest patch read, for when file size matters."""
    plain = [r for r in rows if r["compression"] == "none" and r["chunks"]]
    lines = []
    rec = {}
    if plain:
        best = min(r["patch_median_ms"] for r in plain)
        near = [r for r in plain if r["patch_median_ms"] <= 1.25 * best]
        pick = min(near, key=lambda r: (round(r["file_MB"] / min(x["file_MB"] for x in near), 2), r["whole_s"]))
        rec["chunks"] = pick["chunks"]
        rec["chunks_label"] = pick["chunks_label"]
        lines.append(
            f"recommended default: chunks {pick['chunks_label']}, no compression: patch {pick['patch_median_ms']:.2f} ms "
            f"(fastest uncompressed {best:.2f} ms), whole volume {pick['whole_s']:.3f} s, {pick['file_MB']:.0f} MB "
            f"(smallest file among those within 25% of the fastest patch read)"
        )
        others = ", ".join(f"{r['chunks_label']} {r['patch_median_ms']:.2f} ms / {r['file_MB']:.0f} MB"
                           for r in near if r is not pick)  # fmt: skip
        if others:
            lines.append(f"  also within 25% of the fastest patch read: {others}")
    comp = [r for r in rows if r["compression"] != "none"]
    if comp and plain:
        c = min(comp, key=lambda r: r["patch_median_ms"])
        same = next((r for r in plain if r["chunks"] == c["chunks"]), None)
        rec["compressed"] = {"chunks_label": c["chunks_label"], "compression": c["compression"]}
        extra = ""
        if same:
            extra = (f" ({c['patch_median_ms'] / same['patch_median_ms']:.1f}x the uncompressed patch time, "
                     f"{c['file_MB'] / same['file_MB']:.2f}x the size)")  # fmt: skip
        lines.append(
            f"if size matters: chunks {c['chunks_label']} + {c['compression']}: patch {c['patch_median_ms']:.2f} ms, "
            f"{c['file_MB']:.0f} MB{extra}"
        )
    rec["lines"] = lines
    return rec


if __name__ == "__main__":
    sys.exit(main())
