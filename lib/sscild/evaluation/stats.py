"""Statistics of the Clinical correlation chapter: rank correlations with confidence intervals,
multiplicity correction, partial (covariate-adjusted) correlation, the paired comparison of a
model's correlation with the reference labels' correlation, and extent staging with agreement.

Everything here is a pure function of its inputs. Randomness (the bootstrap) is driven by an
explicit integer ``seed``, so repeated calls give identical numbers. SciPy and statsmodels do the
maths where they offer it; what is written here is the glue: pairwise deletion, the vectorised
bootstrap statistics, the rank-residual partial correlation and the fallbacks for degenerate cases.

Why these choices:

* **Spearman**, as in the study: lesion volumes are skewed and lung-function relations monotone
  rather than linear.
* **BCa bootstrap over patients** for the confidence intervals: no normal approximation of the
  Fisher-z kind is needed for a rank statistic, and BCa corrects the bias and skew of the
  bootstrap distribution of a bounded coefficient. When BCa cannot be computed (a degenerate
  bootstrap distribution, e.g. a perfectly monotone toy sample, or resamples on which the
  coefficient is undefined), the percentile interval of the defined resamples is reported instead
  and the dictionary says so in ``ci_method``.
* **Holm** over the whole grid of (predictor, outcome) pairs: it controls the family-wise error
  rate without assuming independence between tests, which correlated lung-function outcomes
  (FEV1, FVC, FEV1/FVC, DLCO) would violate.
* **Partial Spearman** by residualising ranks: the usual rank-based adjustment for age and sex.

Example:
    >>> import numpy as np
    >>> from sscild.evaluation.stats import spearman
    >>> x = np.arange(10.0)
    >>> r = spearman(x, -x ** 3, n_resamples=200)
    >>> round(r["rho"], 6), r["n"], r["ci_method"]
    (-1.0, 10, 'percentile')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.multitest import multipletests

__all__ = [
    "spearman",
    "correlation_grid",
    "partial_spearman",
    "partial_spearman_ci",
    "paired_difference",
    "bland_altman_regression",
    "rho_difference",
    "holm",
    "extent_stage",
    "staging_agreement",
    "EXTENT_STAGES",
    "MIN_N",
]

MIN_N = 4
"""Fewest complete patients for which a correlation (and its bootstrap) is reported."""

EXTENT_STAGES = ("limited", "extensive")
"""The two extent stages of Goh et al. (2008), in table order."""


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _as_float_1d(values, name: str) -> np.ndarray:
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


def _same_length(arrays: dict[str, np.ndarray]) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(
            f"Inputs differ in length ({desc}); pass one value per patient, in the same order, "
            "with NaN where a value is missing."
        )


def _check_resampling(n_resamples, confidence_level, seed) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    if not (isinstance(confidence_level, (int, float, np.floating)) and 0.0 < confidence_level < 1.0):
        raise ValueError(f"confidence_level must lie strictly between 0 and 1, got {confidence_level!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _require_columns(df: pd.DataFrame, columns: Sequence[str], role: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"Expected a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"Unknown {role} column(s) {missing}; the table has: {', '.join(map(str, df.columns))}. "
            "Check the spelling or add the column to the clinical/volume table."
        )


def _as_list(names, role: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{role} list {names} repeats a column; name each column once.")
    return names


# --------------------------------------------------------------------------------------------
# vectorised statistics for scipy.stats.bootstrap (they receive arrays of shape (..., n))
# --------------------------------------------------------------------------------------------


def _pearson_last_axis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    return np.clip(r, -1.0, 1.0)


def _spearman_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along ``axis`` (average ranks for ties, as scipy.stats.spearmanr)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    return _pearson_last_axis(sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1))


def _spearman_diff_stat(xp: np.ndarray, xr: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return _spearman_stat(xp, y, axis=axis) - _spearman_stat(xr, y, axis=axis)


def _partial_stat(x: np.ndarray, y: np.ndarray, *covs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Partial Spearman rho along ``axis`` (ranks of x and y residualised on an intercept and the
    covariates' ranks by least squares; the residuals' Pearson correlation), for stacks of samples."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    cols = [np.ones_like(x)] + [sps.rankdata(np.moveaxis(np.asarray(c, dtype=float), axis, -1), axis=-1) for c in covs]
    design = np.stack(cols, axis=-1)                                    # (..., n, k + 1)
    pinv = np.linalg.pinv(design)                                       # (..., k + 1, n)

    def resid(v):
        r = sps.rankdata(v, axis=-1)
        beta = np.einsum("...kn,...n->...k", pinv, r)
        return r - np.einsum("...nk,...k->...n", design, beta)

    with np.errstate(invalid="ignore", divide="ignore"):
        return _pearson_last_axis(resid(x), resid(y))


def _mean_diff_stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(np.asarray(a) - np.asarray(b), axis=axis)


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


def _bootstrap_ci(
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


def _nan_result(n: int, keys: Sequence[str]) -> dict:
    out = {k: float("nan") for k in keys}
    out["n"] = int(n)
    out["ci_method"] = "none"
    return out


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def spearman(x, y, *, n_resamples: int = 2000, confidence_level: float = 0.95, seed: int = 0) -> dict:
    """Spearman rank correlation with a patient-level bootstrap confidence interval.

    Patients with a missing value in ``x`` or ``y`` are dropped (pairwise deletion). ``rho`` and
    its two-sided ``p`` come from :func:`scipy.stats.spearmanr` on the complete pairs. The interval
    is :func:`scipy.stats.bootstrap` over patients (``paired=True``, BCa, seeded); if BCa is
    degenerate the percentile interval of the defined resamples is returned and ``ci_method``
    says ``"percentile"``. With fewer than :data:`MIN_N` complete pairs, or a constant input,
    every number is NaN and ``n`` is still reported.

    Args:
        x, y: one value per patient (sequences, arrays or Series of the same length).
        n_resamples: bootstrap resamples.
        confidence_level: of the interval, e.g. 0.95.
        seed: seed of the bootstrap generator.

    Returns:
        ``{"rho", "p", "ci_low", "ci_high", "n", "ci_method"}``.

    Raises:
        ValueError: inputs of different length, non-numeric, or invalid settings.

    Example:
        >>> r = spearman([1, 2, 3, 4, 5, None], [2, 1, 4, 3, 5, 7], n_resamples=200)
        >>> round(r["rho"], 2), r["n"]
        (0.8, 5)
    """
    _check_resampling(n_resamples, confidence_level, seed)
    x = _as_float_1d(x, "x")
    y = _as_float_1d(y, "y")
    _same_length({"x": x, "y": y})
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    keys = ("rho", "p", "ci_low", "ci_high")
    if n < MIN_N or np.ptp(x) == 0 or np.ptp(y) == 0:
        return _nan_result(n, keys)
    res = sps.spearmanr(x, y)
    low, high, method = _bootstrap_ci(
        (x, y), _spearman_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed
    )
    return {
        "rho": float(res.statistic),
        "p": float(res.pvalue),
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "ci_method": method,
    }


def _numeric_covariate(s: pd.Series) -> pd.Series:
    """A covariate column as numbers: numeric as is; a two-level column (e.g. sex) as 0/1."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float)
    levels = sorted(pd.unique(s.dropna()).tolist(), key=str)
    if len(levels) > 2:
        raise ValueError(
            f"Covariate {s.name!r} is not numeric and has {len(levels)} levels {levels[:6]}; only "
            "two-level columns (such as sex) are encoded automatically. Encode it numerically first."
        )
    # Sorted order: which level becomes 1 does not change a partial correlation.
    mapping = {lev: float(i) for i, lev in enumerate(levels)}
    return s.map(mapping).astype(float)


def partial_spearman(df: pd.DataFrame, x: str, y: str, covariates) -> dict:
    """Spearman correlation of ``x`` and ``y`` adjusted for ``covariates`` (e.g. age and sex).

    Method (the rank analogue of the classical partial correlation):

    1. Keep patients with ``x``, ``y`` and every covariate present (listwise deletion).
    2. Encode a two-level non-numeric covariate (sex) as 0/1; other covariates must be numeric.
       Covariates constant over the kept patients carry no information and are left out.
    3. Rank ``x``, ``y`` and each covariate (average ranks for ties).
    4. Regress the ranks of ``x`` and of ``y`` on an intercept and the covariate ranks by ordinary
       least squares (statsmodels ``OLS``) and keep the residuals.
    5. ``rho`` is the Pearson correlation of the two residual vectors; its two-sided p-value comes
       from ``t = rho * sqrt(dof / (1 - rho**2))`` with ``dof = n - 2 - k`` degrees of freedom,
       ``k`` the number of covariates used.

    This equals the partial correlation read from the inverse correlation matrix of the ranks (as
    in pingouin's ``partial_corr(method="spearman")``). With no covariates it reduces to Spearman's
    rho and the p-value of :func:`scipy.stats.spearmanr`.

    Args:
        df: one row per patient.
        x, y: the two column names to correlate.
        covariates: column name(s) to adjust for (may be empty).

    Returns:
        ``{"rho", "p", "n", "k", "dof", "covariates"}`` with ``covariates`` the ones used. With
        ``dof < 1`` or a constant ``x``/``y``, ``rho`` and ``p`` are NaN.

    Raises:
        ValueError: unknown or repeated columns, non-numeric ``x``/``y``, a non-numeric covariate
            with more than two levels.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"v": [1, 2, 3, 4, 5, 6], "f": [2, 1, 4, 3, 6, 5],
        ...                    "age": [1, 3, 2, 4, 6, 5]})
        >>> round(partial_spearman(df, "v", "f", ["age"])["rho"], 4)   # 2 / sqrt(11)
        0.603
    """
    covariates = _as_list(covariates, "covariates")
    _require_columns(df, [x, y], "correlation")
    _require_columns(df, covariates, "covariate")
    overlap = {x, y} & set(covariates)
    if overlap or x == y:
        raise ValueError(
            f"partial_spearman: x={x!r}, y={y!r}, covariates={covariates}: a column cannot be both "
            "correlated and adjusted for, and x must differ from y."
        )
    cols = {x: _as_float_1d(df[x], x), y: _as_float_1d(df[y], y)}
    cov = {c: _numeric_covariate(df[c]).to_numpy(dtype=float, na_value=np.nan) for c in covariates}
    ok = np.isfinite(cols[x]) & np.isfinite(cols[y])
    for v in cov.values():
        ok &= np.isfinite(v)
    n = int(ok.sum())
    xv, yv = cols[x][ok], cols[y][ok]
    used = [c for c in covariates if n > 0 and np.ptp(cov[c][ok]) > 0]
    k = len(used)
    dof = n - 2 - k
    out = {"rho": float("nan"), "p": float("nan"), "n": n, "k": k, "dof": int(dof), "covariates": used}
    if dof < 1 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return out
    design = np.column_stack([np.ones(n)] + [sps.rankdata(cov[c][ok]) for c in used])
    rx = sm.OLS(sps.rankdata(xv), design).fit().resid
    ry = sm.OLS(sps.rankdata(yv), design).fit().resid
    rho = float(_pearson_last_axis(np.asarray(rx), np.asarray(ry)))
    if not np.isfinite(rho):
        return out
    out["rho"] = rho
    if abs(rho) >= 1.0:
        out["p"] = 0.0
    else:
        t = rho * np.sqrt(dof / (1.0 - rho * rho))
        out["p"] = float(2.0 * sps.t.sf(abs(t), dof))
    return out


def partial_spearman_ci(df: pd.DataFrame, x: str, y: str, covariates, *, n_resamples: int = 2000,
                        confidence_level: float = 0.95, seed: int = 0) -> dict:
    """:func:`partial_spearman` with a patient bootstrap confidence interval.

    Each resample draws whole patients (their ``x``, ``y`` and covariates together); the
    coefficient is recomputed on the resample exactly as on the sample (ranks, residualisation,
    correlation) and the interval is BCa, percentile where BCa is degenerate (as :func:`spearman`).

    Returns:
        :func:`partial_spearman`'s dictionary plus ``ci_low``, ``ci_high`` and ``ci_method``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"v": [1, 2, 3, 4, 5, 6, 7, 8], "f": [2, 1, 4, 3, 6, 5, 8, 7],
        ...                    "age": [1, 3, 2, 4, 6, 5, 8, 7]})
        >>> r = partial_spearman_ci(df, "v", "f", ["age"], n_resamples=200)
        >>> r["ci_low"] <= r["rho"] <= r["ci_high"]
        True
    """
    _check_resampling(n_resamples, confidence_level, seed)
    out = partial_spearman(df, x, y, covariates)
    out.update(ci_low=float("nan"), ci_high=float("nan"), ci_method="none")
    if not np.isfinite(out["rho"]) or out["n"] < MIN_N:
        return out
    cols = [x, y, *out["covariates"]]
    data = df[cols].copy()
    for c in out["covariates"]:
        data[c] = _numeric_covariate(df[c])
    data = data.apply(pd.to_numeric, errors="coerce").dropna()
    arrays = tuple(data[c].to_numpy(dtype=float) for c in cols)
    out["ci_low"], out["ci_high"], out["ci_method"] = _bootstrap_ci(
        arrays, _partial_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    return out


def paired_difference(a, b, *, n_resamples: int = 2000, confidence_level: float = 0.95, seed: int = 0) -> dict:
    """Mean of the paired differences ``a - b`` (e.g. network Dice minus baseline Dice per patient)
    with a patient bootstrap interval and the Wilcoxon signed-rank test.

    Patients missing either value are dropped. The interval resamples patients, each carrying both
    of their values (BCa, percentile where BCa is degenerate; seeded). The signed-rank p-value
    (:func:`scipy.stats.wilcoxon`, two-sided) is NaN when every difference is zero.

    Args:
        a, b: one value per patient each, same patients in the same order.
        n_resamples, confidence_level, seed: of the bootstrap.

    Returns:
        ``{"mean_diff", "median_diff", "ci_low", "ci_high", "ci_method", "p_wilcoxon", "n"}``.

    Example:
        >>> d = paired_difference([0.8, 0.7, 0.9, 0.6, 0.75], [0.5, 0.6, 0.6, 0.55, 0.5], n_resamples=200)
        >>> round(d["mean_diff"], 2), d["n"]
        (0.2, 5)
    """
    _check_resampling(n_resamples, confidence_level, seed)
    x = _as_float_1d(a, "a")
    y = _as_float_1d(b, "b")
    _same_length({"a": x, "b": y})
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    out = {"mean_diff": float("nan"), "median_diff": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "ci_method": "none", "p_wilcoxon": float("nan"), "n": n}
    if n == 0:
        return out
    d = x - y
    out["mean_diff"] = float(d.mean())
    out["median_diff"] = float(np.median(d))
    if n < MIN_N:
        return out
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        out.update(ci_low=float(d.mean()), ci_high=float(d.mean()), ci_method="constant")
    else:
        out["ci_low"], out["ci_high"], out["ci_method"] = _bootstrap_ci(
            (x, y), _mean_diff_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(sps.wilcoxon(x, y).pvalue)
    return out


def _ba_regression_fit(m: np.ndarray, d: np.ndarray):
    """(b0, b1, c0, c1): bias line d = b0 + b1 m, and mean absolute residual |r| = c0 + c1 m."""
    X = np.column_stack([np.ones_like(m), m])
    b, *_ = np.linalg.lstsq(X, d, rcond=None)
    r = np.abs(d - X @ b)
    c, *_ = np.linalg.lstsq(X, r, rcond=None)
    return b, c


_HALF_NORMAL = float(np.sqrt(np.pi / 2.0))


def bland_altman_regression(pred, ref, *, at=None, confidence_level: float = 0.95, n_resamples: int = 2000,
                            seed: int = 0) -> dict:
    """Regression-based Bland–Altman limits of agreement, for a bias that changes with the size of
    the measurement (proportional bias).

    Method of Bland & Altman (1999, section 3.2): with ``m = (pred + ref) / 2`` and ``d = pred - ref``,

    1. regress ``d`` on ``m`` by least squares: the bias at ``m`` is ``b0 + b1 m``; ``b1 != 0`` is
       proportional bias (its CI and p from the OLS fit, statsmodels);
    2. regress the absolute residuals ``|r|`` on ``m``: ``c0 + c1 m``; since for a normal residual
       ``E|r| = sd sqrt(2 / pi)``, the residual SD at ``m`` is ``sqrt(pi / 2) (c0 + c1 m)``;
    3. the 95 % limits at ``m`` are ``b0 + b1 m ± 1.96 sqrt(pi / 2) (c0 + c1 m)``.

    Intervals of the bias and of both limits at each point of ``at`` come from a patient bootstrap
    (percentile, seeded): each resample refits both regressions.

    Args:
        pred, ref: paired measurements, one per patient (NaN pairs dropped).
        at: values of ``m`` at which to report the bias and limits (default: the 10th, 50th and
            90th percentiles of ``m``).
        confidence_level, n_resamples, seed: of the intervals.

    Returns:
        ``{"n", "intercept", "slope", "slope_ci_low", "slope_ci_high", "slope_p", "sd_intercept",
        "sd_slope", "at"}`` where ``at`` is a list of ``{"mean", "bias", "bias_ci_low",
        "bias_ci_high", "loa_low", "loa_low_ci_low", "loa_low_ci_high", "loa_high",
        "loa_high_ci_low", "loa_high_ci_high"}``. With fewer than :data:`MIN_N` pairs or a constant
        ``m`` every number is NaN.

    Example:
        >>> r = bland_altman_regression([1, 2, 3, 5, 8], [1, 1.8, 2.6, 4.2, 6.5], n_resamples=200)
        >>> round(r["slope"], 3) > 0, r["n"]
        (True, 5)
    """
    if not (0.0 < float(confidence_level) < 1.0):
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level!r}")
    _check_resampling(n_resamples, confidence_level, seed)
    x = _as_float_1d(pred, "pred")
    y = _as_float_1d(ref, "ref")
    _same_length({"pred": x, "ref": y})
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    m, d = (x + y) / 2.0, x - y
    nan = float("nan")
    keys = ("intercept", "slope", "slope_ci_low", "slope_ci_high", "slope_p", "sd_intercept", "sd_slope")
    out = {"n": n, **{k: nan for k in keys}, "at": []}
    if n < MIN_N or np.ptp(m) == 0:
        return out
    fit = sm.OLS(d, sm.add_constant(m)).fit()
    lo_hi = fit.conf_int(alpha=1.0 - confidence_level)
    (b0, b1), (c0, c1) = _ba_regression_fit(m, d)
    out.update(intercept=float(b0), slope=float(b1), slope_ci_low=float(lo_hi[1][0]),
               slope_ci_high=float(lo_hi[1][1]), slope_p=float(fit.pvalues[1]),
               sd_intercept=_HALF_NORMAL * float(c0), sd_slope=_HALF_NORMAL * float(c1))
    pts = np.quantile(m, [0.1, 0.5, 0.9]) if at is None else np.atleast_1d(np.asarray(at, dtype=float))

    def lines(b, c):
        bias = b[0] + b[1] * pts
        sd = np.maximum(_HALF_NORMAL * (c[0] + c[1] * pts), 0.0)
        return np.stack([bias, bias - 1.96 * sd, bias + 1.96 * sd])   # (3, len(pts))

    est = lines((b0, b1), (c0, c1))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_resamples):
        i = rng.integers(0, n, n)
        if np.ptp(m[i]) == 0:
            continue
        b, c = _ba_regression_fit(m[i], d[i])
        boot.append(lines(b, c))
    alpha = (1.0 - confidence_level) / 2.0
    q = np.quantile(np.asarray(boot), [alpha, 1.0 - alpha], axis=0) if boot else np.full((2, 3, len(pts)), np.nan)
    for j, v in enumerate(pts):
        row = {"mean": float(v)}
        for k, name in enumerate(("bias", "loa_low", "loa_high")):
            row[name] = float(est[k, j])
            row[f"{name}_ci_low"] = float(q[0, k, j])
            row[f"{name}_ci_high"] = float(q[1, k, j])
        out["at"].append(row)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``).

    NaN entries (tests that could not be run) are passed through as NaN and are not counted in the
    family.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
    """
    p = _as_float_1d(pvalues, "pvalues")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1]; got {p[finite][(p[finite] < 0) | (p[finite] > 1)].tolist()}.")
    out = np.full(p.shape, np.nan)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def correlation_grid(
    df: pd.DataFrame,
    predictors,
    outcomes,
    *,
    covariates=None,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Spearman correlation of every predictor with every outcome, Holm-adjusted over the grid.

    Each cell uses its own complete pairs (pairwise deletion) and the same bootstrap ``seed``, so a
    cell's interval does not depend on which other cells are in the grid. ``p_holm`` adjusts the
    cells' p-values as one family (cells whose p is NaN are left out of the family). With
    ``covariates`` (e.g. ``["age", "sex"]``) each cell also gets the partial Spearman correlation
    (:func:`partial_spearman`) and its own Holm adjustment ``partial_p_holm``.

    Args:
        df: one row per patient.
        predictors: column name(s) of the predictors (e.g. lesion volume, percent of lung).
        outcomes: column name(s) of the outcomes (e.g. ``fvc_pct``, ``dlco_pct``).
        covariates: column name(s) to adjust for, or None.
        seed, n_resamples, confidence_level: of each cell's bootstrap interval.

    Returns:
        One row per (predictor, outcome), in predictor-major order, with columns ``predictor,
        outcome, n, rho, p, ci_low, ci_high, ci_method, p_holm`` and, with covariates,
        ``partial_rho, partial_p, partial_n, partial_ci_low, partial_ci_high, partial_p_holm`` (the
        partial coefficient's interval is a patient bootstrap, :func:`partial_spearman_ci`).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"lesion_ml": [5, 9, 2, 7, 4, 8], "fvc_pct": [80, 61, 95, 70, 85, 66]})
        >>> correlation_grid(df, "lesion_ml", "fvc_pct", n_resamples=200)[["n", "rho"]].values.tolist()
        [[6.0, -1.0]]
    """
    predictors = _as_list(predictors, "predictors")
    outcomes = _as_list(outcomes, "outcomes")
    covariates = _as_list(covariates, "covariates")
    if not predictors or not outcomes:
        raise ValueError("correlation_grid needs at least one predictor and one outcome column.")
    _require_columns(df, predictors, "predictor")
    _require_columns(df, outcomes, "outcome")
    _require_columns(df, covariates, "covariate")
    _check_resampling(n_resamples, confidence_level, seed)
    rows = []
    for pred in predictors:
        for out in outcomes:
            if pred == out:
                raise ValueError(f"Column {pred!r} is both a predictor and an outcome; list it once.")
            r = spearman(df[pred], df[out], n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
            row = {"predictor": pred, "outcome": out, **{k: r[k] for k in ("n", "rho", "p", "ci_low", "ci_high", "ci_method")}}
            if covariates:
                pr = partial_spearman_ci(df, pred, out, covariates, n_resamples=n_resamples,
                                         confidence_level=confidence_level, seed=seed)
                row.update(partial_rho=pr["rho"], partial_p=pr["p"], partial_n=pr["n"],
                           partial_ci_low=pr["ci_low"], partial_ci_high=pr["ci_high"])
            rows.append(row)
    grid = pd.DataFrame(rows)
    grid.insert(grid.columns.get_loc("ci_method") + 1, "p_holm", holm(grid["p"].to_numpy()))
    grid["n"] = grid["n"].astype(int)
    if covariates:
        grid["partial_n"] = grid["partial_n"].astype(int)
        grid["partial_p_holm"] = holm(grid["partial_p"].to_numpy())
    return grid


def rho_difference(
    x_pred, x_ref, y, *, n_resamples: int = 2000, confidence_level: float = 0.95, seed: int = 0
) -> dict:
    """Does the model keep the clinical signal? ``rho(pred, y) - rho(ref, y)`` on the same patients.

    Only patients with all three values are used, so both coefficients are computed on the same
    people. The interval is a paired bootstrap over patients (each resample draws whole patients,
    carrying their predicted volume, reference volume and outcome together), BCa with percentile
    fallback as in :func:`spearman`. The two coefficients share patients and are strongly
    correlated, which is why they are not compared as if independent.

    Args:
        x_pred: the model's value per patient (e.g. predicted lesion volume).
        x_ref: the reference labels' value per patient.
        y: the outcome (e.g. FVC % predicted).
        n_resamples, confidence_level, seed: of the bootstrap.

    Returns:
        ``{"diff", "rho_pred", "rho_ref", "ci_low", "ci_high", "n", "ci_method"}``.

    Example:
        >>> d = rho_difference([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], [5, 4, 3, 2, 1], n_resamples=200)
        >>> round(d["diff"], 2), d["n"]
        (-0.1, 5)
    """
    _check_resampling(n_resamples, confidence_level, seed)
    xp = _as_float_1d(x_pred, "x_pred")
    xr = _as_float_1d(x_ref, "x_ref")
    yy = _as_float_1d(y, "y")
    _same_length({"x_pred": xp, "x_ref": xr, "y": yy})
    ok = np.isfinite(xp) & np.isfinite(xr) & np.isfinite(yy)
    xp, xr, yy = xp[ok], xr[ok], yy[ok]
    n = int(ok.sum())
    keys = ("diff", "rho_pred", "rho_ref", "ci_low", "ci_high")
    if n < MIN_N or np.ptp(xp) == 0 or np.ptp(xr) == 0 or np.ptp(yy) == 0:
        return _nan_result(n, keys)
    rho_pred = float(sps.spearmanr(xp, yy).statistic)
    rho_ref = float(sps.spearmanr(xr, yy).statistic)
    low, high, method = _bootstrap_ci(
        (xp, xr, yy), _spearman_diff_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed
    )
    return {
        "diff": rho_pred - rho_ref,
        "rho_pred": rho_pred,
        "rho_ref": rho_ref,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "ci_method": method,
    }


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
    p = _as_float_1d(percent_lung, "percent_lung")
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
    _check_resampling(n_resamples, confidence_level, seed)
    pred = pd.Series(list(stage_pred) if not isinstance(stage_pred, pd.Series) else stage_pred.tolist(), dtype=object)
    ref = pd.Series(list(stage_ref) if not isinstance(stage_ref, pd.Series) else stage_ref.tolist(), dtype=object)
    _same_length({"stage_pred": pred, "stage_ref": ref})
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
        out["ci_low"], out["ci_high"], out["ci_method"] = _bootstrap_ci(
            (a, b), kappa_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed
        )
    return out
