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
# # Model & training
#
# One network per fold of the patient-wise cross-validation: each is trained only on the patients
# of its training split and later predicts only the patients it never saw. The folds are trained by
# their own notebook (`notebooks/train_fold.py`, once per fold; its executed copy is kept next to each
# fold's checkpoints); this chapter reads what they wrote: the recipe, the learning curves of every
# fold and what each fold cost.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import training as ch
from sscild.book.report import banner, chapter_context, figure, glue, show
from sscild.paths import resolve_data_dir

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %% [markdown]
# ## The recipe
#
# Every setting comes from the profile (`lib/sscild/profiles.py`); the table is generated from it.
# The `cpu` profile trains a small 2D U-Net on axial patches so that eight folds fit in the default
# run on two CPU cores. Its scans are not HRCT (the grid of this run's profile is printed below the
# table): thin-section HRCT has sub-millimetre pixels and slices about 1 mm apart, so on the coarser
# grids fine reticulation and honeycombing are drawn coarser than a radiologist would see them; the `paper` profile trains a wider, deeper 2D U-Net on full-resolution
# slices with mixed precision on a GPU. 2D slices rather than 3D patches: HRCT of ILD is read
# slice by slice, its slice spacing varies between scanners far more than its in-plane spacing, and
# a 2D network sees many more independent training samples per patient.

# %%
recipe, grid = ch.recipe(prof)
show(recipe, caption=f"Training recipe, profile `{prof.name}`", fold=False)
display(Markdown(grid))

# %% [markdown]
# ## Learning curves
#
# Training loss (Dice + cross-entropy, mean over each logging window) and training-batch Dice of EF
# and GGO per epoch for every fold. Monitoring uses training batches only: the held-out patients of
# a fold play no part in its training. **Stopping rule**: a fixed budget of steps (the recipe's
# "budget"); there is no early stopping, since it would need held-out patients that cross-validation
# keeps for scoring. Whether the budget reached a plateau is checked below, from each fold's
# `epochs.csv`.

# %%
done, missing = ch.trained_folds(run)
if missing:
    display(Markdown(f"**Not yet trained:** folds {missing} (run `make train`)."))
if done:
    figure(ch.learning_curves(run, done), "learning_curves", run.figures, caption=(
        "Training loss per step (left) and training-batch Dice of EF (solid) and GGO (dashed) per epoch "
        "(right), one colour per fold. A curve still climbing at the right edge has not reached a plateau."))

# %% [markdown]
# ### Did training reach a plateau?
#
# For each fold, the EF and GGO training Dice are regressed on the step over the last 20 % of the
# steps; the slope is per 1000 steps, with its 95 % interval. A slope interval above 0 means the
# curve was still rising when the budget ended.

# %%
for caption, pt, words in ch.plateau_sections(run, done):
    if not pt.empty:
        show(pt, caption=caption, floatfmt=3)
    display(Markdown(words))

# %% [markdown]
# ## Cost of each fold

# %%
table, parameters = ch.fold_costs(run, done)
show(table, caption="Per-fold training cost")
if parameters is not None:
    glue("train_total_seconds", float(table["seconds"].sum()), display=False)
    glue("train_parameters", parameters, display=False)
    display(Markdown(f"Network parameters: **{parameters:,}**. Total training time: "
                     f"**{table['seconds'].sum() / 60:.1f} min** over {len(table)} folds."))

# %% [markdown]
# ## Unlabelled scans: pretraining
#
# When the cohort has unlabelled scans (`unlabelledTr/`, Data chapter) and the profile's
# `semi_supervised` is `"pretrain"` (the default), the network first learns to restore random axial
# patches of them in which rectangles are hidden and noise is added (self-supervised pretraining,
# `sscild.model.pretrain`), and every fold's training starts from those weights. The pretraining
# reads no label and no labelled scan, so no held-out patient reaches any fold through it. It runs
# once per run, as its own make step before the first fold (`sscild pretrain`), and is kept in
# `pretrained/` of the run folder. On the real CT of the external benchmark (appendix A1) the
# same pretraining helped consolidation, while self-training (the other mode: each fold's model
# pseudo-labels the unlabelled scans) lost to the same extra steps without them.

# %%
words, restored = ch.pretraining(run, prof, done)  # reads the folds' finished pretraining, never runs one
display(Markdown(words))
if restored is not None:
    figure(restored, "training_pretraining", run.figures, caption=(
        "The pretraining task on a patch of an unlabelled scan (axial, radiological orientation): look "
        "at what the network gives back, whether it only removes the noise and keeps the edges of the "
        "anatomy or also fills the hidden boxes with plausible anatomy (on the synthetic cpu cohort it "
        "filled them only faintly: it learns mostly local texture)."))

# %% [markdown]
# ### What pretraining changed (recorded)
#
# Whether pretraining helps was measured on the **synthetic** `cpu` cohort, not on SSc-ILD patients:
# the same 40 labelled patients, folds and recipe, once without unlabelled scans (random
# initialisation) and once with 40 unlabelled synthetic patients and 1000 steps of pretraining, each
# scored out of fold on all 40 patients. The comparison was made twice: with the profile's seed 0
# (`benchmarks/study_pretrain_cv.csv`) and with seed 1 (`benchmarks/study_pretrain_cv_seed1.csv`:
# another split into folds, other training batches and another pretraining draw). The tables read
# those records, written by `scripts/record_arms.py` from the runs' `segmentation_metrics.csv`; this
# page does not re-run them. Within one record the intervals resample patients (95 % BCa), so they
# show how the gain varies over patients; whether it holds for another draw of the training
# randomness is what the second record shows.

# %%
for arms_name, seed_words, arms in ch.pretraining_records(prof):
    if arms is None:
        display(Markdown(f"The pretraining record `benchmarks/{arms_name}` is not in this checkout."))
        continue
    show(arms.T, caption=f"Synthetic cpu cohort, 8-fold cross-validation ({seed_words}), 40 patients: without "
                         "unlabelled scans and with pretraining on 40 unlabelled ones (recorded)")

# %% [markdown]
# A third mode, **consistency learning** (`semi_supervised = "consistency"`), adds to every training step
# as many unlabelled patches as labelled ones: a slowly moving average of the network (the *teacher*)
# labels a lightly perturbed view of them, and the network learns to give those labels on a strongly
# perturbed view (intensity changes and CutMix), pixels the teacher is unsure of left out. On the
# external benchmark's real CT (appendix A1, fourth screen) it did not beat the same steps without
# unlabelled slices. On the built-in cohort it was compared with the default on two folds (recorded):

# %%
cons = ch.consistency_record(prof)
if cons is None:
    display(Markdown("The consistency-learning record (`benchmarks/study_consistency_cv.csv` and `.json`) is not "
                     "in this checkout."))
else:
    show(cons[0].T, caption="Synthetic cpu cohort, held-out patients of two folds: the default recipe (pretraining) "
                            "and consistency learning on top of it (recorded)")
    display(Markdown(cons[1]))

# %% [markdown]
# ## What training costs on other machines
#
# The engineering measurements of training (the `paper` profile on a GPU, the cost of one training step
# and how the folds share a CPU) are recorded benchmarks, shown with the others in the Reproducibility
# appendix, where each names the commit and machine it was measured on.
