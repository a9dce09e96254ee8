"""The Clinical correlation chapter's computations: lesion burden against lung function.

The chapter asks two questions of the out-of-fold predictions:

1. Does the lesion burden the network predicts track pulmonary function? Spearman correlations of
   predicted lesion measures (total lesion, EF, GGO; in mL and in percent of lung) with FVC % pred,
   FEV1 % pred, FEV1/FVC and DLCO % pred, with patient-bootstrap intervals, Holm adjustment and a
   covariate-adjusted (partial) correlation.
2. Does the model keep the clinical signal of the reference labels? The same grid for the reference
   volumes and the paired difference ``rho(predicted) - rho(reference)`` per cell.

plus extent staging (Goh et al. 2008) of predicted against reference lesion percent. The statistics
themselves live in :mod:`sscild.evaluation.stats`; this module joins the tables, runs the grids and
writes ``clinical_correlations.csv`` and ``clinical_summary.json``. The clinical table is read by
:mod:`sscild.analysis.clinical_inputs`; the chapter's tables and sentences are built from the grid
by :mod:`sscild.book.chapters.clinical`.

Example:
    >>> from sscild.analysis.clinical import predictor_column, predictor_label
    >>> predictor_column("predicted", "ef", "pct"), predictor_column("reference", "lesion", "ml")
    ('pct_pred_ef', 'vol_ref_lesion_ml')
    >>> predictor_label("lesion", "pct")
    'total lesion, % of lung'
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.evaluation.stats import correlation_grid, holm, rho_difference
from sscild.evaluation.staging import extent_stage, staging_agreement
from sscild.paper import EXTENT_THRESHOLD_PCT, PAPER
from sscild.paths import RunPaths, atomic_path, write_json

__all__ = [
    "OUTCOMES",
    "MEASURES",
    "UNITS",
    "SOURCES",
    "COVARIATES",
    "N_RESAMPLES",
    "PRIMARY_OUTCOMES",
    "EXTENT_MEASURE",
    "predictor_column",
    "predictor_label",
    "load_segmentation_metrics",
    "join_tables",
    "availability",
    "covariates_present",
    "clinical_correlations",
    "grid_cell",
    "staging",
    "endpoints",
    "json_safe",
    "summary_dict",
    "write_outputs",
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


def grid_cell(full: pd.DataFrame, source: str, measure: str, unit: str, outcome: str) -> pd.Series:
    """The one row of the grid (:func:`clinical_correlations`) for ``source``, ``measure``, ``unit`` and ``outcome``."""
    sel = full[(full["source"] == source) & (full["measure"] == measure) & (full["unit"] == unit)
               & (full["outcome"] == outcome)]
    if len(sel) != 1:
        raise KeyError(f"no single grid cell for {source}/{measure}/{unit}/{outcome}")
    return sel.iloc[0]


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

    Returns :func:`sscild.evaluation.stats.staging_agreement`'s dictionary plus ``threshold`` and ``stages``,
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
# the endpoints, the summary, the files
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
        c = grid_cell(full, "predicted", measure, unit, o)
        rows.append({"role": "primary" if o in prim else "secondary", "outcome": o, "n": int(c["n"]),
                     "rho": c["rho"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p": c["p"],
                     "p_holm": c["p_holm"]})
    out = pd.DataFrame(rows, columns=["role", "outcome", "n", "rho", "ci_low", "ci_high", "p", "p_holm"])
    is_p = out["role"] == "primary"
    if is_p.any():
        out.loc[is_p, "p_holm"] = holm(out.loc[is_p, "p"].to_numpy(dtype=float))
    return out.sort_values("role", kind="stable").reset_index(drop=True)


def json_safe(v):
    """JSON-safe: NaN/inf become None, numpy scalars plain Python."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
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
        "predicted_lesion_pct": {o: _cell_dict(grid_cell(full, "predicted", "lesion", "pct", o), diff=True) for o in outcomes},
        "reference_lesion_pct": {o: _cell_dict(grid_cell(full, "reference", "lesion", "pct", o)) for o in outcomes},
        "predicted_lesion_ml": {o: _cell_dict(grid_cell(full, "predicted", "lesion", "ml", o)) for o in outcomes},
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
    return json_safe(out)


def write_outputs(run: RunPaths, full: pd.DataFrame, summary: dict) -> tuple[Path, Path]:
    """Write the grid (``run.clinical_correlations``) and the summary (``run.clinical_summary``),
    each atomically. Returns both paths."""
    with atomic_path(run.clinical_correlations, suffix=".csv") as tmp:
        full.to_csv(tmp, index=False)
    write_json(run.clinical_summary, summary)
    return run.clinical_correlations, run.clinical_summary
