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
# # Data
#
# The study's input is a cohort of chest HRCT scans, each with a reference label map drawn by
# readers (normal lung, established fibrosis (EF), ground-glass opacity (GGO)), and a clinical table
# with demographics and pulmonary function tests (PFTs). This chapter checks the cohort folder,
# says which cases are used and which are left out and why, preprocesses every scan into a cache the
# network trains from, describes the patients in a table like a paper's Table 1, and splits them
# into the patient-wise cross-validation folds that every later chapter uses. When the cohort is the
# built-in synthetic one, the last section explains how it is made and compares it with real CT.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
import warnings

from IPython.display import Markdown, display

from sscild.analysis import data as ds
from sscild.analysis import phantomcheck
from sscild.book import plots
from sscild.book.chapters import data as ch
from sscild.data.labels import label_map_from_env
from sscild.data.cohort import load_cohort
from sscild.data.validate import validate_cohort
from sscild.data.folds import make_splits, write_splits
from sscild.paths import default_data_dir, resolve_data_dir, write_json
from sscild.profiles import get_profile
from sscild.synthetic.writer import generate_cohort
from sscild.book.plots.data import case_gallery, extent_distribution, fold_plot
from sscild.data.cache import build_cache
from sscild.model.selftrain import semi_mode, unlabelled_scans
from sscild.book.report import banner, chapter_context, figure, rel, show

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice in a kernel without widgets
data_dir = resolve_data_dir(data_dir, profile)
if data_dir == default_data_dir(profile) and not (data_dir / "dataset.json").exists():
    generate_cohort(data_dir, profile=get_profile(profile), progress=False)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %% [markdown]
# ## The cohort folder
#
# A cohort is one folder in the nnU-Net v2 "raw" layout plus a clinical table, the same for real
# and synthetic data: `dataset.json` (label names and values, channel names, file ending, number of
# cases, whether the cohort is synthetic), `imagesTr/<case>_0000.nii.gz` (CT in Hounsfield units),
# `labelsTr/<case>.nii.gz` (integer labels: 0 background, 1 normal lung, 2 EF, 3 GGO) and
# `clinical.csv` (one row per case). The folder is only ever read; everything derived goes to the
# run's results folder.

# %%
declared = f", {info['n']} cases declared in dataset.json" if info["n"] is not None else ""
source = f" Source: {info['source'].rstrip('.')}." if info["source"] else ""
display(Markdown(f"Cohort **{info['name']}**, folder `{rel(data_dir)}`: {'synthetic' if info['synthetic'] else 'real'} "
                 f"data{declared}.{source} Results of this run: `{rel(run.root)}`."))

# %% [markdown]
# ## Validation
#
# Every file is checked before anything is computed: the folder structure and `dataset.json`; each
# case's image and label (readable, same voxel grid and orientation, finite values in Hounsfield
# units, label values declared, lung present); and the clinical table (one row per case, numbers
# where numbers belong, values in a plausible range). All problems are collected at once, each naming
# the case, the file, what is wrong and how to fix it.
#
# The policy is **strict**: a case with any *error* is excluded from every later step (training,
# evaluation, correlation) and listed below with its reasons; *warnings* (a missing lung-function
# value, say) are reported and the case is kept. The full report, the policy and the exclusions are
# written to `validation.json` in the results folder.

# %%
label_map = label_map_from_env()
report = validate_cohort(data_dir, label_map=label_map)
write_json(run.validation, ds.validation_record(report, label_map=label_map))
print(report.format().splitlines()[0].replace(str(data_dir), rel(data_dir)))
if not report.usable_cases:
    raise RuntimeError(f"No usable case in {data_dir}:\n{report.format()}\nFix the problems listed above and re-run.")

# %%
summary = ch.problem_summary(report)
if summary.empty:
    display(Markdown("**No problems found**: every case is usable and the clinical table is complete."))
else:
    show(summary, caption="Problems found, by kind")
    rows, hidden = ch.problem_rows(report, limit=25)
    show(rows, caption="Problems, errors first" + (f" (first {len(rows)}; {hidden} more in validation.json)" if hidden else ""))

# %%
excluded = ds.exclusions(report)
if excluded.empty:
    display(Markdown(f"**No case is excluded**: all {len(report.cases)} cases are used."))
else:
    show(excluded.set_index("case_id"), caption=f"Excluded cases ({len(excluded)} of {len(report.cases)}) and why")
gaps = ch.clinical_gaps(report)
if gaps.empty:
    display(Markdown("**No clinical value or row is set aside**: every value in `clinical.csv` is used as given "
                     "(blank values are missing, and say so above)."))
else:
    show(gaps.set_index("case_id"), caption=f"Clinical values and rows set aside ({len(gaps)}; the run was "
         "allowed to go on with them: ALLOW_CLINICAL_GAPS=1)")
cohort = load_cohort(data_dir, label_map=label_map, exclude=report.bad_cases)

# %% [markdown]
# ### Cohorts labelled with another scheme
#
# The label *names* in `dataset.json` decide what each value means. Names that are a study role or an
# obvious synonym (`lung`, `fibrosis`, `ground_glass`, ...) are recognised; any other scheme needs a
# label map giving each name a role. A dataset that draws the components of fibrosis separately and
# has a consolidation class, for instance, is mapped as below (`sscild.data.labels.resolve_label_map`
# computes the table). Check a cohort with the map from the command line,
#
# ```bash
# sscild validate /path/to/cohort --label-map '{"reticulation": "ef", "honeycombing": "ef", "traction_bronchiectasis": "ef", "consolidation": "ggo"}'
# ```
#
# and give this chapter the same map in the environment variable `SSCILD_LABEL_MAP` (the JSON text,
# or the path of a file holding it), e.g. `SSCILD_LABEL_MAP=labels.json make all DATA=/path/to/cohort`.
# Renaming the labels in (a copy of) `dataset.json` to the role names works everywhere too.

# %%
show(ch.label_map_example(), caption="An example label scheme mapped onto the study's roles")
display(Markdown(f"Label map used by this run: `{label_map}`." if label_map else
                 "This run uses no label map: the cohort's label names are the study's roles."))

# %% [markdown]
# ## Preprocessing and the cache
#
# Each usable case is reoriented to RAS, resampled to the profile's target spacing (image linearly,
# label nearest-neighbour), cropped to the body found from the image alone, and its Hounsfield units
# mapped by a fixed window onto [-1, 1] (`sscild.data.preprocess`). The result is cached per case under a
# key made of the input files' bytes and the settings, so a second run reads nothing it does not
# need and a changed scan or setting rebuilds exactly the cases concerned. Lesion volumes are counted
# on each case's original voxel grid.

# %%
cases = build_cache(cohort, run, prof, progress=False)
display(Markdown(f"{len(cases)} cases in the cache `{rel(run.cache)}`: {int((~cases['reused']).sum())} preprocessed now, "
                 f"{int(cases['reused'].sum())} reused. Target spacing of profile `{prof.name}`: "
                 f"{tuple(prof.target_spacing)} mm (None keeps the scan's own)."))
show(ch.geometry_table(cases), caption="Voxel grids as acquired and after preprocessing")

# %% [markdown]
# ## The patients
#
# The table describes the cases used (excluded cases are left out). Continuous values are given as
# median [interquartile range]; *n* is the number of patients with the value and *missing* the number
# without it. Volumes and extents come from the reference labels: lung is normal lung, EF and GGO
# together, and EF and GGO are also given as a percentage of that lung volume. The lung-function
# tests are those SSc-ILD studies report: **FVC**, forced vital capacity; **FEV1**, forced expiratory
# volume in one second; **DLCO**, diffusing capacity of the lung for carbon monoxide, each in
# **% predicted** (the measured value as a percentage of the value predicted for a healthy person of
# the same age, sex, height and ethnicity); and **FEV1/FVC**, the ratio of the two measured volumes
# (a fraction, not a percentage). Slice spacing is the distance between slice centres, which equals
# the slice thickness for contiguous reconstructions.

# %%
clinical, notes = ds.read_clinical(data_dir)
table1 = ch.table_one(cases, clinical)
show(table1[["summary", "n", "missing"]].rename(columns={"summary": "median [IQR] or n (%)"}),
     caption=f"Table 1. The cohort ({info['name']}, n = {len(cases)})")
if notes:
    display(Markdown("\n".join(f"- `clinical.csv`: {note}." for note in notes)))

# %% [markdown]
# ### Lesion extent
#
# How much of each patient's lung is diseased, by the reference labels. The extent of disease varies
# widely in SSc-ILD, so the folds below are stratified by it.

# %%
fig = figure(extent_distribution(cases), "data_lesion_extent", run.figures, caption=(
    "Reference lesion extent per patient (% of lung) and its split into EF and GGO: look at the range, from "
    "patients with little disease to extensive disease, which the folds are stratified by."))

# %% [markdown]
# ### Example cases
#
# Three patients near the 10th, 50th and 90th percentiles of total lesion extent (mild, moderate,
# severe). Each is shown at the axial and the coronal level with the most lesion among the levels
# that cut through a large part of the lung, in the lung window and in radiological orientation (the
# patient's right on the image's left).

# %%
examples = {level: ds.example_case(cohort, cid) for level, cid in ds.pick_examples(cases).items()}
fig = figure(case_gallery(examples), "data_example_cases", run.figures, caption=(
    f"Mild, moderate and severe example patients: CT and reference labels, axial and coronal ({plots.window_text()}, "
    "radiological orientation). Normal lung sky blue, EF vermillion, GGO yellow."))

# %% [markdown]
# ## Cross-validation folds
#
# The model is trained and evaluated with patient-wise K-fold cross-validation: each patient is held
# out by exactly one fold, whose network never sees them in training. Folds are stratified by total
# lesion extent (patients ranked by extent and dealt out to the folds in groups of K, with a seeded
# random order inside each group), so each fold holds out mild, moderate and severe cases alike. The
# splits are written as `splits.json` in nnU-Net's `splits_final.json` format.

# %%
strata = dict(zip(cases["case_id"], cases["lesion_pct"].fillna(0.0)))
splits = make_splits(sorted(cases["case_id"]), strata=strata, k=prof.num_folds, seed=prof.seed)
write_splits(run.splits, splits)
folds = ds.fold_composition(splits, cases)
show(folds, caption=f"{prof.num_folds} folds (seed {prof.seed}): patients and held-out total lesion, % of lung", floatfmt=1)
fig = figure(fold_plot(ds.fold_table(splits, cases)), "data_folds", run.figures, caption=(
    "Held-out patients of each fold by lesion extent: every fold should hold mild, moderate and severe "
    "patients alike."))

# %% [markdown]
# ## Unlabelled scans
#
# Labelled HRCT is scarce, while every centre has many scans nobody has labelled. A cohort can hold
# such scans of *other* patients in `unlabelledTr/` (README: "Your own cohort"); validation checks
# them like the labelled images and refuses a copy of a labelled image, since that patient would
# then reach, unlabelled, the training of the folds that hold them out. With the profile's default
# (`semi_supervised = "pretrain"`) the network is pretrained on them before the first fold trains
# (Model & training chapter).

# %%
unlabelled = unlabelled_scans(run)
mode = semi_mode(prof)
display(Markdown(
    "This cohort has no unlabelled scans." if not unlabelled else
    f"{len(unlabelled)} unlabelled scans passed validation"
    + (" (synthetic patients other than the labelled ones)" if info["synthetic"] else "")
    + {"pretrain": f"; the network will be pretrained on them for {prof.pretrain_steps} iterations.",
       "self-training": "; each fold's supervised model will pseudo-label them (self-training).",
       "off": f"; the profile's `semi_supervised` is `{prof.semi_supervised}` with {prof.pretrain_steps} pretraining "
              "iterations, so they are not used."}[mode]))

# %% [markdown]
# ## How the synthetic cohort is made
#
# The built-in cohort is generated by `sscild phantom` (`sscild.synthetic.phantom`): a digital chest phantom
# per patient, built in millimetres and sampled on the profile's voxel grid.
#
# * **Anatomy.** Body outline with skin, fat and muscle; spine, ribs, sternum and scapulae;
#   mediastinum with heart, great vessels, trachea and main bronchi; upper abdominal organs under a
#   domed diaphragm; the scanner table. Two lungs inside the rib cage with apical domes,
#   costophrenic recesses and the heart's and spine's impressions. Inside them, parenchyma whose
#   attenuation depends on inspiration and is denser in the dependent lung, branching vascular trees
#   that fill the lung and taper towards the periphery, and airways beside the arteries.
# * **Disease.** An SSc-ILD-like, mostly NSIP pattern: bilateral, lower-zone, subpleural and
#   dependent, patchy, with a per-patient extent from near-normal to about half the lung. Established
#   fibrosis (a reticular net, honeycomb cysts, traction bronchiectasis, with volume loss) sits in the
#   most basal subpleural part and is surrounded by ground glass (a hazy rise in attenuation through
#   which vessels stay visible). EF and GGO overlap in mean attenuation, so texture, not density,
#   tells them apart.
# * **Scanner.** Each patient has their own field of view (pixel size), slice thickness with partial
#   volume along the slices, reconstruction blur and correlated noise.
# * **Labels.** Reference labels are drawn like a reader's: smooth regions around the pattern with a
#   little boundary uncertainty, not a voxel-wise threshold.
#
# **Lung function is planted.** Each patient's FVC, FEV1, FEV1/FVC and DLCO are generated from their
# true EF and GGO extents and demographics by the model printed below (`sscild.synthetic.lungfunction.CLINICAL_MODEL`):
# fibrosis restricts (FVC and DLCO fall with extent, EF more than GGO), FEV1 follows FVC, and
# FEV1/FVC is preserved or rises a little. Any correlation between lesions and lung function in this
# cohort was put there by the generator; it shows that the pipeline can recover a planted
# relationship, not a finding about patients.

# %%
from sscild.synthetic.lungfunction import CLINICAL_MODEL

if info["synthetic"]:
    display(Markdown(f"**{CLINICAL_MODEL['description']}** EF and GGO in the equations are percent of lung; "
                     "e terms are independent normal noise with the standard deviation given."))
    show(ch.clinical_model_table(CLINICAL_MODEL), caption="The planted lung-function model")
    show(ch.population_table(CLINICAL_MODEL), caption="The generator's population")
else:
    display(Markdown(f"This run uses the real cohort `{info['folder']}`: nothing in it was planted."))

# %% [markdown]
# ### The phantom next to real chest CT
#
# A phantom is only useful if its images pose the network a problem like real CT. The figure puts the
# synthetic patient with the least disease next to a real chest CT (public sample scans without
# lesion labels, resampled to the phantom's pixel size), and the table compares their lung
# attenuation, measured identically on each: lungs found by thresholding, the median lung HU and its
# interquartile range, and the share of lung voxels above -500 HU (vessels, airway walls, fissures).
# A second synthetic patient with median disease shows how lesions shift these numbers.

# %%
real_files = phantomcheck.real_ct_files()
if not info["synthetic"]:
    display(Markdown("Real cohort: the phantom comparison is not shown."))
elif not real_files:
    display(Markdown("The real chest CT samples (`../shared/data/real-ct/chest-ct-*.nrrd` beside the checkout) "
                     "are not present here, so the comparison with real CT is skipped."))
else:
    from sscild.data.cohort import read_case
    from sscild.data.orientation import to_canonical
    from sscild.book.plots.phantom import phantom_vs_real

    picks = ds.pick_examples(cases, levels={"least disease": 0.0, "median disease": 0.5})
    vols = {level: read_case(cohort, cid)[0] for level, cid in picks.items()}
    synth = [(f"{cid} (synthetic, {level})", "synthetic", *to_canonical(vols[level].array, vols[level].affine))
             for level, cid in picks.items()]
    pixel = synth[0][3][0]
    real = [(f.stem, "real", *phantomcheck.load_real_ct(f, pixel_mm=pixel)) for f in real_files]
    fig = figure(phantom_vs_real(synth[0][2], synth[0][3], real[0][2], real[0][3]), "data_phantom_vs_real",
                        run.figures, caption=("A synthetic patient beside a real chest CT at the same pixel size "
                                              f"({plots.window_text()}): compare the texture of the lung and the "
                                              "anatomy around it, which the generator only approximates."))
    show(phantomcheck.parenchyma_comparison(synth + real), floatfmt=1,
         caption=f"Lung attenuation, synthetic and real (real scans resampled to {pixel:.2f} mm pixels)")

# %% [markdown]
# ### The variety of real chests
#
# A network trained on lungs of one density learns "lung is about -850 HU" and fails on the first
# real patient: emphysema and bullae (-950 HU and below) look like the air outside the body, a
# poorly inspired, dense base looks like ground glass, and an air-filled oesophagus or the scanner
# table's foam mattress (about -920 HU) looks like lung. The generator therefore draws, per patient
# and each with its own knob (`sscild.synthetic.variety.Variety`): the inspiration level (base
# attenuation and lung height) and the antero-posterior density gradient of a supine scan;
# centrilobular or paraseptal emphysema from none to severe, and bullae, all labelled **normal lung**
# (emphysema is not a lesion of this study) and drawn only where the reference labels no lesion; a
# dilated, air-filled oesophagus with a fluid level (oesophageal involvement is common in systemic
# sclerosis); pericardial effusion; visible fissures. The table counts the patients carrying each
# feature, the gallery shows one patient per feature, and the histogram sets each synthetic patient's
# normal-lung attenuation beside the real scans' lungs.

# %%
if info["synthetic"] and (data_dir / "phantom_truth.csv").exists():
    import pandas as pd

    from sscild.data.lungmask import lung_mask_by_threshold
    from sscild.book.plots.variety import lung_hu_histograms, pick_variety_examples, variety_gallery, variety_table

    truth = pd.read_csv(data_dir / "phantom_truth.csv")
    if "emphysema_kind" in truth:
        show(variety_table(truth), caption="Variety of the synthetic cohort (patients with each feature)")
        figure(variety_gallery(data_dir, pick_variety_examples(truth)), "data_variety_gallery", run.figures, caption=(
            f"One synthetic patient per variety feature ({plots.window_text()}): check that each feature looks like "
            "its counterpart on real CT and that none of it carries a lesion label."))
        real_lungs = []
        for f in real_files:
            hu_r, sp_r = phantomcheck.load_real_ct(f, pixel_mm=float(truth["pixel_mm"].median()))
            real_lungs.append((f.stem, hu_r, lung_mask_by_threshold(hu_r, sp_r)))
        figure(lung_hu_histograms(data_dir, list(truth["case_id"][:16]), real_lungs), "data_lung_hu_histograms",
               run.figures, caption=("Normal-lung attenuation of synthetic patients beside the lungs of the real scans: "
                                     "the synthetic curves should span the real ones, not sit apart from them."))
    else:
        display(Markdown("This synthetic cohort was made by an older generator without the variety features."))

# %% [markdown]
# ## Key numbers

# %%
key = ds.key_numbers(report, cases)
display(Markdown(
    f"{key['n_found']} cases found, **{key['n_included']} used**, {key['n_excluded']} excluded. "
    f"Median total lesion extent {key['lesion_pct_median']:.1f} % of lung "
    f"[IQR {key['lesion_pct_q1']:.1f} to {key['lesion_pct_q3']:.1f}]; EF {key['ef_pct_median']:.1f} %, "
    f"GGO {key['ggo_pct_median']:.1f} %."))
