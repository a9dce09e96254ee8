"""Screen the lesion threshold: out-of-fold Dice, false lesion on the controls and on real CT without ILD.

    .venv/bin/python scripts/screen_lesion_threshold.py --run results/synthetic-cpu/cpu \\
        [--thresholds 0.6 0.7 0.8] [--scans ../shared/data/real-ct] [--out benchmarks/study_lesion_threshold.json]

For each threshold (and the plain argmax): every patient segmented by the model of the fold that held it
out (flip averaging, float32, the post-processing), Dice of total lesion, EF and GGO on the network's
grid, and the paired difference from the argmax with its 95 % BCa interval; the fold ensemble's false
lesion (% of lung) on the cohort's controls and on each real scan. The profile's ``lesion_threshold``
is chosen from this record (the largest threshold whose Dice intervals all include 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _dice(a, b) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def oof_dice(run, thresholds) -> dict:
    from sscild.data.cache import load_cached
    from sscild.data.folds import read_splits
    from sscild.model.inference import postprocess_labels, predict_preprocessed
    from sscild.model.loading import load_fold_model

    out = {t: [] for t in thresholds}
    for f, split in enumerate(read_splits(run.splits)):
        net, meta = load_fold_model(run.fold_dir(f) / "model_final.pt", "cpu")
        for cid in sorted(split["val"]):
            pre = load_cached(run, cid)
            for t in thresholds:
                lab, _ = postprocess_labels(predict_preprocessed([net], pre, tta=True, cpu_bf16=False, lesion_threshold=t),
                                            pre, meta["profile"])
                out[t].append([_dice(sel(lab), sel(pre.label)) for sel in
                               (lambda a: a >= 2, lambda a: a == 2, lambda a: a == 3)])
    return {t: np.array(v) for t, v in out.items()}


def false_lesion(scans, run, thresholds) -> dict:
    from sscild.data.image import load_volume
    from sscild.model.inference import segment_volume
    from sscild.model.loading import load_ensemble

    ens = load_ensemble(run.root)
    out = {}
    for path in scans:
        vol = load_volume(path)
        row = []
        for t in thresholds:
            lab = segment_volume(vol, ens.nets, ens.profile.with_overrides(lesion_threshold=t), cpu_bf16=False).label
            row.append(round(100.0 * int((lab >= 2).sum()) / max(int((lab > 0).sum()), 1), 3))
        out[Path(path).name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the run folder (results/<cohort>/<profile>)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.6, 0.7, 0.8])
    ap.add_argument("--scans", type=Path, default=REPO.parent / "shared" / "data" / "real-ct")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "study_lesion_threshold.json")
    args = ap.parse_args(argv)

    from sscild.analysis.realcheck import list_volumes
    from sscild.book.provenance import git_state
    from sscild.evaluation.agreement import paired_difference
    from sscild.machine import cpu_name
    from sscild.model.controls import control_scans
    from sscild.model.device import set_threads
    from sscild.paths import RunPaths, atomic_path, unroot

    set_threads()
    t0 = time.perf_counter()
    run = RunPaths(results=args.run.resolve().parents[1], cohort=args.run.resolve().parent.name,
                   profile=args.run.resolve().name)
    ts = [None, *args.thresholds]
    dice = oof_dice(run, ts)
    rows = []
    for t in ts:
        row = {"lesion_threshold": t}
        for k, name in enumerate(("lesion", "ef", "ggo")):
            row[f"dice_{name}"] = round(float(np.nanmean(dice[t][:, k])), 4)
            if t is not None:
                m = ~np.isnan(dice[t][:, k]) & ~np.isnan(dice[None][:, k])
                d = paired_difference(dice[t][m, k], dice[None][m, k], seed=0)
                row[f"dice_{name}_change"] = [round(float(d["mean_diff"]), 4), round(float(d["ci_low"]), 4),
                                              round(float(d["ci_high"]), 4)]
        rows.append(row)
    scans = [*control_scans(run).values(), *(list_volumes(args.scans) if args.scans.is_dir() else [])]
    fl = false_lesion(scans, run, ts)
    git = git_state()
    record = {"what": "lesion threshold: out-of-fold Dice (network grid) and false lesion (% of lung) on controls "
                      "and real CT without ILD", "date": dt.date.today().isoformat(),
              "commit": git["commit"] + (" (with uncommitted changes)" if git["dirty"] else ""),
              "command": "python scripts/screen_lesion_threshold.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "run": unroot(args.run), "processor": cpu_name(), "seconds": round(time.perf_counter() - t0, 1),
              "thresholds": ts, "oof": rows, "false_lesion_pct": fl}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("oof", "false_lesion_pct")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
