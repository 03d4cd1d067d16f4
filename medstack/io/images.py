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

from medstack.errors import ArgumentError, FormatError, ReadError
from medstack.volume import Volume

__all__ = ["load_stack"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


#: exceptions Pillow raises on corrupt image files besides OSError (SyntaxError: some plugins' "not a ..." errors)
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError,
               OverflowError, MemoryError)  # fmt: skip


_MAX_RATIO = 4096  # decoded bytes per file byte no TIFF/PNG codec reaches (deflate ~1032:1, LZW ~2730:1)
_MIN_BUDGET = 1 << 28  # a file may always decode to this many bytes


def _bytes_per_band(mode: str) -> int:
    return 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1


def _check_size(img, path: Path, page: int) -> None:
    """Refuse, before decoding, a frame whose header size fields are empty or beyond Pillow's pixel limit."""
    from PIL import Image

    w, h = img.size
    where = f"{path}" + (f" [page {page}]" if page else "")
    if w < 1 or h < 1:
        raise FormatError(f"{where}: image size field is {w}x{h} pixels; an image needs at least one pixel")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise FormatError(f"{where}: image size field is {w}x{h} = {w * h} pixels, more than the limit of {limit} "
                          "(PIL.Image.MAX_IMAGE_PIXELS; raise it if this image is genuine); refused before decoding")  # fmt: skip


def _frames(path: Path):
    import warnings

    from PIL import Image, ImageSequence

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _check_size decides, with the file name
            with Image.open(path) as img:
                budget = max(os.path.getsize(path) * _MAX_RATIO, _MIN_BUDGET)
                for page, frame in enumerate(ImageSequence.Iterator(img)):
                    _check_size(frame, path, page)
                    bits = 1 if frame.mode == "1" else 8 * _bytes_per_band(frame.mode)
                    budget -= frame.size[0] * frame.size[1] * max(len(frame.getbands()), 1) * bits // 8
                    if budget < 0:  # e.g. thousands of TIFF pages all pointing at the same strips
                        raise FormatError(f"{path}: page {page}: the pages' size fields add up to far more pixels than "
                                          f"a {os.path.getsize(path)}-byte file can hold; refused before decoding")  # fmt: skip
                    yield frame.copy()
    except ReadError:
        raise
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReadError(f"{path}: is a folder, expected an image file") from None
    except Image.DecompressionBombError as e:
        raise FormatError(f"{path}: image size field beyond the pixel limit ({e})") from None
    except _PIL_ERRORS as e:
        raise FormatError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


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
        Slice step, row spacing, column spacing, in ``(D, H, W)`` order (the reverse of MONAI's ``pixdim``);
        ``geometry.XYZ(dx, dy, dz)`` or ``{"D": dz, "H": dy, "W": dx}`` name the order.
    order : {"natural", "name", "given"}
        ``"natural"`` sorts names with numbers compared as numbers (``img2`` before ``img10``); ``"name"``
        sorts plain lexicographically; ``"given"`` keeps the list order.
    color : {"channels", "gray"}
        RGB images as three channels, or converted to one luminance channel.
    pad : bool
        Slices smaller than the largest are zero-padded at the bottom/right instead of raising an error.

    Raises
    ------
    FormatError
        Slices of different sizes (naming the file) without ``pad=True``, or of different channel counts; a file
        that is not a readable image, or whose size fields exceed the limits (checked before decoding).
    ArgumentError
        A bad ``order``, ``color`` or ``spacing``.
    """
    if order not in ("natural", "name", "given"):
        raise ArgumentError(f"order must be 'natural', 'name' or 'given', got {order!r}")
    if color not in ("channels", "gray"):
        raise ArgumentError(f"color must be 'channels' or 'gray', got {color!r}")
    from medstack.geometry import as_dhw

    sp = np.asarray(as_dhw(spacing, name="spacing"), dtype=np.float64)
    if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ArgumentError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing!r}")
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
            raise ArgumentError("load_stack got an empty list of files")
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
        raise FormatError(f"slices mix grayscale and colour ({sorted(channels)} channels); pass color='gray'")
    shapes = [s.shape[1:] for s in slices]
    target = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    for src, shp in zip(sources, shapes):
        if shp != shapes[0] and not pad:
            raise FormatError(f"{src}: slice is {shp[0]}x{shp[1]} pixels but {sources[0]} is "
                                f"{shapes[0][0]}x{shapes[0][1]}; pass pad=True to zero-pad to {target[0]}x{target[1]}")  # fmt: skip
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and target[0] * target[1] > limit:
        raise FormatError(f"{sources[0]}: padding the slices to a common {target[0]}x{target[1]} would make "
                          f"{target[0] * target[1]} pixels per slice, more than the limit of {limit} "
                          "(PIL.Image.MAX_IMAGE_PIXELS); the slices' size fields disagree too much")  # fmt: skip
    dtype = np.result_type(*[s.dtype for s in slices])
    try:
        data = np.zeros((channels.pop(), len(slices), *target), dtype=dtype)
    except MemoryError:
        raise ReadError(f"{sources[0]}: cannot allocate the {len(slices)}x{target[0]}x{target[1]} {dtype} stack "
                        "these slices make") from None  # fmt: skip
    for d, s in enumerate(slices):
        data[:, d, : s.shape[1], : s.shape[2]] = s
    affine = np.diag([sp[2], sp[1], sp[0], 1.0])
    return Volume(data, affine, {"source": str(files[0].parent), "files": sources, "format": "image_stack"})
