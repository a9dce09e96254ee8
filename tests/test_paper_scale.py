"""Paper scale: the token-steps switch of the dry run, its record, and the README table made from it.

The dry run itself (scripts/paper_scale_dry_run.py, an hour and more on a CPU) is a recorded benchmark,
not a test; these keep the pieces it relies on honest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from conftest import REPO
from sscild.profiles import PROFILES, STEPS_ENV, get_profile, token_steps

RECORD = REPO / "benchmarks" / "paper_scale_cpu.json"


def test_token_steps_change_the_training_budget_and_nothing_else(monkeypatch):
    monkeypatch.setenv(STEPS_ENV, "3")
    prof = get_profile("paper")
    assert (prof.iterations, prof.pretrain_steps, prof.checkpoint_every, prof.log_every) == (3, 3, 3, 3)
    changed = {k for k, v in asdict(prof).items() if v != asdict(PROFILES["paper"])[k]}
    assert changed == {"iterations", "pretrain_steps", "checkpoint_every", "log_every"}
    monkeypatch.setenv(STEPS_ENV, "0")
    with pytest.raises(ValueError, match="at least 1 step"):
        get_profile("paper")
    monkeypatch.setenv(STEPS_ENV, "many")
    with pytest.raises(ValueError, match="not a whole number"):
        get_profile("paper")
    monkeypatch.delenv(STEPS_ENV)
    assert get_profile("paper") == PROFILES["paper"]
    # a profile that does not pretrain keeps not pretraining; one with fewer steps keeps its own
    assert token_steps(PROFILES["smoke"], 1000).pretrain_steps == PROFILES["smoke"].pretrain_steps


def test_make_passes_steps_from_its_command_line_only(tmp_path):
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {REPO / 'Makefile'}\nprobe:\n\t@echo \"steps=[$$SSCILD_STEPS]\"\n")
    base = ["make", "-s", "--no-print-directory", "-C", str(REPO), "-f", str(probe), "PROFILE=smoke",
            f"RESULTS={tmp_path / 'r'}", f"DATA_ROOT={tmp_path / 'd'}", "probe"]
    env = {k: v for k, v in __import__("os").environ.items() if k not in (STEPS_ENV, "STEPS")}
    given = subprocess.run(base + ["STEPS=2"], capture_output=True, text=True, env=env)
    assert "steps=[2]" in given.stdout, given.stdout + given.stderr
    from_shell = subprocess.run(base, capture_output=True, text=True, env={**env, "STEPS": "2"})
    assert "steps=[]" in from_shell.stdout, from_shell.stdout + from_shell.stderr


def test_the_record_names_commit_machine_every_stage_and_stays_under_16_gib():
    if not RECORD.exists():
        pytest.skip("no paper-scale dry run is recorded yet (scripts/paper_scale_dry_run.py)")
    rec = json.loads(RECORD.read_text())
    assert len(rec["commit"]) >= 7 and rec["machine"] and rec["token_steps"] >= 1
    assert rec["cohort"]["labelled_cases"] >= 8 and rec["cohort"]["min_slices"] >= 300
    assert rec["cohort"]["in_plane"] == ["512x512"]
    for stage in ("data", "train", "training_chapter", "segmentation", "clinical", "abstract", "reproducibility",
                  "book"):
        st = rec["stages"][stage]
        assert st["exit_code"] == 0 and st["wall_seconds"] > 0 and st["peak_total_gib"] > 0, stage
        if st.get("peak_anon_gib") is not None:      # measured by runs of the script since it samples it
            assert st["peak_anon_gib"] <= st["peak_total_gib"], stage
    # the resident sum bounds what the stages need (it also counts mapped cache pages): within 16 GiB
    assert rec["peak_gib_any_stage"] <= 16


def test_readme_holds_the_records_table():
    if not RECORD.exists():
        pytest.skip("no paper-scale dry run is recorded yet")
    sys.path.insert(0, str(REPO / "scripts"))
    import paper_scale_dry_run as dry

    block = dry.readme_block(json.loads(RECORD.read_text()))
    assert block in (REPO / "README.md").read_text(), \
        "README's paper-scale table differs from the record: python scripts/paper_scale_dry_run.py --readme"
