"""Label-map transforms: one-hot, argmax / threshold, label remapping, connected components, holes, contours.

Label maps are ``(C, D, H, W)`` arrays (NumPy or torch), usually ``C = 1`` with integer values (0 = background);
multi-channel maps are processed channel by channel. Every function returns the same kind of array it was
given (a torch tensor comes back on its own device) and never modifies its input. Integer labels stay integer:
the dtype is kept, except by :func:`one_hot` and :func:`as_discrete`, whose output dtype is documented.

Connected components (:func:`keep_largest_component`, :func:`remove_small_objects`, :func:`fill_holes`) use
``scipy.ndimage`` on the CPU: a CUDA tensor goes through host memory for those and comes back to its device.
:func:`one_hot`, :func:`as_discrete`, :func:`remap_labels` and :func:`label_to_contour` run on the tensor's device.

``connectivity`` is the number of orthogonal hops that make two voxels neighbours (as in MONAI and
scikit-image): 1 = faces (6 neighbours), 2 = faces and edges (18), 3 = also corners (26).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medstack.errors import ArgumentError
from medstack.transforms.base import Transform

__all__ = [
    "AsDiscrete", "FillHoles", "KeepLargestConnectedComponent", "LabelToContour", "OneHot", "RemapLabels",
    "RemoveSmallObjects", "as_discrete", "fill_holes", "keep_largest_component", "label_to_contour", "one_hot",
    "remap_labels", "remove_small_objects",
]  # fmt: skip


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _check_4d(x, owner: str):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ArgumentError(f"{owner}: expected a numpy array or torch tensor (C, D, H, W), got {type(x).__name__}")
    if len(x.shape) != 4:
        raise ArgumentError(f"{owner}: expected a (C, D, H, W) label map, got shape {tuple(x.shape)}"
                            + (" (add a channel axis: x[None])" if len(x.shape) == 3 else ""))  # fmt: skip


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _like(out: np.ndarray, ref):
    """``out`` as the same kind of array as ``ref`` (a torch tensor on ``ref``'s device)."""
    if not _is_torch(ref):
        return out
    import torch

    return torch.from_numpy(np.ascontiguousarray(out)).to(ref.device)


def _is_int_dtype(x) -> bool:
    if _is_torch(x):
        import torch

        return not torch.is_floating_point(x) and not torch.is_complex(x) and x.dtype != torch.bool
    return np.asarray(x).dtype.kind in "iu"


def _check_connectivity(connectivity, owner: str) -> int:
    if connectivity not in (1, 2, 3) or isinstance(connectivity, bool):
        raise ArgumentError(f"{owner}: connectivity must be 1 (faces), 2 (faces + edges) or 3 (faces + edges + "
                            f"corners), got {connectivity!r}")  # fmt: skip
    return int(connectivity)


def _structure(connectivity: int):
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, connectivity)


def _check_labels(labels, owner: str) -> list[float] | None:
    if labels is None:
        return None
    if isinstance(labels, int | float | np.number):
        labels = [labels]
    if not isinstance(labels, Sequence | np.ndarray) or isinstance(labels, str):
        raise ArgumentError(f"{owner}: labels must be a number or a sequence of numbers, got {labels!r}")
    out = []
    for v in labels:
        if isinstance(v, bool) or not isinstance(v, int | float | np.number):
            raise ArgumentError(f"{owner}: labels must be numbers, got {v!r} in {labels!r}")
        out.append(v)
    return out


def _labels_of(ch: np.ndarray, labels) -> list:
    """The labels to process in one channel: the given ones, or every nonzero value present."""
    if labels is not None:
        return list(labels)
    vals = np.unique(ch)
    if vals.dtype.kind == "f":
        vals = vals[~np.isnan(vals)]
    return [v.item() for v in vals if v != 0]


def _boxes(ch: np.ndarray, labels: list, margin: int = 0) -> dict:
    """Bounding box (tuple of slices, grown by ``margin`` and clipped) of each label present in ``ch``."""
    from scipy import ndimage

    out = {}
    ints = ch.dtype.kind in "iu" and all(float(v).is_integer() and v >= 1 for v in labels)
    if ints and ch.size and int(ch.max()) < 2**20:
        objs = ndimage.find_objects(ch if ch.dtype.kind == "i" or ch.dtype.itemsize < 8 else ch.astype(np.int64))
        for v in labels:
            i = int(v) - 1
            if i < len(objs) and objs[i] is not None:
                out[v] = objs[i]
    else:
        for v in labels:
            m = ch == v
            if not m.any():
                continue
            box = []
            for a in range(ch.ndim):
                proj = np.any(m, axis=tuple(b for b in range(ch.ndim) if b != a))
                idx = np.flatnonzero(proj)
                box.append(slice(int(idx[0]), int(idx[-1]) + 1))
            out[v] = tuple(box)
    if margin:
        out = {v: tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, ch.shape))
               for v, box in out.items()}  # fmt: skip
    return out


def _sizes(lab: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(lab.ravel(), minlength=n + 1)


# -- one-hot / discrete ----------------------------------------------------------------------------


_ONE_HOT_DTYPES = ("uint8", "bool", "float16", "float32", "float64")


def one_hot(x, num_classes: int, *, dtype="uint8"):
    """``(1, D, H, W)`` integer label map -> ``(num_classes, D, H, W)`` one-hot.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        One channel of labels in ``[0, num_classes)`` (integer dtype, or floats holding integers).
    num_classes : int
        Number of output channels; channel ``k`` is ``x == k``.
    dtype : {"uint8", "bool", "float16", "float32", "float64"} or the matching numpy / torch dtype
        Output dtype (default uint8: 1 byte per voxel and class).

    Examples
    --------
    >>> one_hot(np.array([0, 2, 1]).reshape(1, 1, 1, 3), 3)[:, 0, 0]
    array([[1, 0, 0],
           [0, 0, 1],
           [0, 1, 0]], dtype=uint8)
    """
    _check_4d(x, "one_hot")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ArgumentError(f"one_hot: num_classes must be a positive integer, got {num_classes!r}")
    name = str(dtype).replace("torch.", "") if dtype is not None else ""
    try:
        name = np.dtype(name).name
    except TypeError as e:
        raise ArgumentError(f"one_hot: dtype must be one of {_ONE_HOT_DTYPES}, got {dtype!r}") from e
    if name not in _ONE_HOT_DTYPES:
        raise ArgumentError(f"one_hot: dtype must be one of {_ONE_HOT_DTYPES}, got {dtype!r}")
    if x.shape[0] != 1:
        raise ArgumentError(f"one_hot: expected one channel of labels (1, D, H, W), got {x.shape[0]} channels; "
                            "select the label channel first (or use as_discrete on probabilities)")  # fmt: skip
    lo, hi = float(x.min()), float(x.max())
    if not _is_int_dtype(x):
        integral = bool((x == x.round()).all()) if _is_torch(x) else bool(np.all(x == np.round(x)))
        if not integral:
            raise ArgumentError("one_hot: label values must be integers, found non-integer values (probabilities?); "
                                "use as_discrete first")  # fmt: skip
    if lo < 0 or hi >= num_classes:
        raise ArgumentError(f"one_hot: labels must be in [0, {num_classes - 1}] for num_classes={num_classes}, found "
                            f"values in [{lo:g}, {hi:g}]; raise num_classes or remap_labels first")  # fmt: skip
    if _is_torch(x):
        import torch

        classes = torch.arange(num_classes, device=x.device).view(-1, 1, 1, 1)
        return (x.to(torch.int64) == classes).to(getattr(torch, name))
    classes = np.arange(num_classes).reshape(-1, 1, 1, 1)
    return (np.asarray(x) == classes).astype(name)


def as_discrete(x, *, argmax: bool | None = None, threshold: float | None = None):
    """Probabilities / logits ``(C, D, H, W)`` -> discrete labels.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        Class scores, channel first.
    argmax : bool, optional
        ``(1, D, H, W)`` index of the largest channel (ties: the first). The default (None) means True unless
        ``threshold`` is given. Needs at least 2 channels.
    threshold : float, optional
        ``x >= threshold`` per channel, ``(C, D, H, W)`` uint8 (multi-label or sigmoid outputs).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        argmax: uint8 when ``C <= 256``, else int64; threshold: uint8 of 0 / 1.

    Notes
    -----
    Values as MONAI's ``AsDiscrete(argmax=True)`` / ``AsDiscrete(threshold=t)``, but integer-typed (MONAI returns
    float), giving both ``argmax=True`` and ``threshold`` is an error (MONAI thresholds the argmax indices), and
    argmax over a single channel is an error (MONAI returns zeros).

    Examples
    --------
    >>> p = np.array([[0.2, 0.7], [0.5, 0.1], [0.3, 0.2]]).reshape(3, 1, 1, 2)
    >>> as_discrete(p).ravel()
    array([1, 0], dtype=uint8)
    >>> as_discrete(p, threshold=0.5)[:, 0, 0, 0]
    array([0, 1, 0], dtype=uint8)
    """
    _check_4d(x, "as_discrete")
    if argmax is None:
        argmax = threshold is None
    if argmax and threshold is not None:
        raise ArgumentError("as_discrete: give argmax=True or threshold=..., not both")
    if not argmax and threshold is None:
        raise ArgumentError("as_discrete: nothing to do; pass argmax=True or threshold=<value>")
    if argmax:
        n = int(x.shape[0])
        if n < 2:
            raise ArgumentError(f"as_discrete: argmax needs at least 2 channels, got {n} (a single sigmoid output "
                                "is always class 0); use threshold=0.5 instead")  # fmt: skip
        if _is_torch(x):
            import torch

            return torch.argmax(x, dim=0, keepdim=True).to(torch.uint8 if n <= 256 else torch.int64)
        return np.argmax(np.asarray(x), axis=0)[None].astype(np.uint8 if n <= 256 else np.int64)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise ArgumentError(f"as_discrete: threshold must be a number, got {threshold!r}")
    if _is_torch(x):
        import torch

        return (x >= threshold).to(torch.uint8)
    return (np.asarray(x) >= threshold).astype(np.uint8)


# -- remapping ----------------------------------------------------------------------------------------


def remap_labels(x, mapping: Mapping, *, strict: bool = False):
    """Replace label values: ``mapping[old] = new``; values not in ``mapping`` are kept.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        Label map, any shape. The dtype is kept: new values must fit it (cast first with ``ToDtype`` otherwise).
    mapping : mapping of number to number
        Applied simultaneously (``{1: 2, 2: 1}`` swaps labels 1 and 2).
    strict : bool
        Raise :class:`~medstack.errors.ArgumentError` if ``x`` holds a value absent from ``mapping``.

    Examples
    --------
    >>> remap_labels(np.array([0, 1, 2, 5], np.uint8), {1: 2, 2: 1, 5: 0})
    array([0, 2, 1, 0], dtype=uint8)
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ArgumentError(f"remap_labels: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not isinstance(mapping, Mapping):
        raise ArgumentError(f"remap_labels: mapping must be a dict {{old: new}}, got {type(mapping).__name__}")
    for k, v in mapping.items():
        for what, val in (("key", k), ("value", v)):
            if isinstance(val, bool) or not isinstance(val, int | float | np.number) or not np.isfinite(val):
                raise ArgumentError(f"remap_labels: mapping {what} {val!r} is not a finite number")
    is_int = _is_int_dtype(x)
    if is_int:
        info = np.iinfo(str(x.dtype).replace("torch.", ""))
        for k, v in mapping.items():
            if not float(v).is_integer() or not info.min <= v <= info.max:
                raise ArgumentError(f"remap_labels: {k} -> {v} does not fit the labels' dtype {x.dtype} "
                                    f"([{info.min}, {info.max}], integers); cast the labels first, e.g. "
                                    "ToDtype(keys='label', dtype='int32')")  # fmt: skip
    torch_in = _is_torch(x)
    if torch_in:
        import torch
    if strict:
        present = torch.unique(x).cpu().numpy() if torch_in else np.unique(x)
        keys = {float(k) for k in mapping}
        missing = [p.item() for p in present if float(p) not in keys and not np.isnan(p)]
        if missing:
            raise ArgumentError(f"remap_labels: strict=True and label value(s) {missing[:10]} are not in the mapping "
                                f"(keys {sorted(mapping)[:10]}); add them or pass strict=False to keep them")  # fmt: skip
    if int(np.prod(tuple(x.shape))) == 0:
        return x.clone() if torch_in else np.array(x, copy=True)
    if is_int:
        lo, hi = int(x.min()), int(x.max())
        if hi - lo < 2**22:  # lookup table over the value range present
            lut = np.arange(lo, hi + 1, dtype=np.int64)
            for k, v in mapping.items():
                if float(k).is_integer() and lo <= k <= hi:
                    lut[int(k) - lo] = int(v)
            if torch_in:
                t = torch.from_numpy(lut).to(device=x.device, dtype=x.dtype)
                return t[x.to(torch.int64) - lo]
            xn = np.asarray(x)
            return lut.astype(xn.dtype)[xn.astype(np.int64, copy=False) - lo]
    out = x.clone() if torch_in else np.array(x, copy=True)
    for k, v in mapping.items():
        out[x == k] = v
    return out


# -- connected components --------------------------------------------------------------------------


def keep_largest_component(x, labels=None, *, connectivity: int = 3, independent: bool = True):
    """Keep the largest connected component of each label; other voxels of that label become 0.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)`` label map(s), each channel processed on its own. CUDA tensors go through the host
        (``scipy.ndimage.label``) and come back to their device.
    labels : number or sequence of numbers, optional
        Labels to process (default: every nonzero value present). Other labels are untouched.
    connectivity : {1, 2, 3}
        Neighbourhood of the components (default 3 = 26 neighbours, MONAI's default).
    independent : bool
        True: each label keeps its own largest component. False: the union of ``labels`` is one foreground,
        its largest component is kept and the voxels of those labels outside it become 0.

    Notes
    -----
    Same result as MONAI's ``KeepLargestConnectedComponent(applied_labels, is_onehot=False, independent,
    connectivity)`` on a label map; one-hot input is not special-cased (convert with :func:`as_discrete`).

    Examples
    --------
    >>> x = np.array([1, 1, 0, 1, 0, 2, 0, 2, 2, 2], np.uint8).reshape(1, 1, 1, 10)
    >>> keep_largest_component(x).ravel()
    array([1, 1, 0, 0, 0, 0, 0, 2, 2, 2], dtype=uint8)
    """
    from scipy import ndimage

    _check_4d(x, "keep_largest_component")
    struct = _structure(_check_connectivity(connectivity, "keep_largest_component"))
    labels = _check_labels(labels, "keep_largest_component")
    out = np.array(_to_numpy(x), copy=True)
    for c in range(out.shape[0]):
        ch = out[c]
        todo = _labels_of(ch, labels)
        if not independent:
            fg = np.isin(ch, todo)
            lab, n = ndimage.label(fg, structure=struct)
            if n > 1:
                keep = int(np.argmax(_sizes(lab, n)[1:])) + 1
                ch[fg & (lab != keep)] = 0
            continue
        for v, box in _boxes(ch, todo).items():
            sub = ch[box]
            m = sub == v
            lab, n = ndimage.label(m, structure=struct)
            if n > 1:
                keep = int(np.argmax(_sizes(lab, n)[1:])) + 1
                sub[m & (lab != keep)] = 0
    return _like(out, x)


def remove_small_objects(x, min_size_voxels: float | None = None, min_size_mm3: float | None = None, *,
                         affine=None, labels=None, connectivity: int = 1, independent: bool = True):  # fmt: skip
    """Set connected components smaller than a size to 0.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)`` label map(s), channels processed on their own (CUDA tensors go through the host).
    min_size_voxels : float, optional
        Components with fewer voxels are removed (those with exactly ``min_size_voxels`` are kept).
    min_size_mm3 : float, optional
        The same in cubic millimetres, using the voxel volume ``|det(affine[:3, :3])|``; needs ``affine``.
        Give exactly one of the two sizes.
    affine : array_like 4x4, optional
        The label map's voxel-to-world affine (``Volume.affine``).
    labels : number or sequence of numbers, optional
        Labels to process (default: every nonzero value present).
    connectivity : {1, 2, 3}
        Neighbourhood of the components (default 1 = faces, as MONAI's RemoveSmallObjects / scikit-image).
    independent : bool
        True: components of each label separately. False: components of the union of ``labels`` (a small blob
        made of two labels is measured as one object).

    Examples
    --------
    >>> x = np.array([1, 0, 1, 1, 1, 0, 2, 2], np.uint8).reshape(1, 1, 1, 8)
    >>> remove_small_objects(x, min_size_voxels=3).ravel()
    array([0, 0, 1, 1, 1, 0, 0, 0], dtype=uint8)
    >>> remove_small_objects(x, min_size_mm3=4.0, affine=np.diag([2.0, 1, 1, 1])).ravel()   # 2 mm3 voxels
    array([0, 0, 1, 1, 1, 0, 2, 2], dtype=uint8)
    """
    from scipy import ndimage

    owner = "remove_small_objects"
    _check_4d(x, owner)
    if (min_size_voxels is None) == (min_size_mm3 is None):
        raise ArgumentError(f"{owner}: give exactly one of min_size_voxels= and min_size_mm3=")
    if min_size_mm3 is not None:
        if affine is None:
            raise ArgumentError(f"{owner}: min_size_mm3 needs the affine (affine=volume.affine) for the voxel volume")
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ArgumentError(f"{owner}: affine must be a finite 4x4 matrix, got shape {a.shape}")
        voxel = abs(float(np.linalg.det(a[:3, :3])))
        if voxel <= 0:
            raise ArgumentError(f"{owner}: the affine is singular (voxel volume 0); check the volume's geometry")
        if not min_size_mm3 >= 0:
            raise ArgumentError(f"{owner}: min_size_mm3 must be >= 0, got {min_size_mm3}")
        min_vox = min_size_mm3 / voxel * (1 - 1e-9)  # keep a component of exactly min_size_mm3 despite rounding
    else:
        if not min_size_voxels >= 0:
            raise ArgumentError(f"{owner}: min_size_voxels must be >= 0, got {min_size_voxels}")
        min_vox = float(min_size_voxels)
    struct = _structure(_check_connectivity(connectivity, owner))
    labels = _check_labels(labels, owner)
    out = np.array(_to_numpy(x), copy=True)

    def prune(region, m):
        lab, n = ndimage.label(m, structure=struct)
        if n:
            small = _sizes(lab, n) < min_vox
            small[0] = False
            region[small[lab]] = 0

    for c in range(out.shape[0]):
        ch = out[c]
        todo = _labels_of(ch, labels)
        if not independent:
            prune(ch, np.isin(ch, todo))
            continue
        for v, box in _boxes(ch, todo).items():
            sub = ch[box]
            prune(sub, sub == v)
    return _like(out, x)


def fill_holes(x, labels=None, *, connectivity: int = 3):
    """Fill the 3D holes of each label: background (0) regions the label encloses, not touching the border.

    For each label ``L``, a hole is a connected component of the voxels ``!= L`` that does not reach the image
    border; its background voxels become ``L`` (other labels inside are never overwritten). A background voxel
    enclosed by several labels (nested shells) takes the innermost one (the smallest enclosing region).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)`` label map(s), channels processed on their own (CUDA tensors go through the host).
    labels : number or sequence of numbers, optional
        Labels whose holes are filled (default: every nonzero value present).
    connectivity : {1, 2, 3}
        Connectivity of the *background* (default 3, MONAI's default): with 3 the background leaks through
        diagonal gaps, so fewer regions count as holes than with 1.

    Notes
    -----
    Same result as MONAI's ``FillHoles(applied_labels, connectivity)`` on binary maps and on label maps where
    no label encloses another; MONAI also overwrites other labels enclosed by a label (a tumour inside an
    organ), medstack fills background voxels only.

    Examples
    --------
    >>> x = np.ones((1, 3, 3, 3), np.uint8); x[0, 1, 1, 1] = 0
    >>> int(fill_holes(x)[0, 1, 1, 1])
    1
    """
    from scipy import ndimage

    _check_4d(x, "fill_holes")
    struct = _structure(_check_connectivity(connectivity, "fill_holes"))
    labels = _check_labels(labels, "fill_holes")
    src = _to_numpy(x)
    out = np.array(src, copy=True)
    for c in range(src.shape[0]):
        ch = src[c]
        best = None  # size of the smallest enclosing region found so far, per voxel
        for v, box in _boxes(ch, _labels_of(ch, labels), margin=1).items():
            sub = ch[box]
            lab, n = ndimage.label(sub != v, structure=struct)
            if n == 0:
                continue
            faces = [lab[:1], lab[-1:], lab[:, :1], lab[:, -1:], lab[:, :, :1], lab[:, :, -1:]]
            open_ = np.zeros(n + 1, bool)
            open_[np.concatenate([f.ravel() for f in faces])] = True
            open_[0] = True
            hole = ~open_[lab] & (sub == 0)
            if not hole.any():
                continue
            size = _sizes(lab, n)[lab]
            if best is None:
                best = np.full(ch.shape, np.iinfo(np.int64).max, np.int64)
            bsub, osub = best[box], out[c][box]
            better = hole & (size < bsub)
            osub[better] = v
            bsub[better] = size[better]
    return _like(out, x)


def label_to_contour(x, *, connectivity: int = 3):
    """Inner boundary of each label: voxels whose label differs from one of their neighbours keep their label,
    all others become 0. Outside the image counts as background (a label touching the border has a contour
    there). Runs on the tensor's device.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(C, D, H, W)`` label map(s); channels processed on their own.
    connectivity : {1, 2, 3}
        Neighbours compared (default 3 = 26 neighbours, as MONAI's 3x3x3 Laplace kernel).

    Notes
    -----
    On binary maps equal to MONAI's ``LabelToContour()`` (Laplace kernel, zero padding), but in the input dtype
    (MONAI returns float). On multi-label maps MONAI's output is the clamped Laplacian of the label values;
    medstack's keeps each label's own boundary voxels with their label.

    Examples
    --------
    >>> x = np.zeros((1, 5, 5, 5), np.uint8); x[0, 1:4, 1:4, 1:4] = 1    # a 3x3x3 cube
    >>> label_to_contour(x)[0, 2]                                         # its middle slice: only the centre is inside
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 0, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]], dtype=uint8)
    """
    _check_4d(x, "label_to_contour")
    conn = _check_connectivity(connectivity, "label_to_contour")
    _, d, h, w = (int(s) for s in x.shape)
    if _is_torch(x):
        import torch

        pad = torch.zeros((x.shape[0], d + 2, h + 2, w + 2), dtype=x.dtype, device=x.device)
        edge = torch.zeros(tuple(x.shape), dtype=torch.bool, device=x.device)
    else:
        x = np.asarray(x)
        pad = np.zeros((x.shape[0], d + 2, h + 2, w + 2), dtype=x.dtype)
        edge = np.zeros(x.shape, dtype=bool)
    pad[:, 1:-1, 1:-1, 1:-1] = x
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                hops = abs(dz) + abs(dy) + abs(dx)
                if hops == 0 or hops > conn:
                    continue
                edge |= pad[:, 1 + dz : 1 + dz + d, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != x
    keep = edge & (x != 0)
    if _is_torch(x):
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return np.where(keep, x, np.zeros((), x.dtype))


# -- classes ------------------------------------------------------------------------------------------


def _data(volume):
    return volume.materialized().data


class OneHot(Transform):
    """``(1, D, H, W)`` labels -> ``(num_classes, D, H, W)`` one-hot (:func:`one_hot`). The affine is kept.

    Examples
    --------
    >>> import medstack
    >>> seg = medstack.Volume(np.array([0, 1, 2], np.uint8).reshape(1, 1, 1, 3), np.eye(4))
    >>> OneHot(num_classes=3)(seg).shape
    (3, 1, 1, 3)
    """

    def __init__(self, keys=("label",), num_classes: int = 2, *, dtype="uint8", allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 1:
            raise ArgumentError(f"OneHot: num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes, self.dtype = int(num_classes), dtype

    def apply(self, volume, params, key):
        return volume.replace(data=one_hot(_data(volume), self.num_classes, dtype=self.dtype))


class AsDiscrete(Transform):
    """Probabilities -> labels by argmax (default) or ``threshold`` (:func:`as_discrete`)."""

    def __init__(self, keys=("label",), *, argmax: bool | None = None, threshold: float | None = None,
                 allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if (argmax is True and threshold is not None) or (argmax is False and threshold is None):
            raise ArgumentError("AsDiscrete: give argmax=True or threshold=<value> (exactly one)")
        self.argmax, self.threshold = argmax, threshold

    def apply(self, volume, params, key):
        return volume.replace(data=as_discrete(_data(volume), argmax=self.argmax, threshold=self.threshold))


class RemapLabels(Transform):
    """Replace label values with ``mapping`` (:func:`remap_labels`).

    Examples
    --------
    >>> import medstack
    >>> seg = medstack.Volume(np.array([0, 1, 2], np.uint8).reshape(1, 1, 1, 3), np.eye(4))
    >>> RemapLabels(mapping={2: 1})(seg).data.ravel()
    array([0, 1, 1], dtype=uint8)
    """

    def __init__(self, keys=("label",), mapping: Mapping | None = None, *, strict: bool = False,
                 allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if not isinstance(mapping, Mapping):
            raise ArgumentError(f"RemapLabels: mapping must be a dict {{old: new}}, got {mapping!r}")
        self.mapping, self.strict = dict(mapping), strict

    def apply(self, volume, params, key):
        return volume.replace(data=remap_labels(_data(volume), self.mapping, strict=self.strict))


class KeepLargestConnectedComponent(Transform):
    """Keep the largest connected component of each label (:func:`keep_largest_component`)."""

    def __init__(self, keys=("label",), labels=None, *, connectivity: int = 3, independent: bool = True,
                 allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.labels = _check_labels(labels, "KeepLargestConnectedComponent")
        self.connectivity = _check_connectivity(connectivity, "KeepLargestConnectedComponent")
        self.independent = independent

    def apply(self, volume, params, key):
        y = keep_largest_component(_data(volume), self.labels, connectivity=self.connectivity,
                                   independent=self.independent)  # fmt: skip
        return volume.replace(data=y)


class RemoveSmallObjects(Transform):
    """Remove components smaller than ``min_size_voxels`` or ``min_size_mm3`` (voxel volume from each volume's
    affine) (:func:`remove_small_objects`)."""

    def __init__(self, keys=("label",), min_size_voxels: float | None = None, min_size_mm3: float | None = None, *,
                 labels=None, connectivity: int = 1, independent: bool = True, allow_missing_keys=False):  # fmt: skip
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if (min_size_voxels is None) == (min_size_mm3 is None):
            raise ArgumentError("RemoveSmallObjects: give exactly one of min_size_voxels= and min_size_mm3=")
        self.min_size_voxels, self.min_size_mm3 = min_size_voxels, min_size_mm3
        self.labels = _check_labels(labels, "RemoveSmallObjects")
        self.connectivity = _check_connectivity(connectivity, "RemoveSmallObjects")
        self.independent = independent

    def apply(self, volume, params, key):
        y = remove_small_objects(_data(volume), self.min_size_voxels, self.min_size_mm3, affine=volume.affine,
                                 labels=self.labels, connectivity=self.connectivity,
                                 independent=self.independent)  # fmt: skip
        return volume.replace(data=y)


class FillHoles(Transform):
    """Fill enclosed background holes of each label (:func:`fill_holes`)."""

    def __init__(self, keys=("label",), labels=None, *, connectivity: int = 3, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.labels = _check_labels(labels, "FillHoles")
        self.connectivity = _check_connectivity(connectivity, "FillHoles")

    def apply(self, volume, params, key):
        return volume.replace(data=fill_holes(_data(volume), self.labels, connectivity=self.connectivity))


class LabelToContour(Transform):
    """Inner boundary voxels of each label, keeping their label (:func:`label_to_contour`)."""

    def __init__(self, keys=("label",), *, connectivity: int = 3, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.connectivity = _check_connectivity(connectivity, "LabelToContour")

    def apply(self, volume, params, key):
        return volume.replace(data=label_to_contour(_data(volume), connectivity=self.connectivity))
