"""NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK, and Volume <-> SimpleITK.Image.

ITK stores geometry in LPS+ as origin, spacing and a direction matrix; medstack converts to and from
its RAS+ affine with :func:`medstack.geometry.lps_to_ras` only. Multi-component (vector) pixels become
channels; a 4D image's fourth axis becomes channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medstack import geometry
from medstack.errors import FormatError, GeometryError
from medstack.io import require_file
from medstack.io._atomic import atomic_output
from medstack.volume import Volume

EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")


def sitk_affine(image) -> np.ndarray:
    """RAS+ affine of a ``SimpleITK.Image`` (first three axes; 2D images get a unit third axis)."""
    n = image.GetDimension()
    k = min(n, 3)
    direction = np.eye(3)
    direction[:k, :k] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)[:k, :k]
    spacing = np.ones(3)
    spacing[:k] = image.GetSpacing()[:k]
    origin = np.zeros(3)
    origin[:k] = image.GetOrigin()[:k]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    return geometry.lps_to_ras(lps)


def from_sitk(image, *, dtype=None, metadata=None) -> Volume:
    """A :class:`Volume` from a ``SimpleITK.Image`` (2D, 3D or 4D; scalar or vector pixels)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # (z, y, x[, comp]) / (t, z, y, x) / (y, x)
    n = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    if n == 2:
        arr = arr[:, None]
    elif n == 4:
        if arr.shape[0] != 1:
            raise FormatError("4D images with vector pixels are not supported; split the components first")
        arr = arr[0]
    elif n != 3:
        raise FormatError(f"{n}D images are not supported (expected 2D, 3D or 4D)")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    affine = geometry.check_affine(sitk_affine(image), what="image geometry (origin/spacing/direction)")
    return Volume(np.ascontiguousarray(arr), affine, dict(metadata or {}))


def to_sitk(volume: Volume):
    """A ``SimpleITK.Image`` of a Volume: scalar for one channel, vector (components = channels) otherwise."""
    import SimpleITK as sitk

    arr = np.ascontiguousarray(volume.to_numpy())
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.shape[0] == 1:
        image = sitk.GetImageFromArray(arr[0])
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), isVector=True)
    lps = geometry.ras_to_lps(volume.affine)
    image.SetSpacing([float(s) for s in geometry.spacing(lps)])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in geometry.direction(lps).reshape(-1)])
    return image


def read_itk(path, *, dtype=None) -> Volume:
    """Read NRRD / MHA / MHD with SimpleITK into a :class:`Volume`."""
    import SimpleITK as sitk

    path = require_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "rror" in m or "ailed" in m), msg[-1] if msg else "")
        raise FormatError(f"{path}: SimpleITK cannot read it: {detail.strip()}") from e
    meta = {"source": str(path), "format": path.suffix.lower().lstrip(".")}
    try:
        return from_sitk(image, dtype=dtype, metadata=meta)
    except (FormatError, GeometryError) as e:
        raise type(e)(f"{path}: {e}") from None


def write_itk(volume: Volume, path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a Volume as .nrrd / .nhdr / .mha / .mhd with SimpleITK, atomically (gzip by default)."""
    import SimpleITK as sitk

    path = Path(path)
    image = to_sitk(volume)
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path
