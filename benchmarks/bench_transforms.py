"""Training augmentation throughput: medstack per-sample and batched vs MONAI and TorchIO (samples/s).

One typical chain — random affine (rotation +-15 deg, scale 0.9-1.1, translation ~5 mm) + random flips of
the three axes + intensity (contrast) + Gaussian noise — on two-channel 96^3 float32 patches with a uint8
label map (1 mm isotropic RAS grid), batch 4:

- ``medstack per-sample``: ``T.Compose([RandomAffine, RandomFlip, RandomContrast, RandomNoise], seed=0)``
  called as ``compose(sample, index=i)`` on ``{"image": Volume (2, D, H, W), "label": Volume (1, D, H, W)}``
  (NumPy data, as ``medstack.load`` returns);
- ``medstack batched``: ``BatchAugment(rotation=15, scale=(0.9, 1.1), translation=0.05, flip_axes=(0, 1, 2),
  contrast=(0.75, 1.25), noise_std=(0, 0.1))`` on a ``(4, 2, D, H, W)`` float32 tensor and its
  ``(4, 1, D, H, W)`` uint8 labels (one seeded ``torch.Generator``; each sample gets its own parameters);
- ``MONAI per-sample``: ``Compose([RandAffined(prob=1, rotate_range=0.26 rad, scale_range=0.1,
  translate_range=5 vox, mode=(bilinear, nearest), padding_mode=zeros), RandFlipd x 3 (one per axis,
  prob 0.5), RandAdjustContrastd(prob=1), RandGaussianNoised(prob=1, std=0.1)])`` on MetaTensors
  ``(C, i, j, k)`` (``Volume.to_monai()``), ``set_random_state(0)``;
- ``MONAI lazy``: the same with ``Compose(lazy=True, overrides={image: bilinear/zeros, label: nearest/zeros})``
  (the affine and the flips fuse into one resampling). Without ``overrides`` MONAI 1.6's lazy resampling
  ignores RandAffined's per-key ``mode`` and interpolates the label map linearly (non-integer labels);
- ``TorchIO per-sample``: ``tio.Compose([RandomAffine(scales=0.1, degrees=15, translation=5),
  RandomFlip(axes=(0, 1, 2)), RandomGamma(log_gamma=0.3), RandomNoise(std=(0, 0.1))])`` on a ``tio.Subject``
  (``ScalarImage`` + ``LabelMap``; TorchIO has no contrast transform, gamma is its intensity counterpart;
  its affine resampling runs in SimpleITK).

One thread budget for all: ``torch.set_num_threads(2)`` and SimpleITK's default of 2 threads.

Timing: an untimed warm-up per method (its output is checked: shapes kept, label values still in
{0, 1, 2, 3}, image finite), then ``--rounds`` interleaved rounds (method order rotated each round),
each timing ``ceil(samples / rounds)`` per-sample calls or ``ceil(ceil(samples / batch) / rounds)`` batches
per method. samples/s = the median over rounds of (samples augmented / seconds in that round), so one
round disturbed by another process does not move it (the JSON keeps every round's rate, whether the
machine was quiet, and the all-rounds aggregate). Ratios: vs MONAI per-sample
(= 1.00) and vs medstack batched (= 1.00; < 1 means slower than it). Before every timed phase the script
waits (up to ``--max-wait`` s) until no other benchmark runs (``pgrep -f
benchmarks/bench_(io|dicom|store|convert|resample)``) and prints ``quiet machine: yes/no``.

After the table: a per-step breakdown (mean ms per call) of the three per-sample chains, and the top
torch operators of one batched call (``torch.profiler``), to show where the time goes. When CUDA is
available, ``BatchAugment`` is also timed on the GPU (``torch.cuda.synchronize`` around each batch).

Usage::

    python benchmarks/bench_transforms.py                         # 96^3, >= 50 samples per method
    python benchmarks/bench_transforms.py --patch 48 --samples 8  # quick (seconds)

Writes ``benchmarks/results/bench_transforms.json``; the phantom patches are cached in
``benchmarks/_data/transforms/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

OTHERS = r"benchmarks/bench_(io|dicom|store|convert|resample)"
THREADS = 2
DATA_VERSION = 1
LABELS = (0, 1, 2, 3)  # medstack.testing.PHANTOM_LABELS values + background
METHODS = ("medstack per-sample", "medstack batched", "MONAI per-sample", "MONAI lazy", "TorchIO per-sample")
REFERENCE = "MONAI per-sample"
BATCHED = "medstack batched"


# -- machine ------------------------------------------------------------------------------------------
def wait_quiet(max_wait: float) -> bool:
    """Wait until no other benchmark runs (at most ``max_wait`` s); print and return whether it is quiet."""
    return C.wait_quiet(OTHERS, max_wait)


def set_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    except Exception:
        pass


@contextlib.contextmanager
def _stderr_silenced():
    """Redirect file descriptor 2 (C++ log lines bypass Python's sys.stderr) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# -- data ---------------------------------------------------------------------------------------------
def make_data(patch: int, n: int):
    """``n`` samples ``{"image": Volume (2, P, P, P) float32, "label": Volume (1, P, P, P) uint8}``.

    Channels: T1- and T2-like phantoms (``medstack.testing``, seeds 0..n-1) on a 1 mm RAS grid centred on
    the phantom, each divided by its 99.5th percentile (values ~0..1). Cached as .npz.
    """
    import medstack
    from medstack import testing

    shape = (patch,) * 3
    affine = testing.center_affine(testing.axis_code_affine("RAS", spacing=(1.0, 1.0, 1.0)), shape)
    folder = C.DATA / "transforms"
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for seed in range(n):
        path = folder / f"v{DATA_VERSION}_{patch}_seed{seed}.npz"
        manifest = path.with_suffix(".json")
        want = {"version": DATA_VERSION, "shape": list(shape), "affine": affine.tolist(), "seed": seed}
        if path.exists() and manifest.exists() and json.loads(manifest.read_text()) == want:
            with np.load(path, allow_pickle=False) as z:
                image, label = z["image"], z["label"]
        else:
            t0 = time.perf_counter()
            t1, label_vol = testing.phantom_pair(shape, affine, seed=seed, kind="mr")
            t2 = testing.phantom(shape, affine, seed=seed, kind="mr_t2")
            chans = [np.asarray(v.data[0], dtype=np.float32) for v in (t1, t2)]
            image = np.stack([c / np.float32(np.percentile(c, 99.5)) for c in chans]).astype(np.float32)
            label = np.asarray(label_vol.data, dtype=np.uint8)
            np.savez(path, image=image, label=label)
            manifest.write_text(json.dumps(want))
            print(f"  generated {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        samples.append({"image": medstack.Volume(image, affine), "label": medstack.Volume(label, affine)})
    return samples, affine


# -- methods ------------------------------------------------------------------------------------------
# Each builder returns (step, n_per_call, steps_for_breakdown): step() augments the next sample (or batch)
# and returns (image, label) as tensors/arrays (C, ...) or (B, C, ...), for the checks.


def _breakdown(transforms, samples, extra_args=lambda i: ()):
    """(transform names, fn(i) -> seconds per transform on sample i): the chain's work, timed step by step;
    each transform is called as ``t(sample, *extra_args(i))``."""

    def breakdown_call(i):
        sample, times, args = samples[i % len(samples)], [], extra_args(i)
        for t in transforms:
            t0 = time.perf_counter()
            sample = t(sample, *args)
            times.append(time.perf_counter() - t0)
        return times

    return [type(t).__name__ for t in transforms], breakdown_call


def build_medstack(samples):
    from medstack import transforms as T

    chain = T.Compose([
        T.RandomAffine(keys=("image", "label"), rotation=15, scale=(0.9, 1.1), translation=5),
        T.RandomFlip(keys=("image", "label")),
        T.RandomContrast(keys="image"),
        T.RandomNoise(keys="image", std=(0, 0.1)),
    ], seed=0)  # fmt: skip
    counter = iter(range(1 << 62))

    def step():
        i = next(counter)
        out = chain(samples[i % len(samples)], index=i)
        return out["image"].data, out["label"].data

    # the same work as ``chain(sample, index=i)``: the transforms share item i's generator
    return step, 1, _breakdown(chain.transforms, samples, lambda i: (T.generator_for(chain.seed, 0, i),))


def build_batched(samples, batch: int, device: str = "cpu"):
    import torch

    from medstack.transforms.gpu import BatchAugment

    aug = BatchAugment(rotation=15, scale=(0.9, 1.1), translation=0.05, flip_axes=(0, 1, 2), contrast=(0.75, 1.25),
                       noise_std=(0, 0.1))  # fmt: skip
    picks = [samples[i % len(samples)] for i in range(batch)]
    images = torch.stack([s["image"].to_tensor() for s in picks]).to(device)
    labels = torch.stack([s["label"].to_tensor() for s in picks]).to(device)
    gen = torch.Generator().manual_seed(0)  # parameters drawn on the CPU, moved to the device by BatchAugment

    def step():
        out = aug(images, labels, generator=gen)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    def profile_top(k: int = 8):
        from torch.profiler import ProfilerActivity, profile

        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:  # its C++ start/stop lines
            aug(images, labels, generator=gen)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows) or 1.0
        return [(e.key, e.count, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in rows[:k]]

    return step, batch, profile_top


def _monai_compose(lazy: bool):
    from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised

    keys = ["image", "label"]
    transforms = [
        RandAffined(keys=keys, prob=1.0, rotate_range=(0.26,) * 3, scale_range=(0.1,) * 3, translate_range=(5,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandAdjustContrastd(keys=["image"], prob=1.0),
        RandGaussianNoised(keys=["image"], prob=1.0, std=0.1),
    ]  # fmt: skip
    if lazy:
        overrides = {"image": {"mode": "bilinear", "padding_mode": "zeros"},
                     "label": {"mode": "nearest", "padding_mode": "zeros"}}  # fmt: skip
        chain = Compose(transforms, lazy=True, overrides=overrides)
    else:
        chain = Compose(transforms)
    chain.set_random_state(seed=0)
    return chain


def build_monai(samples, lazy: bool = False):
    chain = _monai_compose(lazy)
    data = [{"image": s["image"].to_monai(), "label": s["label"].to_monai()} for s in samples]
    counter = iter(range(1 << 62))

    def step():
        out = chain(data[next(counter) % len(data)])
        return out["image"].as_tensor(), out["label"].as_tensor()

    if lazy:
        return step, 1, None
    return step, 1, _breakdown(_monai_compose(False).transforms, data)


def _torchio_compose():
    import torch
    import torchio as tio

    torch.manual_seed(0)  # TorchIO draws from torch's global generator
    return tio.Compose([
        tio.RandomAffine(scales=0.1, degrees=15, translation=5),
        tio.RandomFlip(axes=(0, 1, 2)),
        tio.RandomGamma(log_gamma=0.3),
        tio.RandomNoise(std=(0, 0.1)),
    ])  # fmt: skip


def build_torchio(samples):
    import torchio as tio

    def subject(s):
        img = s["image"].to_tensor().permute(0, 3, 2, 1).contiguous()  # (C, i, j, k), TorchIO's layout
        lab = s["label"].to_tensor().permute(0, 3, 2, 1).contiguous()
        aff = np.array(s["image"].affine)
        return tio.Subject(image=tio.ScalarImage(tensor=img, affine=aff), label=tio.LabelMap(tensor=lab, affine=aff))

    subjects = [subject(s) for s in samples]
    chain = _torchio_compose()
    counter = iter(range(1 << 62))

    def step():
        out = chain(subjects[next(counter) % len(subjects)])
        return out["image"].data, out["label"].data

    return step, 1, _breakdown(_torchio_compose().transforms, subjects)


# -- checks -------------------------------------------------------------------------------------------
def check(result, n_per_call: int, patch: int) -> tuple[str, str, str]:
    """(verdict, image dtype, label dtype) of one warm-up output."""
    import torch

    image, label = (torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in result)
    image, label = image.detach().cpu(), label.detach().cpu()
    lead = (n_per_call,) if n_per_call > 1 else ()
    problems = []
    if tuple(image.shape) != (*lead, 2, patch, patch, patch):
        problems.append(f"image shape {tuple(image.shape)}")
    if tuple(label.shape) != (*lead, 1, patch, patch, patch):
        problems.append(f"label shape {tuple(label.shape)}")
    if not bool(torch.isfinite(image.float()).all()):
        problems.append("image not finite")
    values = torch.unique(label.float()).tolist()
    if not set(values) <= set(map(float, LABELS)):
        problems.append(f"{len(values)} label values (interpolated?)")
    return ("ok" if not problems else "; ".join(problems)), C.dtype_of(image), C.dtype_of(label)


# -- timing -------------------------------------------------------------------------------------------
class OtherCpu:
    """CPU cores used by *other* processes between ``start()`` and ``stop()`` (Linux ``/proc/stat``).

    The quiet check only sees the other benchmarks; this also sees anything else (tests, builds).
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _busy_jiffies():
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle and iowait

    def start(self):
        t = os.times()
        self._t0 = (self._busy_jiffies(), t.user + t.system, time.perf_counter())

    def stop(self):
        busy0, own0, wall0 = self._t0
        busy1, t, wall1 = self._busy_jiffies(), os.times(), time.perf_counter()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return None
        return max(0.0, ((busy1 - busy0) / self.tick - (t.user + t.system - own0)) / (wall1 - wall0))


def run_timing(methods: dict, args) -> dict:
    results = {
        name: {"samples": 0, "seconds": 0.0, "round_rates": [], "quiet": [], "other_cores": []} for name in methods
    }
    names = list(methods)
    meter = OtherCpu()
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}:", flush=True)
        quiet = wait_quiet(args.max_wait)
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate to spread drift evenly
        other = []
        for name in order:
            step, n_per_call = methods[name]["step"], methods[name]["n_per_call"]
            calls = math.ceil(args.samples / args.rounds) if n_per_call == 1 else math.ceil(
                math.ceil(args.samples / n_per_call) / args.rounds)  # fmt: skip
            meter.start()
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            dt = time.perf_counter() - t0
            res = results[name]
            res["samples"] += calls * n_per_call
            res["seconds"] += dt
            res["round_rates"].append(calls * n_per_call / dt)
            res["quiet"].append(quiet)
            res["other_cores"].append(meter.stop())
            other.append(res["other_cores"][-1])
        if all(o is not None for o in other):
            print(f"  other processes used {max(other):.2f} cores at most during this round", flush=True)
    for res in results.values():
        res["aggregate_samples_per_s"] = res["samples"] / res["seconds"]
        res["samples_per_s"] = C.median(res["round_rates"])
        res["ms_per_sample"] = 1e3 / res["samples_per_s"]
    return results


def breakdown(build, count: int) -> dict:
    names, call = build
    rows = [call(i) for i in range(1, count + 1)]  # index 0 was the warm-up
    means = np.mean(np.array(rows), axis=0) * 1e3
    return {"steps": names, "ms": [float(m) for m in means], "total_ms": float(means.sum())}


# -- report -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch", type=int, default=96, help="patch edge P, patches are P^3 (default 96)")
    ap.add_argument("--batch", type=int, default=4, help="batch size of the batched path (default 4)")
    ap.add_argument(
        "--samples",
        type=int,
        default=52,
        help="samples timed per method, at least; rounded up to whole rounds (default 52 = 13 batches of 4)",
    )
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timed rounds, median reported (default 8)")
    ap.add_argument(
        "--breakdown",
        type=int,
        default=8,
        help="samples for the per-step breakdown of the per-sample chains (0 = skip; default 8)",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for a quiet machine (900)")
    ap.add_argument("--json", default="bench_transforms.json")
    args = ap.parse_args(argv)
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    args.rounds = max(1, min(args.rounds, args.samples))

    C.quiet()
    set_threads()
    import torch

    env = C.environment()
    print(f"python {env['python']}, torch {env['torch']}, monai {env['monai']}, torchio {env['torchio']}, "
          f"{env['cpus']} CPUs, torch threads {torch.get_num_threads()}")  # fmt: skip
    p = args.patch
    print(f"patch 2 x {p}^3 float32 image + 1 x {p}^3 uint8 label, batch {args.batch}, >= {args.samples} samples "
          f"per method in {args.rounds} rounds", flush=True)  # fmt: skip
    samples, _ = make_data(p, args.batch)

    builders = {
        "medstack per-sample": lambda: build_medstack(samples),
        "medstack batched": lambda: build_batched(samples, args.batch),
        "MONAI per-sample": lambda: build_monai(samples),
        "MONAI lazy": lambda: build_monai(samples, lazy=True),
        "TorchIO per-sample": lambda: build_torchio(samples),
    }
    methods = {}
    for name in (m for m in METHODS if m in wanted):
        try:
            step, n_per_call, extra = builders[name]()
            verdict, idt, ldt = check(step(), n_per_call, p)  # warm-up, untimed
            if n_per_call == 1:
                step()  # a second warm-up call for the per-sample chains
        except Exception as e:  # e.g. lazy=True unsupported: report, keep the others
            print(f"  {name}: not run ({type(e).__name__}: {e})", flush=True)
            continue
        methods[name] = {"step": step, "n_per_call": n_per_call, "extra": extra, "check": verdict,
                         "dtypes": f"{idt} / {ldt}"}  # fmt: skip

    timings = run_timing(methods, args)
    ref = timings.get(REFERENCE, {}).get("samples_per_s")
    bat = timings.get(BATCHED, {}).get("samples_per_s")
    headers = ["method", "samples", "ms/sample", "samples/s", "vs MONAI", "vs batched", "out dtype img / lbl", "check"]
    rows = []
    for name, res in timings.items():
        res["ratio_vs_monai"] = res["samples_per_s"] / ref if ref else None
        res["ratio_vs_batched"] = res["samples_per_s"] / bat if bat else None
        res["check"], res["dtypes"] = methods[name]["check"], methods[name]["dtypes"]
        rows.append([name, res["samples"], f"{res['ms_per_sample']:.1f}", f"{res['samples_per_s']:.2f}",
                     f"{res['ratio_vs_monai']:.2f}" if ref else "-", f"{res['ratio_vs_batched']:.2f}" if bat else "-",
                     res["dtypes"], res["check"]])  # fmt: skip
    quiet_all = all(q for res in timings.values() for q in res["quiet"])
    quiet_rounds = sum(all(res["quiet"][r] for res in timings.values()) for r in range(args.rounds))
    others = [o for res in timings.values() for o in res["other_cores"] if o is not None]
    others_note = f"; other processes used {min(others):.2f}-{max(others):.2f} cores" if others else ""
    print(f"\nAugmentation chain, 2 x {p}^3 + label, batch {args.batch}, {THREADS} threads "
          f"(quiet machine: {'yes' if quiet_all else 'no'}, {quiet_rounds}/{args.rounds} rounds quiet{others_note})")  # fmt: skip
    print(C.format_table(headers, rows, ["<", ">", ">", ">", ">", ">", "<", "<"]))
    print(f"samples/s: median of {args.rounds} interleaved rounds; vs MONAI = samples/s / MONAI per-sample's; "
          "vs batched = samples/s / medstack batched's (higher = faster)")  # fmt: skip

    goal = None
    if ref and bat:
        goal = bat / ref
        print(f"\nmedstack batched / MONAI per-sample = {goal:.2f} (goal >= 3){'' if goal >= 3 else '  NOT MET'}")

    gpu = None
    if torch.cuda.is_available() and "medstack batched" in methods:
        step, n_per_call, _ = build_batched(samples, args.batch, device="cuda")
        for _ in range(3):
            step()
        calls = max(12, math.ceil(args.samples / n_per_call))
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        dt = time.perf_counter() - t0
        gpu = {"device": torch.cuda.get_device_name(0), "samples": calls * n_per_call, "seconds": dt,
               "samples_per_s": calls * n_per_call / dt}  # fmt: skip
        print(f"GPU: medstack batched on {gpu['device']}: {gpu['samples_per_s']:.1f} samples/s "
              f"({1e3 * dt / (calls * n_per_call):.2f} ms/sample, {calls} batches)")  # fmt: skip
    else:
        print("GPU: not available")

    breakdowns = {}
    if args.breakdown > 0:
        print(f"\nPer-step breakdown (mean ms per call over {args.breakdown} samples):", flush=True)
        wait_quiet(args.max_wait)
        for name in ("medstack per-sample", "MONAI per-sample", "TorchIO per-sample"):
            if name in methods and methods[name]["extra"]:
                bd = breakdown(methods[name]["extra"], args.breakdown)
                breakdowns[name] = bd
                parts = ", ".join(f"{s} {m:.1f}" for s, m in zip(bd["steps"], bd["ms"]))
                print(f"  {name}: {parts}  (total {bd['total_ms']:.1f} ms)")
        if BATCHED in methods:
            top = methods[BATCHED]["extra"]()
            breakdowns[BATCHED] = [{"op": k, "calls": c, "ms": ms, "share": sh} for k, c, ms, sh in top]
            print(f"  {BATCHED} (one batch of {args.batch}, torch.profiler, top ops by self CPU time):")
            for k, c, ms, sh in top:
                print(f"    {k:<32} {c:>4} calls  {ms:8.1f} ms  {100 * sh:5.1f}%")

    payload = {
        "benchmark": "bench_transforms",
        "args": vars(args),
        "environment": env,
        "threads": THREADS,
        "quiet_machine": quiet_all,
        "quiet_rounds": quiet_rounds,
        "other_processes_cores": [min(others), max(others)] if others else None,
        "results": timings,
        "goal": {"batched_over_monai": goal, "target": 3.0, "met": bool(goal is not None and goal >= 3)},
        "gpu": gpu,
        "breakdown": breakdowns,
    }
    path = C.write_json(args.json, payload)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
