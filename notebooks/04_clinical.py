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
# # Clinical correlation
#
# A segmentation is clinically useful only if the lesion burden it measures tracks how the patient's
# lungs work. This chapter correlates the lesion volumes the network predicted, out of fold, with
# pulmonary function tests (PFTs), and asks the same question of the reference labels, so that the
# model is judged against what perfect agreement with the annotators would have given.
#
# Four tests are examined. **FVC** (forced vital capacity, % predicted) and **DLCO** (diffusing
# capacity for carbon monoxide, % predicted) are the lung-function measures SSc-ILD trials follow,
# FVC usually as the primary endpoint: fibrosis stiffens the lung and shrinks its volume (FVC falls)
# and thickens and destroys the alveolar-capillary membrane (DLCO falls; in SSc, pulmonary vascular
# disease lowers DLCO too, so it is not specific to ILD). **FEV1** (% predicted) falls with FVC in
# restrictive disease. **FEV1/FVC** measures airflow *obstruction*; because fibrosis lowers FVC at
# least as much as FEV1, and the stiff lung's recoil and traction on the airways hold them open, the
# ratio is usually preserved or raised.
# The published study {cite}`sscild2024` reported correlations of predicted lesion volume with FEV1
# and with FEV1/FVC; we report the whole grid and come back to the FEV1/FVC result at the end.
#
# **Endpoints.** The *primary* endpoint is the paper's: predicted total lesion against FEV1 and
# against FEV1/FVC (two tests, Holm-adjusted as a pair). Every other correlation on this page is
# *secondary*. One lesion-burden measure is used for the endpoints, the abstract and every
# comparison: predicted total lesion in **percent of the lung** (the paper used volume; percent of
# lung removes lung size, which mixes body size into a volume). The mL grid is kept as secondary.
#
# **EF and GGO** are, as in the Segmentation chapter, established fibrosis (reticulation, traction
# bronchiectasis, honeycombing) and ground-glass opacity; total lesion is their union.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import clinical as ch
from sscild.paths import resolve_data_dir
from sscild.book.report import banner, chapter_context, figure, rel, show

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %% [markdown]
# ## Patients and measurements
#
# Lesion volumes come from the Segmentation chapter's per-case table (out-of-fold prediction and
# reference label of every patient); lung function from the cohort's `clinical.csv`. Each
# correlation uses every patient who has both of its values (pairwise deletion), so the number of
# patients, *n*, is given with every coefficient.

# %%
seg, clinical, table = ch.load_tables(run, data_dir)
show(ch.availability(seg, clinical), caption="Patients available for each measurement")
for line in clinical.attrs["problems"] + clinical.attrs["notes"]:
    display(Markdown(f"- `clinical.csv`: {line}."))

# %%
show(ch.describe(table), caption="Patients: lesion burden, lung function and covariates", fold=True)

# %% [markdown]
# ### What the synthetic generator planted
#
# On the synthetic cohort the relationships between lesions and lung function are not discovered but
# *planted*: the generator draws each patient's lung function from their lesion burden by the model
# printed below (when it publishes one). A correlation found here shows that the pipeline recovers a
# relationship that was put in, no more. On a real cohort this section is empty.

# %%
planted = ch.planted_model(info["synthetic"])
if info["synthetic"]:
    display(Markdown(
        "**These relationships were planted by the synthetic-cohort generator (`sscild.synthetic.phantom`)**; "
        "they follow respiratory physiology rather than the paper's numbers. The generator's model:\n\n"
        + (ch.planted_model_markdown(planted) if planted is not None
           else "_(the generator does not publish its model in this version: see `sscild/synthetic/lungfunction.py`)_")))
else:
    display(Markdown(f"Real cohort `{info['folder']}`: nothing was planted."))

# %% [markdown]
# ## Methods
#
# * **Spearman's rank correlation** ρ, as in the paper: lesion volumes are skewed and their relation
#   to lung function monotone rather than linear. p is two-sided (SciPy).
# * **95 % confidence intervals** by bootstrap over patients: each resample draws whole patients with
#   their lesion measure and PFT together (paired), and the interval is bias-corrected and
#   accelerated (BCa). The generator is seeded, so the intervals are identical on every run; the
#   seed and number of resamples are printed below.
# * **Multiplicity**: each grid (6 lesion measures × the PFTs present) is one family, adjusted by
#   Holm's step-down method, which makes no assumption about independence between the correlated PFTs.
#   The predicted and the reference grid are adjusted separately: they answer different questions.
# * **Model against reference**: for each cell, the difference ρ(predicted) − ρ(reference) on the
#   patients who have both, with a paired bootstrap BCa interval. The two coefficients share patients
#   and outcome values, so they are strongly dependent and must not be compared as independent.
# * **Adjustment**: partial Spearman correlation adjusted for age, sex and height where the table
#   has them: ranks of the lesion measure and of the PFT are each regressed on the covariate ranks
#   (sex coded 0/1) by least squares, and the residuals correlated; p from a t distribution with
#   n − 2 − k degrees of freedom, and a patient-bootstrap interval (BCa) recomputed the same way. Percent-predicted PFTs are already normalised for age, sex and
#   height by their reference equations, so this is a sensitivity analysis, not a correction.

# %%
full, covariates = ch.correlations(table, prof)
display(Markdown(ch.bootstrap_words(full, covariates, prof)))

# %% [markdown]
# ## Primary and secondary endpoints
#
# Predicted total lesion (% of lung) against each lung-function test. The primary pair is adjusted
# for two tests; a secondary endpoint's adjusted p is the whole predicted grid's (every lesion measure
# × every test), so a secondary interval that excludes 0 can still have a large adjusted p: read it as
# exploratory.
#
# **Why a p and an interval can disagree.** Each p is scipy's Spearman test (a t approximation under
# the null of no association); each interval is a BCa bootstrap over patients (no null, no normality).
# They answer neighbouring questions by different approximations, so near the 0.05 line an interval
# that just excludes 0 can come with p slightly above 0.05, or the reverse. Neither is wrong; the
# interval says how large the association may be, and it is what the verdicts of the Abstract's claims
# ledger use. A bootstrap p inverted from the same interval would remove the disagreement and is not
# computed here.

# %%
show(ch.endpoints_table(full), caption="Endpoints: predicted total lesion, % of lung (Spearman ρ, bootstrap 95% CI)")

# %% [markdown]
# ## Predicted and reference lesion burden against lung function (secondary)
#
# One row per (PFT, lesion measure). *n* is the number of patients in the predicted-volume
# correlation (the same patients as the reference one, since both volumes exist for every segmented
# patient); *n (both)* is the number in the difference.

# %%
show(ch.side_by_side(full), caption="Spearman ρ [95% bootstrap CI]: predicted vs reference volumes, every "
     "lesion measure and test (secondary)", fold=True)

# %%
display(Markdown("**Total lesion, % of lung, in words:**\n\n" + ch.interpretation(full)))
if planted is not None:
    display(Markdown(ch.planted_vs_recovered(full, planted)))

# %% [markdown]
# The heat maps show the same grids at a glance: predicted volumes (left), reference volumes
# (middle), and their difference (right). Where the model keeps the reference's clinical signal,
# the first two panels look alike and the third is pale.

# %%
png = figure(ch.rho_heatmap(full), "clinical_rho_heatmap", run.figures, caption=(
    "Spearman ρ of every lesion measure with every lung-function test: predicted volumes (left), reference "
    "volumes (middle), their difference (right). Where the model keeps the reference's signal the first two "
    "panels look alike and the third is pale."))

# %% [markdown]
# ### Raw and Holm-adjusted p-values

# %%
show(ch.p_value_table(full), caption="Two-sided p, raw and Holm-adjusted within each grid", fold=True)

# %% [markdown]
# ### Adjusted for age, sex and height

# %%
show(ch.partial_table(full), caption="Spearman ρ unadjusted and partial (adjusted) with bootstrap 95% CI "
     "and Holm-adjusted p", fold=True)

# %% [markdown]
# ## Predicted lesion burden and each test
#
# Each point is a patient; the red curve is a LOWESS smoother (locally weighted regression,
# statsmodels), which shows the shape of the relationship without assuming one. The dashed line is
# the 20 % extent cut-off used for staging below.

# %%
png = figure(ch.pft_scatter(table, full), "clinical_scatter_lesion_pct", run.figures, caption=(
    "Predicted total lesion (% of lung) against each lung-function test, one point per patient, with a LOWESS "
    "trend and ρ [95% CI] per panel. Look at the shape of the trend and at patients far from it; the dashed "
    "line is the 20 % staging cut-off."))

# %% [markdown]
# ## Extent staging
#
# Goh et al. {cite}`goh2008` stage SSc-ILD as *limited* (≤ 20 % of the lung involved on HRCT) or
# *extensive* (> 20 %); extensive disease carries a worse prognosis and weighs in the decision to
# treat. (The full system refers scans whose extent is hard to call to FVC, with a 70 % cut-off;
# here only the HRCT extent is staged, since that is what the segmentation measures.) Staging from the
# predicted lesion percent is compared with staging from the reference
# labels by Cohen's κ, with a seeded patient-bootstrap interval (BCa, percentile if BCa is degenerate).

# %%
stage = ch.extent_staging(table, prof)
show(stage["display"],
     caption=f"Extent stage, reference (rows) vs predicted (columns); cut-off {stage['threshold']:g} %")
display(Markdown(ch.kappa_words(stage)))
show(ch.staging_accuracy_table(stage), caption="Predicted stage as a test for extensive disease (reference stage as "
     "truth; Wilson 95% intervals)", fold=False)
display(Markdown(ch.cutoff_band_words(stage, run.segmentation_summary)))

# %%
png = figure(ch.staging_scatter(stage), "clinical_staging", run.figures, caption=(
    "Predicted against reference lesion extent with the 20 % cut-off on both axes: patients in the off-diagonal "
    "quadrants are staged differently by the network and by the reference."))

# %% [markdown]
# ## The published correlations, for orientation
#
# The paper reports Spearman ρ between predicted lesion *volume* and FEV1 % predicted and FEV1/FVC
# on its 40 patients. They are listed here on their own; this run's primary endpoints are in the
# table above. On a synthetic cohort the run's coefficients were set by the generator (the planted
# model above: a target ρ is recovered, not discovered), so placing them beside the paper's says
# nothing about the paper; on a real cohort they estimate another population's.

# %%
show(ch.paper_comparison(), caption="Published Spearman ρ (SICCS, 40 real patients), for orientation only")

# %% [markdown]
# ### Why the FEV1/FVC result deserves a second look
#
# In fibrotic ILD the expected pattern is restriction: FVC, total lung capacity and DLCO fall as the
# fibrotic extent grows, FEV1 falls roughly in proportion to FVC, and FEV1/FVC is preserved or
# *rises*, because the stiff lung empties quickly and traction holds the airways open. A strong
# *negative* correlation between lesion extent and FEV1/FVC (the paper's ρ = −0.73) therefore says
# that more disease went with more airflow obstruction. That may reflect the cohort (smokers or
# coexisting airway disease, emphysema counted as lesion, few patients with limited disease), a
# difference in how the ratio was recorded, or chance in 40 patients; it is not what the physiology
# of SSc-ILD predicts, and it should be read beside the FVC and DLCO correlations, which are the
# measures SSc-ILD trials use. The grid above gives those for this run. On the synthetic cohort the
# direction of every relationship was set by the generator, so agreement or disagreement with the
# paper there says nothing about patients.

# %%
display(Markdown("**This run's primary endpoints, in words:**\n\n" + ch.paper_contrast(full, synthetic=info["synthetic"])))

# %%
csv_path, json_path = ch.write_results(run, full, stage, info, profile=profile, seed=prof.seed, n_cases=len(seg))
display(Markdown(f"Written: `{csv_path.name}` ({len(full)} rows: both grids, partial correlations and "
                 f"differences) and `{json_path.name}` in `{rel(run.root)}`."))

# %% [markdown]
# ## Lower-zone and peripheral extent and lung function
#
# Because SSc-ILD lies mostly at the bases and under the pleura, extent measured there may follow FVC
# and DLCO more closely than whole-lung extent. Spearman ρ (95 % bootstrap interval, pairwise
# deletion) of the out-of-fold *predicted* extent in the lower third of the lungs and in the
# peripheral band (zones as defined in the Segmentation chapter) against FVC and DLCO, with
# whole-lung lesion extent for comparison. Exploratory: ten correlations, not adjusted for
# multiplicity.

# %%
zones = ch.zone_correlation_table(run, data_dir, clinical, seed=prof.seed)
if zones is not None:
    show(zones, caption="Zonal extent (% of the zone's lung, predicted out of fold) against FVC and DLCO "
         f"(% predicted): Spearman ρ{' (synthetic cohort)' if info['synthetic'] else ''}")
else:
    display(Markdown("The zonal analysis needs the cohort's label maps and the out-of-fold predictions "
                     "(Segmentation chapter); this run has none, so it is not shown."))
