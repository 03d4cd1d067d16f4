"""Stacking volumes as channels of one ``(C, D, H, W)`` volume on a common grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medstack.errors import ArgumentError, GeometryError
from medstack.volume import Volume

__all__ = ["same_grid", "stack"]


def same_grid(a: Volume, b: Volume, *, atol: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` have the same spatial shape and affines equal within ``atol`` (mm)."""
    return a.spatial_shape == b.spatial_shape and np.allclose(a.affine, b.affine, atol=atol)


def _describe(v: Volume) -> str:
    sp = ", ".join(f"{s:.3g}" for s in v.spacing)
    return f"shape {v.spatial_shape}, spacing ({sp}) mm, {v.orientation}, origin {tuple(round(o, 2) for o in v.origin)}"


def stack(
    volumes: Sequence[Volume],
    *,
    reference: int | Volume = 0,
    resample: bool = True,
    names: Sequence[str] | None = None,
    labels: Sequence[int] = (),
    mode: str | None = None,
    dtype=None,
) -> Volume:
    """Stack volumes (T1, T2, FLAIR; CT + PET; image + label) as channels on one grid.

    Parameters
    ----------
    volumes : sequence of Volume
        Each may have several channels (a 4D DICOM series stacks as its channels).
    reference : int or Volume
        The grid everything is put on: an index into ``volumes`` or another Volume.
    resample : bool
        Resample volumes whose grid differs from the reference, in world space. With ``False``, differing
        grids are an error naming the two grids.
    names : sequence of str, optional
        One name per input volume; stored as ``metadata["channel_names"]`` (one per output channel, with
        ``_c`` suffixes for multi-channel inputs).
    labels : sequence of int
        Indices of label maps: resampled with nearest neighbour (never inventing label values). Volumes not
        listed that look like label maps (boolean / integer dtype with at most 64 distinct values, see
        :func:`medstack.resample.looks_like_label`) are also resampled with nearest unless ``mode`` is given.
    mode : str, optional
        Interpolation for the non-label volumes ("linear", "nearest", "cubic"). Default: nearest for volumes
        that look like label maps, linear for the others; an explicit mode applies to every non-label volume.
    dtype : optional
        Output dtype; default: NumPy's promotion of the inputs (float32 when any input was interpolated).
    """
    from medstack.resample import resample as _resample

    volumes = list(volumes)
    if not volumes:
        raise ArgumentError("stack needs at least one volume")
    for i, v in enumerate(volumes):
        if not isinstance(v, Volume):
            raise ArgumentError(f"volumes[{i}] is a {type(v).__name__}, expected a medstack.Volume")
    if names is not None and len(names) != len(volumes):
        raise ArgumentError(f"names has {len(names)} entries for {len(volumes)} volumes")
    bad = [i for i in labels if not 0 <= i < len(volumes)]
    if bad:
        raise ArgumentError(f"labels= indices {bad} out of range for {len(volumes)} volumes")
    if isinstance(reference, Volume):
        ref = reference
    else:
        if not 0 <= int(reference) < len(volumes):
            raise ArgumentError(f"reference={reference} out of range for {len(volumes)} volumes")
        ref = volumes[int(reference)]
    parts = []
    for i, v in enumerate(volumes):
        if same_grid(v, ref):
            parts.append(v.to_numpy())
            continue
        if not resample:
            raise GeometryError(f"volumes[{i}] is on another grid than the reference ({_describe(v)} vs "
                                f"{_describe(ref)}); pass resample=True or resample it first")  # fmt: skip
        is_label = i in labels
        out = _resample(v, like=ref, mode="nearest" if is_label else mode, is_label=True if is_label else None)
        parts.append(out.to_numpy())
    data = np.concatenate(parts, axis=0) if dtype is None else np.concatenate([p.astype(dtype) for p in parts], axis=0)
    meta = {"sources": [str(v.metadata.get("source", "")) for v in volumes]}
    if names is not None:
        channel_names = []
        for name, p in zip(names, parts):
            channel_names += [name] if p.shape[0] == 1 else [f"{name}_{c}" for c in range(p.shape[0])]
        meta["channel_names"] = channel_names
    return Volume(data, np.array(ref.affine), meta)
