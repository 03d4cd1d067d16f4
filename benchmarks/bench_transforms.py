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

Second section (``--nnunet`` runs only it, ``--no-nnunet`` skips it): nnU-Net's default training augmentation
on one batch of ``--nn-batch`` (2) x 1 x P^3 float32 CT-like volumes (``(HU + 1100) / 1000``, strictly positive)
+ uint8 labels (0/1/2), P = ``--nn-patch`` (128; 64 with ``--quick``), ``--nn-repeats`` (40) interleaved
batches per method (a new random draw each; median and mean per batch reported):

- ``medstack CPU`` / ``CUDA``: ``BatchAugment.nnunet(spacing=(1, 1, 1), patch_size=(P,) * 3)`` on the whole
  batch; ``out_size`` rows read the input with ``margin((P,) * 3)`` voxels each side and return P^3;
- ``MONAI per-sample``: ``Compose([RandRotated(+-30 deg x/y/z, prob 0.2), RandZoomd(0.7-1.4, prob 0.2),
  RandGaussianNoised(std 0.1, prob 0.1), RandGaussianSmoothd(sigma 0.5-1, prob 0.2),
  RandScaleIntensityd(factors 0.25, prob 0.15), RandScaleIntensityFixedMeand(0.25, preserve_range, prob 0.15),
  RandSimulateLowResolutiond(zoom 0.5-1, prob 0.25), RandAdjustContrastd(gamma 0.7-1.5, invert_image,
  retain_stats, prob 0.1), RandAdjustContrastd(gamma 0.7-1.5, retain_stats, prob 0.3), RandFlipd x 3 (0.5)])``;
- ``TorchIO per-sample``: ``Compose([RandomAffine(scales=(0.7, 1.4), isotropic, degrees=30, p=0.2),
  RandomNoise(std=(0, 0.1), p=0.1), RandomBlur(std=(0.5, 1), p=0.2), RandomGamma(log_gamma=(log 0.7, log 1.5),
  p=0.3), RandomAnisotropy(downsampling=(1, 2), p=0.25), RandomFlip(axes=(0, 1, 2))])`` (TorchIO has no
  multiplicative brightness, contrast or inverted gamma: left out);
- ``batchgenerators`` (only when importable; not a medstack dependency): nnU-Net v1's default 3D chain
  (SpatialTransform rotation +-30 deg / scale 0.7-1.4 p 0.2 each, cubic data, GaussianNoise, GaussianBlur,
  BrightnessMultiplicative, ContrastAugmentation, SimulateLowResolution, Gamma inverted + Gamma, Mirror).

Then the padding fraction of medstack's output without and with the margin (output voxels sampled outside
the input: nearest-resampled label volume of ones, output 0 = padding).

Usage::

    python benchmarks/bench_transforms.py                         # both sections, 96^3 chain, 128^3 nnU-Net
    python benchmarks/bench_transforms.py --quick                 # both, 48^3 / 64^3 (~25 s on 2 cores)
    python benchmarks/bench_transforms.py --nnunet [--quick]      # only the nnU-Net section
    python benchmarks/bench_transforms.py --patch 48 --samples 8 --no-nnunet  # chain only, small

Writes ``benchmarks/results/bench_transforms[_quick].json`` and ``bench_transforms_nnunet[_quick].json``
(+ ``.txt``, the printed table); the phantom patches are cached in ``benchmarks/_data/transforms/``.
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


# -- nnU-Net preset -------------------------------------------------------------------------------------------
NN_METHODS = ("medstack CPU", "medstack CPU out_size", "medstack CUDA", "medstack CUDA out_size", "MONAI per-sample",
              "TorchIO per-sample", "batchgenerators")  # fmt: skip
NN_REFERENCE = "medstack CPU"


def nn_data(patch: int, batch: int, margin, seed: int = 0):
    """(images, labels) of shape (B, 1, P, P, P) float32 / uint8 and the same centred inside a larger
    (B, 1, P + 2 m_d, P + 2 m_h, P + 2 m_w) read (for ``out_size``): CT-like volumes (``_common``) mapped to
    ``(HU + 1100) / 1000`` (strictly positive, ~0.08 - 2.1), labels 0 air / 1 soft tissue / 2 bone."""
    big = tuple(patch + 2 * m for m in margin)
    imgs, labs = [], []
    for i in range(batch):
        vol = C.ct_like_volume(big[::-1], seed=seed + i).astype(np.float32)  # (D, H, W) = big
        imgs.append((vol + 1100.0) / 1000.0)
        labs.append(np.where(vol < -500, 0, np.where(vol > 200, 2, 1)).astype(np.uint8))
    big_img, big_lab = np.stack(imgs)[:, None], np.stack(labs)[:, None]
    sl = (slice(None), slice(None), *(slice(m, m + patch) for m in margin))
    return (np.ascontiguousarray(big_img[sl]), np.ascontiguousarray(big_lab[sl]), big_img, big_lab)


def nn_medstack(data, patch: int, device: str, out_size: bool):
    import torch

    from medstack.transforms.gpu import BatchAugment

    aug = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=(patch,) * 3)
    img, lab, big_img, big_lab = data
    images = torch.from_numpy(big_img if out_size else img).to(device)
    labels = torch.from_numpy(big_lab if out_size else lab).to(device)
    gen = torch.Generator().manual_seed(0)
    kw = {"out_size": (patch,) * 3} if out_size else {}

    def step():
        out = aug(images, labels, generator=gen, **kw)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    return step


def _nn_monai_chain():
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotated,
        RandScaleIntensityd,  # fmt: skip
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
        RandZoomd,
    )

    keys, rad = ["image", "label"], math.radians(30)
    chain = Compose([
        RandRotated(keys=keys, range_x=rad, range_y=rad, range_z=rad, prob=0.2, keep_size=True,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandZoomd(keys=keys, min_zoom=0.7, max_zoom=1.4, prob=0.2, keep_size=True, mode=("trilinear", "nearest"),
                  padding_mode="constant"),
        RandGaussianNoised(keys=["image"], prob=0.1, std=0.1),
        RandGaussianSmoothd(keys=["image"], sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
        RandScaleIntensityd(keys=["image"], factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys=["image"], factors=0.25, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond(keys=["image"], zoom_range=(0.5, 1.0), prob=0.25),
        RandAdjustContrastd(keys=["image"], gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1),
        RandAdjustContrastd(keys=["image"], gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
    ])  # fmt: skip
    chain.set_random_state(seed=0)
    return chain


def nn_monai(data):
    import torch
    from monai.data import MetaTensor

    chain = _nn_monai_chain()
    img, lab = data[0], data[1]
    items = [{"image": MetaTensor(torch.from_numpy(img[i])), "label": MetaTensor(torch.from_numpy(lab[i]))}
             for i in range(len(img))]  # fmt: skip

    def step():
        outs = [chain(dict(d)) for d in items]
        return (
            torch.stack([o["image"].as_tensor() for o in outs]),
            torch.stack([o["label"].as_tensor() for o in outs]),
        )

    return step


def nn_torchio(data):
    import torch
    import torchio as tio

    torch.manual_seed(0)  # TorchIO draws from torch's global generator
    chain = tio.Compose([
        tio.RandomAffine(scales=(0.7, 1.4), isotropic=True, degrees=30, default_pad_value=0, p=0.2),
        tio.RandomNoise(std=(0, 0.1), p=0.1),
        tio.RandomBlur(std=(0.5, 1.0), p=0.2),
        tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=0.3),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.0, 2.0), p=0.25),
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5),
    ])  # fmt: skip
    img, lab = data[0], data[1]
    subjects = [tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(img[i])),
                            label=tio.LabelMap(tensor=torch.from_numpy(lab[i]))) for i in range(len(img))]  # fmt: skip

    def step():
        outs = [chain(s) for s in subjects]
        return torch.stack([o["image"].data for o in outs]), torch.stack([o["label"].data for o in outs])

    return step


def nn_batchgenerators_install_note() -> str | None:
    """None when batchgenerators imports, else the reason (it is not a medstack dependency)."""
    try:
        import batchgenerators  # noqa: F401
        from batchgenerators.transforms.spatial_transforms import SpatialTransform  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def nn_batchgenerators(data, patch: int):
    """nnU-Net v1's default 3D training augmentation (``default_3D_augmentation_params``,
    ``get_moreDA_augmentation``), less its label bookkeeping (RemoveLabel, Rename, NumpyToTensor)."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    rad = math.radians(30)
    chain = Compose([
        SpatialTransform((patch,) * 3, patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=(-rad, rad), angle_y=(-rad, rad), angle_z=(-rad, rad),
                         p_rot_per_axis=1, do_scale=True, scale=(0.7, 1.4), border_mode_data="constant",
                         border_cval_data=0, order_data=3, border_mode_seg="constant", border_cval_seg=-1,
                         order_seg=1, random_crop=False, p_el_per_sample=0, p_scale_per_sample=0.2,
                         p_rot_per_sample=0.2, independent_scale_for_each_axis=False),
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25),
        GammaTransform((0.7, 1.5), True, True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), False, True, retain_stats=True, p_per_sample=0.3),
        MirrorTransform((0, 1, 2)),
    ])  # fmt: skip
    np.random.seed(0)  # noqa: NPY002 - batchgenerators draws from NumPy's global generator
    img, seg = data[0], data[1].astype(np.float32)

    def step():
        out = chain(data=img.copy(), seg=seg.copy())  # intensity transforms work in place
        return out["data"], out["seg"]

    return step


def nn_check(result, batch: int, patch: int) -> str:
    import torch

    image, label = (torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x.detach().cpu() for x in result)
    problems = []
    if tuple(image.shape) != (batch, 1, patch, patch, patch):
        problems.append(f"image shape {tuple(image.shape)}")
    if tuple(label.shape) != (batch, 1, patch, patch, patch):
        problems.append(f"label shape {tuple(label.shape)}")
    if not bool(torch.isfinite(image.float()).all()):
        problems.append("image not finite")
    values = set(torch.unique(label.float()).tolist())
    if not values <= {-1.0, 0.0, 1.0, 2.0}:  # -1: batchgenerators' border_cval_seg
        problems.append(f"{len(values)} label values")
    return "ok" if not problems else "; ".join(problems)


def nn_padding(patch: int, batch: int, margin, batches: int, **overrides) -> dict:
    """Fraction of medstack's output voxels that are padding, without and with the margin: the labels are a
    volume of ones (strictly positive) resampled with nearest neighbour and zero padding, so an output label
    0 means the output voxel samples outside the input (the image channel is bilinear: a fringe of voxels
    next to those is partly padded too)."""
    import torch

    from medstack.transforms.gpu import BatchAugment

    aug = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=(patch,) * 3, **overrides)
    res = {}
    for name, shape, kw in (("no margin", (patch,) * 3, {}),
                            ("margin", tuple(patch + 2 * m for m in margin), {"out_size": (patch,) * 3})):  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        ones = torch.ones((batch, 1, *shape), dtype=torch.uint8)
        image = torch.ones((batch, 1, *shape), dtype=torch.float32)
        fr = []
        for _ in range(batches):
            _, lab = aug(image, ones, generator=gen, **kw)
            fr.extend((lab == 0).float().mean(dim=(1, 2, 3, 4)).tolist())
        res[name] = {"mean": float(np.mean(fr)), "max": float(np.max(fr)), "samples": len(fr),
                     "padded_samples": int(sum(f > 0 for f in fr))}  # fmt: skip
    return res


def run_nnunet(args, env) -> dict:
    import torch

    p, b, reps = args.nn_patch, args.nn_batch, args.nn_repeats
    from medstack.transforms.gpu import BatchAugment

    margin = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=(p,) * 3).margin((p,) * 3)
    big = tuple(p + 2 * m for m in margin)
    print(f"\n== nnU-Net default augmentation: batch {b} x 1 x {p}^3 float32 + uint8 labels, {reps} repeats; "
          f"margin {margin} -> out_size input {big} ==", flush=True)  # fmt: skip
    data = nn_data(p, b, margin)
    builders = {
        "medstack CPU": lambda: nn_medstack(data, p, "cpu", False),
        "medstack CPU out_size": lambda: nn_medstack(data, p, "cpu", True),
        "MONAI per-sample": lambda: nn_monai(data),
        "TorchIO per-sample": lambda: nn_torchio(data),
        "batchgenerators": lambda: nn_batchgenerators(data, p),
    }
    notes = []
    if torch.cuda.is_available():
        builders["medstack CUDA"] = lambda: nn_medstack(data, p, "cuda", False)
        builders["medstack CUDA out_size"] = lambda: nn_medstack(data, p, "cuda", True)
    else:
        notes.append("medstack CUDA: not available here (torch.cuda.is_available() is False)")
    bg_note = nn_batchgenerators_install_note()
    if bg_note is not None:
        del builders["batchgenerators"]
        notes.append(f"batchgenerators: not installable here ({bg_note})")
    wanted = [m for m in NN_METHODS if m in builders and m in args.nn_methods]
    methods = {}
    for name in wanted:
        try:
            step = builders[name]()
            verdict = nn_check(step(), b, p)  # warm-up, untimed
            step()
        except ImportError as e:
            notes.append(f"{name}: skipped ({type(e).__name__}: {e})")
            continue
        except Exception as e:
            notes.append(f"{name}: not run ({type(e).__name__}: {e})")
            continue
        methods[name] = {"step": step, "check": verdict, "seconds": []}
    quiet = wait_quiet(args.max_wait)
    names = list(methods)
    for r in range(reps):  # interleaved, order rotated: a disturbance hits every method alike
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t, _ = C.timed(methods[name]["step"])
            methods[name]["seconds"].append(t)
    ref = C.median(methods[NN_REFERENCE]["seconds"]) if NN_REFERENCE in methods else None
    ref_mean = float(np.mean(methods[NN_REFERENCE]["seconds"])) if NN_REFERENCE in methods else None
    headers = ["method", "median s/batch", "mean s/batch", "samples/s", "vs medstack CPU", "(mean)", "check"]
    rows, results = [], {}
    for name, m in methods.items():
        med, mean = C.median(m["seconds"]), float(np.mean(m["seconds"]))
        ratio, ratio_mean = (med / ref, mean / ref_mean) if ref else (None, None)
        results[name] = {"seconds": m["seconds"], "median_s": med, "mean_s": mean, "samples_per_s": b / med,
                         "samples_per_s_mean": b / mean, "ratio_vs_medstack_cpu": ratio,
                         "ratio_vs_medstack_cpu_mean": ratio_mean, "check": m["check"]}  # fmt: skip
        rows.append([name, C.fmt_s(med), C.fmt_s(mean), f"{b / med:.2f}", f"{ratio:.2f}" if ratio else "-",
                     f"{ratio_mean:.2f}" if ratio else "-", m["check"]])  # fmt: skip
    title = (f"nnU-Net default augmentation, batch {b} x 1 x {p}^3, {THREADS} threads, median of {reps} interleaved "
             f"batches (quiet machine: {'yes' if quiet else 'no'})")  # fmt: skip
    table = C.format_table(headers, rows, ["<", ">", ">", ">", ">", ">", "<"])
    legend = ("samples/s = batch / median s; vs medstack CPU = method median / medstack CPU median, (mean) = the same "
              "with means (peer time / medstack time: > 1 = medstack faster); each op fires with its own "
              "probability, so batches differ: the mean is the throughput, the median the typical batch; "
              "out_size rows read the larger margin input")  # fmt: skip
    print(f"\n{title}\n{table}\n{legend}")
    for n in notes:
        print(f"  {n}")
    pad_batches = max(4, args.nn_pad_samples // b)
    pad = {
        "preset": nn_padding(p, b, margin, pad_batches),
        "p_rotation=p_scale=1": nn_padding(p, b, margin, max(2, pad_batches // 4), p_rotation=1.0, p_scale=1.0),
    }
    pad_lines = [f"Padding fraction of medstack's output (voxels = pad value 0 for a strictly positive input; "
                 f"nearest-resampled ones, {pad_batches * b} samples):"]  # fmt: skip
    for cfg, res in pad.items():
        parts = [f"{k}: mean {100 * v['mean']:.2f}% (max {100 * v['max']:.1f}%, {v['padded_samples']}/{v['samples']}"
                 f" samples padded)" for k, v in res.items()]  # fmt: skip
        pad_lines.append(f"  {cfg:<22} " + "; ".join(parts))
    print("\n".join(pad_lines))
    text = "\n".join([title, table, legend, *(f"  {n}" for n in notes), *pad_lines])
    payload = {"benchmark": "bench_transforms --nnunet", "environment": env, "threads": THREADS, "patch": p,
               "batch": b, "repeats": reps, "margin": list(margin), "out_size_input": list(big), "quiet_machine": quiet,
               "results": results, "notes": notes, "padding": pad, "table": text}  # fmt: skip
    path = C.write_json(args.nn_json, payload)
    path.with_suffix(".txt").write_text(text + "\n")
    print(f"results: {path} (+ .txt)", flush=True)
    return payload


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
    ap.add_argument("--json", default=None, help="results/ JSON (bench_transforms[_quick].json)")
    ap.add_argument("--nnunet", action="store_true", help="only the nnU-Net preset section (default: both sections)")
    ap.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net preset section")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: chain --patch 48 --samples 8 --rounds 2 --breakdown 0; nnU-Net 64^3, 40 repeats",
    )
    ap.add_argument("--nn-patch", type=int, default=None, help="nnU-Net section patch edge (128; 64 with --quick)")
    ap.add_argument("--nn-batch", type=int, default=2, help="nnU-Net section batch size (default 2)")
    ap.add_argument("--nn-repeats", type=int, default=None, help="nnU-Net section timed batches (40)")
    ap.add_argument("--nn-pad-samples", type=int, default=None, help="samples for the padding fraction (64; 16 quick)")
    ap.add_argument("--nn-methods", default=",".join(NN_METHODS), help="subset of: " + ", ".join(NN_METHODS))
    ap.add_argument(
        "--nn-json",
        default=None,
        help="nnU-Net section JSON (+ .txt table) in results/ (bench_transforms_nnunet[_quick].json)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.patch, args.samples, args.rounds, args.breakdown = 48, 8, 2, 0
    args.nn_patch = args.nn_patch or (64 if args.quick else 128)
    args.nn_repeats = args.nn_repeats or 40
    args.nn_pad_samples = args.nn_pad_samples or (16 if args.quick else 64)
    args.json = args.json or f"bench_transforms{'_quick' if args.quick else ''}.json"
    args.nn_json = args.nn_json or f"bench_transforms_nnunet{'_quick' if args.quick else ''}.json"
    args.nn_methods = [m.strip() for m in args.nn_methods.split(",") if m.strip()]
    if set(args.nn_methods) - set(NN_METHODS):
        raise SystemExit(f"--nn-methods: unknown {sorted(set(args.nn_methods) - set(NN_METHODS))}")
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
    if args.nnunet:
        run_nnunet(args, env)
        return 0
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
    if not args.no_nnunet:
        run_nnunet(args, env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
