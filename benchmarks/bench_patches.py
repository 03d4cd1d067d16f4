"""Random 3D patch throughput for training: medstack vs MONAI, TorchIO, a naive memmap Dataset and memory floors.

Data: ``--cases`` synthetic CT-like cases (``medstack.testing.phantom_pair``: int16 HU image + uint8 label
map with 4 classes, default 256x256x200 voxels, 26 MB + 13 MB each), written once as ``.nii.gz`` (nibabel,
gzip level 1), as ``.npy`` and as the medstack patch store (``medstack.data.prepare(cases, out, workers=2)``);
cached in ``benchmarks/_data/patches/``. For the RSS growth check the ``--rss-cases`` (default 4 x cases)
set re-uses the same images through hard links under new ids, prepared into its own store.

Methods (patch 96^3, 4 patches per batch, 2 loader worker processes unless noted):

- ``medstack PatchLoader uniform / label``: ``PatchLoader(PatchDataset(store, sampler), batch_size=4,
  num_threads=2)``: batches assembled by 2 threads of the main process, each patch copied straight into the
  batch tensor from the mapped store (``mmap`` up to ``MEDSTACK_MAP_BUDGET``, 256 MiB by default, ``preadv``
  of the chunk slabs for the cases beyond it); no worker processes; the headline configuration.
- ``medstack store uniform / label``: ``PatchDataset(store, UniformSampler(96))`` or
  ``LabelSampler(96, pos=1, neg=1)`` through ``medstack.data.make_loader(ds, batch_size=4, num_workers=2)``
  (and ``num_workers=0``); items are int16 image + uint8 label tensors (plus start, affine, case id).
- ``medstack queue .nii.gz``: ``QueueDataset(cases, UniformSampler(96), samples_per_volume=16)`` with
  ``CaseGroupedSampler``; default per-worker volume cache (2 GiB: with few cases every case ends up cached,
  so later epochs only crop), and ``cache_bytes=0`` (one volume per worker: the many-cases regime).
- ``MONAI Dataset + RandCropByPosNegLabeld``: ``LoadImaged, EnsureChannelFirstd, RandCropByPosNegLabeld(pos=1,
  neg=1, num_samples=4)`` from ``.nii.gz``, ``monai.data.DataLoader(batch_size=1)`` (4 crops = one batch of 4).
- ``MONAI CacheDataset + RandSpatialCropSamplesd``: the load is cached (float32, MONAI's default), then
  ``RandSpatialCropSamplesd(num_samples=4, random_size=False)``; default ``copy_cache=True`` and ``False``.
- ``TorchIO Queue``: ``SubjectsDataset`` from ``.nii.gz``, ``Queue(max_length=8 x 16, samples_per_volume=16,
  num_workers=2)`` with ``UniformSampler(96)`` or ``LabelSampler(96, label_probabilities={0: 3, 1: 1, 2: 1,
  3: 1})`` (half the patches on background, half on the three foreground classes, like pos=1/neg=1),
  ``DataLoader(queue, batch_size=4, num_workers=0)``.
- ``naive memmap``: a 20-line Dataset cropping ``np.load(..., mmap_mode="r")`` arrays at uniform positions
  (``np.ascontiguousarray`` + ``torch.from_numpy``), plain ``DataLoader(batch_size=4, shuffle=True)``.
- floors (one thread, no loader): ``in-RAM crop`` (strided numpy copy of a random 96^3 box of an in-memory
  volume, image + label) and ``memcpy`` (a contiguous block of the same bytes from a random offset).

The files a method reads are read once before it starts (warm page cache, as in bench_io.py). Peers (MONAI,
TorchIO) and the naive Dataset use ``RandomSampler(replacement=True)`` (MONAI) or epochs
(TorchIO); persistent workers everywhere. Every method runs in a fresh Python process (so RSS is not
polluted by the previous one): build, skip ``--warmup`` batches, then time ``--patches`` patches.
patches/s = patches / seconds of the timed batches. Peak RSS = the maximum over 0.1 s samples of the sum of
``VmRSS`` of the process and all its children (DataLoader workers), from start-up (imports, caches) to the
end; PSS (proportional set size, shared pages counted once, sampled every 0.5 s) is shown too, because a
sum of RSS counts pages shared by fork (torch, a CacheDataset's cache) once per process.

Also: the label-balanced sampling cost on a ``--label-shape`` case (default 512x512x200): medstack
``class_voxel_lists`` once + ``LabelSampler.sample`` per patch vs MONAI ``RandCropByPosNegLabeld`` per call
(no precomputed indices, and with ``FgBgToIndicesd`` indices) and TorchIO ``LabelSampler`` per subject; the
sliding-window inference (identity model, float32 volume of ``--shape``, 96^3, overlap 0.25, batch 4,
gaussian) medstack vs MONAI (time and peak RSS growth over the run); and a cProfile + step breakdown of a
worker-less medstack run (where the time per patch goes).

Before each timed phase the script waits (up to ``--max-wait`` s per phase, ``--max-wait-total`` s in all)
until no other benchmark runs (``pgrep -f benchmarks/bench_(io|dicom|store|convert|resample|transforms)``)
and the other processes use less than half a core (``/proc/stat`` over 1 s), and prints ``quiet machine:
yes/no``. With 2 cores this matters: torch's 2 intra-op threads slow down 10-50x when another process
holds a core (each parallel op waits for a descheduled thread).

Usage::

    python benchmarks/bench_patches.py                                        # full (~15-20 min, 2 cores)
    python benchmarks/bench_patches.py --cases 2 --shape 96,96,80 --patches 40  # quick (patch 80 there)

Writes ``benchmarks/results/bench_patches.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

OTHERS = r"benchmarks/bench_(io|dicom|store|convert|resample|transforms)"
DATA_VERSION = 1
BATCH = 4
QUEUE_SPV = 16
DEFAULT_SHAPE = "256,256,200"
DEFAULT_LABEL_SHAPE = "512,512,200"

# key: (label, kind, workers, family)   family: medstack | peer | naive | floor
METHODS = {
    "ms_threads_uniform": ("medstack PatchLoader uniform (2 threads)", "ms_loader_uniform", 2, "medstack"),
    "ms_threads_label": ("medstack PatchLoader label pos1/neg1 (2 threads)", "ms_loader_label", 2, "medstack"),
    "ms_uniform_w2": ("medstack store uniform", "ms_store_uniform", 2, "medstack"),
    "ms_uniform_w0": ("medstack store uniform", "ms_store_uniform", 0, "medstack"),
    "ms_label_w2": ("medstack store label pos1/neg1", "ms_store_label", 2, "medstack"),
    "ms_label_w0": ("medstack store label pos1/neg1", "ms_store_label", 0, "medstack"),
    "ms_queue_w2": ("medstack queue .nii.gz uniform", "ms_queue", 2, "medstack"),
    "ms_queue_w0": ("medstack queue .nii.gz uniform", "ms_queue", 0, "medstack"),
    "ms_queue_nocache_w2": ("medstack queue .nii.gz cache_bytes=0", "ms_queue_nocache", 2, "medstack"),
    "monai_dataset_posneg": ("MONAI Dataset + RandCropByPosNegLabeld", "monai_dataset", 2, "peer"),
    "monai_cache": ("MONAI CacheDataset + RandSpatialCropSamplesd", "monai_cache", 2, "peer"),
    "monai_cache_nocopy": ("MONAI CacheDataset (copy_cache=False)", "monai_cache_nocopy", 2, "peer"),
    "tio_uniform": ("TorchIO Queue + UniformSampler", "tio_uniform", 2, "peer"),
    "tio_label": ("TorchIO Queue + LabelSampler", "tio_label", 2, "peer"),
    "naive_w2": ("naive np.load(mmap_mode='r') Dataset", "naive", 2, "naive"),
    "naive_w0": ("naive np.load(mmap_mode='r') Dataset", "naive", 0, "naive"),
    "floor_crop": ("floor: in-RAM numpy crop (1 thread)", "floor_crop", 0, "floor"),
    "floor_memcpy": ("floor: memcpy (1 thread)", "floor_memcpy", 0, "floor"),
}
GROWTH = ("ms_threads_uniform", "ms_uniform_w2", "ms_queue_w2")  # re-run on --rss-cases cases


# -- machine ------------------------------------------------------------------------------------------
_WAIT_LEFT = [float("inf")]  # total waiting budget of this run (--max-wait-total)
IDLE_CORES = 0.5  # "quiet" also needs the rest of the machine to use less than this many cores


def _cpu_snapshot(pids) -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by ``pids`` incl. their reaped children) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    machine = (sum(vals[:8]) - vals[3] - vals[4]) / tick
    own = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return machine, own / tick


def wait_quiet(max_wait: float) -> bool:
    """Wait until no other benchmark runs and the other processes use < IDLE_CORES cores (at most ``max_wait``
    s, and within the run's total budget); print and return whether the machine is quiet."""
    t0 = time.monotonic()
    quiet = C.wait_quiet(OTHERS, min(max_wait, _WAIT_LEFT[0]), max_other_cores=IDLE_CORES)
    _WAIT_LEFT[0] -= time.monotonic() - t0
    return quiet


def _kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


class TreeMemory(threading.Thread):
    """Peak of the summed VmRSS (every ``interval`` s) and PSS (every ``pss_every`` samples) of this process
    and all its descendants (DataLoader workers)."""

    def __init__(self, interval: float = 0.1, pss_every: int = 5):
        super().__init__(daemon=True)
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = 0  # kB
        self.max_procs = 1
        self._halt = threading.Event()

    def pids(self) -> list[int]:
        import psutil

        me = psutil.Process()
        try:
            return [me.pid] + [c.pid for c in me.children(recursive=True)]
        except psutil.Error:
            return [me.pid]

    def rss_now(self) -> int:
        return sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in self.pids())

    def run(self):
        k = 0
        while not self._halt.is_set():
            pids = self.pids()
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            if k % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            k += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- data ---------------------------------------------------------------------------------------------
def _gen_case(args) -> str:
    """Write case ``i``: phantom_pair on a (D, H, W) grid -> .nii.gz (nibabel) + .npy (D, H, W)."""
    i, shape_dhw, folder = args
    import nibabel as nib

    from medstack import testing

    image, label = testing.phantom_pair(shape_dhw, seed=i, kind="ct")
    folder = Path(folder)
    for name, vol in (("image", image), ("label", label)):
        arr = np.asarray(vol.data[0])
        np.save(folder / "npy" / f"case{i:02d}_{name}.npy", arr)
        nii = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), vol.affine)
        nii.set_qform(vol.affine, code=1)
        nii.set_sform(vol.affine, code=1)
        nib.save(nii, folder / "nii" / f"case{i:02d}_{name}.nii.gz")
    return f"case{i:02d}"


def data_root(shape_xyz) -> Path:
    return C.DATA / "patches" / f"v{DATA_VERSION}_{shape_xyz[0]}x{shape_xyz[1]}x{shape_xyz[2]}"


def ensure_data(shape_xyz, n_base: int, n_total: int) -> Path:
    """Cases 0..n_base-1 generated, n_base..n_total-1 hard links of them; stores for n_base and n_total."""
    from concurrent.futures import ProcessPoolExecutor

    root = data_root(shape_xyz)
    (root / "nii").mkdir(parents=True, exist_ok=True)
    (root / "npy").mkdir(parents=True, exist_ok=True)
    shape_dhw = tuple(shape_xyz[::-1])
    todo = [i for i in range(n_base)
            if not all((root / sub / f"case{i:02d}_{n}.{ext}").exists()
                       for sub, ext in (("nii", "nii.gz"), ("npy", "npy")) for n in ("image", "label"))]  # fmt: skip
    if todo:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_gen_case, [(i, shape_dhw, str(root)) for i in todo]))
        print(f"  generated {len(todo)} cases of {shape_xyz} in {time.perf_counter() - t0:.0f} s", flush=True)
    for i in range(n_base, n_total):
        for n in ("image", "label"):
            dst = root / "nii" / f"case{i:02d}_{n}.nii.gz"
            if not dst.exists():
                os.link(root / "nii" / f"case{i % n_base:02d}_{n}.nii.gz", dst)
    prep = {}
    for n in sorted({n_base, n_total}):
        store = root / f"store{n}"
        cases = case_list(root, n)
        t0 = time.perf_counter()
        import medstack.data

        manifest = store / "manifest.json"
        before = len(json.loads(manifest.read_text())["cases"]) if manifest.exists() else 0
        medstack.data.prepare(cases, store, workers=2)
        if before < n:
            prep[n] = time.perf_counter() - t0
            print(f"  prepared store of {n} cases ({n - before} new) in {prep[n]:.1f} s", flush=True)
    return root


def case_list(root: Path, n: int) -> list[dict]:
    return [{"id": f"case{i:02d}", "image": str(root / "nii" / f"case{i:02d}_image.nii.gz"),
             "label": str(root / "nii" / f"case{i:02d}_label.nii.gz")} for i in range(n)]  # fmt: skip


def ensure_label_case(shape_xyz) -> Path:
    """A (D, H, W) uint8 phantom label map for the label-balanced sampling cost (cached .npy)."""
    path = C.DATA / "patches" / f"v{DATA_VERSION}_label_{shape_xyz[0]}x{shape_xyz[1]}x{shape_xyz[2]}.npy"
    if not path.exists():
        from medstack import testing

        t0 = time.perf_counter()
        lab = testing.phantom(tuple(shape_xyz[::-1]), seed=0, kind="label")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(lab.data[0]))
        print(f"  generated label {shape_xyz} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def warm_files(root: Path, kind: str, n: int) -> float:
    """Read the files a method uses once (timings are on a warm page cache, as in bench_io); returns GB read."""
    if kind.startswith("ms_store"):
        paths = sorted((root / f"store{n}").glob("*.h5"))
    elif kind in ("naive", "floor_crop", "floor_memcpy"):
        paths = [root / "npy" / f"case{i:02d}_{k}.npy" for i in range(n) for k in ("image", "label")]
    else:
        paths = [Path(c[k]) for c in case_list(root, n) for k in ("image", "label")]
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total / 1e9


# -- methods (each runs in a child process) -------------------------------------------------------------
def _forever(loader, on_epoch=None):
    epoch = 0
    while True:
        if on_epoch is not None:
            on_epoch(epoch)
        yield from loader
        epoch += 1


def _n_items(spec) -> int:
    """Patches one pass must provide (warm-up + timed + slack)."""
    return (spec["warmup"] + math.ceil(spec["patches"] / BATCH) + 4) * BATCH


def build(spec):
    """-> (batch iterator, fn(batch) -> (image, label) tensors)."""
    import torch

    kind, w, p, root, n = spec["kind"], spec["workers"], spec["patch"], Path(spec["root"]), spec["cases"]
    std = lambda b: (b["image"], b["label"])  # noqa: E731
    if kind.startswith("ms_store"):
        from medstack.data import PatchDataset, make_loader
        from medstack.patches import LabelSampler, UniformSampler

        sampler = UniformSampler(p) if kind == "ms_store_uniform" else LabelSampler(p, pos=1, neg=1)
        ds = PatchDataset(root / f"store{n}", sampler, samples_per_volume=math.ceil(_n_items(spec) / n), seed=0)
        return iter(make_loader(ds, batch_size=BATCH, num_workers=w)), std
    if kind.startswith("ms_loader"):
        from medstack.data import PatchDataset, PatchLoader
        from medstack.patches import LabelSampler, UniformSampler

        sampler = UniformSampler(p) if kind == "ms_loader_uniform" else LabelSampler(p, pos=1, neg=1)
        ds = PatchDataset(root / f"store{n}", sampler, samples_per_volume=math.ceil(_n_items(spec) / n), seed=0)
        loader = PatchLoader(ds, batch_size=BATCH, num_threads=w, seed=0)
        return _forever(loader, loader.set_epoch), std
    if kind.startswith("ms_queue"):
        from medstack.data import CaseGroupedSampler, QueueDataset, make_loader
        from medstack.patches import UniformSampler

        extra = {"cache_bytes": 0} if kind == "ms_queue_nocache" else {}
        ds = QueueDataset(case_list(root, n), UniformSampler(p), samples_per_volume=QUEUE_SPV, seed=0, **extra)
        order = CaseGroupedSampler(ds, seed=0, batch_size=BATCH, num_workers=w)
        loader = make_loader(ds, batch_size=BATCH, num_workers=w, sampler=order)

        def on_epoch(e):
            ds.set_epoch(e)
            order.set_epoch(e)

        return _forever(loader, on_epoch), std
    if kind.startswith("monai"):
        from monai.data import CacheDataset, DataLoader, Dataset
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            LoadImaged,
            RandCropByPosNegLabeld,
            RandSpatialCropSamplesd,  # fmt: skip
        )

        keys = ["image", "label"]
        files = [{"image": c["image"], "label": c["label"]} for c in case_list(root, n)]
        load = [LoadImaged(keys), EnsureChannelFirstd(keys)]
        if kind == "monai_dataset":
            crop = RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=(p,) * 3, pos=1, neg=1, num_samples=BATCH
            )
            ds = Dataset(files, Compose([*load, crop]))
        else:
            crop = RandSpatialCropSamplesd(keys, roi_size=(p,) * 3, num_samples=BATCH, random_size=False)
            ds = CacheDataset(files, Compose([*load, crop]), progress=False, copy_cache=kind == "monai_cache")
        order = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=_n_items(spec) // BATCH,
                                               generator=torch.Generator().manual_seed(0))  # fmt: skip
        loader = DataLoader(ds, batch_size=1, sampler=order, num_workers=w, persistent_workers=w > 0)
        return iter(loader), std
    if kind.startswith("tio"):
        import torchio as tio

        subjects = [tio.Subject(image=tio.ScalarImage(c["image"]), label=tio.LabelMap(c["label"]))
                    for c in case_list(root, n)]  # fmt: skip
        if kind == "tio_uniform":
            sampler = tio.UniformSampler(p)
        else:
            sampler = tio.LabelSampler(p, label_name="label", label_probabilities={0: 3, 1: 1, 2: 1, 3: 1})
        queue = tio.Queue(tio.SubjectsDataset(subjects), max_length=n * QUEUE_SPV, samples_per_volume=QUEUE_SPV,
                          sampler=sampler, num_workers=w)  # fmt: skip
        loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
        return _forever(loader), lambda b: (b["image"][tio.DATA], b["label"][tio.DATA])
    if kind == "naive":
        ds = NaiveMemmap([(root / "npy" / f"case{i:02d}_image.npy", root / "npy" / f"case{i:02d}_label.npy")
                          for i in range(n)], p, _n_items(spec))  # fmt: skip
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=w,
                                             persistent_workers=w > 0, generator=torch.Generator().manual_seed(0))  # fmt: skip
        return iter(loader), std
    raise SystemExit(f"unknown kind {kind}")


class NaiveMemmap:
    """What one writes in 20 lines: memory-mapped .npy arrays, uniform random crops."""

    def __init__(self, pairs, patch: int, length: int, seed: int = 0):
        self.arrays = [(np.load(i, mmap_mode="r"), np.load(lab, mmap_mode="r")) for i, lab in pairs]
        self.patch, self.length, self.seed = patch, length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        import torch

        rng = np.random.default_rng([self.seed, index])
        image, label = self.arrays[int(rng.integers(len(self.arrays)))]
        box = tuple(slice(a, a + self.patch) for a in (int(rng.integers(0, s - self.patch + 1)) for s in image.shape))
        return {"image": torch.from_numpy(np.ascontiguousarray(image[box])[None]),
                "label": torch.from_numpy(np.ascontiguousarray(label[box])[None])}  # fmt: skip


def run_floor(spec) -> tuple[float, int]:
    """(seconds, patches) for the one-thread floors on case 0 (in RAM)."""
    root, p = Path(spec["root"]), spec["patch"]
    image = np.load(root / "npy" / "case00_image.npy")
    label = np.load(root / "npy" / "case00_label.npy")
    rng = np.random.default_rng(0)
    di, dl = np.empty((p, p, p), image.dtype), np.empty((p, p, p), label.dtype)
    n = spec["patches"] + spec["warmup"] * BATCH
    if spec["kind"] == "floor_crop":
        his = [s - p + 1 for s in image.shape]
        starts = [[int(rng.integers(0, h)) for h in his] for _ in range(n)]

        def one(s):
            box = tuple(slice(a, a + p) for a in s)
            np.copyto(di, image[box])
            np.copyto(dl, label[box])
    else:
        fi, fl, m = image.reshape(-1), label.reshape(-1), p**3
        starts = [int(rng.integers(0, fi.size - m + 1)) for _ in range(n)]

        def one(s):
            np.copyto(di.reshape(-1), fi[s : s + m])
            np.copyto(dl.reshape(-1), fl[s : s + m])

    for s in starts[: spec["warmup"] * BATCH]:
        one(s)
    t0 = time.perf_counter()
    for s in starts[spec["warmup"] * BATCH :]:
        one(s)
    return time.perf_counter() - t0, spec["patches"]


def child_method(spec) -> dict:
    import torch

    torch.set_num_threads(2)
    mem = TreeMemory()
    rss_start = mem.rss_now()
    mem.start()
    t_build = time.perf_counter()
    if spec["kind"].startswith("floor"):
        cpu0 = _cpu_snapshot(mem.pids())
        seconds, patches = run_floor(spec)
        cpu1 = _cpu_snapshot(mem.pids())
        info = {"warmup_s": 0.0, "image_dtype": "int16", "label_dtype": "uint8"}
    else:
        it, get = build(spec)
        first = None
        for _ in range(spec["warmup"]):
            b = next(it)
            first = first or get(b)
        if first is None:
            first = get(next(it))
        img, lab = first
        p = spec["patch"]
        if tuple(img.shape[1:]) != (1, p, p, p) or tuple(lab.shape[1:]) != (1, p, p, p):
            raise SystemExit(f"unexpected batch shapes {tuple(img.shape)} / {tuple(lab.shape)}")
        info = {"warmup_s": time.perf_counter() - t_build, "image_dtype": str(img.dtype).replace("torch.", ""),
                "label_dtype": str(lab.dtype).replace("torch.", ""), "fg_fraction": float((lab > 0).float().mean())}  # fmt: skip
        patches = 0
        cpu0 = _cpu_snapshot(mem.pids())
        t0 = time.perf_counter()
        while patches < spec["patches"]:
            img, _ = get(next(it))
            patches += int(img.shape[0])
        seconds = time.perf_counter() - t0
        cpu1 = _cpu_snapshot(mem.pids())
    mem.stop()
    # cores used meanwhile by processes outside this benchmark's process tree (machine busy time - ours)
    info["others_cores"] = max(0.0, ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / seconds)
    info["own_cores"] = (cpu1[1] - cpu0[1]) / seconds
    return {"patches": patches, "seconds": seconds, "patches_per_s": patches / seconds,
            "peak_rss_mb": mem.peak_rss / 1024, "peak_pss_mb": mem.peak_pss / 1024, "rss_start_mb": rss_start / 1024,
            "processes": mem.max_procs, **info}  # fmt: skip


def child_label_cost(spec) -> dict:
    import torch

    torch.set_num_threads(2)
    from monai.transforms import FgBgToIndicesd, RandCropByPosNegLabeld

    from medstack.patches import CaseInfo, LabelSampler, class_voxel_lists

    label = np.load(spec["label_path"])
    p = spec["patch"]
    out = {"shape_dhw": list(label.shape), "fg_fraction": float((label > 0).mean())}
    t0 = time.perf_counter()
    voxels, counts, _ = class_voxel_lists(label)
    out["medstack_precompute_s"] = time.perf_counter() - t0
    info = CaseInfo(label.shape, {k: v for k, v in voxels.items() if k > 0}, voxels.get(0))
    sampler, rng = LabelSampler(p, pos=1, neg=1), np.random.default_rng(0)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        sampler.sample(info, rng, 1)
        times.append(time.perf_counter() - t0)
    out["medstack_per_patch_s"] = C.median(times[100:])
    tensor = {"label": torch.from_numpy(label[None])}
    crop = RandCropByPosNegLabeld("label", label_key="label", spatial_size=(p,) * 3, pos=1, neg=1, num_samples=1)
    crop.set_random_state(0)
    crop(tensor)  # warm-up
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        crop(tensor)
        times.append(time.perf_counter() - t0)
    out["monai_per_call_s"] = C.median(times)
    t0 = time.perf_counter()
    indexed = FgBgToIndicesd("label")(dict(tensor))
    out["monai_indices_s"] = time.perf_counter() - t0
    crop2 = RandCropByPosNegLabeld("label", label_key="label", spatial_size=(p,) * 3, pos=1, neg=1, num_samples=1,
                                   fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices")  # fmt: skip
    crop2.set_random_state(0)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        crop2(indexed)
        times.append(time.perf_counter() - t0)
    out["monai_indexed_per_call_s"] = C.median(times[5:])
    import torchio as tio

    subject = tio.Subject(label=tio.LabelMap(tensor=tensor["label"]))
    tsampler = tio.LabelSampler(p, label_name="label", label_probabilities={0: 3, 1: 1, 2: 1, 3: 1})
    times = []
    for _ in range(max(2, spec["repeats"] // 2)):
        t0 = time.perf_counter()
        next(iter(tsampler(subject, 1)))
        times.append(time.perf_counter() - t0)
    out["torchio_per_subject_s"] = C.median(times)
    return out


def child_sliding(spec) -> dict:
    import torch

    torch.set_num_threads(2)
    import gc

    import medstack
    from medstack.patches import sliding_window_inference as ms_swi

    root, p = Path(spec["root"]), spec["patch"]
    vol = np.load(root / "npy" / "case00_image.npy").astype(np.float32)[None]
    if spec["which"] == "medstack":
        v = medstack.Volume(vol, np.eye(4))

        def run():
            return np.asarray(ms_swi(v, lambda x: x, p, overlap=0.25, batch_size=BATCH, mode="gaussian").data)
    else:
        from monai.inferers import sliding_window_inference as monai_swi

        x = torch.from_numpy(vol)[None]

        def run():
            with torch.no_grad():
                return monai_swi(x, (p,) * 3, BATCH, lambda t: t, overlap=0.25, mode="gaussian").numpy()[0]

    gc.collect()
    mem = TreeMemory(interval=0.02, pss_every=10**9)
    base = mem.rss_now()
    mem.start()
    times, err = [], None
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        res = run()
        times.append(time.perf_counter() - t0)
        if err is None:
            err = float(np.abs(res - vol).max())
        del res
        gc.collect()
    mem.stop()
    from medstack.patches import grid_positions

    n_windows = len(grid_positions(vol.shape[1:], p, 0.25))
    return {"seconds": C.median(times), "peak_rss_delta_mb": (mem.peak_rss - base) / 1024, "max_abs_error": err,
            "volume_mb": vol.nbytes / 1e6, "windows": n_windows}  # fmt: skip


def child_profile(spec) -> dict:
    """Worker-less medstack run: cProfile of the loader loop + a step-by-step breakdown per patch."""
    import cProfile
    import io
    import pstats

    import torch

    torch.set_num_threads(2)
    from torch.utils.data import default_collate

    from medstack.data import PatchDataset, make_loader
    from medstack.patches import LabelSampler, UniformSampler, read_patch

    root, p, n = Path(spec["root"]), spec["patch"], spec["cases"]
    out = {}
    for name, sampler in (("uniform", UniformSampler(p)), ("label", LabelSampler(p, pos=1, neg=1))):
        ds = PatchDataset(root / f"store{n}", sampler, samples_per_volume=64, seed=0)
        it = iter(make_loader(ds, batch_size=BATCH, num_workers=0))
        for _ in range(3):
            next(it)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(25):
            next(it)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
        out[f"cprofile_{name}"] = "\n".join(line for line in s.getvalue().splitlines()[6:] if line.strip())
        # step breakdown (ms per patch) over the same kind of items
        steps = {k: [] for k in ("locate (rng + sampler)", "read image (h5)", "read label (h5)", "full __getitem__",
                                 "collate 4 items (per patch)")}  # fmt: skip
        idx = np.random.default_rng(1).permutation(len(ds))[:80]
        items = []
        for i in idx:
            t0 = time.perf_counter()
            case_i, start = ds.locate(int(i))
            t1 = time.perf_counter()
            image, label, _ = ds.store.case(case_i)
            read_patch(image.data, start, p, 0)
            t2 = time.perf_counter()
            read_patch(label.data, start, p, 0)
            t3 = time.perf_counter()
            items.append(ds[int(i)])
            t4 = time.perf_counter()
            for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                steps[k].append(v)
        for j in range(0, len(items), BATCH):
            t0 = time.perf_counter()
            default_collate(items[j : j + BATCH])
            steps["collate 4 items (per patch)"].append((time.perf_counter() - t0) / BATCH)
        if name == "uniform":  # the same boxes straight from h5py and from the .npy memory map
            import h5py

            f = h5py.File(ds.store.paths[0], "r")
            dsi = f["volumes/image/data"]
            mm = np.load(root / "npy" / "case00_image.npy", mmap_mode="r")
            h5t, mmt = [], []
            for i in idx:
                _, start = ds.locate(int(i))
                box = tuple(slice(int(a), int(a) + p) for a in start)
                t0 = time.perf_counter()
                dsi[(slice(None), *box)]
                t1 = time.perf_counter()
                np.ascontiguousarray(mm[box])
                h5t.append(t1 - t0)
                mmt.append(time.perf_counter() - t1)
            steps["ref: h5py dataset[box] image, open dataset"] = h5t
            steps["ref: np.memmap crop image (.npy)"] = mmt
            f.close()
        out[f"steps_{name}"] = {k: 1e3 * C.median(v) for k, v in steps.items()}
    return out


CHILDREN = {"method": child_method, "label_cost": child_label_cost, "sliding": child_sliding, "profile": child_profile}


def child_main(text: str) -> None:
    C.quiet()
    spec = json.loads(text)
    res = CHILDREN[spec["child"]](spec)
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    os._exit(0)  # do not wait for loader threads / workers to wind down


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {res.returncode}: " + " | ".join(tail)}


# -- report -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=8, help="cases (8)")
    ap.add_argument("--shape", default=DEFAULT_SHAPE, help=f"case size x,y,z ({DEFAULT_SHAPE})")
    ap.add_argument("--patch", type=int, default=96, help="patch edge (96; capped at the smallest volume axis)")
    ap.add_argument("--patches", type=int, default=256, help="timed patches per method after warm-up (256)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches per method (5)")
    ap.add_argument("--rss-cases", type=int, default=None, help="cases for the RSS growth check (4 x cases; 0: skip)")
    ap.add_argument(
        "--label-shape",
        default=None,
        help=f"case for the label-sampling cost ({DEFAULT_LABEL_SHAPE} with the default --shape, else --shape)",
    )
    ap.add_argument("--only", default=None, help="comma-separated method keys: " + ",".join(METHODS))
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: methods,growth,label,sliding,profile")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="runs of every method, interleaved; the table keeps the best patches/s (2)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="repeats for the label-cost and sliding-window timings (5)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process (900)")
    ap.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for a quiet machine (900)")
    ap.add_argument(
        "--max-wait-total",
        type=float,
        default=3600.0,
        help="total seconds of waiting for the whole run; then phases run without waiting (3600)",
    )
    ap.add_argument("--json", default="bench_patches.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child)
    C.quiet()
    _WAIT_LEFT[0] = args.max_wait_total
    shape = C.parse_shape(args.shape)
    label_shape = C.parse_shape(
        args.label_shape or (DEFAULT_LABEL_SHAPE if args.shape == DEFAULT_SHAPE else args.shape)
    )
    patch = min(args.patch, *shape)
    if patch != args.patch:
        print(f"note: patch edge {args.patch} > smallest volume axis: using {patch}")
    rss_cases = 4 * args.cases if args.rss_cases is None else args.rss_cases
    skip = set(filter(None, args.skip.split(",")))
    keys = list(METHODS) if args.only is None else [k for k in args.only.split(",") if k]
    env = C.environment()
    print(f"medstack {env['medstack']}  monai {env['monai']}  torchio {env['torchio']}  torch {env['torch']}  "
          f"cpus {env['cpus']}  python {env['python']}")  # fmt: skip
    print(f"{args.cases} cases of {shape} (x,y,z) int16 + uint8 label; patch {patch}^3, batch {BATCH}, "
          f"warm-up {args.warmup} batches, {args.patches} timed patches per method")  # fmt: skip
    t_data = time.perf_counter()
    root = ensure_data(shape, args.cases, max(args.cases, rss_cases if "growth" not in skip else 0))
    print(f"data ready in {time.perf_counter() - t_data:.0f} s: {root}", flush=True)
    base = {"patch": patch, "patches": args.patches, "warmup": args.warmup, "root": str(root), "cases": args.cases}
    results, quiet_all = {}, True

    def run_method(key, n_cases):
        nonlocal quiet_all
        label, kind, workers, family = METHODS[key]
        print(f"- {label} (workers {workers}, {n_cases} cases)", flush=True)
        quiet_all &= wait_quiet(args.max_wait)
        warm_files(root, kind, n_cases)
        spec = {**base, "child": "method", "kind": kind, "workers": workers, "cases": n_cases}
        res = run_child(spec, args.timeout)
        res.update(label=label, workers=workers, family=family, cases=n_cases)
        if "error" in res:
            print(f"    ERROR {res['error']}", flush=True)
        else:
            print(f"    {res['patches_per_s']:.1f} patches/s, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(PSS {res['peak_pss_mb']:.0f}), {res['image_dtype']}/{res['label_dtype']}, other processes "
                  f"{res['others_cores']:.2f} cores meanwhile", flush=True)  # fmt: skip
        return res

    def keep(name, res):
        """Best patches/s over the rounds (the least disturbed run); peak memory = max over the rounds."""
        old = results.get(name)
        if old is None or "error" in old:
            results[name] = {**res, "rounds": [res.get("patches_per_s")]}
        elif "error" not in res:
            best = res if res["patches_per_s"] > old["patches_per_s"] else dict(old)
            best["rounds"] = old["rounds"] + [res["patches_per_s"]]
            for m in ("peak_rss_mb", "peak_pss_mb"):
                best[m] = max(old[m], res[m])
            results[name] = best

    for rnd in range(args.rounds):
        if args.rounds > 1:
            print(f"round {rnd + 1} of {args.rounds}", flush=True)
        if "methods" not in skip:
            for key in keys:
                keep(key, run_method(key, args.cases))
        if "growth" not in skip and rss_cases and rss_cases != args.cases:
            for key in GROWTH:
                if key in keys:
                    keep(f"{key}@{rss_cases}", run_method(key, rss_cases))

    ok = {k: r for k, r in results.items() if "error" not in r}
    peers = {k: r for k, r in ok.items() if r["family"] == "peer" and r["cases"] == args.cases}
    best_peer = max(peers.values(), key=lambda r: r["patches_per_s"]) if peers else None
    rows = []
    for _k, r in results.items():
        if "error" in r:
            rows.append([r["label"], r["workers"], r["cases"], "error", "", "", "", "", ""])
            continue
        ratio = f"{r['patches_per_s'] / best_peer['patches_per_s']:.2f}" if best_peer else "-"
        rows.append([r["label"], r["workers"], r["cases"], f"{r['patches_per_s']:.1f}", ratio,
                     f"{r['peak_rss_mb']:.0f}", f"{r['peak_pss_mb']:.0f}", f"{r['image_dtype']}/{r['label_dtype']}",
                     f"{r['others_cores']:.2f}"])  # fmt: skip
    if rows:
        print()
        print(f"Random {patch}^3 patches, batch {BATCH} ({args.patches} timed patches after {args.warmup} batches)"
              + (f"; best peer = {best_peer['label']}" if best_peer else ""))  # fmt: skip
        print(C.format_table(["method", "workers", "cases", "patches/s", "vs best peer", "peak RSS MB", "peak PSS MB",
                              "dtypes", "others' cores"], rows, ["<", ">", ">", ">", ">", ">", ">", "<", ">"]))  # fmt: skip
        print("patches/s: best of the rounds; peak RSS/PSS: max over the rounds; others' cores: CPU used by other "
              "processes during the timed batches of the kept run (> 0.3: disturbed)")  # fmt: skip

    label_res = None
    if "label" not in skip:
        label_path = ensure_label_case(label_shape)
        print(f"\nlabel-balanced sampling cost on {label_shape} (x,y,z)")
        quiet_all &= wait_quiet(args.max_wait)
        label_res = run_child({"child": "label_cost", "label_path": str(label_path), "patch": patch,
                               "repeats": args.repeats}, args.timeout)  # fmt: skip
        if "error" in label_res:
            print(f"    ERROR {label_res['error']}")
        else:
            lr = label_res
            print(C.format_table(["step", "ms", "when"], [
                ["medstack class_voxel_lists (precompute)", f"{1e3 * lr['medstack_precompute_s']:.0f}", "once per case (prepare)"],
                ["medstack LabelSampler.sample", f"{1e3 * lr['medstack_per_patch_s']:.3f}", "per patch"],
                ["MONAI RandCropByPosNegLabeld (no indices)", f"{1e3 * lr['monai_per_call_s']:.0f}", "per call"],
                ["MONAI FgBgToIndicesd (precompute)", f"{1e3 * lr['monai_indices_s']:.0f}", "once per case"],
                ["MONAI RandCropByPosNegLabeld (with indices)", f"{1e3 * lr['monai_indexed_per_call_s']:.3f}", "per call"],
                ["TorchIO LabelSampler (probability map + 1 patch)", f"{1e3 * lr['torchio_per_subject_s']:.0f}",
                 "per subject in the queue"],
            ], ["<", ">", "<"]))  # fmt: skip

    sliding = {}
    if "sliding" not in skip:
        print(f"\nsliding-window inference, identity model, float32 {shape} (x,y,z), {patch}^3, overlap 0.25, "
              f"batch {BATCH}, gaussian")  # fmt: skip
        for which in ("medstack", "monai"):
            quiet_all &= wait_quiet(args.max_wait)
            sliding[which] = run_child({"child": "sliding", "which": which, "root": str(root), "patch": patch,
                                        "repeats": max(1, args.repeats // 2)}, args.timeout)  # fmt: skip
        srows = []
        for which, r in sliding.items():
            if "error" in r:
                srows.append([which, "error", "", ""])
            else:
                srows.append(
                    [which, f"{r['seconds']:.3f}", f"{r['peak_rss_delta_mb']:.0f}", f"{r['max_abs_error']:.2g}"]
                )
        print(C.format_table(["method", "seconds", "peak RSS growth MB", "max |out - in|"], srows))

    profile = None
    if "profile" not in skip:
        print("\nwhere a worker-less medstack patch's time goes (store, ms per patch, median of 80)")
        quiet_all &= wait_quiet(args.max_wait)
        profile = run_child({**base, "child": "profile"}, args.timeout)
        if "error" in profile:
            print(f"    ERROR {profile['error']}")
        else:
            names = list(profile["steps_uniform"])
            print(C.format_table(["step", "uniform", "label"], [
                [k, f"{profile['steps_uniform'][k]:.3f}",
                 f"{profile['steps_label'][k]:.3f}" if k in profile["steps_label"] else ""] for k in names]))  # fmt: skip
            print("\ncProfile, 100 patches, uniform sampler, num_workers=0 (top by tottime):")
            print(profile["cprofile_uniform"])

    # -- goals
    goals = []

    def g(key):
        r = ok.get(key)
        return r if r is not None else None

    ms, naive, cache = g("ms_threads_uniform"), g("naive_w2"), g("monai_cache")
    print("\nGoals (issue):")
    if ms and best_peer:
        x = ms["patches_per_s"] / best_peer["patches_per_s"]
        goals.append(("medstack PatchLoader uniform (2 threads) >= 5x best peer", x, x >= 5))
    best_ms = max((r for r in ok.values() if r["family"] == "medstack" and r["cases"] == args.cases),
                  key=lambda r: r["patches_per_s"], default=None)  # fmt: skip
    if best_ms and best_peer:
        x = best_ms["patches_per_s"] / best_peer["patches_per_s"]
        goals.append(
            (f"best medstack config ({best_ms['label']}, {best_ms['workers']} workers) >= 5x best peer", x, x >= 5)
        )
    if ms and naive:
        x = ms["patches_per_s"] / naive["patches_per_s"]
        goals.append(("medstack PatchLoader (2 threads) >= 2x naive memmap (2 workers)", x, x >= 2))
    if ms and g("naive_w0"):
        x = ms["patches_per_s"] / g("naive_w0")["patches_per_s"]
        goals.append(("medstack PatchLoader (2 threads) >= 2x naive memmap (0 workers, its best)", x, x >= 2))
    if g("ms_uniform_w2") and naive:
        x = g("ms_uniform_w2")["patches_per_s"] / naive["patches_per_s"]
        goals.append(("medstack store DataLoader uniform >= 2x naive memmap (2 workers each)", x, x >= 2))
    if ms and cache:
        x = ms["peak_rss_mb"] / cache["peak_rss_mb"]
        goals.append(("medstack peak RSS <= 1/4 of MONAI CacheDataset's (ratio, RSS sum)", x, x <= 0.25))
        x = ms["peak_pss_mb"] / cache["peak_pss_mb"]
        goals.append(("  same with PSS (shared pages once) (ratio)", x, x <= 0.25))
    for key in GROWTH:
        big = g(f"{key}@{rss_cases}")
        if g(key) and big:
            x = big["peak_rss_mb"] / g(key)["peak_rss_mb"]
            goals.append((f"{METHODS[key][0]} peak RSS {rss_cases} / {args.cases} cases (<= 1.10: not growing)",
                          x, x <= 1.10))  # fmt: skip
    if label_res and "error" not in label_res:
        x = 1e3 * label_res["medstack_per_patch_s"]
        goals.append(("label-balanced sampling per patch (ms) < 10", x, x < 10))
    if sliding.get("medstack") and sliding.get("monai") and not any("error" in r for r in sliding.values()):
        x = sliding["medstack"]["seconds"] / sliding["monai"]["seconds"]
        goals.append(("sliding window time medstack / MONAI <= 1", x, x <= 1))
        x = sliding["medstack"]["peak_rss_delta_mb"] / max(sliding["monai"]["peak_rss_delta_mb"], 1e-9)
        goals.append(("sliding window peak memory medstack / MONAI <= 1", x, x <= 1))
    for text, x, passed in goals:
        print(f"  {text}: {x:.3g}  {'PASS' if passed else 'MISS'}")
    print(f"quiet machine for all phases: {'yes' if quiet_all else 'no'}")

    payload = {"environment": env, "args": vars(args), "patch": patch, "shape_xyz": shape, "label_shape_xyz": label_shape,
               "best_peer": best_peer["label"] if best_peer else None, "methods": results, "label_cost": label_res,
               "sliding_window": sliding, "profile": profile, "quiet_machine": quiet_all,
               "goals": [{"goal": t, "value": x, "pass": bool(p)} for t, x, p in goals]}  # fmt: skip
    print(f"\nwrote {C.write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
