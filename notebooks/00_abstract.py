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
# # Abstract & introduction
#
# Systemic sclerosis (SSc) is an autoimmune disease of small vessels and connective tissue; interstitial
# lung disease (ILD) is its leading cause of death. On high-resolution CT (HRCT), SSc-ILD shows two
# main patterns: **ground-glass opacity (GGO)**, a hazy increase of lung attenuation, and
# **established fibrosis (EF)**: reticulation, traction bronchiectasis and honeycombing. How much of
# the lung they occupy predicts the course of the disease {cite}`goh2008`, but visual scoring is
# coarse and varies between readers.
#
# The study re-run here {cite}`sscild2024` published an HRCT dataset of 40 SSc-ILD patients with
# voxel labels of normal lung, EF and GGO, trained a convolutional network under 8-fold patient-wise
# cross-validation, and correlated the predicted lesion volume with pulmonary function. This book
# re-runs that study end to end from code: every number and figure below is computed on the page
# that shows it, from the cohort named in the banner.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import abstract as ch
from sscild.book.report import banner, chapter_context, show
from sscild.paths import read_json, resolve_data_dir

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)
seg = read_json(run.segmentation_summary)
clin = read_json(run.clinical_summary)

# %% [markdown]
# ## Claims ledger
#
# Each number the published study claims, beside what this run gives, whether this cohort can test the
# claim at all, how large a difference its patients could detect, and a verdict. The table fills itself
# in from the run's results: on a real cohort the verdicts compare the claim with this run's interval.

# %%
show(ch.claims_ledger(seg, clin, info), caption="Claims ledger: the paper's claims against this run", fold=False)

# %% [markdown]
# ## Methods, paper against re-run
#
# What the paper's abstract states of its method, and what this run did. Where the paper is silent the
# re-run had to choose; differences in any row can move the numbers above.

# %%
show(ch.methods_table(prof, seg), caption="Methods: the paper (as its abstract states them) and this re-run",
     fold=False)

# %% [markdown]
# ## This run in one paragraph

# %%
display(Markdown(ch.abstract_paragraph(seg, clin, info, profile)))

# %% [markdown]
# :::{admonition} Reading these numbers
# :class: important
# On the built-in synthetic cohort every number above is set by the generator that made the cohort:
# the Dice by how it draws lesions and textures, the correlations by the lung-function model it
# planted. They show that the pipeline works end to end, not how the method performs on patients,
# and the published values are quoted for orientation only. The profile matters too: the default
# `cpu` profile's scans are not HRCT (the Model & training chapter prints their grid).
# :::
#
# ## How to read this book
#
# The **Data** chapter validates the cohort folder, describes the patients and splits them into the
# cross-validation folds. **Model & training** gives the recipe and what training cost.
# **Segmentation results** scores every patient with the model that never saw it and compares the
# network with a classical density threshold. **Clinical correlation** relates the predicted lesion
# burden to lung function. **Discussion & limitations** says what the re-run can and cannot show;
# **Reproducibility** records everything needed to repeat it.
