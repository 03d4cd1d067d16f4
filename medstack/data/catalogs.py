"""Dataset catalogs: read a dataset's own description into the case list :func:`~medstack.data.prepare` takes.

Three layouts, one result. Every reader returns ``list[dict]``, one dict per case::

    {"id": "BRATS_001", "image": ["/abs/imagesTr/BRATS_001.nii.gz"], "label": "/abs/labelsTr/BRATS_001.nii.gz"}

``image`` is always a list of absolute channel paths (one path holding all channels for a 4D file), ``label``
an absolute path or ``None``. Cases come in a deterministic (sorted or listed) order and ids are unique.

- :func:`read_decathlon`: a Medical Segmentation Decathlon (MSD) or nnU-Net v2 ``dataset.json``;
  :func:`describe_dataset` gives its channel and label names.
- :func:`read_bids`: a BIDS-like folder ``sub-*/[ses-*/]anat/...``, with masks from ``derivatives/``.
- :func:`read_case_table`: a CSV / JSON case table (see :func:`~medstack.data.prepare.read_cases`).
- :func:`read_catalog`: any of these, told apart by what the path holds.

Files named in a description are checked to exist; images are not opened (that is :func:`prepare`'s job).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from medstack.errors import ArgumentError, FormatError, ReadError

__all__ = ["CatalogWarning", "describe_dataset", "read_bids", "read_case_table", "read_catalog", "read_decathlon"]

DATASET_JSON = "dataset.json"
# file endings stripped from a file name to make a case id (longest first)
_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".hdf5", ".npz", ".npy", ".png", ".tif",
            ".tiff", ".gz")  # fmt: skip
# BIDS derivative entities: a derivative file may carry these on top of the raw image's entities
_DERIVATIVE_ENTITIES = frozenset({"space", "res", "den", "desc", "label", "atlas", "roi", "from", "to", "mode",
                                  "hemi", "seg", "model", "cohort"})  # fmt: skip


class CatalogWarning(UserWarning):
    """A case of a dataset catalog was left out (``missing="skip"``): the message names the case and the file."""


# ----------------------------------------------------------------------------------------------------------------
# Decathlon (MSD) and nnU-Net v2 dataset.json


def _dataset_json(path) -> tuple[Path, dict]:
    """``(file, content)`` of a dataset.json given as the file or the folder holding it."""
    if not isinstance(path, str | os.PathLike):
        raise ArgumentError(
            f"path must be a dataset.json or its folder (str or os.PathLike), got {type(path).__name__}"
        )
    p = Path(path)
    if p.is_dir():
        p = p / DATASET_JSON
    if not p.is_file():
        where = f"{p.parent}: no {DATASET_JSON}" if p.name == DATASET_JSON else f"{p}: no such file"
        raise ReadError(f"{where}; pass a Decathlon / nnU-Net dataset.json or the folder holding it")
    from medstack.io.store import read_json_object

    data = read_json_object(p, f"{p}: {DATASET_JSON}")
    return p.absolute(), data


def _format_of(p: Path, data: dict) -> str:
    if "channel_names" in data:
        return "nnunet_v2"
    if "modality" in data or "training" in data:
        return "msd"
    raise FormatError(f"{p}: neither field 'channel_names' (nnU-Net v2) nor 'modality' / 'training' (Decathlon) "
                      f"found (fields: {sorted(data)}); this is not a Decathlon or nnU-Net dataset.json")  # fmt: skip


def _channel_list(p: Path, field: str, value) -> list[str]:
    """``{"0": "T1", "1": "T2"}`` -> ``["T1", "T2"]``; keys must be 0..n-1."""
    if not isinstance(value, dict) or not value:
        raise FormatError(f'{p}: field {field!r} must be a non-empty object like {{"0": "CT"}}, got {value!r}')
    try:
        keys = {int(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise FormatError(f"{p}: field {field!r} keys must be channel numbers \"0\", \"1\", ..., "
                          f"got {sorted(value)}") from e  # fmt: skip
    if sorted(keys) != list(range(len(keys))):
        raise FormatError(f"{p}: field {field!r} keys must be the channel numbers 0..{len(keys) - 1}, "
                          f"got {sorted(value)}")  # fmt: skip
    return [keys[i] for i in range(len(keys))]


def _label_names(p: Path, fmt: str, value) -> tuple[dict[int, str], dict[str, list[int]]]:
    """``({value: name}, {region name: [values]})`` from MSD ``{"0": "background"}`` or nnU-Net v2
    ``{"background": 0, "tumor": [1, 2]}`` (lists are nnU-Net regions)."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        raise FormatError(f"{p}: field 'labels' must be an object, got {type(value).__name__}")
    names, regions = {}, {}

    def as_int(x):
        if isinstance(x, bool) or not (isinstance(x, int) or (isinstance(x, str) and x.strip().isdigit())):
            example = '{"0": "background", "1": "tumor"}' if fmt == "msd" else '{"background": 0, "tumor": 1}'
            raise FormatError(f"{p}: field 'labels' holds {x!r} where a label value (integer) belongs; "
                              f"expected like {example}")  # fmt: skip
        return int(x)

    for k, v in value.items():
        if fmt == "msd":
            names[as_int(k)] = str(v)
        elif isinstance(v, list | tuple):
            regions[str(k)] = [as_int(x) for x in v]
        else:
            names[as_int(v)] = str(k)
    return dict(sorted(names.items())), regions


def describe_dataset(path) -> dict:
    """Names of a Decathlon / nnU-Net v2 dataset: channels, labels, dataset name and format.

    Parameters
    ----------
    path : str or os.PathLike
        A ``dataset.json`` or the folder holding it.

    Returns
    -------
    dict
        ``"name"`` (str or None), ``"format"`` (``"msd"`` or ``"nnunet_v2"``), ``"channel_names"`` (list in
        channel order), ``"label_names"`` (``{int: name}``), ``"regions"`` (nnU-Net region labels
        ``{name: [values]}``, usually empty), ``"num_training"`` (int or None), ``"file_ending"`` (str or None),
        ``"path"`` (the dataset.json, absolute).

    Examples
    --------
    >>> describe_dataset("Task01_BrainTumour")["channel_names"]  # doctest: +SKIP
    ['FLAIR', 'T1w', 't1gd', 'T2w']
    """
    p, data = _dataset_json(path)
    fmt = _format_of(p, data)
    field = "channel_names" if fmt == "nnunet_v2" else "modality"
    channels = _channel_list(p, field, data[field]) if field in data else []
    names, regions = _label_names(p, fmt, data.get("labels"))
    n_train = data.get("numTraining")
    return {"name": data.get("name"), "format": fmt, "channel_names": channels, "label_names": names,
            "regions": regions, "num_training": n_train if isinstance(n_train, int) else None,
            "file_ending": data.get("file_ending"), "path": str(p)}  # fmt: skip


def _case_id(name: str, ending: str | None = None) -> str:
    if ending and name.endswith(ending) and len(name) > len(ending):
        return name[: -len(ending)]
    for e in _ENDINGS:
        if name.lower().endswith(e) and len(name) > len(e):
            return name[: -len(e)]
    return name


def _existing(p: Path, base: Path, rel, where: str, fix: str) -> str:
    """``rel`` (relative to ``base`` or absolute) as an absolute normalised path; FormatError when missing."""
    if not isinstance(rel, str) or not rel:
        raise FormatError(f"{p}: {where} must be a file path (string), got {rel!r}")
    full = os.path.normpath(os.path.join(base, rel))
    if not os.path.isfile(full):
        raise FormatError(f"{p}: {where} names {rel!r} but {full} does not exist; {fix}")
    return full


def _check_ids(p: Path, cases: list[dict]) -> list[dict]:
    from medstack.data.prepare import check_case_id

    seen = set()
    for c in cases:
        check_case_id(c["id"], f"{p}: case {c['id']!r}")
        if c["id"] in seen:
            raise FormatError(f"{p}: case id {c['id']!r} occurs twice; case ids come from file names and must be "
                              "unique (rename one of the files)")  # fmt: skip
        seen.add(c["id"])
    return cases


def _read_msd(p: Path, data: dict, split: str) -> list[dict]:
    base = p.parent
    entries = data.get(split)
    if not isinstance(entries, list):
        lists = sorted(k for k, v in data.items() if isinstance(v, list) and k not in ("tensorImageSize",))
        found = "missing" if entries is None else f"a {type(entries).__name__}"
        raise FormatError(f"{p}: split field {split!r} is {found}, expected a list of cases; "
                          f"pass split= one of {lists}")  # fmt: skip
    fix = "fix the path in the dataset.json or restore the file"
    cases = []
    for n, e in enumerate(entries):
        where = f"{split}[{n}]"
        if isinstance(e, str):
            image, label = e, None
        elif isinstance(e, dict) and "image" in e:
            image, label = e["image"], e.get("label")
        else:
            raise FormatError(f"{p}: field '{where}' is {e!r}, expected an image path or an object "
                              "{\"image\": ..., \"label\": ...}")  # fmt: skip
        images = image if isinstance(image, list) else [image]
        if not images:
            raise FormatError(f"{p}: field '{where}.image' is an empty list; list the image file(s) of the case")
        paths = [_existing(p, base, im, f"field '{where}.image'", fix) for im in images]
        lab = None if label in (None, "") else _existing(p, base, label, f"field '{where}.label'", fix)
        cases.append({"id": _case_id(os.path.basename(paths[0])), "image": paths, "label": lab})
    n_field = {"training": "numTraining", "test": "numTest"}.get(split)
    expected = data.get(n_field) if n_field else None
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != len(cases):
        raise FormatError(f"{p}: field {n_field!r} is {expected} but field {split!r} lists {len(cases)} cases; "
                          f"set {n_field!r} to {len(cases)} or list the missing cases")  # fmt: skip
    return _check_ids(p, cases)


def _channel_files(p: Path, folder: Path, ending: str, n_channels: int, where: str) -> dict[str, list[str]]:
    """``{case: [channel paths]}`` of an nnU-Net images folder (``{case}_{XXXX}{ending}``), checked complete."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + r"\Z")
    found: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.endswith(ending):
            continue  # hidden files (macOS "._x") and other files are not cases
        m = pattern.match(name)
        if m is None:
            raise FormatError(f"{folder / name}: not named {{case}}_{{XXXX}}{ending} (XXXX = the 4-digit channel "
                              f"number, e.g. case_0000{ending}); rename it or move it out of {folder}")  # fmt: skip
        found.setdefault(m.group(1), {})[int(m.group(2))] = str(folder / name)
    if not found:
        raise FormatError(f"{p}: {where}: no {{case}}_{{XXXX}}{ending} files in {folder}; put the images there "
                          "or fix field 'file_ending'")  # fmt: skip
    out = {}
    for case, chans in sorted(found.items()):
        want = set(range(n_channels))
        if set(chans) != want:
            miss = [f"{case}_{c:04d}{ending}" for c in sorted(want - set(chans))]
            extra = [os.path.basename(chans[c]) for c in sorted(set(chans) - want)]
            parts = ([f"missing {miss}"] if miss else []) + ([f"unexpected {extra}"] if extra else [])
            raise FormatError(f"{p}: case {case!r} in {folder}: {'; '.join(parts)}; field 'channel_names' lists "
                              f"{n_channels} channel(s) (_0000 to _{n_channels - 1:04d}), each case needs one file "
                              "per channel")  # fmt: skip
        out[case] = [chans[c] for c in range(n_channels)]
    return out


def _read_nnunet(p: Path, data: dict, split: str) -> list[dict]:
    base = p.parent
    n_channels = len(_channel_list(p, "channel_names", data["channel_names"]))
    ending = data.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise FormatError(f"{p}: field 'file_ending' is {ending!r}, expected the image file ending such as "
                          "\".nii.gz\"; add it to the dataset.json")  # fmt: skip
    if split == "training" and isinstance(data.get("dataset"), dict):
        fix = "fix the path in field 'dataset' or restore the file"
        cases = []
        for case, e in sorted(data["dataset"].items()):
            where = f"dataset.{case}"
            if not isinstance(e, dict) or not isinstance(e.get("images"), list):
                raise FormatError(f"{p}: field '{where}' is {e!r}, expected "
                                  "{\"images\": [channel paths], \"label\": path}")  # fmt: skip
            if len(e["images"]) != n_channels:
                raise FormatError(f"{p}: field '{where}.images' lists {len(e['images'])} file(s) but field "
                                  f"'channel_names' has {n_channels} channel(s); list one file per channel")  # fmt: skip
            images = [_existing(p, base, im, f"field '{where}.images'", fix) for im in e["images"]]
            label = e.get("label")
            label = None if label in (None, "") else _existing(p, base, label, f"field '{where}.label'", fix)
            cases.append({"id": case, "image": images, "label": label})
    elif split in ("training", "test"):
        images_dir, labels_dir = (base / "imagesTr", base / "labelsTr") if split == "training" else \
            (base / "imagesTs", base / "labelsTs")  # fmt: skip
        if not images_dir.is_dir():
            raise FormatError(f"{p}: split {split!r} needs the folder {images_dir}, which does not exist; "
                              f"put the {split} images there")  # fmt: skip
        files = _channel_files(p, images_dir, ending, n_channels, f"split {split!r}")
        cases = []
        for case, images in files.items():
            label = labels_dir / f"{case}{ending}"
            if split == "training" and not label.is_file():
                raise FormatError(f"{p}: case {case!r} has images in {images_dir} but no label {label}; add the "
                                  "label or remove the case's images")  # fmt: skip
            cases.append({"id": case, "image": images, "label": str(label) if label.is_file() else None})
    else:
        raise FormatError(f"{p}: split {split!r} is not an nnU-Net v2 split; pass split='training' (imagesTr + "
                          "labelsTr, or field 'dataset') or split='test' (imagesTs)")  # fmt: skip
    expected = data.get("numTraining")
    if split == "training":
        if not isinstance(expected, int) or isinstance(expected, bool):
            raise FormatError(f"{p}: field 'numTraining' is {expected!r}, expected the number of training cases "
                              f"({len(cases)} found); set it to {len(cases)}")  # fmt: skip
        if expected != len(cases):
            raise FormatError(f"{p}: field 'numTraining' is {expected} but {len(cases)} training case(s) were "
                              f"found; set it to {len(cases)} or add the missing cases")  # fmt: skip
    return _check_ids(p, cases)


def read_decathlon(path, *, split: str = "training") -> list[dict]:
    """Cases of a Medical Segmentation Decathlon (MSD) or nnU-Net v2 dataset, from its ``dataset.json``.

    - MSD (and nnU-Net v1, MONAI datalists): the split field lists the cases, ``"training": [{"image":
      "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``, ``"test": ["./imagesTs/y.nii.gz", ...]``;
      paths are relative to the dataset.json's folder. A 4D image holds all channels (one path). Any list field
      is a split (e.g. ``"validation"``); ``numTraining`` / ``numTest`` must agree with the lists.
    - nnU-Net v2 (has ``channel_names``): images ``imagesTr/{case}_{XXXX}{file_ending}``, one file per channel
      (XXXX = the 4-digit channel number), labels ``labelsTr/{case}{file_ending}``, or the explicit ``"dataset"``
      field ``{case: {"images": [...], "label": ...}}``; ``split="test"`` reads ``imagesTs`` (labels from
      ``labelsTs`` where present). ``numTraining`` must equal the number of training cases.

    Parameters
    ----------
    path : str or os.PathLike
        A ``dataset.json`` or the folder holding it.
    split : str
        ``"training"`` (default), ``"test"``, or another list field of an MSD-style file.

    Returns
    -------
    list of dict
        ``{"id", "image": [absolute channel paths], "label": absolute path or None}`` per case, in the order the
        file lists them (nnU-Net v2 folders: sorted by case id). Ids are the file names without their ending.

    Raises
    ------
    ReadError
        No dataset.json.
    FormatError
        Invalid JSON or fields, a listed file missing, channel files missing for a case, ``numTraining``
        disagreeing with the cases found, an unknown split. The message names the file and the field.

    Examples
    --------
    >>> from medstack.data import prepare  # doctest: +SKIP
    >>> prepare(read_decathlon("Task04_Hippocampus"), "store")  # doctest: +SKIP
    """
    if not isinstance(split, str) or not split:
        raise ArgumentError(f"split must be a non-empty string such as 'training' or 'test', got {split!r}")
    p, data = _dataset_json(path)
    if _format_of(p, data) == "nnunet_v2":
        return _read_nnunet(p, data, split)
    return _read_msd(p, data, split)


# ----------------------------------------------------------------------------------------------------------------
# BIDS-like folders


def _bids_entities(name: str, path: Path) -> tuple[list[tuple[str, str]], str]:
    """``([(key, value), ...], suffix)`` of a BIDS file name without extension, e.g. ``sub-01_run-1_T1w``."""
    *parts, suffix = name.split("_")
    entities = []
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep or not key or not value or not key.isalnum() or not value.isalnum():
            raise FormatError(f"{path}: name part {part!r} is not a BIDS entity key-value (like 'run-1'); rename "
                              "the file to sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix><ext>")  # fmt: skip
        entities.append((key, value))
    if not entities or entities[0][0] != "sub":
        raise FormatError(f"{path}: BIDS file names start with 'sub-<label>_'; rename the file")
    keys = [k for k, _ in entities]
    if len(set(keys)) != len(keys):
        raise FormatError(f"{path}: an entity is repeated in the file name ({keys}); rename the file")
    return entities, suffix


def _match_ext(name: str, extensions: tuple[str, ...]) -> str | None:
    for e in sorted(extensions, key=len, reverse=True):
        if name.endswith(e) and len(name) > len(e):
            return e
    return None


def _bids_dirs(top: Path, datatype: str) -> list[tuple[str, str | None, Path]]:
    """``(sub, ses or None, folder)`` of every ``sub-*/[ses-*/]{datatype}`` folder under ``top``, sorted."""
    out = []
    for sub in sorted(top.glob("sub-*")):
        if not sub.is_dir():
            continue
        if (sub / datatype).is_dir():
            out.append((sub.name[4:], None, sub / datatype))
        for ses in sorted(sub.glob("ses-*")):
            if (ses / datatype).is_dir():
                out.append((sub.name[4:], ses.name[4:], ses / datatype))
    return out


def _bids_files(top: Path, datatype: str, suffixes, extensions, where: str):
    """``{(entities tuple): {suffix: path}}`` for the files of the wanted suffixes under ``top``."""
    files: dict[tuple, dict[str, str]] = {}
    for sub, ses, folder in _bids_dirs(top, datatype):
        for f in sorted(folder.iterdir()):
            ext = _match_ext(f.name, extensions)
            if ext is None or f.name.startswith(".") or not f.is_file():
                continue
            stem = f.name[: -len(ext)]
            if stem.rsplit("_", 1)[-1] not in suffixes:
                continue
            entities, suffix = _bids_entities(stem, f)
            ent = dict(entities)
            if ent["sub"] != sub or ent.get("ses") != ses:
                raise FormatError(f"{f}: entities sub-{ent['sub']}" + (f"_ses-{ent['ses']}" if "ses" in ent else "")
                                  + f" do not match its folder (sub-{sub}" + (f"/ses-{ses}" if ses else "")
                                  + f"); move or rename the file ({where})")  # fmt: skip
            key = tuple(entities)
            if suffix in files.get(key, {}):
                raise FormatError(f"{f}: and {files[key][suffix]} are the same image with two extensions; keep one "
                                  "or pass extension= to pick one")  # fmt: skip
            files.setdefault(key, {})[suffix] = str(f.absolute())
    return files


def _as_names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if not names or not all(isinstance(s, str) and s and re.fullmatch(r"[A-Za-z0-9]+", s) for s in names):
        raise ArgumentError(f"{what} must be a BIDS suffix such as 'T1w' or a list of them, got {value!r}")
    if len(set(names)) != len(names):
        raise ArgumentError(f"{what} lists a suffix twice: {names}")
    return names


def _parse_mask(mask) -> tuple[dict[str, str], str]:
    """``"desc-lesion_mask"`` -> ``({"desc": "lesion"}, "mask")``."""
    if not isinstance(mask, str) or not mask:
        raise ArgumentError(f"mask must be a derivative suffix such as 'mask' or 'dseg', optionally with entities "
                            f"such as 'desc-lesion_mask', got {mask!r}")  # fmt: skip
    *parts, suffix = mask.split("_")
    entities = {}
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep or not key.isalnum() or not value.isalnum():
            raise ArgumentError(f"mask {mask!r}: {part!r} is not an entity key-value like 'desc-lesion'")
        entities[key] = value
    if not re.fullmatch(r"[A-Za-z0-9]+", suffix):
        raise ArgumentError(f"mask {mask!r}: suffix {suffix!r} must be letters and digits (like 'mask')")
    return entities, suffix


def read_bids(root, *, suffix: str | Sequence[str] = "T1w", extension: str | Sequence[str] = (".nii.gz", ".nii"),
              mask: str | None = None, datatype: str = "anat", derivatives: str | None = None,
              missing: str = "error") -> list[dict]:  # fmt: skip
    """Cases of a BIDS-like folder: ``root/sub-*/[ses-*/]{datatype}/sub-<s>[_ses-<t>][_<key>-<value>...]_<suffix>``.

    One case per image (per set of entities: sub, ses, acq, run, ...). Several suffixes make channels, matched
    by identical entities. A label mask is looked up in ``root/derivatives/<pipeline>/sub-*/[ses-*/]{datatype}/``:
    a file with the case's entities (all must match; derivative entities such as ``desc``, ``space``, ``label``
    may be added) and the mask's suffix.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset folder (holding ``sub-*``).
    suffix : str or list of str
        The image suffix (``"T1w"``), or several (``["T1w", "FLAIR"]``): one channel each, in this order.
    extension : str or tuple of str
        File endings to accept (the longest matching one is used).
    mask : str, optional
        The derivative suffix of the label (``"mask"``, ``"dseg"``), optionally with required entities
        (``"desc-lesion_mask"`` matches ``sub-01_desc-lesion_mask.nii.gz``). None: no labels.
    datatype : str
        The modality folder (``"anat"``, ``"func"``, ``"dwi"``, ``"perf"``...).
    derivatives : str, optional
        Look for masks only in ``root/derivatives/<derivatives>`` (default: every pipeline folder).
    missing : {"error", "skip"}
        A case lacking a channel or its mask: FormatError naming it, or left out with a :class:`CatalogWarning`.

    Returns
    -------
    list of dict
        ``{"id", "image": [absolute channel paths], "label": absolute path or None}`` sorted by entities. The id is
        ``sub-01[_ses-02]``, plus the other entities (``_acq-x_run-1``) where a session holds several cases.

    Raises
    ------
    ReadError
        ``root`` is not a folder.
    FormatError
        No ``sub-*`` folder or no image found, badly named files, a missing channel or mask (``missing="error"``),
        several masks matching one case.

    Examples
    --------
    >>> read_bids("ds000001", suffix=["T1w", "FLAIR"], mask="desc-lesion_mask")  # doctest: +SKIP
    [{'id': 'sub-01', 'image': ['.../sub-01_T1w.nii.gz', '.../sub-01_FLAIR.nii.gz'], 'label': '...'}]
    """
    if not isinstance(root, str | os.PathLike):
        raise ArgumentError(f"root must be a folder path (str or os.PathLike), got {type(root).__name__}")
    suffixes = _as_names(suffix, "suffix")
    extensions = (extension,) if isinstance(extension, str) else tuple(extension)
    if not extensions or not all(isinstance(e, str) and e.startswith(".") for e in extensions):
        raise ArgumentError(f"extension must be a file ending such as '.nii.gz' or a tuple of them, got {extension!r}")
    if not isinstance(datatype, str) or not re.fullmatch(r"[A-Za-z0-9]+", datatype):
        raise ArgumentError(f"datatype must be a BIDS datatype folder name such as 'anat', got {datatype!r}")
    if missing not in ("error", "skip"):
        raise ArgumentError(f"missing must be 'error' or 'skip', got {missing!r}")
    mask_entities, mask_suffix = _parse_mask(mask) if mask is not None else ({}, None)
    top = Path(root).absolute()
    if not top.is_dir():
        raise ReadError(f"{top}: not a folder; pass the root folder of a BIDS dataset (holding sub-* folders)")
    if not any(p.is_dir() for p in top.glob("sub-*")):
        raise FormatError(f"{top}: no sub-* folders; this is not a BIDS dataset root (pass the folder holding "
                          "sub-01/, sub-02/, ...)")  # fmt: skip
    files = _bids_files(top, datatype, set(suffixes), extensions, "dataset")
    if not files:
        raise FormatError(f"{top}: no *_{'/'.join(suffixes)} file ending in {'/'.join(extensions)} under "
                          f"sub-*/[ses-*/]{datatype}/; check suffix=, extension= and datatype=")  # fmt: skip
    masks = {}
    if mask_suffix is not None:
        pipelines = sorted(d for d in (top / "derivatives").glob("*") if d.is_dir())
        if derivatives is not None:
            pipelines = [d for d in pipelines if d.name == derivatives]
            if not pipelines:
                raise FormatError(f"{top / 'derivatives' / str(derivatives)}: no such derivatives folder; check "
                                  "derivatives=")  # fmt: skip
        for d in pipelines:
            for ents, by_suffix in _bids_files(d, datatype, {mask_suffix}, extensions, "derivatives").items():
                masks[ents] = masks.get(ents, []) + [by_suffix[mask_suffix]]

    def find_mask(key: tuple) -> list[str]:
        want = dict(key)
        hits = []
        for ents, paths in masks.items():
            have = dict(ents)
            same = all(have.get(k) == v for k, v in (*want.items(), *mask_entities.items()))
            if same and all(k in want or k in mask_entities or k in _DERIVATIVE_ENTITIES for k in have):
                hits += paths
        return sorted(hits)

    cases, problems = [], []
    for key in sorted(files):
        by_suffix = files[key]
        name = "_".join(f"{k}-{v}" for k, v in key)
        lacking = [s for s in suffixes if s not in by_suffix]
        label = None
        if lacking:
            problems.append(f"{name}: no {'/'.join(f'{name}_{s}' for s in lacking)} image (has "
                            f"{', '.join(os.path.basename(p) for p in by_suffix.values())})")  # fmt: skip
            continue
        if mask_suffix is not None:
            hits = find_mask(key)
            if len(hits) > 1:
                raise FormatError(f"{name}: {len(hits)} masks match ({', '.join(hits)}); pass mask= with entities "
                                  "(e.g. 'desc-lesion_mask') or derivatives= to pick one")  # fmt: skip
            if not hits:
                problems.append(f"{name}: no {mask} under {top / 'derivatives'}/*/sub-{dict(key)['sub']}/")
                continue
            label = hits[0]
        cases.append({"key": key, "image": [by_suffix[s] for s in suffixes], "label": label})
    if problems and missing == "error":
        raise FormatError(f"{top}: {len(problems)} case(s) incomplete: {'; '.join(problems)}; add the files or pass "
                          "missing='skip' to leave these cases out")  # fmt: skip
    for msg in problems:
        warnings.warn(f"{top}: case left out: {msg}", CatalogWarning, stacklevel=2)
    per_session: dict[tuple, int] = {}  # counted before skipping: a case's id does not depend on the others' files
    for key in files:
        s = tuple((k, v) for k, v in key if k in ("sub", "ses"))
        per_session[s] = per_session.get(s, 0) + 1
    out = []
    for c in cases:
        s = tuple((k, v) for k, v in c["key"] if k in ("sub", "ses"))
        parts = c["key"] if per_session[s] > 1 else s
        out.append({"id": "_".join(f"{k}-{v}" for k, v in parts), "image": c["image"], "label": c["label"]})
    return _check_ids(top, out)


# ----------------------------------------------------------------------------------------------------------------
# CSV / JSON case tables and auto-detection


def read_case_table(path) -> list[dict]:
    """Cases of a CSV or JSON case table (columns ``id``, ``image`` (``;``-separated channels), ``label``).

    A thin wrapper of :func:`medstack.data.prepare.read_cases` for files; a Decathlon / nnU-Net ``dataset.json``
    is refused with a pointer to :func:`read_decathlon`.

    Examples
    --------
    >>> read_case_table("cases.csv")  # doctest: +SKIP
    [{'id': 'a', 'image': ['/data/a.nii.gz'], 'label': '/data/a_seg.nii.gz'}]
    """
    from medstack.data.prepare import read_cases

    if not isinstance(path, str | os.PathLike):
        raise ArgumentError(f"path must be a CSV or JSON file path, got {type(path).__name__}; pass a list of "
                            "cases to medstack.data.read_cases instead")  # fmt: skip
    p = Path(path)
    if p.suffix.lower() == ".json" and p.is_file():
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            data = None  # read_cases reports it
        if isinstance(data, dict) and "cases" not in data and ("channel_names" in data or "training" in data):
            raise FormatError(f"{p}: is a Decathlon / nnU-Net dataset.json, not a case table; read it with "
                              "medstack.data.read_decathlon")  # fmt: skip
    return read_cases(p)


def read_catalog(path, **options) -> list[dict]:
    """Cases of any supported catalog, told apart by what ``path`` holds.

    - a ``.csv`` file, or a ``.json`` file holding a case list: :func:`read_case_table`;
    - a ``dataset.json`` (Decathlon / nnU-Net v2), or a folder holding one: :func:`read_decathlon`;
    - a folder holding ``sub-*`` folders (BIDS): :func:`read_bids`.

    ``options`` go to the chosen reader (``split=`` for Decathlon; ``suffix=``, ``mask=``... for BIDS).

    Examples
    --------
    >>> read_catalog("Task04_Hippocampus")  # doctest: +SKIP
    """
    if not isinstance(path, str | os.PathLike):
        raise ArgumentError(f"path must be a file or folder path, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        if (p / DATASET_JSON).is_file():
            return read_decathlon(p, **options)
        if any(d.is_dir() for d in p.glob("sub-*")):
            return read_bids(p, **options)
        raise FormatError(f"{p}: neither a {DATASET_JSON} nor sub-* folders found; pass a dataset.json folder, a "
                          "BIDS root, or a CSV / JSON case table")  # fmt: skip
    if not p.exists():
        raise ReadError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "cases" not in data and ("channel_names" in data or "training" in data):
            return read_decathlon(p, **options)
    if options:
        raise ArgumentError(f"{p}: a case table takes no options, got {sorted(options)}")
    return read_case_table(p)
