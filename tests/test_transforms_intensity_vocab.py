"""NormalizeIntensity, ScaleIntensityRange, ClipPercentile and ZScore's two named background behaviours:
hand-built values, numpy == torch, and MONAI / TorchIO on the same random input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medstack import Volume
from medstack.errors import ArgumentError, GeometryError
from medstack.transforms.intensity import (
    ClipPercentile,
    NormalizeIntensity,
    PercentileScale,
    ScaleIntensityRange,
    ZScore,
    clip_percentiles,
    normalize_intensity,
    percentiles,
    scale_intensity_range,
    zscore,
)


def row(values, dtype=np.float32):
    return np.asarray(values, dtype).reshape(1, 1, 1, -1)


def brain(seed=0, shape=(2, 6, 7, 8)):
    """Random MR-like image with an exact-zero background (about 40 % of the voxels)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(100, 20, size=shape).astype(np.float32)
    x[rng.random(shape) < 0.4] = 0
    return x


AFFINE = np.diag([0.8, 0.9, 2.5, 1.0])


# -- normalize_intensity -----------------------------------------------------------------------------


def test_normalize_nonzero_keeps_background_exactly_zero():
    x = row([0, 0, 2, 4, 6])
    out = normalize_intensity(x, nonzero=True)
    mean, std = 4.0, np.std([2, 4, 6])
    np.testing.assert_allclose(out.ravel(), [0, 0, (2 - mean) / std, 0, (6 - mean) / std], atol=1e-6)
    assert out.ravel()[0] == 0 and out.ravel()[1] == 0  # exactly zero, not -mean/std
    full = normalize_intensity(x).ravel()
    np.testing.assert_allclose(full, (x.ravel() - 2.4) / np.std(x), rtol=1e-5)
    np.testing.assert_array_equal(x, row([0, 0, 2, 4, 6]))  # input untouched


def test_normalize_given_statistics_and_zero_divisor():
    x = row([0, 1, 3])
    np.testing.assert_allclose(normalize_intensity(x, subtrahend=1, divisor=2).ravel(), [-0.5, 0, 1])
    np.testing.assert_allclose(normalize_intensity(x, subtrahend=1, divisor=0).ravel(), [-1, 0, 2])  # 0 -> 1
    np.testing.assert_allclose(normalize_intensity(x, subtrahend=1, nonzero=True).ravel(), [0, 0, 2])  # std(1, 3) = 1
    np.testing.assert_allclose(normalize_intensity(row([5, 5, 5])).ravel(), [0, 0, 0])  # std 0 -> divisor 1


def test_normalize_per_channel_values_and_channel_wise():
    x = np.stack([row([1, 3])[0], row([10, 30])[0]])
    out = normalize_intensity(x, subtrahend=[1, 10], divisor=[2, 20])
    np.testing.assert_allclose(out.reshape(2, -1), [[0, 1], [0, 1]])
    per = normalize_intensity(x).reshape(2, -1)
    np.testing.assert_allclose(per, [[-1, 1], [-1, 1]], atol=1e-6)
    together = normalize_intensity(x, channel_wise=False).ravel()
    np.testing.assert_allclose(together, (np.array([1, 3, 10, 30]) - 11) / np.std([1, 3, 10, 30]), rtol=1e-5)
    with pytest.raises(ArgumentError, match="2 channels"):
        normalize_intensity(x, subtrahend=[1, 2, 3])
    with pytest.raises(ArgumentError, match="channel_wise"):
        normalize_intensity(x, divisor=[1, 2], channel_wise=False)
    with pytest.raises(ArgumentError, match="finite"):
        NormalizeIntensity(divisor=float("nan"))


def test_normalize_all_zero_channel_and_nan():
    x = np.stack([row([0, 0, 0])[0], row([0, 2, 4])[0]])
    out = normalize_intensity(x, nonzero=True).reshape(2, -1)
    np.testing.assert_array_equal(out[0], [0, 0, 0])
    np.testing.assert_allclose(out[1], [0, -1, 1], atol=1e-6)
    y = normalize_intensity(row([np.nan, 1, 3])).ravel()  # NaN ignored in the statistics, stays NaN
    assert np.isnan(y[0])
    np.testing.assert_allclose(y[1:], [-1, 1], atol=1e-6)


def test_normalize_torch_matches_numpy_and_stays_torch():
    x = brain(1)
    t = torch.from_numpy(x.copy())
    for kw in ({}, {"nonzero": True}, {"channel_wise": False, "nonzero": True}, {"subtrahend": [1.0, 2.0]}):
        a, b = normalize_intensity(x, **kw), normalize_intensity(t, **kw)
        assert isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.device == t.device
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(t.numpy(), x)  # input untouched


def test_normalize_class_keeps_affine_and_dtype():
    v = Volume(row([0, 0, 2, 4], np.int16), AFFINE)
    out = NormalizeIntensity(nonzero=True)(v)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.affine, AFFINE)
    np.testing.assert_allclose(out.data.ravel(), [0, 0, -1, 1])
    assert NormalizeIntensity()(Volume(row([1.0, 3.0], np.float64), AFFINE)).dtype == np.float64


@pytest.mark.parametrize("kw", [{}, {"nonzero": True}, {"channel_wise": False}, {"channel_wise": False, "nonzero": True},
                                {"subtrahend": [90.0, 110.0], "divisor": [15.0, 0.0], "nonzero": True},
                                {"subtrahend": 100.0, "channel_wise": False}])  # fmt: skip
def test_normalize_matches_monai(kw):
    monai = pytest.importorskip("monai")
    x = brain(2)
    ref = monai.transforms.NormalizeIntensity(**{"channel_wise": True, **kw})(torch.from_numpy(x.copy()))
    ours = normalize_intensity(x, **kw)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-5)


# -- ZScore's named backgrounds --------------------------------------------------------------------


def test_zscore_background_normalize_vs_keep():
    x = row([0, 0, 2, 4])
    torchio_like = zscore(x, nonzero=True).ravel()  # default: background="normalize"
    np.testing.assert_allclose(torchio_like, [-3, -3, -1, 1], atol=1e-6)
    monai_like = zscore(x, nonzero=True, background="keep").ravel()
    np.testing.assert_allclose(monai_like, [0, 0, -1, 1], atol=1e-6)
    np.testing.assert_allclose(monai_like, normalize_intensity(x, nonzero=True).ravel(), atol=1e-6)
    v = Volume(x, AFFINE)
    np.testing.assert_allclose(ZScore(nonzero=True, background="keep")(v).data.ravel(), [0, 0, -1, 1], atol=1e-6)
    np.testing.assert_allclose(ZScore(nonzero=True)(v).data.ravel(), [-3, -3, -1, 1], atol=1e-6)
    with pytest.raises(ArgumentError, match="background"):
        ZScore(background="zero")
    with pytest.raises(ArgumentError, match="background"):
        zscore(x, background="monai")


def test_zscore_mask_keep_leaves_outside_unchanged_and_torch():
    img = row([1, 2, 3, 100])
    mask = row([1, 1, 1, 0], np.uint8)[0] > 0
    out = zscore(img, mask, background="keep").ravel()
    np.testing.assert_allclose(out, [*((np.array([1, 2, 3]) - 2) / np.std([1, 2, 3])), 100], rtol=1e-5)
    t = zscore(torch.from_numpy(img), torch.from_numpy(mask), background="keep")
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy().ravel(), out, rtol=1e-6)
    with pytest.raises(GeometryError, match="does not match"):
        zscore(img, np.ones((1, 1, 3), bool))


def test_zscore_nonzero_is_torchio_semantics():
    tio = pytest.importorskip("torchio")
    x = brain(3, shape=(1, 6, 7, 8))
    n = int((x != 0).sum())
    image = tio.ScalarImage(tensor=torch.from_numpy(x.copy()), affine=np.eye(4))
    ref = tio.ZNormalization(masking_method=lambda t: t != 0)(image).data.numpy()
    ours = zscore(x, nonzero=True)
    # same statistics region, every voxel shifted; TorchIO divides by the sample std (ddof=1), medstack by ddof=0
    np.testing.assert_allclose(ours, ref * np.sqrt(n / (n - 1)), rtol=1e-4, atol=1e-4)
    assert np.all(ours[x == 0] != 0)


# -- ScaleIntensityRange -----------------------------------------------------------------------------


def test_scale_intensity_range_values():
    x = row([-1000, 0, 500, 2000], np.int16)
    np.testing.assert_allclose(scale_intensity_range(x, -1000, 1000, 0, 1).ravel(), [0, 0.5, 0.75, 1.5])
    np.testing.assert_allclose(scale_intensity_range(x, -1000, 1000, 0, 1, clip=True).ravel(), [0, 0.5, 0.75, 1])
    np.testing.assert_allclose(
        scale_intensity_range(x, -1000, 1000, 1, -1, clip=True).ravel(), [1, 0, -0.5, -1], rtol=1e-6
    )
    v = Volume(x, AFFINE)
    out = ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True)(v)
    np.testing.assert_allclose(out.data.ravel(), [-1, 0, 0.5, 1], rtol=1e-6)
    np.testing.assert_array_equal(out.affine, AFFINE)
    t = scale_intensity_range(torch.from_numpy(x.copy()), -1000, 1000, 0, 1)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    with pytest.raises(ArgumentError, match="a_min == a_max"):
        ScaleIntensityRange(a_min=3, a_max=3)


@pytest.mark.parametrize("clip", [False, True])
def test_scale_intensity_range_matches_monai(clip):
    monai = pytest.importorskip("monai")
    x = np.random.default_rng(4).uniform(-1500, 2500, size=(2, 5, 6, 7)).astype(np.float32)
    ref = monai.transforms.ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=clip)(x)
    np.testing.assert_allclose(scale_intensity_range(x, -1000, 1000, 0.0, 1.0, clip=clip), np.asarray(ref),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


# -- percentiles -------------------------------------------------------------------------------------------


def test_clip_percentiles_values():
    x = row(np.arange(11))
    np.testing.assert_allclose(clip_percentiles(x, 10, 90).ravel(), [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    np.testing.assert_allclose(clip_percentiles(x, 0, 100).ravel(), np.arange(11))  # unchanged
    two = np.stack([row(np.arange(11))[0], row(np.arange(11) * 10)[0]])
    per = clip_percentiles(two, 10, 90).reshape(2, -1)
    np.testing.assert_allclose(per[1], np.clip(np.arange(11) * 10, 10, 90))
    together = clip_percentiles(two, 10, 90, channel_wise=False)
    lo, hi = np.percentile(two, [10, 90])
    np.testing.assert_allclose(together, np.clip(two, lo, hi))
    nan = clip_percentiles(row([np.nan, 0, 5, 10]), 50, 50).ravel()
    assert np.isnan(nan[0]) and np.allclose(nan[1:], 5)
    for bad in ((50, 10), (-1, 50), (10, 101)):
        with pytest.raises(ArgumentError, match="lower"):
            clip_percentiles(x, *bad)
    with pytest.raises(ArgumentError, match="lower"):
        ClipPercentile(lower=90, upper=10)


def test_percentiles_torch_equals_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=1001).astype(np.float32)
    x[::7] = np.nan
    q = [0, 0.5, 13.3, 50, 99.5, 100]
    np.testing.assert_allclose(percentiles(torch.from_numpy(x), q), np.nanpercentile(x, q), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(percentiles(x, q), np.nanpercentile(x, q), rtol=1e-6)
    assert np.isnan(percentiles(torch.full((3,), float("nan")), [50])[0])


def test_clip_percentile_class_torch_and_distinct_from_percentile_scale():
    x = np.random.default_rng(6).normal(50, 10, size=(2, 4, 5, 6)).astype(np.float32)
    v = Volume(torch.from_numpy(x.copy()), AFFINE)
    out = ClipPercentile(lower=5, upper=95)(v)
    assert isinstance(out.data, torch.Tensor)
    ref = np.stack([np.clip(x[c], *np.percentile(x[c], [5, 95])) for c in range(2)])
    np.testing.assert_allclose(out.data.numpy(), ref, rtol=1e-6)
    assert out.data.numpy().max() > 50  # still in the input's units, not rescaled to [0, 1]
    scaled = PercentileScale(lower=5, upper=95)(v).data.numpy()  # rescales (still works after the refactor)
    np.testing.assert_allclose(scaled, np.stack([(ref[c] - ref[c].min()) / np.ptp(ref[c]) for c in range(2)]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.gpu
def test_intensity_vocab_stays_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = brain(7)
    t = torch.from_numpy(x).cuda()
    for fn in (
        lambda a: normalize_intensity(a, nonzero=True),
        lambda a: zscore(a, nonzero=True, background="keep"),
        lambda a: scale_intensity_range(a, 0, 200, 0, 1, clip=True),
        lambda a: clip_percentiles(a, 1, 99),
    ):
        out = fn(t)
        assert out.is_cuda
        np.testing.assert_allclose(out.cpu().numpy(), fn(x), rtol=1e-5, atol=1e-5)
