"""Patient-level bootstrap confidence intervals, and the checks of per-patient values they rest on.

Every interval of :mod:`sscild.evaluation.stats`, :mod:`sscild.evaluation.agreement` and
:mod:`sscild.evaluation.staging` that resamples patients goes through :func:`bootstrap_ci`:
:func:`scipy.stats.bootstrap` with ``paired=True`` (a resample draws whole patients, all their values
together), BCa, seeded with an explicit integer, so repeated calls give identical numbers. When BCa
cannot be computed (a degenerate bootstrap distribution, e.g. a perfectly monotone toy sample, or
resamples on which the statistic is undefined), the percentile interval of the defined resamples is
reported instead, and the method says so.

Inputs are one value per patient, in the same patient order, NaN where a value is missing
(:func:`as_float_1d`, :func:`same_length`); :func:`complete_patients` keeps the patients with every value.

Example:
    >>> n, (x, y) = complete_patients({"x": [1, 2, None, 4, 5], "y": [2, 1, 3, 5, 4]},
    ...                               n_resamples=200, confidence_level=0.95, seed=0)
    >>> n, x.tolist()
    (4, [1.0, 2.0, 4.0, 5.0])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["MIN_N", "as_float_1d", "same_length", "check_resampling", "complete_patients", "bootstrap_ci"]

MIN_N = 4
"""Fewest complete patients for which a correlation (and its bootstrap) is reported."""


def as_float_1d(values, name: str) -> np.ndarray:
    """``values`` as a 1-D float array (None/NA become NaN), or a ValueError naming ``name``."""
    if isinstance(values, pd.DataFrame):
        raise ValueError(f"{name}: expected one column of values, got a DataFrame; pass df[column].")
    if isinstance(values, pd.Series):
        if not (pd.api.types.is_numeric_dtype(values) or values.isna().all()):
            raise ValueError(
                f"{name}: column {values.name!r} is not numeric (dtype {values.dtype}); "
                "convert it to numbers first (e.g. pd.to_numeric)."
            )
        values = values.to_numpy(dtype=float, na_value=np.nan)
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: values are not numeric; pass numbers (missing values as NaN or None)."
        ) from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got an array of shape {arr.shape}.")
    return arr


def same_length(arrays: dict[str, np.ndarray]) -> None:
    """Raise a ValueError naming each input's length unless all have one value per patient."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(
            f"Inputs differ in length ({desc}); pass one value per patient, in the same order, "
            "with NaN where a value is missing."
        )


def check_resampling(n_resamples, confidence_level, seed) -> None:
    """Raise a ValueError unless the bootstrap settings are a positive count, a level in (0, 1), a seed >= 0."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    if not (isinstance(confidence_level, (int, float, np.floating)) and 0.0 < confidence_level < 1.0):
        raise ValueError(f"confidence_level must lie strictly between 0 and 1, got {confidence_level!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def complete_patients(values: dict, *, n_resamples, confidence_level, seed) -> tuple[int, list[np.ndarray]]:
    """Check the bootstrap settings and the per-patient values; keep the patients that have every value.

    Args:
        values: name -> one value per patient (the name is used in error messages).
        n_resamples, confidence_level, seed: the bootstrap settings (:func:`check_resampling`).

    Returns:
        ``(number of complete patients, the arrays restricted to them, in the order of values)``.

    Raises:
        ValueError: invalid settings, non-numeric values, or inputs of different length.
    """
    check_resampling(n_resamples, confidence_level, seed)
    arrays = {name: as_float_1d(v, name) for name, v in values.items()}
    same_length(arrays)
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays.values()])
    return int(ok.sum()), [a[ok] for a in arrays.values()]


def bootstrap_ci(
    data: tuple[np.ndarray, ...],
    statistic: Callable,
    *,
    n_resamples: int,
    confidence_level: float,
    seed: int,
) -> tuple[float, float, str]:
    """Paired (patient) bootstrap CI: BCa, else percentile of the defined resamples.

    Returns ``(low, high, method)`` with method ``"BCa"``, ``"percentile"`` or ``"none"``.
    """
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            res = sps.bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                paired=True,
                vectorized=True,
                confidence_level=confidence_level,
                method="BCa",
                rng=rng,
            )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
        return low, high, "BCa"
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    dist = dist[np.isfinite(dist)]
    if dist.size < max(2, n_resamples // 2):
        # More than half the resamples undefined: no interval is honest here.
        return float("nan"), float("nan"), "none"
    alpha = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(dist, [alpha, 1.0 - alpha])
    return float(low), float(high), "percentile"
