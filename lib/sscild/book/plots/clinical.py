"""Figures of the Clinical correlation chapter.

* :func:`pft_scatter`: lesion burden against each lung-function test, with Spearman rho, its
  bootstrap interval and a LOWESS trend (statsmodels) per panel.
* :func:`rho_heatmap`: the rho grid of the predicted volumes next to the reference volumes' grid and
  their difference.
* :func:`staging_scatter`: predicted against reference lesion percent with the extent-stage cut-off.

Usage::

    from sscild.book.plots.clinical import rho_heatmap
    fig = rho_heatmap(full)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from statsmodels.nonparametric.smoothers_lowess import lowess

from sscild.analysis.clinical import (EXTENT_MEASURE, MEASURES, OUTCOMES, SOURCES, endpoints, predictor_column,
                                      predictor_label)
from sscild.numfmt import fmt_p, p_text
from sscild.paper import EXTENT_THRESHOLD_PCT

__all__ = ["pft_scatter", "rho_heatmap", "staging_scatter", "save_and_show"]

_SOURCE_COLOR = {"predicted": "#3b6ea5", "reference": "#7f7f7f"}


def _f(v, nd=2):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _lookup(full, source, measure, unit, outcome):
    sel = full[(full["source"] == source) & (full["measure"] == measure) & (full["unit"] == unit)
               & (full["outcome"] == outcome)]
    return sel.iloc[0] if len(sel) else None


def pft_scatter(table: pd.DataFrame, full: pd.DataFrame, *, source: str = "predicted", measure: str = "lesion",
                unit: str = "pct", frac: float = 0.8, threshold: float = EXTENT_THRESHOLD_PCT):
    """One panel per lung-function test: lesion burden (x) against the test (y).

    Each panel shows the patients with both values, a LOWESS trend (statsmodels, ``frac`` of the
    points per local fit), and above it Spearman rho [95 % CI], p and n read from ``full`` (the
    grid of :func:`sscild.analysis.clinical.clinical_correlations`). The adjusted p is Holm over the whole grid,
    except for the primary endpoints (predicted total lesion, % of lung, against FEV1 and FEV1/FVC), whose one
    adjusted p is Holm over that pair (:func:`sscild.analysis.clinical.endpoints`), as in the endpoints table and
    the abstract. The paper's values are not drawn: they are in the Abstract's claims ledger.
    For percent of lung a dashed line marks the extent-stage cut-off.
    """
    col = predictor_column(source, measure, unit)
    outcomes = [o for o in OUTCOMES if o in table.columns]
    primary = {}
    if source == "predicted" and (measure, unit) == EXTENT_MEASURE:
        ends = endpoints(full)
        primary = dict(zip(ends.loc[ends["role"] == "primary", "outcome"], ends.loc[ends["role"] == "primary", "p_holm"]))
    ncols = 2 if len(outcomes) > 1 else 1
    nrows = int(np.ceil(len(outcomes) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, o in zip(axes.flat, outcomes):
        d = table[[col, o]].dropna()
        ax.scatter(d[col], d[o], s=22, color=_SOURCE_COLOR[source], alpha=0.8, edgecolor="white", linewidth=0.5)
        if len(d) >= 5 and d[col].nunique() > 2:
            fit = lowess(d[o].to_numpy(float), d[col].to_numpy(float), frac=frac, return_sorted=True)
            ax.plot(fit[:, 0], fit[:, 1], color="#d1495b", lw=1.6, label="LOWESS")
        if unit == "pct":
            ax.axvline(threshold, color="0.4", ls="--", lw=0.8)
        c = _lookup(full, source, measure, unit, o)
        text = "ρ n/a"
        if c is not None:
            family = "Holm over the grid"
            p_adj = c["p_holm"]
            if o in primary:   # a primary endpoint has one adjusted p, everywhere: over the primary pair
                family, p_adj = "primary endpoint; Holm over the primary pair", primary[o]
            text = (f"ρ = {_f(c['rho'])} [{_f(c['ci_low'])}, {_f(c['ci_high'])}], n = {int(c['n'])}\n"
                    f"{p_text(c['p'])} (adjusted {fmt_p(p_adj)}: {family})")
        ax.set_title(text, fontsize=8, loc="left")
        ax.set(xlabel=f"{source} {predictor_label(measure, unit)}", ylabel=OUTCOMES[o])
    for ax in list(axes.flat)[len(outcomes):]:
        ax.set_visible(False)
    fig.suptitle(f"{source.capitalize()} {MEASURES[measure]} against lung function "
                 "(Spearman ρ, 95% bootstrap CI; red: LOWESS)", fontsize=10)
    fig.tight_layout()
    return fig


def _matrix(full, source, value):
    outcomes = [o for o in OUTCOMES if o in set(full["outcome"])]
    rows = [(m, u) for m in MEASURES for u in ("pct", "ml")]
    mat = pd.DataFrame(np.nan, index=[predictor_label(m, u) for m, u in rows], columns=[OUTCOMES[o] for o in outcomes])
    mark = pd.DataFrame("", index=mat.index, columns=mat.columns)
    for m, u in rows:
        for o in outcomes:
            c = _lookup(full, "predicted" if value == "diff" else source, m, u, o)
            if c is None:
                continue
            r, col = predictor_label(m, u), OUTCOMES[o]
            mat.loc[r, col] = c[value]
            if value == "diff":
                sig = np.isfinite(c["diff_ci_low"]) and (c["diff_ci_low"] > 0 or c["diff_ci_high"] < 0)
            else:
                sig = np.isfinite(c["p_holm"]) and c["p_holm"] < 0.05
            mark.loc[r, col] = "*" if sig else ""
    return mat, mark


def rho_heatmap(full: pd.DataFrame, *, show_difference: bool = True):
    """Heat maps of Spearman rho: predicted volumes, reference volumes and (optionally) their
    difference. ``*`` marks Holm-adjusted p < 0.05 (difference: bootstrap CI excluding 0)."""
    panels = [(s, "rho", f"{s} volumes") for s in SOURCES]
    if show_difference:
        panels.append(("predicted", "diff", "difference (pred − ref)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels) + 1.2, 3.9), sharey=True)
    axes = np.atleast_1d(axes)
    for k, (ax, (source, value, title)) in enumerate(zip(axes, panels)):
        mat, mark = _matrix(full, source, value)
        annot = mat.map(lambda v: "" if not np.isfinite(v) else f"{v:.2f}".replace("-0.00", "0.00")) + mark
        sns.heatmap(mat.astype(float), ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", annot=annot, fmt="",
                    annot_kws={"fontsize": 8}, cbar=k == len(panels) - 1, linewidths=0.5, linecolor="white",
                    cbar_kws={"label": "Spearman ρ (difference: Δρ)", "shrink": 0.85})
        ax.set_title(title)
        ax.set_xlabel("")
        ax.set_ylabel("" if k else "lesion measure")
        ax.tick_params(axis="x", rotation=35)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    fig.suptitle("Lesion burden vs lung function: Spearman ρ (* Holm p < 0.05 over the whole grid, a screen; "
                 "the primary endpoints' own p is in the endpoints table; difference: 95% CI excludes 0)", fontsize=9)
    fig.tight_layout()
    return fig


def staging_scatter(stage: dict):
    """Predicted against reference lesion % of lung, coloured by stage agreement, with the cut-off.

    ``stage`` is :func:`sscild.analysis.clinical.staging`'s result; the four quadrants cut by the dashed
    lines are the cells of its confusion table.
    """
    d = stage["stages"].dropna(subset=["pct_ref_lesion", "pct_pred_lesion"])
    t = stage["threshold"]
    agree = d["stage_ref"] == d["stage_pred"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.scatter(d.loc[agree, "pct_ref_lesion"], d.loc[agree, "pct_pred_lesion"], s=24, color="#3b6ea5",
               edgecolor="white", linewidth=0.5, label="same stage")
    ax.scatter(d.loc[~agree, "pct_ref_lesion"], d.loc[~agree, "pct_pred_lesion"], s=34, color="#d1495b",
               marker="D", edgecolor="white", linewidth=0.5, label="stage differs")
    hi = float(np.nanmax([d["pct_ref_lesion"].max(), d["pct_pred_lesion"].max(), t * 1.5])) * 1.05 if len(d) else 1.0
    ax.plot([0, hi], [0, hi], color="0.5", lw=0.8, label="identity")
    ax.axvline(t, color="0.3", ls="--", lw=0.8)
    ax.axhline(t, color="0.3", ls="--", lw=0.8)
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="reference lesion, % of lung", ylabel="predicted lesion, % of lung",
           title=f"Extent stage (cut-off {t:g} %): κ = {_f(stage['kappa'])} [{_f(stage['ci_low'])}, "
                 f"{_f(stage['ci_high'])}], n = {stage['n']}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def save_and_show(fig, name: str, folder) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png``, close it, and display that PNG once.

    (Chapters use :func:`sscild.book.report.figure`, which also numbers and captions the figure; this
    is kept for scripts and notebooks that only need the file shown.)
    """
    from IPython.display import Image, display

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    display(Image(filename=str(path)))
    return path
