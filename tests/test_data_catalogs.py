"""Dataset catalogs (medstack.data.catalogs): Decathlon / nnU-Net v2 dataset.json, BIDS folders, case tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medstack.data import prepare
from medstack.data.catalogs import (
    CatalogWarning,
    describe_dataset,
    read_bids,
    read_case_table,
    read_catalog,
    read_decathlon,
)
from medstack.errors import ArgumentError, FormatError, ReadError

SHAPE = (6, 5, 4)  # (i, j, k) on disk


def _nifti(path: Path, *, channels: int | None = None, label: bool = False, seed: int = 0) -> str:
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if label:
        data = np.zeros(SHAPE, np.uint8)
        data[1:4, 1:3, 1:3] = 1
    else:
        data = rng.normal(size=SHAPE + ((channels,) if channels else ())).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return str(path)


def _manifest_ids_and_channels(cases, out: Path) -> tuple[list[str], list[int]]:
    manifest = prepare(cases, out, workers=1)
    entries = json.loads(Path(manifest).read_text())["cases"]
    return [e["id"] for e in entries], [e["shape"][0] for e in entries]


# ---------------------------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon (v1)


def _msd(root: Path, n_train: int = 2, **extra) -> Path:
    for k in range(n_train):
        _nifti(root / "imagesTr" / f"BRATS_{k:03d}.nii.gz", channels=2, seed=k)
        _nifti(root / "labelsTr" / f"BRATS_{k:03d}.nii.gz", label=True)
    _nifti(root / "imagesTs" / "BRATS_100.nii.gz", channels=2)
    (root / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"macOS junk")  # not listed: ignored
    data = {"name": "BRATS", "tensorImageSize": "4D", "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "tumour"}, "numTraining": n_train, "numTest": 1,
            "training": [{"image": f"./imagesTr/BRATS_{k:03d}.nii.gz", "label": f"./labelsTr/BRATS_{k:03d}.nii.gz"}
                         for k in range(n_train)],
            "test": ["./imagesTs/BRATS_100.nii.gz"]}  # fmt: skip
    data.update(extra)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_msd_training_cases_prepare(tmp_path):
    root = _msd(tmp_path / "Task01")
    cases = read_decathlon(root)
    assert [c["id"] for c in cases] == ["BRATS_000", "BRATS_001"]
    assert cases[1]["image"] == [str((root / "imagesTr" / "BRATS_001.nii.gz").absolute())]
    assert cases[1]["label"] == str((root / "labelsTr" / "BRATS_001.nii.gz").absolute())
    assert all(os.path.isabs(c["image"][0]) and "./" not in c["image"][0] for c in cases)
    assert read_decathlon(root / "dataset.json") == cases  # the file or its folder
    ids, channels = _manifest_ids_and_channels(cases, tmp_path / "store")
    assert ids == ["BRATS_000", "BRATS_001"] and channels == [2, 2]  # the 4D file holds both channels


def test_msd_test_split_and_description(tmp_path):
    root = _msd(tmp_path / "Task01")
    test = read_decathlon(root, split="test")
    assert test == [{"id": "BRATS_100", "image": [str(root.absolute() / "imagesTs" / "BRATS_100.nii.gz")],
                     "label": None}]  # fmt: skip
    d = describe_dataset(root)
    assert d["format"] == "msd" and d["name"] == "BRATS"
    assert d["channel_names"] == ["FLAIR", "T1w"]
    assert d["label_names"] == {0: "background", 1: "tumour"}
    assert d["num_training"] == 2


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda r, d: (r / "imagesTr" / "BRATS_001.nii.gz").unlink(),
            r"training\[1\]\.image.*BRATS_001.*does not exist",
        ),
        (lambda r, d: d.update(numTraining=5), r"'numTraining' is 5 but field 'training' lists 2"),
        (lambda r, d: d.update(training=[{"label": "x"}]), r"training\[0\]"),
        (lambda r, d: d.update(modality={"0": "a", "2": "b"}), r"'modality' keys must be the channel numbers"),
    ],
)
def test_msd_errors_name_file_and_field(tmp_path, edit, match):
    root = _msd(tmp_path / "T")
    data = json.loads((root / "dataset.json").read_text())
    edit(root, data)
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match=match) as e:
        read_decathlon(root) if "modality" not in match else describe_dataset(root)
    assert "dataset.json" in str(e.value)


def test_msd_unknown_split_and_bad_files(tmp_path):
    root = _msd(tmp_path / "T")
    with pytest.raises(FormatError, match=r"split field 'validation' is missing.*\['test', 'training'\]"):
        read_decathlon(root, split="validation")
    with pytest.raises(ArgumentError, match="split"):
        read_decathlon(root, split=3)
    with pytest.raises(ReadError, match=r"no dataset\.json"):
        read_decathlon(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_decathlon(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="JSON list"):
        read_decathlon(tmp_path / "list.json")
    (tmp_path / "other.json").write_text('{"foo": 1}')
    with pytest.raises(FormatError, match="not a Decathlon or nnU-Net"):
        read_decathlon(tmp_path / "other.json")


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net v2


def _nnunet(root: Path, cases=("liver_1", "liver_0", "liver_2"), channels=2, **extra) -> Path:
    for k, case in enumerate(cases):
        for c in range(channels):
            _nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", seed=10 * k + c)
        _nifti(root / "labelsTr" / f"{case}.nii.gz", label=True)
    data = {"channel_names": {str(c): n for c, n in zip(range(channels), ["CT", "PET", "x"])},
            "labels": {"background": 0, "liver": 1, "tumour": 2, "whole": [1, 2]}, "numTraining": len(cases),
            "file_ending": ".nii.gz", "name": "Dataset001_Liver"}  # fmt: skip
    data.update(extra)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_nnunet_v2_cases_prepare(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Liver")
    (root / "imagesTr" / "._liver_0_0000.nii.gz").write_bytes(b"x")  # hidden files are not cases
    cases = read_decathlon(root)
    assert [c["id"] for c in cases] == ["liver_0", "liver_1", "liver_2"]  # sorted
    base = root.absolute()
    assert cases[0]["image"] == [str(base / "imagesTr" / "liver_0_0000.nii.gz"),
                                 str(base / "imagesTr" / "liver_0_0001.nii.gz")]  # fmt: skip
    assert cases[2]["label"] == str(base / "labelsTr" / "liver_2.nii.gz")
    d = describe_dataset(root)
    assert d["format"] == "nnunet_v2" and d["channel_names"] == ["CT", "PET"]
    assert d["label_names"] == {0: "background", 1: "liver", 2: "tumour"}
    assert d["regions"] == {"whole": [1, 2]} and d["file_ending"] == ".nii.gz"
    ids, channels = _manifest_ids_and_channels(cases, tmp_path / "store")
    assert ids == ["liver_0", "liver_1", "liver_2"] and channels == [2, 2, 2]


def test_nnunet_v2_test_split_and_explicit_dataset(tmp_path):
    root = _nnunet(tmp_path / "D", cases=("a",), channels=1)
    _nifti(root / "imagesTs" / "t9_0000.nii.gz")
    assert read_decathlon(root, split="test") == [
        {"id": "t9", "image": [str(root.absolute() / "imagesTs" / "t9_0000.nii.gz")], "label": None}
    ]
    _nifti(tmp_path / "elsewhere" / "scan.nii.gz")
    data = json.loads((root / "dataset.json").read_text())
    data["dataset"] = {
        "custom": {"images": [str(tmp_path / "elsewhere" / "scan.nii.gz")], "label": "labelsTr/a.nii.gz"}
    }
    data["numTraining"] = 1
    (root / "dataset.json").write_text(json.dumps(data))
    cases = read_decathlon(root)
    assert cases == [{"id": "custom", "image": [str(tmp_path / "elsewhere" / "scan.nii.gz")],
                      "label": str(root.absolute() / "labelsTr" / "a.nii.gz")}]  # fmt: skip
    ids, channels = _manifest_ids_and_channels(cases, tmp_path / "store")
    assert ids == ["custom"] and channels == [1]


def test_nnunet_v2_errors(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "imagesTr" / "liver_1_0001.nii.gz").unlink()
    with pytest.raises(FormatError, match=r"case 'liver_1'.*missing \['liver_1_0001.nii.gz'\].*'channel_names'"):
        read_decathlon(root)
    _nifti(root / "imagesTr" / "liver_1_0001.nii.gz")
    _nifti(root / "imagesTr" / "liver_1_0002.nii.gz")
    with pytest.raises(FormatError, match=r"unexpected \['liver_1_0002.nii.gz'\]"):
        read_decathlon(root)
    (root / "imagesTr" / "liver_1_0002.nii.gz").unlink()
    (root / "labelsTr" / "liver_2.nii.gz").unlink()
    with pytest.raises(FormatError, match=r"case 'liver_2'.*no label"):
        read_decathlon(root)
    _nifti(root / "labelsTr" / "liver_2.nii.gz", label=True)
    assert len(read_decathlon(root)) == 3  # repaired
    _nifti(root / "imagesTr" / "liver_3.nii.gz")
    with pytest.raises(FormatError, match=r"liver_3.nii.gz: not named \{case\}_\{XXXX\}.nii.gz"):
        read_decathlon(root)
    (root / "imagesTr" / "liver_3.nii.gz").unlink()
    with pytest.raises(FormatError, match=r"split 'validation' is not an nnU-Net v2 split"):
        read_decathlon(root, split="validation")
    with pytest.raises(FormatError, match=r"imagesTs.*does not exist"):
        read_decathlon(root, split="test")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"numTraining": 4}, r"'numTraining' is 4 but 3 training case\(s\) were found; set it to 3"),
        ({"numTraining": None}, r"'numTraining' is None"),
        ({"file_ending": None}, r"'file_ending' is None"),
        ({"file_ending": ".nrrd"}, r"no \{case\}_\{XXXX\}.nrrd files"),
        ({"dataset": {"a": {"images": ["imagesTr/liver_0_0000.nii.gz"], "label": None}}}, r"lists 1 file\(s\).*2"),
        ({"dataset": {"a": {"images": ["imagesTr/liver_0_0000.nii.gz", "nope.nii.gz"]}}}, r"dataset\.a.*nope"),
        ({"labels": {"background": "zero"}}, r"'labels' holds 'zero'"),
    ],
)
def test_nnunet_v2_field_errors(tmp_path, extra, match):
    root = _nnunet(tmp_path / "D", **extra)
    with pytest.raises(FormatError, match=match):
        read_decathlon(root) if "labels" not in extra else describe_dataset(root)


# ---------------------------------------------------------------------------------------------------------------
# BIDS


def _bids(root: Path) -> Path:
    """sub-01 (no sessions), sub-02 with ses-01 and ses-02; T1w + FLAIR; brain masks in derivatives/manual."""
    sessions = [("01", None), ("02", "01"), ("02", "02")]
    for sub, ses in sessions:
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        _nifti(folder / f"{stem}_T1w.nii.gz")
        _nifti(folder / f"{stem}_FLAIR.nii.gz")
        (folder / f"{stem}_T1w.json").write_text("{}")  # sidecars are ignored
        mask_dir = root / "derivatives" / "manual" / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        _nifti(mask_dir / f"{stem}_desc-brain_mask.nii.gz", label=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    return root


def test_bids_channels_and_masks_prepare(tmp_path):
    root = _bids(tmp_path / "bids")
    cases = read_bids(root, suffix=["T1w", "FLAIR"], mask="mask")
    assert [c["id"] for c in cases] == ["sub-01", "sub-02_ses-01", "sub-02_ses-02"]
    anat = root.absolute() / "sub-02" / "ses-01" / "anat"
    assert cases[1]["image"] == [str(anat / "sub-02_ses-01_T1w.nii.gz"), str(anat / "sub-02_ses-01_FLAIR.nii.gz")]
    assert cases[1]["label"] == str(root.absolute() / "derivatives" / "manual" / "sub-02" / "ses-01" / "anat"
                                    / "sub-02_ses-01_desc-brain_mask.nii.gz")  # fmt: skip
    ids, channels = _manifest_ids_and_channels(cases, tmp_path / "store")
    assert ids == ["sub-01", "sub-02_ses-01", "sub-02_ses-02"] and channels == [2, 2, 2]
    only_t1 = read_bids(root)  # default: T1w, no mask
    assert [len(c["image"]) for c in only_t1] == [1, 1, 1] and all(c["label"] is None for c in only_t1)
    assert read_catalog(root, suffix="FLAIR")[0]["image"][0].endswith("sub-01_FLAIR.nii.gz")


def test_bids_runs_get_entities_in_ids_and_masks_match_entities(tmp_path):
    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    for run in (1, 2):
        _nifti(anat / f"sub-01_run-{run}_T1w.nii.gz")
    _nifti(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    deriv = root / "derivatives" / "seg" / "sub-01" / "anat"
    _nifti(deriv / "sub-01_run-2_dseg.nii.gz", label=True)
    _nifti(deriv / "sub-01_dseg.nii.gz", label=True)  # no run entity: matches no run-N image
    _nifti(root / "derivatives" / "seg" / "sub-02" / "anat" / "sub-02_run-1_dseg.nii.gz", label=True)  # extra run
    with pytest.raises(FormatError, match=r"2 case\(s\) incomplete: sub-01_run-1: no dseg.*sub-02: no dseg"):
        read_bids(root, mask="dseg")
    with pytest.warns(CatalogWarning, match="no dseg") as rec:
        cases = read_bids(root, mask="dseg", missing="skip")
    assert sorted(str(w.message).split("case left out: ")[1].split(":")[0] for w in rec) == ["sub-01_run-1", "sub-02"]
    assert [c["id"] for c in cases] == ["sub-01_run-2"]
    assert cases[0]["label"].endswith("sub-01_run-2_dseg.nii.gz")
    assert [c["id"] for c in read_bids(root)] == ["sub-01_run-1", "sub-01_run-2", "sub-02"]


def test_bids_missing_channel_ambiguous_mask_and_mask_entities(tmp_path):
    root = _bids(tmp_path / "bids")
    (root / "sub-02" / "ses-02" / "anat" / "sub-02_ses-02_FLAIR.nii.gz").unlink()
    with pytest.raises(FormatError, match=r"sub-02_ses-02: no sub-02_ses-02_FLAIR image.*missing='skip'"):
        read_bids(root, suffix=["T1w", "FLAIR"])
    with pytest.warns(CatalogWarning, match="sub-02_ses-02"):
        cases = read_bids(root, suffix=["T1w", "FLAIR"], missing="skip")
    assert [c["id"] for c in cases] == ["sub-01", "sub-02_ses-01"]
    # a second mask for sub-01 (other desc, other pipeline): ambiguous unless narrowed
    _nifti(root / "derivatives" / "auto" / "sub-01" / "anat" / "sub-01_desc-lesion_mask.nii.gz", label=True)
    with pytest.raises(FormatError, match=r"sub-01: 2 masks match"):
        read_bids(root, mask="mask")
    with pytest.warns(CatalogWarning):
        by_desc = read_bids(root, mask="desc-lesion_mask", missing="skip")
    assert [c["id"] for c in by_desc] == ["sub-01"] and by_desc[0]["label"].endswith("desc-lesion_mask.nii.gz")
    assert len(read_bids(root, mask="mask", derivatives="manual")) == 3
    with pytest.raises(FormatError, match="no such derivatives folder"):
        read_bids(root, mask="mask", derivatives="nope")


def test_bids_bad_layouts_and_arguments(tmp_path):
    with pytest.raises(ReadError, match="not a folder"):
        read_bids(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no sub-\\* folders"):
        read_bids(tmp_path / "empty")
    root = _bids(tmp_path / "bids")
    with pytest.raises(FormatError, match=r"no \*_T2w file"):
        read_bids(root, suffix="T2w")
    _nifti(root / "sub-01" / "anat" / "sub-03_T1w.nii.gz")
    with pytest.raises(FormatError, match="do not match its folder"):
        read_bids(root)
    (root / "sub-01" / "anat" / "sub-03_T1w.nii.gz").unlink()
    _nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii")
    with pytest.raises(FormatError, match="two extensions"):
        read_bids(root)
    assert len(read_bids(root, extension=".nii")) == 1
    (root / "sub-01" / "anat" / "sub-01_T1w.nii").unlink()
    _nifti(root / "sub-01" / "anat" / "sub-01_weird_T1w.nii.gz")
    with pytest.raises(FormatError, match="'weird' is not a BIDS entity"):
        read_bids(root)
    for kwargs in ({"suffix": ""}, {"suffix": ["T1w", "T1w"]}, {"missing": "ignore"}, {"mask": "a-b-_x"},
                   {"extension": "nii"}, {"datatype": "../x"}):  # fmt: skip
        with pytest.raises(ArgumentError):
            read_bids(root, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# case tables and dispatch


def test_case_table_and_catalog_dispatch(tmp_path):
    img = _nifti(tmp_path / "a.nii.gz")
    lab = _nifti(tmp_path / "a_seg.nii.gz", label=True)
    (tmp_path / "cases.csv").write_text("id,image,label\ncase_a,a.nii.gz,a_seg.nii.gz\n")
    cases = read_case_table(tmp_path / "cases.csv")
    assert cases == [{"id": "case_a", "image": [img], "label": lab}]
    assert read_catalog(tmp_path / "cases.csv") == cases
    ids, channels = _manifest_ids_and_channels(cases, tmp_path / "store")
    assert ids == ["case_a"] and channels == [1]
    root = _msd(tmp_path / "Task", n_train=1)
    with pytest.raises(FormatError, match="read_decathlon"):
        read_case_table(root / "dataset.json")
    assert [c["id"] for c in read_catalog(root / "dataset.json")] == ["BRATS_000"]
    assert read_catalog(root, split="test")[0]["id"] == "BRATS_100"
    with pytest.raises(ArgumentError):
        read_case_table(["a.nii.gz"])
    with pytest.raises(ReadError):
        read_catalog(tmp_path / "missing")
    with pytest.raises(FormatError, match=r"neither a dataset\.json nor sub-"):
        read_catalog(tmp_path / "store")


def test_prepare_and_cli_read_a_dataset_folder_directly(tmp_path, capsys):
    """prepare (and `medstack prepare`) take a Decathlon / nnU-Net folder, its dataset.json, or a BIDS folder."""
    import json as _json

    from medstack import cli
    from medstack.data import prepare

    root = _nnunet(tmp_path / "ds")
    for source in (root, root / "dataset.json"):
        out = tmp_path / f"store_{source.name}"
        manifest = prepare(source, out, workers=1)
        ids = sorted(e["id"] for e in _json.loads(manifest.read_text())["cases"])
        assert ids == ["liver_0", "liver_1", "liver_2"]
    assert cli.main(["prepare", str(_bids(tmp_path / "bids")), str(tmp_path / "cli_store"), "--workers", "1"]) == 0
    assert (tmp_path / "cli_store" / "manifest.json").exists()
