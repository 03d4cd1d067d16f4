"""Pictures of volumes: three orthogonal slices in radiological display convention.

Display convention (as radiology viewers): axial and coronal views show the patient's right on the left
of the image; axial has anterior at the top; coronal and sagittal have superior at the top; sagittal has
anterior on the left. Each panel is labelled with orientation letters and drawn in mm (true aspect).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medstack.errors import GeometryError, MedstackError
from medstack.volume import Volume

#: CT window presets as (level, width) in HU.
WINDOWS = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "liver": (60.0, 160.0),
    "soft_tissue": (50.0, 400.0),
    "soft": (50.0, 400.0),
}

# For each view: which voxel axes of the LPS-reoriented volume are (rows, cols), the fixed axis, whether
# rows are flipped to put superior at the top, and the letters (top, bottom, left, right).
_VIEWS = {
    "axial": dict(fixed=2, rows=1, cols=0, flip_rows=False, letters=("A", "P", "R", "L")),
    "coronal": dict(fixed=1, rows=2, cols=0, flip_rows=True, letters=("S", "I", "R", "L")),
    "sagittal": dict(fixed=0, rows=2, cols=1, flip_rows=True, letters=("S", "I", "A", "P")),
}


def parse_window(window, data=None) -> tuple[float, float]:
    """``(vmin, vmax)`` from a preset name, ``(level, width)``, ``"level,width"``, or None (1-99 percentiles)."""
    if window is None:
        if data is None:
            return 0.0, 1.0
        finite = np.asarray(data, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        return float(lo), float(hi if hi > lo else lo + 1)
    if isinstance(window, str):
        if window.lower() in WINDOWS:
            level, width = WINDOWS[window.lower()]
        else:
            try:
                level, width = (float(v) for v in window.split(","))
            except ValueError:
                raise MedstackError(
                    f"window must be a preset ({', '.join(sorted(WINDOWS))}) or 'level,width', got {window!r}"
                ) from None
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise MedstackError(f"window width must be positive, got {width}")
    return level - width / 2, level + width / 2


def _panel(vol: Volume, view: str, index_ijk):
    spec = _VIEWS[view]
    data = vol.to_numpy()[0]  # (k, j, i)
    idx = [slice(None)] * 3
    fixed_array_axis = 2 - spec["fixed"]
    idx[fixed_array_axis] = int(index_ijk[spec["fixed"]])
    plane = data[tuple(idx)]
    # remaining array axes in (k, j, i) order -> ijk axes
    remaining = [a for a in (2, 1, 0) if a != spec["fixed"]]  # ijk axes in the plane's axis order
    if remaining[0] != spec["rows"]:
        plane = plane.T
    if spec["flip_rows"]:
        plane = plane[::-1]
    sp = np.linalg.norm(vol.affine[:3, :3], axis=0)
    extent = (0, plane.shape[1] * sp[spec["cols"]], plane.shape[0] * sp[spec["rows"]], 0)
    return plane, extent


def orthoview(volume: Volume, *, at=None, label: Volume | None = None, window=None, title: str | None = None,
              channel: int = 0, alpha: float = 0.4):  # fmt: skip
    """A matplotlib Figure with axial, coronal and sagittal slices of ``volume``.

    Parameters
    ----------
    at : (x, y, z) RAS mm, optional
        World point the three slices pass through (default: the volume centre).
    label : Volume, optional
        Label map on the same grid, drawn as a categorical overlay.
    window : str or (level, width), optional
        CT preset (see :data:`WINDOWS`) or explicit window; default: 1st-99th percentiles.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    vol = _check(volume)
    if not 0 <= channel < vol.n_channels:
        raise MedstackError(f"channel {channel} out of range for {vol.n_channels} channel(s)")
    vol = vol.replace(data=vol.to_numpy()[channel : channel + 1]).reoriented("LPS")
    lab = None
    if label is not None:
        lab = _check(label, what="label")
        if lab.spatial_shape != volume.spatial_shape or not np.allclose(lab.affine, volume.affine, atol=1e-4):
            raise GeometryError("label grid differs from the image grid (shape/affine); resample it first "
                                "(medstack.resample(label, like=image, mode='nearest'))")  # fmt: skip
        lab = lab.replace(data=lab.to_numpy()[:1]).reoriented("LPS")
    shape_ijk = np.array(vol.spatial_shape[::-1])
    if at is None:
        index = (shape_ijk - 1) // 2
    else:
        index = np.round(vol.world_to_voxel(np.asarray(at, dtype=np.float64))).astype(int)
        if np.any(index < 0) or np.any(index >= shape_ijk):
            raise GeometryError(f"at={tuple(at)} mm lies outside the volume (voxel {tuple(index)})")
    vmin, vmax = parse_window(window, vol.to_numpy())
    fig = Figure(figsize=(12, 4.4), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, view in zip(axes, ("axial", "coronal", "sagittal")):
        plane, extent = _panel(vol, view, index)
        ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        if lab is not None:
            lplane, _ = _panel(lab, view, index)
            overlay = np.ma.masked_equal(lplane.astype(np.int64), 0)
            ax.imshow(overlay, cmap="tab10", vmin=0, vmax=10, alpha=alpha, extent=extent, interpolation="nearest")
        top, bottom, left, right = _VIEWS[view]["letters"]
        w, h = extent[1], extent[2]
        style = dict(color="yellow", fontsize=12, fontweight="bold", ha="center", va="center")
        ax.text(w / 2, h * 0.04, top, **style)
        ax.text(w / 2, h * 0.96, bottom, **style)
        ax.text(w * 0.03, h / 2, left, **style)
        ax.text(w * 0.97, h / 2, right, **style)
        ax.set_title(view)
        ax.set_xlabel("mm")
        ax.tick_params(labelsize=7)
    world = vol.voxel_to_world(index)
    fig.suptitle(title or f"{volume.metadata.get('source', '')}  at ({world[0]:.1f}, {world[1]:.1f}, "
                 f"{world[2]:.1f}) mm RAS", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def _check(volume, what="volume") -> Volume:
    if not isinstance(volume, Volume):
        raise MedstackError(f"{what} must be a medstack.Volume, got {type(volume).__name__} "
                            "(wrap arrays: Volume(array[None, ...], affine))")  # fmt: skip
    return volume


def save_preview(volume: Volume, path, *, overwrite: bool = False, **kwargs) -> Path:
    """Write :func:`orthoview` as a PNG, atomically."""
    from medstack.io._atomic import atomic_output

    fig = orthoview(volume, **kwargs)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path
