"""Shared helpers for the medstack benchmarks: deterministic CT-like data, timing, tables, JSON.

Nothing here asserts on timings: the benchmarks print medians and ratios (the machines they run on are
shared and noisy).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# torch's idle OpenMP workers (after a MONAI/TorchIO call) otherwise spin for a while and steal a core
# from the next method on a small machine; must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
RESULTS = HERE / "results"
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

#: Bump when ct_like_volume changes, so cached files are regenerated.
GENERATOR_VERSION = 1
MB = 1e6  # MB/s in the tables are decimal megabytes of uncompressed voxel data per second


def quiet() -> None:
    """Silence third-party warnings and log noise (TorchIO, MONAI, nibabel, h5py, ITK)."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("monai", "torchio", "nibabel", "h5py", "medstack"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except Exception:
        pass


def others_running(pattern: str) -> list[str]:
    """Command lines of other processes matching ``pattern`` (other benchmarks; pgrep excludes itself)."""
    try:
        res = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    except OSError:  # no pgrep
        return []
    return [line for line in res.stdout.splitlines() if line.strip()]


def other_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over ``seconds`` (this process sleeps meanwhile), from /proc/stat;
    0.0 where unavailable."""

    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(t1 - t0, 1))


def wait_quiet(pattern: str, max_wait: float, *, max_other_cores: float | None = None, poll: float = 10.0,
               report: bool = True) -> bool:  # fmt: skip
    """Wait (at most ``max_wait`` s) until no other benchmark (``pattern``) runs and, when ``max_other_cores``
    is given, other processes keep fewer cores than that busy. Prints the reason while waiting and, when
    ``report`` (or after waiting), ``quiet machine: yes/no``. True when quiet."""
    t0, waited = time.monotonic(), False
    while True:
        busy = others_running(pattern)
        load = other_cores() if max_other_cores is not None else 0.0
        quiet = not busy and (max_other_cores is None or load < max_other_cores)
        if quiet or time.monotonic() - t0 >= max_wait:
            break
        what = f"{len(busy)} other benchmark(s): {busy[0][:60]}" if busy else f"other processes use {load:.1f} cores"
        print(f"  waiting for a quiet machine ({what}) ...", flush=True)
        waited = True
        time.sleep(poll)
    if report or waited:
        detail = f" (other benchmarks: {len(busy)}, other processes: {load:.1f} cores)" if max_other_cores is not None else ""
        print(f"  quiet machine: {'yes' if quiet else 'no'}{detail}", flush=True)
    return quiet


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"512,512,300"`` -> ``(512, 512, 300)``: NIfTI order ``x, y, z`` = columns, rows, slices."""
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise SystemExit(f"--shape wants three positive sizes x,y,z (e.g. 512,512,300), got {text!r}")
    return parts[0], parts[1], parts[2]


def ct_like_volume(shape_xyz, seed: int) -> np.ndarray:
    """A deterministic CT-like int16 volume in HU, array order ``(D, H, W)`` (slices, rows, columns).

    Reconstruction circle padded with -1024 outside, air with noise, an elliptic body (fat rim, soft
    tissue with a smooth texture), two lungs in the middle slices, a spine with cortical bone, and
    Gaussian noise (sigma ~12 HU), quantised to int16: gzip compresses it about 2.5-3.5x, like real CT.
    """
    nx, ny, nz = shape_xyz
    rng = np.random.default_rng(seed)
    # per-volume variation of the anatomy
    body_a, body_b = 0.78 + 0.06 * rng.random(), 0.55 + 0.06 * rng.random()
    phase = 2 * np.pi * rng.random()
    u = ((np.arange(nx, dtype=np.float32) + 0.5) / nx * 2 - 1)[None, :]
    v = ((np.arange(ny, dtype=np.float32) + 0.5) / ny * 2 - 1)[:, None]
    r2 = u * u + v * v
    fov = r2 <= 0.98
    texture_uv = (np.sin(7 * u + phase) * np.cos(5 * v)).astype(np.float32)
    out = np.empty((nz, ny, nx), dtype=np.int16)
    for k in range(nz):
        t = (k + 0.5) / nz
        s = 1.0 + 0.06 * np.sin(2 * np.pi * t + phase)
        body = (u / (body_a * s)) ** 2 + ((v - 0.05) / (body_b * s)) ** 2
        sl = np.full((ny, nx), -1000.0, dtype=np.float32)
        sl[body <= 1.0] = -100.0  # fat rim
        inner = body <= 0.85
        sl[inner] = 40.0 + 25.0 * texture_uv[inner] * np.float32(np.cos(3 * np.pi * t + phase))
        lung_size = max(0.0, np.sin(np.pi * (t - 0.15) / 0.6)) if 0.15 < t < 0.75 else 0.0
        if lung_size > 0:
            for cx in (-0.33, 0.33):
                lung = ((u - cx) / (0.22 * lung_size + 1e-6)) ** 2 + ((v + 0.02) / (0.32 * lung_size + 1e-6)) ** 2
                sl[lung <= 1.0] = -850.0
        spine = (u / 0.09) ** 2 + ((v - 0.38) / 0.09) ** 2
        sl[spine <= 1.0] = 1000.0  # cortical bone
        sl[spine <= 0.6] = 300.0  # cancellous bone
        sl += rng.standard_normal((ny, nx), dtype=np.float32) * np.float32(12.0)
        sl[~fov] = -1024.0
        np.rint(sl, out=sl)
        out[k] = sl
    return out


def ct_affine(shape_xyz) -> np.ndarray:
    """A typical axial CT affine (RAS+, from LPS DICOM): 0.7 mm in-plane, 1.0 mm slices."""
    nx, ny, _ = shape_xyz
    aff = np.diag([-0.7, -0.7, 1.0, 1.0])
    aff[:3, 3] = [0.35 * nx, 0.35 * ny, -150.0]
    return aff


def median(xs) -> float:
    return float(statistics.median(xs))


def timed(fn) -> tuple[float, object]:
    """Run ``fn()`` once; return (seconds, result)."""
    t0 = time.perf_counter()
    res = fn()
    return time.perf_counter() - t0, res


def release(*objs) -> None:
    del objs
    gc.collect()


def dtype_of(res) -> str:
    """Output dtype of a benchmark result (numpy array or torch tensor)."""
    dt = getattr(res, "dtype", None)
    return str(dt).replace("torch.", "") if dt is not None else "?"


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    for mod in ("numpy", "nibabel", "SimpleITK", "monai", "torchio", "torch", "h5py", "isal"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception:
            env[mod] = None
    try:
        import medstack

        env["medstack"] = medstack.__version__
    except Exception:
        env["medstack"] = None
    return env


def format_table(headers, rows, aligns=None) -> str:
    """A plain-text table (left-aligned first column, right-aligned numbers)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)

    def line(vals):
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(vals, aligns, widths)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def fmt_s(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.3f}"
