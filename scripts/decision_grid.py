"""How the external check's decision from the probabilities was chosen (the seventh screen): a grid of
lesion thresholds and consolidation weights (:func:`sscild.external.predict.decide`) on the out-of-fold
probabilities of a finished cross-validation, chosen leave one fold out.

Usage::

    python scripts/decision_grid.py results/external/cv --folds 0,1,2
    python scripts/decision_grid.py results/external/cv --folds 0,1,2,3,4 --check 0.4,0.7 \
        --with results/external-long/cv

For each fold k of ``--folds``, the grid point with the best mean GGO Dice on the other folds is applied
to fold k; the script prints every grid point's Dice on all given folds, each fold's choice, and the
leave-one-fold-out Dice against the most probable class (and the same with the mean of both classes as
the criterion). With ``--check T,W`` it scores only that decision against the most probable class
(paired gain, 95 % BCa), on the mean probabilities of each fold's model and the same fold's models of
the ``--with`` runs (models that never saw the held-out slices, averaged as the test part's ensemble
averages its models). It reads the training folder only, never a test part.
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
from sscild.external.screens import paired_gain
from sscild.external.slices import default_train_dir, read_slice_folder
from sscild.model.loading import load_fold_model

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
WEIGHTS = (0.7, 1.0, 1.4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv_dir", type=Path, help="a cross-validation folder: splits.json and fold_<k>/model_final.pt")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--train-dir", type=Path, default=None)
    ap.add_argument("--check", default=None, help="T,W: score this decision only, against the most probable class")
    ap.add_argument("--with", dest="others", type=Path, nargs="*", default=[],
                    help="other cross-validation folders (same splits) whose fold models are averaged in")
    args = ap.parse_args(argv)
    folds = [int(k) for k in args.folds.split(",")]
    train = read_slice_folder(args.train_dir or default_train_dir(), what="training folder")
    splits = json.loads((args.cv_dir / "splits.json").read_text())
    for other in args.others:
        if json.loads((other / "splits.json").read_text()) != splits:
            ap.error(f"{other} has other folds than {args.cv_dir}")
    probs, fold_of = {}, {}
    for k in folds:
        held = {s: train[s] for s in splits[k]["val"]}
        runs = [predict_slices(load_fold_model(d / f"fold_{k}" / "model_final.pt")[0], held, external_profile("cpu"),
                               return_probs=True) for d in (args.cv_dir, *args.others)]
        probs |= {s: np.mean([r[s] for r in runs], axis=0) for s in held}
        fold_of |= {s: k for s in held}
    if args.check:
        t, w = (float(v) for v in args.check.split(","))
        base, new = (score_slices({s: decide(p, *d) for s, p in probs.items()}, train).set_index("slice_id")
                     for d in ((None, 1.0), (t, w)))
        g = paired_gain(new, base)
        print(f"{1 + len(args.others)} model(s) per fold, {len(probs)} slices: most probable class GGO "
              f"{base.dice_ggo.mean():.4f}, consolidation {base.dice_consolidation.mean():.4f}; threshold {t}, "
              f"weight {w}: GGO {new.dice_ggo.mean():.4f}, consolidation {new.dice_consolidation.mean():.4f}")
        print("paired gain " + ", ".join(f"{n} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for n, (m, lo, hi) in g.items()))
        return 0
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
