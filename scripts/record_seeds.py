"""Record the seed-to-seed spread of the study: the same cohort and profile, other seeds.

    make evaluate SEED=1 RESULTS=build/seeds/1 DATA=data/synthetic-cpu     # one repeat (and SEED=2, 3)
    .venv/bin/python scripts/record_seeds.py benchmarks/study_seed_spread.json \\
        results/synthetic-cpu/cpu build/seeds/1/synthetic-cpu/cpu build/seeds/2/synthetic-cpu/cpu ...

Each run folder holds a finished Segmentation chapter (``segmentation_summary.json``,
``segmentation_metrics.csv``) and its ``run_context.json``, whose profile settings name the seed. A seed
changes the fold splits, the pretraining and every training draw, nothing else: the cohort and the
recipe are the same. The record holds, per seed, the mean Dice over patients (with its bootstrap
interval) and the pooled Dice of each region, and across seeds their mean, SD, minimum and maximum,
with the commit and machine it was measured on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from sscild.machine import cpu_name  # noqa: E402

REGIONS = ("lesion", "ef", "ggo", "normal", "lung")


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_record(run: Path) -> dict:
    """One run's seed, cohort and Dice (mean over patients with its interval, and pooled)."""
    import pandas as pd

    from sscild.analysis.segmentation_summary import pooled_dice

    ctx = json.loads((run / "run_context.json").read_text())
    seg = json.loads((run / "segmentation_summary.json").read_text())
    df = pd.read_csv(run / "segmentation_metrics.csv", dtype={"case_id": str})
    pooled = pooled_dice(df)
    out = {"run": str(run), "seed": int(ctx["profile_settings"]["seed"]), "cohort": seg.get("cohort"),
           "folder": ctx.get("cohort"),
           "profile": ctx.get("profile"), "synthetic": seg.get("synthetic"), "n_cases": seg.get("n_cases"),
           "mean_dice": {}, "pooled_dice": {}}
    for r in REGIONS:
        m = seg["metrics"].get(f"dice_{r}") or {}
        out["mean_dice"][r] = {k: m.get(k) for k in ("mean", "ci_low", "ci_high")}
        out["pooled_dice"][r] = pooled.get(r)
    return out


def spread(values: list[float]) -> dict:
    import numpy as np

    a = np.asarray([v for v in values if v is not None], float)
    return {"n_seeds": int(a.size), "mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else None,
            "min": float(a.min()), "max": float(a.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (<results>/<cohort>/<profile>), one per seed")
    args = ap.parse_args(argv)
    runs = [run_record(r) for r in args.runs]
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        ap.error(f"two runs share a seed: {seeds}")
    if len({(r["cohort"], r["profile"], r["n_cases"]) for r in runs}) != 1:
        ap.error("the runs differ in cohort, profile or number of patients: "
                 f"{sorted({(r['cohort'], r['profile'], r['n_cases']) for r in runs})}")
    record = {
        "what": "seed-to-seed spread of the out-of-fold Dice: the same cohort and recipe, other seeds (fold splits, "
                "pretraining and training draws)",
        "date": dt.date.today().isoformat(),
        "commit": _commit(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python scripts/record_seeds.py " + " ".join(map(str, [args.out, *args.runs])),
        "cohort": runs[0]["cohort"], "folder": runs[0]["folder"], "profile": runs[0]["profile"],
        "synthetic": runs[0]["synthetic"],
        "n_cases": runs[0]["n_cases"],
        "runs": sorted(runs, key=lambda r: r["seed"]),
        "across_seeds": {
            "mean_dice": {r: spread([x["mean_dice"][r]["mean"] for x in runs]) for r in REGIONS},
            "pooled_dice": {r: spread([x["pooled_dice"][r] for x in runs]) for r in REGIONS},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["across_seeds"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
