"""medstack vs dcm2niix (the field's reference converter) on real scanner DICOM.

../shared/dicom-qa holds real GE, Siemens and Philips series with dcm2niix's NIfTI output in reference/.
For every series medstack finds, the reference with the same SeriesNumber must hold the same voxels at the
same world positions: both are reoriented (pure flips/permutations) to one orientation, then shapes,
affines (within 1e-3 mm) and values are compared.
"""

import glob
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack.io import dicom

QA = Path(__file__).resolve().parents[2] / "shared" / "dicom-qa"
if not QA.exists():  # the checkout's sibling shared/ folder
    QA = Path(__file__).resolve().parents[1] / ".." / "shared" / "dicom-qa"
pytestmark = pytest.mark.skipif(not QA.exists(), reason="../shared/dicom-qa not present")

FOLDERS = [
    "ge/dwi_4d", "ge/epi_rt_4d", "ge/fmri_4d_48sl", "philips/fmri", "siemens/enhanced_epi_sag",
    "siemens/fmri_mosaic_sag", "siemens/gre_fieldmap_sag", "siemens/mosaic_ax", "siemens/mosaic_cor",
    "siemens/mosaic_sag", "siemens/t1_sag_hfs", "transfer_syntax", "bits12",
]  # fmt: skip
EXPECTED_SHAPES = {  # (C, D, H, W) per folder, independent of dcm2niix: what the acquisition is
    "ge/dwi_4d": (7, 2, 256, 256),
    "ge/fmri_4d_48sl": (3, 48, 64, 64),
    "siemens/enhanced_epi_sag": (5, 63, 86, 86),
    "siemens/fmri_mosaic_sag": (6, 36, 64, 64),
    "siemens/t1_sag_hfs": (1, 35, 256, 256),
}


def assert_same_as_reference(vol, ref, *, scale=None):
    ours = vol.reoriented(ref.orientation)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    expected = ref.data.astype(np.float64)
    if scale is not None:
        expected = expected * scale[0] + scale[1]
    np.testing.assert_allclose(ours.data.astype(np.float64), expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("folder", FOLDERS)
def test_matches_dcm2niix(folder):
    series = dicom.scan(QA / folder)
    assert series, folder
    for info in series:
        refs = glob.glob(str(QA / "reference" / folder / f"{info.series_number}_*.nii"))
        assert len(refs) == 1, (info, refs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # real, clean series load without QA warnings
            vol = dicom.load_series(info)
        ref = medstack.load(refs[0])
        scale = None
        if info.manufacturer.upper().startswith("PHILIPS"):
            # documented relation: medstack returns Philips display values DV = RescaleSlope * SV +
            # RescaleIntercept (the DICOM standard); dcm2niix's default is Philips' floating-point value
            # FP = DV / (RescaleSlope * ScaleSlope), ScaleSlope being private tag (2005,100E).
            import pydicom

            ds = pydicom.dcmread(info.files[0], stop_before_pixels=True)
            scale = (float(ds.RescaleSlope) * float(ds[0x2005, 0x100E].value), 0.0)
        assert_same_as_reference(vol, ref, scale=scale)
        assert vol.metadata["series_uid"] == info.series_uid
        assert vol.metadata["n_files"] == info.n_files and len(vol.metadata["files"]) == info.n_files
        if folder in EXPECTED_SHAPES:
            assert vol.shape == EXPECTED_SHAPES[folder]


def test_transfer_syntaxes_all_decode_to_the_same_volume():
    vols = [medstack.load(QA / "transfer_syntax" / f"{n}.dcm") for n in range(1, 10)]
    for v in vols[1:]:
        np.testing.assert_array_equal(v.data, vols[0].data)
        np.testing.assert_allclose(v.affine, vols[0].affine)


def test_dwi_b_values_match_dcm2niix():
    vol = medstack.load(QA / "ge/dwi_4d")
    bval = np.loadtxt(glob.glob(str(QA / "reference/ge/dwi_4d/*.bval"))[0])
    np.testing.assert_allclose(vol.metadata["b_values"], bval)


def test_12bit_signed_and_unsigned_with_garbage_high_bits():
    signed = medstack.load(QA / "bits12/12bitSigned_0x0F0F.dcm")
    unsigned = medstack.load(QA / "bits12/12bitUnsigned_0x0F0F.dcm")
    assert signed.data.min() >= -2048 and signed.data.max() <= 2047 and signed.data.min() < 0
    assert unsigned.data.min() >= 0 and unsigned.data.max() <= 4095


def _pydicom_series_dir():
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"


def _dcm2niix():
    exe = shutil.which("dcm2niix") or os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    return exe if os.path.exists(exe) else None


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix not installed")
@pytest.mark.parametrize("sub", ["98892001/CT5N", "98892003/MR700"])
def test_pydicom_series_against_dcm2niix_run_now(tmp_path, sub):
    src = _pydicom_series_dir() / sub
    subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "%s_%j", "-o", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    outputs = sorted(tmp_path.glob("*.nii"))
    assert outputs
    found = dicom.scan(src)
    for out in outputs:
        ref = medstack.load(out)
        # dcm2niix names by SeriesNumber and SOP/series UID: match on world geometry and values instead
        matches = []
        for info in found:
            vol = dicom.load_series(info)
            ours = vol.reoriented(ref.orientation)
            if ours.shape == ref.shape and np.allclose(ours.affine, ref.affine, atol=1e-3):
                matches.append(np.array_equal(ours.data.astype(np.int64), ref.data.astype(np.int64)))
        assert matches and all(matches), (out.name, found)


def test_pydicom_gap_series_is_refused_then_split():
    src = _pydicom_series_dir() / "77654033/CT2"
    info = dicom.select(dicom.scan(src), "Routine Brain")
    assert any(f.kind == "gap" or f.kind == "nonuniform_step" for f in info.findings)
    with pytest.raises(medstack.DicomError, match=r"slice step jumps.*on_gap="):
        dicom.load_series(info)
    parts = dicom.scan(src, on_gap="split")
    assert len(parts) >= 2 and all(p.uniform_spacing for p in parts)
    assert sum(p.shape[1] for p in parts) == info.shape[1]


@pytest.mark.parametrize("folder", ["siemens/mosaic_sag", "siemens/mosaic_ax", "siemens/fmri_mosaic_sag"])
def test_real_mosaic_anonymised_without_csa_image_header_matches_the_original(tmp_path, folder):
    # anonymisers often drop the CSA image header (0029,1010) and Siemens' (0019,xxxx) tags; the slice count and
    # the slice positions are still in the ASCCONV protocol of the CSA series header (0029,1020)
    import pydicom

    for f in sorted((QA / folder).iterdir()):
        ds = pydicom.dcmread(f)
        for tag in [t for t in ds.keys() if t.group == 0x0019 or (t.group == 0x0029 and t.element != 0x1020
                                                                   and t.element not in (0x0010, 0x0011))]:
            del ds[tag]
        ds.save_as(tmp_path / f.name)
    original = dicom.load(QA / folder)
    anonymised = dicom.load(tmp_path)
    assert anonymised.shape == original.shape
    np.testing.assert_allclose(anonymised.affine, original.affine, atol=1e-3)
    np.testing.assert_array_equal(anonymised.data, original.data)
