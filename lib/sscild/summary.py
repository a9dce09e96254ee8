"""The abstract's paragraph, written from the run's summary files (so its numbers are computed)."""

from __future__ import annotations

import math

from .paper import PAPER

__all__ = ["abstract_paragraph"]

_PFT = {"fvc_pct": "FVC %pred", "fev1_pct": "FEV1 %pred", "fev1_fvc": "FEV1/FVC", "dlco_pct": "DLCO %pred"}


def _num(v, nd=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _rho(cell: dict | None) -> str:
    if not cell:
        return "not available"
    return (f"ρ = {_num(cell.get('rho'))} [95 % CI {_num(cell.get('ci_low'))}, {_num(cell.get('ci_high'))}], "
            f"n = {cell.get('n', 'n/a')}")


def abstract_paragraph(seg: dict, clin: dict, info: dict, profile: str) -> str:
    """One paragraph: cohort, Dice against the paper's, and the lung-function correlations."""
    m = seg["metrics"]
    kind = "synthetic" if info["synthetic"] else "real"
    dice = (f"the out-of-fold mean Dice was **{_num(m['dice_lesion']['mean'])}** for total lesion, "
            f"**{_num(m['dice_ef']['mean'])}** for EF and **{_num(m['dice_ggo']['mean'])}** for GGO "
            f"(paper: {PAPER['dice']['total_lesion']}, {PAPER['dice']['ef']}, {PAPER['dice']['ggo']})")
    base = m.get("baseline_dice_lesion", {}).get("mean")
    base_txt = f"; a Hounsfield-unit density threshold reached {_num(base)} for total lesion" if base is not None else ""
    pred = clin.get("predicted_lesion_pct", {})
    corr = "; ".join(f"{_PFT[k]} {_rho(pred.get(k))}" for k in ("fev1_pct", "fev1_fvc", "fvc_pct", "dlco_pct") if k in pred)
    text = (f"On the **{kind}** cohort `{info['folder']}` ({seg['n_cases']} patients, profile `{profile}`), {dice}"
            f"{base_txt}. Predicted lesion extent (% of lung) correlated with lung function as follows: {corr} "
            f"(paper: FEV1 ρ = {PAPER['spearman_rho']['fev1_pct']}, FEV1/FVC ρ = {PAPER['spearman_rho']['fev1_fvc']}).")
    if info["synthetic"]:
        text += (" These are results on synthetic data whose lung-function relationships were planted by the "
                 "generator (Data chapter); they test the pipeline, not the biology.")
    return text
