import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medstack import geometry
from medstack.errors import GeometryError
from medstack.testing import axis_code_affine, random_affine

ALL_CODES = [
    "".join(letters)
    for perm in itertools.permutations(range(3))
    for letters in itertools.product(*[("LR", "PA", "IS")[p] for p in perm])
]


def test_there_are_48_codes():
    assert len(set(ALL_CODES)) == 48


def affines(oblique=True):
    return st.integers(0, 2**32 - 1).map(lambda s: random_affine(np.random.default_rng(s), oblique=oblique))


@settings(max_examples=60, deadline=None)
@given(affines(), st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_voxel_world_round_trip(affine, point):
    world = geometry.voxel_to_world(affine, point)
    np.testing.assert_allclose(geometry.world_to_voxel(affine, world), point, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(affines())
def test_lps_ras_is_an_involution_flipping_x_and_y(affine):
    lps = geometry.ras_to_lps(affine)
    np.testing.assert_array_equal(geometry.lps_to_ras(lps), affine)
    np.testing.assert_array_equal(lps[:2], -affine[:2])
    np.testing.assert_array_equal(lps[2:], affine[2:])


@settings(max_examples=60, deadline=None)
@given(affines())
def test_spacing_direction_origin_rebuild_the_affine(affine):
    rebuilt = np.eye(4)
    rebuilt[:3, :3] = geometry.direction(affine) * geometry.spacing(affine)
    rebuilt[:3, 3] = geometry.origin(affine)
    np.testing.assert_allclose(rebuilt, affine, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(geometry.direction(affine), axis=0), 1.0)


@settings(max_examples=60, deadline=None)
@given(affines(oblique=False))
def test_axcodes_of_axis_aligned_affines_match_nibabel(affine):
    import nibabel as nib

    assert geometry.axcodes(affine) == "".join(nib.aff2axcodes(affine))


@pytest.mark.parametrize("code", ALL_CODES)
def test_axis_code_affine_has_its_code(code):
    assert geometry.axcodes(axis_code_affine(code)) == code


@settings(max_examples=40, deadline=None)
@given(affines(), st.sampled_from(ALL_CODES))
def test_reorientation_keeps_voxel_world_positions(affine, code):
    shape_ijk = (5, 6, 7)
    perm, flip, new = geometry.reorientation(affine, shape_ijk, code)
    assert geometry.axcodes(new) == code
    new_shape = [shape_ijk[p] for p in perm]
    # a new voxel index maps to the old index with the same world position
    for new_idx in itertools.product(*[(0, n - 1) for n in new_shape]):
        old_idx = [
            (shape_ijk[perm[n]] - 1 - new_idx[n]) if flip[n] else new_idx[n] for n in range(3)
        ]
        reordered = np.zeros(3)
        for n in range(3):
            reordered[perm[n]] = old_idx[n]
        np.testing.assert_allclose(
            geometry.voxel_to_world(new, new_idx), geometry.voxel_to_world(affine, reordered), atol=1e-9
        )


def test_dhw_ijk_round_trip():
    assert geometry.ijk_to_dhw((1, 2, 3)) == (3, 2, 1)
    assert geometry.dhw_to_ijk(geometry.ijk_to_dhw((1, 2, 3))) == (1, 2, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4)), "bottom row"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.eye(3), "4x4"),
        ("abc", "numeric"),
    ],
)
def test_check_affine_rejects_bad_affines(bad, match):
    with pytest.raises(GeometryError, match=match):
        geometry.check_affine(bad)


def test_check_affine_returns_read_only_copy():
    a = np.eye(4)
    b = geometry.check_affine(a)
    assert b is not a and b.dtype == np.float64 and not b.flags.writeable


@pytest.mark.parametrize("code", ["RA", "RAX", "RRS", "LPL"])
def test_bad_codes(code):
    with pytest.raises(GeometryError, match="orientation code"):
        geometry.reorientation(np.eye(4), (2, 2, 2), code)


def test_box_affine_maps_box_voxels_onto_the_same_world_points():
    rng = np.random.default_rng(7)
    affine = random_affine(rng)
    start = (3, -2, 5)  # (d, h, w); boxes may start outside the grid (padded patches)
    box = geometry.box_affine(affine, start)
    ijk = rng.integers(0, 10, size=(20, 3))
    np.testing.assert_allclose(geometry.voxel_to_world(box, ijk),
                               geometry.voxel_to_world(affine, ijk + np.array(start[::-1])), atol=1e-9)  # fmt: skip
    np.testing.assert_array_equal(box[:3, :3], affine[:3, :3])


# -- spatial triples: the axis order made explicit (issue: axis-order traps) -------------------------------------


def test_as_dhw_accepts_every_explicit_form():
    from medstack.geometry import DHW, XYZ, as_dhw

    expected = (2.0, 1.5, 1.25)
    assert as_dhw((2, 1.5, 1.25)) == expected
    assert as_dhw(DHW(2, 1.5, 1.25)) == expected
    assert as_dhw(XYZ(1.25, 1.5, 2)) == expected
    assert as_dhw({"D": 2, "H": 1.5, "W": 1.25}) == expected
    assert as_dhw({"x": 1.25, "y": 1.5, "z": 2}) == expected
    assert as_dhw(3) == (3.0, 3.0, 3.0)
    assert as_dhw((4, 5, 6), integer=True) == (4, 5, 6)


@pytest.mark.parametrize("bad", [{"x": 1, "h": 2, "w": 3}, {"D": 1, "H": 2}, (1, 2), "abc", (1, 2, 3, 4)])
def test_as_dhw_refuses_ambiguous_forms(bad):
    from medstack import ArgumentError
    from medstack.geometry import as_dhw

    with pytest.raises(ArgumentError, match=r"\(D, H, W\)|D, H, W"):
        as_dhw(bad)


def test_monai_ordered_spacing_warns_and_explicit_forms_do_not():
    import warnings

    from medstack import resample
    from medstack.geometry import DHW, XYZ, AxisOrderWarning
    from medstack.testing import axis_code_affine, world_volume

    vol = world_volume((12, 20, 20), axis_code_affine("RAS", (0.7, 0.7, 2.5), (0, 0, 0)))  # slices coarsest
    assert isinstance(vol.spacing, DHW) and vol.spacing.d == pytest.approx(2.5)
    with pytest.warns(AxisOrderWarning, match=r"XYZ\(1.5, 1.5, 2.0\)"):
        wrong = resample(vol, spacing=(1.5, 1.5, 2.0))  # a MONAI pixdim copied as it is
    assert wrong.spacing == pytest.approx((1.5, 1.5, 2.0))  # still read as (D, H, W), as documented
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spacing in (XYZ(1.5, 1.5, 2.0), {"x": 1.5, "y": 1.5, "z": 2.0}, {"D": 2.0, "H": 1.5, "W": 1.5}):
            assert resample(vol, spacing=spacing).spacing == pytest.approx((2.0, 1.5, 1.5))
        resample(vol, spacing=(2.0, 1.5, 1.5))  # (D, H, W) with the slice step first: no warning
        resample(vol, spacing=DHW(1.5, 1.5, 2.0))  # named: the user means it
        resample(vol, spacing=vol.spacing)


def test_prepare_takes_named_spacing(tmp_path):
    import json

    from medstack.data import prepare
    from medstack.geometry import XYZ
    from medstack.testing import axis_code_affine, world_volume

    vol = world_volume((8, 10, 10), axis_code_affine("RAS", (1.0, 1.0, 3.0), (0, 0, 0)))
    manifest = prepare([{"id": "a", "image": vol}], tmp_path / "store", spacing=XYZ(2.0, 2.0, 4.0))
    entry = json.loads(manifest.read_text())["cases"][0]
    assert entry["spacing"] == pytest.approx([4.0, 2.0, 2.0])
