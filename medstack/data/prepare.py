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
from medstack.io.store import metadata_json, read_json_object

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
    data = read_json_object(path, f"{path}: manifest")
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
    """Cases from a list of dicts, or a CSV / JSON manifest (columns: id, image[, image2...][, label]), or a
    dataset description: a Medical Segmentation Decathlon / nnU-Net ``dataset.json`` (or its folder) or a BIDS
    folder (see :mod:`medstack.data.catalogs`).

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
        if path.is_dir():  # a Decathlon / nnU-Net folder (dataset.json) or a BIDS folder (sub-*)
            from medstack.data.catalogs import read_catalog

            return read_cases(read_catalog(path))
        src = str(path)
        try:
            if path.suffix.lower() == ".json":
                try:
                    data = json.loads(path.read_bytes().decode("utf-8"))
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    raise FormatError(f"{path}: case list is not valid JSON ({e})") from e
                if isinstance(data, dict) and "cases" not in data and ("channel_names" in data or "training" in data):
                    from medstack.data.catalogs import read_decathlon

                    return read_cases(read_decathlon(path))
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


def describe_transform(transform) -> str | None:
    """A stable text description of a prepare transform, for the store's fingerprint and metadata.

    medstack transforms and :class:`~medstack.transforms.Compose` describe themselves with every parameter (their
    ``repr``); a plain function by its module, name and a hash of its code (a closure's captured values or globals
    it reads are not seen: pass ``overwrite=True`` after changing those). Memory addresses are removed, so the
    same pipeline gives the same description in every run.

    >>> from medstack import transforms as T
    >>> describe_transform(T.Clip(low=-100, high=300))
    "Clip(keys=['image'], low=-100, high=300)"
    """
    import hashlib
    import re

    if transform is None:
        return None
    code = getattr(transform, "__code__", None)
    if code is not None:  # a function or lambda: its identity and its code
        digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode())
        name = f"{getattr(transform, '__module__', '?')}.{getattr(transform, '__qualname__', '?')}"
        return f"<function {name} code={digest.hexdigest()[:16]}>"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
    return re.sub(r"\bCompose\(seed=-?\d+, ", "Compose(", text)  # prepare's seed= drives the draws, not Compose's


def _source_stamp(source) -> object:
    """What identifies a source's content cheaply: a file's size and mtime, every file of a folder, a Volume's
    data hash."""
    import hashlib

    if isinstance(source, list | tuple):
        return [_source_stamp(x) for x in source]
    if _is_volume(source):
        h = hashlib.sha256(np.ascontiguousarray(source.to_numpy()).view(np.uint8).reshape(-1).data)
        h.update(np.asarray(source.affine, np.float64).tobytes())
        return f"volume:{h.hexdigest()}"
    if source is None:
        return None
    path = Path(source)
    try:
        if path.is_dir():
            files = []
            for root, _, names in os.walk(path):
                for n in names:
                    st = os.stat(os.path.join(root, n))
                    files.append((os.path.relpath(os.path.join(root, n), path), st.st_size, st.st_mtime_ns))
            return [str(path), sorted(files)]
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None]  # unreadable now: the case itself reports it


def case_fingerprint(case: dict, options: dict) -> str:
    """SHA-256 of what a prepared case depends on: its sources (paths with size and mtime, or in-memory data),
    its label, the options (spacing, sampling lists, transform description) and the medstack version."""
    import hashlib

    payload = {"image": _source_stamp(case["image"]), "label": _source_stamp(case["label"]), "options": options,
               "medstack_version": medstack.__version__}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _apply_transform(transform, image, label, case: dict, seed: int):
    """Run the prepare transform on the case's sample ``{"image", "label", "id", "sources"}``; returns the new
    image and label Volumes, checked to share one grid."""
    import zlib

    from medstack.transforms.base import Compose, generator_for

    sample = {"image": image, "id": case["id"], "sources": _jsonable(case["image"])}
    if label is not None:
        sample["label"] = label
    index = zlib.crc32(case["id"].encode("utf-8"))  # a case's random draws depend on its id, not on the run
    if getattr(transform, "takes_rng", False) or isinstance(transform, Compose):
        out = transform(sample, generator_for(seed, 0, index))
    else:
        out = transform(sample)
    where = f"case {case['id']!r}: prepare transform {describe_transform(transform)}"
    if not isinstance(out, dict) or not _is_volume(out.get("image")):
        raise FormatError(f"{where} returned {type(out).__name__}, expected the sample dict with an 'image' Volume")
    new_label = out.get("label")
    if label is not None:
        if not _is_volume(new_label):
            raise FormatError(f"{where} dropped the 'label' Volume of the sample")
        img = out["image"]
        if new_label.spatial_shape != img.spatial_shape or not np.allclose(new_label.affine, img.affine, atol=1e-4):
            raise FormatError(f"{where} left image and label on different grids ({img.spatial_shape} vs "
                              f"{new_label.spatial_shape}); give spatial transforms keys=('image', 'label')")  # fmt: skip
    return out["image"], new_label


def load_label(path, image):
    """The label of a case: a DICOM SEG / RTSTRUCT rasterised onto ``image``'s grid as one label map (values =
    SegmentNumber / ROINumber; overlapping segments are an error), any volume file :func:`medstack.load` reads, or
    an in-memory Volume (returned as it is: not resampled here)."""
    from medstack.io.dicom.annotations import annotation_kind, read_rtstruct, read_seg

    if _is_volume(path):
        return path
    kind = annotation_kind(path)
    if kind == "SEG":
        return read_seg(path, image, as_labels=True)
    if kind == "RTSTRUCT":
        return read_rtstruct(path, image, as_labels=True)
    return medstack.load(path)


def _prepare_one(case: dict, out_dir: str, spacing, max_per_class: int, overwrite: bool, transform=None,
                 fingerprint: str | None = None, seed: int = 0) -> dict:  # fmt: skip
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
    label = lab = None
    label_name = _jsonable(case["label"])
    if case["label"] is not None:
        lab = load_label(case["label"], vols[0])
        if lab.n_channels != 1:
            raise FormatError(f"{label_name}: label must have one channel, has {lab.n_channels}")
        if lab.spatial_shape != image.spatial_shape or not np.allclose(lab.affine, image.affine, atol=1e-4):
            lab = medstack.resample(lab, like=image, mode="nearest", is_label=True)
    if transform is not None:
        image, lab = _apply_transform(transform, image, lab, case, seed)
        if lab is not None and lab.n_channels != 1:
            raise FormatError(f"case {case['id']!r}: the prepare transform gave a label of {lab.n_channels} channels; "
                              "the store keeps one label map (C = 1)")  # fmt: skip
    if lab is not None:
        data = lab.to_numpy()
        if data.dtype.kind == "f":
            if not np.array_equal(data, np.round(data)):
                raise FormatError(f"{label_name}: label map holds non-integer values")
        if data.min() < 0:
            raise FormatError(f"{label_name}: label map holds negative values")
        label = data.astype(np.uint8 if data.max() < 256 else np.uint16)
    img = image.to_numpy()
    sources = _jsonable(case["image"])
    prepared = {"affine": np.asarray(image.affine).tolist(), "shape": list(image.spatial_shape)}
    applied = {"spacing": None if spacing is None else list(spacing), "transform": describe_transform(transform),
               "grids": image.metadata.get("transform_grids", [])}  # fmt: skip
    meta = {"case_id": case["id"], "sources": sources, "label_source": label_name, "original_grid": original,
            "prepared_grid": prepared, "applied": applied, "fingerprint": fingerprint}  # fmt: skip
    entry = {"id": case["id"], "file": target.name, "shape": list(img.shape), "spacing": list(image.spacing),
             "dtype": str(img.dtype), "sources": sources, "label": label_name, "original_grid": original,
             "prepared_grid": prepared, "applied": applied, "fingerprint": fingerprint}  # fmt: skip
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
    case, out_dir, spacing, max_per_class, overwrite, transform, fingerprint, seed = args
    try:
        return _prepare_one(case, out_dir, spacing, max_per_class, overwrite, transform, fingerprint, seed), None
    except (MedstackError, OSError, ValueError) as e:
        return None, (type(e), f"{case['id']}: {type(e).__name__}: {e}".splitlines()[0])


def prepare(cases, out_dir, *, spacing: Sequence[float] | float | None = None, transform=None, workers: int | None = None,
            max_per_class: int = 20000, overwrite: bool = False, progress: bool = False, seed: int = 0,
            dask=None) -> Path:  # fmt: skip
    """Prepare cases into ``out_dir`` (one HDF5 file per case + ``manifest.json``); returns the manifest path.

    Parameters
    ----------
    cases : list of dict / paths / Volumes, or path to a CSV / JSON manifest
        Each case: ``id``, ``image`` (one source or a list of channel sources: DICOM folders or files, or
        in-memory Volumes), optional ``label`` (a path or a Volume). Channels are stacked on the first image's
        grid. A bare path or Volume is one image without label (see :func:`read_cases` for default ids). Cases
        with Volumes are processed in this process.
    spacing : float, (D, H, W) mm, ``geometry.DHW`` / ``geometry.XYZ`` or ``{"D": .., "H": .., "W": ..}``, optional
        Target spacing to resample every case to (labels: nearest). A plain tuple is read as ``(D, H, W)``: slice
        step, row, column, the reverse of MONAI's ``pixdim``; use ``XYZ(x, y, z)`` to pass a MONAI / TorchIO value.
    transform : callable, optional
        A medstack transform / :class:`~medstack.transforms.Compose` (or any callable taking the sample dict) run
        on each case before it is written: the sample is ``{"image": Volume, "label": Volume (when the case has
        one, on the image's grid), "id": case id, "sources": its sources}``; the image Volume carries its source
        metadata. Use it for everything a case needs once (orientation, resampling, cropping, intensity
        normalisation) so training patches and inference read the same values. It must return the sample with
        ``image`` and ``label`` on one grid. Random transforms draw from ``(seed, case id)``.
    workers : processes (default: all cores). The transform is sent to them (it must be picklable; otherwise,
        e.g. a lambda, the cases run in this process).
    overwrite : redo every case (otherwise complete cases are skipped: resumable).
    seed : seed of random prepare transforms.
    dask : a ``distributed.Client`` or a scheduler address: run the cases on that Dask cluster instead of local
        processes (``pip install 'medstack[distributed]'``); the workers must see the sources and ``out_dir``.

    Re-running is safe and exact: each case's entry records a fingerprint of its sources (size and mtime of every
    file, or the data of an in-memory Volume), the options (spacing, ``max_per_class``), the transform's
    description (:func:`describe_transform`) and the medstack version. A case whose fingerprint changed is redone
    (and logged); the others are kept. What was applied (target spacing, transform, recorded spatial grids) and the
    source and prepared grids are kept with each case, so :func:`to_original_grid` maps predictions back.

    Raises
    ------
    MedstackError
        When any case failed (the others are written and listed in the manifest; the message names each failure).
    """
    from medstack.parallel import map_jobs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_cases(cases)
    manifest_path = out / MANIFEST
    from medstack.geometry import DHW, as_dhw

    sp = None if spacing is None else DHW(*as_dhw(spacing, name="spacing"))  # named: no per-case axis-order warning
    options = {"spacing": None if sp is None else list(sp), "max_per_class": int(max_per_class),
               "transform": describe_transform(transform), "seed": int(seed) if transform is not None else None}  # fmt: skip
    fingerprints = {c["id"]: case_fingerprint(c, options) for c in rows}
    done = {}
    if manifest_path.exists() or manifest_path.is_symlink():  # a corrupt or foreign manifest is an error, not replaced
        for e in load_manifest(manifest_path):
            if (out / e["file"]).exists():
                done[e["id"]] = e
    stale = [c["id"] for c in rows if c["id"] in done and done[c["id"]].get("fingerprint") != fingerprints[c["id"]]]
    if stale and not overwrite:
        logger.warning("prepare: %d case(s) changed since %s was written (sources, options, transform or medstack "
                       "version): redoing %s", len(stale), out, ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))  # fmt: skip
    todo = [c for c in rows if overwrite or c["id"] not in done or c["id"] in stale]
    jobs = [(c, str(out), sp, max_per_class, overwrite, transform, fingerprints[c["id"]], seed) for c in todo]
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

    # cases with in-memory Volumes run in this process (their data is never sent to workers); so do all cases when
    # the transform cannot be sent to a worker process (a lambda, a closure)
    sendable = _sendable(transform)
    local = [j for j in jobs if _has_volume(j[0]) or not sendable]
    pooled = [j for j in jobs if not (_has_volume(j[0]) or not sendable)]
    for j in local:
        collect(_run(j))
    if dask is not None and pooled:
        _run_dask(pooled, dask, collect)
    else:
        map_jobs(_run, pooled, n_workers, collect)
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


def _sendable(transform) -> bool:
    """Whether the transform can travel to a worker process: the process pool serialises it in memory, through a
    pipe, and a lambda or closure cannot be (nothing is written to disk)."""
    from multiprocessing.reduction import ForkingPickler

    try:
        ForkingPickler.dumps(transform)  # what the pool's pipe does to it
        return True
    except Exception:  # lambdas, closures, local classes: PicklingError, AttributeError, TypeError
        return False


def _run_dask(jobs, client_or_address, collect) -> None:
    """Run prepare jobs on a Dask cluster (a ``distributed.Client`` or a scheduler address), collecting each result
    as it finishes (the manifest is updated after each case, as locally)."""
    try:
        from distributed import Client, as_completed
    except ImportError as e:
        raise ReadError("prepare(dask=...) needs the optional dependency: pip install 'medstack[distributed]'") from e
    client = client_or_address if hasattr(client_or_address, "submit") else Client(client_or_address)
    try:
        futures = [client.submit(_run, j, pure=False) for j in jobs]
        for fut in as_completed(futures):
            collect(fut.result())
    finally:
        if client is not client_or_address:
            client.close()


def _has_volume(case: dict) -> bool:
    return _is_volume(case["label"]) or any(
        _is_volume(p) or (isinstance(p, list) and any(_is_volume(q) for q in p)) for p in case["image"])


def _write_manifest(path: Path, rows, done) -> None:
    order = [c["id"] for c in rows if c["id"] in done] + [i for i in done if i not in {c["id"] for c in rows}]
    payload = {"medstack_version": medstack.__version__, "format": "medstack-cases", "cases": [done[i] for i in order]}
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def to_original_grid(prediction, case, *, mode: str = "nearest"):
    """Map a prediction on a prepared case's grid back onto the grid of its source image, undoing what
    ``prepare`` did to the grid (``spacing=`` resampling, and the spatial steps of its ``transform``: reorientation,
    resampling, crops and pads — everything that moved voxels kept their world positions, so one resampling in
    world space undoes them all; voxels a crop removed come back as 0).

    Parameters
    ----------
    prediction : Volume, or a tensor / array ``(C, D, H, W)`` on the prepared grid
        A Volume carries its grid; an array is placed on the case's recorded ``prepared_grid``.
    case : dict or path
        A manifest entry (``json.load(manifest)["cases"][i]``) or a case ``.h5`` file.
    mode : ``"nearest"`` for label maps (default), ``"linear"`` for probabilities.

    Returns
    -------
    Volume on the source image's grid (its affine and shape).
    """
    from medstack.resample import resample
    from medstack.volume import Volume

    if isinstance(case, dict):
        meta = case
    else:
        from medstack.io.store import read_h5

        meta = read_h5(case, name="image", lazy=True).metadata
    where = case if not isinstance(case, dict) else f"case {case.get('id')!r}"
    grid = meta.get("original_grid")
    if not grid:
        raise FormatError(f"{where}: field 'original_grid' is missing (prepared by an older medstack?)")
    affine, shape = _grid_field(grid, "original_grid", where)
    if not isinstance(prediction, Volume):
        if not meta.get("prepared_grid"):
            raise FormatError(f"{where}: field 'prepared_grid' is missing (prepared by an older medstack?); pass the "
                              "prediction as a Volume on the prepared grid")  # fmt: skip
        p_affine, p_shape = _grid_field(meta["prepared_grid"], "prepared_grid", where)
        if len(prediction.shape) != 4 or tuple(prediction.shape[-3:]) != p_shape:
            from medstack.errors import GeometryError

            raise GeometryError(f"{where}: prediction shape {tuple(prediction.shape)} is not (C, D, H, W) on the "
                                f"prepared grid {p_shape}")  # fmt: skip
        prediction = Volume(prediction, p_affine)
    target = Volume(np.broadcast_to(np.zeros((), np.uint8), (1, *shape)), affine)
    if prediction.spatial_shape == target.spatial_shape and np.allclose(prediction.affine, target.affine, atol=1e-4):
        return prediction
    import warnings

    with warnings.catch_warnings():  # a prepared crop covers part of the source grid by design: the rest is 0
        warnings.filterwarnings("ignore", message=r"only .* of the target grid overlaps", category=UserWarning)
        return resample(prediction, like=target, mode=mode, pad_value=0.0)


def _grid_field(grid, field: str, where) -> tuple[np.ndarray, tuple[int, int, int]]:
    if not isinstance(grid, dict) or "shape" not in grid or "affine" not in grid:
        raise FormatError(f"{where}: field {field!r} must hold 'shape' and 'affine', got {grid!r:.200}")
    try:
        shape = tuple(int(v) for v in grid["shape"])
        affine = np.array(grid["affine"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: field {field!r} has a bad shape or affine ({e})") from e
    if len(shape) != 3 or min(shape) < 1 or affine.shape != (4, 4):
        raise FormatError(f"{where}: field {field!r} shape {shape} is not 3 positive sizes with a 4x4 affine")
    return affine, shape
