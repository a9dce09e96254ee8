"""The Abstract page: the claims ledger, the paper's methods beside the re-run's, and the run in one paragraph.

* :func:`claims_ledger`: every number the published study claims (Dice of total lesion, EF and GGO;
  Spearman ρ of lesion volume with FEV1 and FEV1/FVC), what this run gives with its interval, whether
  this cohort can test the claim at all, what difference it could detect, and a verdict in words. On
  the built-in synthetic cohort the verdict is always that the pipeline runs and the claim is not
  testable; on a real cohort the same table compares the claim with the run's interval.
* :func:`methods_table`: network, dimensionality, resolution, training budget, post-processing, Dice
  averaging and lesion measure of the paper (as far as its abstract states them) and of this run.
* :func:`abstract_paragraph`: this run's Dice and its primary and secondary endpoints in one paragraph,
  with the synthetic caveat.

All three are computed from the run's summary files and the profile, never written by hand.

Usage::

    claims_ledger(read_json(run.segmentation_summary), read_json(run.clinical_summary), info)
    methods_table(prof, read_json(run.segmentation_summary))
    abstract_paragraph(read_json(run.segmentation_summary), read_json(run.clinical_summary), info, profile)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sscild.numfmt import fmt_num, p_text
from sscild.evaluation.stats import RHO_POWER, detectable_rho
from sscild.paper import PAPER

__all__ = ["claims_ledger", "methods_table", "abstract_paragraph"]

_PFT = {"fvc_pct": "FVC %pred", "fev1_pct": "FEV1 %pred", "fev1_fvc": "FEV1/FVC", "dlco_pct": "DLCO %pred"}


def _interval(cell: dict | None, value_key: str, nd: int = 2) -> str:
    if not cell or cell.get(value_key) is None or not np.isfinite(cell.get(value_key)):
        return "not available"
    return f"{fmt_num(cell[value_key], nd)} [{fmt_num(cell.get('ci_low'), nd)}, {fmt_num(cell.get('ci_high'), nd)}]"


def _verdict(published: float, cell: dict | None, *, synthetic: bool, what: str) -> str:
    if synthetic:
        return f"pipeline runs; not testable on synthetic data ({what})"
    if not cell or cell.get("ci_low") is None or not np.isfinite(cell.get("ci_low")):
        return "not computed on this cohort"
    lo, hi = float(cell["ci_low"]), float(cell["ci_high"])
    if lo <= published <= hi:
        return "consistent with the paper (its value lies in this run's 95 % interval)"
    return ("lower than published (the interval lies below it)" if hi < published
            else "higher than published (the interval lies above it)")


def claims_ledger(seg: dict, clin: dict, info: dict) -> pd.DataFrame:
    """One row per published claim: the paper's value, this run's, testable or not, detectable difference, verdict.

    Args:
        seg: ``segmentation_summary.json`` (``metrics`` with mean and bootstrap CI over patients).
        clin: ``clinical_summary.json`` (``predicted_lesion_ml`` and ``predicted_lesion_pct`` grids).
        info: the run's cohort info (``synthetic``).

    Returns:
        DataFrame indexed by claim, columns ``Paper``, ``This run [95 % CI]``, ``Testable on this
        cohort?``, ``What n patients can detect`` and ``Verdict``.
    """
    synthetic = bool(info.get("synthetic"))
    n = int(seg.get("n_cases") or 0)
    m = seg.get("metrics", {})
    rows = []
    dice_test = ("No: the generator sets how hard its lesions are to delineate" if synthetic
                 else "Yes, when the labels follow the study's protocol (normal lung, EF, GGO)")
    for key, label, pub in (("dice_lesion", "Dice, total lesion (EF + GGO)", PAPER["dice"]["total_lesion"]),
                            ("dice_ef", "Dice, established fibrosis", PAPER["dice"]["ef"]),
                            ("dice_ggo", "Dice, ground-glass opacity", PAPER["dice"]["ggo"])):
        cell = m.get(key) or {}
        # a true mean this far from the published value gives an interval excluding it with RHO_POWER power
        # (normal approximation: the interval's half-width is 1.96 standard errors)
        half = (cell.get("ci_high", np.nan) - cell.get("ci_low", np.nan)) / 2 if cell else np.nan
        detect = half * (1.959964 + 0.841621) / 1.959964
        rows.append({"Claim": label, "Paper": f"{pub:.2f}",
                     "This run [95 % CI]": _interval(cell, "mean") + " (mean over patients)",
                     "Testable on this cohort?": dice_test,
                     "What n patients can detect": (f"n = {cell.get('n', n)}: a true mean more than about "
                                                    f"{detect:.2f} from {pub:.2f}, with {RHO_POWER:.0%} power"
                                                    if np.isfinite(half) else "n/a"),
                     "Verdict": _verdict(pub, {"ci_low": cell.get("ci_low"), "ci_high": cell.get("ci_high")} if cell
                                         else None, synthetic=synthetic, what="Dice depends on the generator")})
    rho_test = ("No: the generator planted the lesion–lung-function relationship (Data chapter)" if synthetic
                else "Yes, with the lung-function tests of these patients")
    for outcome in ("fev1_pct", "fev1_fvc"):
        pub = PAPER["spearman_rho"][outcome]
        ml = (clin.get("predicted_lesion_ml") or {}).get(outcome)
        pct = (clin.get("predicted_lesion_pct") or {}).get(outcome)
        n_o = int((ml or pct or {}).get("n") or n)
        lo, hi = detectable_rho(pub, n_o)
        rows.append({"Claim": f"Spearman ρ, predicted lesion volume vs {_PFT[outcome]}", "Paper": f"{pub:.2f}",
                     "This run [95 % CI]": (f"{_interval(ml, 'rho')} (volume, mL, as the paper); "
                                            f"{_interval(pct, 'rho')} (% of lung, this book's primary endpoint)"),
                     "Testable on this cohort?": rho_test,
                     "What n patients can detect": (f"n = {n_o}: a true ρ outside [{lo:.2f}, {hi:.2f}] would be told "
                                                    f"from {pub:.2f} with {RHO_POWER:.0%} power"),
                     "Verdict": _verdict(pub, ml, synthetic=synthetic,
                                         what="the generator set the correlation")})
    return pd.DataFrame(rows).set_index("Claim")


def methods_table(prof, seg: dict) -> pd.DataFrame:
    """The paper's methods (as far as its abstract states them) beside this run's, row by row.

    Args:
        prof: the run's :class:`~sscild.profiles.Profile`.
        seg: ``segmentation_summary.json`` (``n_cases``).

    Returns:
        DataFrame indexed by aspect, columns ``Paper`` and ``This re-run``.
    """
    from sscild.model.inference import POSTPROCESS_RULE

    not_stated = "not stated in the abstract"
    sp = [("native" if s is None else f"{s:g} mm") for s in prof.target_spacing]
    budget = f"{prof.iterations} steps of batch {prof.batch_size}, patches {'x'.join(map(str, prof.patch_size))}"
    if prof.semi_supervised == "pretrain":
        budget += f", after {prof.pretrain_steps} pretraining steps on unlabelled scans"
    threshold = ("; lesion only where EF and GGO together reach a mean probability of "
                 f"{prof.lesion_threshold:g}" if prof.lesion_threshold else "")
    rows = {
        "Network": ("convolutional neural network",
                    (f"MONAI U-Net, channels {'-'.join(map(str, prof.channels))}, {prof.num_res_units} residual units"
                     if prof.architecture == "unet" else
                     f"plain convolutional U-Net (nnU-Net blocks), channels {'-'.join(map(str, prof.channels))}")
                    + f", fold ensemble of {prof.num_folds} for new scans"),
        "2D or 3D": (not_stated, f"{prof.spatial_dims}D"),
        "Resolution": (not_stated, f"resampled to {' x '.join(sp)} (x, y, z)"),
        "Cross-validation": (f"{PAPER['num_folds']}-fold, {PAPER['n_patients']} patients",
                             f"{prof.num_folds}-fold, patient-wise, {seg.get('n_cases', 'n/a')} patients"),
        "Training budget": (not_stated, budget),
        "Post-processing": (not_stated, POSTPROCESS_RULE + threshold),
        "Dice averaging": ("DSC reported per class; averaging not stated",
                           "per patient, then the mean over patients with a BCa bootstrap 95 % interval; Dice "
                           "pooled over all voxels and the spread between seeds beside it (Segmentation chapter)"),
        "Lesion measure for lung function": ("predicted lesion volume", "predicted lesion as % of lung (primary); "
                                             "volume in mL beside it"),
        "Correlation": ("Spearman ρ", "Spearman ρ, bootstrap 95 % interval, Holm-adjusted p"),
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["Paper", "This re-run"]).rename_axis("Aspect")


def _rho(cell: dict | None) -> str:
    if not cell:
        return "not available"
    return (f"ρ = {fmt_num(cell.get('rho'))} [95 % CI {fmt_num(cell.get('ci_low'))}, {fmt_num(cell.get('ci_high'))}], "
            f"n = {cell.get('n', 'n/a')}")


def _holm_text(cell: dict | None) -> str:
    return f"Holm-adjusted {p_text((cell or {}).get('p_holm'))}"


def abstract_paragraph(seg: dict, clin: dict, info: dict, profile: str) -> str:
    """One paragraph: cohort, Dice with its interval and the network − baseline difference, the
    primary endpoint (predicted total lesion % of lung vs FEV1 and FEV1/FVC) and, labelled as
    secondary, FVC and DLCO, each with its Holm-adjusted p. The published values are not in it (the
    claims ledger sets them apart), and on a synthetic cohort the paragraph says what the generator
    determines."""
    m = seg["metrics"]
    kind = "synthetic" if info["synthetic"] else "real"

    def mean_ci(key):
        d = m.get(key) or {}
        return f"**{fmt_num(d.get('mean'))}** [95 % CI {fmt_num(d.get('ci_low'))}, {fmt_num(d.get('ci_high'))}]"

    dice = (f"the out-of-fold mean Dice was {mean_ci('dice_lesion')} for total lesion, {mean_ci('dice_ef')} for "
            f"EF and {mean_ci('dice_ggo')} for GGO")
    diff = (seg.get("baseline", {}).get("paired_difference") or {}).get("lesion")
    base_txt = ""
    if diff:
        base_txt = (f"; the paired difference in lesion Dice, network − Hounsfield-unit density threshold, was "
                    f"{fmt_num(diff.get('mean_diff'))} [95 % CI {fmt_num(diff.get('ci_low'))}, {fmt_num(diff.get('ci_high'))}] "
                    "per patient")
    ends = clin.get("endpoints") or {}
    prim = {r["outcome"]: r for r in ends.get("primary", [])}
    sec = {r["outcome"]: r for r in ends.get("secondary", [])}
    pred = clin.get("predicted_lesion_pct", {})

    def cell(o, src):
        c = dict(pred.get(o) or {})
        if o in src:
            c["p_holm"] = src[o].get("p_holm")
        return f"{_PFT[o]} {_rho(c)}, {_holm_text(c)}"

    prim_txt = "; ".join(cell(o, prim) for o in ("fev1_pct", "fev1_fvc") if o in pred)
    sec_txt = "; ".join(cell(o, sec) for o in ("fvc_pct", "dlco_pct") if o in pred)
    text = (f"On the **{kind}** cohort `{info['folder']}` ({seg['n_cases']} patients, profile `{profile}`), {dice}"
            f"{base_txt}. **Primary endpoint**: predicted total lesion extent as % of lung (the paper correlated "
            f"lesion volume in mL; the ledger above gives both) against {prim_txt}, Holm-adjusted over this pair.")
    if sec_txt:
        text += f" Secondary: {sec_txt} (Holm over the whole predicted grid: every lesion measure × every test)."
    text += (f" The published values, on {PAPER['n_patients']} real patients, are set apart in the claims ledger "
             "above.")
    if info["synthetic"]:
        text += (" On this synthetic cohort the Dice depends on how the generator draws its labels and "
                 "textures, and the correlations recover relationships the generator planted (Data chapter): "
                 "the numbers test the pipeline, not the method on patients, and agreement with the "
                 "published values would show nothing.")
    return text
