"""`medstack convert / info / preview` through the real entry point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack.convert import ConvertOptions, convert, sidecar_path
from medstack.testing import axis_code_affine, phantom, write_dicom_series
from tests.test_dicom_qa import QA

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "medstack.cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip


def outputs(folder, ext=".nii.gz"):
    return sorted(p for p in Path(folder).rglob(f"*{ext}") if not any(part.startswith(".") for part in p.parts[-2:]))


def test_info_folder_table_and_json():
    r = cli("info", SAMPLES / "dicom")
    assert r.returncode == 0, r.stderr
    assert "2 series" in r.stdout and "CT PHANTOM" in r.stdout and "(1, 64, 128, 128)" in r.stdout
    data = json.loads(cli("info", SAMPLES / "dicom", "--json").stdout)
    assert [d["shape"] for d in data] == [[1, 3, 128, 128], [1, 64, 128, 128]]
    assert data[0]["is_localizer"] is True


@pytest.mark.parametrize("fmt", ["nii.gz", "h5"])
def test_convert_samples_equals_load(tmp_path, fmt):
    r = cli("convert", SAMPLES / "dicom", tmp_path, "--format", fmt, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "converted 2, skipped 0" in r.stdout
    ext = "." + fmt
    outs = outputs(tmp_path, ext)
    assert len(outs) == 2
    ct_out = next(p for p in outs if "CT_PHANTOM" in p.name)
    src = medstack.load(SAMPLES / "dicom", series=2)
    out = medstack.load(ct_out)
    np.testing.assert_array_equal(out.to_numpy(), src.data)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    side = json.loads(sidecar_path(ct_out).read_text())
    assert side["complete"] is True and side["source"]["n_files"] == 64
    assert side["geometry"]["shape"] == [1, 64, 128, 128] and side["medstack_version"] == medstack.__version__
    text = sidecar_path(ct_out).read_text()
    assert "MEDSTACK^PHANTOM" not in text and "patient" not in text.lower()  # no PHI by default


def test_keep_phi_and_name_template(tmp_path):
    r = cli("convert", SAMPLES / "dicom", tmp_path, "--name", "{patient}/{series_number}_{modality}", "--keep-phi",
            "--series", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "MEDSTACK_PHANTOM" / "2_CT.nii.gz"
    assert out.exists()
    assert json.loads(sidecar_path(out).read_text())["phi"]["patient_id"] == "MEDSTACK^PHANTOM"
    hidden = tmp_path / "hidden"
    cli("convert", SAMPLES / "dicom", hidden, "--name", "{patient}/{series_number}", "--series", "2")
    (folder,) = [p for p in hidden.iterdir() if p.is_dir()]
    assert folder.name.startswith("p") and "PHANTOM" not in folder.name


@pytest.mark.skipif(not QA.exists(), reason="../shared/dicom-qa not present")
def test_convert_real_series_matches_dcm2niix_geometry(tmp_path):
    r = cli("convert", QA / "siemens/t1_sag_hfs", tmp_path / "t1.nii.gz", "--orient", "RAS")
    assert r.returncode == 0, r.stderr
    ours = medstack.load(tmp_path / "t1.nii.gz")
    ref = medstack.load(next((QA / "reference/siemens/t1_sag_hfs").glob("*.nii")))
    ref = ref.reoriented("RAS")
    assert ours.orientation == "RAS" and ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.data, ref.data)


def make_archive(root, n=3, slices=16, gap_in=None):
    """n CT series under root/patient/series_k; series ``gap_in`` misses a slice (fails by default)."""
    for k in range(n):
        vol = phantom((slices, 48, 48), axis_code_affine("LPS", (1.5, 1.5, 2.5)), seed=k, kind="ct")
        files = write_dicom_series(vol, root / f"series_{k}", series_number=k + 1,
                                   series_description=f"s{k}", seed=k)  # fmt: skip
        if k == gap_in:
            files[slices // 2].unlink()
    return root


def test_batch_with_a_bad_series_converts_the_rest_and_fails(tmp_path):
    src = make_archive(tmp_path / "in", n=3, gap_in=1)
    r = cli("convert", src, tmp_path / "out", "--workers", "2")
    assert r.returncode == 1
    assert "converted 2" in r.stdout and "failed 1" in r.stdout
    assert "slice step jumps" in r.stderr and "Traceback" not in r.stderr
    assert len(outputs(tmp_path / "out")) == 2
    r2 = cli("convert", src, tmp_path / "out", "--on-gap", "resample")
    # re-run with a policy for the gap: the two good series are skipped, the bad one converts
    assert r2.returncode == 0 and "converted 1, skipped 2" in r2.stdout, r2.stdout + r2.stderr


def test_rerun_skips_and_overwrite_rules(tmp_path):
    src = make_archive(tmp_path / "in", n=2)
    out = tmp_path / "out"
    assert cli("convert", src, out).returncode == 0
    first = {p: p.stat().st_mtime_ns for p in outputs(out)}
    r = cli("convert", src, out)
    assert r.returncode == 0 and "converted 0, skipped 2" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in outputs(out)} == first
    # a file that is not ours at an output path is never replaced without --overwrite
    victim = outputs(out)[0]
    sidecar_path(victim).unlink()
    victim.write_bytes(b"precious")
    r = cli("convert", src, out)
    assert r.returncode == 1 and "pass --overwrite" in r.stderr and victim.read_bytes() == b"precious"
    r = cli("convert", src, out, "--overwrite")
    assert r.returncode == 0 and medstack.load(victim).shape == (1, 16, 48, 48)


def test_sigkill_mid_batch_leaves_no_partial_output_and_rerun_completes(tmp_path):
    src = make_archive(tmp_path / "in", n=8, slices=40)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "medstack.cli", "convert", str(src), str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.json"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = outputs(out)
    assert 0 < len(done) < 8, "kill should land mid-batch"
    for p in done:  # every visible output is complete and loadable
        assert medstack.load(p).shape == (1, 40, 48, 48)
    r = cli("convert", src, out)
    assert r.returncode == 0, r.stderr
    assert len(outputs(out)) == 8
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    for p in outputs(out):
        assert json.loads(sidecar_path(p).read_text())["complete"] is True
    assert "converted 0, skipped 8" in cli("convert", src, out).stdout


def test_name_collision_is_reported(tmp_path):
    src = make_archive(tmp_path / "in", n=2)
    r = cli("convert", src, tmp_path / "out", "--name", "{modality}")
    assert r.returncode == 1 and "output name collision" in r.stderr
    assert not outputs(tmp_path / "out")


def test_dry_run_writes_nothing(tmp_path):
    src = make_archive(tmp_path / "in", n=2)
    r = cli("convert", src, tmp_path / "out", "--dry-run")
    assert r.returncode == 0 and "2 output(s) planned" in r.stdout and "new" in r.stdout
    assert not (tmp_path / "out").exists() or not outputs(tmp_path / "out")


@pytest.mark.parametrize(
    "args, match",
    [
        (["{tmp}/missing", "{tmp}/out"], "no such file or folder"),
        (["{samples}/dicom", "{tmp}/out.png"], "does not write .png"),
        (["{samples}/dicom", "{tmp}/one.nii.gz"], "give an output folder"),
    ],
)
def test_bad_input_one_clear_line(tmp_path, args, match):
    r = cli("convert", *[a.format(tmp=tmp_path, samples=SAMPLES) for a in args])
    assert r.returncode == 1, r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and match in r.stderr and "Traceback" not in r.stderr


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("convert", SAMPLES / "dicom", blocker / "sub", "--workers", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot create output folder" in r.stderr or "Not a directory" in r.stderr


def test_disk_full_fails_cleanly(tmp_path, monkeypatch):
    import errno

    import medstack.io.nifti as nifti

    def full(f, head, pad, arr):
        f.write(head)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nifti, "_write_payload", full)
    summary = convert([SAMPLES / "dicom"], tmp_path, ConvertOptions(), workers=1)
    assert len(summary.failed) == 2 and all("No space left" in r.message for r in summary.failed)
    assert not list(tmp_path.rglob("*.nii.gz")) and not list(tmp_path.rglob("*.partial"))


def test_dask_local_cluster_same_outputs(tmp_path):
    distributed = pytest.importorskip("distributed")
    import warnings

    src = make_archive(tmp_path / "in", n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
            summary = convert([src], tmp_path / "dask", ConvertOptions(), dask_address=c.scheduler_address)
    assert summary.count("converted") == 3 and not summary.failed
    convert([src], tmp_path / "local", ConvertOptions(), workers=1)
    for a, b in zip(outputs(tmp_path / "dask"), outputs(tmp_path / "local")):
        assert a.name == b.name
        np.testing.assert_array_equal(medstack.load(a).data, medstack.load(b).data)
    again = convert([src], tmp_path / "dask", ConvertOptions(), workers=1)
    assert again.count("skipped") == 3


def test_preview_png(tmp_path):
    r = cli("preview", SAMPLES / "dicom", "-o", tmp_path / "ct.png", "--series", "2", "--window", "soft_tissue")
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(tmp_path / "ct.png") as img:
        assert img.size[0] > 600
    r = cli("preview", SAMPLES / "nifti/mr_t1.nii.gz", "-o", tmp_path / "mr.png", "--label",
            SAMPLES / "nifti/mr_label.nii.gz", "--at", "0,0,0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli("preview", SAMPLES / "nifti/mr_t1.nii.gz", "-o", tmp_path / "mr.png")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = cli("preview", SAMPLES / "nifti/mr_t1.nii.gz", "-o", tmp_path / "x.png", "--window", "nonsense")
    assert r.returncode == 1 and "preset" in r.stderr
