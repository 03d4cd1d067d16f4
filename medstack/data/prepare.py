"""``prepare``: cases (DICOM folders / volume files, optional label) -> patch-friendly HDF5 case files.

One ``<out>/<case_id>.h5`` per case (medstack volume file format, readable with plain h5py)::

    /volumes/image     (C, D, H, W) native dtype, chunked for 3D patch reads; attrs affine + metadata JSON
    /volumes/label     (1, D, H, W) uint8/uint16 (optional)
    /sampling/class_<v>   (n, 3) int32: a random subset (<= max_per_class) of the voxels with label v
    /sampling             attrs: counts and bounding boxes per class (JSON)

plus ``<out>/manifest.json`` listing every case (id, file, shape, spacing, classes, provenance, original grid).
Cases are processed in parallel processes, each file written atomically; re-running skips cases whose file
and manifest entry are complete (resumable). No pickle: HDF5 + JSON only.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import medstack
from medstack.errors import MedstackError
from medstack.io._atomic import atomic_output
from medstack.io.store import metadata_json

MANIFEST = "manifest.json"
logger = logging.getLogger(__name__)


def read_cases(cases) -> list[dict]:
    """Cases from a list of dicts, or a CSV / JSON manifest (columns: id, image[, image2...][, label]).

    ``image`` may list several channel sources separated by ``;`` (CSV) or be a list (JSON / dicts); in a
    list, an entry that is itself a list of DICOM files is one channel (one series, as
    :func:`cases_from_dicom_study` writes it). ``label`` may be a label volume file or a DICOM SEG / RTSTRUCT
    (rasterised onto the first image's grid as one label map).
    """
    if isinstance(cases, str | os.PathLike):
        path = Path(cases)
        if not path.exists():
            raise medstack.ReadError(f"{path}: no such manifest")
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data["cases"] if isinstance(data, dict) else data
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise MedstackError(f"{path}: manifest must be .csv or .json")
        base = path.parent
    else:
        rows, base = list(cases), Path.cwd()
    out = []
    for n, row in enumerate(rows):
        if "image" not in row or not row["image"]:
            raise MedstackError(f"case {n}: no 'image' entry")
        images = row["image"] if isinstance(row["image"], list | tuple) else str(row["image"]).split(";")
        images = [_resolve(p, base) for p in images]
        label = row.get("label") or None
        if label is not None and not Path(label).is_absolute():
            label = str(base / label)
        if any(isinstance(p, list) and not p for p in images):
            raise MedstackError(f"case {n}: an 'image' entry is an empty list of files")
        first = images[0]  # default id: the file name, or the folder of a list of DICOM files
        case_id = str(row.get("id") or (Path(first[0]).parent.name if isinstance(first, list)
                                        else Path(first).name.split(".")[0]))  # fmt: skip
        out.append({"id": case_id, "image": images, "label": label})
    ids = [c["id"] for c in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise MedstackError(f"case ids must be unique; repeated: {sorted(dup)}")
    return out


def _resolve(source, base: Path):
    """A channel source made absolute: a path, or a list of DICOM files (one series)."""
    if isinstance(source, list | tuple):
        return [_resolve(p, base) for p in source]
    return str(source if Path(source).is_absolute() else base / source)


def cases_from_dicom_study(folder) -> list[dict]:
    """Prepare-style cases from a DICOM study folder: each annotated image series with its SEG or RTSTRUCT.

    The folder is scanned (:func:`medstack.io.dicom.scan`), its SEG / RTSTRUCT objects found
    (:func:`~medstack.io.dicom.annotations.find_annotations`) and paired with the series they annotate
    (:func:`~medstack.io.dicom.annotations.pair_annotations`: referenced series UID, else the one series sharing
    the FrameOfReferenceUID). Annotations that cannot be paired are logged (WARNING) and left out; image series
    without an annotation are not listed.

    Returns
    -------
    list of dict
        ``{"id": "<folder>_s<SeriesNumber>[_<n>]", "image": [<the series' files>], "label": <annotation path>}``
        per annotation, ready for :func:`prepare` / :func:`read_cases` (``image`` holds one channel: the list of
        the series' files).
    """
    from medstack.io.dicom import scan
    from medstack.io.dicom.annotations import find_annotations, pair_annotations

    folder = Path(folder)
    if not folder.is_dir():
        raise medstack.ReadError(f"{folder}: not a folder; pass the folder of a DICOM study")
    annotations = find_annotations(folder)
    pairing = pair_annotations(scan(folder), annotations)
    cases, ids = [], set()
    for a in annotations:
        if a.sop_instance_uid in pairing.unpaired:
            logger.warning("%s: %s left out: %s", a.path, a.kind, pairing.unpaired[a.sop_instance_uid])
            continue
        s = pairing[a.sop_instance_uid]
        base = case_id = f"{folder.name}_s{s.series_number if s.series_number is not None else 'x'}"
        n = 1
        while case_id in ids:
            n += 1
            case_id = f"{base}_{n}"
        ids.add(case_id)
        cases.append({"id": case_id, "image": [list(s.files)], "label": a.path})
    return cases


def _load_label(path, image):
    """The label of a case: a DICOM SEG / RTSTRUCT rasterised onto ``image``'s grid as one label map (values =
    SegmentNumber / ROINumber; overlapping segments are an error), or any volume file :func:`medstack.load` reads."""
    from medstack.io.dicom.annotations import annotation_kind, read_rtstruct, read_seg

    kind = annotation_kind(path)
    if kind == "SEG":
        return read_seg(path, image, as_labels=True)
    if kind == "RTSTRUCT":
        return read_rtstruct(path, image, as_labels=True)
    return medstack.load(path)


def _prepare_one(case: dict, out_dir: str, spacing, max_per_class: int, overwrite: bool) -> dict:
    import h5py

    from medstack.io.store import FORMAT, FORMAT_VERSION, _chunks_for
    from medstack.patches.samplers import class_voxel_lists

    target = Path(out_dir) / f"{case['id']}.h5"
    vols = [medstack.load(p) for p in case["image"]]
    ref = vols[0]
    original = {"affine": np.asarray(ref.affine).tolist(), "shape": list(ref.spatial_shape)}
    if spacing is not None:  # the target grid only (no data): stack resamples each source once onto it
        from medstack.resample import target_grid

        affine, shape = target_grid(ref, spacing=spacing)
        ref = medstack.Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)
    image = medstack.stack(vols, reference=ref) if (len(vols) > 1 or spacing is not None) else ref
    label = None
    if case["label"]:
        lab = _load_label(case["label"], vols[0])
        if lab.n_channels != 1:
            raise MedstackError(f"{case['label']}: label must have one channel, has {lab.n_channels}")
        if lab.spatial_shape != image.spatial_shape or not np.allclose(lab.affine, image.affine, atol=1e-4):
            lab = medstack.resample(lab, like=image, mode="nearest", is_label=True)
        data = lab.to_numpy()
        if data.dtype.kind == "f":
            if not np.array_equal(data, np.round(data)):
                raise MedstackError(f"{case['label']}: label map holds non-integer values")
        if data.min() < 0:
            raise MedstackError(f"{case['label']}: label map holds negative values")
        label = data.astype(np.uint8 if data.max() < 256 else np.uint16)
    img = image.to_numpy()
    meta = {"case_id": case["id"], "sources": case["image"], "label_source": case["label"], "original_grid": original}
    entry = {"id": case["id"], "file": target.name, "shape": list(img.shape), "spacing": list(image.spacing),
             "dtype": str(img.dtype), "sources": case["image"], "label": case["label"], "original_grid": original}  # fmt: skip
    with atomic_output(target, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["medstack_format"] = FORMAT
        f.attrs["medstack_format_version"] = FORMAT_VERSION
        g = f.create_group("volumes")
        gi = g.create_group("image")
        gi.create_dataset("data", data=img, chunks=_chunks_for(img.shape, "auto"))
        gi.attrs["affine"] = np.asarray(image.affine)
        gi.attrs["metadata"] = metadata_json(meta)
        if label is not None:
            gl = g.create_group("label")
            gl.create_dataset("data", data=label, chunks=_chunks_for(label.shape, "auto"))
            gl.attrs["affine"] = np.asarray(image.affine)
            gl.attrs["metadata"] = metadata_json({"case_id": case["id"], "source": case["label"]})
            voxels, counts, boxes = class_voxel_lists(label[0], max_per_class=max_per_class)
            s = f.create_group("sampling")
            for v, coords in voxels.items():
                s.create_dataset(f"class_{v}", data=coords)
            s.attrs["counts"] = json.dumps(counts)
            s.attrs["boxes"] = json.dumps(boxes)
            entry["classes"] = {str(k): v for k, v in counts.items()}
    return entry


def _run(args):
    case, out_dir, spacing, max_per_class, overwrite = args
    try:
        return _prepare_one(case, out_dir, spacing, max_per_class, overwrite), None
    except (MedstackError, OSError, ValueError) as e:
        return None, f"{case['id']}: {type(e).__name__}: {e}".splitlines()[0]


def prepare(cases, out_dir, *, spacing: Sequence[float] | float | None = None, workers: int | None = None,
            max_per_class: int = 20000, overwrite: bool = False, progress: bool = False) -> Path:  # fmt: skip
    """Prepare cases into ``out_dir`` (one HDF5 file per case + ``manifest.json``); returns the manifest path.

    Parameters
    ----------
    cases : list of dict, or path to a CSV / JSON manifest
        Each case: ``id``, ``image`` (one source or a list of channel sources: DICOM folders or files),
        optional ``label``. Channels are stacked on the first image's grid.
    spacing : optional target spacing (mm, D H W) to resample every case to (labels: nearest).
    workers : processes (default: all cores).
    overwrite : redo cases whose file exists (otherwise complete cases are skipped: resumable).

    Raises
    ------
    MedstackError
        When any case failed (the others are written and listed in the manifest; the message names each failure).
    """
    from concurrent.futures import ProcessPoolExecutor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_cases(cases)
    manifest_path = out / MANIFEST
    done = {}
    if manifest_path.exists():
        for e in json.loads(manifest_path.read_text()).get("cases", []):
            if (out / e["file"]).exists():
                done[e["id"]] = e
    todo = [c for c in rows if overwrite or c["id"] not in done]
    sp = None if spacing is None else tuple(np.broadcast_to(np.asarray(spacing, float), (3,)).tolist())
    jobs = [(c, str(out), sp, max_per_class, overwrite or (out / f"{c['id']}.h5").exists()) for c in todo]
    n_workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="case", desc="prepare")
    failures = []

    def collect(result):
        entry, err = result
        if err:
            failures.append(err)
        else:
            done[entry["id"]] = entry
            _write_manifest(manifest_path, rows, done)
        if bar is not None:
            bar.update(1)

    if n_workers == 1 or len(jobs) <= 1:
        for j in jobs:
            collect(_run(j))
    else:
        with ProcessPoolExecutor(min(n_workers, len(jobs))) as pool:
            for r in pool.map(_run, jobs):
                collect(r)
    if bar is not None:
        bar.close()
    _write_manifest(manifest_path, rows, done)
    if failures:
        raise MedstackError(f"prepare: {len(failures)} case(s) failed: " + "; ".join(failures))
    return manifest_path


def _write_manifest(path: Path, rows, done) -> None:
    order = [c["id"] for c in rows if c["id"] in done] + [i for i in done if i not in {c["id"] for c in rows}]
    payload = {"medstack_version": medstack.__version__, "format": "medstack-cases", "cases": [done[i] for i in order]}
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def to_original_grid(volume, case, *, mode: str = "nearest"):
    """Map a prediction on a prepared case's grid back onto the grid of its source image (undoing the
    resampling ``prepare(spacing=...)`` did). ``case`` is a manifest entry (dict) or a case .h5 path.

    Use ``mode="nearest"`` for label maps (default), ``"linear"`` for probabilities.
    """
    from medstack.resample import resample
    from medstack.volume import Volume

    if isinstance(case, dict):
        grid = case.get("original_grid")
    else:
        from medstack.io.store import read_h5

        grid = read_h5(case, name="image", lazy=True).metadata.get("original_grid")
    if not grid:
        raise MedstackError("this case has no recorded original grid (prepared by an older medstack?)")
    target = Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *grid["shape"])), np.array(grid["affine"]))
    if volume.spatial_shape == target.spatial_shape and np.allclose(volume.affine, target.affine, atol=1e-4):
        return volume
    return resample(volume, like=target, mode=mode, pad_value=0.0)
