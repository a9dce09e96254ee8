"""The Segmentation chapter: what its notebook shows, section by section.

The chapter's stage runs here, where make calls it: the out-of-fold prediction, the scoring
(:func:`score_out_of_fold`), the controls (:func:`score_controls`) and the lung zones
(:func:`cohort_zones`, written once for the Clinical chapter). The scores are computed by
:mod:`sscild.analysis.segmentation`, :mod:`sscild.analysis.segmentation_summary` and
:mod:`sscild.analysis.segmentation_errors`, the figures drawn by :mod:`sscild.book.plots.segmentation`
and :mod:`sscild.book.plots.zones`; this module hands the page its tables, figures and sentences.

* :func:`score_out_of_fold`, :func:`methods_words`: predict, score, summarise; the methods as run.
* :func:`paper_table`: the published mean Dice, for orientation only.
* :func:`summary_table`: Dice and surface Dice per region over patients.
* :func:`seed_spread_table`, :func:`seed_spread_words`: the recorded seed repeats.
* :func:`case_figure`: best, median and worst patient.
* :func:`worst_patients`, :func:`worst_case_words`: the worst patients and what went wrong.
* :func:`confusion_per_patient`: EF/GGO swaps per patient.
* :func:`agreement_table`, :func:`regression_limits_table`: ICC and Bland–Altman of the extents.
* :func:`baseline_table`, :func:`baseline_cut_words`, :func:`attenuation_figure`: the network against
  the HU baseline, and why density cannot tell EF from GGO.
* :func:`score_controls`, :func:`controls_table`, :func:`controls_words`, :func:`control_figure`: false
  lesions on the controls without lung disease.
* :func:`cohort_zones`: EF and GGO per lung zone.

The other names are the analysis's and the plots' own, for the notebook: :func:`load_cohort`,
:func:`per_fold_table`, :func:`confusion_table`, :func:`metric_strip`, :func:`bland_altman_grid`,
:func:`baseline_comparison`, :func:`cohort_zone_figure`, :func:`zone_agreement`, :data:`ZONE_RULES`,
:func:`window_text`, :func:`read_record`, :func:`segment_benchmark_table`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sscild.analysis.segmentation import (cohort_zones, evaluate_oof, extreme_cases, load_case_maps,
                                          nsd_tolerance_mm, oof_settings, slice_spacing_mm)
from sscild.analysis.segmentation_errors import (confusion_table, error_location, label_attenuation, label_swaps,
                                                 overlap_coefficient, worst_cases)
from sscild.analysis.segmentation_summary import (controls_summary, network_scores, paired_baseline_difference,
                                                  per_fold_table, pooled_dice, summary_dict)
from sscild.book.plots import window_text
from sscild.book.plots.segmentation import (attenuation_histograms, baseline_comparison, bland_altman_grid,
                                            case_montage, metric_strip)
from sscild.book.plots.zones import cohort_zone_figure
from sscild.book.provenance import read_record, segment_benchmark_table
from sscild.clinic.figures import scan_montage
from sscild.clinic.zones import ZONE_RULES, zone_agreement
from sscild.data.cohort import Cohort, load_cohort
from sscild.model import controls as model_controls
from sscild.model.inference import POSTPROCESS_RULE
from sscild.model.predict import predict_oof
from sscild.numfmt import fmt_num
from sscild.paper import PAPER
from sscild.paths import RunPaths, write_json
from sscild.profiles import Profile

__all__ = [
    "REGION_NAMES",
    "score_out_of_fold",
    "methods_words",
    "paper_table",
    "summary_table",
    "agreement_table",
    "regression_limits_table",
    "baseline_table",
    "baseline_cut_words",
    "attenuation_figure",
    "case_figure",
    "confusion_per_patient",
    "worst_patients",
    "worst_case_words",
    "score_controls",
    "controls_table",
    "controls_words",
    "control_figure",
    "seed_spread_table",
    "seed_spread_words",
    "cohort_zones",
    # the analysis's and the plots' own names, for the notebook
    "load_cohort",
    "per_fold_table",
    "confusion_table",
    "metric_strip",
    "bland_altman_grid",
    "baseline_comparison",
    "cohort_zone_figure",
    "zone_agreement",
    "ZONE_RULES",
    "window_text",
    "read_record",
    "segment_benchmark_table",
]

REGION_NAMES = {"normal": "normal lung", "ef": "EF", "ggo": "GGO", "lesion": "total lesion (EF ∪ GGO)",
                "lung": "whole lung"}
"""How the book names each region."""


def score_out_of_fold(run: RunPaths, cohort: Cohort, prof: Profile, info: dict,
                      profile: str) -> tuple[int, float, pd.DataFrame, dict]:
    """The chapter's stage: predict every held-out patient with its fold's network
    (:func:`sscild.model.predict.predict_oof`), score it (:func:`sscild.analysis.segmentation.evaluate_oof`,
    which writes ``segmentation_metrics.csv``) and write the summary (``segmentation_summary.json``).

    Returns:
        ``(number of predictions, NSD tolerance in mm, per-case table, summary dict)``.
    """
    paths = predict_oof(run, progress=False)
    tolerance = nsd_tolerance_mm(cohort, prof)
    df = evaluate_oof(run, cohort, tolerance_mm=tolerance, progress=False)
    summary = summary_dict(df, info["name"], info["synthetic"], profile, tolerance_mm=tolerance,
                           settings=oof_settings(run))
    write_json(run.segmentation_summary, summary)
    return len(paths), tolerance, df, summary


def methods_words(summary: dict, prof: Profile, cohort: Cohort, *, n_predictions: int, tolerance: float) -> str:
    """The methods as this run applied them: predictions scored, test-time flips, post-processing, lesion
    threshold, the NSD tolerance against the slice spacing, the interval and ICC methods and the baseline."""
    pol = summary["policies"]
    z_lo, z_hi = slice_spacing_mm(cohort)
    return (
        f"{n_predictions} out-of-fold predictions, {summary['n_cases']} patients scored. "
        f"Test-time left-right flips: **{ {True: 'on', False: 'off'}.get(pol['tta'], pol['tta']) }**. "
        f"Post-processing: {POSTPROCESS_RULE}. "
        + ("Lesion threshold: none (each voxel takes its most likely class). " if prof.lesion_threshold is None else
           f"Lesion threshold: a voxel whose most likely class is EF or GGO is called lesion only when the model gives "
           f"EF and GGO together a probability of at least {prof.lesion_threshold:g} (otherwise normal lung; chosen on "
           "this cohort's out-of-fold Dice and the real scans of the appendix, "
           "`benchmarks/study_lesion_threshold.json`). ")
        + f"NSD tolerance: **{tolerance:.2f} mm, in-plane** for every patient (1.5 × the coarser in-plane "
        f"spacing of the network's grid and of the scans, so a boundary one voxel off *within a slice* is "
        f"tolerated). The slices are {z_lo:g}–{z_hi:g} mm apart, "
        + ("more than the tolerance: a boundary one slice off through the plane is *not* tolerated, so the NSD "
           "penalises through-plane disagreement fully and is best read as an in-plane measure. "
           if z_lo > tolerance else "within the tolerance, so a boundary one slice off is tolerated too. ")
        + f"Intervals: {pol['ci_method']}. ICC form: {pol['icc_form']}. Baseline: {summary['baseline']['method']}.")


def paper_table(summary: dict | None = None, folder: str | None = None) -> pd.DataFrame:
    """The published study's mean Dice, for orientation only, in a table of its own.

    It is not set in a column beside this run's: on a synthetic cohort this run's Dice depends on how
    the generator draws its labels and textures, and on another cohort it estimates another
    population. The arguments are accepted for compatibility and not used.
    """
    rows = [{"region": REGION_NAMES[key], "published mean Dice": f"{PAPER['dice'][pk]:.2f}",
             "patients": PAPER["n_patients"], "validation": f"{PAPER['num_folds']}-fold cross-validation"}
            for key, pk in (("lesion", "total_lesion"), ("ef", "ef"), ("ggo", "ggo"))]
    return pd.DataFrame(rows).set_index("region")


def summary_table(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Dice and NSD per region: n (excluded), mean ± SD, median [IQR], 95 % bootstrap CI of the mean, and
    for Dice the pooled value over all patients' voxels (:func:`~sscild.analysis.segmentation_summary.pooled_dice`)."""
    s = network_scores(df, n_boot=n_boot, seed=seed)
    pooled = pooled_dice(df)
    rows = []
    for _, r in s.iterrows():
        kind, region = r["metric"].split("_", 1)
        rows.append({"metric": "Dice" if kind == "dice" else "surface Dice", "region": REGION_NAMES[region],
                     "n (excluded)": f"{int(r['n'])} ({int(r['n_excluded'])})",
                     "mean ± SD": f"{fmt_num(r['mean'])} ± {fmt_num(r['sd'])}",
                     "median [IQR]": f"{fmt_num(r['median'])} [{fmt_num(r['q1'])}, {fmt_num(r['q3'])}]",
                     "95% CI of mean": f"[{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]",
                     "pooled over voxels": fmt_num(pooled.get(region)) if kind == "dice" and region in pooled
                     else "—"})
    return pd.DataFrame(rows).set_index(["metric", "region"])


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
                "ICC(2,1) [95% CI]": f"{fmt_num(i['icc'])} [{fmt_num(i['ci_low'])}, {fmt_num(i['ci_high'])}]",
                "bias, pp [95% CI]": f"{fmt_num(ba['bias'])} [{fmt_num(ba['bias_ci_low'])}, {fmt_num(ba['bias_ci_high'])}]",
                "lower limit, pp [95% CI]": f"{fmt_num(ba['loa_low'])} [{fmt_num(ba.get('loa_low_ci_low'))}, "
                                            f"{fmt_num(ba.get('loa_low_ci_high'))}]",
                "upper limit, pp [95% CI]": f"{fmt_num(ba['loa_high'])} [{fmt_num(ba.get('loa_high_ci_low'))}, "
                                            f"{fmt_num(ba.get('loa_high_ci_high'))}]",
                "bias slope per pp of extent [95% CI]": f"{fmt_num(reg.get('slope'))} [{fmt_num(reg.get('slope_ci_low'))}, "
                                                        f"{fmt_num(reg.get('slope_ci_high'))}]",
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
                    "method": label, "region": REGION_NAMES[region], "at extent (% of lung)": fmt_num(pt["mean"], 1),
                    "bias [95% CI]": f"{fmt_num(pt['bias'])} [{fmt_num(pt['bias_ci_low'])}, {fmt_num(pt['bias_ci_high'])}]",
                    "lower limit [95% CI]": f"{fmt_num(pt['loa_low'])} [{fmt_num(pt['loa_low_ci_low'])}, "
                                            f"{fmt_num(pt['loa_low_ci_high'])}]",
                    "upper limit [95% CI]": f"{fmt_num(pt['loa_high'])} [{fmt_num(pt['loa_high_ci_low'])}, "
                                            f"{fmt_num(pt['loa_high_ci_high'])}]",
                })
    return pd.DataFrame(rows).set_index(["method", "region", "at extent (% of lung)"]) if rows else pd.DataFrame()


def baseline_table(df: pd.DataFrame, summary: dict, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Network vs HU baseline per region: Dice (mean [95% CI], median [IQR]), the paired difference
    network − baseline per patient with its bootstrap CI
    (:func:`sscild.analysis.segmentation_summary.paired_baseline_difference`), and the ICC and
    Bland–Altman bias of the % of lung."""
    m = summary["metrics"]
    pdiffs = paired_baseline_difference(df, n_boot=n_boot, seed=seed)
    rows = []
    for region in ("lesion", "ef", "ggo"):
        for method, col in (("network", f"dice_{region}"), ("HU baseline", f"baseline_dice_{region}")):
            d = m.get(col)
            if d is None:
                continue
            row = {"region": REGION_NAMES[region], "method": method, "n": d["n"],
                   "Dice, mean [95% CI]": f"{fmt_num(d['mean'])} [{fmt_num(d['ci_low'])}, {fmt_num(d['ci_high'])}]",
                   "Dice, median [IQR]": f"{fmt_num(d['median'])} [{fmt_num(d['q1'])}, {fmt_num(d['q3'])}]",
                   "ICC % of lung [95% CI]": "", "bias (pp) [LoA]": ""}
            a = summary["agreement"]["network" if method == "network" else "baseline"].get(region)
            if a is not None:
                row["ICC % of lung [95% CI]"] = (f"{fmt_num(a['icc']['icc'])} [{fmt_num(a['icc']['ci_low'])}, "
                                                 f"{fmt_num(a['icc']['ci_high'])}]")
                row["bias (pp) [LoA]"] = (f"{fmt_num(a['bland_altman']['bias'])} [{fmt_num(a['bland_altman']['loa_low'])}, "
                                          f"{fmt_num(a['bland_altman']['loa_high'])}]")
            rows.append(row)
        net, base = f"dice_{region}", f"baseline_dice_{region}"
        if net in df.columns and base in df.columns:
            diff = (df[net] - df[base]).dropna()
            if len(diff):
                pdiff = pdiffs[region]
                rows.append({"region": REGION_NAMES[region], "method": "network − baseline (paired)", "n": len(diff),
                             "Dice, mean [95% CI]": f"{fmt_num(pdiff['mean_diff'])} [{fmt_num(pdiff['ci_low'])}, "
                                                    f"{fmt_num(pdiff['ci_high'])}]",
                             "Dice, median [IQR]": f"{fmt_num(diff.median())} [{fmt_num(diff.quantile(0.25))}, "
                                                   f"{fmt_num(diff.quantile(0.75))}]",
                             "ICC % of lung [95% CI]": "", "bias (pp) [LoA]": ""})
    return pd.DataFrame(rows).set_index(["region", "method"])


def baseline_cut_words(summary: dict) -> str:
    """The EF/GGO cut of the HU baseline fitted on each fold's training patients, in words ("" if none)."""
    cuts = summary["baseline"].get("ef_cut_hu_per_fold") or {}
    if not cuts:
        return ""
    return ("EF/GGO cut fitted on each fold's training patients (HU): " +
            ", ".join(f"fold {k}: {v:g}" for k, v in cuts.items()) + ".")


def attenuation_figure(cohort: Cohort, df: pd.DataFrame, summary: dict):
    """The attenuation of the reference EF and GGO voxels of the scored patients
    (:func:`sscild.analysis.segmentation_errors.label_attenuation`) with the baseline's band and fitted cuts.

    Returns:
        ``(figure, overlap coefficient of the EF and GGO histograms)``.
    """
    lo, hi = summary["baseline"]["haa_range_hu"]
    cuts = summary["baseline"].get("ef_cut_hu_per_fold") or {}
    hist = label_attenuation(cohort, list(df["case_id"]))
    ovl = overlap_coefficient(hist["ef"], hist["ggo"])
    return attenuation_histograms(hist, band=(lo, hi), cuts=list(cuts.values())), ovl


def case_figure(run: RunPaths, cohort: Cohort, df: pd.DataFrame):
    """The best, median and worst patient by lesion Dice (:func:`sscild.analysis.segmentation.extreme_cases`):
    CT, reference and prediction, axial and coronal (:func:`sscild.book.plots.segmentation.case_montage`)."""
    cases = []
    for rank, cid in extreme_cases(df).items():
        image, ref, pred = load_case_maps(run, cohort, cid)
        d = float(df.set_index("case_id").loc[cid, "dice_lesion"])
        cases.append({"image": image.array, "ref": ref, "pred": pred, "affine": image.affine,
                      "title": f"{rank}: {cid}\nlesion Dice {d:.2f}"})
    return case_montage(cases)


def worst_patients(run: RunPaths, cohort: Cohort, df: pd.DataFrame, n: int = 3) -> tuple[pd.DataFrame, str]:
    """The ``n`` patients with the lowest lesion Dice (:func:`sscild.analysis.segmentation_errors.worst_cases`)
    and one sentence each on what went wrong and where (:func:`worst_case_words`)."""
    worst = worst_cases(df, n=min(n, len(df)))
    where = {}
    for cid in worst.index:
        image, ref, pred = load_case_maps(run, cohort, cid)
        where[cid] = error_location(ref, pred, image.affine)
    return worst, worst_case_words(worst, where)


def confusion_per_patient(df: pd.DataFrame) -> pd.DataFrame:
    """Per patient: the share (%) of reference EF predicted GGO, and of reference GGO predicted EF,
    summarised over patients as median [IQR] and range (patients without that reference label are
    left out and counted; :func:`sscild.analysis.segmentation_errors.label_swaps`)."""
    swaps = label_swaps(df)
    if swaps is None:
        return pd.DataFrame()
    rows = []
    for name, swap in swaps.items():
        v = swap["shares"]
        rows.append({"voxels": name, "patients": int(v.size), "without that label": swap["without"],
                     "median [IQR], %": (f"{fmt_num(np.median(v), 1)} [{fmt_num(np.quantile(v, 0.25), 1)}, "
                                         f"{fmt_num(np.quantile(v, 0.75), 1)}]") if v.size else "n/a",
                     "range, %": f"{fmt_num(v.min(), 1)} to {fmt_num(v.max(), 1)}" if v.size else "n/a"})
    return pd.DataFrame(rows).set_index("voxels")


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
    """One computed sentence per patient of :func:`sscild.analysis.segmentation_errors.worst_cases`:
    which error dominates and, with ``locations`` (case id ->
    :func:`sscild.analysis.segmentation_errors.error_location`), where it lies."""
    lines = []
    for cid, r in table.iterrows():
        parts = [f"lesion Dice {fmt_num(r['lesion Dice'])}; reference {fmt_num(r['reference lesion, % of lung'], 1)} % "
                 f"of lung, predicted {fmt_num(r['predicted lesion, % of lung'], 1)} %"]
        fp = r.get("lesion where reference has none (false positive), mL", np.nan)
        fn = r.get("lesion called elsewhere (missed), mL", np.nan)
        if np.isfinite(fp) and np.isfinite(fn):
            kind = "over-calls (false positive lesion dominates)" if fp > fn else "under-calls (missed lesion dominates)"
            parts.append(f"{kind}: {fmt_num(fp, 0)} mL false positive, {fmt_num(fn, 0)} mL missed")
        ef, ggo = r.get("EF called GGO, % of reference EF", np.nan), r.get("GGO called EF, % of reference GGO", np.nan)
        if np.isfinite(ef) or np.isfinite(ggo):
            parts.append(f"EF called GGO {fmt_num(ef, 0)} %, GGO called EF {fmt_num(ggo, 0)} %")
        if locations and cid in locations:
            where = _location_words(locations[cid])
            if where:
                parts.append(where)
        lines.append(f"- **{cid}** (fold {int(r['fold'])}): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def score_controls(run: RunPaths, summary: dict) -> pd.DataFrame:
    """Label every control with the fold ensemble (:func:`sscild.model.controls.score_controls`), add their
    summary to ``summary["controls"]`` and write ``segmentation_summary.json`` again; returns the per-control table."""
    table = model_controls.score_controls(run, progress=False)
    summary["controls"] = controls_summary(table)
    write_json(run.segmentation_summary, summary)
    return table


def controls_table(table: pd.DataFrame) -> pd.DataFrame:
    """The controls' false lesions with readable headers (one row per control)."""
    names = {"control": "control", "lung_ml": "lung (mL)", "ef_ml": "EF (mL)", "ggo_ml": "GGO (mL)",
             "lesion_ml": "lesion (mL)", "ef_pct": "EF (% of lung)", "ggo_pct": "GGO (% of lung)",
             "lesion_pct": "lesion (% of lung)", "lesion_uncertain_pct": "uncertain (% of lesion)",
             "largest_lesion_ml": "largest false lesion (mL)"}
    return table.rename(columns=names).set_index("control")


def controls_words(summary: dict, *, synthetic: bool) -> str:
    """Sentences on the controls' false lesion against the 1 % aim (from :func:`controls_summary`'s dict).

    >>> d = {"n": 2, "aim_pct": 1.0, "within_aim": 2, "lesion_pct": {"mean": 0.2, "median": 0.2, "max": 0.3},
    ...      "lesion_ml": {"mean": 8.0, "median": 8.0, "max": 12.0}, "lesion_uncertain_pct_mean": 70.0}
    >>> controls_words(d, synthetic=True)[:60]
    'On 2 synthetic controls the ensemble called 0.20 % of the lu'
    """
    n, les, ml = summary["n"], summary["lesion_pct"], summary["lesion_ml"]
    kind = "synthetic " if synthetic else ""
    text = (f"On {n} {kind}controls the ensemble called {les['mean']:.2f} % of the lung lesion on average "
            f"({ml['mean']:.1f} mL; largest {les['max']:.2f} %, {ml['max']:.1f} mL). "
            f"{summary['within_aim']} of {n} stay within the aim of {summary['aim_pct']:g} %.")
    if summary.get("lesion_uncertain_pct_mean") is not None:
        text += (f" On average {summary['lesion_uncertain_pct_mean']:.0f} % of that false lesion is *uncertain* "
                 "(the fold models disagree or are unsure), so the uncertainty map `sscild segment` writes points "
                 "at most of it.")
    if synthetic:
        text += (" These controls come from the same generator as the training patients; a real healthy lung "
                 "differs from it (the appendix on real CT measures what the models call lesion on real scans "
                 "without ILD).")
    return text


def control_figure(run: RunPaths, name: str):
    """The labels and uncertainty of one scored control (:func:`sscild.model.controls.control_maps`), drawn by
    :func:`sscild.clinic.figures.scan_montage`."""
    vol, label, uncertainty = model_controls.control_maps(run, name)
    les = 100.0 * float((label >= 2).sum()) / max(int((label > 0).sum()), 1)
    return scan_montage(vol.array, label, vol.affine, title=f"control {name}: false lesion {les:.2f} % of lung",
                        uncertainty=uncertainty)


def seed_spread_table(record: dict) -> pd.DataFrame:
    """The recorded seed repeats (``benchmarks/study_seed_spread.json``, ``scripts/record_seeds.py``): one row per
    seed with the mean Dice over patients [95 % CI] and the pooled Dice per region, then the spread across seeds."""
    rows = []
    for r in record["runs"]:
        row = {"seed": str(r["seed"])}
        for region in ("lesion", "ef", "ggo"):
            m = r["mean_dice"][region]
            row[f"{REGION_NAMES[region]}, mean [95% CI]"] = (f"{fmt_num(m['mean'])} [{fmt_num(m['ci_low'])}, "
                                                              f"{fmt_num(m['ci_high'])}]")
            row[f"{REGION_NAMES[region]}, pooled"] = fmt_num(r["pooled_dice"][region])
        rows.append(row)
    across = record["across_seeds"]
    row = {"seed": f"mean ± SD over {across['mean_dice']['lesion']['n_seeds']} seeds"}
    for region in ("lesion", "ef", "ggo"):
        for kind, col in (("mean_dice", "mean [95% CI]"), ("pooled_dice", "pooled")):
            a = across[kind][region]
            row[f"{REGION_NAMES[region]}, {col}"] = (f"{fmt_num(a['mean'])} ± {fmt_num(a['sd'], 3)} "
                                                     f"(range {fmt_num(a['min'])}–{fmt_num(a['max'])})")
    rows.append(row)
    return pd.DataFrame(rows).set_index("seed")


def seed_spread_words(record: dict, summary: dict) -> str:
    """What the seed repeats mean for this page's headline Dice: the seed-to-seed SD beside the patient-level
    interval, and whether this run's seed belongs to the record."""
    across = record["across_seeds"]["mean_dice"]
    parts = []
    for region in ("lesion", "ef", "ggo"):
        a, m = across[region], summary["metrics"].get(f"dice_{region}") or {}
        half = (m.get("ci_high", float("nan")) - m.get("ci_low", float("nan"))) / 2
        parts.append(f"{REGION_NAMES[region]} {fmt_num(a['mean'])} ± {fmt_num(a['sd'], 3)} (range "
                     f"{fmt_num(a['min'])}–{fmt_num(a['max'])}; this page's interval over patients is ±{fmt_num(half)})")
    same = (record.get("cohort") == summary.get("cohort") and record.get("profile") == summary.get("profile")
            and record.get("n_cases") == summary.get("n_cases"))
    where = ("the cohort and profile of this page" if same else
             f"cohort `{record.get('cohort')}`, profile `{record.get('profile')}` (not this page's run)")
    kind = "synthetic" if record.get("synthetic") else "real"
    return (f"Repeating the whole cross-validation with other seeds (other fold splits, pretraining and training "
            f"draws; {where}, {kind} data; recorded on commit {record.get('commit', '?')}, {record.get('date', '?')}) "
            f"gives mean Dice over patients of {'; '.join(parts)}. The patient-level interval treats the "
            "patients as the only source of chance; the seed-to-seed spread is a second one that it does not "
            "contain, and a difference between two recipes smaller than it is not a difference of recipes.")
