"""A researcher's first hour: whole, actionable CLI messages in CLI words; `info` on .h5 files and DICOM folders;
a set-up that says what it installs and lets one choose the torch build."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack import cli
from medstack.io import store
from medstack.testing import axis_code_affine, world_volume, write_dicom_series

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def run(capsys, *args):
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse (--help, usage errors)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_series(tmp_path):
    """One folder holding two CT series (#1 'T1', #2 'T2')."""
    folder = tmp_path / "two"
    data = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
    write_dicom_series(data, folder / "a", affine=np.eye(4), series_number=1, series_description="T1")
    write_dicom_series(data, folder / "b", affine=np.eye(4), series_number=2, series_description="T2")
    return folder


# -- point 6: whole messages in CLI words -----------------------------------------------------------------------


def test_info_bad_series_lists_every_candidate(capsys, two_series):
    code, out, err = run(capsys, "info", two_series, "--series", 9)
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("medstack: error:")]) == 1
    assert "--series" in lines[0] and "series=" not in err
    candidates = [ln for ln in lines[1:] if ln.startswith("  #")]
    assert len(candidates) == 2 and "'T1'" in candidates[0] and "'T2'" in candidates[1]


def test_info_series_shows_that_series(capsys, two_series):
    code, out, err = run(capsys, "info", two_series, "--series", 2, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["shape"] == [1, 4, 8, 8] and Path(info["source"]).name == "b"


def test_info_series_on_a_file_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "v.nii.gz"
    medstack.save(world_volume((4, 5, 6), axis_code_affine("RAS", (1, 1, 1), (0, 0, 0))), path)
    code, _, err = run(capsys, "info", path, "--series", 2)
    assert code == 2 and "--series" in err and err.count("\n") == 1


def test_preview_without_series_lists_candidates(capsys, two_series, tmp_path):
    code, _, err = run(capsys, "preview", two_series, "-o", tmp_path / "p.png")
    assert code == 1
    assert "pass --series" in err and "series=" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("  #")]) == 2


def test_convert_two_series_to_one_file_names_them_and_series(capsys, two_series, tmp_path):
    code, _, err = run(capsys, "convert", two_series, tmp_path / "out.nii.gz", "--workers", 1)
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one line (as before), now with the candidates and the option
    assert "#1 T1" in err and "#2 T2" in err and "--series" in err and "give an output folder" in err
    assert not (tmp_path / "out.nii.gz").exists()
    code, _, err = run(capsys, "convert", two_series, tmp_path / "out.nii.gz", "--series", 2, "--workers", 1)
    assert code == 0, err
    assert medstack.load(tmp_path / "out.nii.gz").shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    "api, want",
    [
        ("x: 2 candidate series; pass series= (UID, SeriesNumber or description):", "pass --series (UID"),
        ("x: no series matches series=9; found:", "matches --series 9;"),
        ("gap of 5 mm; pass on_gap='resample', 'warn' or 'split'", "pass --on-gap resample, warn or split"),
        ("3 unreadable files; pass on_unreadable='drop' to load without them", "pass --on-unreadable drop"),
        ("series 1.2: tilted colour series are not resampled; pass tilt='shear'", "pass --tilt shear"),
        ("no channel matches echo=2 image_type=None; channels: e1", "medstack.load(..., echo=)"),
    ],
)
def test_cli_words(api, want):
    text = cli.cli_words(api)
    assert want in text
    assert not re.search(r"(?<![\w.(])(series|on_gap|on_unreadable|tilt)=", text)


def test_cli_words_leaves_paths_alone():
    assert cli.cli_words("/data/series=3/ct.nii.gz: no such file") == "/data/series=3/ct.nii.gz: no such file"


def test_multiline_error_keeps_every_line_escaped(capsys, monkeypatch, tmp_path):
    def boom(*a, **k):
        raise medstack.DicomError("x: 2 candidate series; pass series= (UID):\n  #1 'a\x1b[31m'\n  #2 'b'")

    monkeypatch.setattr(medstack, "load", boom)
    path = tmp_path / "v.nii.gz"
    path.write_bytes(b"x")
    code, _, err = run(capsys, "info", path)
    assert code == 1 and "\x1b" not in err and "\\x1b" in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("medstack: error: DicomError: x: 2 candidate series; pass --series (UID):")
    assert lines[1:] == ["  #1 'a\\x1b[31m'", "  #2 'b'"]


def test_info_help_names_dicom_folders_and_h5(capsys):
    code, out, _ = run(capsys, "info", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "DICOM folder" in text and ".h5" in text and "volume file" in text
    code, out, _ = run(capsys, "--help")
    assert "DICOM folder" in " ".join(out.split())


def test_info_h5_with_two_volumes_lists_both(capsys, tmp_path):
    a = world_volume((4, 5, 6), axis_code_affine("LPS", (0.7, 0.8, 2.5), (1, 2, 3)), n_channels=1)
    b = world_volume((3, 5, 7), axis_code_affine("RAS", (1, 1, 2), (0, 0, 0)), n_channels=2)
    path = store.write_h5({"case_a": a, "case_b": b}, tmp_path / "cohort.h5")
    code, out, err = run(capsys, "info", path)
    assert code == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("case_")}
    assert set(rows) == {"case_a", "case_b"}
    assert "(1, 4, 5, 6)" in rows["case_a"] and "(2.5, 0.8, 0.7)" in rows["case_a"] and "LPS" in rows["case_a"]
    assert "(2, 3, 5, 7)" in rows["case_b"] and "(2, 1, 1)" in rows["case_b"]
    assert "2 volumes" in out
    code, out, err = run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert [v["name"] for v in info["volumes"]] == ["case_a", "case_b"]
    assert info["volumes"][1]["shape"] == [2, 3, 5, 7]
    assert all(v["dtype"] for v in info["volumes"])


def test_info_plain_h5_lists_its_datasets(capsys, tmp_path):
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["img"] = np.zeros((3, 4), np.int16)
    code, _, err = run(capsys, "info", tmp_path / "plain.h5")
    assert code == 1 and "not a medstack volume file" in err and "Traceback" not in err
    assert "  /img  shape=(3, 4)  dtype=int16" in err.splitlines()


def test_info_single_volume_h5_is_like_a_nifti(capsys, tmp_path):
    vol = world_volume((4, 5, 6), axis_code_affine("LPS", (0.7, 0.8, 2.5), (1, 2, 3)), n_channels=1)
    medstack.save(vol, tmp_path / "one.h5")
    medstack.save(vol, tmp_path / "one.nii.gz")
    _, out_h5, _ = run(capsys, "info", tmp_path / "one.h5", "--json")
    _, out_nii, _ = run(capsys, "info", tmp_path / "one.nii.gz", "--json")
    h5, nii = json.loads(out_h5), json.loads(out_nii)
    for key in ("shape", "spacing_dhw_mm", "orientation", "dtype"):
        assert h5[key] == nii[key]


# -- point 7: set-up that says what it installs -----------------------------------------------------------------


def _make_n(*args):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    r = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_venv_torch_index():
    out = _make_n("venv", f"TORCH_INDEX={CPU_INDEX}")
    torch_line = next(ln for ln in out.splitlines() if "pip install" in ln and "torch==" in ln)
    assert f"--index-url {CPU_INDEX}" in torch_line
    package_line = next(ln for ln in out.splitlines() if "pip install" in ln and '".[dev]"' in ln)
    assert "--index-url" not in package_line  # only torch comes from the chosen index
    assert "--quiet" not in out


def test_make_venv_default_unchanged():
    out = _make_n("venv")
    torch_line = next(ln for ln in out.splitlines() if "pip install" in ln and "torch==" in ln)
    assert '"torch==2.13.0"' in torch_line and "--index-url" not in torch_line
    assert "--progress-bar on" in torch_line
    assert '"torch==2.12.0"' in _make_n("venv", "TORCH_VERSION=2.12.0")


def test_make_demo_and_test_still_run_their_jobs():
    assert "data_samples/demo.py" in _make_n("demo")
    out = _make_n("test")
    assert "ruff check" in out and "pytest" in out


def test_readme_setup_is_truthful():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "TORCH_INDEX" in setup and CPU_INDEX in setup
    assert "CPU wheel" not in setup  # the old claim: the plain pin gives the CUDA build from PyPI on Linux
    assert "CUDA" in setup
    for dep in ("monai", "nibabel", "pydicom", "SimpleITK", "highdicom", "dev"):
        assert dep in setup, dep


# -- point 4: axis order made explicit ---------------------------------------------------------------------------


def test_convert_spacing_named_xyz_is_monai_order(capsys, tmp_path):
    vol = world_volume((10, 12, 14), axis_code_affine("RAS", (1.0, 1.0, 3.0), (0, 0, 0)))
    src = tmp_path / "in.h5"
    medstack.save(vol, src)
    out = tmp_path / "out.nii.gz"
    code, _, err = run(capsys, "convert", src, out, "--spacing", "x=1.5,y=1.5,z=2")
    assert code == 0, err
    assert medstack.load(out).spacing == pytest.approx((2.0, 1.5, 1.5))
    out2 = tmp_path / "out2.nii.gz"
    code, _, err = run(capsys, "convert", src, out2, "--spacing", "D=2, H=1.5, W=1.5")
    assert code == 0, err
    assert medstack.load(out2).spacing == pytest.approx((2.0, 1.5, 1.5))


def test_convert_plain_monai_looking_spacing_prints_a_note(capsys, tmp_path):
    vol = world_volume((10, 12, 14), axis_code_affine("RAS", (1.0, 1.0, 3.0), (0, 0, 0)))
    src = tmp_path / "in.h5"
    medstack.save(vol, src)
    code, _, err = run(capsys, "convert", src, tmp_path / "o.nii.gz", "--spacing", "1.5,1.5,2")
    assert code == 0, err
    assert "(D, H, W)" in err and "x=1.5,y=1.5,z=2" in err
    assert medstack.load(tmp_path / "o.nii.gz").spacing == pytest.approx((1.5, 1.5, 2.0))  # read as D, H, W
    code, _, err = run(capsys, "convert", src, tmp_path / "o2.nii.gz", "--spacing", "2,1.5,1.5")
    assert code == 0 and "note" not in err


@pytest.mark.parametrize("bad", ["x=1,h=2,w=3", "d=1,h=2", "1,2", "a,b,c", "x=1,y=2,z=q"])
def test_convert_bad_spacing_is_a_usage_error_naming_the_order(capsys, tmp_path, bad):
    vol = world_volume((4, 5, 6), axis_code_affine("RAS", (1.0, 1.0, 1.0), (0, 0, 0)))
    src = tmp_path / "in.h5"
    medstack.save(vol, src)
    code, _, err = run(capsys, "convert", src, tmp_path / "o.nii.gz", "--spacing", bad)
    assert code == 2 and "Traceback" not in err
    assert "--spacing" in err


@pytest.mark.parametrize("command", ["convert", "prepare"])
def test_spacing_help_states_the_axis_order(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "(D, H, W)" in text and "pixdim" in text and "x=" in text
