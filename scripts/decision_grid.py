"""How the external check's decision from the probabilities was chosen (the seventh screen): a grid of
lesion thresholds and consolidation weights (:func:`sscild.external.predict.decide`) on the out-of-fold
probabilities of a finished cross-validation, chosen leave one fold out.

Usage::

    python scripts/decision_grid.py results/external/cv --folds 0,1,2

For each fold k of ``--folds``, the grid point with the best mean GGO Dice on the other folds is applied
to fold k; the script prints every grid point's Dice on all given folds, each fold's choice, and the
leave-one-fold-out Dice against the most probable class (and the same with the mean of both classes as
the criterion). It reads the training folder only, never a test part.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.external.predict import decide, predict_slices
from sscild.external.recipe import external_profile
from sscild.external.scores import score_slices
from sscild.external.slices import default_train_dir, read_slice_folder
from sscild.model.loading import load_fold_model

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
WEIGHTS = (0.7, 1.0, 1.4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv_dir", type=Path, help="a cross-validation folder: splits.json and fold_<k>/model_final.pt")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--train-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    folds = [int(k) for k in args.folds.split(",")]
    train = read_slice_folder(args.train_dir or default_train_dir(), what="training folder")
    splits = json.loads((args.cv_dir / "splits.json").read_text())
    probs, fold_of = {}, {}
    for k in folds:
        net, _ = load_fold_model(args.cv_dir / f"fold_{k}" / "model_final.pt")
        held = {s: train[s] for s in splits[k]["val"]}
        probs |= predict_slices(net, held, external_profile("cpu"), return_probs=True)
        fold_of |= {s: k for s in held}
    res = {}
    for t, w in [(None, 1.0), *itertools.product(THRESHOLDS, WEIGHTS)]:
        sc = score_slices({s: decide(p, t, w) for s, p in probs.items()}, train)
        res[(t, w)] = sc.assign(fold=sc["slice_id"].map(fold_of))
        print(f"threshold {t}, weight {w}: GGO {res[(t, w)].dice_ggo.mean():.4f}, "
              f"consolidation {res[(t, w)].dice_consolidation.mean():.4f}")
    for crit in ("GGO", "mean of both classes"):
        rows = []
        for k in folds:
            def score(m):
                r = res[m][res[m].fold != k]
                return r.dice_ggo.mean() if crit == "GGO" else np.mean([r.dice_ggo.mean(), r.dice_consolidation.mean()])
            best = max(res, key=score)
            rows.append(res[best][res[best].fold == k])
            print(f"[{crit}] fold {k}: chose threshold {best[0]}, weight {best[1]}")
        lofo, base = pd.concat(rows), res[(None, 1.0)]
        print(f"[{crit}] leave one fold out: GGO {lofo.dice_ggo.mean():.4f}, consolidation "
              f"{lofo.dice_consolidation.mean():.4f}; most probable class: GGO {base.dice_ggo.mean():.4f}, "
              f"consolidation {base.dice_consolidation.mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
