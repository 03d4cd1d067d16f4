"""Synthetic data with known geometry, for medstack's tests and for yours.

Everything here is deterministic: randomness comes from a ``numpy.random.Generator`` you pass in, or from
an integer ``seed``; global RNG state is never touched, and reruns write byte-identical files.

- Affines: :func:`random_affine`, :func:`axis_code_affine`, :func:`center_affine`.
- Oracles and phantoms: :func:`world_volume` (each voxel holds its own RAS position), :func:`phantom` and
  :func:`phantom_pair` (a CT/MR-like body whose anatomy is fixed in world space, so phantoms sampled on
  different grids overlay exactly).
- DICOM: :func:`write_dicom_series` (one single-frame file per slice, geometry from an affine) and
  :func:`write_localizer` (a small localizer series in another orientation, to make series selection matter).

Conventions are medstack's: data ``(C, D, H, W)``; ``affine`` maps voxel ``(i, j, k) = (w, h, d)`` to
RAS+ mm; DICOM tags are LPS+.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import pydicom

    from medstack.volume import Volume

__all__ = [
    "PHANTOM_LABELS",
    "assert_same_batches",
    "axis_code_affine",
    "center_affine",
    "phantom",
    "phantom_pair",
    "random_affine",
    "world_volume",
    "write_dicom_series",
    "write_localizer",
]

# -- loaders -------------------------------------------------------------------------------------------


def assert_same_batches(xs, ys) -> None:
    """Two loaders' batches are identical: same count (> 0), keys, case ids, and every tensor equal in value and
    dtype (no tolerance). For checking that loaders and worker counts give the same patches."""
    import torch

    xs, ys = list(xs), list(ys)
    assert len(xs) == len(ys) > 0, (len(xs), len(ys))
    for x, y in zip(xs, ys):
        assert set(x) == set(y) and x["case_id"] == y["case_id"]
        for k in x:
            if k != "case_id":
                assert x[k].dtype == y[k].dtype, k
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


# -- affines -------------------------------------------------------------------------------------------

_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def random_affine(
    rng: np.random.Generator,
    *,
    oblique: bool = True,
    spacing_range: tuple[float, float] = (0.5, 3.0),
    max_shear: float = 0.0,
) -> np.ndarray:
    """Draw a random voxel-to-RAS affine.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one used).
    oblique : bool
        If True, the direction matrix is uniform on O(3) (any rotation, either handedness).
        If False, it is a random signed permutation: every voxel axis points along a world axis.
    spacing_range : (float, float)
        Voxel sizes in mm along ``i, j, k`` are drawn uniformly from this range.
    max_shear : float
        Upper-triangular shear (dimensionless) drawn uniformly from ``[-max_shear, max_shear]``,
        applied in voxel space (0 gives an orthogonal grid, the only kind DICOM can describe).

    Returns
    -------
    numpy.ndarray
        4x4 float64 affine ``world = affine @ [i, j, k, 1]``, origin uniform in ``[-100, 100]`` mm.

    Examples
    --------
    >>> import numpy as np
    >>> a = random_affine(np.random.default_rng(0), oblique=False)
    >>> a.shape, a.dtype, bool(np.all((a[:3, :3] != 0).sum(axis=0) == 1))
    ((4, 4), dtype('float64'), True)
    """
    if oblique:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        direction = q * np.sign(np.diag(r))  # Haar-uniform on O(3)
    else:
        direction = np.zeros((3, 3))
        direction[rng.permutation(3), np.arange(3)] = rng.choice([-1.0, 1.0], size=3)
    spacing = rng.uniform(*spacing_range, size=3)
    shear = np.eye(3)
    if max_shear:
        shear[np.triu_indices(3, k=1)] = rng.uniform(-max_shear, max_shear, size=3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing) @ shear
    affine[:3, 3] = rng.uniform(-100.0, 100.0, size=3)
    return affine


def axis_code_affine(
    code: str, spacing: Sequence[float] = (1.0, 1.0, 1.0), origin: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Affine whose voxel axes ``i, j, k`` point along the world directions named by ``code``.

    Parameters
    ----------
    code : str
        Three letters, one per voxel axis ``i, j, k`` (= ``w, h, d``), each naming the direction the index
        increases towards: ``R``/``L``, ``A``/``P``, ``S``/``I`` (nibabel's ``aff2axcodes`` meaning).
        ``"RAS"`` is the NIfTI default, ``"LPS"`` an axial DICOM stack going up, ``"PIR"`` sagittal.
    spacing : sequence of 3 float
        Voxel size in mm along ``i, j, k`` (the order of the letters, not ``(D, H, W)``).
    origin : sequence of 3 float
        RAS position in mm of the centre of voxel ``(0, 0, 0)``.

    Returns
    -------
    numpy.ndarray
        4x4 float64 affine.

    Examples
    --------
    >>> axis_code_affine("LPS", spacing=(0.5, 0.5, 2.0), origin=(10, 20, 30))
    array([[-0.5,  0. ,  0. , 10. ],
           [ 0. , -0.5,  0. , 20. ],
           [ 0. ,  0. ,  2. , 30. ],
           [ 0. ,  0. ,  0. ,  1. ]])
    """
    from medstack.errors import GeometryError

    letters = str(code).upper()
    if len(letters) != 3 or any(c not in _LETTERS for c in letters):
        raise GeometryError(f"orientation code must be 3 letters from R/L, A/P, S/I, got {code!r}")
    if len({_LETTERS[c][0] for c in letters}) != 3:
        raise GeometryError(f"orientation code {code!r} names one world axis twice (use one of R/L, A/P, S/I)")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for vox, (letter, step) in enumerate(zip(letters, spacing, strict=True)):
        world, sign = _LETTERS[letter]
        affine[world, vox] = sign * float(step)
    affine[:3, 3] = [float(v) for v in origin]
    return affine


def center_affine(
    affine: np.ndarray, shape_dhw: Sequence[int], center: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Translate an affine so that the centre of a ``(D, H, W)`` grid lands on ``center`` (RAS mm).

    Examples
    --------
    >>> a = center_affine(axis_code_affine("RAS"), (3, 5, 7))
    >>> (a @ [3, 2, 1, 1]).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    out = np.array(affine, dtype=np.float64)
    mid_ijk = (np.asarray(shape_dhw, dtype=np.float64)[::-1] - 1.0) / 2.0
    out[:3, 3] = np.asarray(center, dtype=np.float64) - out[:3, :3] @ mid_ijk
    return out


def _voxel_world(affine: np.ndarray, shape_dhw: Sequence[int], d_slice: slice | None = None) -> np.ndarray:
    """RAS mm of voxel centres, shape ``(d, H, W, 3)`` for the slices in ``d_slice``."""
    d_count, h_count, w_count = (int(s) for s in shape_dhw)
    d = np.arange(d_count, dtype=np.float64)[d_slice if d_slice is not None else slice(None)]
    dd, hh, ww = np.meshgrid(
        d, np.arange(h_count, dtype=np.float64), np.arange(w_count, dtype=np.float64), indexing="ij"
    )
    a = np.asarray(affine, dtype=np.float64)
    return np.stack([ww, hh, dd], axis=-1) @ a[:3, :3].T + a[:3, 3]


def world_volume(
    shape_dhw: Sequence[int], affine: np.ndarray, *, n_channels: int = 3, dtype: Any = np.float32
) -> Volume:
    """A Volume whose voxels hold their own RAS position: the geometry test oracle.

    Channel ``c`` holds world coordinate ``c`` (x = R, y = A, z = S, in mm) of each voxel centre,
    ``world = affine @ [w, h, d, 1]``. Any correct reorientation, resampling or file round trip keeps
    ``volume.data[:, d, h, w] == volume.affine @ [w, h, d, 1]`` (up to interpolation and dtype).

    Parameters
    ----------
    shape_dhw : sequence of 3 int
        ``(D, H, W)``.
    affine : array_like, 4x4
        Voxel-to-RAS affine.
    n_channels : int
        1, 2 or 3: how many of ``x, y, z`` to keep.
    dtype : numpy dtype
        Data type of the result (float32 keeps about 1e-5 mm relative precision).

    Returns
    -------
    Volume
        Data ``(n_channels, D, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> vol = world_volume((4, 5, 6), axis_code_affine("LPS", origin=(10, 0, 0)))
    >>> vol.data[:, 3, 2, 1].tolist()  # voxel (w, h, d) = (1, 2, 3)
    [9.0, -2.0, 3.0]
    """
    from medstack.errors import GeometryError
    from medstack.volume import Volume

    if n_channels not in (1, 2, 3):
        raise GeometryError(f"world_volume has channels for x, y, z only: n_channels must be 1..3, got {n_channels}")
    world = _voxel_world(affine, shape_dhw)
    data = np.ascontiguousarray(np.moveaxis(world[..., :n_channels], -1, 0), dtype=dtype)
    return Volume(data, np.asarray(affine, dtype=np.float64))


# -- phantom -------------------------------------------------------------------------------------------

PHANTOM_LABELS: dict[int, str] = {0: "background", 1: "organ", 2: "cyst", 3: "bone"}
"""Label values of :func:`phantom` ``kind="label"`` and :func:`phantom_pair`."""

_BODY_SEMI_AXES = np.array([40.0, 32.0, 56.0])  # mm along R, A, S before the seed's jitter
_FAT, _BONE_OUT, _BONE_IN = 1.0, 0.88, 0.80  # layer boundaries as fractions of the body ellipsoid
_EDGE_MM = 0.6  # width of the soft (partial-volume-like) tissue boundaries

# Tissue values per kind: background, fat, bone, soft tissue, organ, cyst; then texture and noise sigma.
_CONTRASTS = {
    "ct": dict(air=-1000.0, fat=-90.0, bone=950.0, soft=40.0, organ=62.0, cyst=6.0, texture=8.0, noise=5.0),
    "mr": dict(air=0.0, fat=900.0, bone=60.0, soft=450.0, organ=600.0, cyst=120.0, texture=18.0, noise=10.0),
    "mr_t2": dict(air=0.0, fat=600.0, bone=40.0, soft=300.0, organ=220.0, cyst=1400.0, texture=12.0, noise=10.0),
}
PhantomKind = Literal["ct", "mr", "mr_t2", "label"]


class _Ellipsoid(NamedTuple):
    center: np.ndarray  # RAS mm
    semi_axes: np.ndarray  # mm
    rotation: np.ndarray  # columns: the ellipsoid's axes in RAS

    def distance(self, world: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Approximate signed distance in mm to the surface (negative inside), first-order accurate."""
        a = self.semi_axes * scale
        u = (world - self.center) @ self.rotation
        r = np.sqrt(np.sum((u / a) ** 2, axis=-1))
        grad = np.sqrt(np.sum((u / a**2) ** 2, axis=-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = r * (r - 1.0) / grad
        return np.where(grad > 1e-12, dist, -a.min())


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    rot = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [n for n in range(3) if n != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rot = rot @ r
    return rot


def _anatomy(seed: int) -> dict[str, Any]:
    """The phantom's anatomy in world space: a function of ``seed`` only, never of the grid."""
    rng = np.random.default_rng([int(seed), 1])
    body = _Ellipsoid(np.zeros(3), _BODY_SEMI_AXES * rng.uniform(0.96, 1.04, size=3), np.eye(3))
    organ = _Ellipsoid(
        np.array([12.0, 6.0, 10.0]) + rng.uniform(-2, 2, size=3),
        np.array([14.0, 10.0, 18.0]) * rng.uniform(0.9, 1.1, size=3),
        _rotation(rng, 15.0),
    )
    cyst = _Ellipsoid(
        np.array([-14.0, -8.0, -12.0]) + rng.uniform(-2, 2, size=3),
        np.array([8.0, 7.0, 10.0]) * rng.uniform(0.9, 1.1, size=3),
        _rotation(rng, 15.0),
    )
    waves = rng.standard_normal((4, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    waves *= (2 * np.pi / rng.uniform(12.0, 40.0, size=4))[:, None]  # wave vectors, rad/mm
    return dict(
        body=body,
        organ=organ,
        cyst=cyst,
        waves=waves,
        phases=rng.uniform(0, 2 * np.pi, size=4),
        bone_axis=rng.standard_normal(3),
    )


def _soft(dist: np.ndarray) -> np.ndarray:
    """Smooth inside-indicator from a signed distance: 1 inside, 0 outside, 0.5 on the surface."""
    return 0.5 * (1.0 - np.tanh(dist / _EDGE_MM))


def _intensity(world: np.ndarray, anat: dict[str, Any], kind: str) -> np.ndarray:
    c = _CONTRASTS[kind]
    body = anat["body"]
    bone_value = c["bone"]
    if kind == "ct":  # cortical bone density varies smoothly between ~700 and ~1200 HU
        axis = anat["bone_axis"] / np.linalg.norm(anat["bone_axis"])
        bone_value = c["bone"] + 250.0 * np.sin(world @ axis * (2 * np.pi / 70.0))
    layers = [
        (_soft(body.distance(world, _FAT)), c["fat"]),
        (_soft(body.distance(world, _BONE_OUT)), bone_value),
        (_soft(body.distance(world, _BONE_IN)), c["soft"]),
        (_soft(anat["organ"].distance(world)), c["organ"]),
        (_soft(anat["cyst"].distance(world)), c["cyst"]),
    ]
    value = np.full(world.shape[:-1], c["air"])
    for weight, tissue in layers:
        value = value + weight * (tissue - value)
    texture = np.cos(world @ anat["waves"].T + anat["phases"]).sum(axis=-1) / 2.0
    value += c["texture"] * texture * layers[2][0]  # texture inside the soft-tissue compartment
    if kind != "ct":  # smooth receive-coil bias field, +-15 %
        r = world / (2.0 * body.semi_axes)
        value *= 1.0 + 0.15 * (r[..., 0] - 0.5 * r[..., 1] + r[..., 2] ** 2 - 0.2)
    return value


def _labels(world: np.ndarray, anat: dict[str, Any]) -> np.ndarray:
    body = anat["body"]
    out = np.zeros(world.shape[:-1], dtype=np.uint8)
    out[(body.distance(world, _BONE_OUT) < 0) & (body.distance(world, _BONE_IN) >= 0)] = 3
    out[anat["organ"].distance(world) < 0] = 1
    out[anat["cyst"].distance(world) < 0] = 2
    return out


def _default_affine(shape_dhw: Sequence[int]) -> np.ndarray:
    """RAS grid centred on the phantom, covering 100 x 100 x 140 mm (R-L x A-P x S-I)."""
    d, h, w = (int(s) for s in shape_dhw)
    in_plane = 100.0 / min(h, w)
    return center_affine(axis_code_affine("RAS", (in_plane, in_plane, 140.0 / d)), shape_dhw)


def phantom(
    shape_dhw: Sequence[int] = (64, 128, 128),
    affine: np.ndarray | None = None,
    *,
    seed: int = 0,
    kind: PhantomKind = "ct",
) -> Volume:
    """A smooth, asymmetric body phantom sampled on any grid.

    The anatomy lives in world space and depends only on ``seed``: an elliptic body centred on the
    world origin (semi-axes about 40 mm R-L, 32 mm A-P, 56 mm S-I) with a subcutaneous fat layer, a bone
    shell, an "organ" ellipsoid right-anterior-superior and a fluid "cyst" left-posterior-inferior. So two
    phantoms with the same seed on different grids (spacing, orientation, oblique) overlay exactly, and
    any flip of an axis is visible.

    Parameters
    ----------
    shape_dhw : sequence of 3 int
        ``(D, H, W)``.
    affine : array_like, 4x4, optional
        Voxel-to-RAS affine. Default: a RAS grid centred on the phantom covering 100 x 100 x 140 mm.
    seed : int
        Draws the anatomy (small shifts, sizes and tilts of the structures) and the noise.
    kind : {"ct", "mr", "mr_t2", "label"}
        ``"ct"``: int16 Hounsfield units (air -1000, fat -90, soft tissue 40, organ ~60, cyst ~5, bone
        700-1200, Gaussian noise sigma 5 HU). ``"mr"``: float32 T1-weighted-like (fat bright, fluid dark,
        smooth bias field, Rician noise). ``"mr_t2"``: float32 T2-weighted-like (fluid bright).
        ``"label"``: uint8 labels :data:`PHANTOM_LABELS` (1 organ, 2 cyst, 3 bone), the 0.5 level of the
        same smooth boundaries.

    Returns
    -------
    Volume
        Data ``(1, D, H, W)``.

    Examples
    --------
    >>> ct = phantom((16, 32, 32), seed=1)
    >>> ct.shape, ct.dtype, int(ct.data.min()) < -900 < 900 < int(ct.data.max())
    ((1, 16, 32, 32), dtype('int16'), True)
    """
    from medstack.volume import Volume

    if kind not in ("ct", "mr", "mr_t2", "label"):
        raise ValueError(f"phantom kind must be 'ct', 'mr', 'mr_t2' or 'label', got {kind!r}")
    affine = _default_affine(shape_dhw) if affine is None else np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape_dhw)
    anat = _anatomy(seed)
    out = np.empty(shape, dtype=np.uint8 if kind == "label" else np.float64)
    step = max(1, (1 << 18) // max(1, shape[1] * shape[2]))  # bounded memory: ~256k voxels at a time
    for start in range(0, shape[0], step):
        world = _voxel_world(affine, shape, slice(start, start + step))
        out[start : start + step] = _labels(world, anat) if kind == "label" else _intensity(world, anat, kind)
    if kind != "label":
        noise = np.random.default_rng([int(seed), 2]).standard_normal((2, *shape)) * _CONTRASTS[kind]["noise"]
        if kind == "ct":
            out = np.clip(np.round(out + noise[0]), -1024, 3071).astype(np.int16)
        else:  # magnitude of a complex signal with Gaussian noise: Rician, positive
            out = np.hypot(out + noise[0], noise[1]).astype(np.float32)
    return Volume(out[None], affine)


def phantom_pair(
    shape_dhw: Sequence[int] = (64, 128, 128),
    affine: np.ndarray | None = None,
    *,
    seed: int = 0,
    kind: Literal["ct", "mr", "mr_t2"] = "ct",
) -> tuple[Volume, Volume]:
    """An image and its label map on the same grid: ``(phantom(..., kind=kind), phantom(..., kind="label"))``.

    Examples
    --------
    >>> image, label = phantom_pair((8, 16, 16), seed=3, kind="mr")
    >>> image.dtype, label.dtype, bool((image.affine == label.affine).all())
    (dtype('float32'), dtype('uint8'), True)
    """
    if kind == "label":
        raise ValueError("phantom_pair kind is the image contrast ('ct', 'mr' or 'mr_t2'); the label comes with it")
    return (phantom(shape_dhw, affine, seed=seed, kind=kind), phantom(shape_dhw, affine, seed=seed, kind="label"))


# -- DICOM ---------------------------------------------------------------------------------------------

_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_LPS = np.array([-1.0, -1.0, 1.0])
_UID_ROOT = "https://medstack/testing"


def _uid(*parts: object) -> str:
    """A deterministic ``2.25.<uuid>`` UID: a name-based (SHA-1, RFC 4122 version 5) UUID of ``parts``."""
    name = "/".join([_UID_ROOT, *(str(p) for p in parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    return format_number_as_ds(0.0 if abs(value) < 1e-12 else value)


def _non_monotonic_permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` that is neither increasing nor decreasing (when n >= 3)."""
    perm = rng.permutation(n)
    while n >= 3 and (np.all(np.diff(perm) > 0) or np.all(np.diff(perm) < 0)):
        perm = rng.permutation(n)
    return perm


def write_dicom_series(
    volume_or_array: Volume | np.ndarray,
    folder: str | Path,
    *,
    affine: np.ndarray | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "",
    modality: Literal["CT", "MR"] = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    unsigned: bool = False,
    window: tuple[float, float] | None = None,
    shuffle_names: bool | int = False,
    instance_number_order: Literal["position", "reverse", "random"] = "position",
    patient_id: str = "MEDSTACK^PHANTOM",
    seed: int = 0,
    file_prefix: str = "",
    extra_tags: dict[str, Any] | None = None,
    per_slice: Callable[[pydicom.Dataset, int], None] | None = None,
) -> list[Path]:
    """Write a volume as a DICOM series: one single-frame CT or MR Image Storage file per slice ``d``.

    Geometry comes from the affine (RAS, converted to DICOM's LPS): ``ImageOrientationPatient`` is the
    direction of increasing column index ``i`` then of increasing row index ``j``; ``ImagePositionPatient``
    of slice ``d`` is the position of voxel ``(0, 0, d)``; ``PixelSpacing`` is ``[row step (along j),
    column step (along i)]``; ``SliceThickness`` is the slice step along the normal ``i x j``. A slice axis
    that is not along the normal (sheared stack, like gantry tilt) is written as is. Files are Explicit VR
    Little Endian with a full file meta header; all UIDs derive from ``seed``, ``patient_id``,
    ``series_number``, ``series_description`` and ``file_prefix``, so reruns write byte-identical files.

    Parameters
    ----------
    volume_or_array : Volume or numpy.ndarray
        A Volume (channel 0 and its affine are written) or an array ``(D, H, W)`` with ``affine=``.
    folder : str or Path
        Output folder, created if needed. Existing files of the same names are overwritten.
    affine : array_like, 4x4, optional
        Voxel-to-RAS affine; required with an array, not allowed with a Volume.
    series_uid, study_uid : str, optional
        UIDs to use; by default derived deterministically (the study from ``patient_id`` and ``seed``).
        Pass the same ``study_uid`` to put several series in one study (one FrameOfReferenceUID).
    series_number, series_description : int, str
        SeriesNumber and SeriesDescription.
    modality : {"CT", "MR"}
        Selects the SOP class (CT or MR Image Storage) and a few modality tags.
    rescale_slope, rescale_intercept : float
        The stored value is ``round((value - intercept) / slope)``; RescaleSlope/Intercept are written.
    unsigned : bool
        Store uint16 (PixelRepresentation 0) instead of int16; every stored value must then be >= 0.
    window : (float, float), optional
        WindowCenter and WindowWidth. Default: (40, 400) for CT, the 1st-99th percentile range for MR.
    shuffle_names : bool or int
        If false, file ``n`` holds slice ``d = n - 1``. If true, file numbers are a seeded permutation that
        is neither increasing nor decreasing along the slices (for 3 or more slices), so name order is not
        space order; an int (not bool) seeds that permutation instead of ``seed``.
    instance_number_order : {"position", "reverse", "random"}
        InstanceNumber ``d + 1``, ``D - d``, or a seeded non-monotonic permutation of ``1..D``.
    patient_id : str
        PatientName and PatientID.
    seed : int
        Seeds the UIDs, the name and instance-number permutations.
    file_prefix : str
        File names are ``f"{file_prefix}{n:04d}.dcm"``, ``n`` from 1.
    extra_tags : dict, optional
        ``{keyword: value}`` set on every slice after the standard tags (e.g. ``{"ImageType": [...]}``).
    per_slice : callable, optional
        ``per_slice(ds, d)`` may modify the dataset of slice ``d`` in place just before it is saved (drop a
        tag, change a slope, add tilt); the file meta UIDs follow changes of SOPInstanceUID/SOPClassUID.

    Returns
    -------
    list of Path
        The files, in slice order ``d`` (not name order).

    Raises
    ------
    DicomError
        If values do not fit the stored integer type, the in-plane axes are not orthogonal, or the
        modality is not supported.
    GeometryError
        If the data is not 3D or the affine is missing or given twice.

    Examples
    --------
    >>> import tempfile
    >>> vol = phantom((4, 16, 16), axis_code_affine("LPS", (0.7, 0.7, 2.5)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     files = write_dicom_series(vol, tmp, shuffle_names=True)
    ...     [f.name for f in files]
    ['0003.dcm', '0002.dcm', '0001.dcm', '0004.dcm']
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from medstack.errors import DicomError, GeometryError

    # -- inputs
    if hasattr(volume_or_array, "affine") and hasattr(volume_or_array, "data"):
        if affine is not None:
            raise GeometryError("write_dicom_series: a Volume carries its affine; pass affine= only with an array")
        vol = volume_or_array
        data = np.asarray(vol.to_numpy() if hasattr(vol, "to_numpy") else vol.data)[0]
        affine = np.asarray(vol.affine, dtype=np.float64)
    else:
        data = np.asarray(volume_or_array)
        if affine is None:
            raise GeometryError("write_dicom_series: an array needs its voxel-to-RAS affine: pass affine=")
        affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3 or affine.shape != (4, 4):
        raise GeometryError(
            f"write_dicom_series needs data (D, H, W) and a 4x4 affine, got {data.shape}, {affine.shape}"
        )
    if modality not in _SOP_CLASSES:
        raise DicomError(f"write_dicom_series: modality must be one of {sorted(_SOP_CLASSES)}, got {modality!r}")
    if instance_number_order not in ("position", "reverse", "random"):
        raise ValueError(
            f"instance_number_order must be 'position', 'reverse' or 'random', got {instance_number_order!r}"
        )
    n_slices, rows, cols = data.shape

    # -- values
    stored = np.round((data.astype(np.float64) - rescale_intercept) / rescale_slope)
    dtype = np.dtype("<u2" if unsigned else "<i2")
    info = np.iinfo(dtype)
    if not np.all(np.isfinite(stored)) or stored.min() < info.min or stored.max() > info.max:
        raise DicomError(
            f"write_dicom_series: stored values (value - {rescale_intercept}) / {rescale_slope} span "
            f"[{np.nanmin(stored):g}, {np.nanmax(stored):g}], outside {dtype.name} [{info.min}, {info.max}]; "
            "choose rescale_slope/rescale_intercept" + ("" if unsigned else " or unsigned=True")
        )
    stored = stored.astype(dtype)
    if window is None:
        lo, hi = np.percentile(data, [1, 99]) if modality != "CT" else (-160.0, 240.0)
        window = ((lo + hi) / 2.0, max(hi - lo, 1.0))

    # -- geometry in LPS
    lps = affine[:3, :] * _LPS[:, None]
    steps = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(steps < 1e-9):
        raise GeometryError(f"write_dicom_series: affine has a zero-length voxel axis:\n{affine}")
    col_dir, row_dir = lps[:, 0] / steps[0], lps[:, 1] / steps[1]
    if abs(col_dir @ row_dir) > 1e-6:
        raise DicomError(
            "write_dicom_series: the in-plane voxel axes i and j are not orthogonal "
            f"(cos = {col_dir @ row_dir:.3g}); DICOM ImageOrientationPatient cannot describe that"
        )
    normal = np.cross(col_dir, row_dir)
    thickness = abs(lps[:, 2] @ normal)

    # -- identifiers and orders
    study_uid = study_uid or _uid("study", patient_id, seed)
    series_uid = series_uid or _uid("series", study_uid, series_number, series_description, modality, seed)
    frame_uid = _uid("frame-of-reference", study_uid)
    if isinstance(shuffle_names, bool):
        names = (
            _non_monotonic_permutation(np.random.default_rng([seed, 4]), n_slices)
            if shuffle_names
            else np.arange(n_slices)
        )
    else:
        names = _non_monotonic_permutation(np.random.default_rng([int(shuffle_names), 4]), n_slices)
    instance = {
        "position": np.arange(n_slices),
        "reverse": np.arange(n_slices)[::-1],
        "random": _non_monotonic_permutation(np.random.default_rng([seed, 3]), n_slices),
    }[instance_number_order] + 1

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(n_slices):
        ds = pydicom.Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.SOPClassUID = _SOP_CLASSES[modality]
        ds.SOPInstanceUID = _uid("instance", series_uid, file_prefix, d)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "medstack"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medstack phantom"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        if modality == "CT":
            ds.KVP = "120"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = "500", "15", "3"
        ds.SliceThickness = _ds(thickness)
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(instance[d])
        position = lps[:, 3] + d * lps[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*col_dir, *row_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(position @ normal)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(rows), int(cols)
        ds.PixelSpacing = [_ds(steps[1]), _ds(steps[0])]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
        ds.RescaleIntercept, ds.RescaleSlope = _ds(rescale_intercept), _ds(rescale_slope)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.add_new(0x7FE00010, "OW", stored[d].tobytes())
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        if per_slice is not None:
            per_slice(ds, d)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid("implementation")
        meta.ImplementationVersionName = "MEDSTACK_TEST"
        ds.file_meta = meta
        path = folder / f"{file_prefix}{int(names[d]) + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_PLANES = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIR"}  # DICOM-style in-plane axes, k = normal
_PREFIXES = {"axial": "AX_", "coronal": "COR_", "sagittal": "SAG_"}


def write_localizer(
    folder: str | Path,
    *,
    plane: Literal["axial", "coronal", "sagittal", "triplane"] = "coronal",
    n_slices: int = 3,
    shape_hw: tuple[int, int] = (128, 128),
    pixel_spacing: float = 1.5,
    slice_gap: float = 10.0,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    study_uid: str | None = None,
    series_number: int = 100,
    modality: Literal["CT", "MR"] = "CT",
    patient_id: str = "MEDSTACK^PHANTOM",
    seed: int = 0,
    file_prefix: str = "",
) -> list[Path]:
    """Write a small localizer (scout) series of the :func:`phantom`, to make series selection matter.

    The slices have ImageType ``["ORIGINAL", "PRIMARY", "LOCALIZER"]``, SeriesDescription ``"LOCALIZER"``
    and their own SeriesInstanceUID; pass the ``study_uid`` of the main series to put them in its study.

    Parameters
    ----------
    folder : str or Path
        Output folder (a sibling of the main series' folder is the usual scanner layout).
    plane : {"axial", "coronal", "sagittal", "triplane"}
        Orientation of the slices (DICOM conventional in-plane axes: coronal ``[1,0,0, 0,0,-1]``,
        sagittal ``[0,1,0, 0,0,-1]``, axial ``[1,0,0, 0,1,0]``). ``"triplane"`` writes one slice of each
        through ``center`` (three orientations in one series, like an MR tri-plane scout; ``n_slices``
        and ``slice_gap`` are then ignored, and files are prefixed ``AX_``, ``COR_``, ``SAG_``).
    n_slices : int
        Number of parallel slices, ``slice_gap`` mm apart, centred on ``center``.
    shape_hw : (int, int)
        Rows and columns per slice.
    pixel_spacing : float
        In-plane pixel size in mm.
    slice_gap : float
        Distance between slices in mm.
    center : sequence of 3 float
        RAS mm of the centre of the slab.
    study_uid, series_number, modality, patient_id, seed, file_prefix
        As in :func:`write_dicom_series`; ``seed`` also selects the phantom anatomy.

    Returns
    -------
    list of Path
        The files, in slice order.
    """
    if plane not in (*_PLANES, "triplane"):
        raise ValueError(f"plane must be 'axial', 'coronal', 'sagittal' or 'triplane', got {plane!r}")
    kind = "ct" if modality == "CT" else "mr"
    study_uid = study_uid or _uid("study", patient_id, seed)
    series_uid = _uid("series", study_uid, series_number, "LOCALIZER", modality, seed)
    common = dict(
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        series_description="LOCALIZER",
        modality=modality,
        patient_id=patient_id,
        seed=seed,
        rescale_intercept=-1024.0 if modality == "CT" else 0.0,
        extra_tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
    )
    planes = list(_PLANES) if plane == "triplane" else [plane]
    paths: list[Path] = []
    for number, name in enumerate(planes):
        count = 1 if plane == "triplane" else int(n_slices)
        shape = (count, *shape_hw)
        grid = center_affine(axis_code_affine(_PLANES[name], (pixel_spacing, pixel_spacing, slice_gap)), shape, center)
        image = phantom(shape, grid, seed=seed, kind=kind)
        if plane == "triplane":

            def renumber(ds, d, number=number):
                ds.InstanceNumber = number + 1

            paths += write_dicom_series(
                image, folder, file_prefix=f"{file_prefix}{_PREFIXES[name]}", per_slice=renumber, **common
            )
        else:
            paths += write_dicom_series(image, folder, file_prefix=file_prefix, **common)
    return paths
