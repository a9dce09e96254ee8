# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Segmentation results
#
# Every patient is segmented only by the network of the fold that held it out (out-of-fold
# prediction), and scored against its reference labels in its original voxel grid. This chapter
# reports how well the network finds normal lung, established fibrosis (EF), ground-glass opacity
# (GGO) and total lesion (EF ∪ GGO), how well the lesion extent it measures agrees with the
# reference, and what it adds over a classical Hounsfield-unit rule.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild import evaluate as ev
from sscild import plots
from sscild.cohort import load_cohort
from sscild.paper import PAPER
from sscild.paths import resolve_data_dir, write_json
from sscild.plots import segmentation as segplots
from sscild.predict import POSTPROCESS_RULE, predict_oof
from sscild.report import banner, chapter_context, rel, glue, show

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)
cohort = load_cohort(data_dir)

# %% [markdown]
# ## Methods
#
# * **Prediction.** Each held-out patient's scan is preprocessed exactly as in training, segmented
#   slice by slice by its fold's network (with the left-right flipped slice averaged in when the
#   profile asks for test-time augmentation), post-processed, and mapped back to the scan's own
#   voxel grid (nearest neighbour) before scoring.
# * **Overlap.** Dice per region, and the normalised surface Dice (NSD): the share of both
#   boundaries lying within a tolerance of the other. NSD is computed for EF, GGO and total lesion
#   only; for normal lung and the whole lung, whose boundary is mostly the pleura, it costs most of
#   the run time and adds little. A region absent from a patient's reference has no meaningful Dice:
#   that patient is excluded from that region's numbers and counted, following Metrics Reloaded
#   {cite}`maierhein2024metrics` and nnU-Net {cite}`isensee2021nnunet`.
# * **Summaries over patients.** Mean ± SD, median [interquartile range] and the 95 % bias-corrected
#   and accelerated (BCa) bootstrap interval of the mean, seeded (resamples stated below).
# * **Volume agreement.** Predicted against reference extent of lesion, EF and GGO in **percent of
#   the lung** (each map's own lung volume), the quantity extent staging uses: in millilitres, a
#   large lung and a large lesion go together and lung size would inflate the agreement. ICC(2,1)
#   of Shrout and Fleiss {cite}`shrout1979icc` (two-way random effects, absolute agreement, single
#   measures) with its F-based 95 % interval, and Bland–Altman bias and 95 % limits of agreement
#   {cite}`bland1986`, in percentage points (pp).
# * **Classical baseline.** The high-attenuation area of quantitative CT {cite}`podolanczuk2016haa`:
#   lung voxels in a fixed band of attenuation (stated below) are lesion. It is applied inside the
#   *reference* lung, so the comparison is about lesion, not about finding the lung. Density has no
#   published rule for telling EF from GGO; to still give the network's EF and GGO Dice a
#   comparator, the band is split at one attenuation cut per fold (denser voxels EF, the rest GGO),
#   the cut that maximises mean EF and GGO Dice on that fold's *training* patients, and the held-out
#   patients are scored with it: the best a single density cut can do, fitted without leakage. No
#   NSD for the baseline.

# %%
paths = predict_oof(run, progress=False)
tolerance = ev.nsd_tolerance_mm(cohort, prof)
df = ev.evaluate_oof(run, cohort, tolerance_mm=tolerance, progress=False)
summary = ev.summary_dict(df, info["name"], info["synthetic"], profile, tolerance_mm=tolerance,
                          settings=ev.oof_settings(run))
summary_path = write_json(run.segmentation_summary, summary)

# %%
pol = summary["policies"]
display(Markdown(
    f"{len(paths)} out-of-fold predictions, {summary['n_cases']} patients scored. "
    f"Test-time left-right flips: **{ {True: 'on', False: 'off'}.get(pol['tta'], pol['tta']) }**. "
    f"Post-processing: {POSTPROCESS_RULE}. "
    f"NSD tolerance: **{tolerance:.2f} mm** for every patient (1.5 × the coarser in-plane spacing of "
    f"the network's grid and of the scans, so a boundary one voxel off is tolerated). "
    f"Intervals: {pol['ci_method']}. ICC form: {pol['icc_form']}. Baseline: {summary['baseline']['method']}."))

# %% [markdown]
# ## This run and the paper

# %%
show(ev.paper_table(summary, info["folder"]), caption="Mean Dice over out-of-fold patients: this run, "
     "the HU baseline and the published study")

# %% [markdown]
# ## Overlap per class
#
# Each point is one patient. Red diamonds mark the paper's mean Dice where it reported one.

# %%
paper_dice = {"lesion": PAPER["dice"]["total_lesion"], "ef": PAPER["dice"]["ef"], "ggo": PAPER["dice"]["ggo"]}
png = plots.save(segplots.metric_strip(df, "dice", paper=paper_dice), "seg_dice", run.figures)

# %%
png = plots.save(segplots.metric_strip(df, "nsd", tolerance_mm=tolerance), "seg_nsd", run.figures)

# %%
show(ev.summary_table(df), caption="Dice and surface Dice over patients: n (excluded), mean ± SD, "
     "median [IQR], 95% bootstrap CI of the mean")

# %% [markdown]
# ## Per fold
#
# Each fold's network is scored on its own held-out patients. Spread between folds shows how much
# the estimate depends on which patients a network was trained on.

# %%
show(ev.per_fold_table(df), caption="Mean per fold (held-out patients of that fold)")

# %% [markdown]
# ## Best, median and worst patient
#
# Ranked by total-lesion Dice. Left two columns: the axial slice with the most reference lesion;
# right two: the coronal slice through it. Reference beside prediction, radiological orientation
# (patient's right on the left of the image).

# %%
picked = ev.extreme_cases(df)
cases = []
for rank, cid in picked.items():
    image, ref, pred = ev.load_case_maps(run, cohort, cid)
    d = float(df.set_index("case_id").loc[cid, "dice_lesion"])
    cases.append({"image": image.array, "ref": ref, "pred": pred, "affine": image.affine,
                  "title": f"{rank}: {cid}\nlesion Dice {d:.2f}"})
png = plots.save(segplots.case_montage(cases), "seg_cases", run.figures)

# %% [markdown]
# ## Agreement of lesion extent

# %%
show(ev.agreement_table(summary), caption="Predicted vs reference extent, % of lung: ICC(2,1) and "
     "Bland–Altman (predicted − reference, percentage points)")

# %%
png = plots.save(segplots.bland_altman_grid(df, summary), "seg_bland_altman", run.figures)

# %% [markdown]
# ## What the network adds over a density threshold
#
# The HU baseline needs no network, and it is given the reference lung for free; its EF/GGO cut is
# fitted on the labelled training patients of each fold. The network has to find the lung itself.

# %%
lo, hi = summary["baseline"]["haa_range_hu"]
cuts = summary["baseline"].get("ef_cut_hu_per_fold") or {}
show(ev.baseline_table(df, summary), caption=f"Network vs HU density mask ({lo:g} to {hi:g} HU) per region")
if cuts:
    display(Markdown("EF/GGO cut fitted on each fold's training patients (HU): " +
                     ", ".join(f"fold {k}: {v:g}" for k, v in cuts.items()) + "."))

# %%
png = plots.save(segplots.baseline_comparison(df), "seg_baseline", run.figures)

# %% [markdown]
# ## Applying the models to a new scan
#
# `sscild segment SCAN --out DIR` (NIfTI, NRRD or a folder holding one DICOM series) runs the
# ensemble of all fold models of the last trained run (`--models` picks another) on a scan none of
# them saw, averaging their softmax. It writes the label map in the scan's own geometry
# (`<name>_labels.nii.gz`), a JSON and a CSV report (volumes in mL, % of lung per class, extent stage
# after Goh et al. {cite}`goh2008`: limited ≤ 20 % of lung, extensive above) and an overlay
# montage. A file that is not a CT in Hounsfield units, a 2D image, an unreadable file or missing
# models stop it with a message saying what to fix. Its cost was measured with
# `scripts/bench_segment.py` on a thin-slice-sized volume with this profile's eight models:

# %%
from sscild.provenance import segment_benchmark_table

bench = segment_benchmark_table()
if bench is None:
    display(Markdown("No `sscild segment` benchmark is recorded in this checkout (`benchmarks/segment_cpu.json`)."))
else:
    show(bench, caption="Recorded benchmark of `sscild segment` (the real CT scans carry no labels: "
         "their lung volume is a plausibility check, not a score)")

# %%
values = ev.glue_values(summary)
for name, value in values.items():
    glue(name, value, display=False)
display(Markdown(f"Written: `{run.segmentation_metrics.name}` ({len(df)} patients × {df.shape[1]} columns) and "
                 f"`{run.segmentation_summary.name}` in `{rel(run.root)}`; predictions in `{rel(run.predictions)}`."))

# %% [markdown]
# ## Where the disease is: zones
#
# SSc-ILD, mostly non-specific interstitial pneumonia, is read by where it lies: at the bases and
# under the pleura. Every out-of-fold prediction and every reference label map is split into zones
# (the rules below, from `sscild.zones`, the same code `sscild segment` reports per scan), and EF and
# GGO are given as a share of each zone's own lung, so a zone's extent does not depend on its size.

# %%
from sscild import zones as zn
from sscild.plots.zones import cohort_zone_figure

zone_df = zn.cohort_zone_extent(run, cohort)
display(Markdown("**Zones.** " + "; ".join(zn.ZONE_RULES.values()) + "."))
show(zn.zone_agreement(zone_df), caption=f"EF and GGO per zone, % of the zone's lung, over "
     f"{zone_df['case_id'].nunique()} patients{' of the synthetic cohort' if info['synthetic'] else ''}: "
     "reference and out-of-fold prediction (mean), bias = predicted − reference (percentage points), ICC(2,1)")

# %%
png = plots.save(cohort_zone_figure(zone_df), "seg_zones", run.figures)
