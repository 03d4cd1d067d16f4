"""Resampling in world space with torch (CPU or CUDA): to a spacing, a shape, or another volume's grid.

Each output voxel centre is mapped to input voxel coordinates through both affines
(``inv(A_in) @ A_out``), so any pair of grids, oblique included, is handled correctly:

- axis-aligned pairs (the common case: same orientation, other spacing; or any orientations whose axes
  are parallel, after a free reorientation) use separable 1D interpolation along D, H and W — exact
  linear/nearest/cubic, and several times faster than a 3D ``grid_sample``;
- other pairs use ``torch.nn.functional.grid_sample`` (linear or nearest), chunked along D.

Two execution strategies for axis-aligned pairs (``method=``): ``"slices"`` works slice by slice so the working
set stays in the CPU caches (the CPU default); ``"volume"`` runs a few kernels over the whole tensor (one
trilinear kernel, one index gather for nearest: the CUDA default, where thousands of per-slice launches cost
more than the arithmetic). Both give the same values (nearest and labels: exactly).

nnU-Net-style options: ``anisotropic=`` interpolates in-plane with ``mode`` and along a much coarser axis with
``out_of_plane_mode`` (nearest by default: nnU-Net's ``order_z=0``); ``label_mode="onehot"`` resamples each label
value's mask with linear (or cubic) interpolation and takes the argmax.

Conventions: outside the input's field of view (beyond half a voxel past the outer voxel centres) the
output is ``pad_value``; within that half voxel the edge value extends (no blending with padding).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, GeometryError
from medstack.volume import Volume

__all__ = ["looks_like_label", "resample", "target_grid"]

logger = logging.getLogger(__name__)

MODES = ("linear", "nearest", "cubic")
_CHUNK_VOXELS = 1 << 24  # output voxels per grid_sample call (~200 MB of grid in float32)
_AXIS_TOL = 1e-6
LABEL_MAX_VALUES = 64  # an integer volume with at most this many distinct values looks like a label map
_LABEL_SAMPLE = 1 << 16  # voxels looked at first (strided) before a full count


def looks_like_label(volume: Volume) -> bool:
    """Whether ``volume`` looks like a label map: a boolean or integer dtype with at most
    ``LABEL_MAX_VALUES`` (64) distinct values. Float volumes never look like labels. Cheap: the distinct values
    of a strided sample are counted first; the full volume is counted only when the sample has <= 64."""
    data = volume.data
    try:
        import torch

        if isinstance(data, torch.Tensor):
            if data.is_floating_point() or data.is_complex():
                return False
            if data.device.type != "cpu":  # count on the device: no copy of the volume to host memory
                return _tensor_looks_like_label(data.detach())
            data = data.detach().numpy()
    except ImportError:  # pragma: no cover
        pass
    kind = np.dtype(getattr(data, "dtype", np.float64)).kind  # NumPy or lazy (HDF5) arrays: dtype known, no read
    if kind in "biu" and not isinstance(data, np.ndarray):
        data = np.asarray(volume.materialized().data)
    if kind not in "biu":
        return False
    if kind == "b":
        return True
    flat = data.reshape(-1)
    step = max(1, flat.size // _LABEL_SAMPLE)
    if np.unique(flat[::step]).size > LABEL_MAX_VALUES:
        return False
    return step == 1 or np.unique(flat).size <= LABEL_MAX_VALUES


def _tensor_looks_like_label(data) -> bool:
    import torch

    if data.dtype == torch.bool:
        return True
    flat = data.reshape(-1)
    step = max(1, flat.numel() // _LABEL_SAMPLE)
    if torch.unique(flat[::step]).numel() > LABEL_MAX_VALUES:
        return False
    return step == 1 or torch.unique(flat).numel() <= LABEL_MAX_VALUES


def target_grid(volume: Volume, *, spacing=None, shape=None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and ``(D, H, W)`` of a grid covering ``volume``'s field of view with a new spacing or shape.

    The field of view (outer voxel edges) is kept: the first voxel's centre moves by half the change of
    voxel size, as in SimpleITK / TorchIO ``Resample``. ``spacing`` and ``shape`` are in ``(D, H, W)`` order
    (slices, rows, columns: the reverse of MONAI's ``pixdim``); :class:`medstack.geometry.XYZ` /
    :class:`~medstack.geometry.DHW` or a dict ``{"D": .., "H": .., "W": ..}`` make the order explicit, and a plain
    tuple that looks MONAI-ordered warns (:func:`medstack.geometry.as_dhw`).
    """
    old_sp = np.array(volume.spacing, dtype=np.float64)  # (D, H, W)
    old_shape = np.array(volume.spatial_shape, dtype=np.float64)
    if (spacing is None) == (shape is None):
        raise ArgumentError("pass exactly one of spacing=, shape= or like=")
    if spacing is not None:
        new_sp = np.array(geometry.as_dhw(spacing, name="spacing", volume_spacing=old_sp))
        if np.any(new_sp <= 0) or not np.all(np.isfinite(new_sp)):
            raise GeometryError(f"spacing must be positive, finite mm in (D, H, W) order, got {tuple(new_sp)}")
        new_shape = np.maximum(1, np.round(old_shape * old_sp / new_sp)).astype(int)
    else:
        new_shape = np.array(geometry.as_dhw(shape, name="shape"))
        if np.any(new_shape < 1) or np.any(new_shape != np.round(new_shape)):
            raise GeometryError(f"shape must be positive integers in (D, H, W) order, got {tuple(shape)}")
        new_shape = new_shape.astype(int)
        new_sp = old_sp * old_shape / new_shape
    direction = geometry.direction(volume.affine)  # columns i, j, k
    sp_ijk = new_sp[::-1]
    affine = np.eye(4)
    affine[:3, :3] = direction * sp_ijk
    affine[:3, 3] = geometry.origin(volume.affine) + direction @ ((sp_ijk - old_sp[::-1]) / 2.0)
    return affine, tuple(int(s) for s in new_shape)


def _overlap_fraction(m: np.ndarray, in_shape_ijk, out_shape_ijk) -> float:
    """Fraction of output grid corners... approximated on a coarse lattice of output points."""
    axes = [np.linspace(0, n - 1, min(n, 9)) for n in out_shape_ijk]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    src = pts @ m[:3, :3].T + m[:3, 3]
    inside = np.all((src >= -0.5) & (src <= np.asarray(in_shape_ijk) - 0.5), axis=1)
    return float(inside.mean())


def resample(
    volume: Volume,
    spacing: Sequence[float] | float | None = None,
    shape: Sequence[int] | None = None,
    like: Volume | None = None,
    *,
    mode: str | None = None,
    pad_value: float | None = None,
    antialias: bool = False,
    is_label: bool | None = None,
    dtype=None,
    label_mode: str | None = None,
    anisotropic: bool | str = False,
    anisotropy_threshold: float = 3.0,
    out_of_plane_mode: str = "nearest",
    method: str = "auto",
) -> Volume:
    """Resample ``volume`` in world space onto a new grid.

    Parameters
    ----------
    volume : Volume
        Input ``(C, D, H, W)``; NumPy or torch (computed on the tensor's device, CPU or CUDA).
    spacing : float or (D, H, W) mm, optional
        Target voxel size, keeping the field of view. A plain tuple is ``(D, H, W)`` (slices, rows, columns), the
        reverse of MONAI's ``pixdim``; ``geometry.XYZ(x, y, z)`` takes MONAI / TorchIO order,
        ``geometry.DHW(d, h, w)`` or ``{"D": 2, "H": 0.7, "W": 0.7}`` name it; a plain tuple with its largest value
        last on a volume whose slices are coarsest warns (:class:`~medstack.geometry.AxisOrderWarning`).
    shape : (D, H, W), optional
        Target grid size, keeping the field of view.
    like : Volume, optional
        Resample onto this volume's grid (its affine and spatial shape).
    mode : {"linear", "nearest", "cubic"}, optional
        Default (None): ``"nearest"`` when the volume looks like a label map (see ``is_label``; logged at INFO),
        else ``"linear"``. An explicit mode is always respected (``mode="linear"`` forces interpolation).
        ``"nearest"`` keeps the input dtype and never invents values: use it for label maps (a float
        label map with non-integer values is refused). ``"cubic"`` (Keys cubic convolution, a = -0.5) needs
        axis-aligned grids. With ``label_mode="onehot"``: the interpolation of each label's mask (default linear).
    pad_value : float, optional
        Output value outside the input's field of view. Default: the input's minimum (air / background).
    antialias : bool
        When downsampling an axis by a factor ``f > 1``, smooth it first with a Gaussian of
        ``sigma = (f - 1) / 2`` input voxels (as TorchIO / scikit-image), to avoid aliasing.
    is_label : bool, optional
        ``True``: the volume is a label map: requires ``mode="nearest"`` and integer values (a float label map
        with fractional values is refused, naming the argument). ``False``: an image, interpolated (``"linear"``
        by default) whatever its values. Default (None): decided from the data when ``mode`` is omitted — a
        boolean or integer volume with at most 64 distinct values (:func:`looks_like_label`) is a label map.
    dtype : optional
        Output dtype. Default: float32 for linear/cubic (float64 input stays float64), the input's dtype for
        nearest and label maps.
    label_mode : {"nearest", "onehot"}, optional
        Marks the volume as a label map (integer values) and says how to resample it. ``"nearest"``: as
        ``is_label=True``. ``"onehot"`` (nnU-Net's way for segmentations): the mask of each label value present
        is interpolated as a float with ``mode`` (``"linear"`` by default, or ``"cubic"``) and every output voxel
        takes the label of the largest interpolated mask (ties go to the smaller label value; nnU-Net assigns
        ``mask >= 0.5`` label by label, which agrees wherever no tie or no "nobody above 0.5" occurs). Smoother
        boundaries than nearest when upsampling; only values present in the input (or ``pad_value``) come out;
        the dtype is kept. Costs one resampling per label value.
    anisotropic : bool or "auto"
        Separate-axis resampling (nnU-Net's ``do_separate_z``): the coarse axis is interpolated with
        ``out_of_plane_mode`` and the other two with ``mode``. ``"auto"``: only when the coarsest / finest
        spacing of the input (else of the target) is above ``anisotropy_threshold`` and that coarsest axis is
        unique (nnU-Net's rule); ``True``: always, along the input's unique coarsest axis (else the target's);
        ``False`` (default): every axis with ``mode``. Needs axis-aligned grids (raises GeometryError otherwise).
    anisotropy_threshold : float
        Spacing ratio for ``anisotropic="auto"`` (nnU-Net: 3).
    out_of_plane_mode : {"nearest", "linear", "cubic"}
        Interpolation along the coarse axis when the resampling is anisotropic (nnU-Net: ``order_z=0``).
    method : {"auto", "slices", "volume"}
        How axis-aligned pairs are computed (same values either way): ``"slices"`` slice by slice (cache-friendly
        on CPU); ``"volume"`` a few whole-volume kernels (a trilinear ``upsample`` kernel, a single index gather
        for nearest that keeps the dtype, three 1D passes otherwise). ``"auto"``: ``"volume"`` for CUDA tensors,
        ``"slices"`` on CPU. Oblique pairs always use ``grid_sample``.

    Returns
    -------
    Volume
        NumPy in, NumPy out; tensor in, tensor out on the same device. The metadata is kept.

    Raises
    ------
    GeometryError
        Bad spacing/shape, or grids that do not overlap at all (a warning gives the fraction when they
        partly overlap less than half).

    Examples
    --------
    >>> import numpy as np, medstack
    >>> from medstack.geometry import DHW
    >>> seg = medstack.Volume(np.zeros((1, 8, 16, 16), np.uint8), np.diag([0.7, 0.7, 4.0, 1.0]))
    >>> out = resample(seg, spacing=DHW(2.0, 1.0, 1.0), label_mode="onehot", anisotropic="auto")
    >>> out.spatial_shape, out.dtype
    ((16, 11, 11), dtype('uint8'))
    """
    import warnings

    if not isinstance(volume, Volume):
        raise ArgumentError(f"volume must be a medstack.Volume, got {type(volume).__name__}")
    if mode is not None and mode not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    _check_options(label_mode, anisotropic, anisotropy_threshold, out_of_plane_mode, method)
    onehot = label_mode == "onehot"
    if label_mode is not None:
        if is_label is False:
            raise ArgumentError(f"label_mode={label_mode!r} resamples a label map, but is_label=False was passed; "
                                "drop one of them")  # fmt: skip
        if onehot:
            mode = mode or "linear"
            _check_label_values(volume, "volume")
        else:
            mode = mode or "nearest"
            check_label(volume, mode, what="volume")
    elif is_label:  # an explicit label map needs mode="nearest" (an omitted or other mode is refused, naming it)
        check_label(volume, mode, what="volume")
    elif mode is None and is_label is None and looks_like_label(volume):
        mode = "nearest"
        logger.info("resample: integer volume with <= %d distinct values treated as a label map (nearest); "
                    "pass mode='linear' or is_label=False to interpolate it", LABEL_MAX_VALUES)  # fmt: skip
    elif mode is None:
        mode = "linear"
    if like is not None:
        if spacing is not None or shape is not None:
            raise ArgumentError("pass like= alone, not with spacing= or shape=")
        if not isinstance(like, Volume):
            raise ArgumentError(f"like= must be a medstack.Volume, got {type(like).__name__}")
        out_affine, out_shape = np.array(like.affine), like.spatial_shape
    else:
        out_affine, out_shape = target_grid(volume, spacing=spacing, shape=shape)
    vol = volume.materialized()
    is_numpy = isinstance(vol.data, np.ndarray)
    src = vol.to_tensor()
    in_dtype = src.dtype
    # Make the axes parallel when they can be, for free (flips/permutations): then the map is diagonal.
    if geometry.axcodes(vol.affine) != geometry.axcodes(out_affine):
        candidate = vol.reoriented(geometry.axcodes(out_affine))
        m_try = np.linalg.inv(candidate.affine) @ out_affine
        if _is_diagonal(m_try):
            vol, src = candidate, candidate.to_tensor()
    m = np.linalg.inv(np.asarray(vol.affine)) @ out_affine
    in_ijk = vol.spatial_shape[::-1]
    out_ijk = tuple(out_shape)[::-1]
    frac = _overlap_fraction(m, in_ijk, out_ijk)
    if frac == 0.0:
        raise GeometryError("the target grid does not overlap the volume's field of view (no voxel in common); "
                            "check the affines (LPS vs RAS?) or the like= volume")  # fmt: skip
    if frac < 0.5:
        warnings.warn(f"only {frac:.0%} of the target grid overlaps the volume; the rest is pad_value", stacklevel=2)
    diagonal = _is_diagonal(m)
    modes = (mode,) * 3
    axis = _coarse_axis(anisotropic, anisotropy_threshold, vol.spacing, _dhw_spacing(out_affine))
    if axis is not None and out_of_plane_mode != mode:
        if not diagonal:
            raise GeometryError("anisotropic resampling needs axis-aligned grids (same axes up to flips/permutations)"
                                "; the target grid is oblique to the volume: pass anisotropic=False")  # fmt: skip
        modes = tuple(out_of_plane_mode if a == axis else mode for a in range(3))
        logger.debug("resample: anisotropic, array axis %d with %s, the others with %s", axis, out_of_plane_mode, mode)
    if not diagonal and mode == "cubic":
        raise GeometryError("mode='cubic' needs axis-aligned grids (same axes up to flips/permutations); "
                            "use 'linear' for oblique resampling")  # fmt: skip
    if method == "auto":
        method = "volume" if src.device.type == "cuda" else "slices"
    if pad_value is None:  # the input's minimum, computed only if some output voxel is outside
        pad_value = _LazyMin(src)

    def run(x, pad):
        if antialias:
            x = _antialias(x.to(_work_dtype(x, modes[0])), m, diagonal)
        work = _work_dtype(x, "nearest" if set(modes) == {"nearest"} else "linear")
        if not diagonal:
            return _grid_sample(x.to(work), m, out_shape, mode, pad)
        # the separable passes read the stored dtype and convert only what they select
        return _separable(x, m, out_shape, modes, pad, work, method)

    if onehot and set(modes) != {"nearest"}:
        out = _onehot(src, run, pad_value)
    else:
        out = run(src, pad_value)
    if dtype is not None:
        out = out.to(torch_dtype(dtype))
    elif (mode == "nearest" or onehot) and out.dtype != in_dtype:
        out = out.round().to(in_dtype) if not in_dtype.is_floating_point else out.to(in_dtype)
    data = out.cpu().numpy() if is_numpy else out
    return Volume(data, out_affine, dict(vol.metadata))


def check_label(volume: Volume, mode: str, *, what: str = "label") -> None:
    """A label map must be resampled with nearest and hold integer values."""
    if mode != "nearest":
        raise ArgumentError(f"{what} is a label map: resample it with mode='nearest' (got mode={mode!r}) or "
                            "label_mode='onehot'; linear interpolation would invent label values")  # fmt: skip
    _check_label_values(volume, what)


def _check_label_values(volume: Volume, what: str) -> None:
    """Integer values only; checked on the data's device (no host copy of a CUDA tensor), and only for floats."""
    data = volume.data
    if hasattr(data, "is_floating_point"):  # torch
        import torch

        bad = data.is_floating_point() and not bool(torch.equal(data, torch.round(data)))
        kind = str(data.dtype).removeprefix("torch.")
    else:
        if np.dtype(data.dtype).kind != "f":
            return
        arr = volume.to_numpy()
        bad, kind = not np.array_equal(arr, np.round(arr)), str(arr.dtype)
    if bad:
        raise ArgumentError(f"{what} is marked as a label map but holds non-integer values (dtype {kind}); "
                            "pass an integer label map or is_label=False")  # fmt: skip


_LABEL_MODES = (None, "nearest", "onehot")
_METHODS = ("auto", "slices", "volume")


def _check_options(label_mode, anisotropic, threshold, out_of_plane_mode, method) -> None:
    if label_mode not in _LABEL_MODES:
        raise ArgumentError(f"label_mode must be one of {_LABEL_MODES}, got {label_mode!r}")
    if anisotropic not in (True, False, "auto") or not isinstance(anisotropic, bool | str):
        raise ArgumentError(f"anisotropic must be True, False or 'auto', got {anisotropic!r}")
    if not (isinstance(threshold, int | float) and np.isfinite(threshold) and threshold >= 1):
        raise ArgumentError(f"anisotropy_threshold must be a spacing ratio >= 1 (nnU-Net: 3), got {threshold!r}")
    if out_of_plane_mode not in MODES:
        raise ArgumentError(f"out_of_plane_mode must be one of {MODES}, got {out_of_plane_mode!r}")
    if method not in _METHODS:
        raise ArgumentError(f"method must be one of {_METHODS}, got {method!r}")


def _dhw_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[::-1])


def _unique_coarsest(spacing) -> int | None:
    sp = np.asarray(spacing, dtype=np.float64)
    coarse = np.flatnonzero(sp >= sp.max() * (1 - 1e-6))
    return int(coarse[0]) if coarse.size == 1 else None


def _coarse_axis(anisotropic, threshold: float, in_spacing, out_spacing) -> int | None:
    """The array axis (0 = D) resampled separately, or None (nnU-Net's ``get_do_separate_z`` / lowres axis:
    the input spacing decides first, then the target's; a coarsest axis shared by two axes means none)."""
    if anisotropic is False:
        return None
    for sp in (in_spacing, out_spacing):
        if anisotropic is True or max(sp) / min(sp) > threshold:
            axis = _unique_coarsest(sp)
            if axis is not None or anisotropic == "auto":
                return axis
    if anisotropic == "auto":
        return None
    raise ArgumentError(f"anisotropic=True: no unique coarsest axis in the input spacing {tuple(in_spacing)} or "
                        f"the target spacing {tuple(out_spacing)} (D, H, W); pass anisotropic='auto' or False")  # fmt: skip


def _onehot(x, run, pad_value):
    """Label map resampled through one-hot masks: each value's mask interpolated (``run``, padded with 0), the
    output voxel takes the value whose mask is largest (ties: the smaller value). Outside the field of view every
    mask is 0 (inside they sum to 1), which marks the voxels that get ``pad_value``."""
    import torch

    values = torch.unique(x).tolist()  # a few numbers to the host, not the volume
    best = arg = None
    for v in values:
        p = run(x == v, 0.0)
        if best is None:
            best, arg = p, torch.full(p.shape, v, dtype=x.dtype, device=x.device)
        else:
            won = p > best
            best = torch.maximum(best, p)
            arg.masked_fill_(won, v)
    outside = best <= 0
    if bool(outside.any()):
        arg.masked_fill_(outside, float(pad_value) if x.is_floating_point() else round(float(pad_value)))
    return arg


class _LazyMin:
    """``float(_LazyMin(t))`` is ``t.min()``, computed on first use (a full pass skipped when nothing is padded)."""

    def __init__(self, tensor):
        self.tensor, self.value = tensor, None

    def __float__(self) -> float:
        if self.value is None:
            self.value = float(self.tensor.min())
        return self.value


def _is_diagonal(m: np.ndarray) -> bool:
    off = m[:3, :3] - np.diag(np.diag(m[:3, :3]))
    return bool(np.all(np.abs(off) < _AXIS_TOL * max(1.0, np.abs(m[:3, :3]).max())))


def _work_dtype(src, mode):
    import torch

    if torch.is_floating_point(src):
        return src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    if mode == "nearest" and src.dtype in (torch.int32, torch.int64):
        return torch.float64  # exact for large label values
    return torch.float32


def _axis_positions(scale: float, offset: float, n_out: int, device):
    import torch

    return torch.arange(n_out, device=device, dtype=torch.float64) * scale + offset


def _separable(x, m: np.ndarray, out_shape, modes, pad_value: float, work, method: str = "slices"):
    """Exact interpolation on axis-aligned grids, ``modes`` per array axis (D, H, W).

    ``method="slices"``: slice-by-slice paths for linear (field-of-view-keeping grids) and nearest (any);
    ``"volume"``: one trilinear kernel (field-of-view-keeping grids) or one index gather (nearest) over the whole
    tensor. Otherwise (cubic, mixed modes, other grids) three whole-volume 1D passes, cheapest order first.
    """
    import torch

    n_in = x.shape[1:]  # (D, H, W)
    mode = modes[0] if len(set(modes)) == 1 else None
    out = None
    if mode == "nearest":
        if method == "volume":  # one gather with broadcast 1D index vectors; the dtype is kept (uint8 stays uint8)
            idx = [torch.from_numpy(_nearest_index(m, a, out_shape[a], n_in[a])).to(x.device) for a in range(3)]
            out = x[:, idx[0][:, None, None], idx[1][:, None], idx[2]]
        else:
            out = _nearest_slices(x, m, out_shape)
    elif mode == "linear":
        out = (_trilinear_volume if method == "volume" else _interpolate_fast)(x, m, out_shape, work)
    if out is None:
        out = _passes(x, m, out_shape, modes, work)
    return _pad_outside(out, m, out_shape, n_in, pad_value)


def _passes(x, m: np.ndarray, out_shape, modes, work):
    """Three whole-volume 1D passes (one per axis, its own mode), shrinking axes first."""
    import torch

    n_in = x.shape[1:]
    order = sorted(range(3), key=lambda a: out_shape[a] / n_in[a])
    out = x
    for a in order:  # array axis a (0 = D)
        ijk = 2 - a
        pos = _axis_positions(m[ijk, ijk], m[ijk, 3], out_shape[a], x.device)
        if modes[a] == "nearest":
            idx = torch.from_numpy(_nearest_index(m, a, out_shape[a], n_in[a])).to(x.device)
            out = out.index_select(a + 1, idx)
        else:
            out = _interp_axis(out, a + 1, pos, modes[a], n_in[a], work)
    return out.to(work) if out.dtype != work else out


def _nearest_index(m: np.ndarray, a: int, n_out: int, n_in: int) -> np.ndarray:
    """Source index along array axis ``a`` of each output position: ``floor(pos + 0.5)`` clamped to the input;
    ties (exactly half-way, common with spacing ratios like 2.5) go up, as in ITK: + 1e-6 beats rounding error."""
    ijk = 2 - a
    pos = np.arange(n_out) * m[ijk, ijk] + m[ijk, 3]
    return np.clip(np.floor(pos + 0.5 + 1e-6), 0, n_in - 1).astype(np.int64)


def _fov_scales(m: np.ndarray, out_shape, n_in):
    """Per array axis scale ``s`` when each axis maps as ``src = s * dst + (s - 1) / 2`` (the field-of-view-keeping
    grids of ``spacing=`` / ``shape=``), else None."""
    scales = [m[2 - a, 2 - a] for a in range(3)]
    offsets = [m[2 - a, 3] for a in range(3)]
    if any(sc <= 0 or abs(off - (sc - 1) / 2) > 1e-6 for sc, off in zip(scales, offsets)):
        return None
    return scales


def _trilinear_volume(x, m: np.ndarray, out_shape, work):
    """Whole-volume linear resampling on field-of-view-keeping grids: one ``upsample_trilinear3d`` kernel with
    the exact output size and scales (PyTorch's ``align_corners=False`` mapping ``src = s * dst + (s - 1) / 2``,
    clamped at the edges like the separable passes). Memory: the input in the work dtype (a copy only when it is
    not already) and the output. Returns None when the grids do not have that form, or when an output position
    lies past the last input voxel centre by more than half a voxel (the CUDA kernel does not clamp there)."""
    import torch

    scales = _fov_scales(m, out_shape, x.shape[1:])
    if scales is None:
        return None
    for sc, n_out, n in zip(scales, out_shape, x.shape[1:]):
        if sc * (n_out - 1) + (sc - 1) / 2 > n - 0.5 + 1e-6:
            return None
    out = torch.ops.aten.upsample_trilinear3d.default(x[None].to(work), [int(n) for n in out_shape], False,
                                                      *(1.0 / sc for sc in scales))[0]  # fmt: skip
    return out.contiguous()


def _nearest_slices(x, m: np.ndarray, out_shape):
    """Nearest neighbour on axis-aligned grids, slice by slice, in the input dtype (labels are copied, never
    converted): each output slice gathers rows then columns of its source slice; consecutive output slices
    with the same source slice are copies. Index = ``floor(pos + 0.5)`` clamped to the input (round half up,
    also under rounding error).
    """
    import torch

    n_in = x.shape[1:]
    idx = [_nearest_index(m, a, out_shape[a], n_in[a]) for a in range(3)]
    dz = idx[0]
    plane_identity = all(len(idx[a]) == n_in[a] and np.array_equal(idx[a], np.arange(n_in[a])) for a in (1, 2))
    rows, cols = (torch.from_numpy(idx[a]).to(x.device) for a in (1, 2))
    out = torch.empty((x.shape[0], *out_shape), dtype=x.dtype, device=x.device)
    # on CPU, NumPy's take along the last axis is ~5x faster than torch.index_select there; mode="clip" (the
    # indices are already in range) because the default mode buffers the output through a temporary
    np_views = None
    if x.device.type == "cpu":
        try:
            np_views = (x.numpy(), out.numpy())
        except TypeError:  # no NumPy equivalent (bfloat16)
            np_views = None
    for ch in range(x.shape[0]):
        for k in range(out_shape[0]):
            if k > 0 and dz[k] == dz[k - 1]:
                out[ch, k].copy_(out[ch, k - 1])
            elif plane_identity:
                out[ch, k].copy_(x[ch, int(dz[k])])
            elif np_views is not None:
                np.take(np_views[0][ch, int(dz[k])][idx[1]], idx[2], axis=1, out=np_views[1][ch, k], mode="clip")
            else:
                torch.index_select(x[ch, int(dz[k])].index_select(0, rows), 1, cols, out=out[ch, k])
    return out


def _interpolate_fast(x, m: np.ndarray, out_shape, work):
    """Linear resampling when each axis maps as ``src = s * dst + (s - 1) / 2`` (the field-of-view-keeping
    grids of ``spacing=`` / ``shape=``), done separably and slice by slice: each input slice needed is
    resized in-plane once with bilinear ``F.interpolate`` (PyTorch's ``align_corners=False`` mapping with
    ``scale_factor = 1 / s``) and kept while output slices need it; each output slice is one ``lerp`` of
    two resized slices along D. Exactly trilinear, 8 taps per output voxel as a 3D kernel but with about
    half its arithmetic, and the working set (two resized slices) stays in the CPU cache, so memory traffic
    is one read of the input and one write of the output. Returns None when the grids do not have that form.
    """
    import torch
    import torch.nn.functional as F

    scales = _fov_scales(m, out_shape, x.shape[1:])  # per array axis (D, H, W)
    if scales is None:
        return None
    offsets = [m[2 - a, 3] for a in range(3)]
    c, d, h, w = x.shape
    od, oh, ow = out_shape
    # in-plane: floor(n * factor) must reach the output size -> replicate-pad the far end (same as clamping)
    pads = []
    for a, n in ((1, h), (2, w)):
        k = 0
        while int(np.floor((n + k) * (1.0 / scales[a]))) < out_shape[a]:  # F.interpolate's own output size
            k += 1
        pads.append(k)
    identity_plane = scales[1] == 1.0 and scales[2] == 1.0 and oh == h and ow == w

    buf = torch.empty((1, 1, h, w), dtype=work, device=x.device)  # reused: no allocation per slice

    def resized(ch: int, z: int):
        if identity_plane:
            return x[ch, z].to(work)
        sl = buf
        sl[0, 0].copy_(x[ch, z])  # converts to the work dtype
        if any(pads):
            sl = F.pad(sl, (0, pads[1], 0, pads[0]), mode="replicate")
        r = F.interpolate(sl, scale_factor=(1.0 / scales[1], 1.0 / scales[2]), mode="bilinear",
                          align_corners=False, recompute_scale_factor=False)  # fmt: skip
        return r[0, 0, :oh, :ow]

    pos = np.clip(np.arange(od) * scales[0] + offsets[0], 0, d - 1)
    i0 = np.floor(pos).astype(np.int64)
    t = pos - i0
    i1 = np.minimum(i0 + 1, d - 1)
    out = torch.empty((c, od, oh, ow), dtype=work, device=x.device)
    for ch in range(c):
        cache: dict[int, object] = {}  # resized slices; z only grows with the output slice (s > 0)
        for k in range(od):
            lo = int(i0[k])
            hi = lo if t[k] == 0.0 else int(i1[k])
            for z in (lo, hi):
                if z not in cache:
                    cache[z] = resized(ch, z)
            for z in [z for z in cache if z < lo]:
                del cache[z]
            if lo == hi:
                out[ch, k].copy_(cache[lo])
            else:
                torch.lerp(cache[lo], cache[hi], float(t[k]), out=out[ch, k])
    return out


def _pad_outside(out, m: np.ndarray, out_shape, n_in, pad_value: float):
    import torch

    for a in range(3):  # per-axis 1D masks, on the host (no device sync): nothing output-sized unless needed
        ijk = 2 - a
        pos = np.arange(out_shape[a], dtype=np.float64) * m[ijk, ijk] + m[ijk, 3]
        mask = (pos < -0.5) | (pos > n_in[a] - 0.5)
        if mask.any():
            view = torch.from_numpy(mask).to(out.device).view([1] + [-1 if b == a else 1 for b in range(3)])
            out = out.masked_fill(view, float(pad_value))
    return out


def _interp_axis(x, dim: int, pos, mode: str, n: int, work):
    import torch

    p = torch.clamp(pos, 0, n - 1)
    i0 = torch.floor(p)
    t = (p - i0).to(work)
    i0 = i0.long()
    shape = [1] * x.ndim
    shape[dim] = -1
    if mode == "linear":
        i1 = torch.clamp(i0 + 1, max=n - 1)
        a = x.index_select(dim, i0).to(work)
        b = x.index_select(dim, i1).to(work)
        # a + t * (b - a), in place: one output-sized temporary less than torch.lerp
        return b.sub_(a).mul_(t.view(shape)).add_(a)
    # cubic convolution (Keys, a = -0.5) with edge replication
    out = None
    tt = t.view(shape)
    for k, w in zip((-1, 0, 1, 2), _keys_weights(tt)):
        idx = torch.clamp(i0 + k, 0, n - 1)
        term = x.index_select(dim, idx).to(work) * w
        out = term if out is None else out + term
    return out


def _keys_weights(t):
    a = -0.5
    t2, t3 = t * t, t * t * t
    w0 = a * (t3 - 2 * t2 + t)
    w1 = (a + 2) * t3 - (a + 3) * t2 + 1
    w2 = -(a + 2) * t3 + (2 * a + 3) * t2 - a * t
    w3 = -a * (t3 - t2)
    return w0, w1, w2, w3


def _antialias(x, m: np.ndarray, diagonal: bool):
    """Gaussian pre-filter along each axis that is downsampled (output step > 1 input voxel)."""
    import torch
    import torch.nn.functional as F

    steps = np.linalg.norm(m[:3, :3], axis=0) if not diagonal else np.abs(np.diag(m[:3, :3]))
    for ijk, f in enumerate(steps):
        if f <= 1.0 + 1e-6:
            continue
        sigma = (f - 1.0) / 2.0
        radius = int(np.ceil(3 * sigma))
        k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (k / sigma) ** 2)
        kernel = kernel / kernel.sum()
        dim = 3 - ijk  # tensor dim (C, D, H, W)
        moved = x.movedim(dim, -1)
        shp = moved.shape
        flat = moved.reshape(-1, 1, shp[-1])
        flat = F.pad(flat, (radius, radius), mode="replicate")
        flat = F.conv1d(flat, kernel.view(1, 1, -1))
        x = flat.reshape(shp).movedim(-1, dim)
    return x


def _grid_sample(x, m: np.ndarray, out_shape, mode: str, pad_value: float):
    import torch
    import torch.nn.functional as F

    device, work = x.device, x.dtype
    d_in, h_in, w_in = x.shape[1:]
    size_ijk = torch.tensor([w_in, h_in, d_in], dtype=torch.float32, device=device)
    m_t = torch.as_tensor(m, dtype=torch.float32, device=device)  # float32: < 1e-4 voxel error
    d_out, h_out, w_out = out_shape
    out = torch.empty((x.shape[0], d_out, h_out, w_out), dtype=work, device=device)
    step = max(1, _CHUNK_VOXELS // (h_out * w_out))
    jj, ii = torch.meshgrid(torch.arange(h_out, device=device, dtype=torch.float32),
                            torch.arange(w_out, device=device, dtype=torch.float32), indexing="ij")  # fmt: skip
    fill = torch.as_tensor(float(pad_value), dtype=work, device=device)
    for k0 in range(0, d_out, step):
        kk = torch.arange(k0, min(d_out, k0 + step), device=device, dtype=torch.float32)
        ijk = torch.stack([ii.expand(len(kk), -1, -1), jj.expand(len(kk), -1, -1),
                           kk[:, None, None].expand(-1, h_out, w_out)], dim=-1)  # fmt: skip
        coords = ijk @ m_t[:3, :3].T + m_t[:3, 3]
        grid = (2.0 * coords + 1.0) / size_ijk - 1.0  # align_corners=False normalisation
        sampled = F.grid_sample(x[None], grid[None].to(work), mode="bilinear" if mode == "linear" else "nearest",
                                padding_mode="border", align_corners=False)[0]  # fmt: skip
        inside = ((coords >= -0.5) & (coords <= size_ijk - 0.5)).all(dim=-1)
        out[:, k0 : k0 + len(kk)] = torch.where(inside[None], sampled, fill)
    return out


def torch_dtype(dtype):
    """The torch dtype of a NumPy or torch dtype (one helper for resampling and the loader's batch buffers)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype
