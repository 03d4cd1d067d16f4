"""Pure affine math: the one place where medstack's geometry conventions live.

Conventions (see ``ARCHITECTURE.md``):

- An affine is a 4x4 float64 matrix mapping a voxel index ``(i, j, k, 1)`` to RAS+ world millimetres,
  exactly like a NIfTI sform. ``i`` is the column (``w``), ``j`` the row (``h``), ``k`` the slice (``d``)
  of a ``(C, D, H, W)`` array.
- Orientation codes are three letters, one per voxel axis ``i, j, k``, naming the world direction that
  the index increases towards (``R``/``L``, ``A``/``P``, ``S``/``I``), as in nibabel's ``aff2axcodes``.
- DICOM and ITK use LPS+; :func:`lps_to_ras` / :func:`ras_to_lps` are the only conversions.

Nothing in this module touches voxel data except :func:`reorient_array`, which only flips and
permutes axes (views, never interpolation).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from medstack.errors import ArgumentError, GeometryError

__all__ = [
    "DHW",
    "XYZ",
    "AxisOrderWarning",
    "as_dhw",
    "axcodes",
    "box_affine",
    "check_affine",
    "dhw_to_ijk",
    "direction",
    "ijk_to_dhw",
    "lps_to_ras",
    "origin",
    "ras_to_lps",
    "reorient_array",
    "reorientation",
    "spacing",
    "voxel_to_world",
    "world_to_voxel",
]

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # (negative, positive) per RAS world axis
_LETTER = {letter: (axis, sign) for axis, pair in enumerate(_AXIS_LETTERS) for sign, letter in zip((-1, 1), pair)}


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an LPS+ affine (DICOM, ITK) to RAS+ (NIfTI, medstack) by flipping world x and y."""
    return _LPS_RAS @ np.asarray(affine, dtype=np.float64)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Convert a RAS+ affine to LPS+; the inverse (and twin) of :func:`lps_to_ras`."""
    return lps_to_ras(affine)


def ijk_to_dhw(values: Sequence[float]) -> tuple:
    """Reorder a per-axis triple from affine order ``(i, j, k)`` to array order ``(d, h, w)``."""
    return tuple(values)[::-1]


def dhw_to_ijk(values: Sequence[float]) -> tuple:
    """Reorder a per-axis triple from array order ``(d, h, w)`` to affine order ``(i, j, k)``."""
    return tuple(values)[::-1]


def check_affine(affine, *, what: str = "affine") -> np.ndarray:
    """Validate an affine and return it as a new read-only 4x4 float64 array.

    Raises
    ------
    GeometryError
        If it is not 4x4, holds NaN/inf, has a singular (zero-volume) 3x3 part or a bottom row
        other than ``[0, 0, 0, 1]``. ``what`` names the affine in the message.
    """
    try:
        a = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise GeometryError(f"{what} is not a numeric 4x4 matrix: {e}") from e
    if a.shape != (4, 4):
        raise GeometryError(f"{what} must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError(f"{what} contains NaN or infinite values:\n{a}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"{what} bottom row must be [0, 0, 0, 1], got {a[3].tolist()}")
    det = np.linalg.det(a[:3, :3])
    if not abs(det) > 1e-12:
        raise GeometryError(
            f"{what} is singular (determinant {det:.3g}): a zero spacing or two voxel axes pointing the same "
            "way; the file's geometry is missing or corrupt"
        )
    a.flags.writeable = False
    return a


def spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along ``(i, j, k)``: the lengths of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def direction(affine: np.ndarray) -> np.ndarray:
    """3x3 matrix whose columns are the unit RAS directions of the voxel axes ``i, j, k``."""
    a = np.asarray(affine, dtype=np.float64)
    return a[:3, :3] / spacing(a)


def origin(affine: np.ndarray) -> np.ndarray:
    """RAS position (mm) of the centre of voxel ``(0, 0, 0)``."""
    return np.asarray(affine, dtype=np.float64)[:3, 3].copy()


def box_affine(affine: np.ndarray, start_dhw: Sequence[float]) -> np.ndarray:
    """Affine of a box (crop or patch) whose first voxel is voxel ``start_dhw`` (d, h, w) of ``affine``'s grid:
    same axes and spacing, origin moved to that voxel's centre."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = voxel_to_world(out, dhw_to_ijk(start_dhw))
    return out


def _axis_assignment(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each voxel axis i, j, k: (world axis, sign) it is closest to, each world axis used once.

    Greedy on the largest absolute direction cosine, like nibabel's ``io_orientation``.
    """
    d = direction(affine)
    remaining = np.abs(d).copy()
    out: list[tuple[int, int]] = [(0, 1)] * 3
    for _ in range(3):
        world, vox = np.unravel_index(np.argmax(remaining), remaining.shape)
        out[vox] = (int(world), 1 if d[world, vox] >= 0 else -1)
        remaining[world, :] = -1
        remaining[:, vox] = -1
    return out


def axcodes(affine: np.ndarray) -> str:
    """Orientation code of an affine, e.g. ``"RAS"`` (NIfTI default) or ``"LPS"`` (DICOM default).

    Letter ``n`` is the world direction that voxel axis ``n`` (``i``, ``j``, ``k``) increases towards.
    Oblique affines get the code of the closest axis-aligned orientation.
    """
    return "".join(_AXIS_LETTERS[w][(s + 1) // 2] for w, s in _axis_assignment(affine))


def _parse_code(code: str) -> list[tuple[int, int]]:
    code = str(code).upper()
    if len(code) != 3 or any(c not in _LETTER for c in code):
        raise GeometryError(f"orientation code must be 3 letters from R/L, A/P, S/I, got {code!r}")
    parsed = [_LETTER[c] for c in code]
    if len({w for w, _ in parsed}) != 3:
        raise GeometryError(f"orientation code {code!r} names one world axis twice")
    return parsed


def reorientation(affine: np.ndarray, shape_ijk: Sequence[int], code: str) -> tuple[list[int], list[bool], np.ndarray]:
    """How to permute and flip voxel axes so that the affine gets orientation ``code``.

    Returns
    -------
    perm : list of int
        ``perm[n]`` is the old voxel axis (0=i, 1=j, 2=k) that becomes new axis ``n``.
    flip : list of bool
        Whether new axis ``n`` runs opposite to old axis ``perm[n]``.
    new_affine : ndarray
        The affine of the reoriented grid (same world positions for the same voxels).
    """
    target = _parse_code(code)
    current = _axis_assignment(affine)
    world_to_old = {w: (m, s) for m, (w, s) in enumerate(current)}
    perm, flip = [], []
    p = np.zeros((4, 4))
    p[3, 3] = 1.0
    for n, (w, s) in enumerate(target):
        m, s_old = world_to_old[w]
        perm.append(m)
        flip.append(s != s_old)
        if s != s_old:
            p[m, n] = -1.0
            p[m, 3] = shape_ijk[m] - 1
        else:
            p[m, n] = 1.0
    return perm, flip, np.asarray(affine, dtype=np.float64) @ p


def reorient_array(data, perm: Sequence[int], flip: Sequence[bool]):
    """Apply a :func:`reorientation` to a ``(C, D, H, W)`` NumPy array or torch tensor (no interpolation).

    NumPy inputs give views; torch flips copy (torch has no negative strides).
    """
    # ijk axis a lives on array axis 3 - a.
    flip_axes = tuple(3 - perm[n] for n in range(3) if flip[n])
    order = (0, *(3 - perm[n] for n in (2, 1, 0)))
    if isinstance(data, np.ndarray):
        return np.flip(data, axis=flip_axes).transpose(order) if flip_axes else data.transpose(order)
    out = data.flip(flip_axes) if flip_axes else data
    return out.permute(order)


def voxel_to_world(affine: np.ndarray, points) -> np.ndarray:
    """Map voxel coordinates ``(..., 3)`` in ``(i, j, k)`` order to RAS mm ``(..., 3)``."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise GeometryError(f"points must have shape (..., 3) in (i, j, k) order, got {pts.shape}")
    a = np.asarray(affine, dtype=np.float64)
    return pts @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(affine: np.ndarray, points) -> np.ndarray:
    """Map RAS mm points ``(..., 3)`` to (fractional) voxel coordinates in ``(i, j, k)`` order."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise GeometryError(f"points must have shape (..., 3) as RAS (x, y, z) mm, got {pts.shape}")
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return pts @ inv[:3, :3].T + inv[:3, 3]


# -- spatial triples: the axis order, made explicit -------------------------------------------------------------


class DHW(NamedTuple):
    """A spatial triple in medstack's array order: slices, rows, columns (``D, H, W``).

    Every plain 3-tuple medstack takes (``spacing=``, ``shape=``, ``patch_size=``, ``size=``) is in this order,
    the reverse of MONAI's ``pixdim`` / ``spatial_size`` and TorchIO's ``(x, y, z)``. Naming the order makes a
    call impossible to misread:

    >>> DHW(d=2.0, h=0.7, w=0.7)
    DHW(d=2.0, h=0.7, w=0.7)
    """

    d: float
    h: float
    w: float


class XYZ(NamedTuple):
    """A spatial triple in voxel-axis order ``(i, j, k) = (W, H, D)``: MONAI's ``pixdim`` / ``spatial_size``,
    TorchIO's ``(x, y, z)``, NIfTI's ``pixdim[1:4]``. Pass it where medstack takes a spacing or size to copy a
    MONAI / TorchIO value as it is:

    >>> XYZ(0.7, 0.7, 2.0).to_dhw()
    DHW(d=2.0, h=0.7, w=0.7)
    """

    x: float
    y: float
    z: float

    def to_dhw(self) -> DHW:
        return DHW(self.z, self.y, self.x)


class AxisOrderWarning(UserWarning):
    """A plain 3-tuple that looks like it was written in MONAI / TorchIO ``(x, y, z)`` order."""


_NAMED = {"d": 0, "h": 1, "w": 2, "x": 2, "y": 1, "z": 0}


def as_dhw(value, *, name: str = "spacing", volume_spacing=None, integer: bool = False) -> tuple:
    """A spatial triple in ``(D, H, W)`` order from any accepted form.

    Accepted: one number (all three axes); a plain sequence of three, read as ``(D, H, W)``; :class:`DHW`;
    :class:`XYZ` (MONAI / TorchIO order, reversed here); a mapping with keys ``D, H, W`` or ``x, y, z``
    (case-insensitive, not mixed).

    With ``volume_spacing`` (the ``(D, H, W)`` spacing of the volume it applies to), a plain spacing sequence
    shaped like an in-plane pair followed by a coarser slice step (e.g. ``(1.5, 1.5, 2)``: the first two equal
    within 10%, the last over 1.2x larger), on a volume whose slice axis (first) is its coarsest, is most likely
    a MONAI ``pixdim`` copied as it is: an :class:`AxisOrderWarning` says so (once per call site) and how to be explicit.

    >>> as_dhw({"D": 2, "H": 1.5, "W": 1.5})
    (2.0, 1.5, 1.5)
    >>> as_dhw(XYZ(1.5, 1.5, 2))
    (2.0, 1.5, 1.5)
    >>> as_dhw(1.0)
    (1.0, 1.0, 1.0)
    """
    kind = float if not integer else int
    if isinstance(value, XYZ):
        value = value.to_dhw()
    plain = not isinstance(value, DHW | Mapping)
    if isinstance(value, Mapping):
        keys = {str(k).lower(): v for k, v in value.items()}
        if set(keys) not in ({"d", "h", "w"}, {"x", "y", "z"}):
            raise ArgumentError(f"{name}: a mapping needs the keys D, H, W (medstack order) or x, y, z (MONAI / TorchIO "
                                f"order), got {sorted(map(str, value))}")  # fmt: skip
        out = [None] * 3
        for k, v in keys.items():
            out[_NAMED[k]] = v
        value = out
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be one number or three in (D, H, W) order (or DHW / XYZ / a dict), "
                            f"got {value!r}") from None  # fmt: skip
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,):
        raise ArgumentError(f"{name} must be one number or three in (D, H, W) order (or DHW / XYZ / a dict), got "
                            f"{value!r}")  # fmt: skip
    if integer and np.any(arr != np.round(arr)):
        raise ArgumentError(f"{name} must be integers in (D, H, W) order, got {tuple(arr)}")
    if plain and volume_spacing is not None and name.endswith("spacing"):
        vs = np.asarray(volume_spacing, dtype=np.float64)
        in_plane_first = abs(arr[0] - arr[1]) <= 0.1 * max(arr[0], arr[1]) and arr[2] > 1.2 * max(arr[0], arr[1])
        if in_plane_first and vs.shape == (3,) and vs[0] > 1.2 * max(vs[1], vs[2]):
            warnings.warn(
                f"{name}={tuple(float(v) for v in arr)} is read in (D, H, W) order (slices, rows, columns): slices of "
                f"{arr[0]:g} mm, columns of {arr[2]:g} mm, on a volume whose slices are its coarsest axis "
                f"({tuple(round(float(v), 3) for v in vs)} mm). If this is a MONAI pixdim / TorchIO (x, y, z) value, "
                f"write {name}=medstack.geometry.XYZ{tuple(float(v) for v in arr)}; to keep (D, H, W), write "
                f"{name}=medstack.geometry.DHW{tuple(float(v) for v in arr)} (no warning).",
                AxisOrderWarning, stacklevel=3)  # fmt: skip
    return tuple(kind(v) for v in arr)
