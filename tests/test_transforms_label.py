"""Label transforms: hand-built label maps with known answers, numpy == torch, and MONAI's KeepLargestConnectedComponent,
FillHoles, LabelToContour and AsDiscrete on the same random input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medstack import Volume
from medstack.errors import ArgumentError
from medstack.transforms.label import (
    AsDiscrete,
    FillHoles,
    KeepLargestConnectedComponent,
    LabelToContour,
    OneHot,
    RemapLabels,
    RemoveSmallObjects,
    as_discrete,
    fill_holes,
    keep_largest_component,
    label_to_contour,
    one_hot,
    remap_labels,
    remove_small_objects,
)

AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm3 voxels


def row(values, dtype=np.uint8):
    return np.asarray(values, dtype).reshape(1, 1, 1, -1)


def blobs(seed, shape=(12, 13, 14), n_labels=3, sigma=1.2):
    """Random multi-label map made of smoothed noise: several components per label, some holes."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for lab in range(1, n_labels + 1):
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
        out[(field > 0.12) & (out == 0)] = lab
    return out[None]


def shell(n=7, lo=1, hi=6):
    x = np.zeros((1, n, n, n), np.uint8)
    x[0, lo:hi, lo:hi, lo:hi] = 1
    x[0, lo + 1 : hi - 1, lo + 1 : hi - 1, lo + 1 : hi - 1] = 0  # hollow cube
    return x


# -- one-hot / discrete ------------------------------------------------------------------------------


def test_one_hot_values_dtypes_torch():
    x = row([0, 2, 1, 2])
    out = one_hot(x, 3)
    assert out.shape == (3, 1, 1, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0, 0], [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
    assert one_hot(x.astype(np.float32), 4, dtype="float32").dtype == np.float32
    t = one_hot(torch.from_numpy(x), 3, dtype=torch.float32)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), out)
    np.testing.assert_array_equal(OneHot(num_classes=3)(Volume(x, AFFINE)).data, out)


def test_one_hot_errors():
    with pytest.raises(ArgumentError, match=r"\[0, 1\]"):
        one_hot(row([0, 2]), 2)
    with pytest.raises(ArgumentError, match="one channel"):
        one_hot(np.zeros((2, 1, 1, 2), np.uint8), 2)
    with pytest.raises(ArgumentError, match="integers"):
        one_hot(row([0, 0.5], np.float32), 2)
    with pytest.raises(ArgumentError, match="dtype"):
        one_hot(row([0, 1]), 2, dtype="int64")
    with pytest.raises(ArgumentError, match="num_classes"):
        OneHot(num_classes=0)


def test_as_discrete_argmax_threshold():
    p = np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.3], [0.3, 0.2, 0.6]], np.float32).reshape(3, 1, 1, 3)
    out = as_discrete(p)
    assert out.shape == (1, 1, 1, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.ravel(), [1, 0, 2])
    thr = as_discrete(p, threshold=0.5)
    np.testing.assert_array_equal(thr[:, 0, 0], [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    t = as_discrete(torch.from_numpy(p))
    assert t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), out)
    np.testing.assert_array_equal(AsDiscrete(keys="pred")({"pred": Volume(p, AFFINE)})["pred"].data, out)
    with pytest.raises(ArgumentError, match=r"threshold=0\.5"):
        as_discrete(p[:1])
    with pytest.raises(ArgumentError, match="not both"):
        as_discrete(p, argmax=True, threshold=0.5)
    with pytest.raises(ArgumentError, match="exactly one"):
        AsDiscrete(argmax=False)


def test_as_discrete_matches_monai():
    monai = pytest.importorskip("monai")
    p = torch.softmax(torch.from_numpy(np.random.default_rng(0).normal(size=(4, 5, 6, 7)).astype(np.float32)), 0)
    ref = monai.transforms.AsDiscrete(argmax=True)(p)
    np.testing.assert_array_equal(as_discrete(p).numpy(), np.asarray(ref).astype(np.uint8))
    ref_t = monai.transforms.AsDiscrete(threshold=0.3)(p)
    np.testing.assert_array_equal(as_discrete(p, threshold=0.3).numpy(), np.asarray(ref_t).astype(np.uint8))


# -- remap -----------------------------------------------------------------------------------------------


def test_remap_labels():
    x = row([0, 1, 2, 5, 7])
    out = remap_labels(x, {1: 2, 2: 1, 5: 0})
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.ravel(), [0, 2, 1, 0, 7])  # simultaneous swap; 7 kept
    np.testing.assert_array_equal(x.ravel(), [0, 1, 2, 5, 7])  # input untouched
    t = remap_labels(torch.from_numpy(x), {1: 2, 2: 1, 5: 0})
    assert t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), out)
    f = remap_labels(row([0, 1.0, 2.0], np.float32), {2.0: 3.5})
    np.testing.assert_array_equal(f.ravel(), [0, 1, 3.5])
    big = row([0, 10**7, 3], np.int32)  # value range too large for a lookup table: other path, same result
    np.testing.assert_array_equal(remap_labels(big, {10**7: 1, 3: 2}).ravel(), [0, 1, 2])
    np.testing.assert_array_equal(remap_labels(torch.from_numpy(big), {10**7: 1}).numpy().ravel(), [0, 1, 3])
    v = RemapLabels(mapping={7: 3})(Volume(x, AFFINE))
    np.testing.assert_array_equal(v.data.ravel(), [0, 1, 2, 5, 3])


def test_remap_labels_errors():
    x = row([0, 1, 2, 5])
    with pytest.raises(ArgumentError, match=r"\[5\]"):
        remap_labels(x, {0: 0, 1: 1, 2: 2}, strict=True)
    assert remap_labels(x, {0: 0, 1: 1, 2: 2, 5: 3}, strict=True).ravel().tolist() == [0, 1, 2, 3]
    with pytest.raises(ArgumentError, match="does not fit"):
        remap_labels(x, {1: 300})
    with pytest.raises(ArgumentError, match="does not fit"):
        remap_labels(x, {1: -1})
    with pytest.raises(ArgumentError, match="does not fit"):
        remap_labels(x, {1: 1.5})
    with pytest.raises(ArgumentError, match="mapping"):
        RemapLabels(mapping=[(1, 2)])


# -- keep largest component --------------------------------------------------------------------------------


def test_keep_largest_component_hand_built():
    x = row([1, 1, 0, 1, 0, 2, 0, 2, 2, 2, 3])
    np.testing.assert_array_equal(keep_largest_component(x).ravel(), [1, 1, 0, 0, 0, 0, 0, 2, 2, 2, 3])
    np.testing.assert_array_equal(keep_largest_component(x, labels=[2]).ravel(), [1, 1, 0, 1, 0, 0, 0, 2, 2, 2, 3])
    # union of 1 and 2: {0,1}, {3}, {5}, {7,8,9} -> keep {7,8,9}; label 3 untouched (not in labels)
    union = keep_largest_component(x, labels=[1, 2], independent=False).ravel()
    np.testing.assert_array_equal(union, [0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 3])
    # diagonal neighbours: one component with connectivity 3, two with 1
    d = np.zeros((1, 1, 3, 3), np.uint8)
    d[0, 0, 0, 0] = d[0, 0, 1, 1] = d[0, 0, 2, 2] = 1
    d[0, 0, 2, 1] = 1
    assert keep_largest_component(d, connectivity=3).sum() == 4
    np.testing.assert_array_equal(keep_largest_component(d, connectivity=1)[0, 0], [[0, 0, 0], [0, 1, 0], [0, 1, 1]])
    t = keep_largest_component(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), keep_largest_component(x))
    with pytest.raises(ArgumentError, match="connectivity"):
        keep_largest_component(x, connectivity=4)


def components_bfs(mask, connectivity):
    """Reference connected components by plain breadth-first search (independent of scipy / skimage)."""
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
               if 0 < abs(a) + abs(b) + abs(c) <= connectivity]  # fmt: skip
    seen = np.zeros(mask.shape, bool)
    comps = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, comp = True, [start], []
        while queue:
            p = queue.pop()
            comp.append(p)
            for o in offsets:
                q = tuple(int(i + d) for i, d in zip(p, o))
                if all(0 <= i < n for i, n in zip(q, mask.shape)) and mask[q] and not seen[q]:
                    seen[q] = True
                    queue.append(q)
        comps.append(comp)
    return comps


def keep_largest_reference(x, labels, connectivity, independent):
    out = x.copy()
    groups = [[v] for v in labels] if independent else [labels]
    for group in groups:
        mask = np.isin(x[0], group)
        comps = components_bfs(mask, connectivity)
        biggest = max(range(len(comps)), key=lambda i: (len(comps[i]), -i)) if comps else None
        for i, comp in enumerate(comps):
            if i != biggest:
                for p in comp:
                    out[(0, *p)] = 0
    return out


CASES = [(1, True, None), (3, True, None), (2, False, [1, 2]), (1, True, [2, 3]), (3, False, [1, 2, 3])]


@pytest.mark.parametrize(("connectivity", "independent", "labels"), CASES)
def test_keep_largest_component_matches_bfs_reference(connectivity, independent, labels):
    x = blobs(1)
    ours = keep_largest_component(x, labels, connectivity=connectivity, independent=independent)
    assert (ours != x).any()  # the test input has something to remove
    np.testing.assert_array_equal(ours, keep_largest_reference(x, labels or [1, 2, 3], connectivity, independent))


@pytest.mark.parametrize(("connectivity", "independent", "labels"), CASES)
def test_keep_largest_component_matches_monai(connectivity, independent, labels):
    monai = pytest.importorskip("monai")
    pytest.importorskip("skimage.measure")  # MONAI's CPU connected components need scikit-image
    x = blobs(1)
    ours = keep_largest_component(x, labels, connectivity=connectivity, independent=independent)
    t = monai.transforms.KeepLargestConnectedComponent(applied_labels=labels or [1, 2, 3], is_onehot=False,
                                                       independent=independent, connectivity=connectivity)  # fmt: skip
    ref = np.asarray(t(torch.from_numpy(x.copy())))
    assert (ours != x).any()  # the test input has something to remove
    np.testing.assert_array_equal(ours, ref)


# -- remove small objects -------------------------------------------------------------------------------------


def test_remove_small_objects_voxels_and_mm3():
    x = row([1, 0, 1, 1, 1, 0, 2, 2, 0, 1, 2])
    np.testing.assert_array_equal(remove_small_objects(x, min_size_voxels=3).ravel(), [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(remove_small_objects(x, min_size_voxels=2).ravel(), [0, 0, 1, 1, 1, 0, 2, 2, 0, 0, 0])
    # independent=False: {9, 10} (labels 1 and 2 touching) is one object of 2 voxels
    union = remove_small_objects(x, min_size_voxels=2, independent=False).ravel()
    np.testing.assert_array_equal(union, [0, 0, 1, 1, 1, 0, 2, 2, 0, 1, 2])
    # 0.5 mm3 voxels: 1 mm3 = 2 voxels (exactly 1 mm3 is kept)
    mm = remove_small_objects(x, min_size_mm3=1.0, affine=AFFINE).ravel()
    np.testing.assert_array_equal(mm, [0, 0, 1, 1, 1, 0, 2, 2, 0, 0, 0])
    v = RemoveSmallObjects(min_size_mm3=1.5)(Volume(torch.from_numpy(x), AFFINE))
    assert isinstance(v.data, torch.Tensor)
    np.testing.assert_array_equal(v.data.numpy().ravel(), [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(remove_small_objects(x, 3, labels=[2]).ravel(), [1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0])


def test_remove_small_objects_errors():
    x = row([1, 0])
    with pytest.raises(ArgumentError, match="exactly one"):
        remove_small_objects(x)
    with pytest.raises(ArgumentError, match="exactly one"):
        RemoveSmallObjects(min_size_voxels=2, min_size_mm3=3)
    with pytest.raises(ArgumentError, match="affine"):
        remove_small_objects(x, min_size_mm3=3)
    with pytest.raises(ArgumentError, match="singular"):
        remove_small_objects(x, min_size_mm3=3, affine=np.diag([1.0, 0, 1, 1]))


# -- fill holes -----------------------------------------------------------------------------------------------


def test_fill_holes_hand_built():
    x = shell()
    out = fill_holes(x)
    expected = np.zeros_like(x)
    expected[0, 1:6, 1:6, 1:6] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, shell())  # input untouched
    opened = shell()
    opened[0, 3, 3, 1] = 0  # a hole through the wall: the inside reaches the border, nothing to fill
    np.testing.assert_array_equal(fill_holes(opened), opened)
    at_border = shell(n=5, lo=0, hi=5)  # the shell touches the image border: its inside is still a hole
    assert fill_holes(at_border)[0, 1:4, 1:4, 1:4].all()


def test_fill_holes_other_labels_and_nesting():
    x = np.zeros((1, 11, 11, 11), np.uint8)
    x[0, 1:10, 1:10, 1:10] = 1
    x[0, 2:9, 2:9, 2:9] = 0  # label 1 shell
    x[0, 3:8, 3:8, 3:8] = 2
    x[0, 4:7, 4:7, 4:7] = 0  # label 2 shell inside it
    x[0, 5, 5, 5] = 3  # a label-3 voxel inside the inner pocket
    out = fill_holes(x)
    assert (out[0, 2:9, 2:9, 2:9][x[0, 2:9, 2:9, 2:9] == 0] > 0).all()
    gap = (x[0] == 0) & np.pad(np.ones((7, 7, 7), bool), 2) & ~np.pad(np.ones((5, 5, 5), bool), 3)
    assert (out[0][gap] == 1).all()  # between the shells: label 1
    pocket = (x[0] == 0) & np.pad(np.ones((3, 3, 3), bool), 4)
    assert (out[0][pocket] == 2).all()  # innermost enclosure wins
    assert out[0, 5, 5, 5] == 3  # other labels are never overwritten
    only1 = fill_holes(x, labels=[1])
    assert (only1[0][pocket] == 1).all() and only1[0, 5, 5, 5] == 3
    t = fill_holes(torch.from_numpy(x))
    np.testing.assert_array_equal(t.numpy(), out)
    np.testing.assert_array_equal(FillHoles()(Volume(x, AFFINE)).data, out)


def test_fill_holes_connectivity_is_the_backgrounds():
    x = np.ones((1, 5, 5, 5), np.uint8)
    x[0, 2, 2, 2] = 0
    x[0, 1, 1, 1] = 0  # diagonal to the centre, and diagonal to the border corner (0, 0, 0)? no: (0,0,0) is 1
    x[0, 0, 0, 0] = 0  # the border voxel: diagonal chain centre -> (1,1,1) -> (0,0,0)
    assert fill_holes(x, connectivity=3)[0, 2, 2, 2] == 0  # leaks out through the corners
    assert fill_holes(x, connectivity=1)[0, 2, 2, 2] == 1  # face-connected background: enclosed


@pytest.mark.parametrize("connectivity", [1, 3])
def test_fill_holes_matches_monai_binary(connectivity):
    monai = pytest.importorskip("monai")
    rng = np.random.default_rng(connectivity)
    x = (ndimage.gaussian_filter(rng.normal(size=(14, 15, 16)), 1.0) > -0.15).astype(np.uint8)[None]
    ours = fill_holes(x, connectivity=connectivity)
    ref = np.asarray(monai.transforms.FillHoles(connectivity=connectivity)(torch.from_numpy(x.copy())))
    assert (ours != x).any()
    np.testing.assert_array_equal(ours, ref)


def test_fill_holes_matches_monai_on_disjoint_labels():
    monai = pytest.importorskip("monai")
    x = np.zeros((1, 16, 9, 9), np.uint8)
    x[0, 1:7, 1:8, 1:8], x[0, 2:6, 2:7, 2:7] = 1, 0
    x[0, 8:15, 1:8, 1:8], x[0, 9:14, 3:5, 2:7] = 2, 0  # labels that do not enclose each other
    ours = fill_holes(x)
    np.testing.assert_array_equal(ours, np.asarray(monai.transforms.FillHoles()(torch.from_numpy(x.copy()))))
    assert (ours != x).any()


# -- contour --------------------------------------------------------------------------------------------------


def test_label_to_contour_hand_built():
    x = np.zeros((1, 5, 5, 5), np.uint8)
    x[0, 1:4, 1:4, 1:4] = 2
    out = label_to_contour(x)
    expected = x.copy()
    expected[0, 2, 2, 2] = 0  # the only voxel with no background neighbour
    np.testing.assert_array_equal(out, expected)
    # two labels side by side: both sides of their common face are boundary; outside the image is background
    y = np.concatenate([np.full((1, 3, 3, 3), 1, np.uint8), np.full((1, 3, 3, 3), 2, np.uint8)], axis=3)
    expected = y.copy()
    expected[0, 1, 1, 1] = expected[0, 1, 1, 4] = 0  # the centres of the two 3x3x3 cubes; w = 2, 3 face each other
    np.testing.assert_array_equal(label_to_contour(y), expected)
    z = np.ones((1, 5, 5, 5), np.int16)
    z[0, 2, 2, 2] = 4
    c = label_to_contour(z, connectivity=1)
    assert c[0, 2, 2, 2] == 4 and c[0, 1, 1, 1] == 0 and c[0, 2, 2, 1] == 1 and c.dtype == np.int16
    assert label_to_contour(z, connectivity=3)[0, 1, 1, 1] == 1  # corner neighbour of the 4
    t = label_to_contour(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), out)
    np.testing.assert_array_equal(LabelToContour()(Volume(x, AFFINE)).data, out)


def test_label_to_contour_matches_monai_binary():
    monai = pytest.importorskip("monai")
    field = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(14, 15, 16)), 2.0)
    x = (field > 0).astype(np.float32)[None]
    ref = np.asarray(monai.transforms.LabelToContour()(torch.from_numpy(x.copy())))
    np.testing.assert_array_equal(label_to_contour(x), ref)
    assert 0 < ref.sum() < x.sum()


# -- classes, sample dicts -------------------------------------------------------------------------------


def test_classes_default_to_label_key_and_keep_affine():
    x = blobs(4)
    sample = {"image": Volume(np.zeros(x.shape, np.float32), AFFINE), "label": Volume(x, AFFINE)}
    for t in (
        KeepLargestConnectedComponent(),
        FillHoles(),
        LabelToContour(),
        RemoveSmallObjects(min_size_voxels=5),
        RemapLabels(mapping={3: 1}),
    ):
        out = t(sample)
        assert out["image"] is sample["image"]
        assert out["label"].dtype == np.uint8
        np.testing.assert_array_equal(out["label"].affine, AFFINE)
    np.testing.assert_array_equal(sample["label"].data, blobs(4))  # input untouched
    with pytest.raises(ArgumentError, match="labels"):
        KeepLargestConnectedComponent(labels="liver")
    with pytest.raises(ArgumentError, match="shape"):
        fill_holes(x[0])


@pytest.mark.gpu
def test_label_functions_come_back_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = blobs(5)
    t = torch.from_numpy(x).cuda()
    fns = (
        lambda a: keep_largest_component(a),
        lambda a: fill_holes(a),
        lambda a: label_to_contour(a),
        lambda a: remove_small_objects(a, 4),
        lambda a: remap_labels(a, {1: 2}),
        lambda a: one_hot(a, 4),
    )
    for fn in fns:
        out = fn(t)
        assert out.is_cuda
        np.testing.assert_array_equal(out.cpu().numpy(), fn(x))
    p = torch.softmax(torch.randn(3, 4, 5, 6, device="cuda"), 0)
    assert as_discrete(p).is_cuda
    np.testing.assert_array_equal(as_discrete(p).cpu().numpy(), as_discrete(p.cpu().numpy()))
