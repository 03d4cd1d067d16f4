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
from medstack.errors import DicomError, FormatError, MedstackError, OutputExistsError, ReadError
from medstack.io._atomic import WriteError, atomic_output, check_free_space
from medstack.io.store import json_object, metadata_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "medstack-cases"
logger = logging.getLogger(__name__)
_MAX_NAME_BYTES = 250  # a file name is at most 255 bytes on common filesystems; the id gets ".h5"


def check_case_id(case_id, where: str) -> str:
    """``case_id`` when it is usable as a file name inside the store: a non-empty string without path separators,
    not ``.`` / ``..``, not absolute, without NUL or other control characters, at most 250 bytes (UTF-8).
    Otherwise FormatError naming ``where`` (the case) and the field ``id``."""
    if not isinstance(case_id, str):
        raise FormatError(f"{where}: field 'id' must be a string, got {type(case_id).__name__} {case_id!r}")
    problem = None
    if not case_id.strip():
        problem = "is empty"
    elif case_id in (".", ".."):
        problem = "is '.' or '..'"
    elif any(sep in case_id for sep in ("/", "\\", os.sep, os.altsep or "/")):
        problem = "contains a path separator"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id):
        problem = "contains a NUL or control character"
    elif os.path.isabs(case_id) or Path(case_id).drive:
        problem = "is an absolute path"
    elif len(case_id.encode("utf-8", errors="surrogatepass")) > _MAX_NAME_BYTES:
        problem = f"is longer than {_MAX_NAME_BYTES} bytes"
    if problem:
        raise FormatError(f"{where}: field 'id' {case_id!r} {problem}; a case id becomes the file name "
                          "<id>.h5 inside the store, so it must be a plain name")  # fmt: skip
    return case_id


def _check_file_name(name, where: str) -> str:
    """A manifest's ``file`` field: a plain file name inside the store folder (FormatError otherwise)."""
    if not isinstance(name, str):
        raise FormatError(f"{where}: field 'file' must be a string, got {type(name).__name__} {name!r}")
    try:
        check_case_id(name, where)
    except FormatError as e:
        raise FormatError(str(e).replace("field 'id'", "field 'file'", 1)) from None
    return name


def load_manifest(path) -> list[dict]:
    """The case entries of a store's ``manifest.json`` (written by :func:`prepare`), validated: a JSON object
    with a ``cases`` list whose entries have a valid ``id`` and a plain ``file`` name inside the store.
    Raises ReadError (unreadable) or FormatError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: manifest is not UTF-8 text ({e})") from e
    except OSError as e:
        raise ReadError(f"{path}: cannot read the manifest ({e.strerror or e})") from e
    data = json_object(text, f"{path}: manifest")
    if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise FormatError(f"{path}: field 'format' is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    cases = data.get("cases")
    if not isinstance(cases, list):
        raise FormatError(f"{path}: field 'cases' is {'missing' if cases is None else type(cases).__name__}, "
                          "expected a list of case entries")  # fmt: skip
    ids = set()
    for n, e in enumerate(cases):
        where = f"{path}: cases[{n}]"
        if not isinstance(e, dict):
            raise FormatError(f"{where} is JSON {type(e).__name__}, expected an object with 'id' and 'file'")
        for field in ("id", "file"):
            if field not in e:
                raise FormatError(f"{where}: field {field!r} is missing")
        check_case_id(e["id"], where)
        _check_file_name(e["file"], where)
        if e["id"] in ids:
            raise FormatError(f"{where}: field 'id' {e['id']!r} is repeated")
        ids.add(e["id"])
    return cases


def is_case_file(path, case_id: str) -> bool:
    """Whether ``path`` is a case file medstack's :func:`prepare` wrote for ``case_id`` (the HDF5 format attribute
    medstack writes, and the image metadata naming the case). Anything else is foreign and never replaced."""
    import h5py

    from medstack.io.store import is_medstack_file

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            if not is_medstack_file(f):
                return False
            g = f.get("volumes/image")
            raw = None if g is None else g.attrs.get("metadata")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", errors="replace")
            meta = json.loads(raw) if isinstance(raw, str) else None
            return isinstance(meta, dict) and meta.get("case_id") == case_id
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _is_volume(x) -> bool:
    return isinstance(x, medstack.Volume)


def _as_volume(source):
    """A channel / label source as a Volume: in-memory Volumes as they are, paths (or DICOM file lists) loaded."""
    return source if _is_volume(source) else medstack.load(source)


def _jsonable(source):
    """A case source for the manifest / file metadata (JSON): paths as they are; an in-memory Volume as
    ``"<in-memory Volume[ from <source>]>"`` (its data is written to the case file, never pickled)."""
    if isinstance(source, list | tuple):
        return [_jsonable(s) for s in source]
    if _is_volume(source):
        src = source.metadata.get("source")
        return f"<in-memory Volume from {src}>" if src else "<in-memory Volume>"
    return source


def _volume_id(vol, n: int) -> str:
    """Default id of an in-memory Volume: the file name of its metadata ``source`` (without extensions), else
    ``case<n>``."""
    src = vol.metadata.get("source")
    if isinstance(src, str | os.PathLike) and str(src):
        name = Path(src).name.split(".")[0]
        if name:
            return name
    return f"case{n}"


def read_cases(cases) -> list[dict]:
    """Cases from a list of dicts, or a CSV / JSON manifest (columns: id, image[, image2...][, label]).

    A list may also hold paths (one image each, no label) or in-memory :class:`~medstack.Volume` objects, and
    a dict's ``image`` / ``label`` may be Volumes (or ``image`` a list mixing paths and Volumes). The default id
    of a Volume is the file name of its metadata ``source``, else ``case<n>`` (n = its position in the list);
    ids are validated like ids of files.

    ``image`` may list several channel sources separated by ``;`` (CSV) or be a list (JSON / dicts); in a
    list, an entry that is itself a list of DICOM files is one channel (one series, as
    :func:`cases_from_dicom_study` writes it). ``label`` may be a label volume file or a DICOM SEG / RTSTRUCT
    (rasterised onto the first image's grid as one label map).
    """
    if isinstance(cases, str | os.PathLike):
        path = Path(cases)
        if not path.exists():
            raise medstack.ReadError(f"{path}: no such manifest")
        src = str(path)
        try:
            if path.suffix.lower() == ".json":
                try:
                    data = json.loads(path.read_bytes().decode("utf-8"))
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    raise FormatError(f"{path}: case list is not valid JSON ({e})") from e
                rows = data.get("cases") if isinstance(data, dict) else data
                if not isinstance(rows, list):
                    raise FormatError(f"{path}: field 'cases' must be a list of cases (or the file a JSON list), "
                                      f"got {type(rows).__name__}")  # fmt: skip
            elif path.suffix.lower() == ".csv":
                try:
                    with open(path, newline="", encoding="utf-8") as f:
                        rows = list(csv.DictReader(f))
                except (UnicodeDecodeError, csv.Error) as e:
                    raise FormatError(f"{path}: not a readable CSV case list ({e})") from e
            else:
                raise FormatError(f"{path}: manifest must be .csv or .json")
        except OSError as e:
            if isinstance(e, MedstackError):
                raise
            raise ReadError(f"{path}: cannot read the case list ({e.strerror or e})") from e
        base = path.parent
    else:
        src = "cases"
        try:
            rows, base = list(cases), Path.cwd()
        except TypeError as e:
            raise FormatError(f"cases must be a list of dicts or a CSV / JSON path, got {type(cases).__name__}") from e
    from_csv = src.lower().endswith(".csv")  # an empty CSV cell means "no id given"
    out = []
    for n, row in enumerate(rows):
        where = f"{src}: case {n}"
        if src == "cases" and (_is_volume(row) or isinstance(row, str | os.PathLike)):
            row = {"image": row}  # a bare path or Volume: one image, no label
        if not isinstance(row, dict):
            raise FormatError(f"{where} is a {type(row).__name__}, expected a mapping with 'image' (and 'id', "
                              "'label'), a path or a medstack.Volume")  # fmt: skip
        image_field = row.get("image")
        if image_field is None or (not _is_volume(image_field) and not image_field):
            raise FormatError(f"{where}: field 'image' is missing or empty")
        try:
            if _is_volume(image_field):
                images = [image_field]
            elif isinstance(image_field, list | tuple):
                images = list(image_field)
            else:
                images = str(image_field).split(";")
            images = [_resolve(p, base) for p in images]
        except TypeError as e:
            raise FormatError(f"{where}: field 'image' is not a path, a Volume or a list of them ({e})") from e
        label = row.get("label")
        if label is not None and not _is_volume(label) and not label:
            label = None
        if label is not None and not isinstance(label, str | os.PathLike) and not _is_volume(label):
            raise FormatError(f"{where}: field 'label' must be a path or a medstack.Volume, got {type(label).__name__}")
        if label is not None and not _is_volume(label) and not Path(label).is_absolute():
            label = str(base / label)
        if any(isinstance(p, list) and not p for p in images):
            raise FormatError(f"{where}: field 'image' holds an empty list of files")
        first = images[0]  # default id: the file name, or the folder of a list of DICOM files
        if not from_csv and isinstance(row.get("id"), str) and not row["id"]:
            raise FormatError(f"{where}: field 'id' '' is empty; leave it out for the default (the image's name)")
        if row.get("id"):
            case_id = row["id"]
        elif _is_volume(first):
            case_id = _volume_id(first, n)
        elif isinstance(first, list):
            case_id = _volume_id(first[0], n) if _is_volume(first[0]) else Path(first[0]).parent.name
        else:
            case_id = Path(first).name.split(".")[0]
        if isinstance(case_id, int | np.integer) and not isinstance(case_id, bool):
            case_id = str(case_id)
        check_case_id(case_id, where)
        out.append({"id": case_id, "image": images, "label": label})
    ids = [c["id"] for c in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise FormatError(f"{src}: case ids must be unique; repeated: {sorted(dup)}")
    return out


def _resolve(source, base: Path):
    """A channel source made absolute: a path, or a list of DICOM files (one series)."""
    if isinstance(source, list | tuple):
        return [_resolve(p, base) for p in source]
    if _is_volume(source):
        return source
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"{source!r} is a {type(source).__name__}")
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

    if _is_volume(path):
        return path
    kind = annotation_kind(path)
    if kind == "SEG":
        return read_seg(path, image, as_labels=True)
    if kind == "RTSTRUCT":
        return read_rtstruct(path, image, as_labels=True)
    return medstack.load(path)


def _prepare_one(case: dict, out_dir: str, spacing, max_per_class: int, overwrite: bool) -> dict:
    check_case_id(case["id"], f"case {case['id']!r}")
    target = Path(out_dir) / f"{case['id']}.h5"
    if target.parent != Path(out_dir) or target.name != f"{case['id']}.h5":
        raise FormatError(f"case {case['id']!r}: field 'id' does not name a file inside {out_dir}")
    vols = [_as_volume(p) for p in case["image"]]
    ref = vols[0]
    original = {"affine": np.asarray(ref.affine).tolist(), "shape": list(ref.spatial_shape)}
    if spacing is not None:  # the target grid only (no data): stack resamples each source once onto it
        from medstack.resample import target_grid

        affine, shape = target_grid(ref, spacing=spacing)
        ref = medstack.Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)
    image = medstack.stack(vols, reference=ref) if (len(vols) > 1 or spacing is not None) else ref
    label = None
    label_name = _jsonable(case["label"])
    if case["label"] is not None:
        lab = _load_label(case["label"], vols[0])
        if lab.n_channels != 1:
            raise FormatError(f"{label_name}: label must have one channel, has {lab.n_channels}")
        if lab.spatial_shape != image.spatial_shape or not np.allclose(lab.affine, image.affine, atol=1e-4):
            lab = medstack.resample(lab, like=image, mode="nearest", is_label=True)
        data = lab.to_numpy()
        if data.dtype.kind == "f":
            if not np.array_equal(data, np.round(data)):
                raise FormatError(f"{label_name}: label map holds non-integer values")
        if data.min() < 0:
            raise FormatError(f"{label_name}: label map holds negative values")
        label = data.astype(np.uint8 if data.max() < 256 else np.uint16)
    img = image.to_numpy()
    sources = _jsonable(case["image"])
    meta = {"case_id": case["id"], "sources": sources, "label_source": label_name, "original_grid": original}
    entry = {"id": case["id"], "file": target.name, "shape": list(img.shape), "spacing": list(image.spacing),
             "dtype": str(img.dtype), "sources": sources, "label": label_name, "original_grid": original}  # fmt: skip
    # Never replace a file medstack did not write for this case (a foreign <id>.h5 in the folder), even with
    # overwrite; our own file of this case is rewritten (overwrite, or a run killed before its manifest entry).
    # A file appearing after this check is not replaced either: publishing without overwrite fails if it exists.
    if target.exists() or target.is_symlink():
        if not is_case_file(target, case["id"]):
            raise OutputExistsError(f"{target}: exists and is not a case file medstack prepare wrote for case "
                                    f"{case['id']!r}; not replaced (move it away or choose another id)")  # fmt: skip
        replace = True
    else:
        replace = False
    check_free_space(target, img.nbytes + (label.nbytes if label is not None else 0))
    try:
        _write_case(target, replace, image, img, label, meta, entry, case, max_per_class)
    except MedstackError:
        raise
    except OSError as e:
        raise WriteError(e.errno, f"{target}: writing the case file failed ({e}); nothing was written") from e
    return entry


def _write_case(target, replace, image, img, label, meta, entry, case, max_per_class):
    import h5py

    from medstack.io.store import FORMAT, FORMAT_VERSION, _chunks_for
    from medstack.patches.samplers import class_voxel_lists

    with atomic_output(target, overwrite=replace) as tmp, h5py.File(tmp, "w") as f:
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
            gl.attrs["metadata"] = metadata_json({"case_id": case["id"], "source": _jsonable(case["label"])})
            voxels, counts, boxes = class_voxel_lists(label[0], max_per_class=max_per_class)
            s = f.create_group("sampling")
            for v, coords in voxels.items():
                s.create_dataset(f"class_{v}", data=coords)
            s.attrs["counts"] = json.dumps(counts)
            s.attrs["boxes"] = json.dumps(boxes)
            entry["classes"] = {str(k): v for k, v in counts.items()}


def _run(args):
    case, out_dir, spacing, max_per_class, overwrite = args
    try:
        return _prepare_one(case, out_dir, spacing, max_per_class, overwrite), None
    except (MedstackError, OSError, ValueError) as e:
        return None, (type(e), f"{case['id']}: {type(e).__name__}: {e}".splitlines()[0])


def prepare(cases, out_dir, *, spacing: Sequence[float] | float | None = None, workers: int | None = None,
            max_per_class: int = 20000, overwrite: bool = False, progress: bool = False) -> Path:  # fmt: skip
    """Prepare cases into ``out_dir`` (one HDF5 file per case + ``manifest.json``); returns the manifest path.

    Parameters
    ----------
    cases : list of dict / paths / Volumes, or path to a CSV / JSON manifest
        Each case: ``id``, ``image`` (one source or a list of channel sources: DICOM folders or files, or
        in-memory Volumes), optional ``label`` (a path or a Volume). Channels are stacked on the first image's
        grid. A bare path or Volume is one image without label (see :func:`read_cases` for default ids). Cases
        with Volumes are processed in this process.
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
    if manifest_path.exists() or manifest_path.is_symlink():  # a corrupt or foreign manifest is an error, not replaced
        for e in load_manifest(manifest_path):
            if (out / e["file"]).exists():
                done[e["id"]] = e
    todo = [c for c in rows if overwrite or c["id"] not in done]
    sp = None if spacing is None else tuple(np.broadcast_to(np.asarray(spacing, float), (3,)).tolist())
    jobs = [(c, str(out), sp, max_per_class, overwrite) for c in todo]
    n_workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="case", desc="prepare")
    failures, kinds = [], set()

    def collect(result):
        entry, err = result
        if err:
            failures.append(err[1])
            kinds.add(err[0])
        else:
            done[entry["id"]] = entry
            _write_manifest(manifest_path, rows, done)
        if bar is not None:
            bar.update(1)

    # cases with in-memory Volumes run in this process (their data is never sent to workers nor pickled)
    local = [j for j in jobs if _has_volume(j[0])]
    pooled = [j for j in jobs if not _has_volume(j[0])]
    for j in local:
        collect(_run(j))
    if n_workers == 1 or len(pooled) <= 1:
        for j in pooled:
            collect(_run(j))
    else:
        with ProcessPoolExecutor(min(n_workers, len(pooled))) as pool:
            for r in pool.map(_run, pooled):
                collect(r)
    if bar is not None:
        bar.close()
    _write_manifest(manifest_path, rows, done)
    if failures:
        msg = f"prepare: {len(failures)} case(s) failed: " + "; ".join(failures)
        kind = next(iter(kinds)) if len(kinds) == 1 else None
        if kind in (FormatError, ReadError, OutputExistsError, DicomError, WriteError):
            raise kind(msg)
        raise (ReadError if all(issubclass(k, OSError) for k in kinds) else FormatError)(msg)
    return manifest_path


def _has_volume(case: dict) -> bool:
    return _is_volume(case["label"]) or any(
        _is_volume(p) or (isinstance(p, list) and any(_is_volume(q) for q in p)) for p in case["image"])


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
        raise FormatError(f"{case if not isinstance(case, dict) else 'case ' + repr(case.get('id'))}: field "
                          "'original_grid' is missing (prepared by an older medstack?)")
    where = case if not isinstance(case, dict) else f"case {case.get('id')!r}"
    if not isinstance(grid, dict) or "shape" not in grid or "affine" not in grid:
        raise FormatError(f"{where}: field 'original_grid' must hold 'shape' and 'affine', got {grid!r:.200}")
    try:
        shape = tuple(int(v) for v in grid["shape"])
        affine = np.array(grid["affine"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: field 'original_grid' has a bad shape or affine ({e})") from e
    if len(shape) != 3 or min(shape) < 1:
        raise FormatError(f"{where}: field 'original_grid' shape {shape} is not 3 positive sizes")
    target = Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)
    if volume.spatial_shape == target.spatial_shape and np.allclose(volume.affine, target.affine, atol=1e-4):
        return volume
    return resample(volume, like=target, mode=mode, pad_value=0.0)
