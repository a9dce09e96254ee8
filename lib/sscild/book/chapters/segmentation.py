"""The Segmentation chapter's tables and sentences, built from the analysis's numbers.

The scores are computed by :mod:`sscild.analysis.segmentation`,
:mod:`sscild.analysis.segmentation_summary` and :mod:`sscild.analysis.segmentation_errors`; this
module formats them for the page.

* :func:`paper_table`: the published mean Dice, for orientation only.
* :func:`summary_table`: Dice and surface Dice per region over patients.
* :func:`agreement_table`, :func:`regression_limits_table`: ICC and Bland–Altman of the extents.
* :func:`baseline_table`: the network against the HU baseline, with the paired difference.
* :func:`confusion_per_patient`: EF/GGO swaps per patient.
* :func:`worst_case_words`: one computed sentence per worst patient.
* :func:`controls_table`, :func:`controls_words`, :func:`control_figure`: false lesions on the
  controls without lung disease.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sscild.analysis.segmentation_errors import label_swaps
from sscild.analysis.segmentation_summary import network_scores, paired_baseline_difference, pooled_dice
from sscild.numfmt import fmt_num
from sscild.paper import PAPER

__all__ = [
    "REGION_NAMES",
    "paper_table",
    "summary_table",
    "agreement_table",
    "regression_limits_table",
    "baseline_table",
    "confusion_per_patient",
    "worst_case_words",
    "controls_table",
    "controls_words",
    "control_figure",
    "seed_spread_table",
    "seed_spread_words",
]

REGION_NAMES = {"normal": "normal lung", "ef": "EF", "ggo": "GGO", "lesion": "total lesion (EF ∪ GGO)",
                "lung": "whole lung"}
"""How the book names each region."""


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


def control_figure(vol, label: np.ndarray, uncertainty: np.ndarray, name: str):
    """The labels and uncertainty of one control (:func:`sscild.clinic.figures.scan_montage`)."""
    from sscild.clinic.figures import scan_montage

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
