"""Scores of predicted slices: Dice per slice and class, and their summary with bootstrap intervals.

Per slice and class, Dice with the study's empty-reference policy (a slice without the class in its
reference is excluded from that class's mean, and counted); also for **lesion**, both classes as one
(any lesion label against any lesion label), the task of the single-class rows of the literature. *Pooled* Dice sums the intersections
and sizes over all slices, 2 sum|P n R| / sum(|P| + |R|), so large lesions weigh more and false
positives on slices without the class count. 95 % intervals: BCa bootstrap over slices.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from sscild.errors import InputError
from sscild.evaluation.overlap import dice
from sscild.evaluation.metrics import summarize
from sscild.external.slices import CLASS_NAMES, SliceImage

__all__ = ["score_slices", "summarize_scores", "LESION"]

LESION = "lesion"
"""The name of both lesion classes scored as one (``dice_lesion`` ...)."""


def score_slices(preds: Mapping[str, np.ndarray], slices: Mapping[str, SliceImage]) -> pd.DataFrame:
    """One row per slice: Dice per class (NaN when the class is absent from the reference), and the
    pixel counts pooled Dice needs (``inter_*``, ``pred_*``, ``ref_*``).

    Example:
        >>> from pathlib import Path
        >>> ref = np.array([[0, 1, 1, 2]], np.uint8); pred = np.array([[1, 1, 0, 0]], np.uint8)
        >>> s = SliceImage("a", np.zeros_like(ref), ref, Path("a.jpg"), Path("a.png"))
        >>> r = score_slices({"a": pred}, {"a": s}).iloc[0]
        >>> float(r["dice_ggo"]), float(r["dice_consolidation"]), int(r["inter_ggo"])
        (0.5, 0.0, 1)
    """
    rows = []
    for sid, pred in preds.items():
        s = slices[sid]
        if s.label is None:
            raise InputError(f"slice {sid}: no reference label to score against ({s.image_path}).")
        if pred.shape != s.label.shape:
            raise ValueError(f"slice {sid}: prediction is {pred.shape}, reference {s.label.shape}; map the prediction "
                             "back to the slice's size (GridMap.probs_from_grid) before scoring.")
        row = {"slice_id": sid, "width": s.shape[0], "height": s.shape[1]}
        for name, (p, r) in _masks(pred, s.label):
            row[f"dice_{name}"] = dice(p, r, empty="nan")
            row[f"inter_{name}"] = int(np.count_nonzero(p & r))
            row[f"pred_{name}"] = int(np.count_nonzero(p))
            row[f"ref_{name}"] = int(np.count_nonzero(r))
        rows.append(row)
    return pd.DataFrame(rows)


def _masks(pred: np.ndarray, label: np.ndarray):
    """(name, predicted mask, reference mask) of each class, then of lesion (every class together)."""
    for c, name in enumerate(CLASS_NAMES, start=1):
        yield name, (pred == c, label == c)
    yield LESION, (pred > 0, label > 0)


def _pooled_ci(inter: np.ndarray, sizes: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    from scipy import stats

    if inter.size < 2 or sizes.sum() == 0:
        return float("nan"), float("nan")

    def stat(i, s, axis=-1):
        tot = s.sum(axis=axis)
        return np.where(tot > 0, 2.0 * i.sum(axis=axis) / np.maximum(tot, 1), np.nan)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = stats.bootstrap((inter, sizes), stat, paired=True, vectorized=True, n_resamples=int(n_boot),
                                  method="BCa", confidence_level=0.95, random_state=np.random.default_rng(seed))
        except Exception:  # noqa: BLE001 - degenerate BCa (e.g. constant ratio): percentile instead
            res = stats.bootstrap((inter, sizes), stat, paired=True, vectorized=True, n_resamples=int(n_boot),
                                  method="percentile", confidence_level=0.95, random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize_scores(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-slice mean Dice and pooled Dice of each class, with 95 % bootstrap intervals over slices.

    Returns a flat dict, for each class and, when ``df`` scores it, for ``lesion``: ``dice_<class>``
    (mean over slices with the class in the reference),
    ``dice_<class>_ci`` ([low, high], BCa), ``n_<class>`` / ``n_excluded_<class>``,
    ``pooled_dice_<class>`` and ``pooled_dice_<class>_ci``, and ``n_slices``.

    Example:
        >>> df = pd.DataFrame({"dice_ggo": [0.5, 1.0], "inter_ggo": [1, 2], "pred_ggo": [2, 2], "ref_ggo": [2, 2],
        ...                    "dice_consolidation": [np.nan, 0.0], "inter_consolidation": [0, 0],
        ...                    "pred_consolidation": [3, 0], "ref_consolidation": [0, 1]})
        >>> s = summarize_scores(df, n_boot=200)
        >>> s["dice_ggo"], s["pooled_dice_ggo"], s["n_excluded_consolidation"], s["pooled_dice_consolidation"]
        (0.75, 0.75, 1, 0.0)
    """
    cols = [f"dice_{n}" for n in CLASS_NAMES]
    desc = summarize(df[cols], columns=cols, n_boot=max(100, int(n_boot)), seed=seed).set_index("metric")
    names = list(CLASS_NAMES)
    if f"dice_{LESION}" in df:  # summarised on its own, so the classes' intervals are those of the classes alone
        one = [f"dice_{LESION}"]
        desc = pd.concat([desc, summarize(df[one], columns=one, n_boot=max(100, int(n_boot)), seed=seed)
                          .set_index("metric")])
        names.append(LESION)
    out: dict = {"n_slices": int(len(df))}
    for n in names:
        d = desc.loc[f"dice_{n}"]
        inter = df[f"inter_{n}"].to_numpy(float)
        sizes = (df[f"pred_{n}"] + df[f"ref_{n}"]).to_numpy(float)
        pooled = float(2 * inter.sum() / sizes.sum()) if sizes.sum() > 0 else float("nan")
        out |= {
            f"dice_{n}": float(d["mean"]),
            f"dice_{n}_ci": [float(d["ci_low"]), float(d["ci_high"])],
            f"dice_{n}_median": float(d["median"]),
            f"n_{n}": int(d["n"]),
            f"n_excluded_{n}": int(d["n_excluded"]),
            f"pooled_dice_{n}": pooled,
            f"pooled_dice_{n}_ci": list(_pooled_ci(inter, sizes, n_boot, seed)),
        }
    out["ci_method"] = (f"95% BCa bootstrap over slices, {int(n_boot)} resamples, seed {seed} (per-slice mean: "
                        "sscild.evaluation.metrics.summarize; pooled: paired resampling of intersections and sizes)")
    return out
