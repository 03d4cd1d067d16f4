"""nnU-Net-style dataset planning: a dataset fingerprint, then a :class:`Plan` (target spacing, patch and batch size,
per-channel normalisation) that feeds :func:`medstack.data.prepare` and training directly.

>>> from medstack.plan import fingerprint, make_plan
>>> fp = fingerprint("Task09_Spleen", cache="spleen_fingerprint.json")        # doctest: +SKIP
>>> plan = make_plan(fp, gpu_memory_gb=8.0)                                    # doctest: +SKIP
>>> prepare("Task09_Spleen", "store", transform=plan.transform())              # doctest: +SKIP
>>> sampler, augment = plan.sampler(), plan.augmentation()                    # doctest: +SKIP

Every rule follows nnU-Net v2 (MIC-DKFZ/nnUNet ``nnunetv2/experiment_planning``: ``DatasetFingerprintExtractor``,
``ExperimentPlanner.determine_fullres_target_spacing``, ``get_plans_for_configuration``,
``network_topology.get_pool_and_conv_props``; ``nnunetv2/preprocessing/normalization``); the differences are
said where they occur. Spatial triples are ``(D, H, W)``: slice, row, column.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medstack.errors import ArgumentError, FormatError, ReadError
from medstack.transforms.base import Transform

__all__ = [
    "ANISO_THRESHOLD",
    "NormalizeChannels",
    "Plan",
    "fingerprint",
    "make_plan",
    "target_spacing",
    "unet_feature_map_size",
]

logger = logging.getLogger(__name__)

FINGERPRINT_FORMAT = "medstack-fingerprint"
PLAN_FORMAT = "medstack-plan"
#: nnU-Net's ``ANISO_THRESHOLD``: a spacing ratio above this makes an axis "anisotropic".
ANISO_THRESHOLD = 3.0
#: nnU-Net v2's VRAM reference: a 3D PlainConvUNet (32 base features, at most 320) whose feature maps hold this
#: many elements per sample fits ``REFERENCE_GB`` of GPU memory at batch size ``REFERENCE_BATCH``.
REFERENCE_ELEMENTS = 560_000_000
REFERENCE_GB = 8.0
REFERENCE_BATCH = 2
BASE_FEATURES, MAX_FEATURES = 32, 320
#: The smallest feature-map edge of the U-Net (nnU-Net's ``UNet_featuremap_min_edge_length``).
MIN_FEATURE_EDGE = 4
#: A batch covers at most this fraction of the dataset's voxels (nnU-Net's ``max_dataset_covered``).
MAX_DATASET_COVERED = 0.05
_CACHE_WRITE_S = 5.0  # a resumable cache is rewritten at most this often while cases are computed


# -- fingerprint -------------------------------------------------------------------------------------------------


def _load_label(source, image):
    """A case's label as a Volume on ``image``'s grid (DICOM SEG / RTSTRUCT rasterised as one label map, the way
    :func:`medstack.data.prepare.load_label` reads it for ``prepare``)."""
    import medstack
    from medstack.data.prepare import load_label

    if source is None:
        return None
    lab = load_label(source, image)
    if lab.spatial_shape != image.spatial_shape or not np.allclose(lab.affine, image.affine, atol=1e-4):
        lab = medstack.resample(lab, like=image, mode="nearest", is_label=True)
    return lab


def _fingerprint_case(case: dict, samples_per_case: int, seed: int) -> dict:
    """The per-case fingerprint entry: grid, nonzero-crop size, label values and sampled foreground intensities."""
    import medstack

    vols = [s if isinstance(s, medstack.Volume) else medstack.load(s) for s in case["image"]]
    image = medstack.stack(vols, reference=0) if len(vols) > 1 else vols[0]
    data = image.to_numpy()
    nonzero = np.any(data != 0, axis=0)
    if nonzero.any():
        idx = np.nonzero(nonzero)
        crop = [int(i.max() - i.min() + 1) for i in idx]
    else:
        crop = list(image.spatial_shape)
    label = _load_label(case.get("label"), image)
    if label is not None:
        lab = label.to_numpy()[0]
        values = sorted(int(v) for v in np.unique(lab))
        fg = lab > 0
    else:
        values, fg = [], nonzero
    flat = np.flatnonzero(fg)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(case["id"].encode("utf-8"))])
    if flat.size > samples_per_case:
        flat = np.sort(rng.choice(flat.size, samples_per_case, replace=False))
        flat = np.flatnonzero(fg)[flat]
    chans = data.reshape(data.shape[0], -1)
    foreground = [[float(x) for x in chans[c, flat].astype(np.float64)] for c in range(data.shape[0])]
    return {"spacing": [float(s) for s in image.spacing], "shape": [int(n) for n in image.spatial_shape],
            "shape_after_crop": crop, "n_channels": int(data.shape[0]), "label_values": values,
            "has_label": label is not None, "n_foreground": int(fg.sum()), "foreground": foreground}  # fmt: skip


def _run_case(args):
    case, samples_per_case, seed = args
    try:
        return case["id"], _fingerprint_case(case, samples_per_case, seed), None
    except Exception as e:  # reported with the case id by the caller
        return case["id"], None, f"{case['id']}: {type(e).__name__}: {e}".splitlines()[0]


def _channel_names_of(cases) -> list[str] | None:
    """Channel names / modalities a case list carries: a Decathlon / nnU-Net dataset's ``dataset.json``, or a
    ``modality`` / ``channel_names`` field of the case dicts (str, list, or ``{"0": "CT"}``)."""
    if isinstance(cases, str | os.PathLike):
        p = Path(cases)
        if p.is_dir() or p.suffix.lower() == ".json":
            try:
                from medstack.data.catalogs import describe_dataset

                return list(describe_dataset(p)["channel_names"]) or None
            except (ReadError, FormatError, KeyError):
                return None
        return None
    found = None
    for row in cases if isinstance(cases, Sequence) else ():
        if not isinstance(row, Mapping):
            continue
        value = row.get("channel_names", row.get("modality"))
        if value is None:
            continue
        names = _as_names(value, f"case {row.get('id', '?')!r}: field 'modality' / 'channel_names'")
        if found is not None and names != found:
            raise FormatError(f"cases: channel names / modalities differ between cases ({found} vs {names}); every "
                              "case must list its channels in the same order")  # fmt: skip
        found = names
    return found


def _as_names(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        try:
            return [str(value[k]) for k in sorted(value, key=int)]
        except (TypeError, ValueError):
            raise FormatError(f"{where}: a mapping must have channel indices as keys ('0', '1', ...), got "
                              f"{sorted(map(str, value))}") from None  # fmt: skip
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise FormatError(f"{where}: expected a name, a list of names or {{'0': name}}, got {value!r}")


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ReadError(f"{path}: cannot read the fingerprint cache ({e.strerror or e})") from e
    except ValueError as e:
        raise FormatError(f"{path}: fingerprint cache is not valid JSON ({e}); delete it to recompute") from e
    if (
        not isinstance(data, dict)
        or data.get("format") != FINGERPRINT_FORMAT
        or not isinstance(data.get("cases"), dict)
    ):
        raise FormatError(f"{path}: not a medstack fingerprint (expected a JSON object with format "
                          f"{FINGERPRINT_FORMAT!r} and a 'cases' object); delete it or pass another cache=")  # fmt: skip
    return data


def _write_json(path: Path, payload: dict) -> None:
    from medstack.io._atomic import atomic_output

    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {k: None for k in ("percentile_00_5", "percentile_99_5", "mean", "std", "median", "min", "max")}
    return {"percentile_00_5": float(np.percentile(values, 0.5)), "percentile_99_5": float(np.percentile(values, 99.5)),
            "mean": float(np.mean(values)), "std": float(np.std(values)), "median": float(np.median(values)),
            "min": float(np.min(values)), "max": float(np.max(values))}  # fmt: skip


def fingerprint(cases, *, cache=None, workers: int | None = None, samples_per_case: int = 10000, seed: int = 0,
                progress: bool = False) -> dict:  # fmt: skip
    """The dataset fingerprint nnU-Net plans from (``DatasetFingerprintExtractor``), computed in parallel.

    Parameters
    ----------
    cases : list of dict / paths / Volumes, or a CSV / JSON case list or a Decathlon / nnU-Net dataset
        As :func:`medstack.data.read_cases`. A case dict may carry ``modality`` or ``channel_names`` (a name, a
        list, or ``{"0": "CT"}``); a Decathlon / nnU-Net dataset has them in its ``dataset.json``.
    cache : path, optional
        A JSON file keeping the per-case entries, keyed by case id with a stamp of the sources (file size and
        mtime, or the data of an in-memory Volume), ``samples_per_case`` and ``seed``: a rerun computes only new
        or changed cases, and an interrupted run keeps what it computed (resumable). Written atomically.
    workers : processes (default: all cores); cases with in-memory Volumes run in this process.
    samples_per_case : foreground voxels sampled per case (all of them when fewer), seeded by ``(seed, case id)``.
    seed : seed of the sampling.
    progress : show a progress bar (tqdm).

    Returns
    -------
    dict
        ``cases`` (per case id: ``spacing`` (D, H, W) mm, ``shape`` (D, H, W), ``shape_after_crop`` (the nonzero
        bounding box, any channel), ``n_channels``, ``label_values``, ``n_foreground`` and ``foreground`` (per
        channel the sampled intensities of the voxels with label > 0, or the nonzero voxels without a label));
        ``channel_names`` (or None); ``intensity``: per channel ``percentile_00_5``, ``percentile_99_5``,
        ``mean``, ``std`` (population), ``median``, ``min``, ``max`` of the pooled samples;
        ``median_relative_size_after_cropping``; and ``computed``: the ids computed by this call (the others came
        from the cache).

    Raises
    ------
    FormatError
        A case could not be read, or cases disagree in their number of channels (the message names them).
    """
    import medstack
    from medstack.data.prepare import case_fingerprint, read_cases
    from medstack.parallel import map_jobs

    if isinstance(samples_per_case, bool) or not isinstance(samples_per_case, int | np.integer) or samples_per_case < 1:
        raise ArgumentError(f"fingerprint: samples_per_case must be an int >= 1, got {samples_per_case!r}")
    names = _channel_names_of(cases)
    rows = read_cases(cases)
    if not rows:
        raise ArgumentError("fingerprint: the case list is empty; give at least one case")
    options = {"fingerprint": {"samples_per_case": int(samples_per_case), "seed": int(seed)}}
    stamps = {c["id"]: case_fingerprint(c, options) for c in rows}
    cache_path = None if cache is None else Path(cache)
    old = {}
    if cache_path is not None and cache_path.exists():
        old = _read_cache(cache_path)["cases"]
    entries = {
        cid: e for cid, e in old.items() if isinstance(e, dict) and cid in stamps and e.get("stamp") == stamps[cid]
    }
    todo = [c for c in rows if c["id"] not in entries]
    failures, computed = [], []
    last_write = time.monotonic()

    def header():
        return {
            "format": FINGERPRINT_FORMAT,
            "version": 1,
            "samples_per_case": int(samples_per_case),
            "seed": int(seed),
        }

    def collect(result):
        nonlocal last_write
        cid, entry, err = result
        if err:
            failures.append(err)
        else:
            entry["stamp"] = stamps[cid]
            entries[cid] = entry
            computed.append(cid)
        if bar is not None:
            bar.update(1)
        if cache_path is not None and time.monotonic() - last_write > _CACHE_WRITE_S:
            _write_json(cache_path, {**header(), "cases": {**old, **entries}})
            last_write = time.monotonic()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="case", desc="fingerprint")
    jobs = [(c, int(samples_per_case), int(seed)) for c in todo]

    def in_memory(case):
        return any(isinstance(s, medstack.Volume) for s in [*case["image"], case["label"]])

    local = [j for j in jobs if in_memory(j[0])]
    pooled = [j for j in jobs if not in_memory(j[0])]
    n_workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    try:
        for j in local:
            collect(_run_case(j))
        map_jobs(_run_case, pooled, n_workers, collect)
    finally:
        if bar is not None:
            bar.close()
        if cache_path is not None and (computed or set(old) != set(entries)):
            keep = {**old, **entries}  # entries of cases not in this list are kept for a later run
            _write_json(cache_path, {**header(), "cases": keep})
    if failures:
        raise FormatError(f"fingerprint: {len(failures)} case(s) failed: " + "; ".join(failures))
    ordered = {c["id"]: entries[c["id"]] for c in rows}
    n_ch = {cid: e["n_channels"] for cid, e in ordered.items()}
    if len(set(n_ch.values())) != 1:
        raise FormatError(f"fingerprint: cases have different numbers of channels {n_ch}; every case needs the same "
                          "channels in the same order")  # fmt: skip
    n_channels = next(iter(n_ch.values()))
    if names is not None and len(names) != n_channels:
        raise FormatError(f"fingerprint: {len(names)} channel names / modalities {names} for {n_channels} image "
                          "channel(s); list one name per channel")  # fmt: skip
    pooled_fg = [np.concatenate([np.asarray(e["foreground"][c], np.float64) for e in ordered.values()])
                 for c in range(n_channels)]  # fmt: skip
    rel = [float(np.prod(e["shape_after_crop"], dtype=np.float64) / np.prod(e["shape"], dtype=np.float64))
           for e in ordered.values()]  # fmt: skip
    return {**header(), "channel_names": names, "n_channels": n_channels, "cases": ordered,
            "spacings": [e["spacing"] for e in ordered.values()],
            "shapes_after_crop": [e["shape_after_crop"] for e in ordered.values()],
            "label_values": sorted({v for e in ordered.values() for v in e["label_values"]}),
            "median_relative_size_after_cropping": float(np.median(rel)),
            "intensity": [_summary(v) for v in pooled_fg], "computed": computed}  # fmt: skip


# -- planning rules ----------------------------------------------------------------------------------------------


def target_spacing(spacings, shapes, *, anisotropy_threshold: float = ANISO_THRESHOLD) -> tuple[float, float, float]:
    """nnU-Net v2's full-resolution target spacing (``ExperimentPlanner.determine_fullres_target_spacing``).

    The median spacing per axis; but when the coarsest median axis is more than ``anisotropy_threshold`` times the
    next coarsest AND its median size in voxels times the threshold is below the smallest other median size
    (few, thick slices), that axis takes the 10th percentile of its spacings instead (never finer than the other
    axes: then their largest spacing + 1e-5, as nnU-Net), so thin-slice cases are not interpolated away.

    Parameters
    ----------
    spacings : (n, 3) mm, (D, H, W) per case
    shapes : (n, 3) voxels, (D, H, W) per case (nnU-Net uses the sizes after cropping to nonzero)

    Examples
    --------
    >>> sp = [(5.0, 0.8, 0.8)] * 8 + [(1.5, 0.8, 0.8)] * 2   # median slice spacing 5 mm, a few thin-slice cases
    >>> target_spacing(sp, [(40, 512, 512)] * 10)
    (1.5, 0.8, 0.8)
    >>> target_spacing(sp, [(200, 512, 512)] * 10)          # many slices: the median
    (5.0, 0.8, 0.8)
    >>> target_spacing([(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (3.0, 1.0, 1.0)], [(100, 100, 100)] * 3)
    (2.0, 1.0, 1.0)
    """
    sp = np.asarray(spacings, np.float64).reshape(-1, 3)
    sz = np.asarray(shapes, np.float64).reshape(-1, 3)
    if len(sp) == 0 or len(sp) != len(sz) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ArgumentError(f"target_spacing: need one positive (D, H, W) spacing and one shape per case, got "
                            f"{len(sp)} spacings and {len(sz)} shapes")  # fmt: skip
    target = np.percentile(sp, 50, axis=0)
    size = np.percentile(sz, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > anisotropy_threshold * max(target[i] for i in others)
    aniso_voxels = size[worst] * anisotropy_threshold < min(size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        value = float(np.percentile(sp[:, worst], 10))
        finest_other = max(target[i] for i in others)
        if value < finest_other:
            value = max(finest_other, value) + 1e-5
        target[worst] = value
    return tuple(float(x) for x in target)


def _topology(spacing, patch_size, min_edge: int = MIN_FEATURE_EDGE):
    """Pooling per axis (nnU-Net's ``get_pool_and_conv_props``): pool the axes whose feature map is still at least
    ``2 * min_edge`` and whose current spacing is within 2x of the finest such axis; a lone axis pools only while
    it is at least ``3 * min_edge``. Returns (pools per axis, strides per stage, the patch padded up to a multiple
    of ``2 ** pools`` per axis)."""
    cur_sp, cur_sz = [float(s) for s in spacing], [float(n) for n in patch_size]
    pools, strides = [0, 0, 0], [(1, 1, 1)]
    while True:
        valid = [i for i in range(3) if cur_sz[i] >= 2 * min_edge]
        if not valid:
            break
        finest = min(cur_sp[i] for i in valid)
        valid = [i for i in valid if cur_sp[i] / finest < 2]
        if len(valid) == 1 and cur_sz[valid[0]] < 3 * min_edge:
            break
        if not valid:
            break
        for i in valid:
            pools[i] += 1
            cur_sp[i] *= 2
            cur_sz[i] = np.ceil(cur_sz[i] / 2)
        strides.append(tuple(2 if i in valid else 1 for i in range(3)))
    div = [2**p for p in pools]
    padded = tuple(int(np.ceil(n / d) * d) for n, d in zip(patch_size, div))
    return tuple(pools), strides, padded


def unet_feature_map_size(patch_size, strides, n_classes: int, *, base_features: int = BASE_FEATURES,
                          max_features: int = MAX_FEATURES, convs_per_stage: int = 2) -> int:  # fmt: skip
    """Feature-map elements of one sample through nnU-Net's 3D PlainConvUNet (the count its
    ``compute_conv_feature_map_size`` returns, which nnU-Net v2 compares with :data:`REFERENCE_ELEMENTS`).

    Encoder: each stage's ``convs_per_stage`` conv blocks (features ``min(base * 2**s, max)``, spatial size the
    patch divided by the strides so far); decoder: per stage the transposed conv output, its conv blocks and the
    deep-supervision segmentation output (``n_classes`` channels).

    Parameters
    ----------
    patch_size : (D, H, W) voxels
    strides : per stage the (D, H, W) pooling strides (the first is (1, 1, 1))

    Examples
    --------
    >>> unet_feature_map_size((8, 8, 8), [(1, 1, 1)], 2)
    32768
    """
    sizes, cur = [], np.asarray(patch_size, np.int64)
    for s in strides:
        cur = cur // np.asarray(s, np.int64)
        sizes.append(int(np.prod(cur)))
    feats = [min(base_features * 2**s, max_features) for s in range(len(strides))]
    total = sum(convs_per_stage * f * n for f, n in zip(feats, sizes))
    for s in range(len(strides) - 1):  # decoder stage s brings stage s+1 back to stage s's resolution
        total += feats[s] * sizes[s] * (1 + convs_per_stage) + int(n_classes) * sizes[s]
    return int(total)


def _scheme_of(name: str | None) -> str:
    return "ct" if name is not None and name.strip().lower() == "ct" else "zscore"


# -- the plan ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """A training plan (nnU-Net's 3d_fullres configuration). Tuples are per channel or ``(D, H, W)``.

    Attributes
    ----------
    spacing : target spacing (D, H, W) mm
    patch_size : (D, H, W) voxels, divisible by ``2 ** pools`` per axis
    batch_size : patches per batch
    pools : poolings of the U-Net per axis (D, H, W)
    normalization : per channel ``"ct"`` (clip to ``clip_low``/``clip_high``, then ``(x - mean) / std``) or
        ``"zscore"`` (per case; inside the nonzero mask when ``use_mask_for_norm``)
    use_mask_for_norm : per channel
    clip_low, clip_high, mean, std : per channel dataset foreground statistics (used by ``"ct"`` channels)
    channel_names : per channel, as found (modality names) or given
    median_shape : median case shape (D, H, W) after cropping, at the target spacing
    n_classes : label values of the dataset (background included), at least 2
    anisotropic : whether the target spacing is anisotropic (coarsest / finest > :data:`ANISO_THRESHOLD`)
    gpu_memory_gb : the budget planned for
    feature_map_elements : :func:`unet_feature_map_size` of one patch
    """

    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    pools: tuple[int, int, int]
    normalization: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    clip_low: tuple[float, ...]
    clip_high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_names: tuple[str, ...]
    median_shape: tuple[int, int, int]
    n_classes: int = 2
    anisotropic: bool = False
    gpu_memory_gb: float = 8.0
    feature_map_elements: int = 0

    def __post_init__(self):
        conv = {"spacing": float, "patch_size": int, "pools": int, "normalization": str, "use_mask_for_norm": bool,
                "clip_low": float, "clip_high": float, "mean": float, "std": float, "channel_names": str,
                "median_shape": int}  # fmt: skip
        for name, kind in conv.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(kind(v) for v in value))
            except (TypeError, ValueError):
                raise ArgumentError(
                    f"Plan: field {name!r} must be a sequence of {kind.__name__}, got {value!r}"
                ) from None
        for name in ("spacing", "patch_size", "pools", "median_shape"):
            if len(getattr(self, name)) != 3:
                raise ArgumentError(f"Plan: field {name!r} must have 3 values (D, H, W), got {getattr(self, name)}")
        n = len(self.normalization)
        for name in ("use_mask_for_norm", "clip_low", "clip_high", "mean", "std", "channel_names"):
            if len(getattr(self, name)) != n:
                raise ArgumentError(f"Plan: field {name!r} has {len(getattr(self, name))} values for {n} channel(s)")
        bad = [s for s in self.normalization if s not in ("ct", "zscore")]
        if bad:
            raise ArgumentError(f"Plan: normalization must be 'ct' or 'zscore' per channel, got {bad}")
        if int(self.batch_size) < 1 or min(self.patch_size) < 1 or min(self.spacing) <= 0:
            raise ArgumentError(f"Plan: batch_size, patch_size and spacing must be positive, got {self.batch_size}, "
                                f"{self.patch_size}, {self.spacing}")  # fmt: skip
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "anisotropic", bool(self.anisotropic))
        object.__setattr__(self, "gpu_memory_gb", float(self.gpu_memory_gb))
        object.__setattr__(self, "feature_map_elements", int(self.feature_map_elements))

    @property
    def n_channels(self) -> int:
        return len(self.normalization)

    # -- JSON ----------------------------------------------------------------------------------------------------
    def to_json(self, path=None) -> str:
        """The plan as JSON text; also written (atomically, replacing) to ``path`` when given."""
        text = json.dumps({"format": PLAN_FORMAT, "version": 1, **dataclasses.asdict(self)}, indent=1, allow_nan=False)
        if path is not None:
            from medstack.io._atomic import atomic_output

            with atomic_output(Path(path), overwrite=True) as tmp:
                Path(tmp).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source) -> Plan:
        """A plan from :meth:`to_json`'s text or a file holding it."""
        where = "plan JSON"
        text = source
        if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            where = str(source)
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ReadError(f"{source}: cannot read the plan ({e})") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise FormatError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise FormatError(f"{where}: not a medstack plan (expected a JSON object with format {PLAN_FORMAT!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING)  # fmt: skip
        if missing:
            raise FormatError(f"{where}: field(s) {missing} missing; write it with Plan.to_json")
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except ArgumentError as e:
            raise FormatError(f"{where}: {e}") from None

    # -- what the plan feeds -------------------------------------------------------------------------------------
    def transform(self):
        """The preprocessing for :func:`medstack.data.prepare` ``(transform=...)``, nnU-Net's order: crop to the
        nonzero box (any channel), normalise per channel (:class:`NormalizeChannels`), resample to
        :attr:`spacing` (image linear, in-plane only with nearest along a much coarser axis when anisotropic;
        labels one-hot interpolated when :class:`~medstack.transforms.Spacing` supports it, else nearest).

        nnU-Net interpolates images with order 3 in-plane; here linear (a differing but common choice)."""
        import inspect

        from medstack import transforms as T
        from medstack.geometry import DHW

        params = inspect.signature(T.Spacing).parameters
        options = {}
        if "anisotropic" in params:
            options["anisotropic"] = "auto"
        if "label_mode" in params:
            options["label_mode"] = "onehot"
        return T.Compose([
            T.CropForeground(keys=("image", "label"), source_key="image", select_fn=nonzero_any),
            NormalizeChannels(self.normalization, use_mask=self.use_mask_for_norm, clip_low=self.clip_low,
                              clip_high=self.clip_high, mean=self.mean, std=self.std),
            T.Spacing(keys=("image", "label"), pixdim=DHW(*self.spacing), **options),
        ], seed=0)  # fmt: skip

    def augmentation(self):
        """nnU-Net's training augmentation for this plan: ``BatchAugment.nnunet(spacing=..., patch_size=...)``."""
        from medstack.transforms.gpu import BatchAugment

        return BatchAugment.nnunet(spacing=self.spacing, patch_size=self.patch_size)

    def sampler(self, fraction: float = 0.33):
        """nnU-Net's patch sampler: :class:`~medstack.patches.ForegroundOversampler` with the plan's patch and batch
        size (a third of each batch forced to contain foreground)."""
        from medstack.patches import ForegroundOversampler

        return ForegroundOversampler(self.patch_size, batch_size=self.batch_size, fraction=fraction)


def nonzero_any(array):
    """Mask of the voxels where any channel is nonzero (``(C, D, H, W)`` -> ``(D, H, W)``): nnU-Net's crop."""
    return np.any(np.asarray(array) != 0, axis=0)


def make_plan(fingerprint: dict, *, gpu_memory_gb: float = 8.0, modalities=None, min_batch_size: int = 2) -> Plan:
    """nnU-Net v2's 3d_fullres plan from a :func:`fingerprint`.

    - **spacing**: :func:`target_spacing` of the cases' spacings and cropped shapes.
    - **patch size** (``get_plans_for_configuration``): start from a patch with the aspect ratio of
      ``1 / spacing`` and the volume of 256**3, clipped to the median cropped shape at the target spacing;
      pad each axis to a multiple of ``2 ** pools`` (nnU-Net's ``get_pool_and_conv_props``: pool the axes
      within 2x of the finest spacing while their feature map keeps at least 4 voxels); while :func:`unet_feature_map_size` exceeds the budget
      ``REFERENCE_ELEMENTS * gpu_memory_gb / REFERENCE_GB`` (560e6 elements per 8 GB at batch 2, nnU-Net's
      reference, for batch size 2; scaled up when ``min_batch_size`` is larger), shrink the axis largest relative
      to the median shape by its divisor and recompute the pooling.
    - **batch size**: ``round(budget / estimate * 2)``, capped so one batch covers at most 5% of the dataset's
      voxels (median shape x number of cases), never below ``min_batch_size``.
    - **normalisation** per channel: ``"ct"`` for a channel named CT (``modalities=`` or the cases' metadata),
      else ``"zscore"``; z-score uses the nonzero mask when cropping to nonzero shrank the median case by more
      than 25% (nnU-Net's ``use_mask_for_norm``); CT never does.

    Parameters
    ----------
    fingerprint : dict from :func:`fingerprint`
    gpu_memory_gb : GPU memory to plan for
    modalities : str, list of str (one per channel) or ``{"0": "CT"}``, optional; default: the fingerprint's
        channel names
    min_batch_size : smallest batch size

    Raises
    ------
    ArgumentError
        Bad arguments, or a budget too small for the smallest patch (the message says the budget it needs).
    """
    if not isinstance(fingerprint, Mapping) or "cases" not in fingerprint or "intensity" not in fingerprint:
        raise ArgumentError("make_plan: fingerprint must be the dict medstack.plan.fingerprint returns (with 'cases' "
                            f"and 'intensity'), got {type(fingerprint).__name__}")  # fmt: skip
    if not float(gpu_memory_gb) > 0:
        raise ArgumentError(f"make_plan: gpu_memory_gb must be positive, got {gpu_memory_gb}")
    if isinstance(min_batch_size, bool) or int(min_batch_size) < 1:
        raise ArgumentError(f"make_plan: min_batch_size must be an int >= 1, got {min_batch_size!r}")
    cases = list(fingerprint["cases"].values())
    n_channels = int(fingerprint.get("n_channels") or cases[0]["n_channels"])
    names = fingerprint.get("channel_names")
    if modalities is not None:
        names = _as_names(modalities, "make_plan: modalities")
    if names is None:
        names = ["unknown"] * n_channels
    if len(names) != n_channels:
        raise ArgumentError(f"make_plan: {len(names)} modalities {names} for {n_channels} channel(s); give one per "
                            "channel")  # fmt: skip
    spacings = np.array([c["spacing"] for c in cases], np.float64)
    cropped = np.array([c["shape_after_crop"] for c in cases], np.float64)
    target = np.array(target_spacing(spacings, cropped))
    new_shapes = np.round(cropped * spacings / target)
    median_shape = np.maximum(np.round(np.median(new_shapes, axis=0)), 1).astype(int)
    n_classes = max(2, len(set(fingerprint.get("label_values") or []) | {0}))

    budget = REFERENCE_ELEMENTS * float(gpu_memory_gb) / REFERENCE_GB
    tmp = 1.0 / target
    initial = np.round(tmp * (256**3 / np.prod(tmp)) ** (1 / 3)).astype(int)
    patch = np.minimum(initial, median_shape)
    pools, strides, patch = _topology(target, patch)
    estimate = unet_feature_map_size(patch, strides, n_classes)
    while estimate * max(int(min_batch_size), REFERENCE_BATCH) / REFERENCE_BATCH > budget:
        ratios = np.asarray(patch, np.float64) / median_shape
        axis = int(np.argsort(ratios)[-1])
        patch = list(patch)
        trial = list(patch)
        trial[axis] -= 2 ** pools[axis]  # then the divisor of the smaller patch (nnU-Net: so 224 is not skipped)
        patch[axis] -= 2 ** _topology(target, trial)[0][axis] if trial[axis] >= 1 else 1
        if patch[axis] < 1:
            need = REFERENCE_GB * estimate / REFERENCE_ELEMENTS
            raise ArgumentError(
                f"make_plan: gpu_memory_gb={gpu_memory_gb} is too small for any patch; about "
                f"{need:.3g} GB is needed for the smallest one tried; give a larger gpu_memory_gb"
            )
        pools, strides, patch = _topology(target, patch)
        estimate = unet_feature_map_size(patch, strides, n_classes)
    batch = round(budget / estimate * REFERENCE_BATCH)
    n_voxels = float(np.prod(median_shape, dtype=np.float64)) * len(cases)
    batch_5pct = round(n_voxels * MAX_DATASET_COVERED / float(np.prod(patch, dtype=np.float64)))
    batch = max(min(batch, batch_5pct), int(min_batch_size))

    schemes = [_scheme_of(n) for n in names]
    use_mask = float(fingerprint.get("median_relative_size_after_cropping", 1.0)) < 0.75
    stats = fingerprint["intensity"]

    def stat(c, key, default):
        v = stats[c].get(key)
        return float(default if v is None else v)

    return Plan(spacing=tuple(target), patch_size=tuple(patch), batch_size=batch, pools=pools,
                normalization=tuple(schemes), use_mask_for_norm=tuple(use_mask and s == "zscore" for s in schemes),
                clip_low=tuple(stat(c, "percentile_00_5", 0.0) for c in range(n_channels)),
                clip_high=tuple(stat(c, "percentile_99_5", 0.0) for c in range(n_channels)),
                mean=tuple(stat(c, "mean", 0.0) for c in range(n_channels)),
                std=tuple(stat(c, "std", 1.0) for c in range(n_channels)),
                channel_names=tuple(names), median_shape=tuple(median_shape), n_classes=n_classes,
                anisotropic=bool(target.max() / target.min() > ANISO_THRESHOLD), gpu_memory_gb=float(gpu_memory_gb),
                feature_map_elements=estimate)  # fmt: skip


# -- normalisation -----------------------------------------------------------------------------------------------


class NormalizeChannels(Transform):
    """nnU-Net's per-channel normalisation (``CTNormalization`` / ``ZScoreNormalization``), one scheme per channel.

    ``"ct"``: clip to ``(clip_low, clip_high)`` (the dataset's foreground 0.5 / 99.5 percentiles), then
    ``(x - mean) / max(std, 1e-8)`` with the dataset's foreground statistics. ``"zscore"``: per case,
    ``(x - mean) / max(std, 1e-8)``; with ``use_mask`` the statistics come from the voxels where any channel is
    nonzero (holes filled, as nnU-Net's ``create_nonzero_mask``), only those are normalised and the others become
    0 (nnU-Net's ``use_mask_for_norm``). Output float32.

    Examples
    --------
    >>> import numpy as np, medstack
    >>> v = medstack.Volume(np.array([[[[-2000.0, 0.0, 100.0, 5000.0]]]]), np.eye(4))
    >>> NormalizeChannels(["ct"], clip_low=[-1000], clip_high=[1000], mean=[0], std=[100])(v).data.ravel()
    array([-10.,   0.,   1.,  10.], dtype=float32)
    """

    def __init__(self, schemes: Sequence[str], *, use_mask=None, clip_low=None, clip_high=None, mean=None, std=None,
                 keys=("image",), allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.schemes = tuple(str(s) for s in schemes)
        n = len(self.schemes)
        bad = [s for s in self.schemes if s not in ("ct", "zscore")]
        if bad or n == 0:
            raise ArgumentError(
                f"NormalizeChannels: schemes must be 'ct' or 'zscore', one per channel, got {schemes!r}"
            )

        def per_channel(value, name, default):
            if value is None:
                if default is None and "ct" in self.schemes:
                    raise ArgumentError(f"NormalizeChannels: a 'ct' channel needs {name}= (one value per channel)")
                return tuple([default] * n)
            out = tuple(value)
            if len(out) != n:
                raise ArgumentError(f"NormalizeChannels: {name} has {len(out)} values for {n} channel(s)")
            return out

        self.use_mask = tuple(bool(v) for v in per_channel(use_mask, "use_mask", False))
        self.clip_low = tuple(float(v) if v is not None else None for v in per_channel(clip_low, "clip_low", None))
        self.clip_high = tuple(float(v) if v is not None else None for v in per_channel(clip_high, "clip_high", None))
        self.mean = tuple(float(v) if v is not None else None for v in per_channel(mean, "mean", None))
        self.std = tuple(float(v) if v is not None else None for v in per_channel(std, "std", None))

    def apply(self, volume, params, key):
        x = volume.to_numpy()
        if x.shape[0] != len(self.schemes):
            raise ArgumentError(f"NormalizeChannels: sample[{key!r}] has {x.shape[0]} channel(s), the plan "
                                f"{len(self.schemes)} ({list(self.schemes)}); plan and data must match")  # fmt: skip
        mask = None
        if any(self.use_mask):  # nnU-Net's nonzero mask: any channel nonzero, holes filled
            from scipy.ndimage import binary_fill_holes

            mask = binary_fill_holes(np.any(x != 0, axis=0))
        out = np.empty(x.shape, np.float32)
        for c, scheme in enumerate(self.schemes):
            ch = x[c].astype(np.float64)
            if scheme == "ct":
                ch = np.clip(ch, self.clip_low[c], self.clip_high[c])
                out[c] = (ch - self.mean[c]) / max(self.std[c], 1e-8)
            elif self.use_mask[c]:
                sel = ch[mask]
                m, s = (float(sel.mean()), float(sel.std())) if sel.size else (0.0, 1.0)
                out[c] = np.where(mask, (ch - m) / max(s, 1e-8), 0.0)
            else:
                out[c] = (ch - ch.mean()) / max(float(ch.std()), 1e-8)
        return volume.replace(data=out)
