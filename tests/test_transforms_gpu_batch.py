"""BatchAugment: per-operation probabilities, the intensity / k-space operations, mm units, margins, nnU-Net preset."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medstack import Volume
from medstack.errors import ArgumentError, GeometryError
from medstack.testing import axis_code_affine, world_volume
from medstack.transforms.gpu import BatchAugment, rotation_matrices
from medstack.transforms.intensity import RandomBiasField, gaussian_blur
from medstack.transforms.spatial import RandomAffine, world_transform
from tests.test_transforms import inside_source, world_error

NO_SPATIAL = dict(rotation=0, scale=(1, 1), flip_p=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def smooth(shape=(2, 1, 16, 16, 16), seed=0):
    """A smooth, strictly positive random field (B, C, D, H, W)."""
    x = torch.rand(shape, generator=gen(seed), dtype=torch.float32)
    x = F.avg_pool3d(F.pad(x.flatten(0, 1)[:, None], (2, 2, 2, 2, 2, 2), mode="circular"), 5, 1)[:, 0]
    return (x.reshape(shape) - x.min()) / (x.max() - x.min()) + 0.5


def per_sample_changed(a, b, tol=1e-6):
    return ((a - b).abs().flatten(1).amax(1) > tol).tolist()


ALL_INTENSITY = dict(noise_std=(0.05, 0.1), rician_std=(0.05, 0.1), blur_sigma=(0.5, 1.0), sharpen=(0.5, 1.0),
                     brightness_mult=(0.8, 0.9), brightness=(0.1, 0.2), contrast=(0.5, 0.7), lowres=(0.5, 0.6),
                     gamma=(1.5, 2.0), gamma_inverted=(1.5, 2.0), bias_field=0.3, spike=(0.5, 1.0),
                     ghosting=(0.5, 1.0), ghosting_num=(2, 4), motion=(10.0, 3.0))  # fmt: skip
OPS = (
    "rotation",
    "scale",
    "translation",
    "elastic",
    "noise",
    "rician",
    "blur",
    "sharpen",
    "brightness_mult",
    "brightness",
    "contrast",
    "lowres",
    "gamma",
    "gamma_inverted",
    "bias_field",
    "spike",
    "ghosting",
    "motion",
)


def everything(p):
    return BatchAugment(rotation=20, scale=(0.8, 0.9), translation=2.0, elastic=2.0, flip_p=0.0, **ALL_INTENSITY,
                        **{f"p_{op}": p for op in OPS})  # fmt: skip


# -- probabilities ---------------------------------------------------------------------------------------------


def test_p0_leaves_batch_unchanged_and_p1_changes_every_sample():
    x = smooth((3, 2, 12, 12, 12))
    lab = (x[:, :1] > 1.0).long()
    out, lab_out = everything(0.0)(x.clone(), lab, generator=gen())
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert torch.equal(lab_out, lab)
    out1 = everything(1.0)(x.clone(), generator=gen())
    assert all(per_sample_changed(out1, x, 1e-2))


@pytest.mark.parametrize("op", [o for o in OPS if o not in ("rotation", "scale", "translation", "elastic")])
def test_each_intensity_op_alone_p1_changes_every_sample_p0_none(op):
    key = {"noise": "noise_std", "rician": "rician_std", "blur": "blur_sigma"}.get(op, op)
    x = smooth((2, 1, 12, 12, 12))
    for p, expect in ((1.0, True), (0.0, False)):
        extra = {"ghosting_num": (2, 4)} if op == "ghosting" else {}  # 12 voxels: planes k = +-4 at most
        aug = BatchAugment(**NO_SPATIAL, **extra, **{key: ALL_INTENSITY[key], f"p_{op}": p})
        out = aug(x.clone(), generator=gen(1))
        assert per_sample_changed(out, x, 1e-4) == [expect, expect], (op, p)


def test_application_frequency_matches_p():
    aug = BatchAugment(rotation=10, p_rotation=0.2, scale=(0.8, 1.2), p_scale=0.5, brightness=(1, 2),
                       p_brightness=0.3, lowres=(0.5, 0.9), p_lowres=0.25, lowres_p_channel=0.5)  # fmt: skip
    n = 4000
    params = aug.sample_params(n, gen(7), channels=2)
    for op, p in (("rotation", 0.2), ("scale", 0.5), ("brightness", 0.3), ("lowres", 0.25)):
        freq = params[f"apply_{op}"].float().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (op, freq, p)
    rotated = (params["angles"].abs().sum(1) > 0).float().mean().item()
    assert abs(rotated - 0.2) < 0.035
    per_channel = (params["lowres"] < 1).float().mean().item()  # 0.25 per sample x 0.5 per channel
    assert abs(per_channel - 0.125) < 0.025
    # the same through the call: brightness p = 0.3 on 400 tiny samples
    x = torch.zeros(400, 1, 2, 2, 2)
    out = BatchAugment(**NO_SPATIAL, brightness=(1, 2), p_brightness=0.3)(x, generator=gen(3))
    assert abs(np.mean(per_sample_changed(out, x)) - 0.3) < 0.1


def test_deterministic_for_a_seed_and_labels_only_spatial():
    x = smooth((2, 1, 12, 12, 12))
    lab = (x > 1.0).to(torch.uint8)
    aug = everything(0.7)
    a = aug(x.clone(), lab, generator=gen(5))
    b = aug(x.clone(), lab, generator=gen(5))
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[0], aug(x.clone(), lab, generator=gen(6))[0])
    assert a[1].dtype == torch.uint8 and set(a[1].unique().tolist()) <= {0, 1}
    # intensity only: the labels come back untouched, whatever happens to the image
    out, lab_out = BatchAugment(**NO_SPATIAL, **ALL_INTENSITY)(x.clone(), lab, generator=gen(5))
    assert torch.equal(lab_out, lab) and all(per_sample_changed(out, x, 1e-2))


# -- intensity operations ----------------------------------------------------------------------------------------


def test_blur_mm_matches_cpu_gaussian_blur_and_reduces_noise_variance():
    x = torch.randn(2, 1, 16, 16, 16, generator=gen(2))
    aug = BatchAugment(**NO_SPATIAL, blur_sigma=(1.0, 1.0), spacing=(2.0, 1.0, 0.5))
    out = aug(x.clone(), generator=gen())
    ref = gaussian_blur(x[0], (0.5, 1.0, 2.0))  # sigma 1 mm in voxels (D, H, W)
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-4)
    assert out.var() < 0.2 * x.var()
    weak, strong = (BatchAugment(**NO_SPATIAL, blur_sigma=(s, s))(x.clone(), generator=gen()) for s in (0.5, 2.0))
    assert strong.var() < weak.var() < x.var()


def test_sharpen_is_unsharp_mask():
    x = smooth((1, 1, 12, 12, 12)) + 0.1 * torch.randn(1, 1, 12, 12, 12, generator=gen(3))
    out = BatchAugment(**NO_SPATIAL, sharpen=(0.5, 0.5), sharpen_sigma=(1.0, 1.0))(x.clone(), generator=gen())
    torch.testing.assert_close(out[0], x[0] + 0.5 * (x[0] - gaussian_blur(x[0], (1.0, 1.0, 1.0))), atol=1e-5, rtol=0)
    assert out.var() > x.var()


def test_gamma_and_inverted_gamma_formulas_on_regions():
    x = torch.zeros(1, 1, 4, 4, 4)
    x[..., 1:, :, :] = 0.5
    x[..., 3:, :, :] = 2.0  # regions 0, 0.5, 2 -> normalised 0, 0.25, 1
    n = torch.tensor([0.0, 0.25, 0.25, 1.0])
    for key, expect in (("gamma", n**2), ("gamma_inverted", 1 - (1 - n) ** 2)):
        out = BatchAugment(**NO_SPATIAL, **{key: (2.0, 2.0)})(x.clone(), generator=gen())
        torch.testing.assert_close(out[0, 0, :, 0, 0], expect * 2.0, atol=1e-6, rtol=0)
    kept = BatchAugment(**NO_SPATIAL, gamma=(1.5, 1.5), gamma_retain_stats=True)(smooth(), generator=gen())
    torch.testing.assert_close(kept.mean(dim=(2, 3, 4)), smooth().mean(dim=(2, 3, 4)), atol=1e-5, rtol=0)
    torch.testing.assert_close(kept.std(dim=(2, 3, 4)), smooth().std(dim=(2, 3, 4)), atol=1e-5, rtol=0)


def test_multiplicative_brightness_contrast_and_split_factors():
    x = smooth((2, 3, 8, 8, 8))
    out = BatchAugment(**NO_SPATIAL, brightness_mult=(0.75, 1.25))(x.clone(), generator=gen())
    ratio = (out / x).flatten(2)
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)  # one factor per (sample, channel)
    assert ratio.min() >= 0.75 and ratio.max() <= 1.25 and ratio[..., 0].unique().numel() == 6
    con = BatchAugment(**NO_SPATIAL, contrast=(2.0, 2.0), contrast_preserve_range=True)(x.clone(), generator=gen())
    assert torch.all(con.amax(dim=(2, 3, 4)) <= x.amax(dim=(2, 3, 4)) + 1e-6)
    torch.testing.assert_close(con.std(dim=(2, 3, 4)) > x.std(dim=(2, 3, 4)), torch.ones(2, 3, dtype=torch.bool))
    f = BatchAugment(brightness_mult=(0.75, 1.25), split_factors=True).sample_params(4000, gen(), channels=1)
    below = (f["brightness_mult"] < 1).float().mean().item()
    assert abs(below - 0.5) < 0.04  # BGContrast: half in (0.75, 1), half in (1, 1.25)


def test_lowres_matches_interpolate_per_sample():
    x = smooth((3, 2, 12, 10, 8)) + 0.2 * torch.rand(3, 2, 12, 10, 8, generator=gen(1))
    aug = BatchAugment(**NO_SPATIAL, lowres=(0.4, 0.9))
    params = aug.sample_params(3, gen(4), channels=2, shape_dhw=(12, 10, 8))
    out = aug(x.clone(), generator=gen(4))
    for b in range(3):
        for c in range(2):
            f = params["lowres"][b, c].item()
            small = [round(n * f) for n in x.shape[2:]]
            low = F.interpolate(x[b : b + 1, c : c + 1], size=small, mode="nearest-exact")
            ref = F.interpolate(low, size=x.shape[2:], mode="trilinear", align_corners=False)
            torch.testing.assert_close(out[b, c], ref[0, 0], atol=1e-5, rtol=0)


def test_bias_field_matches_cpu_random_bias_field():
    x = smooth((2, 1, 8, 10, 12))
    aug = BatchAugment(**NO_SPATIAL, bias_field=0.4, bias_order=2)
    coeffs = aug.sample_params(2, gen(9), channels=1)["bias_coeffs"]
    out = aug(x.clone(), generator=gen(9))
    cpu = RandomBiasField(coefficients=0.4, order=2)
    for b in range(2):
        ref = cpu.apply_params(Volume(x[b].numpy(), np.eye(4)), coeffs[b].tolist(), "image").data
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-5, rtol=1e-5)


def test_gaussian_and_rician_noise_levels():
    zero = torch.zeros(2, 1, 16, 16, 16)
    g = BatchAugment(**NO_SPATIAL, noise_std=(0.2, 0.2))(zero.clone(), generator=gen())
    assert abs(g.std().item() - 0.2) < 0.01 and abs(g.mean().item()) < 0.01
    r = BatchAugment(**NO_SPATIAL, rician_std=(0.2, 0.2))(zero.clone(), generator=gen())
    assert r.min() >= 0 and abs(r.mean().item() - 0.2 * math.sqrt(math.pi / 2)) < 0.01  # Rayleigh mean


def test_spike_adds_one_periodic_pattern():
    x = smooth((2, 1, 16, 16, 16))
    out = BatchAugment(**NO_SPATIAL, spike=(0.5, 0.5))(x.clone(), generator=gen(2))
    for b in range(2):
        diff = out[b, 0] - x[b, 0]
        power = torch.fft.fftn(diff).abs() ** 2
        top2 = power.flatten().topk(2).values.sum()
        assert top2 > 0.99 * power.sum()  # a single cosine: a +-k pair of k-space bins
        k = torch.nonzero(power == power.max())[0]
        assert k.abs().sum() > 0  # not the DC term
        assert diff.abs().max() > 0.1 * x[b].mean()


def test_ghosting_attenuates_every_nth_k_space_plane():
    x = smooth((2, 1, 16, 16, 16))
    aug = BatchAugment(**NO_SPATIAL, ghosting=(0.6, 0.6), ghosting_num=(4, 4), ghosting_axes=(1,))
    out = aug(x.clone(), generator=gen())
    ratio = torch.fft.fftn(out[:, 0], dim=(-3, -2, -1)).abs() / torch.fft.fftn(x[:, 0], dim=(-3, -2, -1)).abs()
    ratio = ratio.mean(dim=(0, 1, 3))  # along H
    expect = torch.tensor([1.0 if k == 0 or (k if k <= 8 else k - 16) % 4 else 0.4 for k in range(16)])
    torch.testing.assert_close(ratio, expect, atol=1e-4, rtol=0)


def test_motion_zero_is_identity_and_motion_changes_image():
    x = smooth((2, 1, 12, 12, 12))
    still = BatchAugment(**NO_SPATIAL, motion=(0.0, 0.0))(x.clone(), generator=gen())
    torch.testing.assert_close(still, x, atol=1e-5, rtol=0)
    moved = BatchAugment(**NO_SPATIAL, motion=(15.0, 4.0), motion_transforms=2)(x.clone(), generator=gen(1))
    assert all(per_sample_changed(moved, x, 1e-2))
    assert torch.all(moved >= 0) and abs(moved.mean() / x.mean() - 1) < 0.1


# -- geometry: shared rotation convention, mm units, margins, out_size --------------------------------------------


def test_rotation_matrix_is_the_cpu_world_transform_one():
    ang_dhw = torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64)
    cpu = world_transform((0, 0, 0), np.degrees(ang_dhw.numpy()[::-1]), (1, 1, 1), (0, 0, 0), (0, 0, 0))
    np.testing.assert_allclose(rotation_matrices(ang_dhw).numpy(), cpu[:3, :3], atol=1e-12)


def test_rotation_and_translation_match_cpu_random_affine_on_a_phantom():
    sp = (2.0, 1.0, 1.5)  # (D, H, W) mm
    affine = axis_code_affine("RAS", sp[::-1])
    d, h, w = 14, 20, 16
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (d, h, w)), indexing="ij")
    img = np.sin(zz * sp[0] / 5) + np.cos(yy * sp[1] / 4) * np.sin(xx * sp[2] / 6 + 0.3)
    vol = Volume(img[None].astype(np.float32), affine)
    ang_dhw, shift_dhw = (12.0, -8.0, 20.0), (1.5, -2.0, 1.0)
    gpu = BatchAugment(rotation=[(a, a) for a in ang_dhw], translation=0.0, scale=(1, 1), flip_p=0.0, spacing=sp)
    params = gpu.sample_params(1, gen(), channels=1, shape_dhw=(d, h, w))
    params["shift_mm"] = torch.tensor([shift_dhw], dtype=torch.float64)
    theta = gpu.theta(params, (d, h, w), "cpu", torch.float64)
    grid = F.affine_grid(theta, (1, 1, d, h, w), align_corners=False)
    out = F.grid_sample(torch.from_numpy(img)[None, None].double(), grid, align_corners=False)[0, 0].numpy()
    new_affine = BatchAugment._affines(theta, (d, h, w), torch.from_numpy(np.array(affine))[None])[0].numpy()
    cpu = RandomAffine(keys="image", rotation=[(a, a) for a in ang_dhw[::-1]], scale=(1, 1),
                       translation=0.0, pad_value=0.0)  # fmt: skip
    ref = cpu.apply_params(vol, {"angles": list(ang_dhw[::-1]), "scales": [1, 1, 1],
                                 "translation": list(shift_dhw[::-1]), "shears": [0, 0, 0]}, "image")  # fmt: skip
    np.testing.assert_allclose(new_affine, ref.affine, atol=1e-9)
    inside = inside_source(vol, ref, margin=1.0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out[inside], ref.to_numpy()[0][inside], atol=1e-4)
    # and through the call: a fixed rotation gives the same image
    full = gpu(torch.from_numpy(img)[None, None], generator=gen())[0, 0].numpy()
    ref0 = cpu.apply_params(vol, {"angles": list(ang_dhw[::-1]), "scales": [1, 1, 1], "translation": [0, 0, 0],
                                  "shears": [0, 0, 0]}, "image")  # fmt: skip
    inside0 = inside_source(vol, ref0, margin=1.0)
    np.testing.assert_allclose(full[inside0], ref0.to_numpy()[0][inside0], atol=1e-4)


def test_translation_and_elastic_are_in_mm():
    sp = (2.0, 1.0, 0.5)
    v = world_volume((20, 20, 20), axis_code_affine("RAS", sp[::-1]))
    x = torch.from_numpy(v.data)[None].double()
    aff = torch.from_numpy(np.array(v.affine))[None]
    shifted, new_aff = BatchAugment(rotation=0, scale=(1, 1), flip_p=0.0, translation=(3.0, 3.0), spacing=sp)(
        x, generator=gen(), affines=aff)  # fmt: skip
    np.testing.assert_allclose(new_aff[0, :3, 3] - aff[0, :3, 3], [3.0, 3.0, 3.0], atol=1e-9)  # 3 mm on x, y, z
    mask = inside_source(v, Volume(shifted[0].numpy(), new_aff[0].numpy()), margin=0.5)
    assert world_error(Volume(shifted[0].numpy(), new_aff[0].numpy()), mask) < 1e-6
    out = BatchAugment(rotation=0, scale=(1, 1), flip_p=0.0, elastic=3.0, elastic_grid_mm=8.0, spacing=sp)(
        x, generator=gen(1))  # fmt: skip
    moved = (out[0] - x[0])[:, 4:-4, 4:-4, 4:-4].abs()  # world coordinate read minus own = displacement, mm
    assert moved.max() <= 3.0 + 1e-6 and moved.max() > 1.0
    margin = BatchAugment(rotation=0, scale=(1, 1), translation=1.0, elastic=3.0, spacing=sp).margin((8, 8, 8))
    assert margin == (2, 4, 8)  # (1 + 3) mm over (2, 1, 0.5) mm voxels


def test_margin_removes_padding_at_the_nnunet_ranges():
    patch, sp = (20, 20, 20), (1.0, 1.0, 1.0)
    aug = BatchAugment.nnunet(spacing=sp, patch_size=patch, p_rotation=1.0, p_scale=1.0, flip_p=0.5,
                              **{f"p_{op}": 0.0 for op in ("noise", "blur", "brightness_mult", "contrast", "lowres",
                                                          "gamma", "gamma_inverted")})  # fmt: skip
    m = aug.margin(patch)
    assert all(0 < k < 20 for k in m)
    zz, yy, xx = np.meshgrid(*(np.linspace(0, 3, 100) for _ in range(3)), indexing="ij")
    big = torch.from_numpy(2.0 + np.sin(zz) * np.cos(yy) + 0.5 * np.sin(xx)).float()  # smooth, nonzero, > 0.5
    ones = torch.ones_like(big)

    def padding_fraction(size, out_size):
        lo = [(100 - s) // 2 for s in size]
        crop = tuple(slice(a, a + s) for a, s in zip(lo, size))
        batch = torch.stack([torch.stack([big[crop], ones[crop]])] * 16)
        out = aug(batch, generator=gen(11), out_size=out_size)
        assert out.shape[2:] == patch
        return (out[:, 1] < 0.999).float().mean().item(), out

    with_margin, out = padding_fraction([p + 2 * k for p, k in zip(patch, m)], patch)
    without, _ = padding_fraction(patch, None)
    print(f"nnU-Net ranges (p=1), patch {patch}, margin {m}: padding {with_margin:.4f} with margin, "
          f"{without:.4f} without")  # fmt: skip
    assert with_margin < 0.02 and without > 0.1
    assert out[:, 0].min() > 0.5  # real voxels everywhere
    # the margin is not much larger than needed: the reach of 4000 random draws comes within 2 voxels of it
    params = aug.sample_params(4000, gen(12), channels=1, shape_dhw=patch)
    inp = [p + 2 * k for p, k in zip(patch, m)]
    theta = aug.theta(params, patch, "cpu", torch.float64, in_shape_dhw=inp)
    corners = torch.tensor([[x, y, z, 1.0] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64)
    corners[:, :3] *= 1 - 1 / 20  # output voxel centres (align_corners=False)
    reach = (theta @ corners.T).abs().amax(dim=(0, 2)).flip(0)  # normalised input units, (D, H, W)
    needed = torch.ceil(reach * torch.tensor(inp) / 2 - (torch.tensor(patch) - 1) / 2)  # voxels beyond the patch
    assert torch.all(needed <= torch.tensor(m)) and torch.all(needed >= torch.tensor(m) - 2), (needed, m)


def test_out_size_returns_the_centre_and_correct_affines():
    sp = (2.0, 1.0, 1.5)
    aug = BatchAugment(rotation=25, scale=(0.8, 1.2), translation=2.0, spacing=sp)
    patch = (10, 12, 12)
    m = aug.margin(patch)
    v = world_volume([p + 2 * k for p, k in zip(patch, m)], axis_code_affine("LPS", sp[::-1], (5, -3, 7)))
    x = torch.from_numpy(np.stack([v.data] * 3)).double()
    out, aff = aug(x, generator=gen(4), out_size=patch, affines=np.stack([v.affine] * 3))
    assert out.shape == (3, 3, *patch)
    for b in range(3):
        vb = Volume(out[b].numpy(), aff[b].numpy())
        assert inside_source(v, vb).all()  # the margin suffices: nothing sampled outside
        assert world_error(vb) < 1e-6
    plain = BatchAugment(**NO_SPATIAL)(x, generator=gen(), out_size=patch)  # no spatial op: the centre crop
    torch.testing.assert_close(plain, x[:, :, m[0] : m[0] + 10, m[1] : m[1] + 12, m[2] : m[2] + 12])


def test_nnunet_preset_parameters():
    iso = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=(128, 128, 128))
    assert iso.rotation == [(-30.0, 30.0)] * 3 and iso.p["rotation"] == 0.2 and iso.p["scale"] == 0.2
    assert iso.scale == pytest.approx((1 / 1.4, 1 / 0.7)) and iso.scale_isotropic and iso.elastic == 0
    assert iso.noise_std == (0.0, 0.1) and iso.p["noise"] == 0.1
    assert iso.blur_sigma == (0.5, 1.0) and iso.p["blur"] == 0.2 and iso.blur_p_channel == 0.5
    assert iso.brightness_mult == (0.75, 1.25) and iso.p["brightness_mult"] == 0.15
    assert iso.contrast == (0.75, 1.25) and iso.p["contrast"] == 0.15 and iso.contrast_preserve_range
    assert iso.lowres == (0.5, 1.0) and iso.p["lowres"] == 0.25 and iso.lowres_p_channel == 0.5
    assert iso.gamma == iso.gamma_inverted == (0.7, 1.5)
    assert iso.p["gamma_inverted"] == 0.1 and iso.p["gamma"] == 0.3 and iso.gamma_retain_stats
    assert iso.flip_axes == (0, 1, 2) and iso.flip_p == 0.5 and iso.split_factors
    aniso = BatchAugment.nnunet(spacing=(3.0, 0.8, 0.8), patch_size=(20, 256, 224))
    assert aniso.rotation == [(-180.0, 180.0), (0.0, 0.0), (0.0, 0.0)]  # in-plane only
    assert aniso.scale_axes == (1, 2) and aniso.lowres_axes == (1, 2)
    assert aniso.margin((20, 256, 224))[0] == 0  # nothing moves along D: no margin needed there
    params = aniso.sample_params(500, gen(), channels=1)
    assert torch.all(params["angles"][:, 1:] == 0) and torch.all(params["zooms"][:, 0] == 1)
    zoomed = params["zooms"][params["apply_scale"]]
    assert torch.all(zoomed[:, 1] == zoomed[:, 2])  # isotropic in-plane zoom
    assert BatchAugment.nnunet(spacing=(1, 1, 1), patch_size=(8, 8, 8), p_rotation=1.0).p["rotation"] == 1.0


def test_bad_arguments():
    with pytest.raises(ArgumentError, match="p_blur"):
        BatchAugment(blur_sigma=(1, 2), p_blur=1.5)
    with pytest.raises(ArgumentError, match="low > high"):
        BatchAugment(contrast=(1.2, 0.8))
    with pytest.raises(ArgumentError, match="lowres"):
        BatchAugment(lowres=(0.5, 2.0))
    with pytest.raises(ArgumentError, match="motion"):
        BatchAugment(motion=5.0)
    with pytest.raises(GeometryError, match="out_size"):
        BatchAugment()(torch.zeros(1, 1, 4, 4, 4), generator=gen(), out_size=(5, 4, 4))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = smooth((2, 2, 16, 16, 16))
    aug = everything(1.0)
    cpu = aug(x.clone(), generator=gen(3))
    gpu = aug(x.cuda(), generator=gen(3)).cpu()
    # noise fields come from a device generator (different streams on CUDA): compare the noise-free ops
    quiet = BatchAugment(rotation=20, scale=(0.8, 0.9), translation=2.0, elastic=2.0,
                         **{k: v for k, v in ALL_INTENSITY.items() if k not in ("noise_std", "rician_std")})  # fmt: skip
    torch.testing.assert_close(quiet(x.cuda(), generator=gen(3)).cpu(), quiet(x, generator=gen(3)), atol=1e-3,
                               rtol=1e-3)  # fmt: skip
    assert cpu.shape == gpu.shape


@pytest.mark.parametrize("out_size", [None, (12, 16, 14)])
def test_flip_only_samples_take_the_exact_crop_path(monkeypatch, out_size):
    """Samples drawn with flips only skip grid_sample (a flipped crop): the result equals resampling them."""
    from medstack.transforms.gpu import BatchAugment

    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 2, 16, 20, 18), generator=g) * 100
    lab = (torch.rand((6, 1, 16, 20, 18), generator=g) * 3).to(torch.uint8)
    aff = torch.eye(4, dtype=torch.float64).repeat(6, 1, 1)
    aug = BatchAugment.nnunet(spacing=(1.0, 1.0, 1.0), patch_size=(12, 16, 14))
    fast = aug(x, lab, generator=torch.Generator().manual_seed(3), affines=aff, out_size=out_size)
    plain = aug.plain_samples(aug.sample_params(6, torch.Generator().manual_seed(3), x.device, channels=2,
                                                shape_dhw=out_size or (16, 20, 18)), (16, 20, 18), out_size or (16, 20, 18))  # fmt: skip
    assert 0 < int(plain.sum()) < 6  # both paths exercised
    monkeypatch.setattr(BatchAugment, "plain_samples", staticmethod(lambda p, i, o: torch.zeros(6, dtype=torch.bool)))
    slow = aug(x, lab, generator=torch.Generator().manual_seed(3), affines=aff, out_size=out_size)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-3, rtol=1e-5)
    assert torch.equal(fast[1], slow[1]) and fast[1].dtype == torch.uint8
    torch.testing.assert_close(fast[2], slow[2])


def test_log_gamma_is_the_cpu_random_gamma_vocabulary():
    """BatchAugment(log_gamma=) draws gamma = exp(uniform(lo, hi)), RandomGamma's vocabulary; gamma= and
    log_gamma= together are refused."""
    import math

    from medstack.errors import ArgumentError
    from medstack.transforms.gpu import BatchAugment

    aug = BatchAugment(rotation=0, scale=(1, 1), flip_p=0.0, log_gamma=(-0.3, 0.3))
    params = aug.sample_params(4000, torch.Generator().manual_seed(0), "cpu", channels=1, shape_dhw=(4, 4, 4))
    logs = torch.log(params["gamma"]).flatten()
    assert -0.3 - 1e-9 <= float(logs.min()) and float(logs.max()) <= 0.3 + 1e-9
    assert abs(float(logs.mean())) < 0.02  # uniform in log space: symmetric about 0
    assert aug.gamma == (math.exp(-0.3), math.exp(0.3))
    with pytest.raises(ArgumentError):
        BatchAugment(gamma=(0.7, 1.5), log_gamma=0.3)
