"""The abstract's paragraph states this run's numbers, the paper's, and the synthetic caveat."""

from sscild.summary import abstract_paragraph


def _seg(lesion=0.81, ef=0.66, ggo=0.7):
    return {"n_cases": 40, "metrics": {"dice_lesion": {"mean": lesion}, "dice_ef": {"mean": ef},
                                       "dice_ggo": {"mean": ggo}, "baseline_dice_lesion": {"mean": 0.41}}}


def _clin():
    return {"predicted_lesion_pct": {"fev1_pct": {"rho": -0.512, "ci_low": -0.7, "ci_high": -0.25, "n": 38},
                                     "fvc_pct": {"rho": float("nan"), "ci_low": None, "ci_high": None, "n": 3}}}


def test_numbers_and_caveat_for_synthetic():
    text = abstract_paragraph(_seg(), _clin(), {"synthetic": True, "folder": "synthetic-cpu"}, "cpu")
    for s in ("0.81", "0.66", "0.70", "0.41", "-0.51", "-0.70", "-0.25", "n = 38", "0.78", "-0.64", "-0.73"):
        assert s in text, s
    assert "FVC %pred ρ = n/a" in text
    assert "synthetic" in text and "planted" in text


def test_real_cohort_has_no_synthetic_caveat():
    text = abstract_paragraph(_seg(), _clin(), {"synthetic": False, "folder": "siccs"}, "paper")
    assert "planted" not in text and "**real**" in text
