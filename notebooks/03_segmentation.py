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
#
# What is scored. **EF** (established fibrosis) is the label for reticulation, traction
# bronchiectasis and honeycombing: lung whose architecture is destroyed or distorted. **GGO**
# (ground-glass opacity) is a hazy increase of attenuation through which vessels and bronchial walls
# stay visible. **Total lesion** is their union. The labels are the reference annotators' (on the
# synthetic cohort: the generator's), and every score below is agreement with them.
#
# :::{admonition} What a synthetic cohort can and cannot show
# :class: important
# On the built-in synthetic cohort the Dice depends on how the generator draws its lesions: their
# shapes, their textures and the attenuation it gives EF and GGO. The generator makes EF and GGO
# overlap in attenuation on purpose (the histograms further down show how far), so a rule on Hounsfield
# units alone cannot separate them: the HU baseline's EF/GGO failure below is built in, not found.
# Such a run tests that the pipeline trains, predicts and scores correctly; it does not estimate how
# well the method segments SSc-ILD. The published study's values are listed apart, for orientation
# only.
# :::

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import segmentation as ch
from sscild.paths import resolve_data_dir
from sscild.book.report import banner, chapter_context, figure, rel, show

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)
cohort = ch.load_cohort(data_dir)

# %% [markdown]
# ## Methods
#
# * **Prediction.** Each held-out patient's scan is preprocessed exactly as in training, segmented
#   slice by slice by its fold's network (with the left-right flipped slice averaged in when the
#   profile asks for test-time augmentation), given the profile's lesion threshold, post-processed,
#   and mapped back to the scan's own voxel grid (nearest neighbour) before scoring.
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
n_predictions, tolerance, df, summary = ch.score_out_of_fold(run, cohort, prof, info, profile)

# %%
display(Markdown(ch.methods_words(summary, prof, cohort, n_predictions=n_predictions, tolerance=tolerance)))

# %% [markdown]
# ## The published values, for orientation
#
# The published study's mean Dice, on its 40 real patients, in a table of its own. This run's values
# are in the tables below; they are not set beside these as if they measured the same thing (see the
# box above). Readers themselves do not agree perfectly: in SSc-ILD, published Dice between
# radiologists' contours, and between radiologists and a network, lie around 0.68–0.75
# {cite}`chassagnon2020atlasnet`, the range against which a real cohort's Dice should be read. On the
# synthetic cohort a gap to these values (a lower EF Dice, say) comes from the generator's labels, the
# profile's coarser grid and the training budget (checked below, "Was training long enough?"), and
# says nothing about the method.

# %%
show(ch.paper_table(), caption="Published mean Dice (SICCS, real HRCT), for orientation only")

# %% [markdown]
# ## Overlap per class

# %%
kind = "synthetic" if info["synthetic"] else "real"
png = figure(ch.metric_strip(df, "dice"), "seg_dice", run.figures, caption=(
    f"Dice per patient and region, out of fold ({kind} cohort `{info['folder']}`). Each point is a patient, "
    "the box its quartiles: look at the spread and at the patients far below the box, not only at the median."))

# %%
png = figure(ch.metric_strip(df, "nsd", tolerance_mm=tolerance), "seg_nsd", run.figures, caption=(
    f"Normalised surface Dice per patient at an in-plane tolerance of {tolerance:.2f} mm: the share of both "
    "boundaries within the tolerance of the other. It rewards boundaries that are nearly right, which Dice "
    "does not distinguish from gross errors."))

# %%
show(ch.summary_table(df), caption="Dice and surface Dice over patients: n (excluded), mean ± SD, "
     "median [IQR], 95% bootstrap CI of the mean, and Dice pooled over all patients' voxels")

# %% [markdown]
# The mean over patients weighs every patient alike; the pooled Dice weighs every voxel alike, so
# patients with large lesions count more. The paper does not say which it reports.
#
# ## Seed to seed
#
# The interval above treats the 40 patients as the only source of chance. The fold splits, the
# pretraining and every training draw are random too; the whole cross-validation was repeated with
# other seeds and recorded (`benchmarks/study_seed_spread.json`, `scripts/record_seeds.py`; not part of
# `make all`, which runs one seed). Arithmetic differs between machines as well (bfloat16 on CPUs that
# compute it natively, float32 elsewhere), so the same seed on another machine gives slightly other
# weights; the Reproducibility chapter records the machine of this run.

# %%
seeds = ch.read_record("study_seed_spread.json")
if seeds is None:
    display(Markdown("_No seed repeats are recorded in this checkout (`benchmarks/study_seed_spread.json`)._"))
else:
    show(ch.seed_spread_table(seeds), caption=f"Out-of-fold Dice of the recorded seed repeats "
         f"({'synthetic' if seeds.get('synthetic') else 'real'} cohort `{seeds.get('cohort')}`, profile "
         f"`{seeds.get('profile')}`, commit {seeds.get('commit')})", fold=False)
    display(Markdown(ch.seed_spread_words(seeds, summary)))

# %% [markdown]
# ## Per fold
#
# Each fold's network is scored on its own held-out patients. Spread between folds shows how much
# the estimate depends on which patients a network was trained on.

# %%
show(ch.per_fold_table(df), caption="Mean per fold (held-out patients of that fold); a baseline cut is "
     "fitted per fold, so the pooled row has none (—)")

# %% [markdown]
# ### Was training long enough?
#
# The Model & training chapter judges whether each fold's training Dice had levelled off when its
# budget ended (*Did training reach a plateau?*); where it had not, the Dice on this page is lower than
# the same recipe reaches with more steps.

# %% [markdown]
# ## Best, median and worst patient
#
# Ranked by total-lesion Dice. For each patient: the CT alone, then the reference and the prediction
# drawn as outlines over it (so the texture under a label stays visible), on the axial slice with the
# most reference lesion and the coronal slice through it. Radiological orientation (patient's right
# on the image's left), lung window (width 1500, level −600 HU). Colours: normal lung sky blue, EF
# vermillion, GGO yellow (a palette that stays distinct under the common colour-vision deficiencies,
# the same as in the files `sscild segment` writes).

# %%
png = figure(ch.case_figure(run, cohort, df), "seg_cases", run.figures, caption=(
    "Best, median and worst patient by lesion Dice: CT, reference outline, predicted outline, axial then "
    f"coronal ({ch.window_text()}). Compare the outlines with the texture under them: where the "
    "prediction draws a lesion the CT does not show, or misses one it does."))

# %% [markdown]
# ### Where the worst patients go wrong
#
# The three patients with the lowest lesion Dice, with the error that dominates: lesion drawn where
# the reference has none (false positive), lesion missed, or EF and GGO swapped. The sentences are
# computed from the table.

# %%
worst, words = ch.worst_patients(run, cohort, df)
show(worst, caption="Lowest lesion Dice: what went wrong", floatfmt=2)
display(Markdown("Zones are thirds of the reference lung from base to apex; *medial* is the inner third "
                 "between the midline and the lateral edge of the lungs.\n\n" + words))

# %% [markdown]
# ## EF and GGO: which label the voxels received
#
# Dice per class hides *how* a class is missed. The table counts, for every reference label, where
# its voxels went in the prediction (all patients pooled); the second table gives the two swaps per
# patient. A large "reference EF predicted GGO" share means fibrosis is being called ground glass.

# %%
conf = ch.confusion_table(df)
if conf.empty:
    display(Markdown("This run's per-case table has no voxel counts (scored before they were recorded)."))
else:
    show(conf, caption="Reference label (rows) against predicted label (columns): % of the reference "
         "label's voxels, all patients pooled", floatfmt=1)
    show(ch.confusion_per_patient(df), caption="Per patient: share of a reference label's voxels given another label")

# %% [markdown]
# ## Agreement of lesion extent
#
# Bland–Altman analysis, predicted − reference extent in percentage points (pp) of the lung. The fixed
# limits (bias ± 1.96 SD) assume the error does not depend on the extent; segmentation errors usually
# do (a network over-calls a little lesion and under-calls a lot, or the reverse). The slope of the
# difference on the mean tests that *proportional bias*; where its interval excludes 0, read the
# regression-based limits {cite}`bland1999`, which follow the extent, rather than the fixed ones.

# %%
show(ch.agreement_table(summary), caption="Predicted vs reference extent, % of lung: ICC(2,1), fixed "
     "Bland–Altman bias and limits with 95% CIs, and the proportional-bias slope")
show(ch.regression_limits_table(summary), caption="Regression-based Bland–Altman bias and 95% limits (pp) at "
     "low, middle and high extent (10th, 50th, 90th percentile), bootstrap 95% CIs", floatfmt=2)

# %%
png = figure(ch.bland_altman_grid(df, summary), "seg_bland_altman", run.figures, caption=(
    "Bland–Altman plots of lesion, EF and GGO extent (network) and of lesion extent (HU baseline): difference "
    "against mean, fixed bias and limits (grey, solid and dashed) and the regression-based bias and limits "
    "(vermillion). A cloud that slopes is proportional bias: the fixed limits are then too wide at one end and "
    "too narrow at the other, and the vermillion lines are the ones to read."))

# %% [markdown]
# ## What the network adds over a density threshold
#
# The HU baseline needs no network, and it is given the reference lung for free; its EF/GGO cut is
# fitted on the labelled training patients of each fold. The network has to find the lung itself.
# The main comparison is the paired difference, network − baseline Dice per patient, with its
# bootstrap interval. On the synthetic cohort the baseline's EF and GGO Dice are low by design: the
# generator gives EF and GGO overlapping attenuation.

# %%
lo, hi = summary["baseline"]["haa_range_hu"]
show(ch.baseline_table(df, summary), caption=f"Network vs HU density mask ({lo:g} to {hi:g} HU) per region")
cut_words = ch.baseline_cut_words(summary)
if cut_words:
    display(Markdown(cut_words))

# %% [markdown]
# ### Why density cannot tell EF from GGO here
#
# The attenuation of the reference EF and GGO voxels, pooled over the patients. Where the two curves
# overlap, no single Hounsfield-unit cut separates them; the overlap coefficient (1 = the same
# distribution, 0 = none shared) says how much.

# %%
hist_fig, ovl = ch.attenuation_figure(cohort, df, summary)
png = figure(hist_fig, "seg_ef_ggo_hu", run.figures, caption=(
                 f"Attenuation of reference EF and GGO voxels ({'synthetic' if info['synthetic'] else 'real'} cohort), "
                 f"with the baseline's band (grey) and its fitted EF/GGO cuts (dotted). Overlap coefficient "
                 f"{ovl:.2f}: the larger the shared area, the less any density cut can separate the two."
                 + (" On the synthetic cohort this overlap is set by the generator." if info["synthetic"] else "")))

# %%
png = figure(ch.baseline_comparison(df), "seg_baseline", run.figures, caption=(
    "Network against the HU baseline. Left: each patient's Dice for both methods, joined by a line; lines "
    "rising to the right are patients the network segments better. Right: measured against reference "
    "lesion extent; points on the dashed line are exact."))

# %% [markdown]
# ## Healthy lung stays healthy: false lesions on controls
#
# Dice is computed on patients who have disease, so it cannot show what the models do to a lung that
# has none. The cohort's **controls** (`controlsTs/`) are extra patients without EF or GGO: on the
# synthetic cohort, phantom patients drawn like the others (anatomy, inspiration, emphysema, scanner)
# and then given no lung disease. They are not part of the cross-validation and no fold was trained
# on them, so the whole fold ensemble labels each, exactly as `sscild segment` would label a new scan.
# Every voxel it calls EF or GGO there is a false lesion. The aim is at most 1 % of the lung.

# %%
controls = ch.score_controls(run, summary)
if controls.empty:
    display(Markdown(":::{note}\nThis cohort has no controls (`controlsTs/`), so false lesions on healthy lungs "
                     "were not measured here. Put CT scans of patients without lung disease there as "
                     "`<id>_0000.nii.gz` (no labels needed) to measure them.\n:::"))
else:
    show(ch.controls_table(controls), caption=f"False lesion on {len(controls)} {kind} controls without lung "
         "disease, labelled by the fold ensemble: volumes (mL) and % of the lung; the share of the false lesion "
         "that is uncertain; the largest connected false lesion")
    display(Markdown(ch.controls_words(summary["controls"], synthetic=info["synthetic"])))

# %%
if not controls.empty:
    worst = summary["controls"]["worst"]
    png = figure(ch.control_figure(run, worst), "seg_controls", run.figures, caption=(
        f"The control with the most false lesion ({worst}): the ensemble's labels (top) and its uncertainty "
        f"(bottom, percent; 50 is an even split between two classes) on four axial slices and one coronal "
        f"({ch.window_text()}). Any EF (vermillion) or GGO (yellow) here is false."))

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
bench = ch.segment_benchmark_table()
if bench is None:
    display(Markdown("No `sscild segment` benchmark is recorded in this checkout (`benchmarks/segment_cpu.json`)."))
else:
    show(bench, caption="Recorded benchmark of `sscild segment` (the real CT scans carry no labels: "
         "their lung volume is a plausibility check, not a score)")

# %%
display(Markdown(f"Written: `{run.segmentation_metrics.name}` ({len(df)} patients × {df.shape[1]} columns) and "
                 f"`{run.segmentation_summary.name}` in `{rel(run.root)}`; predictions in `{rel(run.predictions)}`."))

# %% [markdown]
# ## Where the disease is: zones
#
# SSc-ILD, mostly non-specific interstitial pneumonia, is read by where it lies: at the bases and
# under the pleura. Every out-of-fold prediction and every reference label map is split into zones
# (the rules below, from `sscild.clinic.zones`, the same code `sscild segment` reports per scan), and EF and
# GGO are given as a share of each zone's own lung, so a zone's extent does not depend on its size.

# %%
zone_df = ch.cohort_zones(run, cohort)
display(Markdown("**Zones.** " + "; ".join(ch.ZONE_RULES.values()) + "."))
show(ch.zone_agreement(zone_df), caption=f"EF and GGO per zone, % of the zone's lung, over "
     f"{zone_df['case_id'].nunique()} patients{' of the synthetic cohort' if info['synthetic'] else ''}: "
     "reference and out-of-fold prediction (mean), bias = predicted − reference (percentage points), ICC(2,1)")

# %%
png = figure(ch.cohort_zone_figure(zone_df), "seg_zones", run.figures, caption=(
    "EF and GGO extent per zone, % of the zone's lung, one point per patient: reference hollow, out-of-fold "
    "prediction filled, medians as bars. Look for the basal and peripheral predominance in both, and for "
    "zones where the filled points sit systematically above or below the hollow ones (a zonal bias)."))
