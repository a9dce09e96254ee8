"""The abstract's paragraph: this run's numbers with intervals, the named primary endpoint with its
Holm-adjusted p, the paper's values apart for orientation, the synthetic caveat; the training
plateau summary computed from the folds' epochs.csv; and the Model & training chapter reading the
finished pretraining without ever running one."""

import math

import numpy as np
import pandas as pd
import pytest

from sscild.book.chapters.abstract import abstract_paragraph
from sscild.book.chapters.training import plateau_words, training_plateau
from sscild.model.pretrain import finished_pretrained_state


def _seg(lesion=0.81, ef=0.66, ggo=0.7):
    return {"n_cases": 40, "metrics": {"dice_lesion": {"mean": lesion, "ci_low": 0.78, "ci_high": 0.84},
                                       "dice_ef": {"mean": ef}, "dice_ggo": {"mean": ggo},
                                       "baseline_dice_lesion": {"mean": 0.41}},
            "baseline": {"paired_difference": {"lesion": {"mean_diff": 0.4, "ci_low": 0.35, "ci_high": 0.45}}}}


def _clin():
    return {"predicted_lesion_pct": {"fev1_pct": {"rho": -0.512, "ci_low": -0.7, "ci_high": -0.25, "n": 38,
                                                  "p_holm": 0.002},
                                     "dlco_pct": {"rho": -0.3, "ci_low": -0.55, "ci_high": -0.02, "n": 38,
                                                  "p_holm": 0.13},
                                     "fvc_pct": {"rho": float("nan"), "ci_low": None, "ci_high": None, "n": 3}},
            "endpoints": {"primary": [{"outcome": "fev1_pct", "p_holm": 0.004}],
                          "secondary": [{"outcome": "dlco_pct", "p_holm": 0.13}]}}


def test_numbers_endpoints_and_caveat_for_synthetic():
    text = abstract_paragraph(_seg(), _clin(), {"synthetic": True, "folder": "synthetic-cpu"}, "cpu")
    for s in ("0.81", "0.78, 0.84", "0.66", "network − Hounsfield-unit density threshold, was 0.40 [95 % CI 0.35, 0.45]",
              "-0.51", "-0.70", "-0.25", "n = 38"):
        assert s in text, s
    # the published values are not in the same paragraph as this run's: the claims ledger sets them apart
    for published in ("-0.64", "-0.73", "(EF) and 0.73"):
        assert published not in text, published
    assert "claims ledger" in text and "% of lung (the paper correlated lesion volume in mL" in text
    assert "Primary endpoint" in text and "Holm-adjusted p = 0.004" in text   # the primary pair's p, not the grid's
    assert "Secondary: FVC %pred" in text and "DLCO %pred ρ = -0.30" in text and "Holm-adjusted p = 0.13" in text
    assert "FVC %pred ρ = n/a" in text
    assert "planted" in text and "synthetic" in text


def test_real_cohort_has_no_synthetic_caveat():
    text = abstract_paragraph(_seg(), _clin(), {"synthetic": False, "folder": "siccs"}, "paper")
    assert "planted" not in text and "**real**" in text


class _Run:
    def __init__(self, root):
        self.root = root

    def fold_dir(self, k):
        return self.root / f"fold_{k}"


def test_training_plateau_slope_hand_computed(tmp_path):
    steps = np.arange(100, 1100, 100)                            # 10 epochs
    rising = 0.2 + 0.0004 * steps                                # +0.4 per 1000 steps, no noise
    flat = np.r_[np.linspace(0.1, 0.6, 7), [0.6, 0.6001, 0.5999]]
    for k, y in enumerate((rising, flat)):
        (tmp_path / f"fold_{k}").mkdir()
        pd.DataFrame({"epoch": range(1, 11), "step": steps, "train_dice_ef": y}).to_csv(
            tmp_path / f"fold_{k}" / "epochs.csv", index=False)
    t = training_plateau(_Run(tmp_path), [0, 1, 2])              # fold 2 has no epochs.csv
    assert list(t.index) == [0, 1]
    assert t.loc[0, "slope per 1000 steps"] == pytest.approx(0.4) and t.loc[0, "still rising"]
    assert t.loc[0, "last value"] == pytest.approx(0.6)
    # last 20 % of 1000 steps holds three epochs, widened to the last four: 0.6, 0.6, 0.6001, 0.5999
    assert t.loc[1, "window from step"] == 700
    assert abs(t.loc[1, "slope per 1000 steps"]) < 0.01 and not t.loc[1, "still rising"]
    assert t.loc[0, "gain in window, % of total gain"] == pytest.approx(100 * 0.12 / 0.36)   # 700..1000 of 100..1000
    assert abs(t.loc[1, "gain in window, % of total gain"]) < 0.1
    words = plateau_words(t)
    assert "1 of 2 had a slope interval above 0" in words and "still improving" in words
    assert "No fold" in plateau_words(training_plateau(_Run(tmp_path), [5]))
    assert "cannot be told from a plateau" in plateau_words(t.loc[[1]])
    # no fold rising on its own, but all eight slopes positive: the folds together are (sign test p = 0.008)
    eight = pd.DataFrame({"slope per 1000 steps": [0.01] * 8, "still rising": [False] * 8, "last value": [0.6] * 8,
                          "gain in window, % of total gain": [13.0] * 8})
    words = plateau_words(eight)
    assert "positive in 8 of 8 folds (sign test across folds p = 0.008)" in words and "still improving" in words
    mixed = eight.assign(**{"slope per 1000 steps": [0.01, -0.01] * 4})
    assert "cannot be told from a plateau" in plateau_words(mixed)
    with pytest.raises(ValueError, match="last_fraction"):
        training_plateau(_Run(tmp_path), [0], last_fraction=0)
    assert math.isfinite(t.loc[1, "slope 95% CI high"])


def test_training_chapter_reads_the_finished_pretraining_and_never_runs_one(tmp_path):
    import torch

    from sscild.model.pretrain import cohort_pretrain_key
    from sscild.paths import write_json
    from sscild.profiles import get_profile

    prof = get_profile("smoke")
    scan = tmp_path / "u1.nii.gz"
    scan.write_bytes(b"not really a scan")
    run = _Run(tmp_path / "run")
    assert finished_pretrained_state(run, prof, {"u1": scan}) is None                # nothing pretrained: nothing run
    assert not (run.root / "pretrained").exists()
    folder = run.root / "pretrained"
    folder.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, folder / "pretrained.pt")
    write_json(folder / "summary.json", {"steps": 3, "seconds": 1.0, "first_l1": 0.5, "last_l1": 0.2})
    write_json(folder / "pretrain_key.json", cohort_pretrain_key(prof, {"u1": scan}))
    state, summary = finished_pretrained_state(run, prof, {"u1": scan})
    assert torch.equal(state["w"], torch.ones(2)) and summary["last_l1"] == 0.2
    scan.write_bytes(b"another scan")                                            # made from other scans: not used
    assert finished_pretrained_state(run, prof, {"u1": scan}) is None
    assert sorted(p.name for p in folder.iterdir()) == ["pretrain_key.json", "pretrained.pt", "summary.json"]
