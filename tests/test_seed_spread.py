"""The seed-to-seed spread: SEED replaces the profile's seed, scripts/record_seeds.py collects repeats, the
Segmentation chapter shows them beside the patient-level interval."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sscild.book.chapters.segmentation import seed_spread_table, seed_spread_words
from sscild.profiles import SEED_ENV, get_profile

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("record_seeds", REPO / "scripts" / "record_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seed_env_replaces_the_profile_seed_only(monkeypatch):
    base = get_profile("cpu")
    monkeypatch.setenv(SEED_ENV, "3")
    p = get_profile("cpu")
    assert p.seed == 3 and p.name == "cpu"
    assert {k: v for k, v in p.to_dict().items() if k != "seed"} == {k: v for k, v in base.to_dict().items() if k != "seed"}
    monkeypatch.setenv(SEED_ENV, "one")
    with pytest.raises(ValueError, match="SEED=1"):
        get_profile("cpu")
    monkeypatch.delenv(SEED_ENV)
    assert get_profile("cpu").seed == base.seed


def _fake_run(root: Path, seed: int, ef_tp: int) -> Path:
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "run_context.json").write_text(json.dumps({"cohort": "synthetic-cpu", "profile": "cpu",
                                                      "profile_settings": {"seed": seed}}))
    metrics = {f"dice_{r}": {"mean": 0.5 + 0.01 * seed, "ci_low": 0.45, "ci_high": 0.6} for r in
               ("lesion", "ef", "ggo", "normal", "lung")}
    (run / "segmentation_summary.json").write_text(json.dumps({"cohort": "sscild-phantom-cpu", "synthetic": True,
                                                               "profile": "cpu", "n_cases": 2, "metrics": metrics}))
    rows = []
    for _ in range(2):
        row = {f"vox_ref{a}_pred{b}": 0 for a in range(4) for b in range(4)}
        row.update(vox_ref2_pred2=ef_tp, vox_ref2_pred0=10 - ef_tp, vox_ref1_pred1=100, vox_ref3_pred3=5)
        rows.append({"case_id": "c", "fold": 0, **row})
    pd.DataFrame(rows).to_csv(run / "segmentation_metrics.csv", index=False)
    return run


def test_record_seeds_collects_the_spread(tmp_path):
    mod = _script()
    runs = [_fake_run(tmp_path, s, tp) for s, tp in ((0, 10), (1, 6), (2, 8))]
    out = tmp_path / "rec.json"
    assert mod.main([str(out), *map(str, runs)]) == 0
    rec = json.loads(out.read_text())
    assert [r["seed"] for r in rec["runs"]] == [0, 1, 2] and rec["commit"] and rec["synthetic"] is True
    ef = [2 * tp / (10 + tp) for tp in (10, 6, 8)]                      # pooled EF Dice of each seed
    assert rec["across_seeds"]["pooled_dice"]["ef"]["mean"] == pytest.approx(np.mean(ef))
    assert rec["across_seeds"]["pooled_dice"]["ef"]["sd"] == pytest.approx(np.std(ef, ddof=1))
    assert rec["across_seeds"]["mean_dice"]["lesion"]["min"] == pytest.approx(0.50)
    t = seed_spread_table(rec)
    assert list(t.index) == ["0", "1", "2", "mean ± SD over 3 seeds"]
    assert t.loc["1", "EF, pooled"] == f"{ef[1]:.2f}"
    assert rec["cohort"] == "sscild-phantom-cpu" and rec["folder"] == "synthetic-cpu"
    words = seed_spread_words(rec, {"cohort": "sscild-phantom-cpu", "profile": "cpu", "n_cases": 2,
                                    "metrics": {"dice_lesion": {"ci_low": 0.7, "ci_high": 0.8}}})
    assert "this page's interval over patients is ±0.05" in words and "synthetic" in words
    assert "the cohort and profile of this page" in words
    other = seed_spread_words(rec, {"cohort": "mycohort", "profile": "cpu", "n_cases": 2, "metrics": {}})
    assert "(not this page's run)" in other
    with pytest.raises(SystemExit):
        mod.main([str(out), str(runs[0]), str(runs[0])])                 # a seed twice
