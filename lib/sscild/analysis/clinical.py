"""The Clinical correlation chapter's computations: lesion burden against lung function.

The chapter asks two questions of the out-of-fold predictions:

1. Does the lesion burden the network predicts track pulmonary function? Spearman correlations of
   predicted lesion measures (total lesion, EF, GGO; in mL and in percent of lung) with FVC % pred,
   FEV1 % pred, FEV1/FVC and DLCO % pred, with patient-bootstrap intervals, Holm adjustment and a
   covariate-adjusted (partial) correlation.
2. Does the model keep the clinical signal of the reference labels? The same grid for the reference
   volumes and the paired difference ``rho(predicted) - rho(reference)`` per cell.

plus extent staging (Goh et al. 2008) of predicted against reference lesion percent. The statistics
themselves live in :mod:`sscild.evaluation.stats`; this module joins the tables, runs the grids, formats what the
chapter shows and writes ``clinical_correlations.csv`` and ``clinical_summary.json``.

Example:
    >>> from sscild.analysis.clinical import predictor_column, predictor_label
    >>> predictor_column("predicted", "ef", "pct"), predictor_column("reference", "lesion", "ml")
    ('pct_pred_ef', 'vol_ref_lesion_ml')
    >>> predictor_label("lesion", "pct")
    'total lesion, % of lung'
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.data.cohort import CLINICAL_COLUMNS
from sscild.paper import EXTENT_THRESHOLD_PCT, PAPER
from sscild.paths import RunPaths, atomic_path, write_json
from sscild.evaluation.staging import extent_stage, staging_agreement
from sscild.evaluation.stats import correlation_grid, holm, rho_difference

__all__ = [
    "OUTCOMES",
    "MEASURES",
    "UNITS",
    "SOURCES",
    "COVARIATES",
    "N_RESAMPLES",
    "predictor_column",
    "predictor_label",
    "load_clinical",
    "load_segmentation_metrics",
    "join_tables",
    "availability",
    "covariates_present",
    "clinical_correlations",
    "side_by_side",
    "p_value_table",
    "partial_table",
    "staging",
    "paper_comparison",
    "PRIMARY_OUTCOMES",
    "EXTENT_MEASURE",
    "endpoints",
    "endpoints_table",
    "summary_dict",
    "glue_values",
    "write_outputs",
    "planted_model",
    "planted_model_markdown",
    "planted_vs_recovered",
    "interpretation",
    "fmt_p",
    "p_text",
    "describe",
    "paper_contrast",
]

OUTCOMES = {
    "fvc_pct": "FVC (% pred)",
    "fev1_pct": "FEV1 (% pred)",
    "fev1_fvc": "FEV1/FVC",
    "dlco_pct": "DLCO (% pred)",
}
"""Lung-function columns of ``clinical.csv`` and their display names, in table order."""

MEASURES = {"lesion": "total lesion", "ef": "EF", "ggo": "GGO"}
"""Lesion measures: total lesion (EF and GGO together), established fibrosis, ground glass."""

UNITS = {"ml": "mL", "pct": "% of lung"}
"""Volume in millilitres, or percent of the same label map's lung volume."""

SOURCES = ("predicted", "reference")
"""Whose lesion volumes: the network's out-of-fold prediction, or the reference labels."""

COVARIATES = ("age", "sex", "height_cm")
"""Adjustment set of the partial correlations (those present in the clinical table are used)."""

N_RESAMPLES = 2000
"""Bootstrap resamples of every interval on the page."""

PRIMARY_OUTCOMES = ("fev1_pct", "fev1_fvc")
"""The primary endpoint, as in the paper: predicted lesion burden against FEV1 and FEV1/FVC. Every
other correlation on the page is secondary."""

EXTENT_MEASURE = ("lesion", "pct")
"""The one lesion-burden measure of the endpoints, the abstract and the comparisons: predicted total
lesion in percent of the lung. (The paper correlated volume; percent of lung removes lung size,
which would otherwise mix body size into the burden. The mL grid is shown as secondary.)"""

_NUMERIC = ("age", "height_cm", *OUTCOMES)
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_NA = {"", "na", "n/a", "nan", "none", "null", "-", "?", ".", "missing"}


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------


def _check_choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def predictor_column(source: str, measure: str, unit: str) -> str:
    """Column of ``segmentation_metrics.csv`` holding ``measure`` in ``unit`` from ``source``.

    Example:
        >>> predictor_column("reference", "ggo", "pct")
        'pct_ref_ggo'
    """
    _check_choice(source, SOURCES, "source")
    _check_choice(measure, tuple(MEASURES), "measure")
    _check_choice(unit, tuple(UNITS), "unit")
    tag = "pred" if source == "predicted" else "ref"
    return f"pct_{tag}_{measure}" if unit == "pct" else f"vol_{tag}_{measure}_ml"


def predictor_label(measure: str, unit: str) -> str:
    """Display name of a lesion measure, e.g. ``'EF, mL'``."""
    _check_choice(measure, tuple(MEASURES), "measure")
    _check_choice(unit, tuple(UNITS), "unit")
    return f"{MEASURES[measure]}, {UNITS[unit]}"


def _predictors(source: str) -> list[tuple[str, str, str]]:
    """(column, measure, unit) of every lesion measure of ``source``, measure-major."""
    return [(predictor_column(source, m, u), m, u) for m in MEASURES for u in ("pct", "ml")]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _read_clinical_csv(path: Path, strict: bool) -> pd.DataFrame:
    """``clinical.csv`` as numbers; unusable values become NaN and are listed in ``attrs["problems"]``
    (or, with ``strict``, raised together in one ValueError)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise ValueError(
            f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc}). Fix: save the clinical table "
            "as comma-separated text with a header row."
        ) from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if "case_id" not in raw.columns:
        raise ValueError(
            f"{path}: no 'case_id' column (columns: {', '.join(raw.columns)}). Fix: name the column that "
            "holds the case identifiers (as in imagesTr/<case_id>_0000) 'case_id'."
        )
    raw["case_id"] = raw["case_id"].str.strip()
    problems, notes = [], []
    empty = raw.index[raw["case_id"] == ""].tolist()
    if empty:
        problems.append(f"row(s) {[i + 2 for i in empty]} have no case_id and are not used")
    raw = raw.loc[raw["case_id"] != ""]
    counts = raw["case_id"].value_counts()
    dup = sorted(counts.index[counts > 1])
    if dup:
        problems.append(f"case(s) {', '.join(dup)} have several rows; none of them is used")
    table = raw.loc[~raw["case_id"].isin(dup)].set_index("case_id")
    for col in _NUMERIC:
        if col not in table.columns:
            continue
        text = table[col].str.strip()
        missing = text.str.lower().isin(_NA)
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = values.isna() & ~missing
        if bad.any():
            cases = ", ".join(f"{c}={v!r}" for c, v in list(text[bad].items())[:8])
            problems.append(f"{col} is not a number for case(s) {cases}")
        if col == "fev1_fvc":
            pct = values > 1.5
            if pct.any():
                notes.append(f"FEV1/FVC given in percent for {int(pct.sum())} case(s); divided by 100 to a ratio")
                values = values.where(~pct, values / 100.0)
        lo, hi = CLINICAL_COLUMNS[col][1]
        out = values.notna() & ((values < lo) | (values > hi))
        if out.any():
            cases = ", ".join(f"{c}={v:g}" for c, v in list(values[out].items())[:8])
            problems.append(f"{col} outside the plausible range {lo:g}..{hi:g} "
                            f"({CLINICAL_COLUMNS[col][0]}) for case(s) {cases}")
            values = values.where(~out)
        table[col] = values.where(~bad).astype(float)
    if "sex" in table.columns:
        text = table["sex"].str.strip()
        missing = text.str.lower().isin(_NA)
        coded = text.str.lower().map(_SEX)
        bad = coded.isna() & ~missing
        if bad.any():
            cases = ", ".join(f"{c}={v!r}" for c, v in list(text[bad].items())[:8])
            problems.append(f"sex is neither F nor M for case(s) {cases}")
        table["sex"] = coded.where(~missing)
    if problems and strict:
        raise ValueError(f"{path}: " + "; ".join(problems) + ". Fix these rows of the clinical table and re-run.")
    table.index.name = "case_id"
    table.attrs["problems"] = [f"{p}: treated as missing" for p in problems]
    table.attrs["notes"] = notes
    return table


def load_clinical(data_dir: str | os.PathLike, *, strict: bool = False) -> pd.DataFrame:
    """The cohort's clinical table, indexed by ``case_id``, lung-function columns as numbers.

    Reads ``<data_dir>/clinical.csv`` with the rules of the cohort validator
    (:data:`sscild.data.cohort.CLINICAL_COLUMNS`): identifiers stripped of spaces; ``age``, ``height_cm``
    and the lung-function columns as floats, with empty, ``NA``, ``n/a``, ``-`` and similar as
    missing; ``sex`` as ``"F"``/``"M"`` (``female``/``male``, any case). FEV1/FVC is returned as a
    ratio: values above 1.5 are read as percent and divided by 100 (``attrs["notes"]`` says so).
    A value that is not a number, outside its plausible range, or an unknown sex code is set to
    missing; several rows for one case leave that case out. Each such problem is listed in
    ``attrs["problems"]`` (the Data chapter's validation reports the same ones); with ``strict``
    they are raised together instead. Other columns are kept as text. The folder is only read.

    Args:
        data_dir: the cohort folder.
        strict: raise on any problem instead of setting the value to missing.

    Returns:
        DataFrame indexed by ``case_id``.

    Raises:
        FileNotFoundError: no ``clinical.csv`` in the folder.
        ValueError: unreadable table or no ``case_id`` column; with ``strict``, every problem at once.

    Example:
        >>> clin = load_clinical("data/synthetic-cpu")        # doctest: +SKIP
        >>> clin[["fvc_pct", "dlco_pct"]].median()            # doctest: +SKIP
    """
    path = Path(data_dir) / "clinical.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no clinical table. The Clinical chapter needs <cohort>/clinical.csv with columns "
            "case_id, age, sex, height_cm, fvc_pct, fev1_pct, fev1_fvc, dlco_pct (missing values left empty)."
        )
    return _read_clinical_csv(path, strict)


def load_segmentation_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Per-case out-of-fold metrics (``segmentation_metrics.csv``) indexed by ``case_id``.

    Raises:
        FileNotFoundError: the file is missing (the Segmentation chapter writes it).
        ValueError: a lesion-volume column the Clinical chapter needs is absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no per-case segmentation metrics. Run the Segmentation chapter first (`make evaluate`)."
        )
    seg = pd.read_csv(path, dtype={"case_id": str})
    need = ["case_id"] + [c for s in SOURCES for c, _, _ in _predictors(s)]
    missing = [c for c in need if c not in seg.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}. Re-run the Segmentation chapter "
            "(`make evaluate`) with this version of sscild."
        )
    return seg.set_index("case_id")


def join_tables(seg: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """One row per segmented case: its lesion measures and its clinical values (NaN where absent).

    A left join on ``case_id``: a segmented case without a clinical row stays, with missing lung
    function, so it counts in no correlation but is visible; clinical rows without a segmentation
    are dropped (see :func:`availability`).
    """
    overlap = [c for c in clinical.columns if c in seg.columns]
    if overlap:
        raise ValueError(f"Columns {overlap} are in both the segmentation metrics and clinical.csv; rename them.")
    seg = seg.copy()
    seg.index = seg.index.astype(str)
    clinical = clinical.copy()
    clinical.index = clinical.index.astype(str)
    return seg.join(clinical, how="left")


def availability(seg: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """How many segmented patients have each clinical value; which ids do not match.

    Returns a one-column table (``patients``) with rows: segmented cases, cases with a clinical row,
    clinical rows without a segmentation, and one row per lung-function / covariate column.
    """
    seg_ids = set(map(str, seg.index))
    clin_ids = set(map(str, clinical.index))
    table = join_tables(seg, clinical)
    rows = {
        "segmented (out-of-fold)": len(seg_ids),
        "with a clinical row": len(seg_ids & clin_ids),
        "clinical rows without segmentation": len(clin_ids - seg_ids),
    }
    for col in (*OUTCOMES, *COVARIATES):
        if col in table.columns:
            rows[f"with {OUTCOMES.get(col, col)}"] = int(table[col].notna().sum())
        else:
            rows[f"with {OUTCOMES.get(col, col)}"] = 0
    return pd.DataFrame({"patients": rows})


def describe(table: pd.DataFrame) -> pd.DataFrame:
    """Median [quartiles], range and n of lesion burden and lung function, readable row names."""
    rows = {
        "reference total lesion, % of lung": "pct_ref_lesion",
        "predicted total lesion, % of lung": "pct_pred_lesion",
        "predicted total lesion, mL": "vol_pred_lesion_ml",
        **{name: col for col, name in OUTCOMES.items()},
        "age, years": "age",
        "height, cm": "height_cm",
    }
    out = {}
    for name, col in rows.items():
        if col not in table.columns:
            continue
        v = pd.to_numeric(table[col], errors="coerce").dropna()
        q = v.quantile([0.25, 0.5, 0.75]) if len(v) else pd.Series([np.nan] * 3, index=[0.25, 0.5, 0.75])
        nd = 2 if col == "fev1_fvc" else 1
        out[name] = {
            "n": int(len(v)),
            "median [IQR]": f"{q[0.5]:.{nd}f} [{q[0.25]:.{nd}f}, {q[0.75]:.{nd}f}]" if len(v) else "n/a",
            "range": f"{v.min():.{nd}f} to {v.max():.{nd}f}" if len(v) else "n/a",
        }
    if "sex" in table.columns:
        s = table["sex"].dropna()
        out["female, n (%)"] = {"n": int(len(s)), "median [IQR]": f"{int((s == 'F').sum())} "
                                f"({100 * (s == 'F').mean():.0f} %)" if len(s) else "n/a", "range": ""}
    return pd.DataFrame(out).T


def covariates_present(table: pd.DataFrame, covariates=COVARIATES) -> list[str]:
    """The adjustment columns that exist and vary among the patients (age, sex, height)."""
    out = []
    for c in covariates:
        if c in table.columns and table[c].dropna().nunique() > 1:
            out.append(c)
    return out


def _outcomes_present(table: pd.DataFrame) -> list[str]:
    out = [c for c in OUTCOMES if c in table.columns]
    if not out:
        raise ValueError(
            f"No lung-function column ({', '.join(OUTCOMES)}) in the clinical table; the Clinical chapter "
            "has nothing to correlate. Add at least one of them to clinical.csv."
        )
    return out


# --------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------


def clinical_correlations(
    table: pd.DataFrame,
    *,
    covariates=None,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """The whole correlation grid: predicted and reference lesion measures x lung function.

    For each source (predicted, reference) :func:`sscild.evaluation.stats.correlation_grid` correlates the six
    lesion measures (total lesion, EF, GGO; % of lung and mL) with every lung-function column
    present: Spearman rho and p on each cell's complete pairs (pairwise deletion), a paired BCa
    bootstrap interval over patients (seeded; percentile fallback, see ``ci_method``), Holm over the
    source's cells as one family (``p_holm``), and the partial Spearman adjusted for ``covariates``
    with its own Holm adjustment. For every (measure, outcome) the paired difference
    ``rho(predicted) - rho(reference)`` on the patients with both (:func:`sscild.evaluation.stats.rho_difference`)
    is added in the ``diff_*`` columns of the *predicted* row (NaN on reference rows).

    Args:
        table: one row per patient (:func:`join_tables`).
        covariates: adjustment columns; ``None`` uses :func:`covariates_present`.
        seed, n_resamples, confidence_level: of every bootstrap interval.

    Returns:
        Long table with columns ``source, measure, unit, predictor, outcome, n, rho, p, ci_low,
        ci_high, ci_method, p_holm, partial_rho, partial_p, partial_n, partial_ci_low, partial_ci_high,
        partial_p_holm, partial_covariates, diff, diff_ci_low, diff_ci_high, diff_n, diff_ci_method``.
    """
    outcomes = _outcomes_present(table)
    covariates = covariates_present(table) if covariates is None else list(covariates)
    parts = []
    for source in SOURCES:
        preds = _predictors(source)
        grid = correlation_grid(
            table,
            [c for c, _, _ in preds],
            outcomes,
            covariates=covariates or None,
            seed=seed,
            n_resamples=n_resamples,
            confidence_level=confidence_level,
        )
        if not covariates:
            grid["partial_rho"], grid["partial_p"] = grid["rho"], grid["p"]
            grid["partial_n"], grid["partial_p_holm"] = grid["n"], grid["p_holm"]
            grid["partial_ci_low"], grid["partial_ci_high"] = grid["ci_low"], grid["ci_high"]
        meta = {c: (m, u) for c, m, u in preds}
        grid.insert(0, "source", source)
        grid.insert(1, "measure", grid["predictor"].map(lambda c: meta[c][0]))
        grid.insert(2, "unit", grid["predictor"].map(lambda c: meta[c][1]))
        grid["partial_covariates"] = "+".join(covariates) if covariates else "none"
        parts.append(grid)
    full = pd.concat(parts, ignore_index=True)
    for col in ("diff", "diff_ci_low", "diff_ci_high"):
        full[col] = np.nan
    full["diff_n"] = 0
    full["diff_ci_method"] = ""
    for i in full.index[full["source"] == "predicted"]:
        m, u, out = full.at[i, "measure"], full.at[i, "unit"], full.at[i, "outcome"]
        d = rho_difference(
            table[predictor_column("predicted", m, u)],
            table[predictor_column("reference", m, u)],
            table[out],
            seed=seed,
            n_resamples=n_resamples,
            confidence_level=confidence_level,
        )
        full.loc[i, ["diff", "diff_ci_low", "diff_ci_high"]] = d["diff"], d["ci_low"], d["ci_high"]
        full.at[i, "diff_n"] = d["n"]
        full.at[i, "diff_ci_method"] = d["ci_method"]
    full["diff_n"] = full["diff_n"].astype(int)
    return full


# --------------------------------------------------------------------------------------------
# display tables
# --------------------------------------------------------------------------------------------


def fmt_p(p) -> str:
    """``'<0.001'``, ``'0.012'``, ``'0.43'`` or ``'n/a'``."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    if p < 0.1:
        return f"{p:.3f}"
    return f"{p:.2f}"


def p_text(p) -> str:
    """``'p < 0.001'``, ``'p = 0.012'`` or ``'p n/a'``: p for running text."""
    t = fmt_p(p)
    return f"p {t[0]} {t[1:]}" if t.startswith("<") else ("p n/a" if t == "n/a" else f"p = {t}")


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _fmt_ci(est, lo, hi) -> str:
    if est is None or not np.isfinite(est):
        return "n/a"
    return f"{_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"


def _cell(full: pd.DataFrame, source: str, measure: str, unit: str, outcome: str) -> pd.Series:
    sel = full[(full["source"] == source) & (full["measure"] == measure) & (full["unit"] == unit)
               & (full["outcome"] == outcome)]
    if len(sel) != 1:
        raise KeyError(f"no single grid cell for {source}/{measure}/{unit}/{outcome}")
    return sel.iloc[0]


def _row_index(full: pd.DataFrame) -> list[tuple[str, str, str]]:
    outcomes = [o for o in OUTCOMES if o in set(full["outcome"])]
    return [(o, m, u) for o in outcomes for m in MEASURES for u in ("pct", "ml")]


def _index(keys) -> pd.MultiIndex:
    return pd.MultiIndex.from_tuples(
        [(OUTCOMES[o], predictor_label(m, u)) for o, m, u in keys], names=["lung function", "lesion measure"]
    )


def side_by_side(full: pd.DataFrame) -> pd.DataFrame:
    """Predicted and reference rho [95 % CI] with n, and their paired difference, one row per cell."""
    keys = _row_index(full)
    rows = []
    for o, m, u in keys:
        p, r = _cell(full, "predicted", m, u, o), _cell(full, "reference", m, u, o)
        rows.append({
            "n": int(p["n"]),
            "predicted ρ [95% CI]": _fmt_ci(p["rho"], p["ci_low"], p["ci_high"]),
            "reference ρ [95% CI]": _fmt_ci(r["rho"], r["ci_low"], r["ci_high"]),
            "n (both)": int(p["diff_n"]),
            "difference pred − ref [95% CI]": _fmt_ci(p["diff"], p["diff_ci_low"], p["diff_ci_high"]),
        })
    return pd.DataFrame(rows, index=_index(keys))


def p_value_table(full: pd.DataFrame) -> pd.DataFrame:
    """Raw and Holm-adjusted p of every cell, predicted and reference."""
    keys = _row_index(full)
    rows = []
    for o, m, u in keys:
        p, r = _cell(full, "predicted", m, u, o), _cell(full, "reference", m, u, o)
        rows.append({
            "predicted p": fmt_p(p["p"]), "predicted p (Holm)": fmt_p(p["p_holm"]),
            "reference p": fmt_p(r["p"]), "reference p (Holm)": fmt_p(r["p_holm"]),
        })
    return pd.DataFrame(rows, index=_index(keys))


def partial_table(full: pd.DataFrame) -> pd.DataFrame:
    """Unadjusted rho beside the partial rho (with its bootstrap CI, n and Holm-adjusted p), both sources."""
    keys = _row_index(full)
    rows = []
    for o, m, u in keys:
        row = {}
        for source in SOURCES:
            c = _cell(full, source, m, u, o)
            row[f"{source} ρ"] = _fmt(c["rho"])
            row[f"{source} partial ρ [95% CI]"] = _fmt_ci(c["partial_rho"], c["partial_ci_low"], c["partial_ci_high"])
            row[f"{source} partial p (Holm)"] = fmt_p(c["partial_p_holm"])
        row["n (complete covariates)"] = int(_cell(full, "predicted", m, u, o)["partial_n"])
        rows.append(row)
    return pd.DataFrame(rows, index=_index(keys))


# --------------------------------------------------------------------------------------------
# staging
# --------------------------------------------------------------------------------------------


def staging(
    table: pd.DataFrame,
    *,
    threshold: float = EXTENT_THRESHOLD_PCT,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """Extent stage (limited <= ``threshold`` % of lung, extensive above) predicted vs reference.

    Returns :func:`sscild.evaluation.staging.staging_agreement`'s dictionary plus ``threshold`` and ``stages``,
    a per-case DataFrame (``pct_ref_lesion, pct_pred_lesion, stage_ref, stage_pred``), and
    ``display``: the confusion table with totals and readable headers.
    """
    ref = table["pct_ref_lesion"]
    pred = table["pct_pred_lesion"]
    stages = pd.DataFrame({
        "pct_ref_lesion": ref,
        "pct_pred_lesion": pred,
        "stage_ref": extent_stage(ref, threshold=threshold),
        "stage_pred": extent_stage(pred, threshold=threshold),
    }, index=table.index)
    agree = staging_agreement(stages["stage_pred"], stages["stage_ref"], seed=seed, n_resamples=n_resamples)
    disp = agree["table"].copy()
    disp.index = [f"reference {c}" for c in disp.index]
    disp.columns = [f"predicted {c}" for c in disp.columns]
    disp["total"] = disp.sum(axis=1)
    disp.loc["total"] = disp.sum(axis=0)
    agree.update(threshold=float(threshold), stages=stages, display=disp)
    return agree


# --------------------------------------------------------------------------------------------
# the paper, the summary, the files
# --------------------------------------------------------------------------------------------


def endpoints(full: pd.DataFrame) -> pd.DataFrame:
    """The primary and the secondary endpoints of the predicted lesion burden (:data:`EXTENT_MEASURE`).

    Primary: predicted total lesion (% of lung) against each of :data:`PRIMARY_OUTCOMES` present;
    its Holm adjustment is over these (a family of at most two). Secondary: the same burden against
    every other lung-function test; their Holm-adjusted p is the whole predicted grid's
    (``p_holm``), which is stricter. Columns: ``role, outcome, n, rho, ci_low, ci_high, p, p_holm``.
    """
    measure, unit = EXTENT_MEASURE
    rows = []
    present = [o for o in OUTCOMES if o in set(full["outcome"])]
    prim = [o for o in PRIMARY_OUTCOMES if o in present]
    for o in present:
        c = _cell(full, "predicted", measure, unit, o)
        rows.append({"role": "primary" if o in prim else "secondary", "outcome": o, "n": int(c["n"]),
                     "rho": c["rho"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p": c["p"],
                     "p_holm": c["p_holm"]})
    out = pd.DataFrame(rows, columns=["role", "outcome", "n", "rho", "ci_low", "ci_high", "p", "p_holm"])
    is_p = out["role"] == "primary"
    if is_p.any():
        out.loc[is_p, "p_holm"] = holm(out.loc[is_p, "p"].to_numpy(dtype=float))
    return out.sort_values("role", kind="stable").reset_index(drop=True)


def endpoints_table(full: pd.DataFrame) -> pd.DataFrame:
    """:func:`endpoints` for the page: ρ [95% CI], p and Holm-adjusted p, primary first."""
    e = endpoints(full)
    rows = [{"endpoint": r["role"], "predicted total lesion (% of lung) against": OUTCOMES[r["outcome"]],
             "n": int(r["n"]), "ρ [95% CI]": _fmt_ci(r["rho"], r["ci_low"], r["ci_high"]),
             "p": fmt_p(r["p"]),
             "p, Holm-adjusted": fmt_p(r["p_holm"]) + (" (over the primary pair)" if r["role"] == "primary"
                                                        else " (over the whole grid)")}
            for _, r in e.iterrows()]
    return pd.DataFrame(rows).set_index(["endpoint", "predicted total lesion (% of lung) against"])


def paper_comparison(full: pd.DataFrame | None = None, cohort: str | None = None) -> pd.DataFrame:
    """The published study's correlations, for orientation only, in a table of their own.

    They are not set in columns beside this run's: on a synthetic cohort the run's coefficients
    are set by the generator, and on another real cohort they estimate another population. The
    arguments are accepted for compatibility and not used.
    """
    rows = [{"lung function": OUTCOMES[o], "published ρ": f"{rho:.2f}", "p": PAPER["spearman_p"],
             "patients": PAPER["n_patients"], "lesion measure": "predicted lesion volume"}
            for o, rho in PAPER["spearman_rho"].items()]
    return pd.DataFrame(rows).set_index("lung function")


def _clean(v):
    """JSON-safe: NaN/inf become None, numpy scalars plain Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _cell_dict(c: pd.Series, diff: bool = False) -> dict:
    keys = ("rho", "ci_low", "ci_high", "p", "p_holm", "n", "ci_method", "partial_rho", "partial_p", "partial_n",
            "partial_ci_low", "partial_ci_high")
    out = {k: c[k] for k in keys}
    if diff:
        out.update(diff=c["diff"], diff_ci_low=c["diff_ci_low"], diff_ci_high=c["diff_ci_high"], diff_n=c["diff_n"])
    return out


def summary_dict(
    full: pd.DataFrame,
    stage: dict,
    *,
    cohort: str,
    synthetic: bool,
    profile: str,
    n_cases: int,
    seed: int,
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """The chapter's key numbers for ``clinical_summary.json`` (NaN written as null).

    Keys: ``cohort, synthetic, profile, n_cases, method, predicted_lesion_pct, reference_lesion_pct,
    predicted_lesion_ml, staging, paper``. Each of the ``*_lesion_*`` entries maps a lung-function
    column (``fev1_pct, fev1_fvc, fvc_pct, dlco_pct``) to ``rho, ci_low, ci_high, p, p_holm, n,
    ci_method, partial_rho, partial_p, partial_n`` (the predicted % entries also ``diff, diff_ci_low,
    diff_ci_high, diff_n``); ``staging`` holds ``kappa, ci_low, ci_high, ci_method,
    percent_agreement, n, threshold_pct, table``.
    """
    outcomes = [o for o in OUTCOMES if o in set(full["outcome"])]
    covs = full["partial_covariates"].iloc[0] if len(full) else "none"
    out = {
        "cohort": cohort,
        "synthetic": bool(synthetic),
        "profile": profile,
        "n_cases": int(n_cases),
        "method": {
            "correlation": "Spearman rank correlation, pairwise deletion",
            "ci": f"paired bootstrap over patients, BCa ({n_resamples} resamples, seed {seed}); "
                  "percentile where BCa is degenerate",
            "confidence_level": 0.95,
            "multiplicity": "Holm, each source's grid (lesion measures x lung-function tests) one family",
            "partial": f"partial Spearman (rank residuals) adjusted for {covs}",
            "difference": "rho(predicted) - rho(reference) on patients with both, paired bootstrap BCa",
            "staging": f"Goh et al. 2008: limited <= {EXTENT_THRESHOLD_PCT:g} % of lung, extensive above",
        },
        "predicted_lesion_pct": {o: _cell_dict(_cell(full, "predicted", "lesion", "pct", o), diff=True) for o in outcomes},
        "reference_lesion_pct": {o: _cell_dict(_cell(full, "reference", "lesion", "pct", o)) for o in outcomes},
        "predicted_lesion_ml": {o: _cell_dict(_cell(full, "predicted", "lesion", "ml", o)) for o in outcomes},
        "staging": {
            "kappa": stage["kappa"],
            "ci_low": stage["ci_low"],
            "ci_high": stage["ci_high"],
            "ci_method": stage["ci_method"],
            "percent_agreement": stage["percent_agreement"],
            "n": stage["n"],
            "threshold_pct": stage["threshold"],
            "table": {f"reference_{r}": {f"predicted_{c}": int(v) for c, v in row.items()}
                      for r, row in stage["table"].iterrows()},
        },
        "endpoints": {
            "measure": "predicted total lesion, % of lung",
            "primary": [r for r in endpoints(full).to_dict("records") if r["role"] == "primary"],
            "secondary": [r for r in endpoints(full).to_dict("records") if r["role"] == "secondary"],
            "multiplicity": "primary: Holm over the primary pair; secondary: Holm over the whole predicted grid",
        },
        "paper": {"n_patients": PAPER["n_patients"], "spearman_rho": PAPER["spearman_rho"],
                  "spearman_p": PAPER["spearman_p"]},
    }
    return _clean(out)


def glue_values(summary: dict) -> dict:
    """Named values for the book's text (``report.glue``): rho, CI text and p of predicted and
    reference lesion % against each lung-function test, and kappa.

    Names: ``clin_n``, ``clin_pred_rho_<outcome>``, ``clin_pred_rho_<outcome>_ci`` (text
    ``'-0.64 [-0.80, -0.41]'``), ``clin_pred_p_<outcome>`` (text), ``clin_ref_rho_<outcome>``,
    ``clin_ref_rho_<outcome>_ci``, ``clin_kappa``, ``clin_kappa_ci``.
    """
    def num(v):
        return float("nan") if v is None else float(v)

    out = {"clin_n": summary["n_cases"]}
    for tag, key in (("pred", "predicted_lesion_pct"), ("ref", "reference_lesion_pct")):
        for o, c in summary[key].items():
            out[f"clin_{tag}_rho_{o}"] = num(c["rho"])
            out[f"clin_{tag}_rho_{o}_ci"] = _fmt_ci(num(c["rho"]), num(c["ci_low"]), num(c["ci_high"]))
            out[f"clin_{tag}_p_{o}"] = fmt_p(num(c["p"]))
    s = summary["staging"]
    out["clin_kappa"] = num(s["kappa"])
    out["clin_kappa_ci"] = _fmt_ci(num(s["kappa"]), num(s["ci_low"]), num(s["ci_high"]))
    return out


def write_outputs(run: RunPaths, full: pd.DataFrame, summary: dict) -> tuple[Path, Path]:
    """Write the grid (``run.clinical_correlations``) and the summary (``run.clinical_summary``),
    each atomically. Returns both paths."""
    with atomic_path(run.clinical_correlations, suffix=".csv") as tmp:
        full.to_csv(tmp, index=False)
    write_json(run.clinical_summary, summary)
    return run.clinical_correlations, run.clinical_summary


# --------------------------------------------------------------------------------------------
# the synthetic cohort's planted model, and the chapter's computed sentences
# --------------------------------------------------------------------------------------------


def planted_model(synthetic: bool):
    """The synthetic generator's lung-function model (``sscild.synthetic.phantom.CLINICAL_MODEL``), or None.

    None for a real cohort, or when the generator does not publish its model.
    """
    if not synthetic:
        return None
    try:
        from sscild.synthetic.phantom import CLINICAL_MODEL
    except (ImportError, AttributeError):
        return None
    return CLINICAL_MODEL


def planted_model_markdown(model) -> str:
    """The planted model for the page: its description, a table of its equations (entries with an
    ``equation``), and every other setting as a two-column table."""
    model = _clean(dict(model))
    parts = []
    if isinstance(model.get("description"), str):
        parts.append(model.pop("description"))
    eqs = {k: v for k, v in model.items() if isinstance(v, dict) and "equation" in v}
    if eqs:
        lines = ["| lung function | planted equation | noise SD |", "|---|---|---|"]
        for k, v in eqs.items():
            lines.append(f"| {OUTCOMES.get(k, k)} | `{v['equation']}` | {v.get('noise_sd', '')} |")
        parts.append("\n".join(lines))
    rest = {k: v for k, v in model.items() if k not in eqs}
    if rest:
        lines = ["| setting | value |", "|---|---|"]
        for k, v in rest.items():
            if isinstance(v, dict):
                v = "; ".join(f"{a}: {json.dumps(b, default=str, ensure_ascii=False)}" for a, b in v.items())
            elif not isinstance(v, str):
                v = json.dumps(v, default=str, ensure_ascii=False)
            lines.append(f"| {k.replace('_', ' ')} | {str(v).replace('|', '/')} |")
        parts.append("Other settings of the generator:\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def planted_vs_recovered(full: pd.DataFrame, model) -> str:
    """The generator's target correlation beside what the reference labels and the prediction give.

    The synthetic generator publishes the Spearman ρ it aims at between total lesion extent and FVC
    (``target_spearman_extent_fvc``); recovering it shows the pipeline keeps a planted signal. Empty
    string when there is no model, no target or no FVC column.
    """
    if model is None or "target_spearman_extent_fvc" not in model or "fvc_pct" not in set(full["outcome"]):
        return ""
    target = float(model["target_spearman_extent_fvc"])
    ref = _cell(full, "reference", "lesion", "pct", "fvc_pct")
    pred = _cell(full, "predicted", "lesion", "pct", "fvc_pct")
    def covers(c):
        return bool(np.isfinite(c["ci_low"]) and np.isfinite(c["ci_high"]) and c["ci_low"] <= target <= c["ci_high"])

    verdict = ("Both intervals include the target: the segmentation kept the planted relationship."
               if covers(ref) and covers(pred) else
               "The reference's interval includes the target but the prediction's does not: segmentation error "
               "lost part of the planted relationship." if covers(ref) else
               "The reference labels' interval does not include the target either (too few patients, or the images "
               "realise the planted extents only approximately).")
    return (f"**Planted against recovered.** The generator aims at Spearman ρ = {target:.2f} between total lesion "
            f"extent and FVC. The reference labels give ρ = {_fmt_ci(ref['rho'], ref['ci_low'], ref['ci_high'])} and "
            f"the network's prediction ρ = {_fmt_ci(pred['rho'], pred['ci_low'], pred['ci_high'])} (n = {int(pred['n'])}). "
            f"{verdict} Whether the target comes back is all the synthetic cohort can show; it says nothing about "
            "how lesions and lung function relate in patients.")


def _direction(rho, lo, hi) -> str:
    if not np.isfinite(rho):
        return "could not be estimated"
    sign = "negative" if rho < 0 else "positive"
    if np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0):
        return f"{sign}, ρ = {_fmt_ci(rho, lo, hi)}"
    return f"not distinguishable from zero, ρ = {_fmt_ci(rho, lo, hi)}"


def _excludes_zero(lo, hi) -> bool:
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))


def paper_contrast(full: pd.DataFrame, *, synthetic: bool = False) -> str:
    """Sentences on this run's primary correlations and what setting them near the paper's can show.

    On a synthetic cohort the coefficient is fixed by the generator's planted model, so the
    sentences say what was recovered and make no claim about the paper; on a real cohort they give
    the direction and say whether the published value lies in this run's interval (a statement
    about compatibility, not a replication test).
    """
    measure, unit = EXTENT_MEASURE
    lines = []
    for o, paper_rho in PAPER["spearman_rho"].items():
        if o not in set(full["outcome"]):
            lines.append(f"- **{OUTCOMES[o]}**: not in this cohort's clinical table.")
            continue
        c = _cell(full, "predicted", measure, unit, o)
        rho, lo, hi = c["rho"], c["ci_low"], c["ci_high"]
        if not np.isfinite(rho):
            lines.append(f"- **{OUTCOMES[o]}**: ρ could not be estimated (n = {int(c['n'])}).")
            continue
        head = f"- **{OUTCOMES[o]}**: predicted total lesion (% of lung) ρ = {_fmt_ci(rho, lo, hi)} (n = {int(c['n'])})"
        if synthetic:
            lines.append(head + ": the size and sign of this coefficient were set by the generator's planted "
                         "model; it shows that the pipeline recovers a relationship that was put in, and "
                         "nothing about the published value.")
            continue
        inside = np.isfinite(lo) and np.isfinite(hi) and lo <= paper_rho <= hi
        sign = ("the same sign as" if np.sign(rho) == np.sign(paper_rho) and _excludes_zero(lo, hi)
                else "the opposite sign to" if _excludes_zero(lo, hi) else "no clear sign, unlike")
        lines.append(head + f", {sign} the published {paper_rho:.2f} (volume); the published value lies "
                     f"{'inside' if inside else 'outside'} this run's 95 % interval, which shows compatibility, "
                     "not replication.")
    return "\n".join(lines)


def _difference_words(diff, lo, hi, rho_ref) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"difference {_fmt_ci(diff, lo, hi)} (no interval)."
    text = f"difference {_fmt_ci(diff, lo, hi)}: "
    if lo <= 0 <= hi:
        return text + ("the interval includes 0, so no loss of the reference's signal is detectable here "
                       "(its width says how large a loss could go unseen).")
    weaker = np.isfinite(rho_ref) and np.sign(diff) == -np.sign(rho_ref)
    return text + ("the model's correlation is weaker than the reference's (attenuated by segmentation error)."
                   if weaker else "the model's correlation is stronger than the reference's.")


def interpretation(full: pd.DataFrame) -> str:
    """A few sentences, computed from the grid, on total lesion % of lung against each test."""
    lines = []
    for o in (o for o in OUTCOMES if o in set(full["outcome"])):
        p = _cell(full, "predicted", "lesion", "pct", o)
        r = _cell(full, "reference", "lesion", "pct", o)
        line = (f"- **{OUTCOMES[o]}** (n = {int(p['n'])}): predicted {_direction(p['rho'], p['ci_low'], p['ci_high'])}; "
                f"reference {_direction(r['rho'], r['ci_low'], r['ci_high'])}; ")
        if _excludes_zero(r["ci_low"], r["ci_high"]) or _excludes_zero(p["diff_ci_low"], p["diff_ci_high"]):
            line += _difference_words(p["diff"], p["diff_ci_low"], p["diff_ci_high"], r["rho"])
        else:
            line += (f"difference {_fmt_ci(p['diff'], p['diff_ci_low'], p['diff_ci_high'])}: the reference labels "
                     "show no clear signal here, so there is none for the model to keep.")
        lines.append(line)
    return "\n".join(lines)
