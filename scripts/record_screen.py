"""Collect the per-slice scores of screened recipe variants into one record for the appendix.

Usage::

    python scripts/record_screen.py benchmarks/external_lever_screen.csv --folds 0,1,2 \\
        "recipe as it was=results/external/cv/scores.csv" \\
        "deep supervision, 2 levels=screen/1a2b3c4d5e/scores.csv" ...

Each ``NAME=SCORES`` is a ``scores.csv`` written by ``python -m sscild.external search`` (one
folder per variant) or ``run`` (its ``cv/scores.csv``); the first is the baseline. Only the slices
held out in ``--folds`` are kept, and every variant must cover the same slices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("variants", nargs="+", help="NAME=path/to/scores.csv, the baseline first")
    ap.add_argument("--folds", required=True, help="comma-separated fold numbers, e.g. 0,1,2")
    args = ap.parse_args(argv)
    args.folds = [int(k) for k in args.folds.split(",")]
    frames, slices = [], None
    for spec in args.variants:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: give NAME=path/to/scores.csv")
        df = pd.read_csv(path, dtype={"slice_id": str})
        df = df[df["fold"].isin(args.folds)]
        ids = sorted(df["slice_id"])
        if slices is None:
            slices = ids
        elif ids != slices:
            print(f"error: {name!r} ({path}) holds other slices than the baseline for folds {args.folds}",
                  file=sys.stderr)
            return 2
        frames.append(df.assign(variant=name))
    out = pd.concat(frames, ignore_index=True)
    out = out[["variant"] + [c for c in out.columns if c != "variant"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"{args.out}: {len(frames)} variants x {len(slices)} slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
