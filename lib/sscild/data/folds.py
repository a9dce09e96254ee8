"""Patient-wise, extent-stratified K-fold cross-validation splits (``splits.json``).

The study evaluates with 8-fold cross-validation, patient-wise: every patient is held out exactly
once, and a patient's slices never appear on both sides of a fold. The splits file has the shape of
nnU-Net v2's ``splits_final.json`` -- a JSON list with one ``{"train": [...], "val": [...]}`` object
per fold -- so the same folds can be reused in nnU-Net unchanged.

Naming: as in nnU-Net, ``"val"`` is the fold's **held-out test set**: the cases the fold's model is
evaluated on (out-of-fold predictions). Nothing about them is used while training that fold: no
early stopping, no model selection.

Stratification: lesion extent varies widely between SSc-ILD patients, and with 40 patients an
unlucky draw can put all severe cases in one fold. :func:`make_splits` therefore sorts the cases by
extent (e.g. lesion % of lung), cuts the sorted list into consecutive groups of ``k`` cases
(quantile groups; the one incomplete group, if any, sits in the middle of the range), and deals each
group across the ``k`` folds in a seeded random order. Every fold gets one case of each group: fold
sizes differ by at most one and each fold spans mild to severe disease.

Example:
    >>> splits = make_splits([f"case_{i:03d}" for i in range(40)], k=8, seed=0)
    >>> len(splits), len(splits[0]["val"]), len(splits[0]["train"])
    (8, 5, 35)
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sscild.paths import write_json

__all__ = ["make_splits", "validate_splits", "write_splits", "read_splits", "fold_of"]


def make_splits(case_ids: Sequence[str], *, strata: Mapping[str, float] | None = None, k: int = 8,
                seed: int = 0) -> list[dict]:
    """Patient-wise K-fold splits, stratified by a per-case score.

    Args:
        case_ids: the cases (unique strings, one per patient).
        strata: optional mapping case id -> score (e.g. lesion % of lung). Cases with similar scores
            go to different folds. Without it the split is a plain seeded shuffle.
        k: number of folds, 2 <= k <= number of cases (k == number of cases is leave-one-out).
        seed: random seed; the same inputs and seed give the same splits, whatever the order of
            ``case_ids``.

    Returns:
        ``k`` dicts ``{"train": [...], "val": [...]}`` (ids sorted); ``"val"`` is the fold's held-out
        test set (nnU-Net's naming). Every case is in exactly one ``"val"``.

    Raises:
        ValueError: duplicate or non-string ids, k out of range, or strata missing/non-finite for
            some cases.

    Example:
        >>> s = make_splits(["a", "b", "c", "d"], strata={"a": 0, "b": 5, "c": 1, "d": 9}, k=2)
        >>> sorted(len(f["val"]) for f in s)
        [2, 2]
    """
    ids = list(case_ids)
    bad = [c for c in ids if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"case ids must be non-empty strings, got {bad[:5]!r}; pass the cohort's case ids.")
    dup = sorted(c for c, m in Counter(ids).items() if m > 1)
    if dup:
        raise ValueError(f"duplicate case ids {dup}: each patient must appear once (patient-wise splits).")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (number of folds), got {k!r}")
    n = len(ids)
    if k > n:
        raise ValueError(f"k={k} folds need at least {k} cases, got {n}; lower the number of folds "
                         f"(profile num_folds) or add cases.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    ids = sorted(ids)  # independent of the caller's order
    if strata is None:
        score = np.zeros(n)
    else:
        missing = [c for c in ids if c not in strata]
        if missing:
            raise ValueError(f"strata has no value for cases {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}; give every case a score or pass strata=None.")
        score = np.array([float(strata[c]) for c in ids])
        nonfinite = [c for c, v in zip(ids, score) if not math.isfinite(v)]
        if nonfinite:
            raise ValueError(f"strata is NaN/infinite for cases {nonfinite[:10]}; give them a finite score "
                             "(e.g. 0 for no lesion) or leave them out.")
    rng = np.random.default_rng(int(seed))
    # sort by score, ties broken by a seeded random key
    order = np.lexsort((rng.random(n), score))
    n_full, rest = divmod(n, k)
    # groups of k consecutive ranks; the incomplete group (rest cases) in the middle of the range
    sizes = [k] * (n_full // 2) + ([rest] if rest else []) + [k] * (n_full - n_full // 2)
    folds: list[list[str]] = [[] for _ in range(k)]
    start = 0
    for size in sizes:
        group = order[start:start + size]
        start += size
        # a seeded random fold order per group; the incomplete group goes to a seeded choice of folds
        for idx, f in zip(group, rng.permutation(k)[:size]):
            folds[f].append(ids[idx])
    return [{"train": sorted(c for j, fold in enumerate(folds) if j != i for c in fold), "val": sorted(folds[i])}
            for i in range(k)]


def validate_splits(splits, case_ids: Sequence[str] | None = None, *, source: str = "splits") -> list[dict]:
    """Check a splits list and return it normalised (ids sorted).

    Checks: a list of ``{"train": [...], "val": [...]}``; no case in train and val of one fold; each
    case in exactly one val fold; each fold's train + val covers all cases; and, when ``case_ids`` is
    given, the splits cover exactly those cases.

    Raises:
        ValueError: naming ``source``, the fold and the cases concerned.

    Example:
        >>> validate_splits([{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])[0]
        {'train': ['b'], 'val': ['a']}
    """
    fix = "regenerate it with sscild.data.folds.make_splits (delete the file and re-run the data stage, `make data`)"
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"{source}: expected a non-empty JSON list of folds, got {type(splits).__name__}; {fix}.")
    out = []
    for i, fold in enumerate(splits):
        if not isinstance(fold, dict) or set(fold) - {"train", "val"} or not {"train", "val"} <= set(fold):
            raise ValueError(f"{source}: fold {i} must be an object with exactly 'train' and 'val' lists; {fix}.")
        tr, va = fold["train"], fold["val"]
        if not isinstance(tr, list) or not isinstance(va, list) or not all(isinstance(c, str) for c in tr + va):
            raise ValueError(f"{source}: fold {i}: 'train' and 'val' must be lists of case-id strings; {fix}.")
        if len(set(tr)) != len(tr) or len(set(va)) != len(va):
            raise ValueError(f"{source}: fold {i} lists a case twice; {fix}.")
        both = sorted(set(tr) & set(va))
        if both:
            raise ValueError(f"{source}: fold {i} has cases in both train and val (held-out test): {both}; {fix}.")
        out.append({"train": sorted(tr), "val": sorted(va)})
    fold_of(out, source=source)
    all_cases = {c for f in out for c in f["val"]}
    for i, f in enumerate(out):
        if set(f["train"]) | set(f["val"]) != all_cases:
            odd = sorted(all_cases ^ (set(f["train"]) | set(f["val"])))
            raise ValueError(f"{source}: fold {i} does not cover the same cases as the val folds together "
                             f"(differs in {odd[:10]}); {fix}.")
    if case_ids is not None:
        want = set(case_ids)
        if want != all_cases:
            extra, missing = sorted(all_cases - want), sorted(want - all_cases)
            raise ValueError(f"{source} does not match the cohort: cases only in the splits {extra[:10]}, "
                             f"cases only in the cohort {missing[:10]}; {fix}.")
    return out


def write_splits(path: str | os.PathLike, splits) -> Path:
    """Validate and write splits as nnU-Net ``splits_final.json`` (ids sorted; atomic write).

    Example:
        >>> import tempfile
        >>> path = write_splits(Path(tempfile.mkdtemp()) / "splits.json", make_splits(["a", "b", "c", "d"], k=2))
        >>> path.name
        'splits.json'
    """
    path = Path(path)
    return write_json(path, validate_splits(splits, source=str(path)))


def read_splits(path: str | os.PathLike, case_ids: Sequence[str] | None = None) -> list[dict]:
    """Read and validate a ``splits.json`` / nnU-Net ``splits_final.json``.

    Args:
        path: the file.
        case_ids: when given, the splits must cover exactly these cases.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not valid JSON or not a valid patient-wise split.

    Example:
        >>> import tempfile
        >>> path = write_splits(Path(tempfile.mkdtemp()) / "splits.json", make_splits(["a", "b", "c", "d"], k=2))
        >>> [len(fold["val"]) for fold in read_splits(path, ["a", "b", "c", "d"])]
        [2, 2]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: create it with sscild.data.folds.write_splits "
                                "(the data stage, `make data`).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run the data stage (`make data`).") from None
    return validate_splits(data, case_ids, source=str(path))


def fold_of(splits, *, source: str = "splits") -> dict[str, int]:
    """Map each case id to the index of the fold that holds it out (its ``"val"`` fold).

    Raises:
        ValueError: a case is held out by more than one fold.

    Example:
        >>> fold_of([{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])
        {'a': 0, 'b': 1}
    """
    out: dict[str, int] = {}
    for i, fold in enumerate(splits):
        for c in fold["val"]:
            if c in out:
                raise ValueError(f"{source}: case {c} is held out by folds {out[c]} and {i}; each case must be "
                                 "in exactly one val fold. Regenerate the splits with sscild.data.folds.make_splits.")
            out[c] = i
    return out
