"""The :class:`Volume`: voxel data ``(C, D, H, W)`` plus the affine that places it in the world."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from medstack import geometry
from medstack.errors import ArgumentError, GeometryError

__all__ = ["Volume"]


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "permute")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Volume:
    """An image volume: ``data`` of shape ``(C, D, H, W)``, a RAS+ ``affine`` and ``metadata``.

    Parameters
    ----------
    data : numpy.ndarray, torch.Tensor or lazy array
        Voxel values, shape ``(C, D, H, W)``: channels, slices, rows, columns. A lazy array (from
        ``medstack.load(path, lazy=True)``) reads only the chunks a slice touches.
    affine : array_like, 4x4
        Maps voxel index ``(i, j, k, 1) = (w, h, d, 1)`` to RAS+ millimetres, like a NIfTI sform.
        Copied to a read-only float64 array.
    metadata : mapping, optional
        Free-form information (source path, DICOM tags, QA findings, channel names). Read-only;
        use :meth:`replace` to derive a Volume with other metadata.

    Notes
    -----
    Spacing, origin, direction and orientation are derived from the affine and never stored twice.
    A Volume is immutable: every method returns a new Volume and never modifies its input.

    Examples
    --------
    >>> import numpy as np, medstack
    >>> vol = medstack.Volume(np.zeros((1, 4, 5, 6), np.int16), np.diag([0.7, 0.7, 2.5, 1.0]))
    >>> vol.shape, vol.spacing, vol.orientation
    ((1, 4, 5, 6), DHW(d=2.5, h=0.7, w=0.7), 'RAS')
    """

    data: Any
    affine: np.ndarray
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shape = getattr(self.data, "shape", None)
        if shape is None or not hasattr(self.data, "dtype"):
            raise ArgumentError(
                f"Volume data must be a numpy array, torch tensor or lazy array, got {type(self.data).__name__}"
            )
        if len(shape) != 4:
            hint = " (add a channel axis: data[None])" if len(shape) == 3 else ""
            raise GeometryError(f"Volume data must have shape (C, D, H, W), got {tuple(shape)}{hint}")
        if any(int(s) <= 0 for s in shape):
            raise GeometryError(f"Volume data must not be empty, got shape {tuple(shape)}")
        object.__setattr__(self, "affine", geometry.check_affine(self.affine, what="Volume affine"))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    # -- derived geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(C, D, H, W)``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return self.shape[1:]

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return self.shape[0]

    @property
    def spacing(self) -> geometry.DHW:
        """Voxel size in mm in array order ``(D, H, W)`` (slice step, row step, column step), as a
        :class:`~medstack.geometry.DHW` named tuple (``vol.spacing.d``; it compares equal to a plain tuple).
        Passing it back as ``spacing=`` is explicit: no axis-order warning."""
        return geometry.DHW(*(float(s) for s in geometry.ijk_to_dhw(geometry.spacing(self.affine))))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS position in mm of the centre of voxel ``[:, 0, 0, 0]``."""
        return tuple(float(v) for v in geometry.origin(self.affine))

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the RAS unit vectors of voxel axes ``i, j, k`` (= ``w, h, d``)."""
        return geometry.direction(self.affine)

    @property
    def orientation(self) -> str:
        """Orientation code of voxel axes ``(i, j, k)``, e.g. ``"RAS"`` or ``"LPS"`` (nibabel's axcodes)."""
        return geometry.axcodes(self.affine)

    @property
    def dtype(self):
        """Data type of ``data`` (a numpy dtype or a torch dtype)."""
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        """Size of ``data`` in bytes (in memory once loaded)."""
        itemsize = self.data.element_size() if _is_tensor(self.data) else np.dtype(self.data.dtype).itemsize
        return int(np.prod(self.shape)) * int(itemsize)

    @property
    def is_lazy(self) -> bool:
        """True when ``data`` is read from disk on demand (``load(..., lazy=True)``)."""
        return not isinstance(self.data, np.ndarray) and not _is_tensor(self.data)

    # -- derivation -------------------------------------------------------------------------------
    def replace(self, **changes) -> Volume:
        """A new Volume with some of ``data``, ``affine``, ``metadata`` replaced (like dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def to_numpy(self) -> np.ndarray:
        """The data as a NumPy array (reads lazy data; tensors are moved to the CPU)."""
        if _is_tensor(self.data):
            return self.data.detach().cpu().numpy()
        return np.asarray(self.data)

    def materialized(self) -> Volume:
        """This Volume with lazy data read into memory (returns ``self`` when already in memory)."""
        return self.replace(data=self.to_numpy()) if self.is_lazy else self

    def to_tensor(self, device=None, dtype=None):
        """The data as a ``torch.Tensor`` ``(C, D, H, W)`` on ``device`` with ``dtype``.

        Shares memory with a writable NumPy array or a tensor when neither device nor dtype changes.
        """
        import torch

        data = self.data
        if not _is_tensor(data):
            arr = self.to_numpy()
            if not arr.flags.writeable or not arr.dtype.isnative or any(st < 0 for st in arr.strides):
                arr = np.array(arr, dtype=arr.dtype.newbyteorder("="))  # torch needs native, positive strides
            data = torch.from_numpy(arr)
        return data.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else data

    def reoriented(self, code: str = "RAS") -> Volume:
        """The same voxels with axes permuted/flipped so that :attr:`orientation` becomes ``code``.

        No interpolation: every voxel keeps its value and its world position; only the index order
        and the affine change. Oblique volumes get the closest axis-aligned orientation.
        """
        vol = self.materialized()
        perm, flip, new_affine = geometry.reorientation(vol.affine, geometry.dhw_to_ijk(vol.spatial_shape), code)
        return vol.replace(data=geometry.reorient_array(vol.data, perm, flip), affine=new_affine)

    def voxel_to_world(self, points) -> np.ndarray:
        """Voxel coordinates ``(..., 3)`` in ``(i, j, k) = (w, h, d)`` order to RAS mm ``(..., 3)``."""
        return geometry.voxel_to_world(self.affine, points)

    def world_to_voxel(self, points) -> np.ndarray:
        """RAS mm points ``(..., 3)`` to fractional voxel coordinates in ``(i, j, k) = (w, h, d)`` order."""
        return geometry.world_to_voxel(self.affine, points)

    # -- interop ----------------------------------------------------------------------------------
    def to_nibabel(self):
        """A ``nibabel.Nifti1Image`` (x, y, z[, c]) sharing the data; sform and qform set to the affine."""
        from medstack.io.nifti import to_nibabel

        return to_nibabel(self)

    @classmethod
    def from_nibabel(cls, img, *, dtype=None) -> Volume:
        """Build a Volume from a nibabel image (sform, else qform, else pixdim; scl_slope/inter applied)."""
        from medstack.io.nifti import from_nibabel

        return from_nibabel(img, dtype=dtype)

    def to_sitk(self):
        """A ``SimpleITK.Image`` (LPS origin/direction); several channels become a vector image."""
        from medstack.io.itk import to_sitk

        return to_sitk(self)

    @classmethod
    def from_sitk(cls, image, *, dtype=None) -> Volume:
        """Build a Volume from a ``SimpleITK.Image`` (LPS converted to RAS; vector components -> channels)."""
        from medstack.io.itk import from_sitk

        return from_sitk(image, dtype=dtype)

    def to_monai(self):
        """A MONAI ``MetaTensor`` ``(C, i, j, k)`` (channel-first, spatial order x, y, z) with RAS affine."""
        import torch
        from monai.data import MetaTensor

        meta = {"space": "RAS", "original_channel_dim": 0}
        meta.update({k: v for k, v in self.metadata.items() if isinstance(v, str | int | float)})
        t = self.to_tensor().permute(0, 3, 2, 1)
        return MetaTensor(t, affine=torch.as_tensor(np.array(self.affine)), meta=meta)

    @classmethod
    def from_monai(cls, tensor, *, metadata=None) -> Volume:
        """Build a Volume from a MONAI ``MetaTensor`` ``(C, i, j, k)``; an LPS-space affine is converted."""
        affine = np.asarray(tensor.affine.detach().cpu().numpy(), dtype=np.float64)
        space = str(tensor.meta.get("space", "RAS")).upper()
        if space.endswith("LPS"):
            affine = geometry.lps_to_ras(affine)
        data = tensor.as_tensor().permute(0, 3, 2, 1)
        return cls(data, affine, dict(metadata or {}))

    # -- display ----------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Notebook summary: geometry table and an axial thumbnail."""
        import base64
        import html

        try:
            from medstack.viz import thumbnail_png

            img = base64.b64encode(thumbnail_png(self)).decode()
            thumb = f'<img src="data:image/png;base64,{img}" style="float:right;margin-left:8px"/>'
        except Exception:  # a thumbnail must never break the repr
            thumb = ""
        rows = [("shape (C, D, H, W)", self.shape), ("spacing (D, H, W) mm", tuple(round(s, 4) for s in self.spacing)),
                ("orientation", self.orientation), ("origin RAS mm", tuple(round(o, 2) for o in self.origin)),
                ("dtype", str(self.dtype).replace("torch.", "")), ("size", _human_bytes(self.nbytes)),
                ("source", self.metadata.get("source", ""))]  # fmt: skip
        table = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<div>{thumb}<b>medstack.Volume</b><table>{table}</table></div>"

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        kind = "lazy" if self.is_lazy else ("torch" + (f":{self.data.device}" if _is_tensor(self.data) else ""))
        if isinstance(self.data, np.ndarray):
            kind = "numpy"
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"Volume(shape={self.shape}, spacing=({sp}) mm, orientation={self.orientation!r}, "
            f"dtype={dtype}, {_human_bytes(self.nbytes)}, {kind})"
        )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
