"""3D volumes from 2D image sequences (PNG, TIFF, JPEG, BMP) and multi-page TIFF.

Slices have no world geometry of their own: the caller gives the spacing, and the affine is
``diag(dx, dy, dz)`` in RAS with the origin at 0 (i = column, j = row, k = slice order). Colour images
become channels (``color="channels"``: RGB -> C=3, alpha dropped) or are converted to luminance
(``color="gray"``, ITU-R 601-2, as Pillow's ``convert("L")``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medstack.errors import FormatError, MedstackError, ReadError
from medstack.volume import Volume

__all__ = ["load_stack"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _frames(path: Path):
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as img:
            for frame in ImageSequence.Iterator(img):
                yield frame.copy()
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: not a readable image ({e})") from e


def _to_array(img, color: str, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        if color == "gray":
            return np.asarray(img.convert("L"))[None]
        rgb = np.asarray(img.convert("RGB"))
        return np.moveaxis(rgb, -1, 0)
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)[None]
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise FormatError(f"{path}: unsupported image layout {arr.shape} (mode {mode})")
    return arr[None]


def load_stack(
    files_or_folder: str | os.PathLike | Sequence,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    order: str = "natural",
    color: str = "channels",
    pad: bool = False,
) -> Volume:
    """Stack 2D images (or the pages of multi-page TIFFs) into a Volume ``(C, D, H, W)``.

    Parameters
    ----------
    files_or_folder : path or sequence of paths
        A folder (its image files), one multi-page TIFF, or an explicit list (used in the given order with
        ``order="given"``).
    spacing : (dz, dy, dx) mm
        Slice step, row spacing, column spacing, in ``(D, H, W)`` order.
    order : {"natural", "name", "given"}
        ``"natural"`` sorts names with numbers compared as numbers (``img2`` before ``img10``); ``"name"``
        sorts plain lexicographically; ``"given"`` keeps the list order.
    color : {"channels", "gray"}
        RGB images as three channels, or converted to one luminance channel.
    pad : bool
        Slices smaller than the largest are zero-padded at the bottom/right instead of raising an error.

    Raises
    ------
    MedstackError
        Slices of different sizes (naming the file) without ``pad=True``, or of different channel counts.
    """
    if order not in ("natural", "name", "given"):
        raise MedstackError(f"order must be 'natural', 'name' or 'given', got {order!r}")
    if color not in ("channels", "gray"):
        raise MedstackError(f"color must be 'channels' or 'gray', got {color!r}")
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise MedstackError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing!r}")
    if isinstance(files_or_folder, str | os.PathLike):
        root = Path(files_or_folder)
        if not root.exists():
            raise ReadError(f"{root}: no such file or folder")
        if root.is_dir():
            files = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
            if not files:
                raise ReadError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        else:
            files = [root]
        if order == "given":
            order = "natural"
    else:
        files = [Path(f) for f in files_or_folder]
        if not files:
            raise MedstackError("load_stack got an empty list of files")
    if order == "natural":
        files = sorted(files, key=_natural_key)
    elif order == "name":
        files = sorted(files, key=lambda p: p.name)
    slices, sources = [], []
    for f in files:
        for page, img in enumerate(_frames(f)):
            slices.append(_to_array(img, color, f))
            sources.append(f"{f}" + (f"[page {page}]" if page else ""))
    channels = {s.shape[0] for s in slices}
    if len(channels) > 1:
        raise MedstackError(f"slices mix grayscale and colour ({sorted(channels)} channels); pass color='gray'")
    shapes = [s.shape[1:] for s in slices]
    target = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    for src, shp in zip(sources, shapes):
        if shp != shapes[0] and not pad:
            raise MedstackError(f"{src}: slice is {shp[0]}x{shp[1]} pixels but {sources[0]} is "
                                f"{shapes[0][0]}x{shapes[0][1]}; pass pad=True to zero-pad to {target[0]}x{target[1]}")  # fmt: skip
    dtype = np.result_type(*[s.dtype for s in slices])
    data = np.zeros((channels.pop(), len(slices), *target), dtype=dtype)
    for d, s in enumerate(slices):
        data[:, d, : s.shape[1], : s.shape[2]] = s
    affine = np.diag([sp[2], sp[1], sp[0], 1.0])
    return Volume(data, affine, {"source": str(files[0].parent), "files": sources, "format": "image_stack"})
