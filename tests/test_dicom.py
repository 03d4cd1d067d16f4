"""DICOM reader on synthetic series with known geometry: each voxel's value encodes its world position."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack.errors import DicomError
from medstack.io import dicom
from medstack.io.dicom import DicomWarning
from medstack.testing import axis_code_affine, random_affine, world_volume, write_dicom_series

# optional packages: the module still collects (and skips) on machines without them
pydicom = pytest.importorskip("pydicom")

SHAPE = (12, 10, 9)  # (D, H, W)


def write_world(folder, affine, *, axis=None, **kw):
    """Write one series whose value is a weighted sum of world x, y, z (mm, to 0.01 mm)."""
    vol = world_volume(SHAPE, affine)
    weights = np.array([1.0, 0.5, 0.25]) if axis is None else np.eye(3)[axis]
    data = np.tensordot(weights, vol.data.astype(np.float64), axes=1)
    kw.setdefault("rescale_slope", 0.01)
    kw.setdefault("rescale_intercept", 0.0)
    kw.setdefault("modality", "MR")
    files = write_dicom_series(data, folder, affine=affine, **kw)
    return files, weights


def check_world(vol, weights, atol=0.02):
    """Every voxel holds weights . (its world position under the returned affine)."""
    _, d, h, w = vol.shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    expected = vol.voxel_to_world(np.stack([ww, hh, dd], axis=-1)) @ weights
    np.testing.assert_allclose(np.asarray(vol.data[0], np.float64), expected, atol=atol)


CODES = ["LPS", "LPI", "RAS", "LIP", "LSA", "PIR", "ASL", "IRP"]  # axial, coronal, sagittal; up and down


@pytest.mark.parametrize("code", CODES)
def test_axis_aligned_series_world_exact(tmp_path, code):
    affine = axis_code_affine(code, spacing=(0.7, 0.8, 2.5), origin=(10, -20, 30))
    _, weights = write_world(tmp_path, affine, shuffle_names=True, instance_number_order="random")
    vol = medstack.load(tmp_path)
    check_world(vol, weights)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert vol.dtype == np.float32  # non-integer slope


@pytest.mark.parametrize("seed", range(4))
def test_oblique_series_world_exact(tmp_path, seed):
    affine = random_affine(np.random.default_rng(seed))
    _, weights = write_world(tmp_path, affine, shuffle_names=seed + 1)
    vol = medstack.load(tmp_path)
    check_world(vol, weights)
    np.testing.assert_allclose(vol.spacing, np.linalg.norm(affine[:3, :3], axis=0)[::-1], atol=1e-4)


def test_shuffled_instance_numbers_give_a_finding_not_a_wrong_order(tmp_path):
    affine = axis_code_affine("LPS", (1, 1, 2))
    _, weights = write_world(tmp_path, affine, instance_number_order="random", shuffle_names=True)
    info = dicom.scan(tmp_path)[0]
    assert "instance_number_order" in {f.kind for f in info.findings}
    check_world(dicom.load_series(info), weights)


def test_integer_rescale_keeps_int16(tmp_path):
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3000 - 1000
    write_dicom_series(data, tmp_path, affine=np.diag([0.5, 0.5, 1.0, 1.0]), rescale_intercept=-1024)
    vol = medstack.load(tmp_path)
    assert vol.dtype == np.int16
    np.testing.assert_array_equal(vol.data[0], data)
    assert medstack.load(tmp_path, dtype=np.float32).dtype == np.float32


def test_per_slice_slopes_give_float32(tmp_path):
    data = np.random.default_rng(0).uniform(0, 100, SHAPE)

    def vary(ds, d):
        slope = 0.01 * (d + 1)
        ds.RescaleSlope = slope
        ds.PixelData = np.round(data[d] / slope).astype(np.int16).tobytes()

    write_dicom_series(np.zeros(SHAPE), tmp_path, affine=np.eye(4), rescale_slope=1.0, rescale_intercept=0.0,
                       per_slice=vary)  # fmt: skip
    vol = medstack.load(tmp_path)
    assert vol.dtype == np.float32
    np.testing.assert_allclose(vol.data[0], data, atol=0.01 * SHAPE[0] / 2 + 1e-6)


def _drop(files, index):
    ordered = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    ordered[index].unlink()


def test_missing_slice_is_refused_by_default_then_resampled_or_split(tmp_path):
    affine = axis_code_affine("LPS", (1, 1, 2))
    files, _weights = write_world(tmp_path, affine, axis=2)
    _drop(files, 5)
    info = dicom.scan(tmp_path)[0]
    gap = [f for f in info.findings if f.kind == "gap"]
    assert gap and gap[0].details["step_mm"] == pytest.approx(4.0)
    with pytest.raises(DicomError, match=r"slice step jumps from 2 mm to 4 mm between slices 4 and 5.*on_gap="):
        medstack.load(tmp_path)
    with pytest.warns(DicomWarning, match="slice step jumps"):
        warned = medstack.load(tmp_path, on_gap="warn")
    assert warned.shape[1] == SHAPE[0] - 1 and len(warned.metadata["slice_positions_mm"]) == SHAPE[0] - 1
    with pytest.warns(DicomWarning):
        fixed = medstack.load(tmp_path, on_gap="resample")
    assert fixed.shape[1] == SHAPE[0]
    check_world(fixed, np.eye(3)[2])  # linear in z: interpolation is exact
    parts = dicom.scan(tmp_path, on_gap="split")
    assert [p.shape[1] for p in parts] == [5, SHAPE[0] - 6]
    with pytest.raises(DicomError, match="candidate series"):
        medstack.load(tmp_path, on_gap="split")
    for p in parts:
        check_world(dicom.load_series(p), np.eye(3)[2])


def test_nonuniform_step_detected(tmp_path):
    def squeeze(ds, d):
        if d >= 6:
            ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) - 0.5]

    write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)), per_slice=squeeze)
    kinds = {f.kind for f in dicom.scan(tmp_path)[0].findings}
    assert "nonuniform_step" in kinds


def test_duplicate_file_copy_and_identical_duplicate_are_dropped(tmp_path):
    files, weights = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    shutil.copy(files[3], tmp_path / "copy_of_3.dcm")  # same SOPInstanceUID
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "resent_4.dcm")  # new UID, same position, identical pixels
    info = dicom.scan(tmp_path)[0]
    vol = dicom.load_series(info, emit=False)
    assert vol.shape == (1, *SHAPE)
    kinds = [f["kind"] for f in vol.metadata["findings"]]
    assert kinds.count("duplicate") == 2
    check_world(vol, weights)


def test_conflicting_images_at_one_position_are_refused(tmp_path):
    files, _ = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.PixelData = (np.frombuffer(ds.PixelData, np.int16) + 1).tobytes()
    ds.save_as(tmp_path / "other_4.dcm")
    with pytest.raises(DicomError, match="share a slice position but hold different images"):
        dicom.load_series(dicom.scan(tmp_path)[0], emit=False)


def test_localizer_with_same_uid_is_excluded(tmp_path):
    files, weights = write_world(tmp_path / "main", axis_code_affine("LPS", (1, 1, 2)))
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    write_dicom_series(np.zeros((1, 10, 9)), tmp_path / "loc", affine=axis_code_affine("LIP"), series_uid=uid,
                       extra_tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, file_prefix="loc")  # fmt: skip
    series = dicom.scan(tmp_path)
    assert len(series) == 1
    assert "localizer_removed" in {f.kind for f in series[0].findings}
    check_world(medstack.load(tmp_path), weights)


def test_two_series_in_one_folder_need_a_choice(tmp_path):
    write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)), series_number=3, series_description="T1")
    write_world(tmp_path, axis_code_affine("LIP", (1, 1, 2)), series_number=4, series_description="T2",
                file_prefix="b", seed=1)  # fmt: skip
    with pytest.raises(DicomError, match=r"(?s)2 candidate series.*#3 'T1'.*#4 'T2'") as e:
        medstack.load(tmp_path)
    assert "series=" in str(e.value)
    assert medstack.load(tmp_path, series=4).metadata["description"] == "T2"
    assert medstack.load(tmp_path, series="T1").metadata["series_number"] == 3
    with pytest.raises(DicomError, match="no series matches"):
        medstack.load(tmp_path, series=99)


def test_gantry_tilt_detected_and_resampled_or_sheared(tmp_path):
    # a tilted CT gantry: each slice drifts 0.5 mm along A-P (rows) while stepping 2 mm along S
    sheared = axis_code_affine("LPS", (1, 1, 2))
    sheared[1, 2] = 0.5
    write_world(tmp_path, sheared, axis=1)  # values encode true world y (A-P)
    info = dicom.scan(tmp_path)[0]
    tilt = [f for f in info.findings if f.kind == "tilt"]
    assert tilt and tilt[0].details["tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.5 / 2)), abs=0.01)
    with pytest.warns(DicomWarning, match="tilt"):
        exact = medstack.load(tmp_path, tilt="shear")
    np.testing.assert_allclose(exact.affine, sheared, atol=1e-6)
    check_world(exact, np.eye(3)[1])
    with pytest.warns(DicomWarning, match="tilt"):
        resampled = medstack.load(tmp_path)
    assert abs(resampled.affine[1, 2]) < 1e-9  # orthogonal grid
    # interior rows only: shifting brings fill values in at the edges (up to 0.5 * 11 slices = 5.5 rows)
    d, h, w = resampled.spatial_shape
    dd, hh, ww = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    world = resampled.voxel_to_world(np.stack([ww, hh, dd], axis=-1))[..., 1]
    vals = resampled.data[0].astype(np.float64)
    ok = np.zeros(vals.shape, bool)
    for k in range(d):
        drift = int(np.ceil(0.5 * k)) + 1
        ok[k, drift : h - drift] = True
    np.testing.assert_allclose(vals[ok], world[ok], atol=0.02)


def test_no_geometry_falls_back_to_instance_number(tmp_path):
    def strip(ds, d):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    data = np.arange(SHAPE[0])[:, None, None] * np.ones(SHAPE)
    write_dicom_series(data, tmp_path, affine=np.eye(4), per_slice=strip, shuffle_names=True, rescale_intercept=0)
    with pytest.warns(DicomWarning, match="InstanceNumber"):
        vol = medstack.load(tmp_path)
    np.testing.assert_array_equal(vol.data[0, :, 0, 0], np.arange(SHAPE[0]))


def test_scan_reads_no_pixel_data(tmp_path, monkeypatch):
    write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    real = pydicom.dcmread
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("stop_before_pixels", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    dicom.scan(tmp_path)
    assert all(calls)  # the fast header walk calls no pydicom; a fallback reads with stop_before_pixels


def test_scan_skips_non_dicom_and_reports_bad_files(tmp_path):
    files, weights = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    (tmp_path / ".hidden").write_bytes(b"\0" * 200)
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    data = files[2].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID += ".7"
    ds.ImagePositionPatient = [0, 0, 500]
    ds.save_as(truncated)
    truncated.write_bytes(truncated.read_bytes()[: len(data) - 100])
    info = dicom.scan(tmp_path)[0]
    bad = sorted(f.details["file"].split("/")[-1] for f in info.findings if f.kind == "unreadable_file")
    assert bad == ["junk.dcm", "truncated.dcm"]
    with pytest.raises(DicomError, match=r"junk\.dcm.*2 file\(s\).*on_unreadable='drop'"):
        dicom.load_series(info)  # a file of the series that cannot be read is an error by default
    with pytest.warns(DicomWarning, match="unreadable"):
        check_world(dicom.load_series(info, on_unreadable="drop"), weights)
    with pytest.raises(DicomError, match=r"junk\.dcm|truncated\.dcm.*strict=True"):
        dicom.scan(tmp_path, strict=True)


def test_file_without_pixel_data_is_skipped(tmp_path):
    files, weights = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.SOPInstanceUID += ".5"
    ds.save_as(tmp_path / "nopix.dcm")
    info = dicom.scan(tmp_path)[0]
    assert "no_pixel_data" in {f.kind for f in info.findings}
    check_world(dicom.load_series(info), weights)


def test_rows_columns_differing_inside_series_refuse_the_load_unless_dropped(tmp_path):
    files, _weights = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)))
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID += ".3"
    ds.Rows, ds.Columns = 4, 4
    ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
    ds.ImagePositionPatient = [0, 0, 77]
    ds.save_as(tmp_path / "small.dcm")
    info = dicom.scan(tmp_path)[0]
    assert info.shape == (1, *SHAPE)
    assert "dropped_slices" in {f.kind for f in info.findings}
    with pytest.raises(DicomError, match=r"4x4 pixels.*on_unreadable='drop'"):
        dicom.load_series(info)  # a slice of the series would be lost: never silently
    with pytest.warns(DicomWarning, match="4x4 pixels"):
        assert dicom.load_series(info, on_unreadable="drop").shape == (1, *SHAPE)


@pytest.mark.parametrize("target", ["empty", "text_only"])
def test_empty_or_non_dicom_folder(tmp_path, target):
    if target == "text_only":
        (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DicomError, match=r"no DICOM image series found"):
        medstack.load(tmp_path)


def write_enhanced(path, vol, *, reverse=False):
    """An Enhanced MR Image Storage file holding all slices of ``vol`` (frames optionally in reverse)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    lps = np.diag([-1, -1, 1, 1.0]) @ vol.affine
    data = np.round(vol.data[0] / 0.01).astype(np.int16)
    order = list(range(data.shape[0]))[::-1] if reverse else list(range(data.shape[0]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 9, 1
    ds.Rows, ds.Columns = data.shape[1:]
    ds.NumberOfFrames = data.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [float(sp[1]), float(sp[0])]
    pm.SliceThickness = float(sp[2])
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [float(v) for v in np.concatenate([lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]])]
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 0.01, 0, "US"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for d in order:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ [0, 0, d] + lps[:3, 3]]
        item.PlanePositionSequence = Sequence([pp])
        fc = Dataset()
        fc.TemporalPositionIndex = 1
        item.FrameContentSequence = Sequence([fc])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = data[order].tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("reverse", [False, True])
def test_enhanced_multiframe_frames_sorted_in_space(tmp_path, reverse):
    affine = random_affine(np.random.default_rng(5))
    vol = world_volume(SHAPE, affine, n_channels=1)
    write_enhanced(tmp_path / "mf.dcm", vol, reverse=reverse)
    loaded = medstack.load(tmp_path / "mf.dcm")
    assert loaded.shape == (1, *SHAPE)
    check_world(loaded, np.eye(3)[0])


def test_provenance_metadata(tmp_path):
    files, _ = write_world(tmp_path, axis_code_affine("LPS", (1, 1, 2)), series_description="prov")
    vol = medstack.load(tmp_path)
    md = vol.metadata
    assert md["format"] == "dicom" and md["description"] == "prov" and md["modality"] == "MR"
    assert sorted(md["files"]) == sorted(str(f) for f in files)
    assert md["series_uid"] and md["study_uid"] and md["n_files"] == SHAPE[0]
    pos = md["slice_positions_mm"]
    assert np.all(np.diff(pos) > 0)


def test_sample_data_ct_and_localizer():
    series = dicom.scan("data_samples/dicom")
    assert [s.is_localizer for s in series] == [True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ct = medstack.load("data_samples/dicom")  # the rule: the single non-localizer series
    assert ct.shape == (1, 64, 128, 128) and ct.dtype == np.int16
    assert ct.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert ct.data.min() == -1024


def test_missing_codec_names_transfer_syntax_and_package(tmp_path, monkeypatch):
    from pydicom.dataset import Dataset

    from tests.test_dicom_qa import QA as qa

    if not qa.exists():
        pytest.skip("../shared/dicom-qa not present")

    def no_decoder(self):
        raise RuntimeError("Unable to decode the pixel data: no plugin available")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(DicomError, match=r"9\.dcm: cannot decode pixel data in transfer syntax JPEG 2000.*pip install pylibjpeg"):
        medstack.load(qa / "transfer_syntax" / "9.dcm")


def test_monochrome1_is_inverted(tmp_path):
    data = np.tile(np.arange(SHAPE[2]), (SHAPE[0], SHAPE[1], 1)).astype(float)

    def mono1(ds, d):
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.BitsStored, ds.HighBit = 12, 11

    write_dicom_series(data, tmp_path, affine=np.eye(4), rescale_intercept=0, unsigned=True, per_slice=mono1)
    vol = medstack.load(tmp_path)
    np.testing.assert_array_equal(vol.data[0], 4095 - data)


def test_fast_header_walk_gives_the_same_headers_as_pydicom(monkeypatch):
    # pass 1 walks the first bytes itself and hands pydicom only the wanted elements; on every real and test
    # file at hand, the FileHeader must equal the one from pydicom's own parse (the fallback path)
    import dataclasses

    import pydicom.data

    from medstack.io.dicom import _fastheader, _headers

    shared = Path(__file__).resolve().parents[1].parent / "shared"
    files = [p for root in (shared / "dicom-qa", shared / "dicom-qa2", Path(pydicom.data.__file__).parent / "test_files")
             for p in sorted(root.rglob("*")) if p.is_file() and _headers.looks_like_dicom(str(p))]  # fmt: skip
    assert len(files) > 50

    def parse(path):
        try:
            return _headers.parse_file(str(path))
        except Exception as e:  # unreadable either way is equal
            return type(e).__name__

    fast = {p: parse(p) for p in files}
    monkeypatch.setattr(_fastheader, "walk", lambda *a, **k: None)  # force pydicom's parse
    walked = 0
    for p in files:
        slow = parse(p)
        if isinstance(slow, str) or isinstance(fast[p], str):
            continue  # the walker never reads what pydicom refuses; failures are findings either way
        walked += 1
        a, b = dataclasses.asdict(fast[p]), dataclasses.asdict(slow)
        np.testing.assert_equal(a, b, err_msg=str(p))
    assert walked > 50
