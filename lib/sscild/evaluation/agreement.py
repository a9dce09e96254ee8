"""Agreement of two methods measuring the same patients: ICC, Bland–Altman limits (fixed and
regression-based), and the paired difference of their scores.

**ICC.** :func:`icc` is ICC(2,1) of Shrout & Fleiss (1979), which McGraw & Wong (1996) call
ICC(A,1): two-way random effects, absolute agreement, single measures, with the F-based 95 %
interval of McGraw & Wong.

**Bland–Altman.** :func:`bland_altman` gives the bias and the fixed limits of agreement
``bias ± 1.96 sd`` (Bland & Altman 1986); where the difference grows with the size of the
measurement (proportional bias), :func:`bland_altman_regression` models bias and limits as lines
(Bland & Altman 1999) with patient-bootstrap intervals.

**Paired difference.** :func:`paired_difference` is the mean of ``a - b`` per patient (e.g. network
Dice minus baseline Dice) with a patient bootstrap interval (:mod:`sscild.evaluation.bootstrap`) and
the Wilcoxon signed-rank test.

Example:
    >>> round(icc([1, 2, 3, 4], [1.1, 2.1, 2.9, 4.2])["icc"], 3)
    0.995
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import statsmodels.api as sm
from scipy import stats as sps

from sscild.evaluation.bootstrap import MIN_N, bootstrap_ci, complete_patients

__all__ = ["ICC_FORM", "icc", "bland_altman", "bland_altman_regression", "paired_difference"]

ICC_FORM = "ICC(2,1) Shrout & Fleiss = ICC(A,1) McGraw & Wong: two-way random, absolute agreement, single measures"
"""The ICC form :func:`icc` returns (also stored under its ``"form"`` key)."""


def _paired(a, b, name_a="a", name_b="b") -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{name_a} and {name_b} must pair case by case; got {x.size} and {y.size} values.")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def icc(a, b, *more, alpha: float = 0.05) -> dict:
    """Intraclass correlation ICC(2,1) = ICC(A,1) with its (1 - alpha) F-based interval.

    Two-way random effects, absolute agreement, single measures (Shrout & Fleiss 1979 case 2;
    McGraw & Wong 1996 ICC(A,1)), from the two-way ANOVA without replication of ``n`` cases x
    ``k`` raters (methods)::

        ICC = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)

    with the McGraw & Wong interval (their Table 7, Satterthwaite degrees of freedom). Cases
    with a NaN in any rater are dropped.

    Args:
        a, b, *more: one value per case for each rater/method (e.g. predicted and reference
            lesion volumes), in the same case order.
        alpha: 1 - confidence level.

    Returns:
        ``{"icc", "ci_low", "ci_high", "n", "k", "F", "df1", "df2", "p", "form"}`` where F is the
        case-effect F test (H0: ICC = 0).

    Example:
        >>> round(icc([1, 2, 3, 4], [1.1, 2.1, 2.9, 4.2])["icc"], 3)
        0.995
    """
    cols = [np.asarray(v, dtype=float).ravel() for v in (a, b, *more)]
    if len({c.size for c in cols}) != 1:
        raise ValueError(f"every rater needs one value per case; got lengths {[c.size for c in cols]}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    y = np.column_stack(cols)
    y = y[~np.isnan(y).any(axis=1)]
    n, k = y.shape
    nan_out = {
        "icc": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "n": n,
        "k": k,
        "F": float("nan"),
        "df1": n - 1,
        "df2": (n - 1) * (k - 1),
        "p": float("nan"),
        "form": ICC_FORM,
    }
    if n < 2:
        return nan_out
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))  # clip round-off below zero
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom <= 0:
        return nan_out
    value = (msr - mse) / denom
    df1, df2 = n - 1, (n - 1) * (k - 1)
    f_rows = msr / mse if mse > 0 else float("inf")
    p = float(sps.f.sf(f_rows, df1, df2)) if math.isfinite(f_rows) else 0.0
    lo = hi = float("nan")
    if value >= 1:  # no error and no rater offset at all
        lo = hi = 1.0
    else:
        # McGraw & Wong (1996), Table 7, ICC(A,1); v: Satterthwaite degrees of freedom
        aa = k * value / (n * (1 - value))
        bb = 1 + k * value * (n - 1) / (n * (1 - value))
        v_den = (aa * msc) ** 2 / (k - 1) + (bb * mse) ** 2 / ((n - 1) * (k - 1))
        if v_den > 0:
            v = (aa * msc + bb * mse) ** 2 / v_den
            f_lo = sps.f.ppf(1 - alpha / 2, n - 1, v)
            f_hi = sps.f.ppf(1 - alpha / 2, v, n - 1)
            c = k * msc + (k * n - k - n) * mse
            lo = float(n * (msr - f_lo * mse) / (f_lo * c + n * msr))
            hi = float(n * (f_hi * msr - mse) / (c + n * f_hi * msr))
    return nan_out | {"icc": float(value), "ci_low": lo, "ci_high": hi, "F": float(f_rows), "p": p}


def bland_altman(pred, ref, *, percent: bool = False, alpha: float = 0.05) -> dict:
    """Bland–Altman agreement of paired measurements (e.g. predicted vs reference volume).

    Differences are ``pred - ref``; with ``percent=True`` they are ``100 (pred - ref) / mean``
    where ``mean = (pred + ref) / 2`` (pairs with a zero mean are dropped). Limits of agreement
    are ``bias ± 1.96 sd`` (sd with ddof=1). Pairs with a NaN are dropped.

    Args:
        pred: values of the method under test, one per case.
        ref: reference values, same cases and order.
        percent: express differences in percent of the pair mean.
        alpha: for the t interval of the bias (``bias_ci_low``, ``bias_ci_high``).

    Returns:
        ``{"bias", "sd", "loa_low", "loa_high", "bias_ci_low", "bias_ci_high", "loa_low_ci_low",
        "loa_low_ci_high", "loa_high_ci_low", "loa_high_ci_high", "n", "unit"}`` (``unit`` is
        ``"%"`` or ``"same as input"``). The limits' intervals use the approximate standard error
        ``sqrt(3 sd² / n)`` of Bland & Altman (1986) with a t quantile. These fixed limits assume the
        difference does not depend on the size of the measurement; where it does (proportional
        bias) use :func:`bland_altman_regression`.

    Example:
        >>> ba = bland_altman([2, 4, 6], [1, 3, 8])
        >>> ba["bias"], ba["sd"]
        (0.0, 1.7320508075688772)
    """
    x, y = _paired(pred, ref, "pred", "ref")
    diff = x - y
    if percent:
        mean = (x + y) / 2
        keep = mean != 0
        diff = 100.0 * diff[keep] / mean[keep]
    n = int(diff.size)
    bias = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    tq = float(sps.t.ppf(1 - alpha / 2, n - 1)) if n > 1 else float("nan")
    half = tq * sd / math.sqrt(n) if n > 1 else float("nan")
    # Bland & Altman (1986): the standard error of a limit of agreement is about sqrt(3 sd^2 / n)
    loa_half = tq * math.sqrt(3.0 * sd * sd / n) if n > 1 else float("nan")
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": lo,
        "loa_high": hi,
        "bias_ci_low": bias - half,
        "bias_ci_high": bias + half,
        "loa_low_ci_low": lo - loa_half,
        "loa_low_ci_high": lo + loa_half,
        "loa_high_ci_low": hi - loa_half,
        "loa_high_ci_high": hi + loa_half,
        "n": n,
        "unit": "%" if percent else "same as input",
    }


def _mean_diff_stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(np.asarray(a) - np.asarray(b), axis=axis)


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
    n, (x, y) = complete_patients({"a": a, "b": b}, n_resamples=n_resamples, confidence_level=confidence_level,
                                  seed=seed)
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
        out["ci_low"], out["ci_high"], out["ci_method"] = bootstrap_ci(
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
        "loa_high_ci_low", "loa_high_ci_high"}``. With fewer than
        :data:`~sscild.evaluation.bootstrap.MIN_N` pairs or a constant ``m`` every number is NaN.

    Example:
        >>> r = bland_altman_regression([1, 2, 3, 5, 8], [1, 1.8, 2.6, 4.2, 6.5], n_resamples=200)
        >>> round(r["slope"], 3) > 0, r["n"]
        (True, 5)
    """
    if not (0.0 < float(confidence_level) < 1.0):
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level!r}")
    n, (x, y) = complete_patients({"pred": pred, "ref": ref}, n_resamples=n_resamples,
                                  confidence_level=confidence_level, seed=seed)
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
