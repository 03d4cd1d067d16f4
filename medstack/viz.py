"""Pictures of volumes: three orthogonal slices in radiological display convention.

Display convention (as radiology viewers): axial and coronal views show the patient's right on the left
of the image; axial has anterior at the top; coronal and sagittal have superior at the top; sagittal has
anterior on the left. Each panel is labelled with orientation letters and drawn in mm (true aspect).

Figures are built with :class:`matplotlib.figure.Figure` directly: nothing here imports pyplot or
selects a matplotlib backend, so the user's backend (and ``plt.show()``) is never changed. The returned
:class:`VizFigure` is a plain Figure that also renders itself as PNG for Jupyter / VS Code / IPython
(``_repr_png_``), so a viz call as the last line of a cell shows the picture inline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medstack.errors import ArgumentError, GeometryError
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


_FIGURE_CLASS = None


def _figure_class():
    """:class:`VizFigure`, created on first use so importing medstack does not import matplotlib."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        from matplotlib.figure import Figure

        class VizFigure(Figure):
            """A :class:`matplotlib.figure.Figure` that notebooks display inline as PNG.

            It belongs to no pyplot figure manager (``plt.show()`` does not show it, ``plt.close`` is not
            needed); use :meth:`savefig` or :meth:`save` to write it to a file.
            """

            def _repr_png_(self) -> bytes:
                return _png_bytes(self)

            def save(self, path, *, overwrite: bool = False, dpi=None) -> Path:
                """Write the figure as PNG (or the format of ``path``'s suffix) atomically; return the path."""
                return _save_figure(self, path, overwrite=overwrite, dpi=dpi)

        VizFigure.__module__ = __name__
        VizFigure.__qualname__ = "VizFigure"
        _FIGURE_CLASS = VizFigure
    return _FIGURE_CLASS


def __getattr__(name):
    if name == "VizFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _new_figure(**kwargs):
    return _figure_class()(**kwargs)


def _png_bytes(fig, dpi=None) -> bytes:
    """The figure rendered to PNG bytes with the Agg canvas (no backend switch, no pyplot)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _save_figure(fig, path, *, overwrite: bool = False, dpi=None) -> Path:
    from medstack.io._atomic import atomic_output

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ArgumentError(f"{path}: cannot write a figure as {fmt!r}; use one of {', '.join(sorted(supported))}")
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi or fig.dpi, facecolor="white")
    return path


def _finish(fig, path, overwrite):
    if path is not None:
        _save_figure(fig, path, overwrite=overwrite)
    return fig


def parse_window(window, data=None) -> tuple[float, float]:
    """``(vmin, vmax)`` from a preset name, ``(level, width)``, ``"level,width"``, or None (1-99 percentiles)."""
    if window is None:
        if data is None:
            return 0.0, 1.0
        finite = np.asarray(data, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        return float(lo), float(hi if hi > lo else lo + 1)
    if isinstance(window, str):
        if window.lower() in WINDOWS:
            level, width = WINDOWS[window.lower()]
        else:
            try:
                level, width = (float(v) for v in window.split(","))
            except ValueError:
                raise ArgumentError(
                    f"window must be a preset ({', '.join(sorted(WINDOWS))}) or 'level,width', got {window!r}"
                ) from None
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise ArgumentError(f"window width must be positive, got {width}")
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
    """A :class:`VizFigure` (a matplotlib Figure) with axial, coronal and sagittal slices of ``volume``.

    Parameters
    ----------
    at : (x, y, z) RAS mm, optional
        World point the three slices pass through (default: the volume centre).
    label : Volume, optional
        Label map on the same grid, drawn as a categorical overlay.
    window : str or (level, width), optional
        CT preset (see :data:`WINDOWS`) or explicit window; default: 1st-99th percentiles.
    """
    vol = _check(volume)
    if min(vol.spatial_shape) < 1 or vol.to_numpy().size == 0:
        raise ArgumentError("cannot show an empty volume")
    if not 0 <= channel < vol.n_channels:
        raise ArgumentError(f"channel {channel} out of range for {vol.n_channels} channel(s)")
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
    fig = _new_figure(figsize=(12, 4.4), dpi=100)
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


def _as_volume(obj, what="volume") -> tuple[Volume, Volume | None]:
    """A Volume (and a label) from a Volume or a sample dict {"image": ..., "label": ...}."""
    if isinstance(obj, dict):
        if "image" not in obj:
            raise ArgumentError(f"{what}: a sample dict needs an 'image' key (it has {sorted(map(str, obj))})")
        lab = obj.get("label")
        return _check(obj["image"]), (lab if isinstance(lab, Volume) else None)
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("torch"):
        raise ArgumentError(f"{what}: got a bare {type(obj).__name__} of shape {tuple(obj.shape)}; wrap it with its "
                            "geometry: medstack.Volume(array[None], affine) (a 2D array is not a volume)")  # fmt: skip
    return _check(obj, what), None


def _label_on_grid(label: Volume | None, image: Volume) -> Volume | None:
    if label is None:
        return None
    if label.spatial_shape == image.spatial_shape and np.allclose(label.affine, image.affine, atol=1e-4):
        return label
    import warnings

    from medstack.resample import resample

    out = resample(label, like=image, mode="nearest")  # raises when the grids do not overlap at all
    warnings.warn("label grid differs from the image grid: resampled onto it (nearest) for display", stacklevel=3)
    return out


def show(volume_or_sample, at=None, label: Volume | None = None, window=None, *, title=None, channel: int = 0,
         path=None, overwrite: bool = False):  # fmt: skip
    """Three orthogonal slices in anatomical orientation with letters, mm axes, optional label overlay.

    Returns a :class:`VizFigure`: a matplotlib Figure (no pyplot state, no backend change) that Jupyter
    shows inline. A sample dict shows its "image" with its "label". With ``path`` the figure is also
    written there (PNG, or the format of the suffix), atomically; an existing file needs ``overwrite``.
    """
    vol, lab = _as_volume(volume_or_sample)
    lab = _label_on_grid(label if label is not None else lab, vol)
    fig = orthoview(vol, at=at, label=lab, window=window, title=title, channel=channel)
    return _finish(fig, path, overwrite)


def _panel_boxes(vol: Volume, starts, patch_size, view: str, index_ijk):
    """Rectangles (x0, y0, w, h in mm panel coordinates) of the patches that cross the displayed plane."""
    spec = _VIEWS[view]
    lps = vol.reoriented("LPS")
    sp = np.linalg.norm(lps.affine[:3, :3], axis=0)
    shape_ijk = np.array(lps.spatial_shape[::-1])
    out = []
    for start in np.asarray(starts).reshape(-1, 3):
        # patch corners in the original grid (d, h, w) -> world -> LPS voxel indices
        corners = np.array([[start[0] + a * patch_size[0], start[1] + b * patch_size[1], start[2] + c * patch_size[2]]
                            for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64) - 0.5  # fmt: skip
        ijk = lps.world_to_voxel(vol.voxel_to_world(corners[:, ::-1]))
        lo, hi = ijk.min(axis=0), ijk.max(axis=0)
        f = spec["fixed"]
        if not lo[f] <= index_ijk[f] <= hi[f]:
            continue
        r, c = spec["rows"], spec["cols"]
        x0, x1 = (lo[c] + 0.5) * sp[c], (hi[c] + 0.5) * sp[c]
        if spec["flip_rows"]:
            y0, y1 = (shape_ijk[r] - 1 - hi[r] + 0.5) * sp[r], (shape_ijk[r] - 1 - lo[r] + 0.5) * sp[r]
        else:
            y0, y1 = (lo[r] + 0.5) * sp[r], (hi[r] + 0.5) * sp[r]
        out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def show_patches(volume_or_sample, patch_positions, patch_size, *, at=None, window=None, title=None, color="cyan",
                 path=None, overwrite: bool = False):  # fmt: skip
    """Draw patch boxes (starts ``(n, 3)`` in voxels d, h, w of the volume) on the three planes.

    The planes pass through ``at`` (default: the centre of the first patch). Returns a :class:`VizFigure`;
    ``path`` also writes it to a file (see :func:`show`).
    """
    from matplotlib.patches import Rectangle

    vol, lab = _as_volume(volume_or_sample)
    starts = np.asarray(patch_positions, dtype=np.float64).reshape(-1, 3)
    size = np.broadcast_to(np.asarray(patch_size, dtype=np.float64), (3,))
    if at is None and len(starts):
        at = vol.voxel_to_world((starts[0] + size / 2 - 0.5)[::-1])
    fig = orthoview(
        vol, at=at, label=lab, window=window, title=title or f"{len(starts)} patches of {tuple(int(s) for s in size)}"
    )
    lps = vol.reoriented("LPS")
    index = (
        np.round(lps.world_to_voxel(np.asarray(at))).astype(int)
        if at is not None
        else (np.array(lps.spatial_shape[::-1]) - 1) // 2
    )
    for ax, view in zip(fig.axes, ("axial", "coronal", "sagittal")):
        for x0, y0, w, h in _panel_boxes(vol, starts, size, view, index):
            ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=color, linewidth=1.2))
    return _finish(fig, path, overwrite)


def show_sampling_map(volume: Volume, sampler, *, case=None, n: int = 2000, seed: int = 0, window=None, path=None,
                      overwrite: bool = False):  # fmt: skip
    """Where a sampler draws patch centres: a heat map of ``n`` draws over the three planes' maximum projection.

    Returns a :class:`VizFigure`; ``path`` also writes it to a file (see :func:`show`).
    """
    from medstack.patches.samplers import CaseInfo

    vol, _ = _as_volume(volume)
    info = case if case is not None else CaseInfo(vol.spatial_shape)
    starts = sampler.sample(info, np.random.default_rng(seed), n)
    centres = np.clip(starts + sampler.patch_size // 2, 0, np.array(vol.spatial_shape) - 1)
    counts = np.zeros(vol.spatial_shape, np.float32)
    np.add.at(counts, tuple(centres.T), 1.0)
    heat = vol.replace(data=counts[None])
    fig = orthoview(vol, window=window, title=f"{type(sampler).__name__}: {n} patch centres (max projection)")
    lps = heat.reoriented("LPS").to_numpy()[0]
    for ax, view in zip(fig.axes, ("axial", "coronal", "sagittal")):
        spec = _VIEWS[view]
        proj = lps.max(axis=2 - spec["fixed"])
        remaining = [a for a in (2, 1, 0) if a != spec["fixed"]]
        if remaining[0] != spec["rows"]:
            proj = proj.T
        if spec["flip_rows"]:
            proj = proj[::-1]
        ax.imshow(np.ma.masked_equal(proj, 0), cmap="autumn", alpha=0.7, extent=ax.images[0].get_extent(),
                  interpolation="nearest")  # fmt: skip
    return _finish(fig, path, overwrite)


def compare(a: Volume, b: Volume, *, at=None, window=None, titles=("before", "after"), path=None,
            overwrite: bool = False):  # fmt: skip
    """Two rows of orthogonal slices (e.g. before / after a transform), each through the same world point.

    Returns a :class:`VizFigure`; ``path`` also writes it to a file (see :func:`show`).
    """
    va, _ = _as_volume(a, "a")
    vb, _ = _as_volume(b, "b")
    if at is None:
        at = va.voxel_to_world((np.array(va.spatial_shape[::-1]) - 1) / 2)
    fig = _new_figure(figsize=(12, 8.6), dpi=100)
    subfigs = fig.subfigures(2, 1)
    for sub, vol, name in zip(subfigs, (va, vb), titles):
        single = orthoview(vol, at=at, window=window, title=name)
        axes = sub.subplots(1, 3)
        for dst, src in zip(axes, single.axes):
            img = src.images[0]
            dst.imshow(img.get_array(), cmap="gray", norm=img.norm, extent=img.get_extent(), interpolation="nearest")
            for t in src.texts:
                dst.text(*t.get_position(), t.get_text(), color="yellow", fontsize=12, fontweight="bold",
                         ha="center", va="center")  # fmt: skip
            dst.set_title(f"{name}: {src.get_title()}")
    return _finish(fig, path, overwrite)


def thumbnail_png(volume: Volume, size: int = 96) -> bytes:
    """A small PNG (axial slice through the centre) for notebook summaries."""
    import io

    from matplotlib.figure import Figure

    vol = volume.materialized().replace(data=volume.to_numpy()[:1]).reoriented("LPS")
    plane, extent = _panel(vol, "axial", (np.array(vol.spatial_shape[::-1]) - 1) // 2)
    vmin, vmax = parse_window(None, plane)
    fig = Figure(figsize=(size / 50, size / 50), dpi=50)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, extent=extent)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _check(volume, what="volume") -> Volume:
    if not isinstance(volume, Volume):
        raise ArgumentError(f"{what} must be a medstack.Volume, got {type(volume).__name__} "
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
