"""Out-of-fold scores summarised over patients: the chapter's summary, agreement of extents, folds.

The per-case table of :func:`sscild.analysis.segmentation.evaluate_oof` is summarised here as numbers:

* :func:`summary_dict`: ``segmentation_summary.json``, read by the abstract and the Clinical chapter:
  mean ± SD, median [IQR] and the 95 % BCa bootstrap CI of the mean of every score
  (:func:`sscild.evaluation.metrics.summarize`, 2000 resamples, seeded), per fold, the baseline and
  the policies.
* :func:`agreement`: ICC(2,1) and Bland–Altman (fixed and regression-based limits) of predicted
  against reference extent, network and baseline.
* :func:`paired_baseline_difference`: network − baseline Dice per patient, with its bootstrap CI.
* :func:`per_fold_table`: mean scores per fold.
* :func:`network_scores`: the network's Dice and NSD per region summarised over patients.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from sscild.analysis.segmentation import AGREEMENT_REGIONS, NETWORK_REGIONS
from sscild.evaluation.baseline import HAA_RANGE_HU
from sscild.evaluation.metrics import CI_METHOD, summarize
from sscild.evaluation.agreement import ICC_FORM, bland_altman, icc
from sscild.evaluation.agreement import bland_altman_regression, paired_difference

__all__ = ["CONTROL_AIM_PCT", "POOLED_REGIONS", "controls_summary", "agreement", "summary_dict", "network_scores",
           "paired_baseline_difference", "per_fold_table", "pooled_dice"]

POOLED_REGIONS = {"normal": (1,), "ef": (2,), "ggo": (3,), "lesion": (2, 3), "lung": (1, 2, 3)}
"""The label values of each region whose pooled Dice :func:`pooled_dice` reports."""


def pooled_dice(df: pd.DataFrame) -> dict:
    """Dice of each region over all patients' voxels at once (from the per-case confusion counts).

    The mean over patients weighs every patient alike; pooled Dice weighs every voxel alike, so large
    lesions count more and small ones barely. Papers report either, often without saying which.

    Example:
        >>> row = {f"vox_ref{a}_pred{b}": 0 for a in range(4) for b in range(4)}
        >>> a = dict(row, vox_ref2_pred2=8, vox_ref2_pred3=2, vox_ref3_pred3=10)   # EF 8 right, 2 called GGO
        >>> b = dict(row, vox_ref2_pred2=0, vox_ref2_pred0=2)                      # a small EF missed
        >>> d = pooled_dice(pd.DataFrame([a, b]))
        >>> round(d["ef"], 3), round(d["lesion"], 3)
        (0.8, 0.952)
    """
    cols = [f"vox_ref{a}_pred{b}" for a in range(4) for b in range(4)]
    if df.empty or not set(cols) <= set(df.columns):
        return {}
    c = df[cols].to_numpy(dtype=float).sum(axis=0).reshape(4, 4)
    out = {}
    for region, values in POOLED_REGIONS.items():
        v = list(values)
        tp, ref, pred = c[np.ix_(v, v)].sum(), c[v, :].sum(), c[:, v].sum()
        out[region] = float(2 * tp / (ref + pred)) if ref + pred > 0 else float("nan")
    return out


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (float, np.floating)):
            out[k] = None if not math.isfinite(float(v)) else float(v)
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        else:
            out[k] = v
    return out


def _metric_columns(df: pd.DataFrame) -> list[str]:
    cols = [f"dice_{r}" for r in NETWORK_REGIONS] + [f"nsd_{r}" for r in NETWORK_REGIONS]
    cols += ["baseline_dice_lesion", "baseline_dice_ef", "baseline_dice_ggo"]
    return [c for c in cols if c in df.columns and df[c].notna().any()]


def agreement(df: pd.DataFrame, *, unit: str = "pct", n_boot: int = 2000, seed: int = 0) -> dict:
    """ICC(2,1) and Bland–Altman of predicted vs reference extent, network and baseline.

    Bland–Altman is given both ways: fixed limits (bias ± 1.96 SD, with approximate CIs) and
    regression-based limits (:func:`sscild.evaluation.stats.bland_altman_regression`: the bias and the limits
    as lines in the size of the measurement, with the proportional-bias slope and bootstrap CIs),
    since a segmentation's error usually grows with the lesion.

    Args:
        df: per-case table of :func:`sscild.analysis.segmentation.evaluate_oof`.
        unit: ``"pct"`` (percent of lung; the chapter's choice) or ``"ml"``.
        n_boot, seed: of the regression limits' bootstrap.

    Returns:
        ``{"unit": ..., "network": {region: {"icc": {...}, "bland_altman": {...}}}, "baseline": {"lesion": ...}}``
        with :func:`~sscild.evaluation.metrics.icc` and :func:`~sscild.evaluation.metrics.bland_altman` dicts (NaN -> None).
    """
    if unit not in ("pct", "ml"):
        raise ValueError(f"unit must be 'pct' (percent of lung) or 'ml', got {unit!r}")

    def cols(region, who="pred"):
        return f"pct_{who}_{region}" if unit == "pct" else f"vol_{who}_{region}_ml"

    def pair(pred, ref):
        a, b = df[pred].to_numpy(float), df[ref].to_numpy(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            reg = bland_altman_regression(a, b, n_resamples=n_boot, seed=seed)
            reg["at"] = [_clean(r) for r in reg["at"]]
            return {"icc": _clean(icc(a, b)), "bland_altman": _clean(bland_altman(a, b)),
                    "bland_altman_regression": _clean(reg)}

    out = {"unit": "percent of lung (percentage points)" if unit == "pct" else "mL", "network": {}, "baseline": {}}
    for r in AGREEMENT_REGIONS:
        if cols(r) in df.columns:
            out["network"][r] = pair(cols(r), cols(r, "ref"))
    base = "baseline_pct_pred_lesion" if unit == "pct" else "baseline_vol_pred_lesion_ml"
    if base in df.columns:
        out["baseline"]["lesion"] = pair(base, cols("lesion", "ref"))
    return out


def summary_dict(df: pd.DataFrame, cohort_name: str, synthetic: bool, profile: str, *,
                 tolerance_mm: float | None = None, settings: dict | None = None, n_boot: int = 2000,
                 seed: int = 0) -> dict:
    """The chapter's summary (``segmentation_summary.json``), read by the abstract and the clinical chapter.

    Keys: ``cohort``, ``synthetic``, ``profile``, ``n_cases``; ``metrics[<column>]`` with ``n``,
    ``n_excluded``, ``mean``, ``sd``, ``median``, ``q1``, ``q3``, ``ci_low``, ``ci_high`` for
    ``dice_<region>``, ``nsd_<region>`` and ``baseline_dice_lesion``; ``pooled_dice[<region>]``
    (:func:`pooled_dice`); ``per_fold[<k>]`` (mean Dice
    and NSD per fold); ``agreement`` (percent of lung) and ``agreement_ml`` (:func:`agreement`);
    ``baseline`` (method, band, Dice, agreement); ``policies`` (NSD tolerance and regions, empty
    reference, CI, ICC form, TTA, post-processing). NaN is written as ``null``.
    """
    from sscild.model.inference import POSTPROCESS_RULE  # lazy: sscild.model.predict loads torch

    if df.empty:
        raise ValueError("no scored cases: the per-case table is empty (no labelled held-out case with a prediction).")
    cols = _metric_columns(df)
    s = summarize(df, columns=cols, n_boot=n_boot, seed=seed).set_index("metric")
    metrics = {c: _clean({k: v for k, v in s.loc[c].items()}) for c in s.index}
    for c in metrics:
        metrics[c]["n"] = int(metrics[c]["n"])
        metrics[c]["n_excluded"] = int(metrics[c]["n_excluded"])
    fold_cols = [c for c in ("dice_lesion", "dice_ef", "dice_ggo", "nsd_lesion", "baseline_dice_lesion",
                             "baseline_dice_ef", "baseline_dice_ggo") if c in cols]
    per_fold = {}
    for k, part in df.groupby("fold", sort=True):
        per_fold[str(int(k))] = _clean({"n_cases": int(len(part)), **{c: float(part[c].mean()) for c in fold_cols}})
    agree = agreement(df, unit="pct", n_boot=n_boot, seed=seed)
    settings = settings or {}
    tol = tolerance_mm
    if tol is None and "nsd_tolerance_mm" in df.columns and df["nsd_tolerance_mm"].notna().any():
        tol = float(df["nsd_tolerance_mm"].dropna().iloc[0])
    nsd_regions = [c[4:] for c in df.columns if c.startswith("nsd_") and c != "nsd_tolerance_mm"
                   and df[c].notna().any()]
    return {
        "cohort": cohort_name,
        "synthetic": bool(synthetic),
        "profile": profile,
        "n_cases": int(len(df)),
        "metrics": metrics,
        "pooled_dice": _clean(pooled_dice(df)),
        "per_fold": per_fold,
        "agreement": agree,
        "agreement_ml": agreement(df, unit="ml", n_boot=n_boot, seed=seed),
        "baseline": {
            "method": "HU density mask inside the reference lung: lesion where "
                      f"{HAA_RANGE_HU[0]:g} <= HU <= {HAA_RANGE_HU[1]:g} (high-attenuation area, MESA)",
            "haa_range_hu": list(HAA_RANGE_HU),
            "dice_lesion": metrics.get("baseline_dice_lesion"),
            "agreement_lesion": agree["baseline"].get("lesion"),
            "ef_split": "band split into EF (denser) and GGO at the HU cut that maximises mean EF and GGO "
                        "Dice on each fold's training patients (half-integer HU)",
            "ef_cut_hu_per_fold": ({str(int(k)): float(v) for k, v in
                                    df.groupby("fold")["baseline_ef_cut_hu"].first().items() if np.isfinite(v)}
                                   if "baseline_ef_cut_hu" in df.columns else {}),
            "dice_ef": metrics.get("baseline_dice_ef"),
            "dice_ggo": metrics.get("baseline_dice_ggo"),
            "paired_difference": {r: _clean(v) for r, v in
                                  paired_baseline_difference(df, n_boot=n_boot, seed=seed).items()},
        },
        "policies": {
            "nsd_tolerance_mm": tol,
            "nsd_regions": nsd_regions,
            "baseline_metrics": "Dice and volumes of total lesion; Dice of EF and GGO from the fold-fitted "
                                "split; no NSD",
            "empty_reference": "region absent from the reference: Dice/NSD NaN, case excluded and counted",
            "ci_method": f"{CI_METHOD}, {int(n_boot)} resamples, seed {seed}",
            "icc_form": ICC_FORM,
            "agreement_unit": "percent of lung",
            "tta": settings.get("tta"),
            "postprocess": POSTPROCESS_RULE if settings.get("postprocess") is True else settings.get("postprocess"),
        },
    }


CONTROL_AIM_PCT = 1.0
"""Aim for false lesion on patients without lung disease: at most this percent of the lung."""


def controls_summary(table: pd.DataFrame) -> dict:
    """False lesion on the controls (:func:`sscild.model.controls.score_controls`' table) for the summary JSON.

    ``n``; mean, median and largest false lesion in mL and in % of the lung, for lesion, EF and GGO;
    how many controls stay within :data:`CONTROL_AIM_PCT`; the share of the false lesion that is
    uncertain (mean over controls that have any). ``{"n": 0}`` without controls.

    >>> t = pd.DataFrame({"control": ["a", "b"], "lung_ml": [4000, 5000], "ef_ml": [4, 0], "ggo_ml": [8, 5],
    ...                   "lesion_ml": [12, 5], "ef_pct": [0.1, 0], "ggo_pct": [0.2, 0.1], "lesion_pct": [0.3, 0.1],
    ...                   "lesion_uncertain_pct": [80, 60], "largest_lesion_ml": [3, 5]})
    >>> d = controls_summary(t); d["n"], d["lesion_pct"]["max"], d["within_aim"]
    (2, 0.3, 2)
    """
    if table is None or len(table) == 0:
        return {"n": 0}
    out = {"n": int(len(table)), "aim_pct": CONTROL_AIM_PCT,
           "within_aim": int((table["lesion_pct"] <= CONTROL_AIM_PCT).sum())}
    for col in ("lesion_pct", "ef_pct", "ggo_pct", "lesion_ml", "largest_lesion_ml"):
        v = table[col].astype(float)
        out[col] = {"mean": round(float(v.mean()), 3), "median": round(float(v.median()), 3),
                    "max": round(float(v.max()), 3)}
    u = table["lesion_uncertain_pct"].astype(float).dropna()
    out["lesion_uncertain_pct_mean"] = round(float(u.mean()), 1) if len(u) else None
    out["worst"] = str(table.loc[table["lesion_pct"].astype(float).idxmax(), "control"])
    return out


def network_scores(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The network's Dice and NSD per region over patients: :func:`sscild.evaluation.metrics.summarize`
    (n, excluded, mean, SD, median, quartiles, 95 % bootstrap CI of the mean), one row per score."""
    cols = [c for c in _metric_columns(df) if not c.startswith("baseline_")]
    return summarize(df, columns=cols, n_boot=n_boot, seed=seed)


def paired_baseline_difference(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Network − baseline Dice per region (:func:`sscild.evaluation.stats.paired_difference`)."""
    out = {}
    for region in ("lesion", "ef", "ggo"):
        net, base = f"dice_{region}", f"baseline_dice_{region}"
        if net in df.columns and base in df.columns:
            out[region] = paired_difference(df[net], df[base], n_resamples=n_boot, seed=seed)
    return out


def per_fold_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice (and lesion NSD) per fold: one row per fold plus the pooled row."""
    cols = [c for c in ("dice_lesion", "dice_ef", "dice_ggo", "dice_lung", "nsd_lesion", "baseline_dice_lesion",
                        "baseline_dice_ef", "baseline_ef_cut_hu") if c in df.columns]
    names = {"dice_lesion": "Dice lesion", "dice_ef": "Dice EF", "dice_ggo": "Dice GGO", "dice_lung": "Dice lung",
             "nsd_lesion": "NSD lesion", "baseline_dice_lesion": "baseline Dice lesion",
             "baseline_dice_ef": "baseline Dice EF", "baseline_ef_cut_hu": "baseline EF cut (HU)"}
    g = df.groupby("fold")
    t = g[cols].mean()
    t.insert(0, "cases", g.size())
    pooled = df[cols].mean().to_frame().T
    if "baseline_ef_cut_hu" in pooled.columns:
        pooled["baseline_ef_cut_hu"] = np.nan  # a cut per fold; their mean is no cut of any fold
    pooled.insert(0, "cases", len(df))
    pooled.index = ["all (mean over cases)"]
    t.index = [f"fold {int(k)}" for k in t.index]
    return pd.concat([t, pooled]).rename(columns=names)
