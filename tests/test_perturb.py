"""Controlled changes of a CT (sscild.analysis.perturb) and the robustness check's family of them."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.analysis import perturb
from sscild.analysis.robustness import apply_change, family


def chest(seed=0):
    """A box of soft tissue holding two lungs of -860 HU with a few vessels, air around it."""
    rng = np.random.default_rng(seed)
    hu = np.full((64, 56, 24), -1000.0, np.float32)
    hu[4:60, 6:50, :] = 40.0
    lung = np.zeros(hu.shape, bool)
    lung[8:29, 10:46, 2:22] = True
    lung[35:56, 10:46, 2:22] = True
    hu[lung] = -860.0 + rng.normal(0, 20, int(lung.sum()))
    hu[18:20, 20:40, 2:22] = 40.0  # a vessel inside the right lung
    return hu, lung


def test_shift_moves_the_parenchyma_only():
    hu, lung = chest()
    before = hu.copy()
    out = perturb.shift_lung_hu(hu, lung, -70)
    assert np.array_equal(hu, before)  # input untouched
    par = lung & (hu < -500)
    np.testing.assert_allclose(out[par], np.maximum(hu[par] - 70, -1024), atol=1e-3)
    assert np.array_equal(out[~lung], hu[~lung])           # outside the lung: unchanged
    assert np.array_equal(out[18:20, 20:40, 5], hu[18:20, 20:40, 5])   # the vessel: unchanged
    assert out.min() >= -1024
    up = perturb.shift_lung_hu(hu, lung, 40)
    assert float(np.median(up[par]) - np.median(hu[par])) == pytest.approx(40, abs=0.5)


@pytest.mark.parametrize("kind", perturb.EMPHYSEMA_KINDS)
def test_emphysema_darkens_about_the_asked_share_inside_the_lung_only(kind):
    hu, lung = chest()
    out = perturb.add_emphysema(hu, lung, (1.0, 1.0, 2.0), kind=kind, fraction=0.2, seed=1)
    assert np.array_equal(out[~lung & (hu < -900)], hu[~lung & (hu < -900)])  # outside air stays
    assert np.abs(out[~lung & (hu > 0)] - hu[~lung & (hu > 0)]).max() == 0     # tissue outside the lung stays
    low = float((out[lung] < -950).mean())
    assert 0.08 <= low <= 0.45, low
    again = perturb.add_emphysema(hu, lung, (1.0, 1.0, 2.0), kind=kind, fraction=0.2, seed=1)
    assert np.array_equal(out, again)


def test_emphysema_arguments_are_checked():
    hu, lung = chest()
    with pytest.raises(ValueError, match="kind must be one of"):
        perturb.add_emphysema(hu, lung, (1, 1, 2), kind="bubbly", fraction=0.2)
    with pytest.raises(ValueError, match="fraction"):
        perturb.add_emphysema(hu, lung, (1, 1, 2), kind="panlobular", fraction=0.0)
    with pytest.raises(ValueError, match="lung mask shape"):
        perturb.shift_lung_hu(hu, lung[:10], -10)


def test_resolution_kernel_and_slices_keep_the_grid():
    hu, lung = chest()
    for out in (perturb.degrade_inplane(hu, (0.7, 0.7, 2.0), 2.5), perturb.sharp_kernel(hu, (0.7, 0.7, 2.0)),
                perturb.thicker_slices(hu, 2)):
        assert out.shape == hu.shape and out.dtype == np.float32
    blurred = perturb.degrade_inplane(hu, (0.7, 0.7, 2.0), 4.0)
    assert blurred[18:20, 20:40, 5].mean() < hu[18:20, 20:40, 5].mean() - 100  # the thin vessel is smeared out
    assert np.array_equal(perturb.degrade_inplane(hu, (2.0, 2.0, 2.0), 1.5), hu)  # no finer than the scan: a copy
    noisy = perturb.sharp_kernel(hu, (0.7, 0.7, 2.0), noise_hu=60, edge=0.0)
    assert 40 < float(np.std(noisy[lung] - hu[lung])) < 80
    thick = perturb.thicker_slices(hu, 3)
    assert np.allclose(thick[30, 30, 10], hu[30, 30, 9:12].mean(), atol=1e-3)
    with pytest.raises(ValueError):
        perturb.thicker_slices(hu, 0)


def test_failures_the_command_must_catch():
    hu, lung = chest()
    filled = perturb.fill_lungs(hu, lung)
    assert filled[lung].mean() == pytest.approx(40, abs=2)
    rev = perturb.reverse_slices(hu)
    assert np.array_equal(rev[:, :, 0], hu[:, :, -1])


def test_the_family_covers_the_issue_and_depends_on_the_scan():
    thin = {c.name for c in family((0.7, 0.7, 1.0))}
    thick = {c.name for c in family((0.7, 0.7, 5.0))}
    coarse = {c.name for c in family((2.0, 2.0, 5.0))}
    for name in ("unchanged", "lung -100 HU", "lung -70 HU", "lung +40 HU", "lung +60 HU", "pixels 1.5 mm",
                 "pixels 4 mm", "panlobular emphysema 20 %", "bullae 8 %", "sharp kernel, noise 80 HU"):
        assert name in thin
    assert "slices x4 (4 mm)" in thin and not any(n.startswith("slices x4") for n in thick)
    assert "pixels 1.5 mm" not in coarse and "pixels 4 mm" in coarse  # only coarser than the scan itself
    hu, lung = chest()
    for change in family((1.0, 1.0, 2.0)):
        out = apply_change(hu, lung, (1.0, 1.0, 2.0), change)
        assert out.shape == hu.shape
