"""Reproducibility page helpers: step times from the run log, paths shown relative to the repository."""

from __future__ import annotations

import json

import pandas as pd

from sscild.paths import RunPaths, repo_root
from sscild.book.chapters.reproducibility import step_times


def test_step_times_keep_the_run_that_did_the_work(tmp_path):
    run = RunPaths(results=tmp_path / "results", cohort="c", profile="smoke")
    run.root.mkdir(parents=True)
    data = str(repo_root().resolve() / "data" / "synthetic-smoke")
    run.runlog.write_text(json.dumps({"steps": [
        {"step": "train_fold_0", "status": "ok", "seconds": 130.0, "started": "t1", "parameters": {"data_dir": data}},
        {"step": "train_fold_0", "status": "ok", "seconds": 9.5, "started": "t2", "parameters": {"data_dir": data}},
        {"step": "evaluate", "status": "failed", "seconds": 3.0, "started": "t3", "parameters": {}},
    ]}))
    t = step_times(run)
    assert t.loc["train_fold_0", "latest s"] == 9.5 and t.loc["train_fold_0", "longest s"] == 130.0
    assert t.loc["train_fold_0", "runs"] == 2 and t.loc["train_fold_0", "started"] == "t2"
    assert t.loc["train_fold_0", "parameters"] == "data_dir=data/synthetic-smoke"
    assert t.loc["evaluate", "status"] == "failed" and pd.isna(t.loc["evaluate", "longest s"])


def test_step_times_without_a_log_is_an_empty_table(tmp_path):
    t = step_times(RunPaths(results=tmp_path, cohort="c", profile="smoke"))
    assert t.empty and "longest s" in t.columns


def test_arithmetic_difference_is_float32_minus_bfloat16_per_patient(tmp_path):
    from sscild.book.chapters.reproducibility import arithmetic_difference

    def variant(name, lesion):
        rows = [{"case": f"c{i}", "fold": 0, "lesion": v, "ef": 0.5, "ggo": 0.6 + i / 100, "lung": 0.97}
                for i, v in enumerate(lesion)]
        return {"name": name, "dice": {"per_case": rows}}

    rec = tmp_path / "study_arithmetic.json"
    rec.write_text(json.dumps({"variants": [variant("base", [0.70, 0.80, 0.60]),
                                            variant("float32", [0.72, 0.77, 0.60])]}))
    t = arithmetic_difference(rec)
    les = t.loc["total lesion"]
    assert les["patients"] == 3 and abs(les["mean difference"] - (-0.01 / 3)) < 1e-4
    assert abs(les["mean |difference|"] - 0.05 / 3) < 1e-4 and abs(les["largest |difference|"] - 0.03) < 1e-9
    assert t.loc["EF", "mean |difference|"] == 0
    rec.write_text(json.dumps({"variants": [variant("base", [0.7])]}))
    assert arithmetic_difference(rec) is None                      # nothing to compare with


def test_paper_scale_table_shows_measured_and_extrapolated_apart(tmp_path):
    from sscild.book.provenance import paper_scale_markdown, paper_scale_table

    stage = {"exit_code": 0, "wall_seconds": 600.0, "cpu_seconds": 1100.0, "peak_process_gib": 3.0,
             "peak_total_gib": 5.0, "peak_anon_gib": 2.5, "disk_run_gib": 4.0}
    rec = {"stages": {"data": stage, "train": stage, "book": {**stage, "peak_anon_gib": None}},
           "extrapolated": {"stages": {"data": {"wall_seconds": 3000}, "train": {"wall_seconds": 600},
                                       "book": {"wall_seconds": 600}}}}
    f = tmp_path / "paper_scale_cpu.json"
    f.write_text(json.dumps(rec))
    tab, _ = paper_scale_table(f)
    assert list(tab.index) == ["data", "train", "book"]
    assert tab.loc["data", "wall at 40 patients (min, extrapolated)"] == 50.0
    assert pd.isna(tab.loc["train", "wall at 40 patients (min, extrapolated)"])   # token budget: not scaled
    md = paper_scale_markdown(rec)
    assert md.count("\n") == 4 and "| data |" in md and "| 50.0 |" in md and "| — |" in md
