"""The Clinical correlation chapter: what its notebook shows, section by section.

The lesion measures come from the Segmentation chapter's files (``segmentation_metrics.csv``, and the
lung zones of ``zone_extent.csv``), lung function from the cohort's clinical table. The grid, the
staging and the endpoints are computed by :mod:`sscild.analysis.clinical` (which also writes the
chapter's files), the figures drawn by :mod:`sscild.book.plots.clinical`; this module hands the page
its tables, figures and sentences, and describes the synthetic generator's planted model
(``sscild.synthetic.lungfunction.CLINICAL_MODEL``).

* :func:`load_tables`: the per-case lesion measures, the clinical table and the two joined.
* :func:`describe`: lesion burden, lung function and covariates of the patients.
* :func:`correlations`, :func:`bootstrap_words`: the grid and how its intervals were computed.
* :func:`endpoints_table`, :func:`side_by_side`, :func:`p_value_table`, :func:`partial_table`:
  the grid as tables.
* :func:`paper_comparison`: the published correlations, for orientation only.
* :func:`planted_model`, :func:`planted_model_markdown`, :func:`planted_vs_recovered`: what the
  synthetic generator planted, and whether it came back.
* :func:`interpretation`, :func:`paper_contrast`: computed sentences on the grid.
* :func:`extent_staging`, :func:`kappa_words`, :func:`staging_accuracy_table`, :func:`cutoff_band_words`:
  extent staging, predicted against reference.
* :func:`write_results`: ``clinical_correlations.csv`` and ``clinical_summary.json``.
* :func:`zone_correlation_table`: zonal extent against lung function.

The other names are the analysis's and the plots' own, for the notebook: :func:`availability`,
:func:`rho_heatmap`, :func:`pft_scatter`, :func:`staging_scatter`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.analysis.clinical import (EXTENT_MEASURE, MEASURES, N_RESAMPLES, OUTCOMES, SOURCES, availability,
                                      clinical_correlations, covariates_present, endpoints, grid_cell, join_tables,
                                      json_safe, load_segmentation_metrics, predictor_label, staging, summary_dict,
                                      write_outputs)
from sscild.analysis.clinical_inputs import load_clinical
from sscild.analysis.segmentation import read_cohort_zones
from sscild.book.plots.clinical import pft_scatter, rho_heatmap, staging_scatter
from sscild.clinic.zones import zone_correlations
from sscild.numfmt import fmt_interval, fmt_num, fmt_p
from sscild.evaluation.stats import RHO_POWER, detectable_rho
from sscild.paper import EXTENT_THRESHOLD_PCT, PAPER
from sscild.paths import RunPaths
from sscild.profiles import Profile

__all__ = [
    "load_tables",
    "describe",
    "correlations",
    "bootstrap_words",
    "side_by_side",
    "p_value_table",
    "partial_table",
    "endpoints_table",
    "paper_comparison",
    "planted_model",
    "planted_model_markdown",
    "planted_vs_recovered",
    "interpretation",
    "paper_contrast",
    "extent_staging",
    "kappa_words",
    "staging_accuracy_table",
    "cutoff_band_words",
    "write_results",
    "zone_correlation_table",
    # the analysis's and the plots' own names, for the notebook
    "availability",
    "rho_heatmap",
    "pft_scatter",
    "staging_scatter",
]


# --------------------------------------------------------------------------------------------
# the chapter's inputs and its grid
# --------------------------------------------------------------------------------------------


def load_tables(run: RunPaths, data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(seg, clinical, table)``: the Segmentation chapter's per-case lesion measures
    (:func:`sscild.analysis.clinical.load_segmentation_metrics`), the cohort's clinical table
    (:func:`sscild.analysis.clinical_inputs.load_clinical`, its problems and notes in ``attrs``) and the two
    joined, one row per segmented patient (:func:`sscild.analysis.clinical.join_tables`)."""
    seg = load_segmentation_metrics(run.segmentation_metrics)
    clinical = load_clinical(data_dir)
    return seg, clinical, join_tables(seg, clinical)


def correlations(table: pd.DataFrame, prof: Profile) -> tuple[pd.DataFrame, list[str]]:
    """The whole correlation grid (:func:`sscild.analysis.clinical.clinical_correlations`, seeded by the profile,
    :data:`~sscild.analysis.clinical.N_RESAMPLES` resamples) and the covariates its partial correlations adjust for."""
    covariates = covariates_present(table)
    return clinical_correlations(table, covariates=covariates, seed=prof.seed, n_resamples=N_RESAMPLES), covariates


def bootstrap_words(full: pd.DataFrame, covariates: list[str], prof: Profile) -> str:
    """The bootstrap as run (resamples, seed, interval methods) and the covariates of the partial correlations."""
    return (f"Bootstrap: **{N_RESAMPLES}** resamples, seed **{prof.seed}** (profile `{prof.name}`); "
            f"intervals by method: {full['ci_method'].value_counts().to_dict()}. "
            f"Partial correlations adjusted for: **{', '.join(covariates) or 'nothing (no covariate columns)'}**.")


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


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
        p, r = grid_cell(full, "predicted", m, u, o), grid_cell(full, "reference", m, u, o)
        rows.append({
            "n": int(p["n"]),
            "predicted ρ [95% CI]": fmt_interval(p["rho"], p["ci_low"], p["ci_high"]),
            "reference ρ [95% CI]": fmt_interval(r["rho"], r["ci_low"], r["ci_high"]),
            "n (both)": int(p["diff_n"]),
            "difference pred − ref [95% CI]": fmt_interval(p["diff"], p["diff_ci_low"], p["diff_ci_high"]),
        })
    return pd.DataFrame(rows, index=_index(keys))


def p_value_table(full: pd.DataFrame) -> pd.DataFrame:
    """Raw and Holm-adjusted p of every cell, predicted and reference."""
    keys = _row_index(full)
    rows = []
    for o, m, u in keys:
        p, r = grid_cell(full, "predicted", m, u, o), grid_cell(full, "reference", m, u, o)
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
            c = grid_cell(full, source, m, u, o)
            row[f"{source} ρ"] = fmt_num(c["rho"])
            row[f"{source} partial ρ [95% CI]"] = fmt_interval(c["partial_rho"], c["partial_ci_low"], c["partial_ci_high"])
            row[f"{source} partial p (Holm)"] = fmt_p(c["partial_p_holm"])
        row["n (complete covariates)"] = int(grid_cell(full, "predicted", m, u, o)["partial_n"])
        rows.append(row)
    return pd.DataFrame(rows, index=_index(keys))


def endpoints_table(full: pd.DataFrame) -> pd.DataFrame:
    """:func:`sscild.analysis.clinical.endpoints` for the page: ρ [95% CI], p and Holm-adjusted p, primary first."""
    e = endpoints(full)
    rows = [{"endpoint": r["role"], "predicted total lesion (% of lung) against": OUTCOMES[r["outcome"]],
             "n": int(r["n"]), "ρ [95% CI]": fmt_interval(r["rho"], r["ci_low"], r["ci_high"]),
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


# --------------------------------------------------------------------------------------------
# the synthetic cohort's planted model, and the chapter's computed sentences
# --------------------------------------------------------------------------------------------


def planted_model(synthetic: bool):
    """The synthetic generator's lung-function model (``sscild.synthetic.lungfunction.CLINICAL_MODEL``), or None.

    None for a real cohort, or when the generator does not publish its model.
    """
    if not synthetic:
        return None
    try:
        from sscild.synthetic.lungfunction import CLINICAL_MODEL  # lazy: a generator may not publish its model
    except (ImportError, AttributeError):
        return None
    return CLINICAL_MODEL


def planted_model_markdown(model) -> str:
    """The planted model for the page: its description, a table of its equations (entries with an
    ``equation``), and every other setting as a two-column table."""
    model = json_safe(dict(model))
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
    ref = grid_cell(full, "reference", "lesion", "pct", "fvc_pct")
    pred = grid_cell(full, "predicted", "lesion", "pct", "fvc_pct")
    def covers(c):
        return bool(np.isfinite(c["ci_low"]) and np.isfinite(c["ci_high"]) and c["ci_low"] <= target <= c["ci_high"])

    verdict = ("Both intervals include the target: the segmentation kept the planted relationship."
               if covers(ref) and covers(pred) else
               "The reference's interval includes the target but the prediction's does not: segmentation error "
               "lost part of the planted relationship." if covers(ref) else
               "The reference labels' interval does not include the target either (too few patients, or the images "
               "realise the planted extents only approximately).")
    return (f"**Planted against recovered.** The generator aims at Spearman ρ = {target:.2f} between total lesion "
            f"extent and FVC. The reference labels give ρ = {fmt_interval(ref['rho'], ref['ci_low'], ref['ci_high'])} and "
            f"the network's prediction ρ = {fmt_interval(pred['rho'], pred['ci_low'], pred['ci_high'])} (n = {int(pred['n'])}). "
            f"{verdict} Whether the target comes back is all the synthetic cohort can show; it says nothing about "
            "how lesions and lung function relate in patients.")


def _direction(rho, lo, hi) -> str:
    if not np.isfinite(rho):
        return "could not be estimated"
    sign = "negative" if rho < 0 else "positive"
    if np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0):
        return f"{sign}, ρ = {fmt_interval(rho, lo, hi)}"
    return f"not distinguishable from zero, ρ = {fmt_interval(rho, lo, hi)}"


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
        c = grid_cell(full, "predicted", measure, unit, o)
        rho, lo, hi = c["rho"], c["ci_low"], c["ci_high"]
        if not np.isfinite(rho):
            lines.append(f"- **{OUTCOMES[o]}**: ρ could not be estimated (n = {int(c['n'])}).")
            continue
        head = f"- **{OUTCOMES[o]}**: predicted total lesion (% of lung) ρ = {fmt_interval(rho, lo, hi)} (n = {int(c['n'])})"
        lo_d, hi_d = detectable_rho(paper_rho, int(c["n"]))
        power = (f" With n = {int(c['n'])}, only a true ρ below {lo_d:.2f} or above {hi_d:.2f} would be told "
                 f"apart from the published {paper_rho:.2f} with {RHO_POWER:.0%} power (two-sided, 5 %); a true "
                 "value between the two cannot be, with this many patients.")
        if synthetic:
            lines.append(head + ": the size and sign of this coefficient were set by the generator's planted "
                         "model; it shows that the pipeline recovers a relationship that was put in, and "
                         "nothing about the published value." + power)
            continue
        inside = np.isfinite(lo) and np.isfinite(hi) and lo <= paper_rho <= hi
        sign = ("the same sign as" if np.sign(rho) == np.sign(paper_rho) and _excludes_zero(lo, hi)
                else "the opposite sign to" if _excludes_zero(lo, hi) else "no clear sign, unlike")
        lines.append(head + f", {sign} the published {paper_rho:.2f} (volume); the published value lies "
                     f"{'inside' if inside else 'outside'} this run's 95 % interval, which shows compatibility, "
                     "not replication." + power)
    return "\n".join(lines)


def _difference_words(diff, lo, hi, rho_ref) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"difference {fmt_interval(diff, lo, hi)} (no interval)."
    text = f"difference {fmt_interval(diff, lo, hi)}: "
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
        p = grid_cell(full, "predicted", "lesion", "pct", o)
        r = grid_cell(full, "reference", "lesion", "pct", o)
        line = (f"- **{OUTCOMES[o]}** (n = {int(p['n'])}): predicted {_direction(p['rho'], p['ci_low'], p['ci_high'])}; "
                f"reference {_direction(r['rho'], r['ci_low'], r['ci_high'])}; ")
        if _excludes_zero(r["ci_low"], r["ci_high"]) or _excludes_zero(p["diff_ci_low"], p["diff_ci_high"]):
            line += _difference_words(p["diff"], p["diff_ci_low"], p["diff_ci_high"], r["rho"])
        else:
            line += (f"difference {fmt_interval(p['diff'], p['diff_ci_low'], p['diff_ci_high'])}: the reference labels "
                     "show no clear signal here, so there is none for the model to keep.")
        lines.append(line)
    return "\n".join(lines)


def extent_staging(table: pd.DataFrame, prof: Profile) -> dict:
    """Extent stage predicted against reference at the published cut-off
    (:func:`sscild.analysis.clinical.staging`, seeded by the profile)."""
    return staging(table, threshold=EXTENT_THRESHOLD_PCT, seed=prof.seed, n_resamples=N_RESAMPLES)


def kappa_words(stage: dict) -> str:
    """Percent agreement and Cohen's κ [95% CI] of the predicted against the reference stage."""
    return (f"Agreement {stage['percent_agreement']:.0f} % of {stage['n']} patients; Cohen's κ = "
            f"**{fmt_interval(stage['kappa'], stage['ci_low'], stage['ci_high'])}** "
            f"(interval: {stage['ci_method']}).")


def staging_accuracy_table(stage: dict) -> pd.DataFrame:
    """Sensitivity, specificity, PPV and NPV of the predicted stage for *extensive* disease (reference stage as
    truth), each with its counts and Wilson 95 % interval (:func:`sscild.evaluation.staging.extensive_accuracy`)."""
    from sscild.evaluation.staging import extensive_accuracy

    st = stage["stages"]
    acc = extensive_accuracy(st["stage_pred"], st["stage_ref"])
    names = {"sensitivity": "sensitivity (extensive found)", "specificity": "specificity (limited kept limited)",
             "ppv": "positive predictive value", "npv": "negative predictive value"}
    rows = [{"measure": names[k], "patients": f"{v['k']} of {v['n']}",
             "value [95% CI]": (fmt_interval(v["value"], v["ci_low"], v["ci_high"]) if v["n"] else "n/a (no patient)")}
            for k, v in acc.items()]
    return pd.DataFrame(rows).set_index("measure")


def cutoff_band_words(stage: dict, seg_summary) -> str:
    """The Bland-Altman limits of the lesion extent (Segmentation chapter) read against the staging cut-off.

    ``seg_summary``: the Segmentation chapter's summary dict, or the path of its ``segmentation_summary.json``
    (a missing file: the band is not computed, and the sentence says so)."""
    from sscild.evaluation.staging import cutoff_band

    if isinstance(seg_summary, (str, Path)):
        seg_summary = json.loads(Path(seg_summary).read_text()) if Path(seg_summary).exists() else None
    ba = (((seg_summary or {}).get("agreement") or {}).get("network") or {}).get("lesion", {}).get("bland_altman")
    if not ba or ba.get("loa_low") is None:
        return "The Segmentation chapter's limits of agreement are not available, so the cut-off band is not computed."
    thr = stage["threshold"]
    band = cutoff_band(stage["stages"]["pct_pred_lesion"], loa_low=ba["loa_low"], loa_high=ba["loa_high"], threshold=thr)
    return (f"The limits of agreement of predicted against reference extent are {fmt_num(ba['loa_low'], 1)} to "
            f"+{fmt_num(ba['loa_high'], 1)} percentage points (Segmentation chapter). Read against the {thr:g} % "
            f"cut-off, a predicted extent between {fmt_num(band['band_low'], 1)} and {fmt_num(band['band_high'], 1)} % "
            f"may belong to either stage: **{band['in_band']} of {band['n']}** patients lie in that band, and for them "
            "the predicted stage alone should not decide; their scans need a reader.")


# --------------------------------------------------------------------------------------------
# the chapter's files, and the lung zones
# --------------------------------------------------------------------------------------------


def write_results(run: RunPaths, full: pd.DataFrame, stage: dict, info: dict, *, profile: str, seed: int,
                  n_cases: int) -> tuple[Path, Path]:
    """Write the grid (``clinical_correlations.csv``) and the summary (``clinical_summary.json``,
    :func:`sscild.analysis.clinical.summary_dict`); returns both paths."""
    summary = summary_dict(full, stage, cohort=info["name"], synthetic=info["synthetic"], profile=profile,
                           n_cases=n_cases, seed=seed, n_resamples=N_RESAMPLES)
    return write_outputs(run, full, summary)


def zone_correlation_table(run: RunPaths, data_dir: str | Path, clinical: pd.DataFrame, *,
                           seed: int) -> pd.DataFrame | None:
    """Spearman ρ of the predicted extent in the lower and the peripheral zones (and the whole lung) against FVC
    and DLCO (:func:`sscild.clinic.zones.zone_correlations`), from the zone extents the Segmentation chapter wrote
    (:func:`sscild.analysis.segmentation.read_cohort_zones`).

    ``None`` when the cohort has no label maps or the run no out-of-fold predictions.

    Raises:
        FileNotFoundError: there are predictions but no zone extents: run the Segmentation chapter first.
    """
    if not ((Path(data_dir) / "labelsTr").is_dir() and run.predictions.is_dir()):
        return None
    return zone_correlations(read_cohort_zones(run), clinical, n_resamples=N_RESAMPLES, seed=seed)
