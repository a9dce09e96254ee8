"""Extent staging (Goh et al. 2008) and the agreement of the model's stage with the reference stage.

A patient's disease is *limited* when lesions take at most 20 % of the lung, *extensive* above
(:func:`extent_stage`). :func:`staging_agreement` tabulates the model's stage against the reference's
and gives Cohen's kappa with a patient bootstrap interval (:mod:`sscild.evaluation.bootstrap`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from statsmodels.stats.inter_rater import cohens_kappa

from sscild.evaluation.bootstrap import MIN_N, as_float_1d, bootstrap_ci, check_resampling, same_length

__all__ = ["EXTENT_STAGES", "extent_stage", "staging_agreement", "wilson_interval", "extensive_accuracy",
           "cutoff_band"]

EXTENT_STAGES = ("limited", "extensive")
"""The two extent stages of Goh et al. (2008), in table order."""


def extent_stage(percent_lung, *, threshold: float = 20.0) -> np.ndarray:
    """Goh et al. (2008) extent stage from the percentage of lung involved.

    ``<= threshold`` is ``"limited"``, ``> threshold`` is ``"extensive"``; a missing value gives
    ``None``. The 20 % cut-off of the original staging system is the default.

    Args:
        percent_lung: disease extent in percent of lung volume (0-100), one per patient.
        threshold: the cut-off in percent.

    Returns:
        A 1-D object array of ``"limited"``, ``"extensive"`` or ``None``.

    Raises:
        ValueError: a non-numeric input, a value outside [0, 100], or a bad threshold.

    Example:
        >>> extent_stage([5.0, 20.0, 20.1, float("nan")]).tolist()
        ['limited', 'limited', 'extensive', None]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not (
        0.0 <= float(threshold) <= 100.0
    ):
        raise ValueError(f"threshold must be a percentage in [0, 100], got {threshold!r}.")
    p = as_float_1d(percent_lung, "percent_lung")
    bad = np.isfinite(p) & ((p < 0) | (p > 100))
    if np.isinf(p).any() or bad.any():
        raise ValueError(
            f"percent_lung must be percentages in [0, 100]; got {p[bad | np.isinf(p)][:5].tolist()}. "
            "Pass 100 * lesion volume / lung volume (a fraction in [0, 1] would stage everyone limited)."
        )
    out = np.full(p.shape, None, dtype=object)
    known = np.isfinite(p)
    out[known & (p <= threshold)] = EXTENT_STAGES[0]
    out[known & (p > threshold)] = EXTENT_STAGES[1]
    return out


def _kappa_stat_factory(k: int) -> Callable:
    def _kappa_stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        a = np.moveaxis(np.asarray(a), axis, -1)
        b = np.moveaxis(np.asarray(b), axis, -1)
        po = (a == b).mean(axis=-1)
        pe = sum((a == c).mean(axis=-1) * (b == c).mean(axis=-1) for c in range(k))
        with np.errstate(invalid="ignore", divide="ignore"):
            kappa = (po - pe) / (1.0 - pe)
        return np.where(np.isclose(pe, 1.0), np.nan, kappa)

    return _kappa_stat


def staging_agreement(
    stage_pred, stage_ref, *, seed: int = 0, n_resamples: int = 2000, confidence_level: float = 0.95
) -> dict:
    """Agreement of the model's extent stage with the reference stage.

    Patients missing either stage are dropped. ``kappa`` is Cohen's (unweighted) kappa from
    statsmodels' ``cohens_kappa`` on the confusion table; its interval is a patient bootstrap (BCa,
    percentile fallback, resamples where kappa is undefined because both raters use one category
    are dropped). Categories are ``("limited", "extensive")`` when the stages are those, otherwise
    the sorted union of the labels seen; absent categories still get a row and a column.

    Args:
        stage_pred: the model's stage per patient (e.g. from :func:`extent_stage`).
        stage_ref: the reference stage per patient.
        seed, n_resamples, confidence_level: of the bootstrap.

    Returns:
        ``{"table", "kappa", "ci_low", "ci_high", "ci_method", "percent_agreement", "n"}`` where
        ``table`` is a DataFrame (rows: reference, columns: predicted) of patient counts and
        ``percent_agreement`` is in percent.

    Example:
        >>> a = staging_agreement(["limited", "extensive", "limited", "limited"],
        ...                       ["limited", "extensive", "extensive", "limited"], n_resamples=200)
        >>> a["percent_agreement"], round(a["kappa"], 2)
        (75.0, 0.5)
    """
    check_resampling(n_resamples, confidence_level, seed)
    pred = pd.Series(list(stage_pred) if not isinstance(stage_pred, pd.Series) else stage_pred.tolist(), dtype=object)
    ref = pd.Series(list(stage_ref) if not isinstance(stage_ref, pd.Series) else stage_ref.tolist(), dtype=object)
    same_length({"stage_pred": pred, "stage_ref": ref})
    ok = (~pred.isna() & ~ref.isna()).to_numpy()
    pred, ref = pred[ok].astype(str).to_numpy(), ref[ok].astype(str).to_numpy()
    seen = set(pred) | set(ref)
    cats = list(EXTENT_STAGES) if seen <= set(EXTENT_STAGES) else sorted(seen)
    code = {c: i for i, c in enumerate(cats)}
    a = np.array([code[v] for v in ref], dtype=int)
    b = np.array([code[v] for v in pred], dtype=int)
    n = int(len(a))
    counts = np.zeros((len(cats), len(cats)), dtype=int)
    np.add.at(counts, (a, b), 1)
    table = pd.DataFrame(
        counts,
        index=pd.Index(cats, name="reference"),
        columns=pd.Index(cats, name="predicted"),
    )
    out = {
        "table": table,
        "kappa": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "ci_method": "none",
        "percent_agreement": float("nan"),
        "n": n,
    }
    if n == 0:
        return out
    out["percent_agreement"] = float(100.0 * np.trace(counts) / n)
    kappa_stat = _kappa_stat_factory(len(cats))
    if not np.isfinite(kappa_stat(a, b)):
        return out  # both raters use a single category: kappa undefined
    with warnings.catch_warnings():
        # statsmodels divides by a zero standard error for perfect agreement; kappa itself is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        out["kappa"] = float(cohens_kappa(counts, return_results=True).kappa)
    if n >= MIN_N:
        out["ci_low"], out["ci_high"], out["ci_method"] = bootstrap_ci(
            (a, b), kappa_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed
        )
    return out


def wilson_interval(k: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion ``k / n`` (``(nan, nan)`` when ``n`` is 0).

    Example:
        >>> [round(v, 3) for v in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    ph = k / n
    den = 1 + z * z / n
    mid = (ph + z * z / (2 * n)) / den
    half = z * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (float(mid - half), float(mid + half))


def extensive_accuracy(stage_pred, stage_ref) -> dict:
    """Sensitivity, specificity, PPV and NPV of the predicted stage for *extensive* disease, each with its
    Wilson 95 % interval and its counts (the reference stage is the truth).

    Example:
        >>> d = extensive_accuracy(["extensive", "limited", "extensive", "limited"],
        ...                        ["extensive", "extensive", "limited", "limited"])
        >>> d["sensitivity"]["value"], d["specificity"]["k"], d["specificity"]["n"]
        (0.5, 1, 2)
    """
    pred = np.asarray(stage_pred) == "extensive"
    ref = np.asarray(stage_ref) == "extensive"
    out = {}
    for name, k, n in (("sensitivity", (pred & ref).sum(), ref.sum()), ("specificity", (~pred & ~ref).sum(), (~ref).sum()),
                       ("ppv", (pred & ref).sum(), pred.sum()), ("npv", (~pred & ~ref).sum(), (~pred).sum())):
        lo, hi = wilson_interval(int(k), int(n))
        out[name] = {"value": float(k / n) if n else float("nan"), "ci_low": lo, "ci_high": hi, "k": int(k), "n": int(n)}
    return out


def cutoff_band(predicted_pct, *, loa_low: float, loa_high: float, threshold: float = 20.0) -> dict:
    """Where the Bland-Altman limits make the stage uncertain: the band of predicted extent within which the
    reference may lie on the other side of the cut-off, and how many patients fall in it.

    With limits of agreement (predicted - reference) from ``loa_low`` to ``loa_high`` percentage points, a
    patient with predicted extent ``x`` has a reference between ``x - loa_high`` and ``x - loa_low``: the stage
    is uncertain when that range holds ``threshold``, i.e. ``threshold + loa_low <= x <= threshold + loa_high``.

    Example:
        >>> cutoff_band([5, 15, 25, 40], loa_low=-8.0, loa_high=10.0)
        {'band_low': 12.0, 'band_high': 30.0, 'in_band': 2, 'n': 4}
    """
    x = np.asarray(predicted_pct, dtype=float)
    x = x[np.isfinite(x)]
    lo, hi = threshold + float(loa_low), threshold + float(loa_high)
    return {"band_low": lo, "band_high": hi, "in_band": int(((x >= lo) & (x <= hi)).sum()), "n": int(x.size)}
