"""The abstract's paragraph, written from the run's summary files (so its numbers are computed), and
the training-plateau summary of the folds' ``epochs.csv`` (Model & training, Segmentation)."""

from __future__ import annotations


import numpy as np

from sscild.numfmt import fmt_num, p_text
from sscild.paper import PAPER

__all__ = ["abstract_paragraph", "training_plateau", "plateau_words"]

_PFT = {"fvc_pct": "FVC %pred", "fev1_pct": "FEV1 %pred", "fev1_fvc": "FEV1/FVC", "dlco_pct": "DLCO %pred"}


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


def training_plateau(run, folds, *, last_fraction: float = 0.2, column: str = "train_dice_ef",
                     min_points: int = 4) -> "pd.DataFrame":
    """Is training still improving when the budget ends? One row per fold from its ``epochs.csv``.

    For each fold, ``column`` (training-batch Dice of a class, logged once per epoch) is regressed
    on the step over the last ``last_fraction`` of the steps, widened to the last ``min_points``
    logged epochs when that window holds fewer (:func:`scipy.stats.linregress`); the slope is given
    per 1000 steps with its 95 % t interval, and the gain over the window as a share of the whole
    run's gain. A slope whose interval lies above 0 means the curve was still rising: the budget
    stopped training before a plateau.

    Args:
        run: the run's paths (``run.fold_dir(k)``).
        folds: fold numbers with a finished training.
        last_fraction: share of the last steps the slope is fitted on, in (0, 1].
        column: the ``epochs.csv`` column (``train_dice_ef``, ``train_dice_ggo``, ``train_loss``).

    Returns:
        Columns ``fold, steps, window from step, last value, slope per 1000 steps, slope 95% CI low,
        slope 95% CI high, gain in window, % of total gain, still rising`` (empty if no fold has an
        ``epochs.csv`` with three logged epochs).
    """
    import pandas as pd
    from scipy import stats as sps

    if not (0.0 < float(last_fraction) <= 1.0):
        raise ValueError(f"last_fraction must lie in (0, 1], got {last_fraction!r}")
    rows = []
    for k in folds:
        path = run.fold_dir(k) / "epochs.csv"
        if not path.exists():
            continue
        e = pd.read_csv(path)
        if column not in e.columns:
            raise ValueError(f"{path} has no column {column!r}; columns: {list(e.columns)}")
        e = e.sort_values("step")
        last = int(e["step"].max())
        w = e[e["step"] >= last * (1.0 - last_fraction)]
        if len(w) < min_points:
            w = e.tail(min_points)
        if len(w) < 3:
            continue
        fit = sps.linregress(w["step"].to_numpy(float), w[column].to_numpy(float))
        t = sps.t.ppf(0.975, len(w) - 2)
        lo, hi = 1000 * (fit.slope - t * fit.stderr), 1000 * (fit.slope + t * fit.stderr)
        y = e[column].to_numpy(float)
        total_gain = float(y.max() - y[0])
        window_gain = float(w[column].iloc[-1] - w[column].iloc[0])
        rows.append({"fold": int(k), "steps": last, "window from step": int(w["step"].iloc[0]),
                     "last value": float(y[-1]), "slope per 1000 steps": 1000 * fit.slope,
                     "slope 95% CI low": lo, "slope 95% CI high": hi,
                     "gain in window, % of total gain": 100.0 * window_gain / total_gain if total_gain > 0 else float("nan"),
                     "still rising": bool(lo > 0)})
    cols = ["fold", "steps", "window from step", "last value", "slope per 1000 steps", "slope 95% CI low",
            "slope 95% CI high", "gain in window, % of total gain", "still rising"]
    return pd.DataFrame(rows, columns=cols).set_index("fold")


def plateau_words(table, *, what: str = "EF training Dice", last_fraction: float = 0.2) -> str:
    """One computed paragraph on :func:`training_plateau`'s table.

    Each fold's slope alone is noisy, so the folds are also judged together: when (nearly) all slopes are
    positive, a two-sided sign test across folds says whether that is more than chance. Training is called
    still rising when the folds together are (sign test p < 0.05) or any fold's slope interval lies above 0.
    """
    from scipy.stats import binomtest

    if table is None or table.empty:
        return f"No fold has enough logged epochs to judge whether the {what} levelled off."
    n, rising = len(table), int(table["still rising"].sum())
    slopes = table["slope per 1000 steps"].to_numpy(float)
    positive = int((slopes > 0).sum())
    sign_p = float(binomtest(positive, n, 0.5).pvalue) if n else float("nan")
    med = float(np.median(slopes))
    last = float(table["last value"].median())
    share = float(table["gain in window, % of total gain"].median())
    head = (f"Over the last {last_fraction:.0%} of the steps (at least the last four logged epochs) the {what} "
            f"changed by a median {med:+.3f} per 1000 steps, {share:.0f} % of the run's whole gain (last value, "
            f"median over folds: {last:.2f}). The slope was positive in {positive} of {n} folds (sign test across "
            f"folds p = {sign_p:.3f}); {rising} of {n} had a slope interval above 0 on its own. ")
    if rising == 0 and not sign_p < 0.05:
        return head + ("The curves cannot be told from a plateau: more steps would probably not raise this run's "
                       "Dice much.")
    return head + ("**Training was still improving when its budget ended**: this run's Dice understates what the "
                   "recipe reaches with more steps.")
