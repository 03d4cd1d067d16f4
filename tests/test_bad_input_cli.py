"""Bad input through the CLI: never a silently wrong volume, lost data, a PHI leak, a traceback or a runaway allocation."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack import cli
from medstack.convert import SECRET_NAME
from medstack.testing import axis_code_affine, phantom, write_dicom_series

# optional packages: the module still collects (and skips) on machines without them
nib = pytest.importorskip("nibabel")

PATIENT = "DOE^JANE123"
STUDY_DATE = "20240101"  # written by write_dicom_series
NEEDLES = (b"DOE", b"JANE123", STUDY_DATE.encode())


def run(capsys, *args):
    """cli.main in-process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("medstack: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def dicom(root: Path, *, description="ct", patient_id=PATIENT, series_number=1, slices=6, gap=False) -> Path:
    vol = phantom((slices, 16, 16), axis_code_affine("LPS", (1.5, 1.5, 2.5)), seed=series_number, kind="ct")
    files = write_dicom_series(vol, root, series_number=series_number, series_description=description,
                               patient_id=patient_id, seed=series_number)  # fmt: skip
    if gap:
        files[slices // 2].unlink()
    return root


@pytest.fixture
def archive(tmp_path):
    """A DICOM series in a folder named after the patient (as many archives are)."""
    dicom(tmp_path / "in" / PATIENT / "ct")
    return tmp_path / "in"


def all_bytes(folder: Path):
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != SECRET_NAME:
            data = p.read_bytes()
            yield p, gzip.decompress(data) if p.name.endswith(".gz") else data


# -- PHI ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["h5", "nii.gz", "nii", "nrrd", "mha"])
def test_no_phi_in_any_output(capsys, tmp_path, archive, fmt):
    out = tmp_path / "out"
    code, so, se = run(capsys, "convert", archive, out, "--format", fmt, "--workers", 1,
                       "--name", "{patient}/{study_date}_{series_number}")  # fmt: skip
    assert code == 0, se
    files = list(all_bytes(out))
    assert len(files) == 2  # volume + sidecar
    for p, data in files:
        assert all(n not in p.relative_to(out).as_posix().encode() for n in NEEDLES), p
        assert all(n not in data for n in NEEDLES), p
    assert all(n.decode() not in so + se for n in NEEDLES)
    side = json.loads(next(p for p in out.rglob("*.json")).read_text())
    assert "phi" not in side and "files" not in side["source"] and "input" not in side["source"]
    if fmt == "h5":
        import h5py

        with h5py.File(next(out.rglob("*.h5"))) as f:
            for g in f["volumes"].values():
                meta = json.loads(g.attrs["metadata"])
                assert not {"patient_id", "study_date", "files", "source"} & set(meta)
    # the metadata the API hands back still has them: only outputs are filtered
    assert medstack.load(archive / PATIENT / "ct").metadata["patient_id"] == PATIENT


def test_keep_phi_keeps_them(capsys, tmp_path, archive):
    code, _, se = run(capsys, "convert", archive, tmp_path / "out", "--keep-phi", "--name", "{patient}", "--workers", 1)
    assert code == 0, se
    side = json.loads((tmp_path / "out" / "DOE_JANE123.json").read_text())
    assert side["phi"]["patient_id"] == PATIENT


def _patient_folder(out: Path) -> str:
    (folder,) = [p.name for p in out.iterdir() if p.is_dir()]
    return folder


def test_pseudonyms_are_keyed_stable_and_long(capsys, tmp_path, archive, monkeypatch):
    import hashlib

    monkeypatch.delenv("MEDSTACK_PSEUDONYM_KEY", raising=False)
    names = {}
    for run_name, extra in [("a1", ["--pseudonym-key", "secret-one"]), ("a2", ["--pseudonym-key", "secret-one"]),
                            ("b", ["--pseudonym-key", "secret-two"]), ("auto", [])]:  # fmt: skip
        code, so, se = run(capsys, "convert", archive, tmp_path / run_name, "--name", "{patient}/{index}",
                           "--workers", 1, *extra)  # fmt: skip
        assert code == 0, se
        names[run_name] = _patient_folder(tmp_path / run_name)
    assert names["a1"] == names["a2"] != names["b"]
    assert len(names["a1"]) == 17 and names["a1"].startswith("p")  # 'p' + 16 hex
    assert hashlib.sha256(PATIENT.encode()).hexdigest()[:8] not in names.values()  # not the unkeyed hash
    secret = tmp_path / "auto" / SECRET_NAME
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    # the archive's secret is reused: a second run into the same folder gives the same pseudonym
    run(capsys, "convert", dicom(tmp_path / "in2", series_number=2), tmp_path / "auto", "--name", "{patient}/{index}",
        "--workers", 1)  # fmt: skip
    assert _patient_folder(tmp_path / "auto") == names["auto"]
    assert secret.read_text().strip() not in "".join(capsys.readouterr())
    monkeypatch.setenv("MEDSTACK_PSEUDONYM_KEY", "secret-two")
    assert run(capsys, "convert", archive, tmp_path / "env", "--name", "{patient}", "--workers", 1)[0] == 0
    assert (tmp_path / "env" / (names["b"] + ".nii.gz")).exists() and not (tmp_path / "env" / SECRET_NAME).exists()


# -- data loss -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"precious notes, not JSON", b'{"my": "own json"}', b"[1, 2]"])
def test_foreign_file_at_sidecar_path_survives_overwrite(capsys, tmp_path, archive, content):
    out = tmp_path / "out"
    foreign = out / "ct.json"
    out.mkdir()
    foreign.write_bytes(content)
    for extra in ([], ["--overwrite"]):
        code, _, se = run(capsys, "convert", archive, out, "--name", "{description}", "--workers", 1, *extra)
        assert code == 1 and "not a medstack sidecar" in se and "Traceback" not in se
        assert foreign.read_bytes() == content and not (out / "ct.nii.gz").exists()
    code, so, se = run(capsys, "convert", archive, out, "--name", "{description}", "--dry-run")
    assert code == 1 and "foreign" in so and foreign.read_bytes() == content


def test_own_sidecar_is_replaced_with_overwrite(capsys, tmp_path, archive):
    out = tmp_path / "out"
    assert run(capsys, "convert", archive, out, "--name", "{description}", "--workers", 1)[0] == 0
    assert run(capsys, "convert", archive, out, "--name", "{description}", "--workers", 1, "--overwrite")[0] == 0
    assert json.loads((out / "ct.json").read_text())["complete"] is True


def test_output_never_replaces_its_input(capsys, tmp_path):
    src = tmp_path / "img.nii.gz"
    medstack.save(phantom((4, 8, 8), seed=1, kind="mr"), src)
    before = src.read_bytes()
    code, _, se = run(capsys, "convert", src, tmp_path, "--overwrite", "--workers", 1)
    assert code == 1 and "is an input file" in se and src.read_bytes() == before


@pytest.mark.parametrize(
    "template",
    ["{description.foo}", "{nonexistent}", "{0}", "{}", "{description[0]}", "{description!r}", "../{index}",
     "/abs/{index}", "a//{index}", "a/./{index}", "x/../../{index}", "{index:99999999}", "{index:{index}}",
     "x\x1b[2J{index}", "", "   ", "{index"],
)  # fmt: skip
def test_bad_name_template_is_a_usage_error(capsys, tmp_path, archive, template):
    code, so, se = run(capsys, "convert", archive, tmp_path / "out", "--name", template)
    line = one_error_line(se)
    assert code == 2 and "bad name template" in line and "\x1b" not in se
    assert not (tmp_path / "out").exists()
    if "." in template and "{" in template and template.startswith("{d"):
        assert "{patient}" in line and "{series_number}" in line  # lists the allowed fields


def test_field_values_cannot_make_folders_or_escape(capsys, tmp_path):
    src = dicom(tmp_path / "in", description="../../../escape/..\\x")
    out = tmp_path / "deep" / "out"
    code, _, se = run(capsys, "convert", src, out, "--name", "{description}/{series_number}", "--workers", 1)
    assert code == 0, se
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "in" not in p.relative_to(tmp_path).parts[:1]]
    assert written and all(out in p.parents for p in written)
    assert all(".." not in p.relative_to(out).parts for p in written)
    assert len([p for p in out.iterdir() if p.is_dir()]) == 1  # one folder from the template, none from the value


# -- errors: one line, exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--dtype", "foo"], "--dtype"),
        (["--dtype", "complex64"], "--dtype"),
        (["--dtype", "U8"], "--dtype"),
        (["--spacing", "0"], "--spacing"),
        (["--spacing", "0.001"], "--spacing"),
        (["--spacing", "-1"], "--spacing"),
        (["--spacing", "nan"], "--spacing"),
        (["--spacing", "inf,1,1"], "--spacing"),
        (["--spacing", "1,2"], "--spacing"),
        (["--spacing", "a"], "--spacing"),
        (["--orient", "XYZ"], "--orient"),
        (["--orient", "RRS"], "--orient"),
        (["--workers", "0"], "--workers"),
        (["--workers", "many"], "--workers"),
        (["--format", "png"], "--format"),
        (["--pseudonym-key", "short", "--name", "{patient}"], "pseudonym"),
    ],
)
def test_bad_options_one_line_usage_exit(capsys, tmp_path, archive, extra, match):
    code, so, se = run(capsys, "convert", archive, tmp_path / "out", *extra)
    assert code == 2, se
    assert match in one_error_line(se)
    assert not (tmp_path / "out").exists()


def test_spacing_voxel_limit_is_checked_before_allocating(capsys, tmp_path, archive, monkeypatch):
    monkeypatch.setenv("MEDSTACK_MAX_VOXELS", "100000")
    code, _, se = run(capsys, "convert", archive, tmp_path / "out", "--spacing", "0.1", "--workers", 1)
    assert code == 2 and "--spacing" in one_error_line(se) and "voxels" in se
    # a volume file: refused per task after reading its header, before resampling
    src = tmp_path / "v.nii.gz"
    medstack.save(phantom((4, 8, 8), seed=1, kind="mr"), src)
    code, _, se = run(capsys, "convert", src, tmp_path / "out2", "--spacing", "0.1", "--workers", 1)
    assert code == 1 and "--spacing" in se and "voxels" in se and "Traceback" not in se
    assert not list((tmp_path / "out2").rglob("*.nii.gz"))


def test_dtype_that_cannot_hold_the_values_is_refused(capsys, tmp_path):
    src = tmp_path / "v.nii.gz"
    vol = phantom((4, 8, 8), seed=1, kind="mr")
    medstack.save(vol.replace(data=vol.to_numpy() * 1000 + 300), src)
    code, _, se = run(capsys, "convert", src, tmp_path / "out", "--dtype", "int8", "--workers", 1)
    assert code == 1 and "do not fit int8" in se and not list((tmp_path / "out").rglob("*.nii.gz"))
    code, _, se = run(capsys, "convert", src, tmp_path / "out", "--dtype", "float64", "--workers", 1)
    assert code == 0, se


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        OverflowError("cannot fit 'int' into an index-sized integer"),
        KeyError("PixelSpacing"),
        ZeroDivisionError("division by zero"),
        TypeError("unsupported operand type(s)\nsecond line"),
        json.JSONDecodeError("Expecting value", "{", 1),
        PermissionError(13, "Permission denied", "/x/y.nii"),
        nib.spatialimages.HeaderDataError("bad header"),
        RecursionError("maximum recursion depth exceeded"),
        RuntimeError("boom \x1b]0;title\x07"),
    ],
)
def test_unexpected_exceptions_become_one_line(capsys, monkeypatch, tmp_path, exc):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(medstack, "load", boom)
    path = tmp_path / "v.nii.gz"
    path.write_bytes(b"x")
    code, so, se = run(capsys, "info", path)
    assert code == 1
    line = one_error_line(se)
    assert type(exc).__name__ in line and "\x1b" not in se and "\x07" not in se
    assert len(se.strip().splitlines()) == 1


def test_numpy_ufunc_error_one_line(capsys, tmp_path, monkeypatch):
    def boom(*a, **k):
        np.add(np.array(["a"]), np.array([1.0]))

    monkeypatch.setattr(medstack, "load", boom)
    code, _, se = run(capsys, "preview", tmp_path / "x.nii.gz", "-o", tmp_path / "p.png")
    assert code == 1 and "UFunc" in one_error_line(se)


def test_unexpected_error_in_a_task_fails_that_task_only(capsys, tmp_path, monkeypatch):
    import medstack.convert as conv

    dicom(tmp_path / "in" / "a", series_number=1)
    dicom(tmp_path / "in" / "b", series_number=2)
    real = conv._load

    def flaky(task, options):
        if task.payload.series_number == 2:
            raise ZeroDivisionError("float division by zero")
        return real(task, options)

    monkeypatch.setattr(conv, "_load", flaky)
    code, so, se = run(capsys, "convert", tmp_path / "in", tmp_path / "out", "--workers", 1)
    assert code == 1 and "converted 1" in so and "failed 1" in so
    assert "ZeroDivisionError" in se and "Traceback" not in se


def test_info_rgb_nifti_no_traceback(capsys, tmp_path):
    rgb = np.zeros((4, 5, 6), dtype=np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))
    rgb["G"] = 7
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    code, so, se = run(capsys, "info", tmp_path / "rgb.nii.gz")
    assert "Traceback" not in se
    if code == 0:  # read as 3 channels
        assert "(3, 6, 5, 4)" in so and "[0, 7]" in so
    else:
        assert code == 1 and one_error_line(se)


def test_prepare_into_unwritable_folder(capsys, tmp_path, monkeypatch):
    import medstack.data as data

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "store.h5"))

    monkeypatch.setattr(data, "prepare", denied)
    (tmp_path / "m.csv").write_text("id,image\n")
    code, _, se = run(capsys, "prepare", tmp_path / "m.csv", tmp_path / "ro")
    assert code == 1 and "PermissionError" in one_error_line(se) and "ro" in se


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_prepare_into_read_only_folder_real(capsys, tmp_path):
    src = tmp_path / "v.nii.gz"
    medstack.save(phantom((4, 8, 8), seed=1, kind="mr"), src)
    (tmp_path / "m.csv").write_text(f"id,image\nc1,{src}\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, se = run(capsys, "prepare", tmp_path / "m.csv", ro, "--workers", 1)
    finally:
        ro.chmod(0o700)
    assert code == 1 and one_error_line(se)


# -- nothing to do is an error --------------------------------------------------------------------------------


def test_input_without_images_is_an_error(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no dicom here")
    (empty / "junk.dcm").write_bytes(b"\0" * 300)
    code, so, se = run(capsys, "convert", empty, tmp_path / "out")
    assert code == 1 and "nothing to convert" in one_error_line(se) and "converted 0" not in so
    code, so, se = run(capsys, "convert", empty, tmp_path / "out", "--dry-run")
    assert code == 1


def test_series_selection_matching_nothing_is_an_error(capsys, tmp_path, archive):
    code, so, se = run(capsys, "convert", archive, tmp_path / "out", "--series", "99")
    assert code == 1 and "matched none" in one_error_line(se)


def test_every_task_failing_is_an_error_with_summary(capsys, tmp_path):
    src = dicom(tmp_path / "in", slices=8, gap=True)
    code, so, se = run(capsys, "convert", src, tmp_path / "out", "--workers", 1)
    assert code == 1 and "converted 0" in so and "failed 1" in so and "slice step" in se


# -- warnings are printed; text from files is escaped ------------------------------------------------------


def test_findings_printed_once_per_series_and_kind(capsys, tmp_path):
    dicom(tmp_path / "in" / "a", slices=10, gap=True, series_number=1, description="gappy")
    code, so, se = run(capsys, "convert", tmp_path / "in", tmp_path / "out", "--on-gap", "warn", "--workers", 1)
    assert code == 0, se
    lines = [ln for ln in se.splitlines() if "warning" in ln and "gap" in ln]
    assert len(lines) == 1 and "gappy" in lines[0], se
    assert "with warnings" in so
    code, so, se = run(capsys, "info", tmp_path / "in")
    assert code == 0 and "slice step jumps" in so


def test_control_characters_from_files_are_escaped(capsys, tmp_path):
    evil = "ev\x1b[31mil\x07\x1b]0;pwned\x07\x9b2J"
    src = dicom(tmp_path / "in", description=evil)
    for args in (["info", src], ["convert", src, tmp_path / "out", "--workers", 1, "--name", "{index}"],
                 ["convert", src, tmp_path / "out", "--dry-run", "--name", "{index}"]):  # fmt: skip
        code, so, se = run(capsys, *args)
        assert code == 0, se
        text = so + se
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    code, so, _ = run(capsys, "info", src)
    assert "\\x1b[31m" in so


def test_subprocess_one_line_errors(tmp_path):
    def cli_run(*args):
        return subprocess.run([sys.executable, "-m", "medstack.cli", *map(str, args)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip

    r = cli_run("convert", tmp_path, tmp_path / "out", "--dtype", "foo")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--dtype" in r.stderr and "Traceback" not in r.stderr
    r = cli_run("convert", tmp_path, tmp_path / "out", "--no-such-option")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("medstack: error:")
    empty = tmp_path / "e"
    empty.mkdir()
    r = cli_run("convert", empty, tmp_path / "out")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "nothing to convert" in r.stderr


def test_printed_findings_and_failures_carry_no_patient_values(capsys, tmp_path, archive, monkeypatch):
    import warnings

    import medstack.convert as conv
    from medstack.io.dicom import DicomWarning

    real = conv._load

    def noisy(task, options):
        first = task.payload.files[0]
        warnings.warn(f"{first}: slice dropped (patient {PATIENT})", DicomWarning, stacklevel=1)
        return real(task, options)

    monkeypatch.setattr(conv, "_load", noisy)
    code, so, se = run(capsys, "convert", archive.resolve(), tmp_path / "out", "--workers", 1)
    assert code == 0 and "slice dropped" in se and "[redacted]" in se
    assert "JANE123" not in so + se

    def failing(task, options):
        raise OSError(f"{task.payload.files[0]}: read failed")

    monkeypatch.setattr(conv, "_load", failing)
    code, so, se = run(capsys, "convert", archive.resolve(), tmp_path / "out2", "--workers", 1)
    assert code == 1 and "read failed" in se and "JANE123" not in so + se


def test_unreadable_input_list_is_one_line(capsys, tmp_path):
    lst = tmp_path / "inputs.txt"
    lst.write_bytes(b"\xff\xfe\x00bad\x00")
    code, _, se = run(capsys, "convert", lst, tmp_path / "out")
    assert code == 1 and "inputs.txt" in one_error_line(se)


def test_output_file_name_must_match_format(capsys, tmp_path, archive):
    code, _, se = run(capsys, "convert", archive, tmp_path / "one.nii.gz", "--format", "h5")
    assert code == 2 and "--format h5" in one_error_line(se) and not (tmp_path / "one.nii.gz").exists()
    code, _, se = run(capsys, "convert", archive, tmp_path / "one.h5", "--workers", 1)
    assert code == 0, se
    assert medstack.load(tmp_path / "one.h5").shape == (1, 6, 16, 16)


def test_prepare_into_unusable_folder_real(capsys, tmp_path):
    src = tmp_path / "v.nii.gz"
    medstack.save(phantom((4, 8, 8), seed=1, kind="mr"), src)
    (tmp_path / "m.csv").write_text(f"id,image\nc1,{src}\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, se = run(capsys, "prepare", tmp_path / "m.csv", blocker / "sub", "--workers", 1)
    assert code == 1 and one_error_line(se) and len(se.strip().splitlines()) == 1


def test_truncated_slice_fails_the_series_unless_dropped_and_the_drop_is_printed(capsys, tmp_path):
    src = dicom(tmp_path / "in")
    files = sorted(src.rglob("*.dcm"))
    files[-1].write_bytes(files[-1].read_bytes()[:-50])
    code, out, err = run(capsys, "convert", src, tmp_path / "out")
    assert code == 1 and "on_unreadable" in out + err and "Traceback" not in out + err
    assert not list((tmp_path / "out").rglob("*.nii.gz"))  # never the shorter volume, silently
    code, out, err = run(capsys, "convert", src, tmp_path / "out2", "--on-unreadable", "drop")
    assert code == 0 and "unreadable" in out + err
    (nii,) = list((tmp_path / "out2").rglob("*.nii.gz"))
    assert medstack.load(nii).shape[1] == len(files) - 1


def test_info_on_a_folder_of_volume_files_says_to_pass_a_file(capsys, tmp_path):
    medstack.save(phantom((4, 8, 8)), tmp_path / "a.nii.gz")
    code, out, err = run(capsys, "info", tmp_path)
    assert code == 1 and "pass a file" in err and "a.nii.gz" in err and "Traceback" not in out + err
    with pytest.raises(medstack.DicomError, match=r"volume file\(s\) \(e\.g\. a\.nii\.gz\)"):
        medstack.io.dicom.load(tmp_path)
