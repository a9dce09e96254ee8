"""Tests of sscild.evaluation.stats, .staging and the paired statistics of .agreement: hand-computed cases,
SciPy/statsmodels cross-checks, CI coverage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from sscild.evaluation import agreement, staging, stats
from sscild.evaluation.staging import extent_stage, staging_agreement
from sscild.evaluation.stats import correlation_grid, holm, partial_spearman, rho_difference, spearman

# ----------------------------------------------------------------------------------------------
# spearman
# ----------------------------------------------------------------------------------------------


def test_spearman_equals_scipy_with_pairwise_deletion():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = 0.5 * x + rng.normal(size=30)
    x[[2, 7]] = np.nan
    y[[7, 11, 20]] = np.nan
    keep = ~(np.isnan(x) | np.isnan(y))
    expected = sps.spearmanr(x[keep], y[keep])

    r = spearman(pd.Series(x), list(y), n_resamples=300)

    assert r["n"] == 26
    assert r["rho"] == float(expected.statistic)
    assert r["p"] == float(expected.pvalue)
    assert r["ci_method"] == "BCa"
    assert r["ci_low"] < r["rho"] < r["ci_high"]


def test_bootstrap_statistic_equals_spearmanr_row_by_row_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(6, 12)).astype(float)  # many ties
    y = rng.integers(0, 4, size=(6, 12)).astype(float)
    got = stats._spearman_stat(x, y, axis=-1)
    for i in range(6):
        assert got[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic, abs=1e-12)


def test_spearman_is_deterministic_and_seed_matters():
    rng = np.random.default_rng(1)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    a = spearman(x, y, n_resamples=400, seed=5)
    b = spearman(x, y, n_resamples=400, seed=5)
    c = spearman(x, y, n_resamples=400, seed=6)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["rho"] == c["rho"]


def test_spearman_degenerate_bca_falls_back_to_percentile():
    x = np.arange(12.0)
    r = spearman(x, np.exp(x), n_resamples=200)  # every resample is perfectly monotone
    assert r["rho"] == pytest.approx(1.0)
    assert r["ci_method"] == "percentile"
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((1.0, 1.0))


def test_spearman_too_few_or_constant_gives_nan_with_n():
    r = spearman([1.0, 2.0, 3.0, np.nan, 5.0], [2.0, 1.0, 3.0, 4.0, np.nan])
    assert r["n"] == 3
    assert all(math.isnan(r[k]) for k in ("rho", "p", "ci_low", "ci_high"))
    assert r["ci_method"] == "none"
    r = spearman([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["n"] == 5 and math.isnan(r["rho"])


def test_spearman_misuse_raises():
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="not numeric"):
        spearman(["a", "b", "c", "d"], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="n_resamples"):
        spearman([1, 2, 3, 4], [1, 2, 3, 4], n_resamples=0)
    with pytest.raises(ValueError, match="confidence_level"):
        spearman([1, 2, 3, 4], [1, 2, 3, 4], confidence_level=95)


def test_spearman_ci_coverage_on_bivariate_normal():
    """Seeded simulation: the 95 % CI should cover the population Spearman rho at n = 40."""
    r_pearson = -0.6
    rho_true = 6.0 / math.pi * math.asin(r_pearson / 2.0)  # population Spearman of a bivariate normal
    cov = [[1.0, r_pearson], [r_pearson, 1.0]]
    rng = np.random.default_rng(2024)
    reps, covered, widths = 300, 0, []
    for i in range(reps):
        xy = rng.multivariate_normal([0.0, 0.0], cov, size=40)
        r = spearman(xy[:, 0], xy[:, 1], n_resamples=500, seed=i)
        covered += r["ci_low"] <= rho_true <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    coverage = covered / reps
    assert coverage >= 0.85, coverage
    # Guard against an interval that covers because it is uselessly wide.
    assert np.mean(widths) < 0.6, np.mean(widths)


# ----------------------------------------------------------------------------------------------
# partial_spearman
# ----------------------------------------------------------------------------------------------


def test_partial_spearman_hand_derived_six_rows():
    # Ranks v = 1..6, f = 2 1 4 3 6 5, age = 1 3 2 4 6 5 (no ties), so with sum d^2:
    #   rho(v,f) = 1 - 6*6/210 = 29/35, rho(v,age) = 1 - 6*4/210 = 31/35, rho(f,age) = 25/35.
    # Partial: (29*35 - 31*25) / sqrt((35^2-31^2)(35^2-25^2)) = 240 / sqrt(264*600) = 2/sqrt(11).
    # t = r sqrt(dof/(1-r^2)) with dof = 6-2-1 = 3  ->  t = 2 sqrt(3/7).
    ranks_v = np.array([1, 2, 3, 4, 5, 6.0])
    ranks_f = np.array([2, 1, 4, 3, 6, 5.0])
    ranks_a = np.array([1, 3, 2, 4, 6, 5.0])
    df = pd.DataFrame(
        {"volume": np.exp(ranks_v), "fvc": 50 + ranks_f**2, "age": 40 + 3 * ranks_a}  # monotone transforms
    )
    r = partial_spearman(df, "volume", "fvc", ["age"])
    assert r["rho"] == pytest.approx(2 / math.sqrt(11), abs=1e-12)
    assert r["p"] == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3 / 7), 3), abs=1e-12)
    assert (r["n"], r["k"], r["dof"]) == (6, 1, 3)


def test_partial_spearman_equals_lstsq_residual_correlation():
    rng = np.random.default_rng(11)
    n = 18
    df = pd.DataFrame(
        {
            "vol": rng.gamma(2.0, 50.0, n),
            "fvc": rng.normal(80, 15, n),
            "age": rng.integers(30, 75, n).astype(float),  # integer ages: ties
            "sex": rng.choice(["F", "M"], n),
        }
    )
    df.loc[3, "vol"] = np.nan
    df.loc[9, "age"] = np.nan
    df.loc[14, "sex"] = None
    got = partial_spearman(df, "vol", "fvc", ["age", "sex"])

    d = df.dropna()
    design = np.column_stack(
        [np.ones(len(d)), d["age"].rank().to_numpy(), (d["sex"] == "M").astype(float).rank().to_numpy()]
    )

    def resid(col):
        yv = d[col].rank().to_numpy()
        beta = np.linalg.lstsq(design, yv, rcond=None)[0]
        return yv - design @ beta

    r = np.corrcoef(resid("vol"), resid("fvc"))[0, 1]
    dof = len(d) - 2 - 2
    p = 2 * sps.t.sf(abs(r) * math.sqrt(dof / (1 - r * r)), dof)
    assert got["n"] == len(d) == 15
    assert got["rho"] == pytest.approx(r, abs=1e-12)
    assert got["p"] == pytest.approx(p, rel=1e-10)
    assert got["covariates"] == ["age", "sex"]


def test_partial_spearman_without_covariates_is_spearman_and_sex_coding_is_irrelevant():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"a": rng.normal(size=20), "b": rng.normal(size=20), "sex": rng.choice(["female", "male"], 20)})
    plain = partial_spearman(df, "a", "b", [])
    ref = sps.spearmanr(df["a"], df["b"])
    assert plain["rho"] == pytest.approx(ref.statistic, abs=1e-12)
    assert plain["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    df2 = df.assign(sex=df["sex"].map({"female": "zz", "male": "aa"}))  # reverse the 0/1 coding
    assert partial_spearman(df, "a", "b", "sex")["rho"] == pytest.approx(
        partial_spearman(df2, "a", "b", "sex")["rho"], abs=1e-12
    )


def test_partial_spearman_misuse():
    df = pd.DataFrame({"a": [1.0, 2, 3, 4, 5], "b": [2.0, 1, 4, 3, 5], "g": ["x", "y", "z", "x", "y"]})
    with pytest.raises(ValueError, match="Unknown covariate"):
        partial_spearman(df, "a", "b", ["age"])
    with pytest.raises(ValueError, match="Unknown correlation"):
        partial_spearman(df, "a", "fev1", [])
    with pytest.raises(ValueError, match="3 levels"):
        partial_spearman(df, "a", "b", ["g"])
    with pytest.raises(ValueError, match="both"):
        partial_spearman(df, "a", "b", ["a"])


# ----------------------------------------------------------------------------------------------
# holm and the grid
# ----------------------------------------------------------------------------------------------


def test_holm_hand_case_statsmodels_and_monotone():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.2, 25)
    adj = holm(q)
    np.testing.assert_allclose(adj, multipletests(q, method="holm")[1])
    order = np.argsort(q)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= q)


def test_holm_passes_nan_and_rejects_bad_values():
    adj = holm([0.01, np.nan, 0.02])
    assert math.isnan(adj[1])
    assert adj[[0, 2]] == pytest.approx([0.02, 0.02])  # a family of two
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


@pytest.fixture
def clinical_table():
    rng = np.random.default_rng(7)
    n = 24
    vol = rng.gamma(2.0, 60.0, n)
    df = pd.DataFrame(
        {
            "lesion_ml": vol,
            "ef_ml": vol * rng.uniform(0.2, 0.6, n),
            "fvc_pct": 100 - 0.15 * vol + rng.normal(0, 8, n),
            "dlco_pct": 90 - 0.2 * vol + rng.normal(0, 10, n),
            "age": rng.integers(35, 75, n).astype(float),
            "sex": rng.choice(["F", "M"], n),
        }
    )
    df.loc[[1, 5], "fvc_pct"] = np.nan
    df.loc[[5, 8, 13], "dlco_pct"] = np.nan
    df["rare"] = np.nan
    df.loc[[0, 1, 2], "rare"] = [1.0, 2.0, 3.0]  # only 3 patients: n < 4
    return df


def test_grid_fills_every_cell_and_matches_spearman(clinical_table):
    df = clinical_table
    grid = correlation_grid(df, ["lesion_ml", "ef_ml", "rare"], ["fvc_pct", "dlco_pct"],
                            covariates=["age", "sex"], n_resamples=200)
    assert len(grid) == 6
    assert list(grid[["predictor", "outcome"]].itertuples(index=False, name=None))[:2] == [
        ("lesion_ml", "fvc_pct"), ("lesion_ml", "dlco_pct")
    ]
    for col in ("n", "rho", "p", "ci_low", "ci_high", "ci_method", "p_holm",
                "partial_rho", "partial_p", "partial_n", "partial_p_holm"):
        assert col in grid.columns
    for row in grid.itertuples():
        expected_n = int((df[row.predictor].notna() & df[row.outcome].notna()).sum())
        assert row.n == expected_n
        if row.predictor == "rare":
            assert math.isnan(row.rho) and math.isnan(row.p_holm)
            continue
        ref = spearman(df[row.predictor], df[row.outcome], n_resamples=200)
        assert (row.rho, row.p, row.ci_low, row.ci_high) == (ref["rho"], ref["p"], ref["ci_low"], ref["ci_high"])
        part = partial_spearman(df, row.predictor, row.outcome, ["age", "sex"])
        assert (row.partial_rho, row.partial_n) == (part["rho"], part["n"])
    finite = grid["p"].notna()
    assert finite.sum() == 4
    np.testing.assert_allclose(grid.loc[finite, "p_holm"], multipletests(grid.loc[finite, "p"], method="holm")[1])
    assert grid["n"].dtype.kind == "i" and grid["partial_n"].dtype.kind == "i"


def test_grid_without_covariates_and_misuse(clinical_table):
    grid = correlation_grid(clinical_table, "lesion_ml", "fvc_pct", n_resamples=100)
    assert "partial_rho" not in grid.columns and len(grid) == 1
    with pytest.raises(ValueError, match="Unknown outcome column"):
        correlation_grid(clinical_table, ["lesion_ml"], ["fev1"], n_resamples=100)
    with pytest.raises(ValueError, match="Unknown covariate"):
        correlation_grid(clinical_table, ["lesion_ml"], ["fvc_pct"], covariates=["bmi"], n_resamples=100)


# ----------------------------------------------------------------------------------------------
# rho_difference
# ----------------------------------------------------------------------------------------------


def test_rho_difference_on_shared_patients():
    rng = np.random.default_rng(21)
    ref = rng.gamma(2.0, 50.0, 30)
    pred = ref * rng.lognormal(0.0, 0.3, 30)
    y = 100 - 0.2 * ref + rng.normal(0, 10, 30)
    pred[4] = np.nan
    y[10] = np.nan
    d = rho_difference(pred, ref, y, n_resamples=400, seed=3)
    keep = np.isfinite(pred) & np.isfinite(y)
    rp = sps.spearmanr(pred[keep], y[keep]).statistic
    rr = sps.spearmanr(ref[keep], y[keep]).statistic
    assert d["n"] == 28
    assert d["diff"] == pytest.approx(rp - rr, abs=1e-15)
    assert (d["rho_pred"], d["rho_ref"]) == (rp, rr)
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert d == rho_difference(pred, ref, y, n_resamples=400, seed=3)


def test_rho_difference_identical_inputs_and_misuse():
    x = np.arange(10.0)
    y = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3.0])
    d = rho_difference(x, x, y, n_resamples=100)
    assert d["diff"] == 0.0 and (d["ci_low"], d["ci_high"]) == (0.0, 0.0)
    assert d["ci_method"] == "percentile"
    with pytest.raises(ValueError, match="x_ref=9"):
        rho_difference(x, x[:9], y)


# ----------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------


def test_extent_stage_threshold_edges_and_missing():
    got = extent_stage(pd.Series([0.0, 19.99, 20.0, 20.0001, 100.0, np.nan, None]))
    assert got.tolist() == ["limited", "limited", "limited", "extensive", "extensive", None, None]
    assert extent_stage([10.0, 10.5], threshold=10.0).tolist() == ["limited", "extensive"]
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        extent_stage([-1.0, 5.0])
    with pytest.raises(ValueError, match="threshold"):
        extent_stage([5.0], threshold=120)


def test_staging_agreement_hand_computed_kappa():
    # reference x predicted: L/L 20, L/E 5, E/L 10, E/E 15 (n = 50)
    # po = 35/50 = 0.7; reference margins 0.5/0.5; predicted margins 0.6/0.4
    # pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    ref = ["limited"] * 25 + ["extensive"] * 25
    pred = ["limited"] * 20 + ["extensive"] * 5 + ["limited"] * 10 + ["extensive"] * 15
    ref += [None, "limited"]
    pred += ["limited", np.nan]  # two patients missing one stage: dropped
    a = staging_agreement(pred, ref, n_resamples=500, seed=1)
    assert a["n"] == 50
    assert a["kappa"] == pytest.approx(0.4, abs=1e-12)
    assert a["percent_agreement"] == pytest.approx(70.0)
    assert a["table"].loc["limited", "limited"] == 20
    assert a["table"].loc["limited", "extensive"] == 5  # reference limited, predicted extensive
    assert a["table"].loc["extensive", "limited"] == 10
    assert a["table"].loc["extensive", "extensive"] == 15
    assert a["table"].index.name == "reference" and a["table"].columns.name == "predicted"
    assert a["ci_low"] < 0.4 < a["ci_high"]
    codes = np.array([0] * 25 + [1] * 25), np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    assert staging._kappa_stat_factory(2)(*codes) == pytest.approx(0.4)
    again = staging_agreement(pred, ref, n_resamples=500, seed=1)
    assert {k: v for k, v in a.items() if k != "table"} == {k: v for k, v in again.items() if k != "table"}


def test_staging_agreement_single_category_and_misuse():
    a = staging_agreement(["limited"] * 5, ["limited"] * 5, n_resamples=100)
    assert a["percent_agreement"] == 100.0 and math.isnan(a["kappa"]) and a["n"] == 5
    assert a["table"].shape == (2, 2) and a["table"].loc["extensive"].sum() == 0
    with pytest.raises(ValueError, match="differ in length"):
        staging_agreement(["limited"], ["limited", "extensive"])


# ----------------------------------------------------------------------------------------------
# paired difference, regression Bland–Altman, partial correlation intervals
# ----------------------------------------------------------------------------------------------


def test_paired_difference_equals_scipy_bootstrap_and_wilcoxon():
    rng = np.random.default_rng(11)
    a = rng.uniform(0.5, 0.9, 25)
    b = a - rng.normal(0.1, 0.05, 25)
    a[3] = np.nan                                   # pairwise deletion
    d = agreement.paired_difference(a, b, n_resamples=999, seed=4)
    ok = np.isfinite(a)
    assert d["n"] == 24 and d["mean_diff"] == pytest.approx(np.mean(a[ok] - b[ok]))
    assert d["median_diff"] == pytest.approx(np.median(a[ok] - b[ok]))
    ref = sps.bootstrap((a[ok], b[ok]), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                        vectorized=True, n_resamples=999, method="BCa", rng=np.random.default_rng(4))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert d["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a[ok], b[ok]).pvalue)
    same = agreement.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7], n_resamples=100)
    assert same["ci_method"] == "constant" and same["ci_low"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        agreement.paired_difference([1, 2], [1, 2, 3])


def test_paired_difference_interval_covers_the_true_mean():
    rng = np.random.default_rng(0)
    hits, sims = 0, 200
    for _ in range(sims):
        a = rng.normal(0.7, 0.1, 30)
        b = a - rng.normal(0.05, 0.08, 30)
        d = agreement.paired_difference(a, b, n_resamples=400, seed=int(rng.integers(1 << 30)))
        hits += d["ci_low"] <= 0.05 <= d["ci_high"]
    assert 0.88 <= hits / sims <= 0.99


def test_bland_altman_regression_hand_computed():
    # d = 0.1 m exactly plus residuals +-e: bias line slope 0.1 through 0, |residual| constant e
    m = np.array([2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    e = np.array([0.2, -0.2, 0.2, -0.2, 0.2, -0.2])
    d = 0.1 * m + e
    pred, ref = m + d / 2, m - d / 2
    r = agreement.bland_altman_regression(pred, ref, at=[5.0], n_resamples=300)
    fit = sm.OLS(d, sm.add_constant(m)).fit()
    assert r["intercept"] == pytest.approx(fit.params[0]) and r["slope"] == pytest.approx(fit.params[1])
    assert r["slope_p"] == pytest.approx(fit.pvalues[1])
    assert (r["slope_ci_low"], r["slope_ci_high"]) == pytest.approx(tuple(fit.conf_int()[1]))
    resid = np.abs(d - fit.fittedvalues)
    c = np.polyfit(m, resid, 1)[::-1]
    sd5 = math.sqrt(math.pi / 2) * (c[0] + c[1] * 5.0)
    bias5 = fit.params[0] + fit.params[1] * 5.0
    pt = r["at"][0]
    assert pt["bias"] == pytest.approx(bias5)
    assert (pt["loa_low"], pt["loa_high"]) == pytest.approx((bias5 - 1.96 * sd5, bias5 + 1.96 * sd5))
    assert pt["bias_ci_low"] <= pt["bias"] <= pt["bias_ci_high"]
    assert math.isnan(agreement.bland_altman_regression([1, 2, 3], [1, 2, 3])["slope"])   # too few


def test_bland_altman_regression_slope_interval_coverage():
    rng = np.random.default_rng(5)
    hits, sims = 0, 300
    for _ in range(sims):
        ref = rng.uniform(1, 30, 40)
        pred = ref + (0.5 + 0.2 * ref) + rng.normal(0, 1.0, 40)
        # with d = pred - ref and m = (pred + ref) / 2 = 1.1 ref + 0.25 + e / 2, the slope of d on m is
        # 0.2 / 1.1, up to an errors-in-variables term (about 0.005) small beside its standard error
        r = agreement.bland_altman_regression(pred, ref, n_resamples=10)
        hits += r["slope_ci_low"] <= 0.2 / 1.1 <= r["slope_ci_high"]
    assert 0.85 <= hits / sims <= 0.99


def test_partial_spearman_ci_statistic_matches_partial_spearman():
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"x": rng.normal(size=30), "age": rng.normal(size=30),
                       "sex": rng.choice(["F", "M"], 30)})
    df["y"] = -0.6 * df["x"] + 0.5 * df["age"] + rng.normal(0, 0.7, 30)
    r = stats.partial_spearman_ci(df, "x", "y", ["age", "sex"], n_resamples=500, seed=1)
    base = partial_spearman(df, "x", "y", ["age", "sex"])
    assert r["rho"] == pytest.approx(base["rho"]) and r["ci_method"] in ("BCa", "percentile")
    assert r["ci_low"] < r["rho"] < r["ci_high"] < 0
    # the vectorised statistic equals the one-sample computation on every resample it is given
    sex = (df["sex"] == "M").astype(float).to_numpy()
    idx = np.random.default_rng(9).integers(0, 30, (5, 30))
    vec = stats._partial_stat(df["x"].to_numpy()[idx], df["y"].to_numpy()[idx], df["age"].to_numpy()[idx], sex[idx])
    for k in range(5):
        one = partial_spearman(df.iloc[idx[k]].reset_index(drop=True), "x", "y", ["age", "sex"])["rho"]
        assert vec[k] == pytest.approx(one)
    grid = correlation_grid(df, "x", "y", covariates=["age", "sex"], n_resamples=200)
    assert {"partial_ci_low", "partial_ci_high"} <= set(grid.columns)
