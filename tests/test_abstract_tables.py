"""The Abstract's claims ledger and methods table: computed verdicts, detectable differences, and honesty about
what the paper does not state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sscild.book.chapters.abstract import claims_ledger, methods_table
from sscild.evaluation.stats import detectable_rho
from sscild.paper import PAPER
from sscild.profiles import get_profile


def _seg(lesion=(0.74, 0.71, 0.80), ef=(0.60, 0.55, 0.64), ggo=(0.76, 0.74, 0.79)):
    def m(v):
        return {"mean": v[0], "ci_low": v[1], "ci_high": v[2], "n": 40}

    return {"n_cases": 40, "metrics": {"dice_lesion": m(lesion), "dice_ef": m(ef), "dice_ggo": m(ggo)}}


def _clin():
    return {"predicted_lesion_ml": {"fev1_pct": {"rho": -0.60, "ci_low": -0.78, "ci_high": -0.35, "n": 40},
                                    "fev1_fvc": {"rho": -0.20, "ci_low": -0.48, "ci_high": 0.10, "n": 38}},
            "predicted_lesion_pct": {"fev1_pct": {"rho": -0.62, "ci_low": -0.79, "ci_high": -0.36, "n": 40}}}


def test_synthetic_claims_are_never_called_confirmed():
    t = claims_ledger(_seg(), _clin(), {"synthetic": True})
    assert len(t) == 5 and list(t["Paper"]) == ["0.78", "0.70", "0.73", "-0.64", "-0.73"]
    assert all(v.startswith("pipeline runs; not testable on synthetic data") for v in t["Verdict"])
    assert all(v.startswith("No:") for v in t["Testable on this cohort?"])
    assert "0.74 [0.71, 0.80]" in t.iloc[0]["This run [95 % CI]"]


def test_real_claims_get_verdicts_from_the_intervals():
    t = claims_ledger(_seg(), _clin(), {"synthetic": False})
    v = t["Verdict"].tolist()
    assert v[0].startswith("consistent")          # 0.78 in [0.71, 0.80]
    assert v[1].startswith("lower")               # 0.70 above [0.55, 0.64]
    assert v[2].startswith("higher")              # 0.73 below [0.74, 0.79]
    assert v[3].startswith("consistent")          # -0.64 in [-0.78, -0.35]
    assert v[4].startswith("higher")              # -0.73 below [-0.48, 0.10]: weaker, i.e. higher
    row = t.iloc[3]["This run [95 % CI]"]
    assert "-0.60 [-0.78, -0.35] (volume, mL, as the paper)" in row and "-0.62" in row
    assert "n = 38" in t.iloc[4]["What n patients can detect"]   # the outcome's own n


def test_missing_numbers_say_so_instead_of_failing():
    t = claims_ledger({"n_cases": 40, "metrics": {}}, {}, {"synthetic": False})
    assert set(t["Verdict"]) == {"not computed on this cohort"}
    assert all(v.startswith("not available") for v in t["This run [95 % CI]"].iloc[:3])


def test_detectable_rho_is_symmetric_in_z_and_shrinks_with_n():
    lo, hi = detectable_rho(-0.64, 40)
    z0 = math.atanh(-0.64)
    assert math.atanh(lo) - z0 == pytest.approx(z0 - math.atanh(hi))
    lo2, hi2 = detectable_rho(-0.64, 400)
    assert lo < lo2 < -0.64 < hi2 < hi
    # simulated: a true rho at the edge is told from -0.64 about 80 % of the time (Fisher z, bivariate normal)
    rng = np.random.default_rng(0)
    from scipy import stats

    hits, n = 0, 40
    r_true = hi                                             # Pearson r with the same Spearman rho, roughly
    cov = [[1, 2 * math.sin(math.pi * r_true / 6)], [2 * math.sin(math.pi * r_true / 6), 1]]
    for _ in range(400):
        x = rng.multivariate_normal([0, 0], cov, size=n)
        rho = stats.spearmanr(x[:, 0], x[:, 1])[0]
        se = math.sqrt((1 + rho ** 2 / 2) / (n - 3))
        hits += not (math.atanh(rho) - 1.96 * se <= z0 <= math.atanh(rho) + 1.96 * se)
    assert 0.65 < hits / 400 < 0.92


def test_methods_table_reads_the_profile_and_admits_what_the_paper_does_not_state():
    p = get_profile("cpu")
    t = methods_table(p, {"n_cases": 40})
    assert "16-32-64-128" in t.loc["Network", "This re-run"] and t.loc["2D or 3D", "This re-run"] == "2D"
    assert "1.4 mm x 1.4 mm x 5 mm" in t.loc["Resolution", "This re-run"]
    assert t.loc["Resolution", "Paper"] == "not stated in the abstract"
    assert f"{PAPER['num_folds']}-fold" in t.loc["Cross-validation", "Paper"]
    assert "0.7" in t.loc["Post-processing", "This re-run"] and "% of lung" in t.loc["Lesion measure for lung function",
                                                                                      "This re-run"]
    assert "not stated" in t.loc["Dice averaging", "Paper"]
