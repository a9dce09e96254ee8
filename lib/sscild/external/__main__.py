"""The external check's command line: ``python -m sscild.external run|search TRAIN_DIR OUT_DIR ...``.

``run``: cross-validation on the training folder (and, with ``--test-dir``, the test part) ->
``OUT_DIR/summary.json`` (:func:`sscild.external.runs.run_external`); ``make external`` runs it, and
the appendix reads what it wrote. ``search``: cross-validate the
recipe variants on the training folder only (:func:`sscild.external.search.search_recipes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sscild.errors import InputError
from sscild.external.runs import run_external
from sscild.external.search import SEARCH_VARIANTS, search_recipes

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.external", description="External check on real CT slices.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="cross-validation (and test) -> OUT/summary.json")
    r.add_argument("train_dir", type=Path)
    r.add_argument("out_dir", type=Path)
    r.add_argument("--test-dir", type=Path, default=None)
    r.add_argument("--profile", default="cpu")
    r.add_argument("--unlabelled-dir", type=Path, default=None, help="unlabelled slices (images/ only)")
    r.add_argument("--jobs", type=int, default=None,
                   help="networks trained at once (default: side by side on one thread each on a CPU, one at a time on a GPU)")
    s = sub.add_parser("search", help="cross-validate the recipe variants (training folder only)")
    s.add_argument("train_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    s.add_argument("--folds", nargs="*", type=int, default=None, help="screen on these folds only (default: all)")
    s.add_argument("--unlabelled-dir", type=Path, default=None, help="unlabelled slices for semi-supervised variants")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            summ = run_external(args.train_dir, args.out_dir, test_dir=args.test_dir, profile=args.profile,
                                unlabelled_dir=args.unlabelled_dir, jobs=args.jobs)
            print(json.dumps({k: summ[k] for k in ("cv", "test")}, indent=2, default=str))
        else:
            v = SEARCH_VARIANTS if not args.only else {k: SEARCH_VARIANTS[k] for k in args.only}
            print(search_recipes(args.train_dir, args.out_dir, v, folds=args.folds,
                                 unlabelled_dir=args.unlabelled_dir).to_string())
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
