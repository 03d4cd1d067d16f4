"""DICOM SEG / RTSTRUCT: world-correct mapping onto the annotated image, writing SEG, pairing, study -> cases.

Expected masks are computed from the RAS world coordinates of the reference voxel centres (affine @ index),
never from the frame or file order, and the reference is often a *reoriented* copy of the DICOM grid, so a
reader that maps by frame order, forgets LPS -> RAS or swaps rows and columns fails voxel by voxel.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import medstack
from medstack import geometry
from medstack.errors import DicomError, GeometryError, OutputExistsError
from medstack.io import dicom
from medstack.io.dicom._annotation_grid import fill_even_odd
from medstack.io.dicom.annotations import (
    ANNOTATION_SOP_CLASSES,
    RTSTRUCT_SOP_CLASS,
    annotation_kind,
    describe_annotation,
    find_annotations,
    pair_annotations,
    read_rtstruct,
    read_seg,
    write_seg,
)
from medstack.testing import axis_code_affine, center_affine, phantom, random_affine, write_dicom_series

# optional packages: the module still collects (and skips) on machines without them
pydicom = pytest.importorskip("pydicom")
Dataset, FileMetaDataset = pydicom.dataset.Dataset, pydicom.dataset.FileMetaDataset
DicomSequence = pydicom.sequence.Sequence
ExplicitVRLittleEndian, generate_uid = pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.generate_uid

GRIDS = {  # name: ((D, H, W), affine); odd sizes so packed 1-bit frames share bytes
    "axial": ((6, 12, 13), center_affine(axis_code_affine("LPS", (0.8, 0.7, 2.0)), (6, 12, 13), (3.0, -2.0, 5.0))),
    "sagittal": ((5, 13, 11), center_affine(axis_code_affine("PIR", (0.9, 1.1, 1.5)), (5, 13, 11), (1.0, 2.0, 0.0))),
    "oblique": ((6, 11, 12), center_affine(random_affine(np.random.default_rng(7), spacing_range=(0.8, 1.6)),
                                           (6, 11, 12), (-4.0, 1.0, 2.0))),
}  # fmt: skip


def _centres(affine, shape) -> np.ndarray:
    """RAS mm of every voxel centre, (D, H, W, 3)."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([w, h, d], axis=-1) @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _frame(affine):
    """Unit in-plane axes e1 (along i), e2 (along j), the unit normal and the spacings of a DICOM-style grid."""
    a = np.asarray(affine)[:3, :3]
    sp = np.linalg.norm(a, axis=0)
    e1, e2 = a[:, 0] / sp[0], a[:, 1] / sp[1]
    return e1, e2, np.cross(e1, e2), sp


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """name -> (files in slice order, Volume loaded from them), one DICOM series per grid, shuffled file names."""
    out = {}
    for n, (name, (shape, affine)) in enumerate(GRIDS.items()):
        folder = tmp_path_factory.mktemp(name)
        files = write_dicom_series(phantom(shape, affine), folder, shuffle_names=True, series_number=n + 1,
                                   series_description=name)  # fmt: skip
        out[name] = ([str(f) for f in files], dicom.load(folder))
    return out


# -- world-space ground truth -------------------------------------------------------------------------------


def _seg_truth(dicom_affine, shape):
    """Two world-space shapes on the DICOM grid: an ellipsoid, and a box that spans only slices 1-2."""
    e1, e2, n, sp = _frame(dicom_affine)
    c = np.asarray(dicom_affine)[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2) + np.asarray(dicom_affine)[:3, 3]
    c1 = c + 0.37 * sp[0] * e1 - 0.21 * sp[1] * e2
    radii = np.array([3.3 * sp[0], 2.7 * sp[1], 1.6 * sp[2]])

    def masks(world):
        rel = world - c1
        local = np.stack([rel @ e1, rel @ e2, rel @ n], axis=-1)
        ellipsoid = np.sum((local / radii) ** 2, axis=-1) < 1.0
        rel0 = world - np.asarray(dicom_affine)[:3, 3]
        along = rel0 @ n  # distance along the normal from slice 0
        step = abs(np.asarray(dicom_affine)[:3, 2] @ n)
        slices = np.sign(np.asarray(dicom_affine)[:3, 2] @ n) * along / step  # fractional slice index
        box = (np.abs((world - c) @ e1) < 2.2 * sp[0]) & (np.abs((world - c) @ e2 + 1.1 * sp[1]) < 3.37 * sp[1])
        box &= (slices > 0.5) & (slices < 2.5)
        return np.stack([ellipsoid, box])

    return masks


def _write_seg(files, masks_dhw, path, *, fractional=None, labelmap=False, shuffle=True, names=("organ", "box")):
    """A highdicom SEG of the series ``files`` (slice order), frames then shuffled (order must not matter)."""
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    src = [pydicom.dcmread(f) for f in files]
    if labelmap:
        pixel, kind = masks_dhw.astype(np.uint8), "LABELMAP"
        n_seg = int(masks_dhw.max())
    elif fractional is not None:
        pixel, kind, n_seg = np.moveaxis(fractional, 0, -1).astype(np.float32), "FRACTIONAL", fractional.shape[0]
    else:
        pixel, kind, n_seg = np.moveaxis(masks_dhw, 0, -1).astype(np.uint8), "BINARY", masks_dhw.shape[0]
    descriptions = [
        hd.seg.SegmentDescription(segment_number=i + 1, segment_label=names[i], segmented_property_category=codes.SCT.Tissue,
                                  segmented_property_type=codes.SCT.Tissue, algorithm_type="MANUAL")
        for i in range(n_seg)
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=src, pixel_array=pixel, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )  # fmt: skip
    seg.save_as(path)
    if shuffle:
        _shuffle_frames(path)
    return path


def _shuffle_frames(path, seed=3):
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    frames = ds.pixel_array.reshape(n, ds.Rows, ds.Columns)
    perm = np.random.default_rng(seed).permutation(n)
    if n > 1 and np.all(perm == np.arange(n)):
        perm = perm[::-1]
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([ds.PerFrameFunctionalGroupsSequence[i] for i in perm])
    if ds.BitsAllocated == 1:
        from pydicom.pixels import pack_bits

        ds.PixelData = pack_bits(frames[perm].ravel())
    else:
        ds.PixelData = frames[perm].astype(np.uint8 if ds.BitsAllocated == 8 else np.uint16).tobytes()
    ds.save_as(path)


def _rt_square(dicom_affine, shape, d, *, outer=0.36, angle=20.0, shift=(0.23, -0.17)):
    """An outer rotated square and a rotated square hole on slice ``d``; returns (contours LPS, inside(world))."""
    e1, e2, n, sp = _frame(dicom_affine)
    a = np.asarray(dicom_affine)
    c = a[:3, :3] @ np.array([(shape[2] - 1) / 2 + shift[0], (shape[1] - 1) / 2 + shift[1], d]) + a[:3, 3]
    h = outer * min(shape[2] * sp[0], shape[1] * sp[1])
    hole_c, hole_h, hole_angle = c + 0.1 * h * e1, 0.45 * h, -10.0

    def square(centre, half, deg):
        t = np.radians(deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half @ rot.T
        return centre + local[:, :1] * e1 + local[:, 1:] * e2

    def inside_square(world, centre, half, deg):
        rel = world - centre
        t = np.radians(deg)
        x, y = rel @ e1, rel @ e2
        xr, yr = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y
        return (np.abs(xr) < half) & (np.abs(yr) < half)

    def inside(world):
        on_plane = np.abs((world - c) @ n) < 1e-3 * sp[2]
        return on_plane & inside_square(world, c, h, angle) & ~inside_square(world, hole_c, hole_h, hole_angle)

    lps = np.array([-1.0, -1.0, 1.0])
    return [square(c, h, angle) * lps, square(hole_c, hole_h, hole_angle)[::-1] * lps], inside


def _write_rtstruct(path, files, rois):
    """A minimal RT Structure Set; ``rois``: [(number, name, [(type, points LPS (n, 3)), ...]), ...]."""
    ref = pydicom.dcmread(files[0], stop_before_pixels=True)
    ds = Dataset()
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ref.StudyInstanceUID, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.StructureSetLabel = "RTSTRUCT", 400, "GT"
    ds.PatientName = ds.PatientID = ref.PatientID
    image = Dataset()
    image.SeriesInstanceUID = ref.SeriesInstanceUID
    image.ContourImageSequence = DicomSequence([Dataset() for _ in files])
    for item, f in zip(image.ContourImageSequence, files):
        h = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"])
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([image])
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = DicomSequence(), DicomSequence()
    for number, name, contours in rois:
        r = Dataset()
        r.ROINumber, r.ROIName, r.ROIGenerationAlgorithm = number, name, "MANUAL"
        r.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        ds.StructureSetROISequence.append(r)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, [255, 0, 0]
        rc.ContourSequence = DicomSequence()
        for kind, pts in contours:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = kind, len(pts)
            c.ContourData = [f"{v:.10g}" for v in np.asarray(pts).ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


# -- SEG ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", list(GRIDS))
def test_read_seg_maps_shuffled_frames_by_world_position(series, grid, tmp_path):
    files, vol = series[grid]
    shape = vol.spatial_shape
    truth = _seg_truth(vol.affine, shape)
    masks = truth(_centres(vol.affine, shape))
    assert masks[0].any() and masks[1].any() and not masks[1][0].any()  # the box misses slice 0
    seg = _write_seg(files, masks, tmp_path / "seg.dcm")
    # reference: the series folder, the loaded volume, a reoriented copy
    for reference in (str(Path(files[0]).parent), vol, vol.reoriented("RAS")):
        ref = reference if isinstance(reference, medstack.Volume) else vol
        out = read_seg(seg, reference)
        assert out.shape == (2, *ref.spatial_shape) and out.dtype == np.uint8
        np.testing.assert_array_equal(out.affine, ref.affine)
        expected = truth(_centres(ref.affine, ref.spatial_shape)).astype(np.uint8)
        np.testing.assert_array_equal(out.to_numpy(), expected)
    assert out.metadata["segment_names"] == ["organ", "box"] and out.metadata["segment_numbers"] == [1, 2]
    assert out.metadata["channel_names"] == ["organ", "box"] and out.metadata["format"] == "dicom-seg"
    assert out.metadata["referenced_series_uid"] == vol.metadata["series_uid"]


def test_read_seg_reference_folder_with_the_seg_inside(series, tmp_path):
    files, vol = series["axial"]
    import shutil

    folder = tmp_path / "study"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder)
    masks = _seg_truth(vol.affine, vol.spatial_shape)(_centres(vol.affine, vol.spatial_shape))
    seg = _write_seg(files, masks, folder / "zz_seg.dcm")
    out = read_seg(seg, folder)
    np.testing.assert_array_equal(out.to_numpy(), masks.astype(np.uint8))
    out = read_seg(seg, sorted(str(p) for p in folder.iterdir()))  # a file list holding the SEG as well
    np.testing.assert_array_equal(out.to_numpy(), masks.astype(np.uint8))
    # scan: the SEG is no image series; it is paired with the series it annotates
    found = medstack.io.dicom.scan(folder)
    assert len(found) == 1 and [a.path for a in found[0].annotations] == [str(seg)]
    assert found[0].summary()["annotations"][0]["kind"] == "SEG"
    assert any(f.kind == "annotation" for f in found[0].findings)
    assert medstack.load(folder).shape == vol.shape  # the SEG never joins the image volume


def test_read_seg_as_labels_on_a_reoriented_grid(series, tmp_path):
    files, vol = series["oblique"]
    masks = _seg_truth(vol.affine, vol.spatial_shape)(_centres(vol.affine, vol.spatial_shape))
    disjoint = np.stack([masks[0] & ~masks[1], masks[1]])
    seg = _write_seg(files, disjoint, tmp_path / "disjoint.dcm")
    ref = vol.reoriented("LAS")
    labels = read_seg(seg, ref, as_labels=True)
    truth = _seg_truth(vol.affine, vol.spatial_shape)(_centres(ref.affine, ref.spatial_shape))
    expected = np.where(truth[1], 2, np.where(truth[0], 1, 0)).astype(np.uint8)
    assert labels.dtype == np.uint8 and labels.metadata["channel_names"] == ["labels"]
    np.testing.assert_array_equal(labels.to_numpy()[0], expected)


def test_read_seg_overlap_is_refused_as_labels(series, tmp_path):
    files, vol = series["axial"]
    masks = np.zeros((2, *vol.spatial_shape), bool)
    masks[0, 1:4, 2:8, 3:9] = True
    masks[1, 2:5, 5:10, 6:12] = True
    seg = _write_seg(files, masks, tmp_path / "overlap.dcm")
    np.testing.assert_array_equal(read_seg(seg, vol).to_numpy(), masks.astype(np.uint8))
    with pytest.raises(DicomError, match=r"segments overlap in 18 voxel\(s\) \('organ' \(1\) and 'box' \(2\)\).*as_labels=False"):
        read_seg(seg, vol, as_labels=True)


def test_read_seg_fractional(series, tmp_path):
    files, vol = series["sagittal"]
    world = _centres(vol.affine, vol.spatial_shape)
    centre = world.reshape(-1, 3).mean(axis=0)
    prob = np.clip(1.2 - np.linalg.norm(world - centre, axis=-1) / 5.0, 0, 1).astype(np.float32)
    seg = _write_seg(files, None, tmp_path / "frac.dcm", fractional=prob[None], names=("p",))
    ref = vol.reoriented("RAS")
    out = read_seg(seg, ref)
    assert out.dtype == np.float32 and out.shape == (1, *ref.spatial_shape)
    assert out.metadata["segmentation_type"] == "FRACTIONAL"
    c_ref = _centres(ref.affine, ref.spatial_shape)
    expected = np.clip(1.2 - np.linalg.norm(c_ref - centre, axis=-1) / 5.0, 0, 1)
    np.testing.assert_allclose(out.to_numpy()[0], expected, atol=0.5 / 255 + 1e-6)
    assert out.to_numpy().max() == 1.0 and (out.to_numpy()[0][expected == 0] == 0).all()
    with pytest.raises(DicomError, match="FRACTIONAL"):
        read_seg(seg, vol, as_labels=True)


def test_read_labelmap_seg(series, tmp_path):
    hd = pytest.importorskip("highdicom")
    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        pytest.skip("this highdicom cannot write LABELMAP segmentations")
    files, vol = series["axial"]
    label = np.zeros(vol.spatial_shape, np.uint8)
    label[1:3, 2:6, 3:9] = 1
    label[4, 5:9, 1:4] = 2
    seg = _write_seg(files, label, tmp_path / "lm.dcm", labelmap=True, shuffle=False)
    assert annotation_kind(seg) == "SEG"
    np.testing.assert_array_equal(read_seg(seg, vol, as_labels=True).to_numpy()[0], label)
    np.testing.assert_array_equal(read_seg(seg, vol).to_numpy(), np.stack([label == 1, label == 2]).astype(np.uint8))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shift", r"frame \d+ is not on the reference grid: it lies 0\.3 voxel .* off the nearest reference plane"),
        ("spacing", r"frame \d+ is not on the reference grid: pixel spacing differs: 0\.77 x 0\.8"),
        ("rotate", r"frame \d+ is not on the reference grid: in-plane orientation differs"),
    ],
)
def test_read_seg_refuses_frames_off_the_grid(series, tmp_path, change, message):
    files, vol = series["axial"]
    masks = _seg_truth(vol.affine, vol.spatial_shape)(_centres(vol.affine, vol.spatial_shape))
    seg = _write_seg(files, masks, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(seg)
    if change == "shift":  # one frame, 0.3 slice along the normal (z in LPS for this axial grid)
        pos = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
        pos.ImagePositionPatient = [pos.ImagePositionPatient[0], pos.ImagePositionPatient[1],
                                    float(pos.ImagePositionPatient[2]) + 0.6]  # fmt: skip
    elif change == "spacing":
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.77, 0.8]
    else:
        t = np.radians(2.0)
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [
            np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0]
    ds.save_as(seg)
    with pytest.raises(DicomError, match=message) as info:
        read_seg(seg, vol)
    assert str(seg) in str(info.value)


def test_annotations_beyond_the_reference_are_refused(series, tmp_path):
    files, vol = series["axial"]
    masks = _seg_truth(vol.affine, vol.spatial_shape)(_centres(vol.affine, vol.spatial_shape))
    seg = _write_seg(files, masks, tmp_path / "seg.dcm")
    cropped = vol.replace(data=vol.to_numpy()[:, 2:], affine=geometry.box_affine(vol.affine, (2, 0, 0)))
    with pytest.raises(DicomError, match=r"frame \d+ \(segment \d\): \d+ nonzero pixel\(s\) fall outside the reference"):
        read_seg(seg, cropped)
    tail = vol.replace(data=vol.to_numpy()[:, :, :, 1:], affine=geometry.box_affine(vol.affine, (0, 0, 1)))
    np.testing.assert_array_equal(read_seg(seg, tail).to_numpy(), masks[:, :, :, 1:])  # only zeros were cut
    contours, _ = _rt_square(vol.affine, vol.spatial_shape, 1)
    rt = _write_rtstruct(tmp_path / "rt.dcm", files, [(1, "GTV", [("CLOSED_PLANAR", p) for p in contours])])
    with pytest.raises(DicomError, match=r"contour 1 lies on plane -1 of axis k .* outside the reference image"):
        read_rtstruct(rt, cropped)


def test_write_seg_round_trip(series, tmp_path):
    pytest.importorskip("highdicom")
    for grid in ("oblique", "sagittal"):
        files, vol = series[grid]
        label = np.zeros(vol.spatial_shape, np.uint8)
        label[1:4, 2:7, 3:9] = 1
        label[3:5, 6:10, 1:5] = 3  # value 2 absent: an empty segment 2 keeps values = segment numbers
        lab = medstack.Volume(label[None], vol.affine)
        out = write_seg(lab, files, tmp_path / f"{grid}.dcm", segment_names={1: "liver", 3: "lesion"})
        info = describe_annotation(out)
        assert info.kind == "SEG" and info.names == ("liver", "label 2", "lesion") and info.numbers == (1, 2, 3)
        assert info.referenced_series_uids == (vol.metadata["series_uid"],)
        back = read_seg(out, files, as_labels=True)
        np.testing.assert_array_equal(back.to_numpy()[0], label)
        np.testing.assert_array_equal(back.affine, vol.affine)
        # and onto a reoriented reference: the same voxels, moved with the grid
        ref = vol.reoriented("RAS")
        moved = read_seg(out, ref, as_labels=True)
        np.testing.assert_array_equal(moved.to_numpy(), lab.reoriented("RAS").to_numpy())
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_seg(lab, files, out)
    write_seg(lab, files, out, overwrite=True)
    shifted = medstack.Volume(label[None], vol.affine + _shift(0.5))
    with pytest.raises(GeometryError, match="not the grid of the reference series"):
        write_seg(shifted, files, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()
    with pytest.raises(DicomError, match="no nonzero voxel"):
        write_seg(medstack.Volume(np.zeros((1, *vol.spatial_shape), np.uint8), vol.affine), files, tmp_path / "e.dcm")


def _shift(mm):
    s = np.zeros((4, 4))
    s[0, 3] = mm
    return s


# -- RTSTRUCT -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", list(GRIDS))
def test_read_rtstruct_square_with_hole_world_correct(series, grid, tmp_path, caplog):
    files, vol = series[grid]
    shape = vol.spatial_shape
    tumour, inside1 = _rt_square(vol.affine, shape, 1)
    tumour2, inside3 = _rt_square(vol.affine, shape, 3, outer=0.3, angle=-35.0, shift=(-0.4, 0.31))
    point = tumour[0][:1]
    rt = _write_rtstruct(tmp_path / "rt.dcm", files, [
        (7, "GTV", [("CLOSED_PLANAR", p) for p in tumour] + [("POINT", point)]),
        (2, "ring", [("CLOSED_PLANAR", p) for p in tumour2]),
    ])  # fmt: skip
    for ref in (vol, vol.reoriented("RAS"), vol.reoriented("SPL")):
        with caplog.at_level("INFO", logger="medstack.io.dicom.annotations"):
            out = read_rtstruct(rt, ref)
        assert "ROI 7 'GTV': 1 POINT contour(s) ignored" in caplog.text
        assert out.shape == (2, *ref.spatial_shape) and out.dtype == np.uint8
        world = _centres(ref.affine, ref.spatial_shape)
        np.testing.assert_array_equal(out.to_numpy()[0], inside1(world).astype(np.uint8))
        np.testing.assert_array_equal(out.to_numpy()[1], inside3(world).astype(np.uint8))
        assert 5 < out.to_numpy()[0].sum() < inside1(world).size  # a real shape with a hole, not empty/full
    assert out.metadata["roi_names"] == ["GTV", "ring"] and out.metadata["roi_numbers"] == [7, 2]
    assert out.metadata["channel_names"] == ["GTV", "ring"]
    # selection by name and number, label map of the ROI numbers
    only = read_rtstruct(rt, vol, roi="ring")
    assert only.metadata["roi_numbers"] == [2]
    np.testing.assert_array_equal(only.to_numpy()[0], read_rtstruct(rt, vol, roi=2).to_numpy()[0])
    labels = read_rtstruct(rt, vol, as_labels=True).to_numpy()[0]
    world = _centres(vol.affine, shape)
    np.testing.assert_array_equal(labels, np.where(inside1(world), 7, np.where(inside3(world), 2, 0)))
    with pytest.raises(DicomError, match=r"no ROI 'CTV'.*7: 'GTV', 2: 'ring'"):
        read_rtstruct(rt, vol, roi="CTV")


def test_read_rtstruct_the_hole_is_a_hole(series, tmp_path):
    files, vol = series["axial"]
    contours, _ = _rt_square(vol.affine, vol.spatial_shape, 2)
    rt_outer = _write_rtstruct(tmp_path / "a.dcm", files, [(1, "outer", [("CLOSED_PLANAR", contours[0])])])
    rt_both = _write_rtstruct(tmp_path / "b.dcm", files, [(1, "ring", [("CLOSED_PLANAR", p) for p in contours])])
    outer = read_rtstruct(rt_outer, vol).to_numpy()[0]
    ring = read_rtstruct(rt_both, vol).to_numpy()[0]
    assert ring.sum() < outer.sum() and not np.any(ring & ~outer)  # even-odd: the inner square is removed


@pytest.mark.parametrize(("how", "message"), [("off", "between reference planes 1 and 2"), ("tilt", "oblique")])
def test_read_rtstruct_refuses_contours_off_the_slices(series, tmp_path, how, message):
    files, vol = series["oblique"]
    contours, _ = _rt_square(vol.affine, vol.spatial_shape, 1)
    _, _, n, sp = _frame(vol.affine)
    lps = np.array([-1.0, -1.0, 1.0])
    pts = contours[0].copy()
    if how == "off":
        pts = pts + 0.4 * sp[2] * n * lps * np.sign(np.asarray(vol.affine)[:3, 2] @ n)
    else:
        pts[0] = pts[0] + 0.5 * sp[2] * n * lps
    rt = _write_rtstruct(tmp_path / "rt.dcm", files, [(1, "bad", [("CLOSED_PLANAR", pts)])])
    with pytest.raises(DicomError, match=rf"ROI 1 'bad' contour 1 is not on a slice.*{message}"):
        read_rtstruct(rt, vol)


def test_fill_even_odd_matches_matplotlib_at_pixel_centres():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(5)
    ny, nx = 40, 50
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    for _ in range(10):
        polys, expected = [], np.zeros(ny * nx, bool)
        for _ in range(rng.integers(1, 4)):  # star-shaped polygons, partly outside the grid, XOR-combined
            n = rng.integers(3, 12)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(3, 25, n)
            centre = rng.uniform([-5, -5], [nx + 5, ny + 5])
            poly = centre + np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
            polys.append(poly)
            expected ^= MplPath(poly).contains_points(centres)
        np.testing.assert_array_equal(fill_even_odd(polys, (ny, nx)), expected.reshape(ny, nx))


# -- discovery, pairing, study -> cases ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One folder, one study: two image series, a SEG on series 2, an RTSTRUCT on series 1, and clutter."""
    pytest.importorskip("highdicom")
    folder = tmp_path_factory.mktemp("study")
    study_uid = generate_uid(entropy_srcs=["medstack-annotations-study"])
    (s1_shape, s1_aff), (s2_shape, s2_aff) = GRIDS["axial"], GRIDS["oblique"]
    f1 = write_dicom_series(phantom(s1_shape, s1_aff), folder, study_uid=study_uid, series_number=1,
                            series_description="ct", file_prefix="a_", shuffle_names=True)  # fmt: skip
    f2 = write_dicom_series(phantom(s2_shape, s2_aff, seed=1), folder, study_uid=study_uid, series_number=2,
                            series_description="ct oblique", file_prefix="b_")  # fmt: skip
    f1, f2 = [str(f) for f in f1], [str(f) for f in f2]
    vol2 = dicom.load(f2)
    label = np.zeros(vol2.spatial_shape, np.uint8)
    label[1:4, 3:8, 2:9] = 1
    label[4, 2:5, 2:5] = 2
    seg = write_seg(medstack.Volume(label[None], vol2.affine), f2, folder / "seg_on_2.dcm")
    vol1 = dicom.load(f1)
    contours, _ = _rt_square(vol1.affine, vol1.spatial_shape, 2)
    rt = _write_rtstruct(folder / "rt_on_1.dcm", f1, [(1, "GTV", [("CLOSED_PLANAR", p) for p in contours])])
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "junk.bin").write_bytes(b"\x00" * 300)
    return {"folder": folder, "f1": f1, "f2": f2, "seg": str(seg), "rt": str(rt), "label": label, "vol2": vol2}


def test_find_and_describe_annotations(study):
    found = find_annotations(study["folder"])
    assert sorted((a.kind, Path(a.path).name) for a in found) == [("RTSTRUCT", "rt_on_1.dcm"), ("SEG", "seg_on_2.dcm")]
    seg = next(a for a in found if a.kind == "SEG")
    rt = next(a for a in found if a.kind == "RTSTRUCT")
    h2 = pydicom.dcmread(study["f2"][0], stop_before_pixels=True)
    assert seg.referenced_series_uids == (h2.SeriesInstanceUID,) and seg.frame_of_reference_uid == h2.FrameOfReferenceUID
    assert seg.segmentation_type == "BINARY" and seg.numbers == (1, 2)
    assert set(seg.referenced_sop_instance_uids) <= {pydicom.dcmread(f).SOPInstanceUID for f in study["f2"]}
    assert rt.names == ("GTV",) and rt.numbers == (1,) and len(rt.referenced_sop_instance_uids) == len(study["f1"])
    text = json.dumps([a.summary() for a in found])
    assert "MEDSTACK^PHANTOM" not in text and str(study["folder"]) not in text
    assert annotation_kind(study["folder"] / "notes.txt") is None and annotation_kind(study["f1"][0]) is None
    assert set(ANNOTATION_SOP_CLASSES.values()) == {"SEG", "RTSTRUCT"}
    with pytest.raises(DicomError, match="is not a DICOM SEG or RTSTRUCT"):
        describe_annotation(study["f1"][0])


def test_pair_annotations_by_referenced_series_then_frame_of_reference(study):
    series = dicom.scan(study["folder"])
    found = find_annotations(study["folder"])
    images = {s.series_number: s for s in series if s.modality == "CT"}
    pairing = pair_annotations(series, found)
    by_kind = {a.kind: a.sop_instance_uid for a in found}
    assert pairing[by_kind["SEG"]].series_uid == images[2].series_uid
    assert pairing[by_kind["RTSTRUCT"]].series_uid == images[1].series_uid
    assert not pairing.unpaired
    # without references only the frame of reference is left: both series share it -> not paired, with a reason
    bare = [dataclasses.replace(a, referenced_series_uids=(), referenced_sop_instance_uids=()) for a in found]
    pairing = pair_annotations(series, bare)
    assert not pairing and set(pairing.unpaired) == set(by_kind.values())
    assert all("2 image series share FrameOfReferenceUID" in r for r in pairing.unpaired.values())
    only_one = pair_annotations([images[2]], bare)
    assert {s.series_uid for s in only_one.values()} == {images[2].series_uid}


def test_cases_from_dicom_study_and_prepare(study, tmp_path):
    import h5py

    from medstack.data import cases_from_dicom_study, prepare

    folder = tmp_path / "two_series_one_seg"
    folder.mkdir()
    import shutil

    for f in [*study["f1"], *study["f2"], study["seg"]]:
        shutil.copy(f, folder)
    cases = cases_from_dicom_study(folder)
    assert len(cases) == 1
    case = cases[0]
    assert sorted(Path(f).name for f in case["image"][0]) == sorted(Path(f).name for f in study["f2"])
    assert Path(case["label"]).name == "seg_on_2.dcm"
    manifest = prepare(cases, tmp_path / "out", workers=1)
    entry = json.loads(manifest.read_text())["cases"][0]
    with h5py.File(tmp_path / "out" / entry["file"]) as f:
        label = f["volumes/label/data"][()]
        affine = f["volumes/label"].attrs["affine"]
    np.testing.assert_array_equal(label[0], study["label"])
    np.testing.assert_allclose(affine, study["vol2"].affine, atol=1e-9)
    assert entry["classes"] == {"0": int((study["label"] == 0).sum()), "1": int((study["label"] == 1).sum()),
                                "2": int((study["label"] == 2).sum())}  # fmt: skip
