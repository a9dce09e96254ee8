"""Batched augmentation: each transform on tiny hand-made cases."""

import numpy as np
import pytest
import torch

from sscild.model.augment import BatchAugment

OFF = dict(flip_prob=(0.0, 0.0), affine_prob=0.0, shift_prob=0.0, scale_prob=0.0, noise_prob=0.0)


def _one_voxel(b=1, h=4, w=5, at=(0, 1)):
    img = torch.zeros(b, 1, h, w)
    img[:, 0, at[0], at[1]] = 1.0
    return img, img.long() * 2


def test_flip_x_moves_a_known_voxel_to_a_known_place():
    img, lab = _one_voxel()
    out, olab = BatchAugment(**{**OFF, "flip_prob": (1.0, 0.0)})(img, lab, seed=0)
    assert out[0, 0, 3, 1] == 1.0 and out.sum() == 1.0
    assert olab[0, 0, 3, 1] == 2 and olab.dtype == torch.int64


def test_flip_y_moves_a_known_voxel_to_a_known_place():
    img, lab = _one_voxel()
    out, olab = BatchAugment(**{**OFF, "flip_prob": (0.0, 1.0)})(img, lab, seed=0)
    assert out[0, 0, 0, 3] == 1.0 and olab[0, 0, 0, 3] == 2


def test_rot90_rotates_image_and_label_together():
    img, lab = _one_voxel(b=64, h=4, w=4, at=(0, 1))
    aug = BatchAugment(**OFF, rot90=True)
    out, olab = aug(img, lab, seed=3)
    k = aug.draw(np.random.default_rng(3), 64).rot90
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        expect = torch.rot90(img[i, 0], int(k[i]), (0, 1))
        assert torch.equal(out[i, 0], expect)
        assert torch.equal(olab[i, 0], expect.long() * 2)
    with pytest.raises(ValueError, match="square"):
        aug(torch.zeros(64, 1, 4, 5), torch.zeros(64, 1, 4, 5, dtype=torch.long), seed=3)


def test_affine_keeps_labels_integer_and_paired_with_the_image():
    h = w = 32
    img = torch.zeros(16, 1, h, w)
    img[:, :, 6:14, 18:26] = 1.0
    lab = (img > 0).long() * 3
    aug = BatchAugment(**{**OFF, "affine_prob": 1.0, "rotate_deg": 15.0, "zoom": 0.15})
    out, olab = aug(img, lab, seed=11)
    assert olab.dtype == torch.int64
    assert set(torch.unique(olab).tolist()) <= {0, 3}
    assert not torch.equal(out, img)          # something moved
    for i in range(16):                       # the label sits where the image's square went
        m = olab[i, 0] == 3
        assert m.sum() > 30
        inside = out[i, 0][m].mean()
        outside = out[i, 0][~m].mean()
        assert inside > 0.8 and outside < 0.05


def test_intensity_transforms_touch_the_image_only():
    img = torch.linspace(-1, 1, 2 * 8 * 8).view(2, 1, 8, 8)
    lab = (img > 0).long()
    aug = BatchAugment(**{**OFF, "shift_prob": 1.0, "scale_prob": 1.0, "gamma_prob": 1.0, "noise_prob": 1.0,
                          "blur_prob": 1.0, "lowres_prob": 1.0})
    out, olab = aug(img, lab, seed=5)
    assert torch.equal(olab, lab)
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, img)


def test_shift_and_scale_are_exact():
    img = torch.full((1, 1, 3, 3), 0.5)
    aug = BatchAugment(**{**OFF, "shift_prob": 1.0, "scale_prob": 1.0, "intensity": 0.1})
    d = aug.draw(np.random.default_rng(0), 1)
    out, _ = aug.apply(img, img.long(), d)
    assert torch.allclose(out, torch.full_like(img, 0.5 * d.scale[0] + d.shift[0]))


def test_gamma_keeps_the_patch_range():
    img = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    out, _ = BatchAugment(**{**OFF, "gamma_prob": 1.0})(img, img.long(), seed=1)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)


def test_blur_keeps_a_constant_image_and_spreads_a_point():
    const = torch.full((1, 1, 9, 9), 0.3)
    out, _ = BatchAugment(**{**OFF, "blur_prob": 1.0})(const, const.long(), seed=0)
    assert torch.allclose(out, const, atol=1e-6)
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    out, _ = BatchAugment(**{**OFF, "blur_prob": 1.0})(point, point.long(), seed=0)
    assert out[0, 0, 4, 4] < 1.0 and out[0, 0, 4, 5] > 0 and out.sum() == pytest.approx(1.0, abs=1e-5)


def test_same_seed_same_batch_other_seed_other_batch():
    img = torch.rand(8, 1, 16, 16)
    lab = (img > 0.5).long()
    aug = BatchAugment(gamma_prob=0.3, blur_prob=0.3, lowres_prob=0.3)
    a = aug(img, lab, seed=7)
    b = aug(img, lab, seed=7)
    c = aug(img, lab, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"flip_prob": (0.5,)}, "flip_prob"),
    ({"affine_prob": 1.5}, "affine_prob"),
    ({"zoom": 1.0}, "zoom"),
    ({"gamma_range": (1.5, 0.7)}, "gamma_range"),
    ({"noise_std": -1}, "noise_std"),
    ({"lowres_range": (0.5, 2.0)}, "lowres_range"),
])
def test_bad_settings_are_refused_up_front(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchAugment(**kwargs)


def _hu_ramp():
    """Every HU from -1024 to +600 in one row, normalised like the cpu profile (-1024..600 -> -1..1)."""
    hu = torch.arange(-1024.0, 601.0)
    return hu, ((hu + 1024.0) / 812.0 - 1.0).view(1, 1, 1, -1)


def test_lung_density_darkens_the_parenchyma_band_only_and_keeps_the_order():
    hu, img = _hu_ramp()
    aug = BatchAugment(**OFF, density_prob=1.0, density_hu=(-110.0, -110.0))
    out, _ = aug(img, torch.zeros_like(img).long(), seed=0)
    back = (out.view(-1) + 1.0) * 812.0 - 1024.0
    at = lambda v: float(back[int(v + 1024)])  # noqa: E731
    assert at(-1024) == pytest.approx(-1024, abs=1e-3) and at(-1000) == pytest.approx(-1000, abs=1e-3)
    assert at(-880) == pytest.approx(-990, abs=0.1)          # a -880 HU lung becomes about -990 HU
    for v in (-700, -600, -300, 0, 40, 600):                  # ground glass, vessels, tissue, bone: untouched
        assert at(v) == pytest.approx(v, abs=1e-3)
    assert bool((back.diff() >= -1e-3).all())                 # monotonic: no two intensities swap
    with pytest.raises(ValueError, match="density_hu"):
        BatchAugment(density_hu=(-200.0, 0.0))


def test_lung_density_can_spare_the_lesions():
    hu, img = _hu_ramp()
    img = img.expand(1, 1, 40, -1).clone()
    lab = torch.zeros_like(img).long()
    lab[:, :, :20] = 3                                        # upper half GGO, lower half normal
    aug = BatchAugment(**OFF, density_prob=1.0, density_hu=(-100.0, -100.0), density_spare_lesions=True)
    out, olab = aug(img, lab, seed=0)
    i880 = int(-880 + 1024)
    assert torch.equal(olab, lab)
    assert float(out[0, 0, 2, i880] - img[0, 0, 2, i880]) == pytest.approx(0.0, abs=1e-4)      # inside the lesion
    assert float((out[0, 0, 38, i880] - img[0, 0, 38, i880]) * 812) == pytest.approx(-100, abs=0.5)  # far from it


def test_sharp_kernel_adds_edges_and_fine_noise():
    img = torch.zeros(2, 1, 32, 32)
    img[:, :, :, 16:] = 0.5
    aug = BatchAugment(**OFF, kernel_prob=1.0, kernel_noise=(0.05, 0.05))
    out, _ = aug(img, torch.zeros_like(img).long(), seed=0)
    flat = out[:, :, :, 2:10] - img[:, :, :, 2:10]
    assert 0.03 < float(flat.std()) < 0.07                   # the noise, away from the edge
    assert float(out[:, :, :, 16].mean()) > 0.5 + 0.02       # overshoot on the bright side of the edge


def test_new_transforms_off_draw_exactly_as_before():
    """Profiles without the density and kernel transforms get the same batches as before they existed."""
    img = torch.rand(4, 1, 16, 16)
    lab = (img > 0.5).long()
    a, la = BatchAugment()(img, lab, seed=7)
    b, lb = BatchAugment(density_prob=0.0, kernel_prob=0.0, density_hu=(-50.0, 0.0))(img, lab, seed=7)
    assert torch.equal(a, b) and torch.equal(la, lb)
