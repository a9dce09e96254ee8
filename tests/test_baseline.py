"""HU density-mask baseline on synthetic volumes with known attenuation (sscild.evaluation.baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.evaluation.baseline import HAA_RANGE_HU, REFERENCES, density_mask


def phantom():
    """A 12 x 8 x 3 'chest': lung in x 2..9, y 1..6; one HU value per lung column x.

    Column HU (inside the lung): 2: -850 aerated, 3: -950 cyst, 4: -600 (band edge, in),
    5: -601 (just out), 6: -500 GGO-like, 7: -300 denser, 8: -250 (band edge, in),
    9: -249 (just out). Outside the lung: -1000 air, except a -450 HU 'chest wall' strip at x = 0.
    """
    hu = np.full((12, 8, 3), -1000.0, dtype=np.float32)
    hu[0] = -450.0
    lung = np.zeros(hu.shape, bool)
    lung[2:10, 1:7] = True
    for x, v in zip(range(2, 10), [-850, -950, -600, -601, -500, -300, -250, -249]):
        hu[x, 1:7] = v
    return hu, lung


def expected(column_labels):
    out = np.zeros((12, 8, 3), np.uint8)
    for x, lab in zip(range(2, 10), column_labels):
        out[x, 1:7] = lab
    return out


def test_density_mask_exact_default():
    hu, lung = phantom()
    got = density_mask(hu, lung)
    # band [-600, -250] inclusive -> 3 (GGO, no split); everything else in the lung -> 1;
    # the in-band chest wall outside the lung stays 0
    np.testing.assert_array_equal(got, expected([1, 1, 3, 1, 3, 3, 3, 1]))
    assert got.dtype == np.uint8


def test_density_mask_ef_split():
    hu, lung = phantom()
    got = density_mask(hu, lung, ef_cut=-400)
    # above -400 -> EF (2): -300, -250; at or below -> GGO (3): -600, -500
    np.testing.assert_array_equal(got, expected([1, 1, 3, 1, 3, 2, 2, 1]))
    got = density_mask(hu, lung, ef_cut=-500)  # -500 itself is 'at or below' -> GGO
    np.testing.assert_array_equal(got, expected([1, 1, 3, 1, 3, 2, 2, 1]))


def test_density_mask_custom_band_and_label_map_as_lung():
    hu, lung = phantom()
    label = lung.astype(np.uint8) * 2  # any non-zero label counts as lung
    got = density_mask(hu, label, low=-960, high=-900)
    np.testing.assert_array_equal(got, expected([1, 3, 1, 1, 1, 1, 1, 1]))


def test_density_mask_2d_and_empty_lung():
    hu, lung = phantom()
    np.testing.assert_array_equal(density_mask(hu[:, :, 0], lung[:, :, 0]), expected([1, 1, 3, 1, 3, 3, 3, 1])[:, :, 0])
    assert not density_mask(hu, np.zeros_like(lung)).any()


def test_density_mask_smoothing_stays_inside_lung():
    # Aerated lung (-850 HU) against a +40 HU wall just outside it, one isolated -500 HU speckle
    # voxel, and a 9 x 9 x 9 block of -450 HU. Smoothing with sigma 1 mm (1 voxel) within the
    # lung: the wall never enters the average (a plain Gaussian would pull the border voxels
    # into the band), the speckle is diluted to about -850 + 350 * 0.06, and the block's
    # interior keeps -450.
    shape = (30, 30, 30)
    hu = np.full(shape, -850.0, np.float32)
    lung = np.zeros(shape, bool)
    lung[3:27, 3:27, 3:27] = True
    hu[~lung] = 40.0
    hu[6, 6, 6] = -500.0
    hu[15:24, 15:24, 15:24] = -450.0
    got = density_mask(hu, lung, smooth_mm=1.0, spacing=(1.0, 1.0, 1.0))
    assert got[6, 6, 6] == 1
    assert (got[lung & (hu == -850.0)] == 1).all()  # border and speckle neighbourhood: normal
    assert (got[17:22, 17:22, 17:22] == 3).all()  # block interior: lesion
    assert (got[~lung] == 0).all()
    # without smoothing the speckle voxel is in the band
    assert density_mask(hu, lung)[6, 6, 6] == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"low": -250, "high": -600}, "low < high"),
        ({"ef_cut": -700}, "strictly inside"),
        ({"smooth_mm": 1.0}, "spacing"),
        ({"smooth_mm": 1.0, "spacing": (1.0, 1.0)}, "spacing"),
        ({"smooth_mm": -1.0}, "sigma"),
    ],
)
def test_density_mask_argument_checks(kwargs, match):
    hu, lung = phantom()
    with pytest.raises(ValueError, match=match):
        density_mask(hu, lung, **kwargs)


def test_density_mask_input_checks():
    hu, lung = phantom()
    with pytest.raises(ValueError, match="same grid|share one grid"):
        density_mask(hu, lung[:, :, :2])
    normalised = (hu + 1000) / 1600  # a 0..1 image, not HU
    with pytest.raises(ValueError, match="Hounsfield"):
        density_mask(normalised, lung)


def test_constants():
    assert HAA_RANGE_HU == (-600.0, -250.0)
    assert {"lederer2009", "podolanczuk2016"} <= set(REFERENCES)
    assert all("MESA" in v for v in REFERENCES.values())


# --- the EF/GGO split fitted on training patients ------------------------------------------------

def _case(seed, ef_range=(-450, -250), ggo_range=(-600, -430), normal_range=(-950, -300)):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, (20, 18, 6)).astype(np.uint8)
    hu = np.where(lab == 2, rng.integers(*ef_range, lab.shape),
                  np.where(lab == 3, rng.integers(*ggo_range, lab.shape), rng.integers(*normal_range, lab.shape)))
    return hu.astype(np.int16), lab


def test_split_dice_from_histograms_equals_density_mask():
    from sscild.evaluation.baseline import band_histograms, split_dice
    from sscild.evaluation.overlap import dice

    hu, lab = _case(0)
    h = band_histograms(hu, lab)
    for cut in (-590.5, -480.5, -431.5, -300.5, -250.5):
        m = density_mask(hu, lab > 0, ef_cut=cut)
        d_ef, d_ggo = split_dice(h, cut)
        assert d_ef == pytest.approx(float(dice(m == 2, lab == 2)), abs=1e-6)
        assert d_ggo == pytest.approx(float(dice(m == 3, lab == 3)), abs=1e-6)
    with pytest.raises(ValueError, match="half-integer"):
        split_dice(h, -480.0)


def test_split_dice_empty_reference_is_nan():
    from sscild.evaluation.baseline import band_histograms, split_dice

    hu, lab = _case(1)
    lab[lab == 2] = 1
    d_ef, d_ggo = split_dice(band_histograms(hu, lab), -400.5)
    assert np.isnan(d_ef) and np.isfinite(d_ggo)


def test_fit_ef_cut_finds_the_separating_cut():
    from sscild.evaluation.baseline import band_histograms, fit_ef_cut, split_dice

    # EF at -400..-250, GGO at -600..-410, normal lung below the band: a cut in [-410, -400) separates them
    train = [band_histograms(*_case(s, ef_range=(-400, -250), ggo_range=(-600, -410), normal_range=(-950, -610)))
             for s in range(3)]
    cut = fit_ef_cut(train)
    assert -411 < cut < -400
    assert all(split_dice(h, cut) == (1.0, 1.0) for h in train)


def test_each_fold_cut_is_fitted_on_its_training_cases_only():
    """evaluate's split: a held-out case's own values never move the cut it is scored with."""
    from sscild.evaluation.baseline import band_histograms, fit_ef_cut
    from sscild.analysis.segmentation import _baseline_split

    cases = {f"c{i}": _case(i) for i in range(4)}
    splits = [{"train": ["c2", "c3"], "val": ["c0", "c1"]}, {"train": ["c0", "c1"], "val": ["c2", "c3"]}]

    def rows(hists):
        out = [{"case_id": c, "fold": 0 if c in ("c0", "c1") else 1, "_band_hist": hists[c]} for c in hists]
        _baseline_split(out, splits)
        return {r["case_id"]: r for r in out}

    hists = {c: band_histograms(*a) for c, a in cases.items()}
    r1 = rows(dict(hists))
    assert r1["c0"]["baseline_ef_cut_hu"] == fit_ef_cut([hists["c2"], hists["c3"]])
    assert r1["c2"]["baseline_ef_cut_hu"] == fit_ef_cut([hists["c0"], hists["c1"]])
    # replace held-out c0 by a case with a very different EF/GGO boundary: fold 0's cut stays,
    # fold 1's cut (c0 is one of its training cases) may move
    hists2 = dict(hists, c0=band_histograms(*_case(7, ef_range=(-300, -250), ggo_range=(-600, -320))))
    r2 = rows(hists2)
    assert r2["c0"]["baseline_ef_cut_hu"] == r1["c0"]["baseline_ef_cut_hu"]
    assert r2["c2"]["baseline_ef_cut_hu"] == fit_ef_cut([hists2["c0"], hists2["c1"]])
    assert "_band_hist" not in r2["c0"]
