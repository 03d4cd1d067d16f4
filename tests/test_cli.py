import json
import os
import subprocess
import sys

import numpy as np
import pytest

import medstack
from medstack.testing import axis_code_affine, world_volume


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medstack.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


@pytest.fixture
def nii(tmp_path):
    vol = world_volume((4, 5, 6), axis_code_affine("LPS", (0.7, 0.8, 2.5), (1, 2, 3)), n_channels=1)
    path = tmp_path / "v.nii.gz"
    medstack.save(vol, path)
    return path


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"medstack {medstack.__version__}"


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "medstack")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "info" in r.stdout


def test_info_prints_geometry(nii):
    r = run_cli("info", nii)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "(1, 4, 5, 6)" in out and "(2.5, 0.8, 0.7) mm" in out and "LPS" in out and "int16" not in out
    assert "float32" in out and "affine" in out and "-0.70000" in out


def test_info_json(nii):
    r = run_cli("info", nii, "--json")
    info = json.loads(r.stdout)
    assert info["shape"] == [1, 4, 5, 6]
    assert info["orientation"] == "LPS"
    np.testing.assert_allclose(info["spacing_dhw_mm"], [2.5, 0.8, 0.7])
    assert info["value_range"][0] <= info["value_range"][1]
    np.testing.assert_allclose(np.array(info["affine"]), medstack.load(nii).affine)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "unrecognised file format"),
        (lambda p: (p / "t.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 20) and p / "t.nii.gz", "t.nii.gz"),
    ],
)
def test_bad_input_one_line_nonzero_exit(tmp_path, make, match):
    r = run_cli("info", make(tmp_path))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medstack: error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_no_command_shows_help():
    r = run_cli()
    assert r.returncode == 1 and "usage" in r.stdout
