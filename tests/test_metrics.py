"""Segmentation metrics against hand-computed tiny cases (sscild.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sscild.evaluation.agreement import bland_altman, icc
from sscild.evaluation.metrics import REGIONS, case_metrics, default_tolerance_mm, region_mask, summarize, volumes_ml
from sscild.evaluation.overlap import dice, empty_score, surface_dice

nan = float("nan")


def box(shape, *slices):
    m = np.zeros(shape, bool)
    m[tuple(slices)] = True
    return m


# ------------------------------------------------------------------------------------ Dice


def test_dice_hand_2d():
    # |P| = 2, |R| = 2, |P ∩ R| = 1 -> 2 * 1 / 4
    assert dice(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]])) == pytest.approx(0.5)


def test_dice_hand_3d():
    ref = box((6, 6, 6), slice(1, 3), slice(1, 3), slice(1, 3))  # 8 voxels
    pred = box((6, 6, 6), slice(1, 3), slice(1, 3), slice(1, 4))  # 12 voxels, all 8 of ref inside
    assert dice(pred, ref) == pytest.approx(2 * 8 / (12 + 8))


def test_dice_perfect_and_disjoint():
    ref = box((5, 5), slice(0, 2), slice(0, 2))
    assert dice(ref, ref) == 1.0
    assert dice(box((5, 5), slice(3, 5), slice(3, 5)), ref) == 0.0
    full = np.ones((4, 4, 3), bool)  # touching every border: cropping must not break it
    assert dice(full, full) == 1.0


@pytest.mark.parametrize(
    "policy, both_empty, ref_empty_pred_not",
    [("nan", nan, nan), ("nnunet", nan, 0.0), ("one", 1.0, 0.0)],
)
def test_dice_empty_policies(policy, both_empty, ref_empty_pred_not):
    empty = np.zeros((4, 4), bool)
    some = box((4, 4), slice(1, 2), slice(1, 3))
    np.testing.assert_equal(dice(empty, empty, empty=policy), both_empty)
    np.testing.assert_equal(dice(some, empty, empty=policy), ref_empty_pred_not)
    # empty prediction against a non-empty reference is a plain miss under every policy
    assert dice(empty, some, empty=policy) == 0.0


def test_empty_score_is_none_when_both_present():
    assert empty_score(True, True) is None
    with pytest.raises(ValueError, match="policy"):
        empty_score(True, False, "ignore")


def test_dice_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


# ---------------------------------------------------------------------------- surface Dice


def test_surface_dice_2d_anisotropic_voxel_count():
    # Reference: the 4 x 4 square x 3..6, y 3..6 in a 10 x 10 image; prediction: shifted by one
    # voxel along x. Spacing (2.0, 1.0) mm, so the shift is 2 mm. Boundary voxels (mask minus its
    # erosion) are the 12-voxel rings of each square.
    # Prediction ring -> nearest reference ring voxel:
    #   (4,3) (4,6) (5,3) (5,6) (6,3) (6,6): on the reference ring             -> 0 mm   (6)
    #   (4,4) (4,5): one step along y to (4,3) / (4,6)                        -> 1 mm   (2)
    #   (7,3..6): one step along x to (6,y)                                   -> 2 mm   (4)
    # The reference ring -> prediction ring is the mirror image: 6 at 0, 2 at 1, 4 at 2 mm.
    ref = box((10, 10), slice(3, 7), slice(3, 7))
    pred = np.roll(ref, 1, axis=0)
    sp = (2.0, 1.0)
    assert surface_dice(pred, ref, sp, 2.0, subvoxels=False) == pytest.approx(1.0)  # shift tolerated
    assert surface_dice(pred, ref, sp, 1.5, subvoxels=False) == pytest.approx(16 / 24)  # 2 mm ones fail
    assert surface_dice(pred, ref, sp, 0.5, subvoxels=False) == pytest.approx(12 / 24)
    # the same one-voxel shift is only 0.5 mm when x spacing is 0.5 mm
    assert surface_dice(pred, ref, (0.5, 1.0), 0.6, subvoxels=False) == pytest.approx(1.0)


def test_surface_dice_2d_anisotropic_subvoxel():
    # Surface elements live on the 2 x 2 cells between voxel centres; cell (i, j) spans voxels
    # i..i+1, j..j+1. The reference contour occupies the ring of cells i, j in 2..6 with i or j in
    # {2, 6}: straight cells carry a segment of length sy = 1 (vertical) or sx = 2 (horizontal),
    # the 4 corner cells a diagonal of length sqrt((sx/2)^2 + (sy/2)^2) = sqrt(1.25).
    # Length = 6 * 1 + 6 * 2 + 4 * sqrt(1.25). The prediction's ring is shifted one cell in x.
    # Prediction cells farther than 1.5 mm from the reference ring: (3,4) (straight, 1),
    # (7,3..5) (straight, 3 x 1) and the corners (7,2), (7,6) -> 4 + 2 * sqrt(1.25); the reference
    # side is the mirror image.
    ref = box((10, 10), slice(3, 7), slice(3, 7))
    pred = np.roll(ref, 1, axis=0)
    total = 18 + 4 * math.sqrt(1.25)
    wrong = 4 + 2 * math.sqrt(1.25)
    assert surface_dice(pred, ref, (2.0, 1.0), 2.0) == pytest.approx(1.0)
    assert surface_dice(pred, ref, (2.0, 1.0), 1.5) == pytest.approx((total - wrong) / total, rel=1e-5)


def test_surface_dice_3d_slice_shift_anisotropic():
    # Reference: 3 x 3 x 3 cube (voxels 2..4) in a 7^3 volume, spacing (1, 1, 3) mm; prediction:
    # shifted one slice in z (3 mm). Boundary voxels: 26 per cube (all but the centre).
    # Prediction -> reference: z = 3 layer: 8 on the reference boundary (0 mm), (3,3,3) is the
    # reference centre, 1 mm from (2,3,3); z = 4 layer: 8 boundary voxels on the reference top
    # face (0 mm); z = 5 layer: 9 voxels 3 mm above the top face. Mirror image the other way.
    ref = box((7, 7, 7), slice(2, 5), slice(2, 5), slice(2, 5))
    pred = np.roll(ref, 1, axis=2)
    sp = (1.0, 1.0, 3.0)
    assert surface_dice(pred, ref, sp, 3.0, subvoxels=False) == pytest.approx(1.0)
    assert surface_dice(pred, ref, sp, 2.9, subvoxels=False) == pytest.approx(34 / 52)
    assert surface_dice(pred, ref, sp, 0.5, subvoxels=False) == pytest.approx(32 / 52)
    # with isotropic 1 mm voxels the same shift is 1 mm and a 1 mm tolerance accepts it
    assert surface_dice(pred, ref, (1.0, 1.0, 1.0), 1.0, subvoxels=False) == pytest.approx(1.0)
    # area-weighted boundaries: same inclusion, a different (area-weighted) share when excluded
    assert surface_dice(pred, ref, sp, 3.0) == pytest.approx(1.0)
    assert 0.0 < surface_dice(pred, ref, sp, 2.9) < 1.0


@pytest.mark.parametrize("subvoxels", [False, True])
def test_surface_dice_crop_does_not_change_result(subvoxels):
    # Shapes touching the array border vs the same shapes inside a larger empty array.
    ref = box((6, 5, 4), slice(0, 4), slice(0, 5), slice(1, 4))
    pred = box((6, 5, 4), slice(1, 6), slice(0, 4), slice(0, 4))
    big_ref = np.zeros((30, 31, 20), bool)
    big_pred = np.zeros((30, 31, 20), bool)
    big_ref[10:16, 12:17, 5:9] = ref
    big_pred[10:16, 12:17, 5:9] = pred
    sp = (0.8, 0.7, 2.5)
    small = surface_dice(pred, ref, sp, 1.0, subvoxels=subvoxels)
    large = surface_dice(big_pred, big_ref, sp, 1.0, subvoxels=subvoxels)
    assert 0.0 < small < 1.0
    assert large == pytest.approx(small)


def test_surface_dice_empty_cases_and_checks():
    empty = np.zeros((6, 6), bool)
    some = box((6, 6), slice(1, 4), slice(1, 4))
    sp = (1.0, 1.0)
    assert math.isnan(surface_dice(empty, empty, sp, 1.0))
    assert math.isnan(surface_dice(some, empty, sp, 1.0))
    assert surface_dice(empty, some, sp, 1.0) == 0.0
    assert surface_dice(some, some, sp, 0.0) == 1.0
    assert surface_dice(some, empty, sp, 1.0, empty="nnunet") == 0.0
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(some, some, (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(some, some, sp, -1.0)


# ------------------------------------------------------------------------- volumes, one case


def _label_hand():
    # 10 x 10 x 10 voxels of 0.5 x 0.5 x 2 mm = 0.5 mm^3 = 0.0005 mL each
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[:4] = 1  # lung: 400 voxels
    lab[0] = 2  # EF: 100 voxels
    lab[1, :5] = 3  # GGO: 50 voxels -> normal 250, lesion 150
    return lab, (0.5, 0.5, 2.0)


def test_volumes_ml_hand():
    lab, sp = _label_hand()
    vol = volumes_ml(lab, sp)
    assert vol == pytest.approx({"normal": 0.125, "ef": 0.05, "ggo": 0.025, "lesion": 0.075, "lung": 0.2})
    assert set(vol) == set(REGIONS)


def test_region_mask_and_label_check():
    lab = np.array([[0, 1], [2, 3]])
    assert region_mask(lab, "lung").sum() == 3
    assert region_mask(lab, "ef").tolist() == [[False, False], [True, False]]
    with pytest.raises(ValueError, match="region"):
        region_mask(lab, "honeycombing")
    with pytest.raises(ValueError, match="outside 0..3"):
        volumes_ml(np.array([[0, 5]]), (1.0, 1.0))


def test_case_metrics_hand():
    ref, sp = _label_hand()
    pred = ref.copy()
    pred[1, :5] = 1  # the network misses all GGO ...
    pred[3, 8:10] = 3  # ... and finds 20 GGO voxels >= 1 mm away from it
    m = case_metrics(pred, ref, sp)
    assert m["dice_ef"] == 1.0
    assert m["dice_ggo"] == 0.0
    # lesion: ref 150 (EF 100 + GGO 50), pred 120 (EF 100 + GGO 20), overlap 100
    assert m["dice_lesion"] == pytest.approx(2 * 100 / 270)
    assert m["dice_lung"] == 1.0
    # normal: ref 250, pred 400 - 120 = 280; overlap = 250 - 20 (ref normal turned GGO)
    assert m["dice_normal"] == pytest.approx(2 * 230 / 530)
    assert m["vol_ref_ggo_ml"] == pytest.approx(0.025)
    assert m["vol_pred_ggo_ml"] == pytest.approx(0.010)
    # percent of each map's own lung (both 400 voxels here)
    assert m["pct_ref_lesion"] == pytest.approx(37.5)
    assert m["pct_pred_lesion"] == pytest.approx(30.0)
    assert m["pct_ref_normal"] == pytest.approx(62.5)
    assert "pct_ref_lung" not in m
    assert m["nsd_tolerance_mm"] == pytest.approx(0.75)  # 1.5 x max(0.5, 0.5)
    assert m["nsd_ef"] == 1.0 and m["nsd_ggo"] == 0.0  # GGO boundaries >= 1 mm > 0.75 mm apart
    assert all(math.isnan(m[f"fp_ml_{r}"]) for r in REGIONS)  # every reference region present
    expected = {f"{k}_{r}" for k in ("dice", "nsd", "fp_ml") for r in REGIONS}
    expected |= {f"vol_{w}_{r}_ml" for w in ("ref", "pred") for r in REGIONS}
    expected |= {f"pct_{w}_{r}" for w in ("ref", "pred") for r in ("normal", "ef", "ggo", "lesion")}
    assert set(m) == expected | {"nsd_tolerance_mm"}


def test_case_metrics_empty_reference_reports_false_positive_volume():
    ref = np.zeros((8, 8, 2), np.uint8)
    ref[1:7, 1:7] = 1
    ref[2:4, 2:4] = 3  # no EF in the reference
    pred = ref.copy()
    pred[5, 5, :] = 2  # 2 voxels of predicted EF
    m = case_metrics(pred, ref, (1.0, 1.0, 2.5), tolerance_mm=3.0)
    assert math.isnan(m["dice_ef"]) and math.isnan(m["nsd_ef"])
    assert m["fp_ml_ef"] == pytest.approx(2 * 2.5 / 1000)
    assert math.isnan(m["fp_ml_ggo"])
    assert m["dice_ggo"] == 1.0
    assert m["nsd_tolerance_mm"] == 3.0


def test_case_metrics_options_and_errors():
    lab = np.zeros((6, 6), np.uint8)
    lab[1:5, 1:5] = 1
    lab[2:4, 2:4] = 2
    m = case_metrics(lab, lab, (0.6, 0.8), regions=["ef", "lesion"], nsd_regions=["ef"])
    assert set(k for k in m if k.startswith("dice_")) == {"dice_ef", "dice_lesion"}
    assert m["nsd_ef"] == 1.0 and math.isnan(m["nsd_lesion"])
    assert m["nsd_tolerance_mm"] == pytest.approx(default_tolerance_mm((0.6, 0.8)))
    assert default_tolerance_mm((0.6, 0.8, 5.0)) == pytest.approx(1.2)  # in-plane only
    with pytest.raises(ValueError, match="case 'c7'.*spacing"):
        case_metrics(lab, lab, (1.0, 1.0, 1.0), case_id="c7")
    with pytest.raises(ValueError, match="case 'c7'.*shape"):
        case_metrics(lab, lab[:5], (1.0, 1.0), case_id="c7")
    with pytest.raises(ValueError, match="unknown region"):
        case_metrics(lab, lab, (1.0, 1.0), regions=["fibrosis"])


def test_case_metrics_large_volume_small_lesion():
    # a full-size HRCT grid with a small lesion: cropping keeps this cheap
    shape = (512, 512, 300)
    ref = np.zeros(shape, np.uint8)
    ref[200:300, 200:300, 100:200] = 1
    ref[250:256, 250:256, 150:154] = 3
    pred = ref.copy()
    pred[250:256, 250:253, 150:154] = 1  # half of the lesion missed
    m = case_metrics(pred, ref, (0.7, 0.7, 1.25), regions=["ggo", "lesion"])
    assert m["dice_ggo"] == pytest.approx(2 * 72 / (72 + 144))
    assert 0.0 < m["nsd_lesion"] < 1.0


# ------------------------------------------------------------------------------- summaries


def _table():
    return pd.DataFrame(
        {
            "case_id": list("abcde"),
            "fold": [0, 0, 1, 1, 1],
            "dice_ef": [0.2, 0.4, 0.6, 0.8, nan],
            "nsd_tolerance_mm": [1.0] * 5,
        }
    )


def test_summarize_hand():
    s = summarize(_table(), n_boot=1000)
    assert list(s["metric"]) == ["dice_ef"]  # case_id, fold, nsd_tolerance_mm are not metrics
    r = s.iloc[0]
    assert (r["n"], r["n_excluded"]) == (4, 1)
    assert r["mean"] == pytest.approx(0.5)
    assert r["sd"] == pytest.approx(math.sqrt((0.09 + 0.01 + 0.01 + 0.09) / 3))
    assert r["median"] == pytest.approx(0.5)
    # numpy linear percentiles of 0.2, 0.4, 0.6, 0.8: position 0.75 -> 0.35, position 2.25 -> 0.65
    assert (r["q1"], r["q3"]) == pytest.approx((0.35, 0.65))
    assert 0.2 <= r["ci_low"] < 0.5 < r["ci_high"] <= 0.8
    assert "BCa" in s.attrs["ci_method"]


def test_summarize_ci_is_the_seeded_bca_bootstrap():
    x = np.array([0.61, 0.72, 0.55, 0.83, 0.78, 0.69, 0.74, 0.49, 0.8, 0.66])
    s = summarize(pd.DataFrame({"dice_lesion": x}), n_boot=500, seed=3)
    ref = stats.bootstrap(
        (x,), np.mean, n_resamples=500, method="BCa", vectorized=True, random_state=np.random.default_rng(3)
    ).confidence_interval
    assert (s.loc[0, "ci_low"], s.loc[0, "ci_high"]) == pytest.approx((ref.low, ref.high))
    again = summarize(pd.DataFrame({"dice_lesion": x}), n_boot=500, seed=3)
    pd.testing.assert_frame_equal(s, again)


def test_summarize_by_fold_and_degenerate_groups():
    s = summarize(_table(), by="fold", n_boot=200)
    assert list(s["fold"]) == ["all", 0, 1]
    f0, f1 = s.iloc[1], s.iloc[2]
    assert (f0["n"], f0["n_excluded"], f0["mean"]) == (2, 0, pytest.approx(0.3))
    assert (f1["n"], f1["n_excluded"], f1["mean"]) == (2, 1, pytest.approx(0.7))
    one = summarize(pd.DataFrame({"v": [0.4, nan]}), n_boot=200).iloc[0]
    assert one["n"] == 1 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    same = summarize(pd.DataFrame({"v": [0.4, 0.4, 0.4]}), n_boot=200).iloc[0]
    assert (same["ci_low"], same["ci_high"]) == (0.4, 0.4)
    none = summarize(pd.DataFrame({"v": [nan, nan]}), n_boot=200).iloc[0]
    assert none["n"] == 0 and none["n_excluded"] == 2 and math.isnan(none["mean"])
    with pytest.raises(ValueError, match="not in the table"):
        summarize(_table(), columns=["dice_ggo"])
    with pytest.raises(ValueError, match="by="):
        summarize(_table(), by="centre")


# ------------------------------------------------------------------------------- agreement

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SF_TABLE2 = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)


def test_icc_shrout_fleiss_published():
    r = icc(*SF_TABLE2.T)
    # Shrout & Fleiss report ICC(2,1) = .29 for these data; the interval and F test are those
    # printed by R psych::ICC on the same table (ICC2 0.29, F = 11, df 5/15, p = 0.00013,
    # 95% CI 0.02..0.76).
    assert round(r["icc"], 2) == 0.29
    assert r["F"] == pytest.approx(11.03, abs=0.01) and (r["df1"], r["df2"]) == (5, 15)
    assert r["p"] == pytest.approx(0.00013, abs=0.00001)
    assert r["ci_low"] == pytest.approx(0.019, abs=0.001)
    assert r["ci_high"] == pytest.approx(0.76, abs=0.005)
    assert (r["n"], r["k"]) == (6, 4)
    assert "absolute agreement" in r["form"] and "ICC(A,1)" in r["form"]


def test_icc_two_judges_by_hand():
    # Judges 1 and 2. Row means 5.5 3.5 6 4 7.5 4, grand mean 61/12; column means 46/6, 15/6.
    # SS_rows = 2 * sum((row mean - grand)^2) = 281/12 -> MSR = 281/60
    # SS_cols = 6 * 2 * (31/12)^2 = 961/12            -> MSC = 961/12
    # SS_err = SS_total - SS_rows - SS_cols = 41/12    -> MSE = 41/60
    # ICC(A,1) = (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / 6) = 4 / (5730 / 180) = 24 / 191
    r = icc(SF_TABLE2[:, 0], SF_TABLE2[:, 1])
    assert r["icc"] == pytest.approx(24 / 191)
    assert r["ci_low"] < r["icc"] < r["ci_high"]


def test_icc_matches_independent_least_squares_anova():
    rng = np.random.default_rng(1)
    truth = rng.normal(100, 30, 25)
    a = truth + rng.normal(0, 8, 25)
    b = 1.1 * truth + 5 + rng.normal(0, 8, 25)
    y = np.concatenate([a, b])
    n, k = 25, 2
    # two-way additive model (case + rater effects) by least squares
    design = np.zeros((n * k, n + 1))
    design[np.arange(n * k), np.tile(np.arange(n), k)] = 1
    design[n:, n] = 1
    resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    mse = resid @ resid / ((n - 1) * (k - 1))
    msr = k * np.var((a + b) / 2, ddof=1)
    msc = n * np.var([a.mean(), b.mean()], ddof=1)
    expected = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    assert icc(a, b)["icc"] == pytest.approx(expected)


def test_icc_edge_cases():
    perfect = icc([1, 2, 3], [1, 2, 3])
    assert (perfect["icc"], perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0, 1.0)
    # a constant offset of 1 is disagreement: MSE = 0, MSR = 2 var(a) = 35/6, MSC = 4 * 0.5 = 2
    # -> ICC = (35/6) / (35/6 + 2 * 2 / 4) = 35/41, with a finite interval
    offset = icc([1, 2, 3, 5], [2, 3, 4, 6])
    assert offset["icc"] == pytest.approx(35 / 41)
    assert offset["ci_low"] < offset["icc"] < offset["ci_high"] < 1
    r = icc([1, 2, nan, 4], [1.5, 2.0, 3.0, 3.5])
    assert r["n"] == 3
    assert math.isnan(icc([1.0], [2.0])["icc"])
    with pytest.raises(ValueError, match="one value per case"):
        icc([1, 2, 3], [1, 2])


def test_bland_altman_hand():
    # differences 1, 1, -2: bias 0, sd sqrt((1 + 1 + 4) / 2) = sqrt(3)
    ba = bland_altman([2, 4, 6], [1, 3, 8])
    assert ba["bias"] == pytest.approx(0.0)
    assert ba["sd"] == pytest.approx(math.sqrt(3))
    assert (ba["loa_low"], ba["loa_high"]) == pytest.approx((-1.96 * math.sqrt(3), 1.96 * math.sqrt(3)))
    assert ba["n"] == 3
    # percent of the pair mean: 1/1.5, 1/3.5, -2/7 -> 66.67, 28.57, -28.57 %
    pct = bland_altman([2, 4, 6], [1, 3, 8], percent=True)
    assert pct["bias"] == pytest.approx(100 * (1 / 1.5 + 1 / 3.5 - 2 / 7) / 3)
    assert pct["unit"] == "%"
    assert bland_altman([1, nan, 3], [1, 2, 2])["n"] == 2


def test_bland_altman_limits_have_the_approximate_intervals_of_bland_altman_1986():
    pred = np.array([10.0, 12.0, 9.0, 15.0, 11.0, 14.0])
    ref = np.array([9.0, 12.5, 8.0, 13.0, 11.5, 12.0])
    ba = bland_altman(pred, ref)
    d = pred - ref
    n, sd = len(d), d.std(ddof=1)
    t = 2.570581835636314                    # t(0.975, 5)
    half = t * np.sqrt(3 * sd ** 2 / n)
    assert ba["loa_low_ci_low"] == pytest.approx(d.mean() - 1.96 * sd - half)
    assert ba["loa_high_ci_high"] == pytest.approx(d.mean() + 1.96 * sd + half)
    assert ba["bias_ci_high"] == pytest.approx(d.mean() + t * sd / np.sqrt(n))


def test_confusion_counts_hand_computed_and_checked():
    from sscild.evaluation.metrics import confusion_counts

    ref = np.array([[0, 1, 1, 2], [2, 2, 3, 3]])
    pred = np.array([[0, 1, 2, 2], [3, 2, 3, 1]])
    c = confusion_counts(pred, ref)
    expected = np.zeros((4, 4), int)
    for r, p in zip(ref.ravel(), pred.ravel()):
        expected[r, p] += 1
    assert c.tolist() == expected.tolist()
    assert c[2, 3] == 1 and c[3, 1] == 1 and c.sum() == ref.size
    with pytest.raises(ValueError, match="outside"):
        confusion_counts(np.array([[0, 5]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_surface_dice_scored_in_threads_prints_no_monai_deprecation():
    """Cases are scored in threads (analysis.segmentation); MONAI's internal deprecation warning of
    get_mask_edges must not reach a chapter's output from any of them."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import numpy as np\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from sscild.evaluation.overlap import surface_dice\n"
        "ref = np.zeros((96, 96, 24), bool); ref[20:70, 25:75, 4:20] = True\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    out = list(pool.map(lambda k: surface_dice(np.roll(ref, k % 3, axis=0), ref, (1.0, 1.0, 1.0), 1.0), range(16)))\n"
        "print(len(out))\n")
    lib = Path(__file__).resolve().parents[1] / "lib"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(lib)})
    assert proc.returncode == 0 and proc.stdout.strip() == "16", proc.stderr
    assert "always_return_as_numpy" not in proc.stderr, proc.stderr
