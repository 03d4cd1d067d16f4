"""Patch loaders under a launch-bound training step: threads vs worker processes vs DataLoader vs MONAI.

Data: ``--cases`` CT-like int16 cases (``_common.ct_like_volume``) with a uint8 label (3 classes from HU
thresholds), prepared once into a medstack store (``medstack.data.prepare``), cached in
``benchmarks/_data/loader/``. Patches ``--patch``^3, batch 4, ``LabelSampler(pos=1, neg=1)``.

Methods (all in this process, one after another; files warm in the page cache):

- ``PatchLoader (N threads)``: batches assembled by N threads of this process (``medstack.data.PatchLoader``).
- ``ProcessPatchLoader (N workers)``: N worker processes write batches into shared-memory slots
  (``medstack.data.workers.ProcessPatchLoader``).
- ``DataLoader + PatchDataset (2 workers)``: ``medstack.data.make_loader(ds, batch_size=4, num_workers=2)``
  (persistent workers, ``prefetch_factor=4``; items pickled back through shared memory by torch).
- ``MONAI CacheDataset + RandCropByPosNegLabeld``: the volumes cached in RAM (channel-first arrays, int16 /
  uint8 as stored: no float conversion, which would favour medstack), ``RandCropByPosNegLabeld(pos=1, neg=1,
  num_samples=4)``, ``monai.data.DataLoader(batch_size=1, num_workers=2)``: 4 crops = one batch of 4.

Each is measured (a) alone: patches/s over ``--seconds`` after ``--warmup`` batches; and (b) with a stand-in
for a launch-bound training step in the main thread: a Python loop of tiny torch ops (``--step-ms`` ms alone,
calibrated at start), one step per batch. Reported: patches/s, the stall fraction (time in ``next(loader)`` /
total), the step slowdown (mean step time with the loader running / step alone) and, from the run alone, the
CPU the training process itself (all its threads) spends per batch: the work that competes with the step for
its interpreter lock (reader threads) or that it does itself (unpickling, collating). The step has no GPU: on a
GPU server the step's launches also wait for the GPU, and the figures to take there are the stall fraction
and step time of a real model (see the report).

Usage::

    python benchmarks/bench_loader.py --quick     # < 1 min on 2 cores
    python benchmarks/bench_loader.py             # 8 cases 160x192x192, patch 96
    python benchmarks/bench_loader.py --unet --workers 4,8,15 --threads 2,4,8   # on a GPU server

Writes ``benchmarks/results/bench_loader.json``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

BATCH = 4


def make_store(cases: int, shape_xyz, root: Path) -> Path:
    import medstack
    from medstack.data import prepare

    tag = f"c{cases}_{'x'.join(map(str, shape_xyz))}_v{C.GENERATOR_VERSION}"
    out = root / tag
    if (out / "manifest.json").exists():
        return out
    items = []
    for k in range(cases):
        img = C.ct_like_volume(shape_xyz, seed=100 + k)
        lab = np.zeros(img.shape, np.uint8)
        lab[(img > 0) & (img < 200)] = 1
        lab[img >= 200] = 2
        aff = C.ct_affine(shape_xyz)
        items.append({"id": f"case{k:03d}", "image": medstack.Volume(img[None], aff),
                      "label": medstack.Volume(lab[None], aff)})  # fmt: skip
    prepare(items, out, workers=1)
    return out


def make_step(step_ms: float):
    """A launch-bound stand-in for a training step: many tiny torch ops from Python (each a dispatcher call that
    holds the GIL, like a kernel launch), calibrated to ``step_ms`` alone."""
    import torch

    x = torch.ones(64)

    def run(n):
        y = x
        for _ in range(n):
            y = y * 1.0001 + 0.0001
        return y

    run(200)
    t0 = time.perf_counter()
    run(2000)
    per = (time.perf_counter() - t0) / 2000
    n = max(1, int(step_ms / 1e3 / per))
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        run(n)
        times.append(time.perf_counter() - t0)
    return (lambda batch=None: run(n)), C.median(times)


def make_unet_step(device: str, patch: int, small: bool):
    """A real training step: MONAI 3D UNet, bf16 autocast, AdamW, cross-entropy, on batches already on
    ``device`` (from DevicePrefetcher). Returns (step, pure step s on a resident batch, sync)."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import UNet

    dev = torch.device(device)
    chans = (4, 8, 16) if small else (16, 32, 64, 128, 256)
    model = UNet(3, 1, 3, channels=chans, strides=(2,) * (len(chans) - 1), num_res_units=2).to(dev)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(batch):
        x = batch["image"].to(dev, non_blocking=True).float()
        y = batch["label"].to(dev, non_blocking=True)[:, 0].long()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fixed = {"image": torch.zeros((BATCH, 1, patch, patch, patch), device=dev),
             "label": torch.zeros((BATCH, 1, patch, patch, patch), dtype=torch.uint8, device=dev)}  # fmt: skip
    for _ in range(3):
        step(fixed)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        step(fixed)
    sync()
    return step, (time.perf_counter() - t0) / 10, sync


def batches_forever(loader, set_epoch):
    for epoch in itertools.count():
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader


def n_patches(batch) -> int:
    if isinstance(batch, list | tuple):  # MONAI list_data_collate of num_samples crops
        return sum(n_patches(b) for b in batch)
    return int(batch["image"].shape[0])


def measure(make, seconds: float, warmup: int, step=None, device=None, sync=None):
    """(patches/s, stall fraction, mean step s, training-process CPU s per batch) of one loader; ``step(batch)``
    run once per batch when given; with ``device``, batches go through ``DevicePrefetcher``."""
    loader, set_epoch, close = make()
    if device is not None:
        from medstack.data import DevicePrefetcher

        loader = DevicePrefetcher(loader, device)
    try:
        it = batches_forever(loader, set_epoch)
        for _ in range(warmup):
            next(it)
        patches, waited, stepped, steps = 0, 0.0, 0.0, 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        while True:
            t1 = time.perf_counter()
            b = next(it)
            t2 = time.perf_counter()
            waited += t2 - t1
            patches += n_patches(b)
            if step is not None:
                step(b)
                stepped += time.perf_counter() - t2
                steps += 1
            del b
            if time.perf_counter() - t0 >= seconds:
                break
        if sync is not None:
            sync()
        total = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 - stepped  # this process's CPU (all its threads) outside the step
        it.close()
    finally:
        close()
    return patches / total, waited / total, (stepped / steps if steps else float("nan")), cpu / patches * BATCH


def methods(store: Path, patch: int, spv: int, threads, workers, monai_ok: bool):
    import warnings

    from medstack.data import PatchDataset, PatchLoader, make_loader
    from medstack.data.workers import ProcessPatchLoader
    from medstack.patches import LabelSampler

    def dataset():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PatchDataset(store, LabelSampler(patch, pos=1, neg=1), samples_per_volume=spv, seed=0)

    out = {}
    for n in threads:
        def make(n=n):
            loader = PatchLoader(dataset(), batch_size=BATCH, num_threads=n, pin_memory=False)
            return loader, loader.set_epoch, loader.close
        out[f"PatchLoader ({n} thread{'s' if n > 1 else ''})"] = make
    for n in workers:
        def make(n=n):
            loader = ProcessPatchLoader(dataset(), batch_size=BATCH, workers=n, pin_memory=False)
            return loader, loader.set_epoch, loader.close
        out[f"ProcessPatchLoader ({n} worker{'s' if n > 1 else ''})"] = make

    def make_dl():
        ds = dataset()
        loader = make_loader(ds, batch_size=BATCH, num_workers=2)
        return loader, ds.set_epoch, lambda: None
    out["DataLoader + PatchDataset (2 workers)"] = make_dl
    if monai_ok:
        def make_monai():
            import h5py
            from monai.data import CacheDataset, DataLoader
            from monai.transforms import Compose, RandCropByPosNegLabeld

            from medstack.data import CaseStore

            cs = CaseStore(store)
            data = []
            for p in cs.paths:
                with h5py.File(p, "r") as f:
                    data.append({"image": f["volumes/image/data"][()], "label": f["volumes/label/data"][()]})
            xf = Compose([RandCropByPosNegLabeld(["image", "label"], "label", (patch,) * 3, pos=1, neg=1,
                                                 num_samples=BATCH)])  # fmt: skip
            reps = max(1, spv // BATCH)  # one item = 4 crops of a case; as many patches per epoch as the others
            ds = CacheDataset(data * reps, transform=xf, cache_rate=1.0, num_workers=1, progress=False,
                              copy_cache=False)  # fmt: skip
            loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=2, persistent_workers=True,
                                prefetch_factor=4)  # fmt: skip
            return loader, None, lambda: None
        out["MONAI CacheDataset + RandCropByPosNegLabeld (2 workers)"] = make_monai
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases, patch 64, short runs (< 1 min, 2 cores)")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", default="192,192,160", help="x,y,z voxels per case")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=15.0)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--unet", action="store_true", help="the step is a real MONAI UNet training step (bf16) on "
                    "--device, batches through DevicePrefetcher: the figures to take on a GPU server")
    ap.add_argument("--device", default=None, help="for --unet (default: cuda when available, else cpu)")
    args = ap.parse_args(argv)
    if args.quick:
        args.cases, args.shape, args.patch, args.seconds, args.warmup = 4, "128,128,96", 64, 1.5, 2
    C.quiet()
    try:
        import monai  # noqa: F401

        monai_ok = not args.no_monai
    except ImportError:
        monai_ok = False
    store = make_store(args.cases, C.parse_shape(args.shape), C.DATA / "loader")
    device = sync = None
    if args.unet:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        step, step_alone, sync = make_unet_step(device, args.patch, small=device == "cpu")
        what = f"MONAI UNet bf16 on {device}" + (" (small, CPU smoke test)" if device == "cpu" else "")
    else:
        step, step_alone = make_step(args.step_ms)
        what = "tiny torch ops, no GPU"
    spv = 64
    threads = [int(v) for v in args.threads.split(",") if v]
    workers = [int(v) for v in args.workers.split(",") if v]
    busy = C.other_cores(0.5)
    print(f"other processes keep {busy:.1f} of {os.cpu_count()} cores busy (shared machine: figures shift with it)")
    print(f"{os.cpu_count()} cores; {args.cases} cases {args.shape} (x,y,z) int16 + uint8 label; patch "
          f"{args.patch}^3, batch {BATCH}; step alone {step_alone * 1e3:.1f} ms ({what})", flush=True)  # fmt: skip
    rows, results = [], {}
    for name, make in methods(store, args.patch, spv, threads, workers, monai_ok).items():
        alone, _, _, cpu = measure(make, args.seconds, args.warmup)
        loaded, stall, step_t, _ = measure(make, args.seconds, args.warmup, step, device, sync)
        results[name] = {"alone_patches_s": alone, "with_step_patches_s": loaded, "stall": stall,
                         "step_s": step_t, "step_alone_s": step_alone, "main_cpu_s_per_batch": cpu}  # fmt: skip
        print(f"  {name}: {alone:.0f} patches/s alone, {loaded:.0f} with the step, stall {stall:.0%}", flush=True)
    base = results[next(iter(results))]["alone_patches_s"]
    for name, r in results.items():
        rows.append([name, f"{r['alone_patches_s']:.0f}", f"{r['alone_patches_s'] / base:.2f}x",
                     f"{r['with_step_patches_s']:.0f}", f"{r['stall']:.0%}", f"{r['step_s'] * 1e3:.1f}",
                     f"{r['step_s'] / step_alone:.2f}x", f"{r['main_cpu_s_per_batch'] * 1e3:.2f}"])  # fmt: skip
    print()
    print(C.format_table(["method", "patches/s alone", "vs first", "patches/s + step", "stall", "step ms",
                          "step slowdown", "train-proc CPU ms/batch"], rows))  # fmt: skip
    print(f"\nstep alone: {step_alone * 1e3:.1f} ms; ideal with the step (no stall): {BATCH / step_alone:.0f} patches/s")
    C.write_json("bench_loader.json", {"environment": C.environment(), "args": vars(args), "other_cores_busy": busy,
                                       "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
