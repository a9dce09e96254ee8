"""Every GPU measurement the open work asks for, in one prepared run, for a session lent a GPU.

    python scripts/gpu_session.py [--out results/gpu_session] [--budget 540]

A lent GPU comes with minutes, not hours: this script is written beforehand, run once, and writes its
record after every step, so what finished is kept when the time runs out. Steps, each a subprocess
with its own time limit (never more than what is left of ``--budget`` seconds):

1. ``study``: the study's ``paper`` profile on CUDA (``scripts/gpu_check.py``: a synthetic cohort at
   HRCT size, one fold trained with mixed precision, a held-out volume segmented) -> ``study_gpu_paper.json``.
2. ``external``: the external check's ``paper`` profile on the COVID-SemiSeg slices
   (``python -m sscild.external run``; the test part too when ``--test-dir`` is given) ->
   ``external/summary.json``.

The record ``<out>/session.json`` lists each step: its command, exit status, seconds, whether it ran
out of time, and the files it wrote. Copy what is worth keeping into ``benchmarks/`` with the commit
and machine it names. Without CUDA the script refuses to run; ``--dry-run`` runs the same steps on the
CPU with the smoke profiles and a few steps, to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
SHARED = ROOT.parent / "shared" / "data" / "covid-semiseg"


def steps(out: Path, *, dry_run: bool, train: Path, test: Path | None, unlabelled: Path | None) -> list[dict]:
    """The session's steps: name, command, the seconds it may take at most, the files it writes."""
    py = sys.executable
    study = [py, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out / "study_gpu_paper.json"),
             "--work", str(out / "study_work")]
    study += ["--steps", "2", "--patients", "2", "--profile", "smoke", "--allow-cpu"] if dry_run else \
        ["--steps", "300", "--patients", "8"]
    ext = [py, "-m", "sscild.external", "run", str(train), str(out / "external"),
           "--profile", "smoke" if dry_run else "paper"]
    ext += ["--test-dir", str(test)] if test else []
    ext += ["--unlabelled-dir", str(unlabelled)] if unlabelled else []
    return [{"name": "study", "command": study, "limit_s": 240, "writes": [str(out / "study_gpu_paper.json")]},
            {"name": "external", "command": ext, "limit_s": 480, "writes": [str(out / "external" / "summary.json")]}]


def run_step(step: dict, left_s: float, log: Path) -> dict:
    """Run one step within ``min(its limit, left_s)`` seconds; its output goes to ``log``."""
    limit = max(0.0, min(float(step["limit_s"]), left_s))
    if limit < 30:
        return {**step, "status": "skipped: less than 30 s of the budget left", "seconds": 0.0}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(step["command"], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, timeout=limit,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"out of time after {limit:.0f} s"
    return {**step, "status": status, "seconds": round(time.perf_counter() - t0, 1), "log": str(log),
            "written": [w for w in step["writes"] if Path(w).exists()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_session")
    ap.add_argument("--budget", type=float, default=540, help="seconds for all steps together (default 540)")
    ap.add_argument("--train-dir", type=Path, default=SHARED / "train")
    ap.add_argument("--test-dir", type=Path, default=None, help="the external benchmark's test part, when at hand")
    ap.add_argument("--unlabelled-dir", type=Path, default=SHARED / "unlabelled")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, smoke profiles, a few steps: checks the script")
    a = ap.parse_args(argv)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_session: no CUDA device here; this script is for a machine with a GPU (--dry-run checks it on the CPU)",
              file=sys.stderr)
        return 2
    if not (a.train_dir / "images").is_dir():
        print(f"gpu_session: {a.train_dir} has no images/ (the COVID-SemiSeg training part)", file=sys.stderr)
        return 2
    from sscild.book.provenance import git_state

    a.out.mkdir(parents=True, exist_ok=True)
    record = {"what": "the GPU measurements of the open work, run once (scripts/gpu_session.py)",
              "date": dt.date.today().isoformat(), "commit": git_state().get("commit"), "dry_run": a.dry_run,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor()})",
              "torch": torch.__version__, "budget_s": a.budget, "steps": []}
    unl = a.unlabelled_dir if (a.unlabelled_dir / "images").is_dir() else None
    t0 = time.perf_counter()
    for step in steps(a.out, dry_run=a.dry_run, train=a.train_dir, test=a.test_dir, unlabelled=unl):
        done = run_step(step, a.budget - (time.perf_counter() - t0), a.out / f"{step['name']}.log")
        record["steps"].append(done)
        (a.out / "session.json").write_text(json.dumps(record, indent=2) + "\n")   # after every step
        print(f"gpu_session: {done['name']}: {done['status']} in {done['seconds']} s")
    return 0 if all(s["status"] == "ok" for s in record["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
