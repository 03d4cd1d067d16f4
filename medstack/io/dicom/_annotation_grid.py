"""Pure geometry for annotations: place SEG frames and RTSTRUCT contours on a reference grid, fill polygons.

No DICOM parsing here (see :mod:`medstack.io.dicom.annotations`): points and planes come in as LPS mm, the grid
as a RAS voxel-to-world affine (``world = affine @ [i, j, k, 1]``, arrays ``(D, H, W)`` = axes ``(k, j, i)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medstack import geometry
from medstack.errors import DicomError

_LPS = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS flips x and y (the same as geometry.lps_to_ras)
AXIS_NAMES = ("i (columns, W)", "j (rows, H)", "k (slices, D)")


def lps_to_ras_points(v: np.ndarray) -> np.ndarray:
    """LPS points or directions ``(..., 3)`` (DICOM) to RAS (medstack): x and y change sign."""
    return np.asarray(v, dtype=np.float64) * _LPS


def grid_problems(x_dir, y_dir, ps, o, affine, tol) -> list[str]:
    """Why a plane (RAS directions, [row, col] spacing, voxel origin ``o``) is not on the grid of ``affine``."""
    axes = geometry.direction(affine)
    sp = geometry.spacing(affine)
    problems = []
    ax_x = int(np.argmax(np.abs(axes.T @ x_dir)))
    ax_y = int(np.argmax(np.abs(axes.T @ y_dir)))
    ang = [float(np.degrees(np.arccos(min(1.0, abs(axes[:, a] @ d))))) for a, d in ((ax_x, x_dir), (ax_y, y_dir))]
    if ax_x == ax_y or max(ang) > 1e-3:
        problems.append(f"in-plane orientation differs: the frame's row/column directions are {ang[0]:.3g} and "
                        f"{ang[1]:.3g} degrees from the nearest reference axes")  # fmt: skip
    elif abs(ps[1] - sp[ax_x]) > 1e-4 * sp[ax_x] or abs(ps[0] - sp[ax_y]) > 1e-4 * sp[ax_y]:
        problems.append(f"pixel spacing differs: {ps[0]:.6g} x {ps[1]:.6g} mm (rows x columns) vs reference "
                        f"{sp[ax_y]:.6g} x {sp[ax_x]:.6g} mm")  # fmt: skip
    else:
        normal = 3 - ax_x - ax_y
        off = o[normal] - np.round(o[normal])
        if abs(off) > tol:
            lo = int(np.floor(o[normal]))
            problems.append(f"it lies {abs(off):.3g} voxel ({abs(off) * sp[normal]:.3g} mm) off the nearest reference "
                            f"plane along axis {AXIS_NAMES[normal]} (between planes {lo} and {lo + 1})")  # fmt: skip
        inplane = [float(o[a] - np.round(o[a])) for a in (ax_x, ax_y)]
        if max(abs(v) for v in inplane) > tol:
            problems.append(f"its first pixel is offset by {inplane[0]:.3g}, {inplane[1]:.3g} voxel in-plane from the "
                            "reference voxel centres")  # fmt: skip
    return problems


def plane_indices(ipp, iop, ps, rows: int, cols: int, affine, inv, tol: float, where: str):
    """Integer voxel indices ``(i, j, k)``, each ``(rows, cols)``, of every pixel of a frame on the grid."""
    x_dir, y_dir = lps_to_ras_points(iop[:3]), lps_to_ras_points(iop[3:])
    o = inv[:3, :3] @ lps_to_ras_points(ipp) + inv[:3, 3]
    dc = inv[:3, :3] @ (x_dir * ps[1])  # one column step, in voxels
    dr = inv[:3, :3] @ (y_dir * ps[0])  # one row step, in voxels
    o_s, dc_s, dr_s = np.round(o), np.round(dc), np.round(dr)
    unit = all(np.sum(np.abs(v)) == 1 and np.max(np.abs(v)) == 1 for v in (dc_s, dr_s)) and not np.any(dc_s * dr_s)
    dev = np.inf
    if unit:
        err0, err_r, err_c = o - o_s, (rows - 1) * (dr - dr_s), (cols - 1) * (dc - dc_s)
        dev = max(np.max(np.abs(err0 + a * err_r + b * err_c)) for a in (0, 1) for b in (0, 1))
    if dev > tol:
        problems = grid_problems(x_dir, y_dir, ps, o, affine, tol) or [
            f"its pixels land up to {dev:.3g} voxel away from reference voxel centres"]
        raise DicomError(f"{where} is not on the reference grid: {'; '.join(problems)} (tolerance {tol} voxel). "
                         "Pass the image series this annotation was made on as reference, or raise tol= if the "
                         "difference is rounding")  # fmt: skip
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return tuple((o_s[a] + r * dr_s[a] + c * dc_s[a]).astype(np.int64) for a in range(3))


def paste(out: np.ndarray, values: np.ndarray, ijk, where: str) -> None:
    """``out[k, j, i] = max(out, values)`` for the pixels inside ``out`` (D, H, W); nonzero outside is an error."""
    i, j, k = ijk
    d, h, w = out.shape
    inside = (i >= 0) & (i < w) & (j >= 0) & (j < h) & (k >= 0) & (k < d)
    outside = int(np.count_nonzero(values[~inside]))
    if outside:
        raise DicomError(f"{where}: {outside} nonzero pixel(s) fall outside the reference image (D, H, W = "
                         f"{d}, {h}, {w}); the annotation covers more than the reference: is it the right series?")  # fmt: skip
    if not inside.any():
        return
    sel = (k[inside], j[inside], i[inside])
    out[sel] = np.maximum(out[sel], values[inside])


def labels_from_channels(data: np.ndarray, numbers: Sequence[int], names: Sequence[str], where: str) -> np.ndarray:
    """One channel per segment (0/1) -> one label map whose values are ``numbers``; overlaps are an error."""
    count = (data > 0).sum(axis=0, dtype=np.int64)
    if count.max(initial=0) > 1:
        pairs = [f"{names[a]!r} ({numbers[a]}) and {names[b]!r} ({numbers[b]})" for a in range(len(numbers))
                 for b in range(a + 1, len(numbers)) if np.any((data[a] > 0) & (data[b] > 0))]  # fmt: skip
        raise DicomError(f"{where}: segments overlap in {int(np.count_nonzero(count > 1))} voxel(s) ({'; '.join(pairs[:5])}); "
                         "a label map holds one value per voxel: read one channel per segment (as_labels=False)")  # fmt: skip
    top = max(numbers, default=0)
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    labels = np.zeros(data.shape[1:], dtype=dtype)
    for c, number in enumerate(numbers):
        labels[data[c] > 0] = number
    return labels[None]


def contour_plane(vox: np.ndarray, tol: float, affine, where: str) -> tuple[int, int]:
    """(grid axis, index) of the grid plane all contour points ``vox`` (n, 3; i, j, k) lie on."""
    for axis in (2, 1, 0):  # the slice axis first: a degenerate (collinear) contour prefers it
        index = np.round(np.median(vox[:, axis]))
        if np.max(np.abs(vox[:, axis] - index)) <= tol:
            return axis, int(index)
    spread = vox.max(axis=0) - vox.min(axis=0)
    axis = int(np.argmin(spread))
    sp = geometry.spacing(affine)[axis]
    if spread[axis] > tol:
        why = (f"its points span {spread[axis]:.3g} voxel ({spread[axis] * sp:.3g} mm) along the reference axis "
               f"{AXIS_NAMES[axis]}: the contour is oblique to the reference slices")  # fmt: skip
    else:
        pos = float(np.mean(vox[:, axis]))
        off = abs(pos - round(pos))
        why = (f"it lies {off:.3g} voxel ({off * sp:.3g} mm) between reference planes {int(np.floor(pos))} and "
               f"{int(np.floor(pos)) + 1} along axis {AXIS_NAMES[axis]}")  # fmt: skip
    raise DicomError(f"{where} is not on a slice of the reference grid: {why} (tolerance {tol} voxel). Pass the "
                     "image series the structure set was drawn on as reference, or raise tol= if it is rounding")  # fmt: skip


def fill_even_odd(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of closed polygons (each ``(n, 2)`` as ``(u, v)`` = (column, row)) sampled at pixel centres.

    A pixel ``(v, u)`` is inside when a ray from its centre towards +u crosses the polygons' edges an odd number
    of times, so a polygon inside another is a hole (and overlapping polygons XOR). Edges are half-open in v
    (``min(y0, y1) <= v < max(y0, y1)``) and a crossing counts when ``x > u``: a centre exactly on an edge is
    inside on the low side and outside on the high side, so shared edges are never filled twice. Coordinates are
    rounded to 1e-6 pixel first, so edges through pixel centres are decided the same way on every platform.
    """
    ny, nx = shape
    if not polygons:
        return np.zeros(shape, dtype=bool)
    pts = [np.round(np.asarray(p, dtype=np.float64), 6) for p in polygons]
    x0 = np.concatenate([p[:, 0] for p in pts])
    y0 = np.concatenate([p[:, 1] for p in pts])
    x1 = np.concatenate([np.roll(p[:, 0], -1) for p in pts])
    y1 = np.concatenate([np.roll(p[:, 1], -1) for p in pts])
    first = np.maximum(np.ceil(np.minimum(y0, y1)), 0).astype(np.int64)
    last = np.minimum(np.ceil(np.maximum(y0, y1)) - 1, ny - 1).astype(np.int64)
    counts = np.maximum(last - first + 1, 0)  # horizontal edges cross no row
    total = int(counts.sum())
    if total == 0:
        return np.zeros(shape, dtype=bool)
    edge = np.repeat(np.arange(len(x0)), counts)
    v = first[edge] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    x = x0[edge] + (v - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    cut = np.clip(np.ceil(x), 0, nx).astype(np.int64)  # the crossing is right of centres u < x: u in [0, cut)
    size = ny * (nx + 1)
    toggles = np.bincount(v * (nx + 1), minlength=size) - np.bincount(v * (nx + 1) + cut, minlength=size)
    return (np.cumsum(toggles.reshape(ny, nx + 1)[:, :nx], axis=1) % 2).astype(bool)
