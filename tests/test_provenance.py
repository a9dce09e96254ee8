"""Reproducibility page helpers: step times from the run log, paths shown relative to the repository."""

from __future__ import annotations

import json

import pandas as pd

from sscild.paths import RunPaths, repo_root
from sscild.book.provenance import step_times


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
