"""Rank correlations with lung function: Spearman with confidence intervals, partial (covariate-adjusted)
Spearman, the Holm-adjusted grid of predictors and outcomes, and the paired comparison of a model's
correlation with the reference labels' correlation.

Everything here is a pure function of its inputs. Randomness (the bootstrap,
:mod:`sscild.evaluation.bootstrap`) is driven by an explicit integer ``seed``, so repeated calls give
identical numbers. SciPy and statsmodels do the maths where they offer it; what is written here is the
glue: pairwise deletion, the vectorised bootstrap statistics, the rank-residual partial correlation and
the fallbacks for degenerate cases.

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

Agreement of two methods (Bland–Altman, paired differences) is :mod:`sscild.evaluation.agreement`;
extent staging and its agreement is :mod:`sscild.evaluation.staging`.

Example:
    >>> import numpy as np
    >>> from sscild.evaluation.stats import spearman
    >>> x = np.arange(10.0)
    >>> r = spearman(x, -x ** 3, n_resamples=200)
    >>> round(r["rho"], 6), r["n"], r["ci_method"]
    (-1.0, 10, 'percentile')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from sscild.evaluation.bootstrap import MIN_N, as_float_1d, bootstrap_ci, check_resampling, complete_patients

__all__ = [
    "spearman",
    "detectable_rho",
    "RHO_POWER",
    "correlation_grid",
    "partial_spearman",
    "partial_spearman_ci",
    "rho_difference",
    "holm",
]


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


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
    says ``"percentile"``. With fewer than :data:`~sscild.evaluation.bootstrap.MIN_N` complete pairs, or a
    constant input, every number is NaN and ``n`` is still reported.

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
    n, (x, y) = complete_patients({"x": x, "y": y}, n_resamples=n_resamples, confidence_level=confidence_level,
                                  seed=seed)
    keys = ("rho", "p", "ci_low", "ci_high")
    if n < MIN_N or np.ptp(x) == 0 or np.ptp(y) == 0:
        return _nan_result(n, keys)
    res = sps.spearmanr(x, y)
    low, high, method = bootstrap_ci(
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
    cols = {x: as_float_1d(df[x], x), y: as_float_1d(df[y], y)}
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
    check_resampling(n_resamples, confidence_level, seed)
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
    out["ci_low"], out["ci_high"], out["ci_method"] = bootstrap_ci(
        arrays, _partial_stat, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    return out


RHO_POWER = 0.8
"""Power of the detectable-difference statement for ρ (:func:`detectable_rho`; two-sided alpha 0.05)."""


def detectable_rho(rho0: float, n: int, *, power: float = RHO_POWER, alpha: float = 0.05) -> tuple[float, float]:
    """The range of true Spearman ρ that ``n`` patients could not tell from ``rho0``.

    A true ρ outside the returned interval would give a 95 % interval excluding ``rho0`` with
    probability ``power`` (Fisher z with the Bonett-Wright variance of Spearman's ρ,
    ``(1 + ρ²/2) / (n - 3)``).

    Example:
        >>> [round(v, 2) for v in detectable_rho(-0.64, 40)]
        [-0.85, -0.25]
    """
    if n <= 3:
        return (float("nan"), float("nan"))
    z0 = np.arctanh(float(rho0))
    se = np.sqrt((1 + rho0 ** 2 / 2) / (n - 3))
    d = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * se
    return (float(np.tanh(z0 - d)), float(np.tanh(z0 + d)))


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``).

    NaN entries (tests that could not be run) are passed through as NaN and are not counted in the
    family.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
    """
    p = as_float_1d(pvalues, "pvalues")
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
    check_resampling(n_resamples, confidence_level, seed)
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
    n, (xp, xr, yy) = complete_patients({"x_pred": x_pred, "x_ref": x_ref, "y": y}, n_resamples=n_resamples,
                                        confidence_level=confidence_level, seed=seed)
    keys = ("diff", "rho_pred", "rho_ref", "ci_low", "ci_high")
    if n < MIN_N or np.ptp(xp) == 0 or np.ptp(xr) == 0 or np.ptp(yy) == 0:
        return _nan_result(n, keys)
    rho_pred = float(sps.spearmanr(xp, yy).statistic)
    rho_ref = float(sps.spearmanr(xr, yy).statistic)
    low, high, method = bootstrap_ci(
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
