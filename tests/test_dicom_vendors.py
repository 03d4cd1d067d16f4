"""Vendor encodings of DICOM, built synthetically with medstack.testing and checked voxel by voxel in world space.

Each test writes a series the way a scanner would (GE reverse-polarity EPI, United Imaging grids, Siemens
mosaics without the CSA image header, several image kinds in one series, Philips' appended trace volume,
colour images, the standard diffusion b-value tag) and compares what medstack loads with the known truth.
"""

import numpy as np
import pytest

import medstack
from medstack.errors import DicomError
from medstack.io import dicom
from medstack.testing import axis_code_affine, center_affine, phantom, random_affine, write_dicom_series

# optional packages: the module still collects (and skips) on machines without them
pydicom = pytest.importorskip("pydicom")
Dataset, Sequence = pydicom.dataset.Dataset, pydicom.sequence.Sequence

LPS = np.array([-1.0, -1.0, 1.0])


def _truth(shape, code_or_affine, seed=0):
    affine = code_or_affine if isinstance(code_or_affine, np.ndarray) else center_affine(
        axis_code_affine(code_or_affine, (2.0, 2.0, 3.0)), shape)
    vol = phantom(shape, affine, seed=seed, kind="mr")
    return np.round(vol.data[0]).astype(np.float64), affine


def _assert_world_equal(vol, truth, affine):
    """The loaded volume holds ``truth`` at the world positions ``affine`` gives (any voxel order)."""
    ref = medstack.Volume(truth[None].astype(np.float32), affine)
    ours = vol.reoriented(ref.orientation)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.data[0].astype(np.float64), truth)


# -- GE reverse phase-encoding polarity ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_ge_epi_pepolar_reversed_volumes_are_flipped_back(tmp_path, mode):
    truth, affine = _truth((4, 12, 10), "LPS")
    uid = "2.25.1234"

    def tags(t):
        def per_slice(ds, d):
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.TemporalPositionIdentifier = t
            ds.InstanceNumber = t * 100 + d
            ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
            ds.add_new((0x0019, 0x109C), "LO", "research/ABCD/epi_pepolar")
            ds.add_new((0x0019, 0x10B3), "DS", f"{mode:.6f}")
        return per_slice

    expected = []
    for t in (1, 2, 3, 4):
        reversed_ = mode == 1 or (mode == 2 and t % 2 == 1) or (mode == 3 and t % 2 == 0)
        expected.append("reversed" if reversed_ else "forward")
        stored = truth[:, ::-1, :] if reversed_ else truth  # GE: rows reversed, header unchanged
        write_dicom_series(stored + t, tmp_path, affine=affine, series_uid=uid, modality="MR", rescale_intercept=0,
                           file_prefix=f"v{t}_", per_slice=tags(t), shuffle_names=True)
    vol = medstack.load(tmp_path)
    assert vol.shape == (4, 4, 12, 10)
    assert vol.metadata["phase_encoding_polarity"] == expected
    for c in range(4):
        _assert_world_equal(vol.replace(data=vol.data[c : c + 1]), truth + c + 1, affine)


def test_ge_epi_pepolar_alternating_without_temporal_position_is_refused(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")

    def per_slice(ds, d):
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
        ds.add_new((0x0019, 0x109C), "LO", "epi_pepolar")
        ds.add_new((0x0019, 0x10B3), "DS", "2")

    write_dicom_series(truth, tmp_path, affine=affine, modality="MR", rescale_intercept=0, per_slice=per_slice)
    info = dicom.scan(tmp_path)[0]
    assert any(f.kind == "undecodable" and f.severity == "error" for f in info.findings)
    with pytest.raises(DicomError, match="TemporalPositionIdentifier"):
        dicom.load_series(info)


# -- United Imaging grids ------------------------------------------------------------------------------


def _uih_grid_file(folder, truth, affine, *, volume, bvalue, tile_size="8*8", prefix="g"):
    d_, h, w = truth.shape
    n_col = int(np.ceil(np.sqrt(d_)))
    n_row = int(np.ceil(d_ / n_col))
    grid = np.zeros((1, n_row * h, n_col * w))
    for t in range(d_):
        r, q = divmod(t, n_col)
        grid[0, r * h : (r + 1) * h, q * w : (q + 1) * w] = truth[t]
    positions = [(affine @ [0, 0, t, 1])[:3] * LPS for t in range(d_)]

    def per_slice(ds, _d):
        ds.Manufacturer = "UIH"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
        ds.InstanceNumber = volume
        del ds.ImagePositionPatient  # UIH grids carry positions per slice only
        ds.add_new((0x0065, 0x0010), "LO", "Image Private Header")
        if tile_size is not None:
            ds.add_new((0x0065, 0x1004), "SH", tile_size)
        ds.add_new((0x0065, 0x1009), "FD", float(bvalue))
        ds.add_new((0x0065, 0x1037), "FD", [0.0, 0.6, 0.8] if bvalue else [0.0, 0.0, 0.0])
        ds.add_new((0x0065, 0x1050), "DS", str(d_))
        items = []
        for t in range(d_):
            item = Dataset()
            item.ImagePositionPatient = [f"{v:.6f}" for v in positions[t]]
            items.append(item)
        ds.add_new((0x0065, 0x1051), "SQ", Sequence(items))

    return write_dicom_series(grid, folder, affine=affine, series_uid="2.25.777", modality="MR", rescale_intercept=0,
                              file_prefix=f"{prefix}{volume}_", per_slice=per_slice)


def test_uih_grid_is_decoded_with_per_slice_positions(tmp_path):
    rng = np.random.default_rng(5)
    affine = random_affine(rng, oblique=True, spacing_range=(1.5, 3.0))
    truth, _ = _truth((6, 8, 8), affine)
    _uih_grid_file(tmp_path, truth, affine, volume=1, bvalue=0)
    _uih_grid_file(tmp_path, truth + 7, affine, volume=2, bvalue=1000)
    vol = medstack.load(tmp_path)
    assert vol.shape == (2, 6, 8, 8)
    assert vol.metadata["b_values"] == [0.0, 1000.0]
    _assert_world_equal(vol.replace(data=vol.data[:1]), truth, affine)
    _assert_world_equal(vol.replace(data=vol.data[1:]), truth + 7, affine)


def test_uih_grid_without_tile_size_is_refused_not_returned_as_a_grid(tmp_path):
    truth, affine = _truth((6, 8, 8), "LPS")
    _uih_grid_file(tmp_path, truth, affine, volume=1, bvalue=0, tile_size=None)
    with pytest.raises(DicomError, match=r"United Imaging grid.*\(0065,1004\)"):
        medstack.load(tmp_path)


# -- Siemens MOSAIC without the CSA image header -------------------------------------------------------


def _mosaic_file(folder, truth, affine, *, ascconv=True, reverse_listing=False, prefix="m"):
    d_, h, w = truth.shape
    grid = int(np.ceil(np.sqrt(d_)))
    image = np.zeros((1, grid * h, grid * w))
    for t in range(d_):
        r, q = divmod(t, grid)
        image[0, r * h : (r + 1) * h, q * w : (q + 1) * w] = truth[t]
    mosaic_affine = affine.copy()  # the whole mosaic read as one image: first pixel shifted by half the excess
    mosaic_affine[:3, 3] -= affine[:3, 0] * (grid * w - w) / 2 + affine[:3, 1] * (grid * h - h) / 2
    lines = ["### ASCCONV BEGIN ###", f"sSliceArray.lSize = {d_}"]
    ks = list(range(d_))[::-1] if reverse_listing else list(range(d_))
    for k, t in enumerate(ks):
        centre = (affine @ [(w - 1) / 2, (h - 1) / 2, t, 1])[:3] * LPS
        for axis, v in zip(("Sag", "Cor", "Tra"), centre):
            if abs(v) > 1e-9:  # ASCCONV omits zero values
                lines.append(f"sSliceArray.asSlice[{k}].sPosition.d{axis} = {v:.8f}")
        lines.append(f"sSliceArray.asSlice[{k}].dThickness = 3")
    lines.append("### ASCCONV END ###")
    text = ("\n".join(lines) + "\n").encode()

    def per_slice(ds, _d):
        ds.Manufacturer = "SIEMENS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.SpacingBetweenSlices = "3"
        if ascconv:
            ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
            ds.add_new((0x0029, 0x1020), "OB", b"SV10\x04\x03\x02\x01 MrPhoenixProtocol " + text + b"\x00")

    return write_dicom_series(image, folder, affine=mosaic_affine, modality="MR", rescale_intercept=0,
                              file_prefix=prefix, per_slice=per_slice)


@pytest.mark.parametrize("code", ["PIL", "PIR", "LPS", "LPI"])
@pytest.mark.parametrize("reverse_listing", [False, True])
def test_mosaic_without_csa_uses_the_ascconv_slice_array(tmp_path, code, reverse_listing):
    # sagittal "PIL": the tiles advance towards L, opposite to the IOP cross product (the CSA normal's job)
    truth, affine = _truth((6, 8, 8), code)
    _mosaic_file(tmp_path, truth, affine, reverse_listing=reverse_listing)
    vol = medstack.load(tmp_path)
    assert vol.shape == (1, 6, 8, 8)
    _assert_world_equal(vol, truth, affine)


def test_mosaic_without_any_slice_count_is_refused(tmp_path):
    truth, affine = _truth((6, 8, 8), "LPS")
    _mosaic_file(tmp_path, truth, affine, ascconv=False)
    info = dicom.scan(tmp_path)[0]
    assert [f.kind for f in info.findings if f.severity == "error"] == ["undecodable"]
    with pytest.raises(DicomError, match=r"MOSAIC without a slice count.*sSliceArray.lSize"):
        dicom.load_series(info)


# -- several image kinds in one series -----------------------------------------------------------------


def _kind_series(folder, truth, affine, kinds, *, positions=None):
    """kinds: list of (tags dict, offset); every kind written at every slice, files interleaved by name."""
    for n, (tags, offset) in enumerate(kinds):
        data = truth + offset

        def per_slice(ds, d, tags=tags, n=n):
            ds.InstanceNumber = d * len(kinds) + n + 1  # interleaved at each position
            for k, v in tags.items():
                setattr(ds, k, v)

        vol_aff = affine if positions is None or n == 0 else positions
        write_dicom_series(data, folder, affine=vol_aff, series_uid="2.25.4242", modality="MR", rescale_intercept=0,
                           file_prefix=f"k{n}_", per_slice=per_slice, shuffle_names=n + 3)


def test_magnitude_and_phase_become_named_channels_in_dcm2niix_order(tmp_path):
    truth, affine = _truth((5, 8, 8), "LAS")
    _kind_series(tmp_path, truth, affine, [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}, 2000),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}, 0),
    ])  # fmt: skip
    vol = medstack.load(tmp_path)
    assert vol.metadata["channel_names"] == ["magnitude", "phase"]
    assert vol.metadata["image_kinds"] == ["magnitude", "phase"]
    _assert_world_equal(vol.replace(data=vol.data[:1]), truth, affine)
    _assert_world_equal(vol.replace(data=vol.data[1:]), truth + 2000, affine)
    phase = medstack.load(tmp_path, image_type="phase")
    assert phase.shape[0] == 1
    _assert_world_equal(phase, truth + 2000, affine)


def test_multi_echo_becomes_named_channels_selectable_by_echo(tmp_path):
    truth, affine = _truth((4, 8, 8), "LPS")
    _kind_series(tmp_path, truth, affine, [
        ({"EchoNumbers": 3, "EchoTime": "15"}, 30),
        ({"EchoNumbers": 1, "EchoTime": "5"}, 10),
        ({"EchoNumbers": 2, "EchoTime": "10"}, 20),
    ])  # fmt: skip
    info = dicom.scan(tmp_path)
    assert len(info) == 1 and info[0].channel_names == ["e1", "e2", "e3"]
    vol = dicom.load_series(info[0])
    assert vol.metadata["echo_times_ms"] == [5.0, 10.0, 15.0]
    for c in range(3):
        _assert_world_equal(vol.replace(data=vol.data[c : c + 1]), truth + 10 * (c + 1), affine)
    e2 = dicom.load_series(info[0], echo=2)
    _assert_world_equal(e2, truth + 20, affine)
    assert info[0].shape[0] == 3  # selection never changes the scan's record
    with pytest.raises(DicomError, match="no channel matches echo=7"):
        dicom.load_series(info[0], echo=7)


def test_kinds_on_different_slices_stay_separate_and_are_selectable(tmp_path):
    truth, affine = _truth((4, 8, 8), "LPS")
    shifted = affine.copy()
    shifted[2, 3] += 1.5  # the phase images lie between the magnitude slices: cannot be channels
    _kind_series(tmp_path, truth, affine, [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "M"]}, 0),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "P"]}, 500),
    ], positions=shifted)  # fmt: skip
    assert len(dicom.scan(tmp_path)) == 2
    with pytest.raises(DicomError, match=r"(?s)2 candidate series.*channels=\['magnitude'\]"):
        medstack.load(tmp_path)
    _assert_world_equal(medstack.load(tmp_path, image_type="phase"), truth + 500, shifted)


def test_philips_appended_trace_volume_is_dropped_with_a_finding(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")
    gradients = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)]
    bvals = [0, 1000, 1000, 1000, 1000]  # the last: b > 0 with a zero gradient = the isotropic trace image
    for v, (g, b) in enumerate(zip(gradients, bvals)):
        def per_slice(ds, d, g=g, b=b, v=v):
            ds.Manufacturer = "Philips Medical Systems"
            ds.InstanceNumber = v * 10 + d + 1
            ds.DiffusionBValue = float(b)
            ds.DiffusionGradientOrientation = [float(x) for x in g]
        write_dicom_series(truth + v, tmp_path, affine=affine, series_uid="2.25.99", modality="MR",
                           rescale_intercept=0, file_prefix=f"dwi{v}_", per_slice=per_slice)
    vol = medstack.load(tmp_path)
    assert vol.shape[0] == 4
    assert vol.metadata["b_values"] == [0.0, 1000.0, 1000.0, 1000.0]
    assert vol.metadata["gradients"][1] == [1.0, 0.0, 0.0]
    dropped = [f for f in vol.metadata["findings"] if f["kind"] == "derived_removed"]
    assert dropped and "trace" in dropped[0]["message"] and len(dropped[0]["files"]) == 3
    for c in range(4):
        _assert_world_equal(vol.replace(data=vol.data[c : c + 1]), truth + c, affine)


def test_standard_diffusion_b_value_tag_is_read_as_binary_double(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")
    for v, b in enumerate([0.0, 500.0, 1000.0]):
        def per_slice(ds, d, b=b, v=v):
            ds.InstanceNumber = v * 10 + d + 1
            ds.DiffusionBValue = b  # (0018,9087) FD: 8 bytes of binary, not text
        write_dicom_series(truth, tmp_path, affine=affine, series_uid="2.25.98", modality="MR", rescale_intercept=0,
                           file_prefix=f"b{v}_", per_slice=per_slice)
    assert medstack.load(tmp_path).metadata["b_values"] == [0.0, 500.0, 1000.0]


# -- tilt: facts at scan, policy at load ---------------------------------------------------------------


def test_tilt_policy_is_applied_at_load_whatever_the_scan(tmp_path):
    truth, affine = _truth((6, 10, 10), "LPS")
    sheared = affine.copy()
    sheared[1, 2] = 0.8  # each slice drifts 0.8 mm along A-P: gantry tilt
    write_dicom_series(truth, tmp_path, affine=sheared, modality="CT", rescale_intercept=0)
    info = dicom.scan(tmp_path)[0]
    before = info.affine.copy()
    with pytest.warns(dicom.DicomWarning, match="tilt='shear' applied"):
        exact = dicom.load_series(info, tilt="shear")
    np.testing.assert_allclose(exact.affine, sheared, atol=1e-4)
    np.testing.assert_array_equal(exact.data[0], truth)  # voxels untouched under the sheared affine
    with pytest.warns(dicom.DicomWarning, match="tilt='resample' applied"):
        ortho = dicom.load_series(info, tilt="resample")
    assert abs(ortho.affine[1, 2]) < 1e-9  # orthogonal grid for resampled voxels
    np.testing.assert_array_equal(info.affine, before)


# -- colour --------------------------------------------------------------------------------------------


def test_rgb_series_loads_as_three_named_channels(tmp_path):
    truth, affine = _truth((3, 6, 7), "LPS")
    rgb = np.stack([(truth + k * 40) % 256 for k in range(3)], axis=-1).astype(np.uint8)  # (D, H, W, 3)

    def per_slice(ds, d):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            delattr(ds, tag)
        ds.PixelData = rgb[d].tobytes()
        ds["PixelData"].VR = "OB"

    write_dicom_series(truth, tmp_path, affine=affine, modality="MR", rescale_intercept=0, per_slice=per_slice)
    vol = medstack.load(tmp_path)
    assert vol.shape == (3, 3, 6, 7) and vol.dtype == np.uint8
    assert vol.metadata["channel_names"] == ["red", "green", "blue"]
    assert any(f["kind"] == "colour" for f in vol.metadata["findings"])
    for k in range(3):
        _assert_world_equal(vol.replace(data=vol.data[k : k + 1]), rgb[..., k].astype(np.float64), affine)


def test_segmentation_objects_are_not_image_series(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")
    write_dicom_series(truth, tmp_path, affine=affine, modality="MR", rescale_intercept=0)

    def as_seg(ds, d):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
        ds.Modality = "SEG"

    write_dicom_series(truth, tmp_path / "seg", affine=affine, modality="MR", rescale_intercept=0, per_slice=as_seg,
                       series_number=9)
    series = dicom.scan(tmp_path)
    assert len(series) == 1
    assert any(f.kind == "annotation" and "SEG" in f.message for f in series[0].findings)
    assert pydicom.dcmread(next((tmp_path / "seg").iterdir())).Modality == "SEG"


def _enhanced_mr(path, frames, affine, *, echo_times=None, components=None):
    """One Enhanced MR Image Storage file: frames[(kind, d)] -> 2D array, per-frame geometry and kind."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    lps = affine[:3] * LPS[:, None]
    steps = np.linalg.norm(lps[:, :3], axis=0)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.SeriesInstanceUID, ds.StudyInstanceUID = "2.25.515", "2.25.516"
    ds.Modality, ds.Manufacturer, ds.SeriesNumber = "MR", "medstack", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "MIXED", "NONE"]
    keys = list(frames)
    first = frames[keys[0]]
    ds.Rows, ds.Columns = first.shape
    ds.NumberOfFrames = len(keys)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in (*(lps[:, 0] / steps[0]), *(lps[:, 1] / steps[1]))]
    shared.PlaneOrientationSequence = Sequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [f"{steps[1]:.6f}", f"{steps[0]:.6f}"]
    measures.SliceThickness = f"{steps[2]:.6f}"
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for kind, d in keys:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in lps[:, 3] + d * lps[:, 2]]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = d + 1
        item.FrameContentSequence = Sequence([content])
        if echo_times is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = echo_times[kind]
            item.MREchoSequence = Sequence([echo])
        if components is not None:
            ftype = Dataset()
            ftype.FrameType = ["ORIGINAL", "PRIMARY", components[kind][0], "NONE"]
            ftype.ComplexImageComponent = components[kind]
            item.MRImageFrameTypeSequence = Sequence([ftype])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack([frames[k] for k in keys]).astype("<i2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("what", ["echoes", "components"])
def test_enhanced_multi_kind_export_loads_as_the_same_named_channels(tmp_path, what):
    truth, affine = _truth((4, 8, 8), "LAS")
    rng = np.random.default_rng(1)
    order = [(k, d) for d in rng.permutation(4) for k in rng.permutation(2)]  # frames in no useful order
    frames = {(k, int(d)): truth[d] + 100 * (k + 1) for k, d in order}
    if what == "echoes":
        _enhanced_mr(tmp_path / "enh.dcm", frames, affine, echo_times={0: 12.0, 1: 4.0})
        names = ["e1", "e2"]  # by echo time: 4 ms first
        expected = [truth + 200, truth + 100]
    else:
        _enhanced_mr(tmp_path / "enh.dcm", frames, affine, components={0: "PHASE", 1: "MAGNITUDE"})
        names = ["magnitude", "phase"]
        expected = [truth + 200, truth + 100]
    vol = medstack.load(tmp_path)
    assert vol.metadata["channel_names"] == names
    for c in range(2):
        _assert_world_equal(vol.replace(data=vol.data[c : c + 1]), expected[c], affine)
    sel = medstack.load(tmp_path, echo=2) if what == "echoes" else medstack.load(tmp_path, image_type="phase")
    _assert_world_equal(sel, expected[1], affine)


def test_two_copies_of_one_series_are_refused_not_stacked_as_time_points(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")
    write_dicom_series(truth, tmp_path / "a", affine=affine, series_uid="2.25.31", modality="MR", rescale_intercept=0)
    write_dicom_series(truth, tmp_path / "b", affine=affine, series_uid="2.25.31", modality="MR", rescale_intercept=0,
                       file_prefix="copy")  # re-exported copy: new SOPInstanceUIDs, same everything else
    with pytest.raises(DicomError, match="cannot be told"):
        medstack.load(tmp_path)


def test_echoes_with_one_echo_number_are_named_by_echo_time(tmp_path):
    truth, affine = _truth((3, 8, 8), "LPS")
    _kind_series(tmp_path, truth, affine, [
        ({"EchoNumbers": 1, "EchoTime": "9.8"}, 20),
        ({"EchoNumbers": 1, "EchoTime": "4.9"}, 10),
    ])  # fmt: skip
    vol = medstack.load(tmp_path)
    assert vol.metadata["channel_names"] == ["e1", "e2"] and vol.metadata["echo_times_ms"] == [4.9, 9.8]
    _assert_world_equal(vol.replace(data=vol.data[1:]), truth + 20, affine)
    _assert_world_equal(medstack.load(tmp_path, echo=2), truth + 20, affine)
