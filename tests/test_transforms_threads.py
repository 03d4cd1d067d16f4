"""Every transform exported by medstack.transforms is stateless per call: run from 8 threads at once (with a
tiny switch interval forcing thread switches mid-call), each thread gets exactly the single-threaded result
for its own input and seed, and image and label keys stay on the same grid (same crop box, flip, rotation).

PatchLoader runs transforms in threads on ONE transform object, so a per-call value kept on ``self`` (a crop
box computed from the image, then read back for the label) lets calls overwrite each other's state.
"""

from __future__ import annotations

import inspect
import sys
import threading

import numpy as np
import pytest

from medstack import Volume
from medstack import transforms as T

N_THREADS = 8
REPEATS = 3

#: how to build each exported class for this test (keys image + label where the class is spatial)
FACTORIES = {
    "Clip": lambda: T.Clip(low=0.2, high=0.8),
    "CropForeground": lambda: T.CropForeground(margin=1),
    "CropOrPad": lambda: T.CropOrPad(size=(7, 9, 6), foreground_key="label"),
    "Flip": lambda: T.Flip(axes=(0, 2)),
    "PercentileScale": lambda: T.PercentileScale(),
    "RandomAffine": lambda: T.RandomAffine(rotation=20, translation=2.0),
    "RandomAnisotropy": lambda: T.RandomAnisotropy(),
    "RandomBiasField": lambda: T.RandomBiasField(),
    "RandomBlur": lambda: T.RandomBlur(),
    "RandomBrightness": lambda: T.RandomBrightness(),
    "RandomContrast": lambda: T.RandomContrast(),
    "RandomElastic": lambda: T.RandomElastic(control_points=4),
    "RandomFlip": lambda: T.RandomFlip(),
    "RandomGamma": lambda: T.RandomGamma(),
    "RandomNoise": lambda: T.RandomNoise(),
    "RandomRot90": lambda: T.RandomRot90(planes=((0, 1), (1, 2), (0, 2))),
    "Rot90": lambda: T.Rot90(k=1, axes=(0, 2)),
    "ScaleToRange": lambda: T.ScaleToRange(a_min=0.0, a_max=2.0),
    "ToDtype": lambda: T.ToDtype(dtype="float64"),
    "Window": lambda: T.Window(level=0.5, width=1.0),
    "ZScore": lambda: T.ZScore(mask_key="label"),
    "DivisiblePad": lambda: T.DivisiblePad(k=8),
    "Orient": lambda: T.Orient(axcodes="LPI"),
    "Pad": lambda: T.Pad(size=(14, 15, 16)),
    "Resample": lambda: T.Resample(like="label"),
    "Resize": lambda: T.Resize(spatial_size=(7, -1, 9)),
    "Spacing": lambda: T.Spacing(pixdim=(1.3, 0.9, 1.1)),
    "ClipPercentile": lambda: T.ClipPercentile(lower=5, upper=95),
    "NormalizeIntensity": lambda: T.NormalizeIntensity(nonzero=True),
    "ScaleIntensityRange": lambda: T.ScaleIntensityRange(a_min=0.0, a_max=2.0, b_min=-1.0, b_max=1.0, clip=True),
    "OneHot": lambda: T.OneHot(num_classes=2),
    "AsDiscrete": lambda: T.AsDiscrete(threshold=0.5),
    "RemapLabels": lambda: T.RemapLabels(mapping={1: 2}),
    "KeepLargestConnectedComponent": lambda: T.KeepLargestConnectedComponent(),
    "RemoveSmallObjects": lambda: T.RemoveSmallObjects(min_size_mm3=2.0),
    "FillHoles": lambda: T.FillHoles(),
    "LabelToContour": lambda: T.LabelToContour(),
    "Compose": lambda: T.Compose(
        [T.RandomFlip(), T.CropOrPad(size=(6, 6, 6), foreground_key="label"), T.CropForeground(margin=1),
         T.RandomNoise()], seed=3),
    "OneOf": lambda: T.OneOf(
        [T.CropForeground(), T.CropOrPad(size=(5, 8, 7), foreground_key="label"), T.RandomRot90()]),
    "RandomApply": lambda: T.RandomApply(
        [T.CropOrPad(size=(9, 5, 8), foreground_key="label"), T.RandomFlip()], p=0.7),
}
#: base classes: not usable on their own (apply / draw are abstract)
ABSTRACT = {"Transform", "RandomTransform"}


def run_in_threads(worker) -> None:
    """``worker(i)`` for i in range(N_THREADS), in as many threads at once, with a tiny switch interval that forces
    thread switches mid-call; the interval is restored afterwards."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sys.getswitchinterval() == old


def exported_classes():
    return sorted(name for name in T.__all__ if inspect.isclass(getattr(T, name)))


def test_every_exported_class_is_covered():
    missing = set(exported_classes()) - set(FACTORIES) - ABSTRACT
    assert not missing, f"add a factory for {sorted(missing)} to FACTORIES"


def make_sample(i: int) -> dict:
    """A different input per thread: sizes, foreground position and values all depend on ``i``."""
    rng = np.random.default_rng(100 + i)
    shape = (10 + i % 3, 11 + i % 4, 9 + i % 2)
    img = np.zeros((1, *shape), np.float32)
    lo = [1 + (i + a) % 3 for a in range(3)]
    hi = [n - 1 - (i * (a + 1)) % 3 for a, n in enumerate(shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    img[(0, *box)] = rng.uniform(0.1, 1.0, size=[b - a for a, b in zip(lo, hi)]).astype(np.float32)
    label = (img > 0.55).astype(np.uint8)
    affine = np.diag([1.0 + 0.1 * i, 0.9, 1.2, 1.0])
    affine[:3, 3] = [i, -i, 2 * i]
    return {"image": Volume(img, affine), "label": Volume(label, affine), "id": i}


def run(transform, i: int):
    from medstack.transforms.base import generator_for

    sample = make_sample(i)
    if isinstance(transform, T.Compose):
        return transform(sample, index=i, epoch=1)
    return transform(sample, generator_for(7, 0, i))


def as_numpy(v: Volume) -> np.ndarray:
    return np.asarray(v.to_numpy())


def assert_same(a: dict, b: dict, where: str):
    for key in ("image", "label"):
        va, vb = a[key], b[key]
        assert va.spatial_shape == vb.spatial_shape, f"{where}: {key} shape"
        np.testing.assert_array_equal(np.asarray(va.affine), np.asarray(vb.affine), err_msg=f"{where}: {key} affine")
        np.testing.assert_array_equal(as_numpy(va), as_numpy(vb), err_msg=f"{where}: {key} data")


def assert_aligned(out: dict, where: str):
    """Image and label on one grid; for exact (re-indexing) spatial transforms the label still marks image > 0.55."""
    img, lab = out["image"], out["label"]
    assert img.spatial_shape == lab.spatial_shape, f"{where}: image {img.spatial_shape} vs label {lab.spatial_shape}"
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(lab.affine), err_msg=f"{where}: image/label affine")


EXACT = {"CropForeground", "CropOrPad", "Flip", "RandomFlip", "RandomRot90", "Rot90", "OneOf", "RandomApply"}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_threads_match_single_threaded(name):
    transform = FACTORIES[name]()
    expected = [run(transform, i) for i in range(N_THREADS)]
    for i, out in enumerate(expected):
        assert_aligned(out, f"{name} single-threaded input {i}")
        if name in EXACT:
            np.testing.assert_array_equal(as_numpy(out["label"]), (as_numpy(out["image"]) > 0.55).astype(np.uint8),
                                          err_msg=f"{name}: label no longer matches its image")  # fmt: skip
    results: dict[tuple[int, int], dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def worker(i):
        try:
            barrier.wait()
            for r in range(REPEATS):
                results[i, r] = run(transform, i)
        except BaseException as e:  # reported below
            errors.append(e)

    run_in_threads(worker)
    assert not errors, errors[0]
    for (i, r), out in results.items():
        where = f"{name} thread {i} repeat {r}"
        assert_same(out, expected[i], where)
        assert_aligned(out, where)
        assert out["id"] == i


def test_from_monai_random_transform_threads():
    """A random MONAI transform keeps its drawn parameters on itself: FromMonai serialises its calls."""
    pytest.importorskip("monai")
    import pickle

    from monai.transforms import RandFlipd, RandRotate90d

    from medstack.transforms.monai import FromMonai

    for inner in (RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
                  RandRotate90d(keys=["image", "label"], prob=0.9, max_k=3, spatial_axes=(0, 2))):  # fmt: skip
        transform = pickle.loads(pickle.dumps(FromMonai(inner)))
        expected = [run(transform, i) for i in range(N_THREADS)]
        results: dict[int, dict] = {}

        def worker(i, transform=transform, results=results):
            results[i] = run(transform, i)

        run_in_threads(worker)
        for i in range(N_THREADS):
            assert_same(results[i], expected[i], f"FromMonai({type(inner).__name__}) thread {i}")
            assert_aligned(results[i], f"FromMonai({type(inner).__name__}) thread {i}")
            np.testing.assert_array_equal(as_numpy(results[i]["label"]),
                                          (as_numpy(results[i]["image"]) > 0.55).astype(np.uint8))  # fmt: skip
