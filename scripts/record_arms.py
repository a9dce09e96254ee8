"""Collect the out-of-fold metrics of two or more runs of the same cohort into one arm record.

Usage::

    python scripts/record_arms.py benchmarks/study_pretrain_cv.csv \\
        "no unlabelled scans=results/synthetic-cpu/cpu" \\
        "pretraining on 40 unlabelled scans=/tmp/pt/results/synthetic-cpu/cpu"

Each ``NAME=RUN`` is a run folder (``<results>/<cohort>/<profile>``) whose Segmentation chapter
wrote ``segmentation_metrics.csv``; the first is the control. Every run must hold the same patients
in the same folds. The record keeps :data:`sscild.analysis.arms.ARM_METRICS`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from sscild.analysis.arms import ARM_METRICS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("arms", nargs="+", help="NAME=run folder, the control first")
    args = ap.parse_args(argv)
    frames, ref = [], None
    for spec in args.arms:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: give NAME=run folder")
        df = pd.read_csv(Path(path) / "segmentation_metrics.csv", dtype={"case_id": str})
        key = sorted(zip(df["case_id"], df["fold"]))
        if ref is None:
            ref = key
        elif key != ref:
            print(f"{path}: other patients or folds than the first run; not recorded", file=sys.stderr)
            return 1
        frames.append(df[["case_id", "fold", *ARM_METRICS]].assign(arm=name))
    out = pd.concat(frames)[["arm", "case_id", "fold", *ARM_METRICS]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False, float_format="%.6f")
    print(f"wrote {args.out}: {len(frames)} arms x {len(ref)} patients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
