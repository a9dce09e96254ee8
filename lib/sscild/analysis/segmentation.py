"""Out-of-fold evaluation: per-case metrics of the network and of the HU baseline, and their summaries.

Every case is scored against its reference labels in its *original* voxel grid, using the prediction
of the fold model that never saw it (:func:`sscild.model.predict.predict_oof`). Policies, decided here:

* **Network metrics** (:func:`sscild.evaluation.metrics.case_metrics`): Dice for normal lung, EF, GGO, total
  lesion (EF ∪ GGO) and lung; normalised surface Dice (NSD) for EF, GGO and lesion only
  (:data:`NETWORK_NSD_REGIONS`): the NSD of the large normal-lung and lung regions costs most of the
  time and says little (their boundary is the pleura, which any method finds); volumes in mL and
  percent of the map's own lung. Empty reference regions give NaN and are counted as excluded
  (the metrics module's ``empty="nan"`` policy).
* **NSD tolerance** (:func:`nsd_tolerance_mm`): one value for every case of the cohort, 1.5 times
  the coarser of (a) the network's in-plane spacing (the profile's target spacing) and (b) the
  largest native in-plane spacing among the cases, so a boundary one voxel off (straight or
  diagonal) on either grid is tolerated and every case is judged alike.
* **Baseline** (:func:`sscild.evaluation.baseline.density_mask`): lung voxels between -600 and -250 HU (the
  MESA high-attenuation area) inside the *reference* lung are lesion: its total-lesion Dice and lesion
  volume. Density alone has no published rule for EF versus GGO, so for an EF and GGO comparator the
  band is split at one HU cut per fold, the cut that maximises mean EF and GGO Dice on that fold's
  *training* patients (:func:`sscild.evaluation.baseline.fit_ef_cut`); held-out patients are scored with it.
  This is the best a single density cut can do, fitted without leakage. No NSD for the baseline.
* **Volume agreement** (:func:`agreement`): predicted against reference lesion, EF and GGO extent in
  **percent of lung** (each map's own lung volume), the quantity extent staging uses; in mL a large
  lung and a large lesion go together, which would inflate the ICC with lung size. ICC(2,1)
  (two-way random effects, absolute agreement, single measures; Shrout & Fleiss 1979) with its
  F-based 95 % CI, and Bland–Altman bias and 95 % limits of agreement (bias ± 1.96 SD) in
  percentage points.
* **Summaries** (:func:`sscild.evaluation.metrics.summarize`): mean ± SD, median [IQR] and the 95 % BCa
  bootstrap CI of the mean over cases (2000 resamples, seeded), overall and per fold.

Cost, measured on 2 CPU cores for a ``cpu``-profile case (256 x 256 x 55) with a prediction close to
the reference: about 0.8 s per case (Dice and volumes 0.3 s, NSD of EF, GGO and lesion 0.4 s, the
baseline 0.1 s); two threads score 40 cases in about 20 s. The NSD costs grow with the predicted
regions: an untrained network that paints a third of the scan as lesion costs seconds per case.

Example:
    >>> df = evaluate_oof(run, cohort, progress=False)                             # doctest: +SKIP
    >>> summary = summary_dict(df, "synthetic-cpu", True, "cpu")                   # doctest: +SKIP
    >>> summary["metrics"]["dice_lesion"]["mean"]                                  # doctest: +SKIP
    0.74
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from sscild.evaluation.baseline import HAA_RANGE_HU, band_histograms, density_mask, fit_ef_cut, split_dice
from sscild.data.cohort import Cohort, read_case
from sscild.data.folds import fold_of, read_splits
from sscild.data.io import load_header, load_volume
from sscild.evaluation.agreement import ICC_FORM, bland_altman, bland_altman_regression, icc, paired_difference
from sscild.evaluation.metrics import CI_METHOD, DEFAULT_TOLERANCE_FACTOR, case_metrics, confusion_counts, summarize
from sscild.paths import RunPaths, atomic_path, read_json

__all__ = [
    "NETWORK_REGIONS",
    "NETWORK_NSD_REGIONS",
    "AGREEMENT_REGIONS",
    "REGION_NAMES",
    "nsd_tolerance_mm",
    "oof_settings",
    "evaluate_oof",
    "summary_dict",
    "summary_table",
    "per_fold_table",
    "agreement",
    "agreement_table",
    "regression_limits_table",
    "baseline_table",
    "paper_table",
    "extreme_cases",
    "load_case_maps",
    "glue_values",
    "LABEL_NAMES",
    "slice_spacing_mm",
    "confusion_table",
    "confusion_per_patient",
    "worst_cases",
    "worst_case_words",
    "paired_baseline_difference",
    "error_location",
    "label_attenuation",
    "overlap_coefficient",
]

LABEL_NAMES = ("background", "normal lung", "EF", "GGO")
"""Label 0..3 as the confusion tables name them."""

NETWORK_REGIONS = ("normal", "ef", "ggo", "lesion", "lung")
"""Regions scored for the network (Dice, volumes)."""

NETWORK_NSD_REGIONS = ("ef", "ggo", "lesion")
"""Regions whose surface Dice is computed for the network (see the module docstring)."""

AGREEMENT_REGIONS = ("lesion", "ef", "ggo")
"""Regions whose predicted and reference extent are compared by ICC and Bland–Altman."""

REGION_NAMES = {"normal": "normal lung", "ef": "EF", "ggo": "GGO", "lesion": "total lesion (EF ∪ GGO)",
                "lung": "whole lung"}
"""How the book names each region."""


def nsd_tolerance_mm(cohort: Cohort, profile=None) -> float:
    """The one NSD tolerance (mm) used for every case of ``cohort`` (module docstring).

    Args:
        cohort: the cohort; only file headers are read.
        profile: profile name or object whose ``target_spacing`` gives the network's in-plane
            spacing; ``None`` uses the native spacings alone.

    Example:
        >>> nsd_tolerance_mm(cohort, "cpu")        # doctest: +SKIP
        2.1
    """
    from sscild.profiles import get_profile

    inplane = [max(load_header(c.image).spacing[:2]) for c in cohort.cases]
    if profile is not None:
        target = [t for t in get_profile(profile).target_spacing[:2] if t is not None]
        inplane += [float(t) for t in target]
    if not inplane:
        raise ValueError(f"cohort {cohort.root} has no cases: nothing to derive an NSD tolerance from.")
    return round(DEFAULT_TOLERANCE_FACTOR * max(inplane), 4)


def slice_spacing_mm(cohort: Cohort) -> tuple[float, float]:
    """Smallest and largest slice spacing (mm, third axis) of the cohort's scans (headers only).

    The NSD tolerance (:func:`nsd_tolerance_mm`) is set from the in-plane spacing; the book states
    it beside this range, since a boundary one slice off lies further than the tolerance whenever
    the slices are further apart than it.
    """
    z = [float(load_header(c.image).spacing[2]) for c in cohort.cases]
    if not z:
        raise ValueError(f"cohort {cohort.root} has no cases: no slice spacing to report.")
    return min(z), max(z)


def oof_settings(run: RunPaths) -> dict:
    """TTA and post-processing recorded in ``predictions/manifest.json`` (``"mixed"`` if they differ)."""
    path = run.predictions / "manifest.json"
    if not path.exists():
        return {"tta": None, "postprocess": None}
    cases = read_json(path).get("cases", {})
    out = {}
    for key in ("tta", "postprocess"):
        values = {e.get(key) for e in cases.values()}
        out[key] = values.pop() if len(values) == 1 else "mixed"
    return out


def _score_case(run: RunPaths, cohort: Cohort, cid: str, fold: int, tolerance_mm: float, nsd_regions,
                baseline: bool) -> dict | None:
    image, ref = read_case(cohort, cid)
    if ref is None:
        return None
    pred_path = run.predictions / f"{cid}.nii.gz"
    if not pred_path.exists():
        raise FileNotFoundError(f"case {cid}: {pred_path} is missing; predict the held-out cases first "
                                "(sscild.model.predict.predict_oof, the Segmentation chapter).")
    pred_vol = load_volume(pred_path)
    if pred_vol.shape != ref.shape or not np.allclose(pred_vol.affine, image.affine, atol=1e-3):
        raise ValueError(f"case {cid}: {pred_path} has shape {pred_vol.shape} / affine differing from the "
                         f"reference ({ref.shape}); delete it and predict again.")
    pred = np.asarray(pred_vol.array, dtype=np.uint8)
    spacing = tuple(float(s) for s in image.spacing)
    row = {"case_id": cid, "fold": fold}
    row.update(case_metrics(pred, ref, spacing, tolerance_mm=tolerance_mm, regions=NETWORK_REGIONS,
                            nsd_regions=nsd_regions, case_id=cid))
    conf = confusion_counts(np.clip(pred, 0, 3), np.clip(np.asarray(ref), 0, 3), n_labels=4)
    for i in range(4):
        for j in range(4):
            row[f"vox_ref{i}_pred{j}"] = int(conf[i, j])
    if baseline:
        base = density_mask(np.asarray(image.array), ref > 0)
        b = case_metrics(base, ref, spacing, regions=("lesion",), nsd_regions=(), case_id=cid)
        for k in ("dice_lesion", "vol_pred_lesion_ml", "pct_pred_lesion", "fp_ml_lesion"):
            row[f"baseline_{k}"] = b[k]
        row["_band_hist"] = band_histograms(np.asarray(image.array), ref)
    return row


def _baseline_split(rows: list[dict], splits) -> None:
    """Add ``baseline_dice_ef``, ``baseline_dice_ggo`` and ``baseline_ef_cut_hu`` to each held-out row.

    The EF/GGO cut of fold k is fitted on that fold's training cases only
    (:func:`sscild.evaluation.baseline.fit_ef_cut`); the held-out cases are scored with it.
    """
    hists = {r["case_id"]: r.pop("_band_hist") for r in rows if "_band_hist" in r}
    if not hists:
        return
    cuts = {}
    for k, fold in enumerate(splits):
        train = [hists[c] for c in fold["train"] if c in hists]
        try:
            cuts[k] = fit_ef_cut(train) if train else None
        except ValueError:
            cuts[k] = None
    for r in rows:
        h = hists.get(r["case_id"])
        cut = cuts.get(int(r["fold"]))
        if h is None or cut is None:
            r.update(baseline_dice_ef=float("nan"), baseline_dice_ggo=float("nan"), baseline_ef_cut_hu=float("nan"))
            continue
        d_ef, d_ggo = split_dice(h, cut)
        r.update(baseline_dice_ef=d_ef, baseline_dice_ggo=d_ggo, baseline_ef_cut_hu=cut)


def evaluate_oof(run: RunPaths, cohort: Cohort, *, tolerance_mm: float | None = None,
                 nsd_regions=NETWORK_NSD_REGIONS, baseline: bool = True, workers: int | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Per-case metrics of the network and of the HU baseline; writes ``run.segmentation_metrics``.

    Cases are scored in a pool of threads (the surface-distance and Dice kernels release the GIL);
    the rows come back in cohort order, so the table does not depend on the number of workers.

    Args:
        run: the run folder; ``splits.json`` and ``predictions/<case>.nii.gz`` must exist.
        cohort: the cohort whose reference labels are scored against.
        tolerance_mm: NSD tolerance; ``None``: :func:`nsd_tolerance_mm` of the cohort and the run's profile.
        nsd_regions: network regions that get a surface Dice.
        baseline: also score the HU density mask (columns ``baseline_*``).
        workers: threads (default: the number of CPU cores, at most 4).
        progress: tqdm bar.

    Returns:
        One row per labelled, held-out case: ``case_id``, ``fold``, the network's
        :func:`~sscild.evaluation.metrics.case_metrics` columns and ``baseline_dice_lesion``,
        ``baseline_vol_pred_lesion_ml``, ``baseline_pct_pred_lesion``, ``baseline_fp_ml_lesion``.

    Raises:
        FileNotFoundError: a prediction is missing (run :func:`sscild.model.predict.predict_oof`).
        ValueError: a prediction's grid differs from its reference's.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from sscild.profiles import PROFILES

    splits = read_splits(run.splits)
    folds = fold_of(splits)
    if tolerance_mm is None:
        tolerance_mm = nsd_tolerance_mm(cohort, run.profile if run.profile in PROFILES else None)
    ids = [c.case_id for c in cohort.cases if c.case_id in folds]
    workers = max(1, int(workers or min(4, os.cpu_count() or 1)))

    def score(cid):
        return _score_case(run, cohort, cid, folds[cid], tolerance_mm, tuple(nsd_regions), baseline)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(score, ids)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(ids), desc="scoring", unit="case", disable=None)
        rows = [r for r in it if r is not None]
    if baseline:
        _baseline_split(rows, splits)
    df = pd.DataFrame(rows)
    with atomic_path(run.segmentation_metrics, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


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
    regression-based limits (:func:`sscild.evaluation.agreement.bland_altman_regression`: the bias and the limits
    as lines in the size of the measurement, with the proportional-bias slope and bootstrap CIs),
    since a segmentation's error usually grows with the lesion.

    Args:
        df: per-case table of :func:`evaluate_oof`.
        unit: ``"pct"`` (percent of lung; the chapter's choice) or ``"ml"``.
        n_boot, seed: of the regression limits' bootstrap.

    Returns:
        ``{"unit": ..., "network": {region: {"icc": {...}, "bland_altman": {...}}}, "baseline": {"lesion": ...}}``
        with :func:`~sscild.evaluation.agreement.icc` and :func:`~sscild.evaluation.agreement.bland_altman` dicts
        (NaN -> None).
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
    ``dice_<region>``, ``nsd_<region>`` and ``baseline_dice_lesion``; ``per_fold[<k>]`` (mean Dice
    and NSD per fold); ``agreement`` (percent of lung) and ``agreement_ml`` (:func:`agreement`);
    ``baseline`` (method, band, Dice, agreement); ``policies`` (NSD tolerance and regions, empty
    reference, CI, ICC form, TTA, post-processing). NaN is written as ``null``.
    """
    from sscild.model.inference import POSTPROCESS_RULE

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


def _fmt(v, nd=2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def summary_table(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Dice and NSD per region: n (excluded), mean ± SD, median [IQR], 95 % bootstrap CI of the mean."""
    cols = [c for c in _metric_columns(df) if not c.startswith("baseline_")]
    s = summarize(df, columns=cols, n_boot=n_boot, seed=seed)
    rows = []
    for _, r in s.iterrows():
        kind, region = r["metric"].split("_", 1)
        rows.append({"metric": "Dice" if kind == "dice" else "surface Dice", "region": REGION_NAMES[region],
                     "n (excluded)": f"{int(r['n'])} ({int(r['n_excluded'])})",
                     "mean ± SD": f"{_fmt(r['mean'])} ± {_fmt(r['sd'])}",
                     "median [IQR]": f"{_fmt(r['median'])} [{_fmt(r['q1'])}, {_fmt(r['q3'])}]",
                     "95% CI of mean": f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"})
    return pd.DataFrame(rows).set_index(["metric", "region"])


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


def agreement_table(summary: dict) -> pd.DataFrame:
    """ICC [95% CI], the fixed Bland–Altman bias and limits with their CIs, and the proportional-bias
    slope of the regression-based limits, per method and region (from the summary)."""
    agree = summary["agreement"]
    rows = []
    for method, label in (("network", "network"), ("baseline", "HU baseline")):
        for region, a in agree[method].items():
            i, ba = a["icc"], a["bland_altman"]
            reg = a.get("bland_altman_regression") or {}
            rows.append({
                "method": label, "region": REGION_NAMES[region], "n": i["n"],
                "ICC(2,1) [95% CI]": f"{_fmt(i['icc'])} [{_fmt(i['ci_low'])}, {_fmt(i['ci_high'])}]",
                "bias, pp [95% CI]": f"{_fmt(ba['bias'])} [{_fmt(ba['bias_ci_low'])}, {_fmt(ba['bias_ci_high'])}]",
                "lower limit, pp [95% CI]": f"{_fmt(ba['loa_low'])} [{_fmt(ba.get('loa_low_ci_low'))}, "
                                            f"{_fmt(ba.get('loa_low_ci_high'))}]",
                "upper limit, pp [95% CI]": f"{_fmt(ba['loa_high'])} [{_fmt(ba.get('loa_high_ci_low'))}, "
                                            f"{_fmt(ba.get('loa_high_ci_high'))}]",
                "bias slope per pp of extent [95% CI]": f"{_fmt(reg.get('slope'))} [{_fmt(reg.get('slope_ci_low'))}, "
                                                        f"{_fmt(reg.get('slope_ci_high'))}]",
            })
    return pd.DataFrame(rows).set_index(["method", "region"])


def regression_limits_table(summary: dict) -> pd.DataFrame:
    """Regression-based Bland–Altman bias and limits (pp, bootstrap 95% CI) at three extents per
    method and region: the 10th, 50th and 90th percentile of the mean of the two measurements."""
    rows = []
    for method, label in (("network", "network"), ("baseline", "HU baseline")):
        for region, a in summary["agreement"][method].items():
            for pt in (a.get("bland_altman_regression") or {}).get("at", []):
                rows.append({
                    "method": label, "region": REGION_NAMES[region], "at extent (% of lung)": _fmt(pt["mean"], 1),
                    "bias [95% CI]": f"{_fmt(pt['bias'])} [{_fmt(pt['bias_ci_low'])}, {_fmt(pt['bias_ci_high'])}]",
                    "lower limit [95% CI]": f"{_fmt(pt['loa_low'])} [{_fmt(pt['loa_low_ci_low'])}, "
                                            f"{_fmt(pt['loa_low_ci_high'])}]",
                    "upper limit [95% CI]": f"{_fmt(pt['loa_high'])} [{_fmt(pt['loa_high_ci_low'])}, "
                                            f"{_fmt(pt['loa_high_ci_high'])}]",
                })
    return pd.DataFrame(rows).set_index(["method", "region", "at extent (% of lung)"]) if rows else pd.DataFrame()


def baseline_table(df: pd.DataFrame, summary: dict, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Network vs HU baseline per region: Dice (mean [95% CI], median [IQR]), the paired difference
    network − baseline per patient with its bootstrap CI (:func:`sscild.evaluation.agreement.paired_difference`), and
    the ICC and Bland–Altman bias of the % of lung."""
    m = summary["metrics"]
    rows = []
    for region in ("lesion", "ef", "ggo"):
        for method, col in (("network", f"dice_{region}"), ("HU baseline", f"baseline_dice_{region}")):
            d = m.get(col)
            if d is None:
                continue
            row = {"region": REGION_NAMES[region], "method": method, "n": d["n"],
                   "Dice, mean [95% CI]": f"{_fmt(d['mean'])} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]",
                   "Dice, median [IQR]": f"{_fmt(d['median'])} [{_fmt(d['q1'])}, {_fmt(d['q3'])}]",
                   "ICC % of lung [95% CI]": "", "bias (pp) [LoA]": ""}
            a = summary["agreement"]["network" if method == "network" else "baseline"].get(region)
            if a is not None:
                row["ICC % of lung [95% CI]"] = (f"{_fmt(a['icc']['icc'])} [{_fmt(a['icc']['ci_low'])}, "
                                                 f"{_fmt(a['icc']['ci_high'])}]")
                row["bias (pp) [LoA]"] = (f"{_fmt(a['bland_altman']['bias'])} [{_fmt(a['bland_altman']['loa_low'])}, "
                                          f"{_fmt(a['bland_altman']['loa_high'])}]")
            rows.append(row)
        net, base = f"dice_{region}", f"baseline_dice_{region}"
        if net in df.columns and base in df.columns:
            diff = (df[net] - df[base]).dropna()
            if len(diff):
                pdiff = paired_difference(df[net], df[base], n_resamples=n_boot, seed=seed)
                rows.append({"region": REGION_NAMES[region], "method": "network − baseline (paired)", "n": len(diff),
                             "Dice, mean [95% CI]": f"{_fmt(pdiff['mean_diff'])} [{_fmt(pdiff['ci_low'])}, "
                                                    f"{_fmt(pdiff['ci_high'])}]",
                             "Dice, median [IQR]": f"{_fmt(diff.median())} [{_fmt(diff.quantile(0.25))}, "
                                                   f"{_fmt(diff.quantile(0.75))}]",
                             "ICC % of lung [95% CI]": "", "bias (pp) [LoA]": ""})
    return pd.DataFrame(rows).set_index(["region", "method"])


def paper_table(summary: dict | None = None, folder: str | None = None) -> pd.DataFrame:
    """The published study's mean Dice, for orientation only, in a table of its own.

    It is not set in a column beside this run's: on a synthetic cohort this run's Dice depends on how
    the generator draws its labels and textures, and on another cohort it estimates another
    population. The arguments are accepted for compatibility and not used.
    """
    from sscild.paper import PAPER

    rows = [{"region": REGION_NAMES[key], "published mean Dice": f"{PAPER['dice'][pk]:.2f}",
             "patients": PAPER["n_patients"], "validation": f"{PAPER['num_folds']}-fold cross-validation"}
            for key, pk in (("lesion", "total_lesion"), ("ef", "ef"), ("ggo", "ggo"))]
    return pd.DataFrame(rows).set_index("region")


def paired_baseline_difference(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Network − baseline Dice per region (:func:`sscild.evaluation.agreement.paired_difference`), for the glue."""
    out = {}
    for region in ("lesion", "ef", "ggo"):
        net, base = f"dice_{region}", f"baseline_dice_{region}"
        if net in df.columns and base in df.columns:
            out[region] = paired_difference(df[net], df[base], n_resamples=n_boot, seed=seed)
    return out


def _conf_matrix(df: pd.DataFrame) -> np.ndarray | None:
    cols = [f"vox_ref{i}_pred{j}" for i in range(4) for j in range(4)]
    if not all(c in df.columns for c in cols):
        return None
    return df[cols].to_numpy(dtype=float).reshape(len(df), 4, 4)


def confusion_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where each reference label's voxels went: rows reference normal lung, EF, GGO; columns the
    predicted label; entries percent of that reference label's voxels, pooled over patients.

    The EF row's GGO column is the share of reference fibrosis called ground glass, and the GGO row's
    EF column the reverse. Empty table when the per-case table has no voxel counts.
    """
    conf = _conf_matrix(df)
    if conf is None:
        return pd.DataFrame()
    pooled = conf.sum(axis=0)[1:, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = 100.0 * pooled / pooled.sum(axis=1, keepdims=True)
    t = pd.DataFrame(share, index=[f"reference {n}" for n in LABEL_NAMES[1:]],
                     columns=[f"predicted {n}" for n in LABEL_NAMES])
    t["reference voxels"] = pooled.sum(axis=1).astype(np.int64)
    return t


def confusion_per_patient(df: pd.DataFrame) -> pd.DataFrame:
    """Per patient: the share (%) of reference EF predicted GGO, and of reference GGO predicted EF,
    summarised over patients as median [IQR] and range (patients without that reference label are
    left out and counted)."""
    conf = _conf_matrix(df)
    if conf is None:
        return pd.DataFrame()
    rows = []
    for (src, dst), name in (((2, 3), "reference EF predicted GGO"), ((3, 2), "reference GGO predicted EF"),
                             ((2, 1), "reference EF predicted normal"), ((3, 1), "reference GGO predicted normal")):
        tot = conf[:, src, :].sum(axis=1)
        keep = tot > 0
        v = 100.0 * conf[keep, src, dst] / tot[keep]
        rows.append({"voxels": name, "patients": int(keep.sum()), "without that label": int((~keep).sum()),
                     "median [IQR], %": (f"{_fmt(np.median(v), 1)} [{_fmt(np.quantile(v, 0.25), 1)}, "
                                         f"{_fmt(np.quantile(v, 0.75), 1)}]") if v.size else "n/a",
                     "range, %": f"{_fmt(v.min(), 1)} to {_fmt(v.max(), 1)}" if v.size else "n/a"})
    return pd.DataFrame(rows).set_index("voxels")


def worst_cases(df: pd.DataFrame, n: int = 3, metric: str = "dice_lesion") -> pd.DataFrame:
    """The ``n`` patients with the lowest ``metric``, with what went wrong: reference and predicted
    extent, false-positive and missed lesion volume, and EF/GGO swaps (share of reference EF called
    GGO and of reference GGO called EF)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of patients, got {n!r}")
    d = df.dropna(subset=[metric]).sort_values([metric, "case_id"]).head(n)
    conf = _conf_matrix(d)
    rows = []
    for k, (_, r) in enumerate(d.iterrows()):
        row = {"patient": r["case_id"], "fold": int(r["fold"]), "lesion Dice": r[metric],
               "reference lesion, % of lung": r.get("pct_ref_lesion", np.nan),
               "predicted lesion, % of lung": r.get("pct_pred_lesion", np.nan)}
        if conf is not None:
            c = conf[k]
            vox_ml = (r["vol_ref_lung_ml"] / c[1:, :].sum()) if c[1:, :].sum() else np.nan
            les_ref = c[2:, :].sum()
            row["lesion called elsewhere (missed), mL"] = (c[2:, :2].sum()) * vox_ml
            row["lesion where reference has none (false positive), mL"] = c[:2, 2:].sum() * vox_ml
            row["EF called GGO, % of reference EF"] = 100.0 * c[2, 3] / c[2].sum() if c[2].sum() else np.nan
            row["GGO called EF, % of reference GGO"] = 100.0 * c[3, 2] / c[3].sum() if c[3].sum() else np.nan
            row["_les_ref"] = les_ref
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.drop(columns=[c for c in out.columns if c.startswith("_")]).set_index("patient")


def label_attenuation(cohort: Cohort, case_ids, *, lo: float = -1100.0, hi: float = 200.0, bin_hu: float = 10.0
                      ) -> pd.DataFrame:
    """Histograms of the CT attenuation of reference EF and GGO voxels, pooled over ``case_ids``.

    Shows a design decision behind the numbers: how far EF and GGO overlap in Hounsfield units, and
    so how much any density rule (the HU baseline) can tell them apart.

    Args:
        cohort: the cohort (images and reference labels are read).
        case_ids: the patients to pool.
        lo, hi, bin_hu: histogram range and bin width in HU (values outside fall in the end bins).

    Returns:
        One row per bin: ``hu`` (bin centre), ``ef`` and ``ggo`` (voxel counts).
    """
    if not (hi > lo) or bin_hu <= 0:
        raise ValueError(f"need lo < hi and bin_hu > 0, got lo={lo}, hi={hi}, bin_hu={bin_hu}")
    edges = np.arange(lo, hi + bin_hu, bin_hu)
    counts = {2: np.zeros(len(edges) - 1), 3: np.zeros(len(edges) - 1)}
    for cid in case_ids:
        image, ref = read_case(cohort, cid)
        if ref is None:
            continue
        hu = np.clip(np.asarray(image.array, dtype=np.float32), lo, hi - 1e-3)
        lab = np.asarray(ref)
        for k in (2, 3):
            counts[k] += np.histogram(hu[lab == k], bins=edges)[0]
    return pd.DataFrame({"hu": (edges[:-1] + edges[1:]) / 2, "ef": counts[2], "ggo": counts[3]})


def overlap_coefficient(a, b) -> float:
    """Overlap of two histograms on the same bins: the sum over bins of the smaller of the two
    normalised frequencies (1 = identical distributions, 0 = disjoint). NaN if either is empty.

    Example:
        >>> overlap_coefficient([1, 1, 0], [0, 1, 1])
        0.5
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in length: {a.shape} vs {b.shape}")
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())


def error_location(ref: np.ndarray, pred: np.ndarray, affine: np.ndarray) -> dict:
    """Where a patient's lesion errors lie: craniocaudal zone and medial or lateral.

    The maps are reoriented to RAS (:func:`sscild.clinic.figures.to_canonical`). The reference
    lung's extent along z is cut into upper, middle and lower thirds; across, a voxel is *medial*
    when it lies in the inner third between the lungs' midline and their lateral edge (where the
    heart, the mediastinum and the hila are), else *lateral*.

    Returns:
        ``{"false_positive": {...}, "missed": {...}}``, each with ``voxels`` and the percent of them
        in ``upper``, ``middle``, ``lower`` and ``medial`` (NaN when there are none).

    Example:
        >>> ref = np.zeros((9, 3, 6), np.uint8); ref[1:8, :, :] = 1
        >>> pred = ref.copy(); pred[4, :, 0:2] = 2          # lesion drawn in the medial lower lung
        >>> loc = error_location(ref, pred, np.eye(4))
        >>> loc["false_positive"]["lower"], loc["false_positive"]["medial"]
        (100.0, 100.0)
    """
    from sscild.clinic.figures import to_canonical

    r, _ = to_canonical(np.asarray(ref), affine)
    q, _ = to_canonical(np.asarray(pred), affine)
    lung = r > 0
    if not lung.any():
        lung = q > 0
    out = {}
    if not lung.any():
        nan = float("nan")
        return {k: {"voxels": 0, "upper": nan, "middle": nan, "lower": nan, "medial": nan}
                for k in ("false_positive", "missed")}
    xs, _, zs = np.nonzero(lung)
    z0, z1 = zs.min(), zs.max()
    x_mid = (xs.min() + xs.max()) / 2.0
    half = max((xs.max() - xs.min()) / 2.0, 1.0)
    for name, mask in (("false_positive", (q >= 2) & (r < 2)), ("missed", (r >= 2) & (q < 2))):
        x, _, z = np.nonzero(mask)
        n = int(x.size)
        if n == 0:
            out[name] = {"voxels": 0, "upper": float("nan"), "middle": float("nan"), "lower": float("nan"),
                         "medial": float("nan")}
            continue
        t = (z - z0) / max(z1 - z0, 1)                  # 0 = lung base (RAS: z grows upwards), 1 = apex
        out[name] = {"voxels": n,
                     "upper": float(100.0 * (t > 2 / 3).mean()),
                     "middle": float(100.0 * ((t >= 1 / 3) & (t <= 2 / 3)).mean()),
                     "lower": float(100.0 * (t < 1 / 3).mean()),
                     "medial": float(100.0 * (np.abs(x - x_mid) / half < 1 / 3).mean())}
    return out


def _location_words(loc: dict) -> str:
    parts = []
    for key, what in (("false_positive", "false-positive lesion"), ("missed", "missed lesion")):
        d = loc.get(key) or {}
        if not d.get("voxels"):
            continue
        zone = max(("upper", "middle", "lower"), key=lambda z: d[z])
        side = "medial (beside the heart, mediastinum and hila)" if d["medial"] >= 50 else "lateral"
        parts.append(f"{what} mostly in the {zone} zone ({d[zone]:.0f} %), {d['medial']:.0f} % of it medial"
                     + (f": {side}" if d["medial"] >= 50 else ""))
    return "; ".join(parts)


def worst_case_words(table: pd.DataFrame, locations: dict | None = None) -> str:
    """One computed sentence per patient of :func:`worst_cases`: which error dominates and, with
    ``locations`` (case id -> :func:`error_location`), where it lies."""
    lines = []
    for cid, r in table.iterrows():
        parts = [f"lesion Dice {_fmt(r['lesion Dice'])}; reference {_fmt(r['reference lesion, % of lung'], 1)} % "
                 f"of lung, predicted {_fmt(r['predicted lesion, % of lung'], 1)} %"]
        fp = r.get("lesion where reference has none (false positive), mL", np.nan)
        fn = r.get("lesion called elsewhere (missed), mL", np.nan)
        if np.isfinite(fp) and np.isfinite(fn):
            kind = "over-calls (false positive lesion dominates)" if fp > fn else "under-calls (missed lesion dominates)"
            parts.append(f"{kind}: {_fmt(fp, 0)} mL false positive, {_fmt(fn, 0)} mL missed")
        ef, ggo = r.get("EF called GGO, % of reference EF", np.nan), r.get("GGO called EF, % of reference GGO", np.nan)
        if np.isfinite(ef) or np.isfinite(ggo):
            parts.append(f"EF called GGO {_fmt(ef, 0)} %, GGO called EF {_fmt(ggo, 0)} %")
        if locations and cid in locations:
            where = _location_words(locations[cid])
            if where:
                parts.append(where)
        lines.append(f"- **{cid}** (fold {int(r['fold'])}): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def extreme_cases(df: pd.DataFrame, metric: str = "dice_lesion") -> dict[str, str]:
    """Case ids of the best, the median and the worst case by ``metric`` (NaN cases skipped)."""
    d = df[["case_id", metric]].dropna().sort_values([metric, "case_id"], ascending=[False, True])
    if d.empty:
        return {}
    ids = d["case_id"].tolist()
    return {"best": ids[0], "median": ids[(len(ids) - 1) // 2], "worst": ids[-1]}


def load_case_maps(run: RunPaths, cohort: Cohort, case_id: str):
    """``(image Volume, reference labels, predicted labels)`` of one case, original grid."""
    image, ref = read_case(cohort, case_id)
    pred = np.asarray(load_volume(run.predictions / f"{case_id}.nii.gz").array, dtype=np.uint8)
    return image, ref, pred


def glue_values(summary: dict) -> dict:
    """The numbers the book glues (names -> floats or ints; NaN where absent)."""
    m = summary["metrics"]
    nan = float("nan")

    def get(col, key="mean"):
        v = (m.get(col) or {}).get(key)
        return nan if v is None else v

    out = {"seg_n_cases": summary["n_cases"]}
    for r in ("lesion", "ef", "ggo", "lung"):
        out[f"dice_{r}"] = get(f"dice_{r}")
    for r in ("lesion", "ef", "ggo"):
        out[f"nsd_{r}"] = get(f"nsd_{r}")
    out["dice_lesion_ci_low"] = get("dice_lesion", "ci_low")
    out["dice_lesion_ci_high"] = get("dice_lesion", "ci_high")
    out["baseline_dice_lesion"] = get("baseline_dice_lesion")
    out["baseline_dice_ef"] = get("baseline_dice_ef")
    out["baseline_dice_ggo"] = get("baseline_dice_ggo")
    out["nsd_tolerance_mm"] = summary["policies"]["nsd_tolerance_mm"]
    for r, d in (summary["baseline"].get("paired_difference") or {}).items():
        for k in ("mean_diff", "ci_low", "ci_high"):
            out[f"net_minus_base_{r}_{k}"] = nan if d.get(k) is None else d[k]
    for who in ("network", "baseline"):
        a = summary["agreement"][who].get("lesion")
        if a:
            out[f"{who}_icc_lesion"] = nan if a["icc"]["icc"] is None else a["icc"]["icc"]
            out[f"{who}_ba_bias_lesion"] = nan if a["bland_altman"]["bias"] is None else a["bland_altman"]["bias"]
    return out
