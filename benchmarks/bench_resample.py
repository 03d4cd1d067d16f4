"""Resampling to 1 mm isotropic: medstack vs SimpleITK, MONAI, TorchIO, scipy and bare ``F.interpolate``.

A CT-like int16 volume ``(D, H, W) = (300, 512, 512)`` with spacing ``(2.5, 0.7, 0.7)`` mm (an axial LPS
stack, ``medstack.testing.phantom(kind="ct")``) goes to 1 mm isotropic with linear interpolation, and
its label map (``kind="label"``, uint8) with nearest neighbour. Every method keeps the field of view
where it has a notion of one; the target is ``medstack.resample.target_grid``'s ``750 x 358 x 358``.

Methods (one thread budget: ``torch.set_num_threads(2)``, SimpleITK's global default of 2 threads,
scipy single-threaded by design):

- ``medstack.resample(vol, spacing=1.0)`` (float32 out) / ``mode="nearest", is_label=True``;
- SimpleITK ``ResampleImageFilter`` onto the same reference grid (sitkLinear, float32 out /
  sitkNearestNeighbor, uint8 out) — the reference for correctness;
- MONAI ``Spacing(pixdim=(1, 1, 1), mode="bilinear", dtype=torch.float32)`` on ``vol.to_monai()``, and its
  default ``dtype=float64`` (needs ~6 GB; ``--no-monai-f64`` to skip); labels with ``mode="nearest"``;
- TorchIO ``Resample(1.0)`` on a ``ScalarImage`` / ``LabelMap`` built from the ``(C, i, j, k)`` tensor and the
  affine (TorchIO keeps SimpleITK's output type: int16 in, int16 out, truncated), and on a float32 copy of
  the CT tensor (cast untimed);
- ``scipy.ndimage.zoom(order=1, output=float32)`` / ``order=0`` with factors ``(2.5, 0.7, 0.7)`` on the
  ``(D, H, W)`` array;
- bare ``torch.nn.functional.interpolate(scale_factor=(2.5, 0.7, 0.7), mode="trilinear",
  align_corners=False)`` (default ``recompute_scale_factor``; input cast to float32 inside the timing) /
  ``mode="nearest"`` on the uint8 tensor.

Timing: one untimed warm-up call per method (its output is used for the correctness check), then
``--repeats`` rounds, every method once per round (interleaved); the median is reported. Before each
timed phase and each round the script waits (up to ``--max-wait``, 15 minutes) until no other benchmark
runs (``pgrep -f benchmarks/bench_(io|dicom|store|convert)``) and the CPUs are at least ``--min-idle``
(85%) idle over 1 s, and prints ``quiet machine: yes/no`` (no: it had to time on a busy machine).

Correctness: the maximum and mean absolute difference to SimpleITK in the interior (2 voxels at every
border excluded). Methods that return an affine (MONAI, TorchIO) are compared in world space: when
their grid equals medstack's, voxel by voxel against the SimpleITK reference; otherwise against
SimpleITK resampled onto *their* grid (untimed), and the table says "own grid". Methods without an
affine (scipy, ``F.interpolate``) are compared voxel by voxel on the 750 x 358 x 358 field-of-view
grid their shapes imply. For labels: the fraction of interior voxels equal to SimpleITK's.

Modes (a third table, ``--modes-only`` runs just it): medstack's two strategies for axis-aligned grids,
``method="slices"`` (the CPU default) vs ``method="volume"`` (whole-volume kernels, the CUDA default), against bare
``F.interpolate``; anisotropic resampling (``anisotropic=True``: in-plane linear / cubic, nearest along the slice
axis, nnU-Net's ``order_z=0``) next to MONAI ``Spacing`` (bilinear, and ``mode=3``: scipy spline order 3), which has
no separate-axis order; labels through one-hot (``label_mode="onehot"``) next to MONAI's equivalent (one-hot
channels, ``Spacing`` bilinear, argmax). nnU-Net's own resampling (batchgenerators / nnunetv2) is not installed
here, so it is not timed. On a CUDA machine the same rows run on the GPU (float32 CT as in the issue, uint8
labels), with ratios to bare ``F.interpolate`` on the GPU. Ratios: method / the group's first row.

Usage::

    python benchmarks/bench_resample.py                              # 512x512x300, median of 5 runs
    python benchmarks/bench_resample.py --size 128 --slices 40 --repeats 3   # quick (seconds)
    python benchmarks/bench_resample.py --modes-only --size 128 --slices 40 --repeats 3

Writes ``benchmarks/results/bench_resample.json``; data is cached in ``benchmarks/_data/resample/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SPACING_IJK = (0.7, 0.7, 2.5)  # axis_code_affine order: i (columns), j (rows), k (slices)
TARGET = 1.0  # mm, isotropic
BORDER = 2  # interior = everything but BORDER voxels at each face
OTHERS = r"benchmarks/bench_(io|dicom|store|convert)"
THREADS = 2
DATA_VERSION = 1


# -- machine ------------------------------------------------------------------------------------------
def wait_quiet(max_wait: float, min_idle: float, *, report: bool = True) -> bool:
    """Wait until no other benchmark runs and the CPUs are at least ``min_idle`` idle (at most ``max_wait`` s)."""
    return C.wait_quiet(OTHERS, max_wait, max_other_cores=(1 - min_idle) * (os.cpu_count() or 1), report=report)


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


# -- data ---------------------------------------------------------------------------------------------
def make_data(slices: int, size: int):
    """CT int16 and label uint8 Volumes (1, D, H, W) on a centred LPS grid; cached as .npy."""
    import medstack
    from medstack import testing

    shape = (slices, size, size)
    affine = testing.center_affine(testing.axis_code_affine("LPS", spacing=SPACING_IJK), shape)
    folder = C.DATA / "resample"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"v{DATA_VERSION}_{slices}x{size}x{size}"
    out = {}
    for kind in ("ct", "label"):
        path = folder / f"{stem}_{kind}.npy"
        manifest = folder / f"{stem}_{kind}.json"
        want = {"version": DATA_VERSION, "shape": list(shape), "affine": affine.tolist(), "kind": kind, "seed": 0}
        if path.exists() and manifest.exists() and json.loads(manifest.read_text()) == want:
            arr = np.load(path, allow_pickle=False)
        else:
            t0 = time.perf_counter()
            arr = testing.phantom(shape, affine, seed=0, kind=kind).data
            np.save(path, arr, allow_pickle=False)
            manifest.write_text(json.dumps(want))
            print(f"  generated {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        out[kind] = medstack.Volume(arr, affine)
    return out["ct"], out["label"]


# -- SimpleITK reference ------------------------------------------------------------------------------
def sitk_resampler(image, affine_ras: np.ndarray, shape_dhw, interpolator, pixel_type, default: float):
    import SimpleITK as sitk

    from medstack import geometry

    lps = geometry.ras_to_lps(np.asarray(affine_ras, dtype=np.float64))
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin([float(v) for v in lps[:3, 3]])
    f.SetOutputSpacing([float(v) for v in geometry.spacing(lps)])
    f.SetOutputDirection([float(v) for v in geometry.direction(lps).reshape(-1)])
    f.SetSize([int(s) for s in shape_dhw[::-1]])
    f.SetInterpolator(interpolator)
    f.SetOutputPixelType(pixel_type)
    f.SetDefaultPixelValue(float(default))
    f.SetNumberOfThreads(THREADS)
    return f


# -- methods ------------------------------------------------------------------------------------------
def build_methods(vol, *, label: bool, grid_affine, grid_shape, monai_f64: bool):
    """name -> (timed callable, untimed converter to ((D, H, W) numpy array, affine or None))."""
    import monai.transforms as mt
    import scipy.ndimage as ndi
    import SimpleITK as sitk
    import torch
    import torch.nn.functional as F
    import torchio as tio

    import medstack

    arr3 = np.asarray(vol.data[0])
    factors = tuple(float(s) / TARGET for s in vol.spacing)  # (D, H, W): (2.5, 0.7, 0.7)
    image = vol.to_sitk()
    mono = vol.to_monai()
    tio_img = (tio.LabelMap if label else tio.ScalarImage)(tensor=mono.as_tensor().clone(), affine=np.array(vol.affine))
    default = float(arr3.min())

    def ijk_out(t, affine):  # (C, i, j, k) -> (D, H, W) of channel 0
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        return np.asarray(a[0]).transpose(2, 1, 0), np.asarray(affine, dtype=np.float64)

    m = {}
    if label:
        f = sitk_resampler(image, grid_affine, grid_shape, sitk.sitkNearestNeighbor, image.GetPixelID(), default)
        m["medstack"] = (lambda: medstack.resample(vol, spacing=TARGET, mode="nearest", is_label=True),
                         lambda r: (r.data[0], np.array(r.affine)))  # fmt: skip
        m["SimpleITK"] = (lambda: f.Execute(image), lambda r: (sitk.GetArrayFromImage(r), np.array(grid_affine)))
        sp = mt.Spacing(pixdim=(TARGET,) * 3, mode="nearest", dtype=torch.float32)
        m["MONAI Spacing (f32)"] = (lambda: sp(mono), lambda r: ijk_out(r.as_tensor(), r.affine))
        rs = tio.Resample(TARGET)
        m["TorchIO Resample"] = (lambda: rs(tio_img), lambda r: ijk_out(r.data, r.affine))
        m["scipy zoom order=0"] = (lambda: ndi.zoom(arr3, factors, order=0), lambda r: (r, None))
        m["F.interpolate nearest"] = (
            lambda: F.interpolate(torch.from_numpy(arr3)[None, None], scale_factor=factors, mode="nearest"),
            lambda r: (r[0, 0].numpy(), None),
        )
        return m
    f = sitk_resampler(image, grid_affine, grid_shape, sitk.sitkLinear, sitk.sitkFloat32, default)
    m["medstack"] = (lambda: medstack.resample(vol, spacing=TARGET), lambda r: (r.data[0], np.array(r.affine)))
    m["SimpleITK"] = (lambda: f.Execute(image), lambda r: (sitk.GetArrayFromImage(r), np.array(grid_affine)))
    sp32 = mt.Spacing(pixdim=(TARGET,) * 3, mode="bilinear", dtype=torch.float32)
    m["MONAI Spacing (f32)"] = (lambda: sp32(mono), lambda r: ijk_out(r.as_tensor(), r.affine))
    if monai_f64:
        sp64 = mt.Spacing(pixdim=(TARGET,) * 3, mode="bilinear")  # default dtype float64
        m["MONAI Spacing (f64 default)"] = (lambda: sp64(mono), lambda r: ijk_out(r.as_tensor(), r.affine))
    rs = tio.Resample(TARGET)
    m["TorchIO Resample"] = (lambda: rs(tio_img), lambda r: ijk_out(r.data, r.affine))
    tio_f32 = tio.ScalarImage(tensor=mono.as_tensor().float(), affine=np.array(vol.affine))
    m["TorchIO Resample (f32 in)"] = (lambda: rs(tio_f32), lambda r: ijk_out(r.data, r.affine))
    m["scipy zoom order=1"] = (lambda: ndi.zoom(arr3, factors, order=1, output=np.float32), lambda r: (r, None))
    m["F.interpolate trilinear"] = (
        lambda: F.interpolate(
            torch.from_numpy(arr3)[None, None].float(), scale_factor=factors, mode="trilinear", align_corners=False
        ),
        lambda r: (r[0, 0].numpy(), None),
    )
    return m


# -- correctness --------------------------------------------------------------------------------------
def interior_diff(a: np.ndarray, b: np.ndarray, label: bool) -> dict:
    """max / mean |a - b| (or fraction equal, for labels) over the interior, chunked along D."""
    b_ = BORDER
    sa, sb = a[b_:-b_, b_:-b_, b_:-b_], b[b_:-b_, b_:-b_, b_:-b_]
    n, acc, mx, eq = 0, 0.0, 0.0, 0
    for z in range(0, sa.shape[0], 16):
        x = np.asarray(sa[z : z + 16])
        y = np.asarray(sb[z : z + 16])
        n += x.size
        if label:
            eq += int(np.count_nonzero(x.astype(np.int64) == y.astype(np.int64)))
        else:
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            mx, acc = max(mx, float(d.max())), acc + float(d.sum())
    return {"equal": eq / n} if label else {"max": mx, "mean": acc / n}


def check(name, arr, affine, ref, grid_affine, grid_shape, vol, label: bool) -> dict:
    """Compare one method's output with SimpleITK; resample SimpleITK onto the method's grid if it differs."""
    import SimpleITK as sitk

    info = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    same_shape = tuple(arr.shape) == tuple(grid_shape)
    if affine is None:  # no geometry: voxel by voxel on the grid its shape implies
        info["grid"] = "implied (no affine)"
        if not same_shape:  # same origin and spacing, fewer voxels at the far ends: compare the common part
            common = tuple(min(a, b) for a, b in zip(arr.shape, ref.shape))
            info["grid"] = "implied, common " + "x".join(map(str, common))
            sl = tuple(slice(0, c) for c in common)
            arr, ref = arr[sl], ref[sl]
        info.update(interior_diff(arr, ref, label))
        return info
    if same_shape and np.allclose(affine, grid_affine, atol=1e-6):
        info["grid"] = "same"
        info.update(interior_diff(arr, ref, label))
        return info
    shift = affine[:3, 3] - np.asarray(grid_affine)[:3, 3]
    info["grid"] = "own grid"
    info["origin_shift_mm"] = [round(float(s), 4) for s in shift]
    image = vol.to_sitk()
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    ptype = image.GetPixelID() if label else sitk.sitkFloat32
    f = sitk_resampler(image, affine, arr.shape, interp, ptype, float(np.asarray(vol.data).min()))
    own_ref = sitk.GetArrayFromImage(f.Execute(image))
    info.update(interior_diff(arr, own_ref, label))
    return info


# -- one phase ----------------------------------------------------------------------------------------
def run_phase(title: str, vol, *, label: bool, repeats: int, monai_f64: bool, max_wait: float, min_idle: float) -> dict:
    import gc

    grid_affine, grid_shape = _grid(vol)
    methods = build_methods(vol, label=label, grid_affine=grid_affine, grid_shape=grid_shape, monai_f64=monai_f64)
    print(f"\n== {title}: {vol.spatial_shape} spacing {tuple(round(s, 3) for s in vol.spacing)} mm -> "
          f"{grid_shape} at {TARGET:g} mm ==", flush=True)  # fmt: skip
    busy_seen = not wait_quiet(max_wait, min_idle)

    # warm-up + correctness (untimed); SimpleITK first: it is the reference
    results = {}
    t, raw = C.timed(methods["SimpleITK"][0])
    ref = np.array(methods["SimpleITK"][1](raw)[0])
    del raw
    results["SimpleITK"] = {"warmup_s": t, "shape": list(ref.shape), "dtype": str(ref.dtype), "grid": "reference"}
    for name, (fn, conv) in methods.items():
        if name == "SimpleITK":
            continue
        try:
            t, raw = C.timed(fn)
        except Exception as e:  # a library that cannot run here: say so, keep going
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        arr, affine = conv(raw)
        info = check(name, arr, affine, ref, grid_affine, grid_shape, vol, label)
        info["warmup_s"] = t
        results[name] = info
        del raw, arr
        gc.collect()
    del ref
    gc.collect()

    # timed rounds, interleaved
    names = [n for n in methods if "error" not in results[n]]
    times = {n: [] for n in names}
    for r in range(repeats):
        if not wait_quiet(max_wait, min_idle, report=False):
            busy_seen = True
            print("  (machine still busy: timing anyway)", flush=True)
        for n in names:
            t, raw = C.timed(methods[n][0])
            times[n].append(t)
            del raw
            gc.collect()
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names), flush=True)
    busy_seen = busy_seen or bool(C.others_running(OTHERS))
    base = C.median(times["medstack"])
    for n in names:
        med = C.median(times[n])
        results[n].update({"times_s": times[n], "median_s": med, "ratio_vs_medstack": med / base})
    return {"quiet": not busy_seen, "grid_shape": list(grid_shape), "grid_affine": np.asarray(grid_affine).tolist(),
            "methods": results}  # fmt: skip


def _grid(vol):
    from medstack.resample import target_grid  # the module (medstack.resample is the function)

    return target_grid(vol, spacing=TARGET)


def table(phase: dict, label: bool) -> str:
    rows = []
    for name, r in phase["methods"].items():
        if "error" in r:
            rows.append([name, "failed", "", "", "", "", r["error"][:60]])
            continue
        med = C.fmt_s(r["median_s"])
        ratio = f"{r['ratio_vs_medstack']:.2f}"
        grid = r.get("grid", "")
        if grid == "reference":
            diff = ("1.000000",) if label else ("0", "0")
        elif label:
            diff = (f"{r['equal']:.6f}",) if "equal" in r else ("n/a",)
        else:
            diff = (f"{r['max']:.3g}", f"{r['mean']:.3g}") if "max" in r else ("n/a", "n/a")
        shape = "x".join(str(s) for s in r["shape"])
        rows.append([name, med, ratio, *diff, f"{shape} {r['dtype']}", grid])
    heads = ["method", "median s", "ratio", *(["equal to SITK"] if label else ["max|diff|", "mean|diff|"]), "output",
             "grid vs SimpleITK"]  # fmt: skip
    aligns = ["<", ">", ">", *([">"] if label else [">", ">"]), "<", "<"]
    return C.format_table(heads, rows, aligns)


# -- modes: slices vs volume, anisotropic, one-hot ---------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str):
    """Warm-up call (its result returned), then ``repeats`` timed calls; median seconds."""
    _sync(device)
    res = fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return C.median(ts), res


def _arr(r):
    import torch

    data = r.data if hasattr(r, "affine") and not isinstance(r, torch.Tensor) else r
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.ndim == 5:
            data = data[0]
        return data.numpy() if not hasattr(data, "as_tensor") else data.as_tensor().numpy()
    return np.asarray(data)


def _monai_onehot(values, pixdim):
    """MONAI's nearest equivalent of one-hot label resampling: one-hot channels, Spacing bilinear, argmax."""
    import monai.transforms as mt
    import torch

    sp = mt.Spacing(pixdim=pixdim, mode="bilinear", dtype=torch.float32)

    def run(mono):
        hot = torch.cat([(mono == v) for v in values]).float()  # keeps the MetaTensor's affine
        out = sp(hot)
        idx = out.as_tensor().argmax(0, keepdim=True)
        return torch.as_tensor(values, device=idx.device)[idx]

    return run


def run_modes(vol, lab, repeats: int, device: str) -> list[list]:
    """Rows (group, method, median s, ratio to the group's first row, check vs the first medstack row)."""
    import monai.transforms as mt
    import torch
    import torch.nn.functional as F

    import medstack

    t = lambda v, dt=None: v.replace(data=v.to_tensor(device=device, dtype=dt))  # noqa: E731
    img = t(vol, torch.float32) if device == "cuda" else vol  # the GPU numbers are float32 in
    seg = t(lab) if device == "cuda" else lab
    factors = tuple(float(s) / TARGET for s in vol.spacing)
    values = sorted(int(v) for v in np.unique(np.asarray(lab.data)))
    x_img = img.to_tensor(device=device)[None].float()
    x_seg = seg.to_tensor(device=device)[None]
    mono_img, mono_seg = vol.to_monai(), lab.to_monai()
    if device == "cuda":
        mono_img, mono_seg = mono_img.float().cuda(), mono_seg.cuda()
    rs = medstack.resample
    groups = {
        "linear": [("medstack slices", lambda: rs(img, spacing=TARGET, method="slices")),
                   ("medstack volume", lambda: rs(img, spacing=TARGET, method="volume")),
                   ("bare F.interpolate trilinear", lambda: F.interpolate(
                       x_img, scale_factor=factors, mode="trilinear", align_corners=False))],
        "nearest (labels)": [
            ("medstack slices", lambda: rs(seg, spacing=TARGET, mode="nearest", is_label=True, method="slices")),
            ("medstack volume", lambda: rs(seg, spacing=TARGET, mode="nearest", is_label=True, method="volume")),
            ("bare F.interpolate nearest", lambda: F.interpolate(x_seg, scale_factor=factors, mode="nearest"))],
        "anisotropic": [
            ("medstack linear+nearest z", lambda: rs(img, spacing=TARGET, anisotropic=True)),
            ("medstack cubic+nearest z", lambda: rs(img, spacing=TARGET, mode="cubic", anisotropic=True)),
            ("medstack cubic (isotropic)", lambda: rs(img, spacing=TARGET, mode="cubic")),
            ("MONAI Spacing bilinear", lambda: mt.Spacing(pixdim=(TARGET,) * 3, mode="bilinear",
                                                           dtype=torch.float32)(mono_img)),
            ("MONAI Spacing mode=3 (scipy)", lambda: mt.Spacing(pixdim=(TARGET,) * 3, mode=3,
                                                                 dtype=torch.float32)(mono_img))],
        "labels one-hot": [
            ("medstack onehot slices", lambda: rs(seg, spacing=TARGET, label_mode="onehot", method="slices")),
            ("medstack onehot volume", lambda: rs(seg, spacing=TARGET, label_mode="onehot", method="volume")),
            ("medstack onehot aniso", lambda: rs(seg, spacing=TARGET, label_mode="onehot", anisotropic=True)),
            ("MONAI one-hot+Spacing+argmax", lambda: _monai_onehot(values, (TARGET,) * 3)(mono_seg))],
    }  # fmt: skip
    if device == "cuda":  # Spacing mode=3 goes through scipy on the host: not a GPU row
        groups["anisotropic"] = [g for g in groups["anisotropic"] if "scipy" not in g[0]]
    rows = []
    for group, methods in groups.items():
        base = ref = None
        for name, fn in methods:
            try:
                med, res = _time(fn, repeats, device)
            except Exception as e:  # a library that cannot run here: say so, keep going
                rows.append([group, name, "failed", "", f"{type(e).__name__}: {str(e)[:50]}"])
                continue
            arr = _arr(res)
            del res
            if base is None:
                base, ref = med, arr
            if "MONAI" in name or arr.shape != ref.shape:  # MONAI / bare: own grids (shape), no voxel check
                check = "x".join(map(str, arr.shape[-3:]))
            elif "label" in group or "nearest" in group:
                check = f"equal {np.mean(arr == ref):.4f}"
            else:
                check = f"max|d| {np.abs(arr.astype(np.float64) - ref).max():.3g}"
            rows.append([group, name, C.fmt_s(med), f"{med / base:.2f}", check])
            print(f"  {device} {group}: {name} {med:.4f} s", flush=True)
    return rows


def modes_table(rows) -> str:
    return C.format_table(["group", "method", "median s", "ratio", "check vs first row"], rows,
                          ["<", "<", ">", ">", "<"])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="in-plane size H = W (default 512)")
    ap.add_argument("--slices", type=int, default=300, help="number of slices D (default 300)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    ap.add_argument("--no-monai-f64", dest="monai_f64", action="store_false",
                    help="skip MONAI Spacing with its default float64 (needs ~6 GB at full size)")  # fmt: skip
    ap.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for a quiet machine (900)")
    ap.add_argument(
        "--min-idle",
        type=float,
        default=0.85,
        help="quiet machine also means at least this CPU idle fraction over 1 s (default 0.85)",
    )
    ap.add_argument("--json", default="bench_resample.json")
    ap.add_argument("--modes-only", action="store_true",
                    help="only the slices/volume, anisotropic and one-hot table (no SimpleITK comparison)")  # fmt: skip
    args = ap.parse_args(argv)
    C.quiet()

    import SimpleITK as sitk
    import torch

    torch.set_num_threads(THREADS)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    threads = {
        "torch": torch.get_num_threads(),
        "SimpleITK": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "scipy": "1 (ndimage.zoom is single-threaded)",
    }
    env = C.environment()
    print(f"cpus {env['cpus']}; threads: torch {threads['torch']}, SimpleITK {threads['SimpleITK']}, "
          f"scipy 1 (single-threaded)")  # fmt: skip
    print("GPU: " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"))
    vol, lab = make_data(args.slices, args.size)
    mem = mem_available_gb()
    monai_f64 = args.monai_f64
    need = 75 * float(np.prod(vol.spatial_shape)) / 1e9  # GB, measured ~5.7 GB at 512x512x300 (float64 grids)
    if monai_f64 and mem == mem and mem < need * 1.3:
        print(f"MONAI float64 skipped: {mem:.1f} GB available, needs ~{need:.1f} GB")
        monai_f64 = False

    payload = {"env": env, "args": vars(args), "threads": threads, "mem_available_gb": mem}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    modes = {}
    for device in devices:
        print(f"\n== modes on {device} ==", flush=True)
        modes[device] = run_modes(vol, lab, args.repeats, device)
    payload["modes"] = modes
    if args.modes_only:
        _print_modes(modes, vol, args.repeats)
        path = C.write_json(args.json, payload)
        print(f"results: {path}")
        return 0
    linear = run_phase("CT, linear", vol, label=False, repeats=args.repeats, monai_f64=monai_f64,
                       max_wait=args.max_wait, min_idle=args.min_idle)  # fmt: skip
    nearest = run_phase("labels, nearest", lab, label=True, repeats=args.repeats, monai_f64=False,
                        max_wait=args.max_wait, min_idle=args.min_idle)  # fmt: skip
    payload.update({"linear": linear, "nearest": nearest})

    gpu = None
    if torch.cuda.is_available():
        import medstack

        tv = vol.replace(data=torch.from_numpy(np.asarray(vol.data)).cuda())
        tl = lab.replace(data=torch.from_numpy(np.asarray(lab.data)).cuda())
        gpu = {"device": torch.cuda.get_device_name(0)}
        for key, v, kw in (("linear", tv, {}), ("nearest", tl, {"mode": "nearest", "is_label": True})):
            ts = []
            for _ in range(args.repeats + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                medstack.resample(v, spacing=TARGET, **kw)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            gpu[key] = {"times_s": ts[1:], "median_s": C.median(ts[1:])}
        payload["gpu"] = gpu

    print(f"\n{'=' * 100}\nResample {vol.spatial_shape} (D, H, W) int16, spacing (2.5, 0.7, 0.7) mm -> "
          f"{tuple(linear['grid_shape'])} at 1 mm; median of {args.repeats}; ratio = method / medstack (> 1: slower)")  # fmt: skip
    print(f"threads: torch {threads['torch']}, SimpleITK {threads['SimpleITK']}, scipy 1; interior = "
          f"{BORDER} border voxels excluded; diffs in HU vs SimpleITK")  # fmt: skip
    print(f"\nLinear (CT)   quiet machine: {'yes' if linear['quiet'] else 'no'}")
    print(table(linear, label=False))
    print(f"\nNearest (labels)   quiet machine: {'yes' if nearest['quiet'] else 'no'}")
    print(table(nearest, label=True))
    print("\nGPU: " + ("not available" if gpu is None else
                       f"{gpu['device']}: medstack linear {C.fmt_s(gpu['linear']['median_s'])} s, "
                       f"nearest {C.fmt_s(gpu['nearest']['median_s'])} s"))  # fmt: skip

    _print_modes(modes, vol, args.repeats)

    ms = linear["methods"]["medstack"]
    others = {n: r["median_s"] for n, r in linear["methods"].items() if n != "medstack" and "median_s" in r}
    fastest = min(others, key=others.get)
    goal = others[fastest] / ms["median_s"]
    print(
        f"\nmedstack world-correct: max |diff| vs SimpleITK = {ms['max']:.3g} HU (interior), mean {ms['mean']:.3g} HU"
    )
    print(f"fastest other / medstack = {goal:.2f} (goal >= 1.5; fastest other: {fastest}, "
          f"{C.fmt_s(others[fastest])} s vs {C.fmt_s(ms['median_s'])} s)")  # fmt: skip
    payload["goals"] = {
        "medstack_max_diff_hu": ms["max"],
        "fastest_other": fastest,
        "fastest_other_over_medstack": goal,
    }
    path = C.write_json(args.json, payload)
    print(f"results: {path}")
    return 0


def _print_modes(modes: dict, vol, repeats: int) -> None:
    for device, rows in modes.items():
        print(f"\nModes on {device}: {vol.spatial_shape} (D, H, W), spacing {tuple(round(s, 2) for s in vol.spacing)} "
              f"-> {TARGET:g} mm; median of {repeats}; ratio = method / the group's first row")  # fmt: skip
        print(modes_table(rows))


if __name__ == "__main__":
    raise SystemExit(main())
