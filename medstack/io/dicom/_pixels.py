"""Pass 2 of the DICOM reader: decode pixels straight into one preallocated ``(C, D, H, W)`` array.

Uncompressed (native) pixel data are read at their byte offset with ``readinto`` — no pydicom parse, no
intermediate copies. Encapsulated (compressed) data go through pydicom's decoders (pylibjpeg plugins).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from medstack.errors import DicomError
from medstack.io.dicom._headers import NATIVE_SYNTAXES, FileHeader

CODEC_HINT = (
    "install the decoders with `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle` "
    "(medstack's default dependencies)"
)


def stored_dtype(h: FileHeader) -> np.dtype:
    if h.float_pixels:  # Float / Double Float Pixel Data: IEEE little-endian values
        return np.dtype("<f4" if h.bits_allocated == 32 else "<f8")
    if h.bits_allocated not in (8, 16, 32):
        raise DicomError(f"{h.path}: BitsAllocated={h.bits_allocated} is not supported (8, 16 or 32 expected)")
    kind = "i" if h.pixel_representation == 1 else "u"
    return np.dtype(f"{kind}{h.bits_allocated // 8}")


def is_colour(info) -> bool:
    """True for a colour series (SamplesPerPixel 3: RGB, or YBR decoded to RGB); mixed series are refused."""
    spp = {h.samples_per_pixel for h in info.headers.values()}
    if len(spp) > 1:
        raise DicomError(f"series {info.uid}: files mix SamplesPerPixel {sorted(spp)} (colour and grayscale); "
                         "pass the files of one series")  # fmt: skip
    n = spp.pop()
    if n not in (1, 3):
        h = next(iter(info.headers.values()))
        raise DicomError(f"{h.path}: SamplesPerPixel={n} ({h.photometric}) is not supported (1 or 3 expected)")
    return n == 3


def read_pixels(info) -> np.ndarray:
    """Raw stored values of a :class:`SeriesInfo` plan, shape ``(C, D, H, W)`` (no rescale yet).

    Colour series (SamplesPerPixel 3) give ``(3 * C, D, H, W)``: red, green, blue of each volume in turn
    (YBR photometric interpretations are converted to RGB by pydicom's decoder).
    """
    h0 = next(iter(info.headers.values()))
    dtypes = {stored_dtype(h) for h in info.headers.values()}
    if len(dtypes) > 1:
        raise DicomError(f"series {info.uid}: files mix pixel types {sorted(map(str, dtypes))}; cannot stack")
    if is_colour(info):
        return _read_colour(info, dtypes.pop())
    for h in info.headers.values():
        if (h.tile_rows, h.tile_cols) != (h0.tile_rows, h0.tile_cols):
            raise DicomError(f"{h.path}: {h.tile_rows}x{h.tile_cols} pixels differ from the series' "
                             f"{h0.tile_rows}x{h0.tile_cols} (Rows/Columns differ inside series {info.uid})")  # fmt: skip
    dtype = dtypes.pop()
    n_vol = len(info.frames)
    n_slices = max(len(v) for v in info.frames)
    out = np.zeros((n_vol, n_slices, h0.tile_rows, h0.tile_cols), dtype=dtype)
    jobs: dict[str, list] = defaultdict(list)
    for c, vol in enumerate(info.frames):
        for d, f in enumerate(vol):
            jobs[f.path].append((c, d, f.frame, f.tile))
    for path, items in jobs.items():
        h = info.headers[path]
        if h.pixel_offset is not None and h.transfer_syntax in NATIVE_SYNTAXES:
            _read_native(h, items, out)
        else:
            _read_decoded(h, items, out)
    return out


def _read_colour(info, dtype) -> np.ndarray:
    import pydicom

    h0 = next(iter(info.headers.values()))
    n_vol, n_slices = len(info.frames), max(len(v) for v in info.frames)
    out = np.zeros((3 * n_vol, n_slices, h0.rows, h0.cols), dtype=dtype)
    by_file: dict[str, list] = defaultdict(list)
    for c, vol in enumerate(info.frames):
        for d, f in enumerate(vol):
            by_file[f.path].append((c, d, f.frame))
    for path, items in by_file.items():
        h = info.headers[path]
        if (h.rows, h.cols) != (h0.rows, h0.cols):
            raise DicomError(f"{path}: {h.rows}x{h.cols} pixels differ from the series' {h0.rows}x{h0.cols}")
        try:
            arr = pydicom.dcmread(path).pixel_array  # (H, W, 3) or (frames, H, W, 3), YBR converted to RGB
        except Exception as e:
            raise DicomError(f"{path}: cannot decode colour pixel data ({h.photometric}): {e}; {CODEC_HINT}") from e
        if arr.ndim == 3:
            arr = arr[None]
        for c, d, frame in items:
            out[3 * c : 3 * c + 3, d] = np.moveaxis(arr[frame], -1, 0)
    return out


def _fix_bits(arr: np.ndarray, h: FileHeader) -> None:
    """Mask unused high bits (unsigned) or sign-extend from BitsStored (signed), in place."""
    bs, ba = h.bits_stored, h.bits_allocated
    if bs >= ba or h.float_pixels or bs <= 0:
        return
    if h.pixel_representation == 1:
        shift = ba - bs
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)  # arithmetic shift on signed ints
    else:
        np.bitwise_and(arr, (1 << bs) - 1, out=arr)


def _read_native(h: FileHeader, items, out: np.ndarray) -> None:
    order = NATIVE_SYNTAXES[h.transfer_syntax][0]
    frame_bytes = h.frame_bytes
    with open(h.path, "rb") as fh:
        for c, d, frame, tile in items:
            fh.seek(h.pixel_offset + frame * frame_bytes)
            if tile < 0:
                target = out[c, d]
                n = fh.readinto(memoryview(target).cast("B"))
            else:
                full = np.empty((h.rows, h.cols), dtype=out.dtype)
                n = fh.readinto(memoryview(full).cast("B"))
                grid = h.cols // h.tile_cols
                r, q = divmod(tile, grid)
                out[c, d] = full[r * h.tile_rows : (r + 1) * h.tile_rows, q * h.tile_cols : (q + 1) * h.tile_cols]
                target = out[c, d]
            if n < frame_bytes:
                raise DicomError(f"{h.path}: truncated pixel data (frame {frame}: {n} of {frame_bytes} bytes)")
            if order == ">" and out.dtype.itemsize > 1:
                target.byteswap(inplace=True)
            _fix_bits(target, h)


def _read_decoded(h: FileHeader, items, out: np.ndarray) -> None:
    import pydicom
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(h.path)
    except Exception as e:
        raise DicomError(f"{h.path}: cannot read the file: {e}") from e
    try:
        arr = ds.pixel_array
    except Exception as e:
        ts = UID(h.transfer_syntax)
        raise DicomError(f"{h.path}: cannot decode pixel data in transfer syntax {ts.name} ({ts}): {e}; "
                         f"{CODEC_HINT}") from e  # fmt: skip
    if h.n_frames > 1 and arr.ndim == 2:
        arr = arr[None]
    for c, d, frame, tile in items:
        img = arr[frame] if h.n_frames > 1 else arr
        if tile >= 0:
            grid = h.cols // h.tile_cols
            r, q = divmod(tile, grid)
            img = img[r * h.tile_rows : (r + 1) * h.tile_rows, q * h.tile_cols : (q + 1) * h.tile_cols]
        out[c, d] = img


def invert_monochrome1(raw: np.ndarray, headers) -> np.ndarray:
    """MONOCHROME1 (white = low values) is inverted so that larger values are brighter, like dcm2niix."""
    h = next(iter(headers.values()))
    if h.photometric != "MONOCHROME1" or h.float_pixels:
        return raw
    if h.pixel_representation == 1:
        return np.invert(raw)
    return ((1 << h.bits_stored) - 1) - raw


def rescale(raw: np.ndarray, slopes: np.ndarray, inters: np.ndarray, dtype=None) -> np.ndarray:
    """Apply per-slice RescaleSlope/Intercept: ``slope[c, d] * raw[c, d] + inter[c, d]``.

    Output dtype rule: no rescale -> the stored dtype; integer slopes and intercepts -> int16 when every
    value fits (else int32); otherwise (or when slopes differ) float32. ``dtype`` overrides.
    """
    s = slopes[:, :, None, None]
    b = inters[:, :, None, None]
    identity = bool(np.all(slopes == 1) and np.all(inters == 0))
    if dtype is not None:
        dtype = np.dtype(dtype)
        if identity:
            return raw.astype(dtype, copy=False)
        work = np.float64 if dtype == np.float64 else np.float32
        out = raw.astype(work)
        out *= s.astype(work)
        out += b.astype(work)
        return out.astype(dtype, copy=False)
    if identity:
        return raw
    integral = np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters))
    if integral and len(np.unique(slopes)) == 1:
        lo, hi = float(raw.min()), float(raw.max())
        cands = [slopes.min() * lo, slopes.max() * lo, slopes.min() * hi, slopes.max() * hi]
        vmin, vmax = min(cands) + inters.min(), max(cands) + inters.max()
        out_dtype = np.dtype(np.int16 if (vmin >= -32768 and vmax <= 32767) else np.int32)
        # raw is our own buffer: work in place when the dtype allows (no second full-size array)
        out = raw if raw.dtype == out_dtype else np.empty(raw.shape, dtype=out_dtype)
        inter = out_dtype.type(inters.flat[0]) if np.all(inters == inters.flat[0]) else b.astype(out_dtype)
        if slopes.flat[0] != 1:
            np.multiply(raw, out_dtype.type(slopes.flat[0]), out=out, casting="unsafe")
            np.add(out, inter, out=out)
        else:
            np.add(raw, inter, out=out, casting="unsafe")
        return out
    out = raw.astype(np.float32)
    out *= s.astype(np.float32)
    out += b.astype(np.float32)
    return out


def shift_slices(data: np.ndarray, shifts_rc: np.ndarray, fill: float) -> np.ndarray:
    """Shift each slice ``d`` of ``(C, D, H, W)`` by ``shifts_rc[d] = (rows, cols)`` with bilinear weights.

    ``out[c, d, j, i] = data[c, d, j - dr, i - dc]`` (values from outside the slice are ``fill``).
    """
    out = np.empty(data.shape, dtype=np.float32)
    _, _, h, w = data.shape
    for d, (dr, dc) in enumerate(shifts_rc):
        src = data[:, d].astype(np.float32)
        ys = np.arange(h) - dr
        xs = np.arange(w) - dc
        y0 = np.floor(ys).astype(int)
        x0 = np.floor(xs).astype(int)
        fy = (ys - y0).astype(np.float32)
        fx = (xs - x0).astype(np.float32)
        padded = np.pad(src, ((0, 0), (1, 2), (1, 2)), constant_values=fill)
        yi = np.clip(y0 + 1, 0, h + 2)
        xi = np.clip(x0 + 1, 0, w + 2)
        yi1 = np.clip(yi + 1, 0, h + 2)
        xi1 = np.clip(xi + 1, 0, w + 2)
        top = padded[:, yi][:, :, xi] * (1 - fx) + padded[:, yi][:, :, xi1] * fx
        bot = padded[:, yi1][:, :, xi] * (1 - fx) + padded[:, yi1][:, :, xi1] * fx
        val = top * (1 - fy)[:, None] + bot * fy[:, None]
        outside_y = (ys < -1) | (ys > h)
        outside_x = (xs < -1) | (xs > w)
        val[:, outside_y, :] = fill
        val[:, :, outside_x] = fill
        out[:, d] = val
    return out


def resample_positions(data: np.ndarray, positions: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along D from measured slice ``positions`` onto a uniform grid of ``step`` mm."""
    n = round((positions[-1] - positions[0]) / step) + 1
    if n > 2 * len(positions) + 16:
        raise DicomError(f"on_gap='resample' would interpolate {n} slices from {len(positions)} (positions "
                         f"{positions[0]:.4g} .. {positions[-1]:.4g} mm at a {step:.4g} mm step): a slice far from the "
                         "others (a wrong ImagePositionPatient?); refusing to invent them")  # fmt: skip
    target = positions[0] + step * np.arange(n)
    idx = np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2)
    w = (target - positions[idx]) / (positions[idx + 1] - positions[idx])
    w = np.clip(w, 0.0, 1.0).astype(np.float32)[None, :, None, None]
    lo = data[:, idx].astype(np.float32)
    hi = data[:, idx + 1].astype(np.float32)
    return lo * (1 - w) + hi * w, target
