"""The prepared GPU session script: it refuses a machine without CUDA, and its dry run on the CPU
goes through every step and writes the record after each (the real run needs a lent GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_session.py"
COVID_TRAIN = REPO.parent / "shared" / "data" / "covid-semiseg" / "train"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would run the real session")
def test_refuses_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "s" / "session.json").exists()


def test_dry_run_runs_every_step_and_records_each(tmp_path):
    if not (COVID_TRAIN / "images").is_dir():
        pytest.skip(f"COVID-SemiSeg training slices not available ({COVID_TRAIN})")
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--budget", "500"],
                          capture_output=True, text=True, timeout=900)
    rec = json.loads((out / "session.json").read_text())
    assert [s["name"] for s in rec["steps"]] == ["study", "external"], proc.stdout + proc.stderr
    assert all(s["status"] == "ok" for s in rec["steps"]), [(s["name"], s["status"], s.get("log")) for s in rec["steps"]]
    assert proc.returncode == 0 and rec["dry_run"] is True and rec["commit"]
    assert json.loads((out / "external" / "summary.json").read_text())["recipe"]["profile"] == "external-smoke"
    assert (out / "study_gpu_paper.json").exists()


def test_a_step_out_of_time_is_recorded_not_lost(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_session

    step = {"name": "slow", "command": [sys.executable, "-c", "import time; time.sleep(60)"], "limit_s": 31,
            "writes": [str(tmp_path / "never.json")]}
    done = gpu_session.run_step(step, left_s=600, log=tmp_path / "slow.log")
    assert done["status"].startswith("out of time") and done["written"] == []
    skipped = gpu_session.run_step(step, left_s=10, log=tmp_path / "skip.log")
    assert skipped["status"].startswith("skipped")
