"""Reading one patch (with padding outside the volume) from an array, tensor or lazy HDF5 array."""

from __future__ import annotations

import numpy as np

from medstack.patches.samplers import _size3


def read_patch(data, start, patch_size, pad_value=0.0) -> np.ndarray:
    """``data[:, d:d+pd, h:h+ph, w:w+pw]`` as a NumPy array in the stored dtype; parts outside are ``pad_value``.

    Only the needed bytes are read from lazy (HDF5) data: the in-bounds box, then padded in memory.
    """
    p = _size3(patch_size)
    if hasattr(data, "read_patch_into"):  # lazy HDF5: direct reads of the patch's bytes when uncompressed
        return data.read_patch_into(np.empty((data.shape[0], *p), dtype=data.dtype), start, pad_value)
    start = np.asarray(start, dtype=np.int64)
    shape = data.shape[1:]
    lo = np.maximum(start, 0)
    hi = np.minimum(start + p, shape)
    box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(lo, np.maximum(hi, lo))))
    inner = data[box]
    if hasattr(inner, "numpy") and not isinstance(inner, np.ndarray):
        inner = inner.detach().cpu().numpy()
    inner = np.asarray(inner)
    if tuple(inner.shape[1:]) == tuple(p):
        return np.ascontiguousarray(inner)
    out = np.full((data.shape[0], *p), pad_value, dtype=inner.dtype)
    off = lo - start
    out[(slice(None), *(slice(int(o), int(o) + n) for o, n in zip(off, inner.shape[1:])))] = inner
    return out
