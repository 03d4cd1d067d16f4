import gzip
import os

import numpy as np
import pytest

import medstack
from medstack.errors import FormatError, GeometryError, OutputExistsError, ReadError, UnknownFormatError
from medstack.testing import random_affine, world_volume
from tests.test_volume import assert_world_encoded

# optional packages: the module still collects (and skips) on machines without them
nib = pytest.importorskip("nibabel")

RNG_AFFINE = random_affine(np.random.default_rng(42))


def nifti_file(path, arr_xyz, affine=RNG_AFFINE, *, slope=None, inter=None, sform_code=1, qform_code=1,
               cls=nib.Nifti1Image, dtype=None):
    img = cls(arr_xyz, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_qform(affine, code=qform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
@pytest.mark.parametrize("cls", [nib.Nifti1Image, nib.Nifti2Image])
def test_load_matches_nibabel(tmp_path, ext, cls, rng):
    arr = rng.integers(-1000, 3000, size=(9, 8, 7)).astype(np.int16)
    p = nifti_file(tmp_path / f"a.{ext}", arr, cls=cls)
    vol = medstack.load(p)
    assert vol.dtype == np.int16 and vol.shape == (1, 7, 8, 9)
    np.testing.assert_array_equal(vol.data[0], arr.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, nib.load(p).affine)
    assert vol.metadata["format"] == ("nifti2" if cls is nib.Nifti2Image else "nifti1")


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_scl_slope_inter_applied_as_float32(tmp_path, ext, rng):
    arr = rng.integers(0, 4000, size=(5, 6, 7)).astype(np.int16)
    p = nifti_file(tmp_path / f"s.{ext}", arr, slope=0.5, inter=-1024)
    vol = medstack.load(p)
    assert vol.dtype == np.float32
    np.testing.assert_allclose(vol.data[0], arr.transpose(2, 1, 0) * 0.5 - 1024)
    assert vol.metadata["scl_slope"] == 0.5 and vol.metadata["scl_inter"] == -1024
    assert medstack.load(p, dtype=np.float64).dtype == np.float64


def test_dtype_option_casts_without_scaling(tmp_path, rng):
    arr = rng.integers(0, 100, size=(5, 6, 7)).astype(np.uint8)
    p = nifti_file(tmp_path / "u.nii.gz", arr)
    vol = medstack.load(p, dtype=np.float32)
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol.data[0], arr.transpose(2, 1, 0))


def test_big_endian_file(tmp_path, rng):
    arr = rng.normal(size=(4, 5, 6)).astype(">f4")
    img = nib.Nifti1Image(arr, RNG_AFFINE)
    img.header.set_sform(RNG_AFFINE, code=1)
    hdr = img.header.as_byteswapped(">")
    p = tmp_path / "be.nii"
    nib.Nifti1Image(arr, RNG_AFFINE, header=hdr).to_filename(p)
    assert nib.load(p).header.endianness == ">"
    vol = medstack.load(p)
    assert vol.dtype == np.dtype("float32") and vol.dtype.isnative
    np.testing.assert_array_equal(vol.data[0], arr.transpose(2, 1, 0))


def test_4d_and_5d_become_channels(tmp_path, rng):
    arr4 = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    vol = medstack.load(nifti_file(tmp_path / "f.nii.gz", arr4))
    assert vol.shape == (3, 6, 5, 4)
    np.testing.assert_array_equal(vol.data[2], arr4[..., 2].transpose(2, 1, 0))
    arr5 = rng.normal(size=(4, 5, 6, 1, 3)).astype(np.float32)  # e.g. a displacement field
    vol5 = medstack.load(nifti_file(tmp_path / "d.nii.gz", arr5))
    assert vol5.shape == (3, 6, 5, 4)
    medstack.save(vol5, tmp_path / "d2.nii.gz")
    assert nib.load(tmp_path / "d2.nii.gz").shape == (4, 5, 6, 1, 3)


def test_sform_preferred_then_qform_then_pixdim(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    s_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    q_aff = np.diag([-1.0, 1.0, 3.0, 1.0])
    img = nib.Nifti1Image(arr, None)
    img.header.set_sform(s_aff, code=2)
    img.header.set_qform(q_aff, code=1)
    nib.save(img, tmp_path / "both.nii")
    vol = medstack.load(tmp_path / "both.nii")
    np.testing.assert_allclose(vol.affine, s_aff)
    assert vol.metadata["affine_source"] == "sform"
    img.header.set_sform(s_aff, code=0)
    nib.save(img, tmp_path / "q.nii")
    vol = medstack.load(tmp_path / "q.nii")
    np.testing.assert_allclose(vol.affine, q_aff)
    assert vol.metadata["affine_source"] == "qform"
    img.header.set_qform(q_aff, code=0)
    nib.save(img, tmp_path / "none.nii")
    with pytest.warns(UserWarning, match="pixdim"):
        vol = medstack.load(tmp_path / "none.nii")
    assert vol.metadata["affine_source"] == "pixdim"


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.full((4, 4), np.nan)])
def test_zero_or_nan_affine_is_a_geometry_error(tmp_path, bad):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.eye(4))
    hdr = img.header
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = bad[0], bad[1], bad[2]
    hdr["sform_code"] = 1
    p = tmp_path / "bad.nii.gz"
    nib.Nifti1Image(img.dataobj, None, header=hdr).to_filename(p)
    # nibabel may rewrite the sform on save: force the raw fields back
    raw = bytearray(gzip.decompress(p.read_bytes()))
    fixed = nib.Nifti1Header(bytes(raw[:348]))
    fixed["srow_x"], fixed["srow_y"], fixed["srow_z"] = bad[0], bad[1], bad[2]
    fixed["sform_code"] = 1
    raw[:348] = fixed.binaryblock
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(GeometryError, match=r"bad\.nii\.gz.*sform"):
        medstack.load(p)


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_truncated_file_names_path_and_cause(tmp_path, ext, rng):
    p = nifti_file(tmp_path / f"t.{ext}", rng.normal(size=(20, 20, 20)).astype(np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"t\.nii.*truncated"):
        medstack.load(p)


def test_truncated_header(tmp_path):
    p = tmp_path / "h.nii"
    p.write_bytes(b"\x5c\x01\x00\x00" + b"\0" * 100)
    # too short to be recognised by content; the extension says NIfTI, so the NIfTI reader explains
    with pytest.raises(FormatError, match=r"h\.nii: truncated NIfTI header"):
        medstack.load(p)


def test_missing_path_folder_and_unknown_format(tmp_path):
    with pytest.raises(ReadError, match=r"nope\.nii.*no such file") as info:
        medstack.load(tmp_path / "nope.nii")
    assert isinstance(info.value, OSError)  # the built-in stays catchable
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UnknownFormatError, match=r"x\.txt.*unrecognised"):
        medstack.load(tmp_path / "x.txt")
    with pytest.raises(medstack.DicomError, match="no DICOM image series found"):
        medstack.load(tmp_path)  # a folder is a DICOM series; this one has none
    vol = world_volume((2, 3, 4), np.eye(4))
    with pytest.raises(UnknownFormatError, match=r"out\.xyz"):
        medstack.save(vol, tmp_path / "out.xyz")


def test_save_refuses_to_overwrite_and_is_atomic(tmp_path, monkeypatch):
    vol = world_volume((4, 5, 6), RNG_AFFINE)
    p = tmp_path / "sub" / "o.nii.gz"
    medstack.save(vol, p)
    first = p.read_bytes()
    with pytest.raises(OutputExistsError, match=r"o\.nii\.gz.*overwrite=True"):
        medstack.save(vol, p)
    assert p.read_bytes() == first

    # a writer that dies half-way leaves neither a partial file nor temporaries
    import medstack.io.nifti as nifti

    def boom(f, head, pad, arr):
        f.write(head)
        raise KeyboardInterrupt

    monkeypatch.setattr(nifti, "_write_payload", boom)
    with pytest.raises(KeyboardInterrupt):
        medstack.save(vol, tmp_path / "sub" / "new.nii.gz")
    with pytest.raises(KeyboardInterrupt):
        medstack.save(vol, p, overwrite=True)
    assert sorted(os.listdir(tmp_path / "sub")) == ["o.nii.gz"]
    assert p.read_bytes() == first
    monkeypatch.undo()
    medstack.save(vol.replace(data=vol.data * 2), p, overwrite=True)
    np.testing.assert_allclose(medstack.load(p).data, vol.data * 2)


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_save_load_round_trip_world(tmp_path, ext):
    vol = world_volume((5, 6, 7), RNG_AFFINE)
    medstack.save(vol, tmp_path / f"w.{ext}")
    back = medstack.load(tmp_path / f"w.{ext}")
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    assert_world_encoded(back)
    hdr = nib.load(tmp_path / f"w.{ext}").header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1


def test_gzip_output_is_deterministic(tmp_path):
    vol = world_volume((5, 6, 7), RNG_AFFINE)
    medstack.save(vol, tmp_path / "a.nii.gz")
    medstack.save(vol, tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_mmap_option(tmp_path, rng):
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)
    p = nifti_file(tmp_path / "m.nii", arr)
    vol = medstack.load(p, mmap=True)
    assert isinstance(vol.data, np.memmap)
    np.testing.assert_array_equal(vol.data[0], arr.transpose(2, 1, 0))


def test_bool_and_float16_saved_as_nifti_types(tmp_path):
    vol = world_volume((3, 4, 5), np.eye(4), n_channels=1)
    medstack.save(vol.replace(data=vol.data > 2), tmp_path / "b.nii")
    assert medstack.load(tmp_path / "b.nii").dtype == np.uint8
    medstack.save(vol.replace(data=vol.data.astype(np.float16)), tmp_path / "h.nii")
    assert medstack.load(tmp_path / "h.nii").dtype == np.float32


def test_analyze_pair_via_nibabel(tmp_path, rng):
    arr = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    img = nib.Nifti1Pair(arr, RNG_AFFINE)
    nib.save(img, tmp_path / "pair.img")
    vol = medstack.load(tmp_path / "pair.hdr")
    np.testing.assert_array_equal(vol.data[0], arr.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, RNG_AFFINE, atol=1e-5)
