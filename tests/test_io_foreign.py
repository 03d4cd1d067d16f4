"""Formats read through nibabel (PAR/REC, MGH/MGZ, MINC1/2, ECAT, AFNI, ANALYZE) and SimpleITK (last resort).

Each reader is checked against the library itself: the same voxel value at the same world point, with
medstack's ``(C, D, H, W)`` layout and ``world = affine @ [i, j, k, 1]``.
"""

import gc
import gzip
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import medstack
from medstack.errors import FormatError, GeometryError, MedstackError, ReadError, UnknownFormatError
from medstack.io import detect_format
from medstack.testing import random_affine

AFFINE = random_affine(np.random.default_rng(11))  # oblique, no shear: what MGH can hold


@pytest.fixture(scope="module")
def nib():
    return pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def nib_data(nib):
    d = Path(nib.__file__).parent / "tests" / "data"
    if not (d / "minc2_1_scale.mnc").exists():
        pytest.skip("this nibabel install ships no test data")
    return d


@pytest.fixture
def keep_locale():
    """Restore the process locale after a test that reads VTK with SimpleITK itself (ITK sets it to "C")."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def _voxels(shape_xyz, n=6, seed=0):
    rng = np.random.default_rng(seed)
    corners = [(0, 0, 0), tuple(s - 1 for s in shape_xyz)]
    return corners + [tuple(int(rng.integers(0, s)) for s in shape_xyz) for _ in range(n)]


def nib_read(load, path, **kwargs):
    """nibabel's own reading of ``path``: array, affine, header (and unscaled array where there is one).

    nibabel 5 leaves the data file of MGH, PAR/REC and ECAT images open; the image is dropped here, with
    that ResourceWarning silenced, so that it cannot surface in a later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        img = load(path, **kwargs)
        unscaled = getattr(img.dataobj, "get_unscaled", None)
        out = SimpleNamespace(arr=np.asarray(img.dataobj), affine=np.array(img.affine, dtype=np.float64),
                              header=img.header, unscaled=None if unscaled is None else np.asarray(unscaled()))  # fmt: skip
        del img, unscaled
        gc.collect()
    return out


def assert_same_as_nibabel(vol, ref, *, spatial=(0, 1, 2), rtol=1e-6):
    """Every checked voxel: same world point and value in medstack (C, D, H, W) and nibabel (x, y, z[, t])."""
    arr = ref.arr
    rest = [a for a in range(arr.ndim) if a not in spatial]
    arr = arr.transpose(*spatial, *rest)
    arr = arr.reshape((*arr.shape[:3], -1), order="F")  # (x, y, z, channels)
    nx, ny, nz, nc = arr.shape
    assert vol.shape == (nc, nz, ny, nx)
    aff = ref.affine
    for i, j, k in _voxels((nx, ny, nz)):
        np.testing.assert_allclose(vol.voxel_to_world((i, j, k)), (aff @ [i, j, k, 1])[:3], atol=1e-4)
        for c in range(nc):
            np.testing.assert_allclose(vol.data[c, k, j, i], arr[i, j, k, c], rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(np.asarray(vol.data, dtype=np.float64).sum(), arr.sum(dtype=np.float64), rtol=1e-5)


# --------------------------------------------------------------------------------------------- MGH / MGZ


@pytest.mark.parametrize("ext", [".mgh", ".mgz"])
@pytest.mark.parametrize("frames", [None, 3])
def test_mgh_mgz_same_voxels_and_world_as_nibabel(nib, tmp_path, rng, ext, frames):
    shape = (5, 6, 7) if frames is None else (5, 6, 7, frames)
    arr = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    path = tmp_path / f"brain{ext}"
    nib.save(nib.MGHImage(arr, AFFINE), path)
    vol = medstack.load(path)
    ref = nib_read(nib.load, path)
    assert detect_format(path).name == "mgh"
    assert vol.shape == (frames or 1, 7, 6, 5) and vol.dtype == np.int16  # unscaled: stored dtype, native order
    assert vol.data.dtype.isnative
    assert_same_as_nibabel(vol, ref)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-4)  # MGH keeps the affine (float32 precision)
    assert vol.metadata["format"] == "mgh" and vol.metadata["orientation_known"] is True
    assert vol.metadata["source"] == str(path)


@pytest.mark.parametrize("ext", [".mgh", ".mgz"])
def test_mgh_without_orientation_warns_and_records(nib, tmp_path, rng, ext):
    path = tmp_path / f"noras{ext}"
    nib.save(nib.MGHImage(rng.random((4, 5, 6)).astype(np.float32), AFFINE), tmp_path / "tmp.mgh")
    raw = bytearray((tmp_path / "tmp.mgh").read_bytes())
    raw[28:30] = b"\0\0"  # goodRASFlag = 0: Mdc / Pxyz_c are not valid
    path.write_bytes(gzip.compress(bytes(raw)) if ext == ".mgz" else bytes(raw))
    with pytest.warns(UserWarning, match=rf"noras\{ext}: mgh default \(goodRASFlag = 0.*orientation is a guess"):
        vol = medstack.load(path)
    assert vol.metadata["orientation_known"] is False
    np.testing.assert_allclose(vol.affine, nib_read(nib.load, path).affine)


def test_corrupt_and_truncated_mgz_are_format_errors(nib, tmp_path, rng):
    good = tmp_path / "good.mgz"
    nib.save(nib.MGHImage(rng.random((8, 9, 10)).astype(np.float32), AFFINE), good)
    raw = gzip.decompress(good.read_bytes())
    cases = {
        "truncated.mgz": gzip.compress(raw[: len(raw) // 2]),  # valid gzip, voxel data cut
        "cut_stream.mgz": good.read_bytes()[:200],  # gzip stream itself cut
        "garbage.mgz": b"\x1f\x8b\x08\x00" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
        "short.mgh": raw[:100],  # shorter than the MGH header
        "truncated.mgh": raw[: len(raw) // 2],
    }
    for name, payload in cases.items():
        p = tmp_path / name
        p.write_bytes(payload)
        with pytest.raises(FormatError, match=rf"{name}: nibabel cannot read this mgh file") as info:
            medstack.load(p)
        assert isinstance(info.value, MedstackError), name
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("delta, match", [((0, 0, 0), "singular"), ((np.nan, 1, 1), "NaN or infinite")])
def test_singular_or_nonfinite_affine_is_refused(nib, tmp_path, rng, delta, match):
    path = tmp_path / "flat.mgh"
    nib.save(nib.MGHImage(rng.random((4, 5, 6)).astype(np.float32), AFFINE), path)
    raw = bytearray(path.read_bytes())
    raw[30:42] = np.array(delta, dtype=">f4").tobytes()  # delta: the voxel sizes
    path.write_bytes(bytes(raw))
    with pytest.raises(GeometryError, match=rf"flat\.mgh: mgh affine .*{match}"):
        medstack.load(path)


def test_mgz_is_read_not_written(nib_data, tmp_path):
    vol = medstack.load(nib_data / "test.mgz")
    with pytest.raises(UnknownFormatError, match=r"out\.mgz: medstack reads mgh files but does not write them"):
        medstack.save(vol, tmp_path / "out.mgz")


# ------------------------------------------------------------------------------------------------- MINC


@pytest.mark.parametrize(
    "name, time_first",
    [
        ("minc1_1_scale.mnc", False),
        ("minc2_1_scale.mnc", False),
        ("small.mnc", False),
        ("minc1_4d.mnc", True),  # dims (time, zspace, yspace, xspace)
        ("minc2_4d.mnc", True),
        ("minc2-4d-d.mnc", True),  # dims (time, xspace, yspace, zspace), float64 stored
    ],
)
def test_minc_same_voxels_and_world_as_nibabel(nib, nib_data, name, time_first):
    path = nib_data / name
    vol = medstack.load(path)
    ref = nib_read(nib.load, path)
    # nibabel's MINC affine indexes the *spatial* axes, which follow the time axis in these files
    assert_same_as_nibabel(vol, ref, spatial=(1, 2, 3) if time_first else (0, 1, 2), rtol=1e-6)
    assert vol.metadata["format"] == "minc" and detect_format(path).name == "minc"
    stored = np.dtype(vol.metadata["stored_dtype"])
    assert vol.dtype == (np.float64 if stored == np.float64 else np.float32)  # scaled: float32 as NIfTI


def test_minc_is_recognised_by_content_and_hdf5_stores_still_load(nib_data, tmp_path):
    minc2 = tmp_path / "brain_minc2.h5"  # an HDF5 name, but a "minc-2.0" root group
    shutil.copy(nib_data / "minc2_1_scale.mnc", minc2)
    minc1 = tmp_path / "brain_minc1"  # no extension: NetCDF "CDF\x01"
    shutil.copy(nib_data / "minc1_1_scale.mnc", minc1)
    reference = medstack.load(nib_data / "minc2_1_scale.mnc")
    for p in (minc2, minc1):
        assert detect_format(p).name == "minc"
        vol = medstack.load(p)
        np.testing.assert_allclose(vol.data, reference.data)
        np.testing.assert_allclose(vol.affine, reference.affine)
    store = tmp_path / "store.h5"
    medstack.save(reference, store)
    assert detect_format(store).name == "hdf5"
    back = medstack.load(store)
    np.testing.assert_array_equal(back.data, reference.data)
    assert back.metadata["format"] == "minc"  # metadata travels through the store (JSON-safe)


def test_hdf5_named_mnc_goes_to_minc_and_fails_cleanly(tmp_path):
    """The .mnc extension decides for an HDF5 file without a "minc-2.0" group in its first bytes."""
    vol = medstack.Volume(np.zeros((1, 2, 3, 4), np.float32), np.eye(4))
    medstack.save(vol, tmp_path / "store.h5")
    shutil.copy(tmp_path / "store.h5", tmp_path / "not_minc.mnc")
    assert detect_format(tmp_path / "not_minc.mnc").name == "minc"
    with pytest.raises(FormatError, match=r"not_minc\.mnc: nibabel cannot read this minc file"):
        medstack.load(tmp_path / "not_minc.mnc")


def test_minc_without_direction_cosines_records_the_default(nib_data):
    vol = medstack.load(nib_data / "minc2-no-att.mnc")
    assert "direction_cosines missing" in vol.metadata["affine_source"]


def test_minc_reader_warning_is_reemitted_with_the_file(nib_data):
    with pytest.warns(UserWarning, match=r"minc2_baddim\.mnc: nibabel: Invalid spacing declaration"):
        vol = medstack.load(nib_data / "minc2_baddim.mnc")
    assert vol.metadata["reader_warnings"]


def test_corrupt_minc_is_a_format_error(nib_data, tmp_path):
    p = tmp_path / "bad.mnc"
    p.write_bytes((nib_data / "minc1_1_scale.mnc").read_bytes()[:300])
    with pytest.raises(FormatError, match=r"bad\.mnc: nibabel cannot read this minc file"):
        medstack.load(p)


# ---------------------------------------------------------------------------------------------- PAR/REC


@pytest.mark.parametrize("which", ["PAR", "REC"])
def test_parrec_display_values_like_dicom(nib, nib_data, which):
    path = nib_data / f"phantom_EPI_asc_CLEAR_2_1.{which}"
    vol = medstack.load(path)
    ref = nib_read(nib.load, nib_data / "phantom_EPI_asc_CLEAR_2_1.PAR", scaling="dv")
    assert vol.shape == (3, 9, 64, 64)  # 3 dynamics -> channels
    assert vol.metadata["format"] == "par/rec" and vol.metadata["parrec_scaling"] == "dv"
    assert vol.metadata["channel_labels"] == {"dynamic scan number": [1, 2, 3]}
    assert vol.dtype == np.float32  # scaled uint16
    assert_same_as_nibabel(vol, ref, rtol=1e-6)
    # dv is RescaleSlope * stored + RescaleIntercept, what the DICOM export holds
    slope, inter = ref.header.get_data_scaling("dv")
    raw = ref.unscaled
    np.testing.assert_allclose(vol.data[1, 4, 10, 20], raw[20, 10, 4, 1] * slope[0, 0, 0, 1] + inter[0, 0, 0, 1],
                               rtol=1e-6)  # fmt: skip


def test_parrec_fp_scaling_and_options(nib, nib_data):
    path = nib_data / "phantom_EPI_asc_CLEAR_2_1.PAR"
    vol = medstack.load(path, scaling="fp")
    assert vol.metadata["parrec_scaling"] == "fp"
    assert_same_as_nibabel(vol, nib_read(nib.load, path, scaling="fp"), rtol=1e-6)
    with pytest.raises(MedstackError, match=r"scaling must be 'dv'.*got 'xx'"):
        medstack.load(path, scaling="xx")
    with pytest.raises(MedstackError, match=r"test\.mgz: option\(s\) scaling do not apply to a mgh file"):
        medstack.load(nib_data / "test.mgz", scaling="fp")


def test_truncated_parrec(nib_data):
    path = nib_data / "phantom_truncated.PAR"
    with pytest.raises(FormatError, match=r"phantom_truncated\.PAR: .*expected 4.*permit_truncated=True"):
        medstack.load(path)
    with pytest.warns(UserWarning, match="Header inconsistency"):
        vol = medstack.load(path, permit_truncated=True)
    assert vol.shape[0] == 3


def test_parrec_without_rec_is_a_read_error(nib_data, tmp_path):
    shutil.copy(nib_data / "phantom_EPI_asc_CLEAR_2_1.PAR", tmp_path / "alone.PAR")
    with pytest.raises(ReadError, match=r"alone\.PAR: a file of this par/rec image is missing: .*alone\.REC"):
        medstack.load(tmp_path / "alone.PAR")


# ------------------------------------------------------------------------------------------ ECAT, AFNI


def test_ecat_warns_no_orientation_and_matches_nibabel(nib, nib_data):
    path = nib_data / "tinypet.v"
    assert detect_format(path).name == "ecat"
    with pytest.warns(UserWarning, match=r"tinypet\.v: .*ECAT stores no orientation"):
        vol = medstack.load(path)
    assert_same_as_nibabel(vol, nib_read(nib.ecat.load, path))
    assert vol.metadata["format"] == "ecat" and vol.metadata["orientation_known"] is False


@pytest.mark.parametrize("name", ["scaled+tlrc.HEAD", "scaled+tlrc.BRIK", "example4d+orig.HEAD",
                                  "example4d+orig.BRIK.gz"])  # fmt: skip
def test_afni_same_voxels_and_world_as_nibabel(nib, nib_data, name):
    path = nib_data / name
    vol = medstack.load(path)
    assert_same_as_nibabel(vol, nib_read(nib.load, path))
    assert vol.metadata["format"] == "afni"
    assert len(vol.metadata["channel_labels"]) == vol.shape[0]


def test_afni_bad_header_is_a_format_error(nib_data, tmp_path):
    for name in ("bad_attribute+orig", "bad_datatype+orig"):
        shutil.copy(nib_data / f"{name}.HEAD", tmp_path / f"{name}.HEAD")
        (tmp_path / f"{name}.BRIK").write_bytes(b"\0" * 64)
        with pytest.raises(FormatError, match=re.escape(f"{name}.HEAD: nibabel cannot read this afni file")) as info:
            medstack.load(tmp_path / f"{name}.HEAD")
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ ANALYZE, fallbacks


def test_analyze_pair_is_read_by_the_nifti_reader(nib, tmp_path, rng):
    arr = rng.integers(0, 500, size=(5, 6, 7)).astype(np.int16)
    img = nib.AnalyzeImage(arr, np.diag([2.0, 3.0, 4.0, 1.0]))
    nib.save(img, tmp_path / "a.hdr")
    assert detect_format(tmp_path / "a.hdr").name == "nifti"
    for name in ("a.hdr", "a.img"):
        vol = medstack.load(tmp_path / name)
        assert_same_as_nibabel(vol, nib_read(nib.load, tmp_path / "a.hdr"))


def test_nibabel_fallback_for_names_no_row_knows(nib, tmp_path, rng):
    arr = rng.random((5, 6, 7)).astype(np.float32)
    path = tmp_path / "t1.nii.bz2"  # nibabel reads bz2-compressed NIfTI; no medstack row lists .nii.bz2
    nib.save(nib.Nifti1Image(arr, AFFINE), path)
    assert detect_format(path).name == "nibabel"
    vol = medstack.load(path)
    assert_same_as_nibabel(vol, nib_read(nib.load, path))
    assert vol.metadata["format"] == "nifti1" and vol.metadata["affine_source"] == "sform"


@pytest.mark.parametrize("ext, io", [(".vtk", "VTKImageIO"), (".gipl", "GiplImageIO"), (".mrc", "MRCImageIO")])
def test_simpleitk_fallback(tmp_path, rng, ext, io, keep_locale):
    """Formats only SimpleITK reads go through medstack.io.itk's conversion (LPS -> RAS)."""
    sitk = pytest.importorskip("SimpleITK")
    arr = rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = tmp_path / f"img{ext}"
    sitk.WriteImage(image, str(path))
    assert detect_format(path).name == "simpleitk"
    vol = medstack.load(path)
    back = sitk.ReadImage(str(path))  # resets the locale for .vtk: see keep_locale
    assert vol.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(vol.data[0], sitk.GetArrayFromImage(back))
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        lps = np.array(back.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(vol.voxel_to_world(ijk), lps * [-1, -1, 1], atol=1e-4)
    assert vol.metadata["format"] == ext.lstrip(".") and vol.metadata["itk_image_io"] == io


def test_simpleitk_fallback_keeps_the_process_locale(tmp_path):
    """ITK's VTK reader sets the C locale to "C" and leaves it (Python's text encoding then becomes ASCII)."""
    sitk = pytest.importorskip("SimpleITK")
    import locale

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), str(tmp_path / "a.vtk"))
    before = locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)
    medstack.load(tmp_path / "a.vtk")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


def test_unknown_file_names_file_and_libraries(tmp_path, rng):
    p = tmp_path / "mystery.xyz"
    p.write_bytes(bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    with pytest.raises(UnknownFormatError, match=r"mystery\.xyz: unrecognised file format") as info:
        medstack.load(p)
    msg = str(info.value)
    assert "neither nibabel nor SimpleITK can read it" in msg
    assert all(e in msg for e in (".nii.gz", ".mgz", ".mnc", ".par", ".v", ".head", ".nrrd", ".h5"))
    assert "\n" not in msg


def test_read_nibabel_direct_errors(tmp_path):
    from medstack.io.foreign import read_nibabel, read_simpleitk

    with pytest.raises(ReadError, match=r"gone\.mgz: no such file"):
        read_nibabel(tmp_path / "gone.mgz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UnknownFormatError, match=r"x\.txt: nibabel has no reader"):
        read_nibabel(tmp_path / "x.txt")
    with pytest.raises(FormatError, match=r"x\.txt: SimpleITK cannot read it"):
        read_simpleitk(tmp_path / "x.txt")


def test_import_medstack_imports_neither_nibabel_nor_simpleitk():
    code = "import sys, medstack; print(sorted(m for m in ('nibabel', 'SimpleITK', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
