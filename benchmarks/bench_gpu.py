"""The GPU server path, medstack and MONAI side by side in one run (CUDA when available, else CPU).

Rows (sizes of the issue by default; tiny ones with ``--quick``):

1. training step: MONAI ``UNet`` (channels 16-256, 4 levels, 2 res units; quick 8-32), bf16 autocast on CUDA
   (fp32 on CPU), Adam, cross-entropy, batch 4 of 96^3 (quick 24^3) from synthetic int16 CT cases
   (``medstack.testing.phantom_pair``, 16 cases 192x256x256 (D, H, W); quick 4 of 40x48x48) prepared with
   ``medstack.data.prepare`` into a temporary folder: (a) pure step on a fixed batch on the device,
   (b) ``PatchLoader`` (threads) + ``DevicePrefetcher`` + ``BatchAugment``, (c) ``ProcessPatchLoader(workers=N)``
   + ``DevicePrefetcher`` + ``BatchAugment`` (when importable), (d) MONAI ``CacheDataset`` + ``RandCropByPosNegLabeld``
   (pos 1, neg 1, 4 samples) + ``RandAffined`` + ``DataLoader(workers)``. ms/step, stall = time the loop waited
   for its next batch (on the device, augmented) / total, patches/s; ratio = MONAI ms / medstack ms.
2. loader alone (no model): patches/s of ``PatchLoader`` with 2/4/8/16 threads and ``ProcessPatchLoader`` with
   2/4/8/16 workers (capped at the cores; quick 1-2).
3. resample a float32 (0.7, 0.7, 2.5) mm volume 512x512x300 (x, y, z) to 1 mm on the device: medstack
   ``resample(method="auto")``, bare ``F.interpolate`` (trilinear, same output size: the floor), MONAI ``Spacing``;
   4. the same for a uint8 label, nearest (medstack vs ``F.interpolate(mode="nearest-exact")``).
5. sliding-window inference of the row-1 model (eval, same autocast) over a float32 192x384x384 volume on the
   device, 96^3, overlap 0.5, gaussian, batch 4: medstack vs ``monai.inferers.sliding_window_inference``; time,
   peak device memory (``torch.cuda.max_memory_allocated`` above the start; RSS growth on CPU), max |difference|.
6. ``BatchAugment`` (rotation 10 deg, zoom 0.9-1.1, Gaussian noise 0-0.05, brightness x0.9-1.1) of a batch
   4 x 2 ch x 96^3 + label vs MONAI per sample (``RandAffined`` on the device + ``RandGaussianNoised`` +
   ``RandScaleIntensityd``): samples/s.

Ratios are peer time / medstack time (> 1: medstack faster). Timings on CUDA are bracketed by
``torch.cuda.synchronize()``. A missing optional peer (MONAI, ``ProcessPatchLoader``) gives ``skipped: <reason>``
rows; an error in a row is printed as ``error: ...`` and makes the exit status 1.

Usage::

    python benchmarks/bench_gpu.py            # the issue's sizes (GPU server)
    python benchmarks/bench_gpu.py --quick    # CPU smoke run, < 1 min (CI)

Writes ``benchmarks/results/bench_gpu[_quick].json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SECTIONS = ("1 training step", "2 loader alone", "3 resample f32 linear", "4 resample u8 nearest",
            "5 sliding window", "6 BatchAugment")  # fmt: skip
BATCH = 4

FULL = {"cases": 16, "case_dhw": (192, 256, 256), "patch": 96, "channels": (16, 32, 64, 128, 256), "res_units": 2,
        "warmup": 10, "steps": 60, "threads": 4, "workers": 8, "monai_workers": 8, "loader_counts": (2, 4, 8, 16),
        "loader_batches": 100, "resample_xyz": (512, 512, 300), "repeats": 10, "swi_dhw": (192, 384, 384),
        "swi_repeats": 3, "aug_batch": (4, 2), "aug_repeats": 10}  # fmt: skip
QUICK = {"cases": 4, "case_dhw": (40, 48, 48), "patch": 24, "channels": (8, 16, 32), "res_units": 1,
         "warmup": 2, "steps": 5, "threads": 2, "workers": 1, "monai_workers": 1, "loader_counts": (1, 2),
         "loader_batches": 8, "resample_xyz": (64, 64, 40), "repeats": 3, "swi_dhw": (40, 56, 56),
         "swi_repeats": 2, "aug_batch": (2, 1), "aug_repeats": 3}  # fmt: skip


class Skip(Exception):
    """A row that cannot run here (an optional peer missing)."""


# -- helpers ----------------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(fn, device, repeats: int, warmup: int = 1):
    """(median seconds, last result) of ``fn()``, synchronised on CUDA."""
    for _ in range(warmup):
        out = fn()
        del out
    times = []
    out = None
    for _ in range(repeats):
        del out
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return C.median(times), out


def rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak device memory above the start (CUDA) or peak RSS growth (CPU, sampled every 2 ms), in MB."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = rss_kb() * 1024
            self._halt = threading.Event()

            def poll():
                while not self._halt.is_set():
                    self.peak = max(self.peak, rss_kb() * 1024)
                    self._halt.wait(0.002)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 1e6
        else:
            self._halt.set()
            self._thread.join()
            self.peak = max(self.peak, rss_kb() * 1024)
            self.mb = (self.peak - self.base) / 1e6


def need_monai():
    try:
        import monai
    except Exception as e:
        raise Skip(f"monai not installed ({type(e).__name__})") from None
    return monai


def process_loader_class():
    try:
        from medstack.data.workers import ProcessPatchLoader
    except Exception as e:
        raise Skip(f"medstack.data.workers.ProcessPatchLoader not importable ({type(e).__name__}: {e})") from None
    return ProcessPatchLoader


def make_model(cfg, device, n_classes: int, in_channels: int = 1):
    need_monai()
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    ch = tuple(cfg["channels"])
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=n_classes, channels=ch,
                strides=(2,) * (len(ch) - 1), num_res_units=cfg["res_units"]).to(device)  # fmt: skip


def autocast(device):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# -- data -------------------------------------------------------------------------------------------------
def _make_case(args):
    from medstack import testing

    i, shape = args
    image, label = testing.phantom_pair(shape, seed=i, kind="ct")
    return f"case{i:02d}", np.asarray(image.data), np.asarray(label.data), np.asarray(image.affine)  # picklable


def make_cases(cfg):
    """[(id, image Volume int16, label Volume uint8)] of synthetic CT phantoms (in parallel processes for the
    full sizes: ~13 s per 192x256x256 case on one core)."""
    jobs = [(i, tuple(cfg["case_dhw"])) for i in range(cfg["cases"])]
    procs = min(len(jobs), os.cpu_count() or 1)
    if int(np.prod(cfg["case_dhw"])) < 1 << 20 or procs < 2:
        made = [_make_case(j) for j in jobs]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:  # no fork after CUDA init
            made = list(pool.map(_make_case, jobs))
    import medstack

    return [(cid, medstack.Volume(im, aff), medstack.Volume(lab, aff)) for cid, im, lab, aff in made]


def prepare_store(cases, folder: Path) -> Path:
    import medstack.data

    store = folder / "store"
    medstack.data.prepare([{"id": cid, "image": im, "label": lab} for cid, im, lab in cases], store, workers=1)
    return store


def patch_dataset(store, cfg, n_patches: int):
    from medstack.data import PatchDataset
    from medstack.patches import LabelSampler

    spv = math.ceil(n_patches / cfg["cases"])
    return PatchDataset(store, LabelSampler(cfg["patch"], pos=1, neg=1), samples_per_volume=spv, seed=0)


def batch_augment():
    from medstack.transforms.gpu import BatchAugment

    return BatchAugment(flip_axes=(), rotation=10.0, scale=(0.9, 1.1), noise_std=(0.0, 0.05),
                        brightness_mult=(0.9, 1.1))  # fmt: skip


# -- 1. training ------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, model, device):
        import torch

        self.model, self.device = model, device
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(self, x, y) -> float:
        import torch.nn.functional as F

        self.model.train()
        with autocast(self.device):
            logits = self.model(x * 1e-3)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())  # waits for the step: the next wait is really time the device idles


def train_loop(trainer, batches, get, warmup: int, steps: int) -> dict:
    """Run ``warmup + steps`` steps pulling from ``batches``; stall = time in next() + get() / total."""
    it = iter(batches)
    wait, t0 = 0.0, None
    for i in range(warmup + steps):
        t_req = time.perf_counter()
        if i == warmup:
            sync(trainer.device)
            t_req = t0 = time.perf_counter()
        x, y = get(next(it))
        if i >= warmup:
            wait += time.perf_counter() - t_req
        trainer.step(x, y)
    sync(trainer.device)
    total = time.perf_counter() - t0
    close = getattr(it, "close", None)
    if close is not None:
        close()
    return {"ms_per_step": 1e3 * total / steps, "stall": wait / total, "patches_per_s": steps * BATCH / total}


def row_training(cfg, device, ctx, out):
    import torch

    cases, store = ctx["cases"], ctx["store"]
    n_classes = int(max(int(np.asarray(lab.data).max()) for _, _, lab in cases)) + 1
    try:
        model = make_model(cfg, device, n_classes)
    except Skip as e:
        for m in (
            "pure step (fixed batch on the device)",
            "medstack PatchLoader + DevicePrefetcher + BatchAugment",
            "medstack ProcessPatchLoader + DevicePrefetcher + BatchAugment",
            "MONAI CacheDataset + DataLoader",
        ):
            out.append({"section": SECTIONS[0], "method": m, "skipped": f"{e} (the model is MONAI's UNet)"})
        return
    ctx["model"], ctx["n_classes"] = model, n_classes
    trainer = Trainer(model, device)
    p, warm, steps = cfg["patch"], cfg["warmup"], cfg["steps"]
    n_needed = (warm + steps + 4 * max(cfg["threads"], cfg["workers"]) + 8) * BATCH
    get_ms = lambda b: (b["image"], b["label"][:, 0].long())  # noqa: E731

    # (a) pure step
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((BATCH, 1, p, p, p), generator=g) * 2000 - 1000).to(device)
    y = torch.randint(0, n_classes, (BATCH, p, p, p), generator=g).to(device)
    pure = train_loop(trainer, iter(lambda: (x, y), None), lambda b: b, warm, steps)
    pure["stall"] = 0.0
    out.append({"section": SECTIONS[0], "method": "pure step (fixed batch on the device)", **pure})
    pure_ms = pure["ms_per_step"]

    def medstack_row(label, make_loader):
        from medstack.data import DevicePrefetcher

        try:
            loader = make_loader(patch_dataset(store, cfg, n_needed))
        except Skip as e:
            out.append({"section": SECTIONS[0], "method": label, "skipped": str(e)})
            return
        try:
            pre = DevicePrefetcher(loader, device, augment=batch_augment(), seed=0)
            res = train_loop(trainer, pre, get_ms, warm, steps)
        finally:
            loader.close()
        res["vs_pure"] = pure_ms / res["ms_per_step"]
        out.append({"section": SECTIONS[0], "method": label, **res})

    from medstack.data import PatchLoader

    medstack_row(f"medstack PatchLoader ({cfg['threads']} threads) + DevicePrefetcher + BatchAugment",
                 lambda ds: PatchLoader(ds, batch_size=BATCH, num_threads=cfg["threads"], seed=0))  # fmt: skip
    medstack_row(f"medstack ProcessPatchLoader (workers={cfg['workers']}) + DevicePrefetcher + BatchAugment",
                 lambda ds: process_loader_class()(ds, batch_size=BATCH, workers=cfg["workers"], seed=0))  # fmt: skip

    # (d) MONAI
    w = cfg["monai_workers"]
    label = f"MONAI CacheDataset + RandCropByPosNegLabeld + RandAffined + DataLoader({w} workers)"
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureTyped, RandAffined, RandCropByPosNegLabeld

    keys = ["image", "label"]
    data = [{"image": np.asarray(im.data), "label": np.asarray(lab.data)} for _, im, lab in cases]
    tf = Compose([EnsureTyped(keys, track_meta=False),
                  RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(p,) * 3, pos=1, neg=1,
                                         num_samples=BATCH),
                  RandAffined(keys, prob=1.0, rotate_range=(math.radians(10),) * 3, scale_range=(0.1,) * 3,
                              mode=("bilinear", "nearest"), padding_mode="zeros")])  # fmt: skip
    tf.set_random_state(seed=0)
    t0 = time.perf_counter()
    ds = CacheDataset(data, tf, progress=False)
    cache_s = time.perf_counter() - t0
    order = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=warm + steps + 4 * w + 8,
                                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    loader = DataLoader(ds, batch_size=1, sampler=order, num_workers=w, persistent_workers=w > 0,
                        pin_memory=device.type == "cuda")  # fmt: skip

    def get_monai(b):
        img = b["image"].as_tensor() if hasattr(b["image"], "as_tensor") else b["image"]
        lab = b["label"].as_tensor() if hasattr(b["label"], "as_tensor") else b["label"]
        return (img.to(device, non_blocking=True).float(), lab.to(device, non_blocking=True)[:, 0].long())

    res = train_loop(trainer, loader, get_monai, warm, steps)
    del loader
    res["vs_pure"] = pure_ms / res["ms_per_step"]
    out.append({"section": SECTIONS[0], "method": label, **res, "note": f"cache built in {cache_s:.1f} s (untimed)"})
    for r in out:
        if r["section"] == SECTIONS[0] and "ms_per_step" in r and not r["method"].startswith(("MONAI", "pure")):
            r["ratio"] = res["ms_per_step"] / r["ms_per_step"]


# -- 2. loader alone ---------------------------------------------------------------------------------------
def row_loader(cfg, device, ctx, out):
    from medstack.data import PatchLoader

    cores = os.cpu_count() or 1
    counts = [n for n in cfg["loader_counts"] if n <= cores] or [1]
    nb = cfg["loader_batches"]
    n_needed = (nb + 2 + 4 * max(counts) + 4) * BATCH

    def measure(make, label):
        try:
            loader = make(patch_dataset(ctx["store"], cfg, n_needed))
        except Skip as e:
            out.append({"section": SECTIONS[1], "method": label, "skipped": str(e)})
            return
        try:
            it = iter(loader)
            for _ in range(2):
                next(it)
            t0 = time.perf_counter()
            patches = 0
            for _ in range(nb):
                b = next(it)
                patches += int(b["image"].shape[0])
                del b
            sec = time.perf_counter() - t0
            it.close()
        finally:
            loader.close()
        out.append({"section": SECTIONS[1], "method": label, "patches_per_s": patches / sec,
                    "ms_per_step": 1e3 * sec / nb})  # fmt: skip

    for n in counts:
        measure(
            lambda ds, n=n: PatchLoader(ds, batch_size=BATCH, num_threads=n, seed=0),
            f"medstack PatchLoader {n} threads",
        )
    for n in counts:
        measure(lambda ds, n=n: process_loader_class()(ds, batch_size=BATCH, workers=n, seed=0),
                f"medstack ProcessPatchLoader {n} workers")  # fmt: skip


# -- 3./4. resample -----------------------------------------------------------------------------------------
def row_resample(cfg, device, ctx, out):
    import torch
    import torch.nn.functional as F

    import medstack
    from medstack.resample import target_grid

    nx, ny, nz = cfg["resample_xyz"]
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.standard_normal((1, nz, ny, nx), dtype=np.float32)).to(device)
    lab = torch.from_numpy(rng.integers(0, 4, (1, nz, ny, nx), dtype=np.uint8)).to(device)
    vol, lvol = medstack.Volume(img, affine), medstack.Volume(lab, affine)
    _, shape = target_grid(vol, spacing=1.0)
    shape = tuple(int(s) for s in shape)
    rep = cfg["repeats"]
    sec = SECTIONS[2]

    t_ms, res = time_op(lambda: medstack.resample(vol, spacing=1.0, mode="linear", method="auto").data, device, rep)
    ms_row = {"section": sec, "method": 'medstack resample(method="auto")', "ms_per_step": 1e3 * t_ms,
              "note": f"-> {tuple(res.shape[1:])} on {res.device}"}  # fmt: skip
    del res
    t_bare, res = time_op(lambda: F.interpolate(img[None], size=shape, mode="trilinear", align_corners=False),
                          device, rep)  # fmt: skip
    del res
    out.append(ms_row)
    out.append({"section": sec, "method": "bare F.interpolate trilinear (floor)", "ms_per_step": 1e3 * t_bare,
                "ratio": t_bare / t_ms, "note": "ratio = floor / medstack"})  # fmt: skip
    ms_row["x_floor"] = t_ms / t_bare
    try:
        need_monai()
        from monai.data import MetaTensor
        from monai.transforms import Spacing

        mt = MetaTensor(img.permute(0, 3, 2, 1).contiguous(), affine=torch.as_tensor(affine))  # (C, x, y, z)
        spacing = Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear")
        t_mo, res = time_op(lambda: spacing(mt), device, rep)
        out.append({"section": sec, "method": "MONAI Spacing(pixdim=1, bilinear)", "ms_per_step": 1e3 * t_mo,
                    "note": f"-> {tuple(res.shape[1:])[::-1]} (D,H,W)"})  # fmt: skip
        ms_row["ratio"] = t_mo / t_ms
        del res
    except Skip as e:
        out.append({"section": sec, "method": "MONAI Spacing", "skipped": str(e)})

    sec = SECTIONS[3]
    t_ms, res = time_op(lambda: medstack.resample(lvol, spacing=1.0, mode="nearest", method="auto").data, device, rep)
    dev = getattr(res, "device", "host (NumPy)")
    row = {"section": sec, "method": 'medstack resample(mode="nearest")', "ms_per_step": 1e3 * t_ms,
           "note": f"-> {tuple(res.shape[1:])} {C.dtype_of(res)} on {dev}"}  # fmt: skip
    del res
    t_bare, res = time_op(lambda: F.interpolate(lab[None], size=shape, mode="nearest-exact"), device, rep)
    del res
    row["x_floor"] = t_ms / t_bare
    row["on_device"] = str(dev) == str(img.device) or (device.type == "cpu" and str(dev) == "cpu")
    out.append(row)
    out.append({"section": sec, "method": "bare F.interpolate nearest-exact uint8 (floor)", "ms_per_step": 1e3 * t_bare,
                "ratio": t_bare / t_ms, "note": "ratio = floor / medstack"})  # fmt: skip


# -- 5. sliding window ---------------------------------------------------------------------------------------
def row_sliding(cfg, device, ctx, out):
    import torch

    import medstack
    from medstack.patches import sliding_window_inference as ms_swi

    sec = SECTIONS[4]
    model = ctx.get("model")
    if model is None:
        reason = "monai not installed (the model is MONAI's UNet)"
        out.append({"section": sec, "method": "medstack sliding_window_inference", "skipped": reason})
        out.append({"section": sec, "method": "MONAI sliding_window_inference", "skipped": reason})
        return
    model.eval()

    def predictor(x):
        with torch.no_grad(), autocast(device):
            return model(x * 1e-3).float()

    p, rep = cfg["patch"], cfg["swi_repeats"]
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(-1000, 1000, (1, *cfg["swi_dhw"])).astype(np.float32)).to(device)
    vol = medstack.Volume(x, np.eye(4))

    def run_ms():
        return ms_swi(vol, predictor, p, overlap=0.5, mode="gaussian", batch_size=BATCH).data

    with PeakMemory(device) as mem:
        t_ms, res_ms = time_op(run_ms, device, rep)
    ms_row = {"section": sec, "method": "medstack sliding_window_inference", "ms_per_step": 1e3 * t_ms,
              "peak_mb": mem.mb, "note": f"output on {getattr(res_ms, 'device', 'host (NumPy)')}"}  # fmt: skip
    out.append(ms_row)
    res_ms = torch.as_tensor(np.asarray(res_ms)) if not torch.is_tensor(res_ms) else res_ms
    try:
        need_monai()
        from monai.inferers import sliding_window_inference as monai_swi

        xb = x[None]

        def run_monai():
            with torch.no_grad():
                return monai_swi(xb, (p,) * 3, BATCH, predictor, overlap=0.5, mode="gaussian")

        res_ms_cpu = res_ms.float().cpu()
        del res_ms
        with PeakMemory(device) as mem:
            t_mo, res_mo = time_op(run_monai, device, rep)
        diff = float((res_mo[0].float().cpu() - res_ms_cpu).abs().max())
        del res_mo
        out.append({"section": sec, "method": "MONAI sliding_window_inference", "ms_per_step": 1e3 * t_mo,
                    "peak_mb": mem.mb})  # fmt: skip
        ms_row.update(ratio=t_mo / t_ms, mem_ratio=ms_row["peak_mb"] / max(mem.mb, 1e-9), max_abs_diff=diff)
        ms_row["note"] += f"; max |medstack - MONAI| {diff:.3g}"
    except Skip as e:
        out.append({"section": sec, "method": "MONAI sliding_window_inference", "skipped": str(e)})


# -- 6. BatchAugment ------------------------------------------------------------------------------------------
def row_augment(cfg, device, ctx, out):
    import torch

    sec = SECTIONS[5]
    b, c = cfg["aug_batch"]
    p, rep = cfg["patch"], cfg["aug_repeats"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand((b, c, p, p, p), generator=g).to(device)
    y = torch.randint(0, 4, (b, 1, p, p, p), generator=g, dtype=torch.uint8).to(device)
    aug = batch_augment()
    gen = torch.Generator().manual_seed(0)
    t_ms, _ = time_op(lambda: aug(x, y, generator=gen), device, rep)
    row = {"section": sec, "method": f"medstack BatchAugment ({b} x {c} ch x {p}^3 + label)",
           "ms_per_step": 1e3 * t_ms, "samples_per_s": b / t_ms}  # fmt: skip
    out.append(row)
    try:
        need_monai()
        from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd

        tf = Compose([RandAffined(["image", "label"], prob=1.0, rotate_range=(math.radians(10),) * 3,
                                  scale_range=(0.1,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros",
                                  device=device),
                      RandGaussianNoised("image", prob=1.0, std=0.05),
                      RandScaleIntensityd("image", factors=0.1, prob=1.0)])  # fmt: skip
        tf.set_random_state(seed=0)

        def run():
            items = [tf({"image": x[i], "label": y[i]}) for i in range(b)]
            return torch.stack([torch.as_tensor(d["image"]) for d in items]), torch.stack(
                [torch.as_tensor(d["label"]) for d in items]
            )

        t_mo, _ = time_op(run, device, rep)
        out.append({"section": sec, "method": "MONAI per-sample RandAffined + RandGaussianNoised + RandScaleIntensityd",
                    "ms_per_step": 1e3 * t_mo, "samples_per_s": b / t_mo})  # fmt: skip
        row["ratio"] = t_mo / t_ms
    except Skip as e:
        out.append({"section": sec, "method": "MONAI per-sample RandAffined + intensity", "skipped": str(e)})


# -- main ---------------------------------------------------------------------------------------------------
def fmt(v, spec):
    return "" if v is None else format(v, spec)


def goals(rows) -> list[tuple[str, str, bool]]:
    def find(section, prefix):
        return next((r for r in rows if r["section"] == section and r["method"].startswith(prefix)
                     and "skipped" not in r and "error" not in r), None)  # fmt: skip

    res = []
    for prefix in ("medstack PatchLoader", "medstack ProcessPatchLoader"):
        r = find(SECTIONS[0], prefix)
        if r:
            res.append((f"training stall < 5% ({prefix})", f"{r['stall']:.1%}", r["stall"] < 0.05))
    best = max((r["patches_per_s"] for r in rows if r["section"] == SECTIONS[1] and "patches_per_s" in r), default=None)
    if best is not None:
        res.append(("loader alone >= 4,000 patches/s (best config)", f"{best:.0f}", best >= 4000))
    r = find(SECTIONS[2], "medstack")
    if r and "x_floor" in r:
        res.append(("resample linear <= 2x bare F.interpolate", f"{r['x_floor']:.2f}x", r["x_floor"] <= 2))
        if "ratio" in r:
            res.append(("resample linear faster than MONAI Spacing (MONAI / medstack)", f"{r['ratio']:.2f}",
                        r["ratio"] > 1))  # fmt: skip
    r = find(SECTIONS[3], "medstack")
    if r and "x_floor" in r:
        res.append(("resample nearest <= 2x floor, output on the device", f"{r['x_floor']:.2f}x",
                    r["x_floor"] <= 2 and r.get("on_device", False)))  # fmt: skip
    r = find(SECTIONS[4], "medstack")
    if r and "ratio" in r:
        res.append(("sliding window time <= MONAI's (MONAI / medstack)", f"{r['ratio']:.2f}", r["ratio"] >= 1))
        peer = find(SECTIONS[4], "MONAI")
        if peer and peer["peak_mb"] >= 1:  # below 1 MB (tiny --quick volumes, RSS on CPU) the ratio is noise
            res.append(("sliding window peak memory <= MONAI's (medstack / MONAI)", f"{r['mem_ratio']:.2f}",
                        r["mem_ratio"] <= 1))  # fmt: skip
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny sizes on any device (CI smoke run, < 1 min on CPU)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--only", default=None, help="comma-separated row numbers to run (1-6)")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/bench_gpu[_quick].json)")
    args = ap.parse_args(argv)
    C.quiet()
    import torch

    cfg = dict(QUICK if args.quick else FULL)
    cores = os.cpu_count() or 1  # loader threads / worker processes capped at the cores
    cfg["threads"], cfg["monai_workers"] = min(cfg["threads"], cores), min(cfg["monai_workers"], cores)
    cfg["workers"] = min(cfg["workers"], max(1, cores - 1))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = C.environment()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(f"device {device} ({gpu})  torch {env['torch']}  monai {env['monai']}  medstack {env['medstack']}  "
          f"cores {env['cpus']}  torch threads {torch.get_num_threads()}  {'quick' if args.quick else 'full'}")  # fmt: skip
    only = {int(s) for s in args.only.split(",")} if args.only else set(range(1, 7))
    rows: list[dict] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medstack-bench-gpu-") as tmp:
        ctx: dict = {}
        if only & {1, 2}:
            t0 = time.perf_counter()
            ctx["cases"] = make_cases(cfg)
            ctx["store"] = prepare_store(ctx["cases"], Path(tmp))
            print(f"store: {cfg['cases']} cases {cfg['case_dhw']} (D,H,W) int16 + uint8 label, prepared in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        if 5 in only and 1 not in only:  # the sliding window needs the model of row 1
            try:
                ctx["model"] = make_model(cfg, device, 4)
            except Skip:
                pass
        steps = [(1, row_training), (2, row_loader), (3, row_resample), (5, row_sliding), (6, row_augment)]
        for num, fn in steps:
            if num not in only and not (num == 3 and 4 in only):
                continue
            t0 = time.perf_counter()
            n_before = len(rows)
            try:
                fn(cfg, device, ctx, rows)
            except Exception as e:
                traceback.print_exc()
                secs = SECTIONS[2:4] if num == 3 else [SECTIONS[num - 1]]
                for s in secs:
                    rows.append({"section": s, "method": fn.__name__, "error": f"{type(e).__name__}: {e}"[:200]})
            for r in rows[n_before:]:
                print(f"  {r['section']}: {r['method']}: " + (r.get("skipped") or r.get("error") or
                      f"{r.get('ms_per_step', 0):.2f} ms"), flush=True)  # fmt: skip
            print(f"  ({SECTIONS[num - 1]} took {time.perf_counter() - t0:.1f} s)", flush=True)
        ctx.clear()

    table = []
    for r in rows:
        if "skipped" in r or "error" in r:
            what = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}"
            table.append([r["section"], r["method"], "", "", "", "", "", what])
            continue
        per_s = r.get("samples_per_s", r.get("patches_per_s"))
        note = r.get("note", "")
        if "vs_pure" in r:
            note = (f"pure/step {r['vs_pure']:.2f}; " + note).rstrip("; ")
        if "x_floor" in r:
            note = (f"{r['x_floor']:.2f}x floor; " + note).rstrip("; ")
        table.append([r["section"], r["method"], fmt(r.get("ms_per_step"), ".2f"), fmt(per_s, ".1f"),
                      fmt(r.get("ratio"), ".2f"), fmt(r.get("stall"), ".1%"), fmt(r.get("peak_mb"), ".0f"), note])  # fmt: skip
    print()
    print(f"medstack vs MONAI on {device} ({gpu}), {'--quick sizes' if args.quick else 'issue sizes'}; ratio = peer "
          "time / medstack time (> 1: medstack faster); floor rows: floor / medstack")  # fmt: skip
    print(C.format_table(["row", "method", "ms", "per s", "ratio", "stall", "peak MB", "note"], table,
                         ["<", "<", ">", ">", ">", ">", ">", "<"]))  # fmt: skip
    print("ms: per step / batch / call (median on CUDA-synchronised calls); per s: patches (rows 1-2) or samples "
          "(row 6); stall: share of the loop spent waiting for the next batch; peak MB: device memory above the "
          "start (CUDA) or RSS growth (CPU)")  # fmt: skip
    gl = goals(rows)
    if gl:
        print("\nGoals (issue):")
        for text, val, ok in gl:
            print(f"  {text}: {val}  {'PASS' if ok else 'MISS'}")
    errors = [r for r in rows if "error" in r]
    payload = {"environment": env, "device": str(device), "gpu": gpu, "args": vars(args), "config": cfg,
               "rows": rows, "goals": [{"goal": t, "value": v, "pass": bool(ok)} for t, v, ok in gl],
               "seconds": time.perf_counter() - t_all}  # fmt: skip
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(__import__("json").dumps(payload, indent=2, default=str) + "\n")
    else:
        path = C.write_json("bench_gpu_quick.json" if args.quick else "bench_gpu.json", payload)
    print(f"\n{len(errors)} error(s); total {time.perf_counter() - t_all:.1f} s; wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
