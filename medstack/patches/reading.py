"""Reading one patch (with padding outside the volume) from an array, tensor or lazy HDF5 array."""

from __future__ import annotations

import numpy as np

from medstack.io._direct import padded_box
from medstack.patches.samplers import size3


def read_patch_into(data, out, start, pad_value=0.0):
    """Fill ``out`` (``(C, pd, ph, pw)``, NumPy array or tensor, CPU or CUDA) with the box of ``data`` at voxel ``start``
    (d, h, w); voxels outside are ``pad_value``. One copy from the source (no intermediate array): lazy HDF5
    reads only the box's bytes (``H5Array.read_patch_into``); NumPy and CPU torch sources are copied with
    torch's multi-threaded strided copy. Returns ``out``."""
    import torch

    if hasattr(data, "read_patch_into"):
        data.read_patch_into(out if isinstance(out, np.ndarray) else out.numpy(), start, pad_value)
        return out
    inside = padded_box(out, data.shape[1:], start, pad_value)
    if inside is None:
        return out
    lo, hi, o = inside
    src = data[(slice(None), *(slice(low, h) for low, h in zip(lo, hi)))]
    dst = out[(slice(None), *(slice(b, b + h - low) for low, h, b in zip(lo, hi, o)))]
    if torch.is_tensor(src) and src.device.type != "cpu" and isinstance(dst, np.ndarray):
        src = src.cpu()  # a device tensor into a NumPy buffer; into a tensor, copy_ moves it (device to device too)
    if isinstance(src, np.ndarray) and (src.dtype.kind not in "biuf" or not src.flags.writeable
                                        or src.dtype.byteorder not in "=|"):  # fmt: skip
        # bool, read-only (memory-mapped) or byte-swapped sources: NumPy copies them
        (dst if isinstance(dst, np.ndarray) else dst.numpy())[...] = src
    else:
        t_dst = torch.from_numpy(dst) if isinstance(dst, np.ndarray) else dst
        t_dst.copy_(torch.from_numpy(src) if isinstance(src, np.ndarray) else src)
    return out


def read_patch(data, start, patch_size, pad_value=0.0) -> np.ndarray:
    """``data[:, d:d+pd, h:h+ph, w:w+pw]`` as a NumPy array in the stored dtype; parts outside are ``pad_value``.

    Only the needed bytes are read from lazy (HDF5) data. See :func:`read_patch_into` to fill a given array.
    """
    p = size3(patch_size)
    data, dtype = numpy_dtype(data)
    return read_patch_into(data, np.empty((data.shape[0], *(int(v) for v in p)), dtype=dtype), start, pad_value)


def numpy_dtype(data):
    """``(data, NumPy dtype)`` for patches of ``data`` (array, lazy array or tensor); a tensor dtype without a
    NumPy equivalent (bfloat16) comes back as float32, with ``data`` converted."""
    import torch

    if not torch.is_tensor(data):
        return data, np.dtype(data.dtype)
    try:
        return data, torch.empty(0, dtype=data.dtype).numpy().dtype
    except TypeError:
        return data.float(), np.dtype(np.float32)
