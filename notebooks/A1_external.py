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
# # External check on real CT
#
# The study's default cohort is synthetic, so nothing in the chapters before this one shows that the
# training recipe works on real CT. This appendix is that check. The *same* library code -- the
# network factory (`sscild.model.network.build_network`), the training loop (`sscild.model.train.train_model`) and
# the MONAI-based Dice (`sscild.evaluation.metrics`) -- is trained on real CT slices with expert labels, and the
# result is set beside published numbers. There is no separate pipeline: only the reading of a 2D
# image folder (`sscild.external`) is new.
#
# The data are the COVID-SemiSeg benchmark {cite}`fan2020infnet`: axial CT slices of COVID-19
# pneumonia, exported as 8-bit images already windowed for the lung, with masks of ground-glass
# opacity (GGO) and consolidation. GGO is one of the study's own classes; consolidation stands in
# for a second, denser lesion class. The slices are not SSc-ILD and not HRCT volumes, so this is a
# check of the *recipe* (can it learn lesion classes of real CT from few labelled images?), not of
# the study's clinical claims.

# %% tags=["parameters"]
profile = "cpu"
train_dir = None  # None: ../shared/data/covid-semiseg/train beside the checkout, when present
test_dir = None  # the benchmark's test part (48 slices), same layout; None: cross-validation only
unlabelled_dir = None  # unlabelled slices (images/ only); None: ../shared/data/covid-semiseg/unlabelled when present; "none": without
out_dir = None  # None: <results>/external

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import external as ch
from sscild.book.report import figure, glue, show, show_record

chk = ch.setup(profile, train_dir=train_dir, test_dir=test_dir, unlabelled_dir=unlabelled_dir, out_dir=out_dir)
display(Markdown(ch.data_note(chk)))

# %% [markdown]
# ## The data
#
# Each slice is an 8-bit greyscale image already cropped to the body and windowed: there are no
# Hounsfield units and no pixel spacing. Sizes vary and some slices are turned by 90 degrees.
# Labels: 0 background, 1 GGO, 2 consolidation. The benchmark publishes **no patient
# identifiers**, so the cross-validation below splits by *slice*: slices of one patient can fall on
# both sides of a fold, and the cross-validated Dice may be optimistic compared with a
# patient-wise split (which the study itself uses).

# %%
if chk.available:
    show(ch.describe_slices(chk.train), caption="Training part")
    if chk.test:
        show(ch.describe_slices(chk.test), caption="Test part")

# %% [markdown]
# ## The recipe
#
# The network and training loop are the study's; only the settings below differ from the `cpu`
# profile, derived in `sscild.external.recipe.EXTERNAL_PROFILES` with `Profile.with_overrides`:
#
# * **Intensity**: grey level v in [0, 255] becomes 2v/255 - 1, in [-1, 1]. All slices were
#   exported in a lung window, so a grey level means about the same density in each; a per-image
#   z-score would depend on how much mediastinum a slice holds.
# * **Geometry**: with no pixel spacing, the body (each slice is cropped to it) sets the scale: the
#   longer side is resized to the grid size, aspect kept, and padded square with air. Predicted
#   class probabilities are resized back to each slice's own size before the decision, and every
#   slice is scored at its own size against its untouched reference mask.
# * **Orientation**: each training slice enters the loop with its four 90-degree rotations (the
#   loop adds flips, small rotations and scaling); at prediction, the probabilities are averaged
#   over the eight flips and rotations of the slice, each turned back, so predictions are in the
#   slice's original orientation.
# * **Decision**: a pixel is lesion where P(GGO) + P(consolidation) > 0.4, and of the lesion,
#   consolidation where 0.7 P(consolidation) > P(GGO), else ground glass (the seventh screen, below;
#   the screens before it scored the most probable class).
# * **Three classes** (background, GGO, consolidation), Dice + cross-entropy loss; half of the
#   training patches are centred on consolidation, the rest on any lesion (the loop's foreground
#   oversampling).

# %%
if chk.available:
    show(ch.recipe_table(chk), caption=f"Recipe `{chk.prof.name}`")

# %% [markdown]
# Two further settings come from the second screen (below, under "Learning from unlabelled
# slices"): each model is trained in **two stages** -- the supervised recipe, then 1000 more steps
# from its own weights with the schedule restarted -- and the **test part** is predicted by the mean
# class probabilities of the model trained on all 50 slices and the five cross-validation fold
# models, as nnU-Net predicts with its folds. A third comes from the third screen: before any label
# is seen, the network is **pretrained on the unlabelled slices** for 2000 steps (it learns to
# restore slices with hidden rectangles and noise), and every model's first stage starts from those
# weights. Without an unlabelled folder the models start from a random initialisation, and the run
# says so. Self-training on the unlabelled slices is implemented but off in the `cpu` recipe.
#
# On a CPU the five fold models (and the test model) train side by side, one thread each, and are
# then scored one after another; on a GPU one at a time. Each trains on one thread, so its weights
# do not depend on how many train at once.

# %% [markdown]
# ### How the recipe was chosen
#
# The recipe was fixed **from cross-validation on the training slices only**; no test result was
# looked at. Each variant was screened on fold 0 of the cross-validation below (trained on 40
# slices, scored on the other 10), with its Dice and the CPU time of its training. The screen was
# run once with `python -m sscild.external search TRAIN_DIR OUT --folds 0` and is recorded in
# `benchmarks/external_recipe_search.json`; this build does not re-run it (it costs as much as the check
# itself).

# %%
search_t = ch.recipe_search()
show_record(search_t, "Variants screened on fold 0 (10 training slices held out)",
            record="external_recipe_search.json", what="first screen");

# %% [markdown]
# **Why this recipe.** The first attempt -- the study's `cpu` network (two residual units per level) on
# 192-pixel patches of a 256-pixel grid, batch 8, 600 iterations -- was under-trained: its Dice on the
# training batches was still rising when it stopped. More updates helped most (1000 -> 1500 iterations
# raised fold-0 GGO Dice from 0.518 to 0.565). Six trainings (five folds and the optional test model) had
# to fit the budget of `make external` at the time of this screen (20 minutes on two CPU cores; the budget
# is 30 minutes since the pretraining and the second stage were added), so the chosen recipe keeps 1500
# iterations and whole slices on a 192-pixel grid but uses one residual unit per level: about 70 % of the
# cost at the same Dice. A smaller grid lost consolidation Dice; a smaller batch with more steps, or a
# higher learning rate, did not help. Training on the four 90-degree rotations cost nothing measurable
# (differences of 0.01, well inside the noise of 10 slices) and makes the network indifferent to how a
# slice is turned, so it stays; averaging over the eight flips and rotations at prediction adds about 0.01
# GGO Dice. Computing the Dice term over the whole batch (nnU-Net's batch Dice, meant to stop slices
# without consolidation from pulling its prediction towards nothing) lowered both Dice in all three
# variants tried, so the Dice stays per slice. Stronger intensity augmentation (shift and scale of 15 %,
# random gamma) changed fold-0 Dice by less than 0.01, inside the noise of 10 slices, so the lighter
# default stays. Caveat: the screen used fold 0, whose 10 slices are also among the 50 scored below, so
# the 5-fold result is slightly optimistic by selection.

# %% [markdown]
# ## Cross-validation
#
# Five folds by slice, stratified by each slice's share of consolidation, seeded. Each fold's network
# is trained on 40 slices and predicts the 10 it never saw. Dice is computed per slice and class;
# a slice whose reference lacks a class is left out of that class's mean (and counted). The
# *pooled* Dice sums intersections and sizes over all slices, so large lesions weigh more and false
# positives on slices without the class count against it. Intervals: 95 % BCa bootstrap over slices.

# %%
if chk.available:
    summary = ch.read_check(chk)  # what `make external` wrote (python -m sscild.external run)
    cv = summary["cv"]
    for key in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo", "pooled_dice_consolidation"):
        glue(f"external_cv_{key}", round(cv[key], 3), display=False)
    show(ch.results_table(summary), caption="Dice: this recipe beside the published results")
    display(Markdown(ch.cv_words(summary)))

# %%
if chk.available:
    union, union_words = ch.lesion_union(chk, summary)
    glue("external_cv_dice_lesion", round(union, 3), display=False)
    display(Markdown(union_words))
    lesion_t = ch.lesion_table(summary)
    if lesion_t is not None:
        show(lesion_t, caption="Lesion as one class (GGO or consolidation): this recipe beside the published "
             "single-class rows")

# %% [markdown]
# The published rows are Dice on the benchmark's 48-slice **test** part; the cross-validated rows
# are on the 50-slice **training** part, split by slice, with each network trained on 40 slices
# rather than 50. They are set side by side for orientation, not as a like-for-like comparison:
# only a test-part row (present when the test folder is given) is measured on the same slices as
# the published ones, and the published papers give no intervals.
#
# What the check shows is that the study's recipe, unchanged in its code and trained for a few
# minutes per fold on two CPU cores, learns both lesion classes of real CT from 40 slices. It falls
# short of the best published rows. The screens below suggest the budget is not the main limit any
# more: 40 % more steps, a fifth level, deep supervision and nnU-Net's augmentation each moved Dice
# by less than their intervals. What weighs on the per-slice mean is in the labels: the union of
# the two classes is found far better than either class (the border between ground glass and
# consolidation is a matter of grading on which the model and the reference often disagree), and
# slices whose reference holds a few hundred pixels of a class score near 0 for any small
# disagreement.

# %% [markdown]
# ### Learning from unlabelled slices, and a longer schedule
#
# Labelled CT is scarce; unlabelled CT is not. The benchmark ships 1600 unlabelled slices of 20
# other patients, and the training code can use them by **self-training**: in every fold, the
# supervised model of that fold's own training slices (the *teacher*) labels the unlabelled slices;
# pixels whose highest class probability is below 0.9 are left out of the loss; then a *student*,
# starting from the teacher's weights, trains on labelled and pseudo-labelled slices together (half
# of every batch from each). The held-out slices of a fold never reach its teacher, its
# pseudo-labels or its student, and an unlabelled slice identical to a labelled one (same pixels)
# stops the run with both file names.
#
# Whether it helps was screened like the recipe: on fold 0 only (40 training slices, 10 held
# out), against a **control** that trains the same teacher for the same extra steps on the labelled
# slices alone, so that what the unlabelled slices add is not confused with what more training adds.
# The per-slice scores of that screen are recorded in `benchmarks/external_semi_screen.csv` (this
# page does not re-run it); gains are paired differences on the same 10 slices, with 95 % BCa
# intervals.

# %%
semi_t = ch.semi_screen()
show_record(semi_t, "Second screen, fold 0 (10 held-out slices): self-training and its control",
            record="external_semi_screen.csv", what="second screen");

# %% [markdown]
# **Why no unlabelled slices, and why the extra steps.** The second screen asked whether the 1600
# unlabelled slices help, against a control that spends the same extra training without them. Both
# self-training students lost GGO Dice against their teacher and gained some consolidation Dice, while the
# control -- the same teacher trained 1000 more steps on the labelled slices alone, from its own weights --
# gained on all four measures. On these slices the gain came from the longer schedule, not from the
# pseudo-labels: the teacher's confident pseudo-labels are mostly background with hardly any consolidation
# (the fold summaries record the shares), and its GGO pseudo-labels carry its own errors back into
# training; keeping only slices with some confident lesion did not change that. The recipe therefore
# adopts the extra 1000 steps and leaves self-training off (it stays available: external profile setting
# `semi_supervised="self-training"`; the study itself pretrains on a cohort's unlabelled scans by default,
# and self-trains only when its profile says `semi_supervised = "self-training"`). The intervals are wide --
# 10 slices -- so none of these differences is established; the choice follows the point estimates and the
# control. The test part is predicted by the mean of the final model and the five fold models (nnU-Net's
# fold ensemble): that cannot be screened by cross-validation (no held-out slice has more than one model
# that never saw it), and it costs only prediction.
#
# Command:
# `SSCILD_THREADS=1 python -m sscild.external search TRAIN_DIR OUT --folds 0 --unlabelled-dir UNLABELLED_DIR --only VARIANT`.

# %% [markdown]
# The fold-0 screen has 10 slices. The same question was then asked over **all five folds**: the
# five teachers of a full run of the `cpu` recipe each got both second stages -- 1000 more steps on
# their own labelled slices (the control, which is what the recipe does), or 1000 more steps with
# half of every batch drawn from 800 of the unlabelled slices as the teacher labelled them. The
# record is `benchmarks/external_selftrain_cv.csv`.

# %%
st_cv = ch.selftrain_cv()
if show_record(st_cv, "Supervised and self-trained side by side, five folds (all 50 slices held out once)",
               record="external_selftrain_cv.csv", what="five-fold self-training comparison"):
    display(Markdown(ch.selftrain_words(st_cv)))

# %% [markdown]
# The cross-validation above trains each fold's model in two stages when the profile says so (the
# `cpu` recipe does): the supervised recipe (its model is kept in `fold_<k>/teacher/`), then 1000
# more steps from its weights -- on the labelled slices alone, or with pseudo-labelled slices when
# self-training is on. The table sets both stages side by side on the same out-of-fold slices, over
# all five folds: the cross-validated check of the lever the fold-0 screen chose.

# %%
if chk.available and summary.get("cv_supervised"):
    stage_t, gain, stage_words = ch.stage_comparison(chk, summary)
    show(stage_t, caption="Cross-validated Dice of the two stages (mean [95% CI], all 50 slices)")
    for n in ch.CLASS_NAMES:
        glue(f"external_stage_gain_{n}", round(gain[n]["mean"], 3), display=False)
    display(Markdown(stage_words))
elif chk.available:
    display(Markdown("This profile trains in one stage, so there is no two-stage comparison here."))

# %% [markdown]
# ### A third screen: nnU-Net's levers
#
# nnU-Net's defaults are a natural place to look for a stronger recipe: stronger augmentation
# (wider rotation and scaling, gamma, blur, noise, simulated low resolution), deep supervision
# of the decoder, SGD with Nesterov momentum and polynomial decay, longer schedules, deeper
# networks and inputs near the images' own resolution. Each lever was added to the two-stage
# recipe on its own and cross-validated on folds 0-2 (30 held-out slices, each fold trained on 40),
# one CPU thread per run. The first row is the recipe as it was, from the same folds of an earlier
# full run of this page; gains are paired differences on the same slices with 95 % BCa intervals.
# The per-slice scores are recorded in `benchmarks/external_lever_screen.csv` (this page does not
# re-run the screen).

# %%
lever_t = ch.lever_screen()
show_record(lever_t, "Third screen, folds 0-2 (30 held-out slices): one lever at a time",
            record="external_lever_screen.csv", what="third screen");

# %% [markdown]
# **What the third screen adopted: pretraining on the unlabelled slices.** Only one lever moved Dice by
# more than the noise of 30 slices: 2000 steps of self-supervised pretraining on the 1600 unlabelled
# slices (the network learns to restore slices with hidden rectangles and noise, then every fold's first
# stage starts from those weights) raised consolidation Dice with an interval above zero and left GGO
# where it was. It is the second way the recipe can learn from unlabelled CT, and unlike self-training it
# does not depend on a teacher's labels: it adopts what the unlabelled slices show, not what a 40-slice
# model thinks of them. It costs one pretraining per run (a few minutes on two CPU threads), shared by
# every fold and the test model, so the `cpu` recipe adopts it. The gain is not robust, though:
# pretraining twice as long (4000 steps) gave it back on the same folds, so the number of steps is not
# tuned, and what the adopted setting brings is best read off the five-fold result above, whose folds 3
# and 4 took no part in the choice. The nnU-Net levers did not carry over to this budget: its augmentation
# (blur, simulated low resolution, gamma, wider rotation and scaling; no elastic deformation) and deep
# supervision of the two decoder levels below the output changed Dice by less than the intervals; SGD with
# Nesterov momentum, which nnU-Net pairs with a thousand epochs, lost badly in 2500 steps; a fifth level
# lost on both classes; and 1000 more first-stage steps gained nothing measurable for 40 % more time. A
# 256-pixel grid, tried on fold 0 alone, took twice the time of the 192-pixel grid for no gain there, and
# would break the 30-minute budget of `make external` on two cores; the fifth screen (below) measured it on
# all three folds for the longer `long` profile. **What
# carries into the study:** pretraining, the one lever that helped. It needs only unlabelled scans, for
# which the cohort format has a place (`unlabelledTr/`): the study's default for them is now the same
# pretraining on axial patches (profile setting `semi_supervised = "pretrain"`, Model & training chapter),
# and the built-in `cpu` cohort has unlabelled synthetic patients, on which it raised the out-of-fold EF
# Dice in both draws measured, with GGO and total lesion nearly unchanged (the Model & training chapter
# shows the records). The nnU-Net levers that did not help here are left out of the study's profiles;
# self-training remains a setting (`"self-training"`).
#
# Command:
# `SSCILD_THREADS=1 python -m sscild.external search TRAIN_DIR OUT --folds 0 1 2 --unlabelled-dir UNLABELLED_DIR --only VARIANT; then python scripts/record_screen.py benchmarks/external_lever_screen.csv --folds 0,1,2 NAME=OUT/<folder>/scores.csv ...`.

# %% [markdown]
# ### A fourth screen: consistency learning
#
# Self-training and restoration pretraining are two ways to learn from the unlabelled slices; the
# family that leads semi-supervised segmentation benchmarks is a third: **consistency learning**
# (Mean Teacher, FixMatch, UniMatch). It is a setting of the shared training code
# (`semi_supervised = "consistency"`, for the study's folds too). Here it replaces the second stage's
# labelled-only steps: beside every labelled batch the network sees as many unlabelled slices (an even
# spread of 800 of the 1600); a *teacher*, whose weights are a slowly moving average of the network's
# own, labels a lightly perturbed view of them (flips, quarter turns; pixels it is less than 90 % sure
# of are left out), and the network learns to give those labels on a strongly perturbed view of the
# same slices (contrast, brightness, gamma, blur, simulated low resolution, noise, and CutMix: a
# rectangle from another slice pasted in, its labels with it). Its control is the `cpu` recipe as
# adopted: the same first stage, the same 1000 second-stage steps on the labelled slices alone. Both
# were cross-validated on folds 0-2 (30 held-out slices), as the third screen was; the per-slice
# scores and the run's record are `benchmarks/external_consistency_screen.csv` and `.json` (this page
# does not re-run the screen).

# %%
cons = ch.consistency_record()
if show_record(cons and cons[0], "Fourth screen, folds 0-2 (30 held-out slices): consistency learning against its "
               "control", record="external_consistency_screen.*", what="fourth screen"):
    display(Markdown(ch.consistency_words(*cons)))

# %% [markdown]
# **Why it is not adopted.** Ground glass, the class the screen was meant to help, did not move beyond
# the noise of 30 slices, and the second stage costs markedly more. A likely reason, not tested: the
# confident part of the teacher's labels is mostly background and clear-cut lesion, which the network
# already gets right, while the faint, graded opacity on which it disagrees with the reference is
# exactly where the teacher is unsure and its pixels are left out. One setting was screened (the
# defaults above); a lower confidence threshold or a larger weight might behave differently. The
# setting stays available (study and external check); on the synthetic study it was measured too
# (Model & training chapter).
#
# Command: as the record says (`python -m sscild.external search ... --folds 0 1 2 --unlabelled-dir ...
# --only` the two variants, then `python scripts/record_screen.py`).

# %% [markdown]
# ### A fifth screen: a longer CPU budget
#
# The `cpu` recipe's 192-pixel grid and 16-128 channels were chosen to fit 30 minutes on two cores, while
# the published peers train at 352 pixels. A `long` profile may take up to 90 minutes on two cores, and
# three levers could spend that budget: **resolution** (256- and 320-pixel grids, whole slices), **width**
# (1.5 times the channels, 24-192) and **steps** (1000 more first-stage steps). Each was added on its own to
# the third screen's base (two stages, 1500 + 1000 steps, no pretraining, so that a lever's effect is not
# mixed with the pretraining's) and cross-validated on folds 0-2, one CPU thread per training, two
# trainings side by side. The control is that base, trained again in the same run; the steps lever was
# already screened on the same base in the third screen, whose row (against that screen's own control) is
# quoted below rather than trained again. Records: `benchmarks/external_budget_screen.csv` (per slice) and
# `.json` (times, what was adopted and why).

# %%
budget = ch.budget_record()
if show_record(budget and budget[0], "Fifth screen, folds 0-2 (30 held-out slices): resolution, width and steps "
               "against the control", record="external_budget_screen.*", what="fifth screen"):
    display(Markdown(ch.budget_words(*budget, lever_t=lever_t)))

# %% [markdown]
# **What the fifth screen says.** On these 40-slice folds the budget is not what holds ground glass
# back: a finer grid and a wider network each cost nearly twice the control's time or more, and none
# moved either class beyond the noise of 30 slices. That agrees with the third screen (a fifth level, more
# steps) and with the recorded GPU run below, whose larger budget bought little. The finer grids even
# lowered consolidation, the class of large confluent regions; a likely reason, not tested, is that the
# network's four levels see a smaller share of the slice at a finer grid, and consolidation needs that
# context. The disagreement that costs GGO Dice is at the border between ground glass and consolidation,
# and in slices whose reference holds a few hundred pixels of a class; neither is resolved by a larger
# network trained on 40 labelled slices. The `long` profile therefore spends only the one lever that lost
# nothing (1000 more first-stage steps) and is offered for users who have the time, not as a recipe shown
# to be better; its five-fold run, when made, is set beside the `cpu` run under "Two budgets" below.
# There, run end to end *with* the pretraining (which the screen left out), the extra steps gained a
# little in both classes on all 50 slices: a hint that the steps matter more after pretraining, from one
# run of each profile.

# %% [markdown]
# ### A longer budget on a GPU
#
# The `paper` external profile scales the recipe up for a GPU (two residual units per level, a
# 256-pixel grid, batch 8, 4000 iterations, the same augmentation and test-time averaging); it was
# not tuned. One 5-fold cross-validation of it, same splits and seed, was run on a GPU and its output
# recorded in `benchmarks/external_paper_gpu.json`; the table reads that record (it is not re-run
# by this page, which needs no GPU). That run predates the pretraining, the second stage and the
# fold ensemble, which the profile now takes from the `cpu` recipe; no GPU run of the profile as it
# is now has been recorded (the GPU has 15 minutes for six models: about 80 s per 4000-step model
# on the recorded H100, so the budget holds on paper, unmeasured).

# %%
gpu_cv = ch.recorded_gpu_run()
if gpu_cv is None:
    display(Markdown("No GPU run of the `paper` external profile is recorded in this checkout."))
else:
    show(gpu_cv, caption=ch.gpu_caption(gpu_cv))
    if chk.available:
        display(Markdown(ch.gpu_words(gpu_cv, chk, summary)))

# %%
if chk.available:
    figure(ch.example_figure(chk), "external_examples", chk.fig_dir, caption=(
        "Out-of-fold predictions of the best, the median and the worst slice (mean Dice over the classes "
        "present), in the files' own orientation: compare the predicted with the expert outlines."))

# %%
if chk.available:
    figure(ch.distribution_figure(chk), "external_dice_distribution", chk.fig_dir, caption=(
        "Per-slice cross-validated Dice (points, box: quartiles), pooled Dice (black) and the published "
        "test-part values (coloured marks, right of each box): look at the spread over slices."))

# %% [markdown]
# ## Test part

# %%
if chk.available and summary["test"]:
    t = summary["test"]
    for key in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo", "pooled_dice_consolidation", "dice_lesion"):
        if key in t:
            glue(f"external_test_{key}", round(t[key], 3), display=False)
    fig, test_words = ch.scored_test_part(chk, summary)
    figure(fig, "external_test_examples", chk.fig_dir, caption=(
        "Test-part slices (best, median, worst) as predicted for the test part (the models named below), beside "
        "the expert outlines."))
    display(Markdown(test_words))
elif chk.available:
    display(Markdown("No test folder was given (`make external EXTERNAL_TEST=DIR`), so there is no "
                     "test-part result; the benchmark's test part is not distributed with this project."))

# %% [markdown]
# ## Two budgets
#
# The default profile, `cpu`, is sized for about 30 minutes on two CPU cores. The `long` profile is the
# same recipe with what the fifth screen (above) kept of a longer budget, 1000 more first-stage steps
# (`make external EXTERNAL_PROFILE=long`); its run has a folder of its own (`external-long/`, beside
# this run's), so neither overwrites the other. When both have run on the same folders, the table sets
# them side by side: the same 50 slices out of fold, so the gain is paired.

# %%
if chk.available:
    budgets_t, budgets_words = ch.profile_comparison(chk, summary)
    show(budgets_t, caption="The external profiles run on these folders")
    display(Markdown(budgets_words))

# %% [markdown]
# Both profiles were also run end to end by `make` from a fresh clone, one after the other on one
# machine, and their out-of-fold scores recorded (`benchmarks/external_profile_runs.csv` and `.json`:
# commands, wall times, machine, commit), so that the comparison can be read without running both.

# %%
recorded_runs = ch.recorded_profile_runs()
if show_record(recorded_runs and recorded_runs[0], "Recorded runs of the external profiles, five-fold "
               "cross-validation on the 50 training slices (paired gain over the cpu run)",
               record="external_profile_runs.*", what="end-to-end run of both profiles"):
    display(Markdown(ch.recorded_profile_words(*recorded_runs)))

# %% [markdown]
# ### A sixth screen: more first-stage steps, with the pretraining
#
# The fifth screen left the pretraining out, and there 1000 more first-stage steps gained nothing; run end
# to end with the pretraining (above), the same steps gained a little in both classes. The sixth screen
# asks how far that goes: the `cpu` recipe as adopted (pretraining, two stages) with 5000 instead of 1500
# first-stage steps, cross-validated on all five folds, one CPU thread per training, two trainings side by
# side, against the `cpu` recipe (the control) and the `long` profile (2500 steps) on the same 50 slices.
# Training on the CPU with a fixed seed and one thread repeats itself bit for bit, so the control and
# the `long` row are the recorded end-to-end runs above rather than trained again (the record says how
# that was checked). Records: `benchmarks/external_steps_screen.csv` (per slice) and `.json` (where each
# row was trained, times, what was adopted and why); the variants re-run by name with
# `python -m sscild.external search ... --only`.

# %%
steps = ch.steps_record()
if show_record(steps and steps[0], "Sixth screen, five folds (50 held-out slices): first-stage steps on the cpu "
               "recipe with its pretraining", record="external_steps_screen.*", what="sixth screen"):
    display(Markdown(ch.steps_words(*steps)))

# %% [markdown]
# **What the sixth screen says.** After the pretraining, the first 1000 extra first-stage steps (the
# `long` profile) bought a small gain in both classes; 2500 more on top of those, at about twice the
# `long` profile's training time, bought nothing that the 50 slices can tell from noise. The adoption rule
# was written down before any fold finished, and the `long` profile keeps 2500 + 1000 steps. With the fifth
# screen (resolution and width), on this evidence the gap between the `cpu` recipe's ground glass and the
# published rows is not closed by more steps, pixels or channels on 40 labelled slices per fold.

# %% [markdown]
# ### A seventh screen: the decision from the probabilities
#
# Every screen above scored the most probable class of each pixel. That is one reading of the
# probabilities, and not necessarily the best one for ground glass, a class that lies between background
# and consolidation in density and is confused with both. The seventh screen asks whether another reading
# of the same probabilities serves it better: call a pixel lesion where
# P(GGO) + P(consolidation) exceeds a threshold, and of the lesion call consolidation only where a
# weighted P(consolidation) beats P(GGO). No model is trained: the decision is not a training setting,
# so every trained model is kept. It was chosen on folds 0-2 and checked on the folds and models that
# took no part. Records: `benchmarks/external_decision_screen.csv` (per slice) and `.json`; the choice
# re-runs with `python scripts/decision_grid.py results/external/cv --folds 0,1,2`.

# %%
decision = ch.decision_record()
if show_record(decision and decision[0], "Seventh screen, five folds (50 held-out slices): the decision from the "
               "class probabilities, on the recorded cpu and long runs' models", record="external_decision_screen.*",
               what="seventh screen"):
    display(Markdown(ch.decision_words(*decision)))

# %% [markdown]
# ### An eighth screen: members
#
# The `long` profile uses well under its 90 minutes, and the fifth and sixth screens found no gain in
# spending the rest on more pixels, channels or steps. One more way to spend it is a common one: train
# each model twice from the same pretrained weights with other seeds (other draws of batches and
# augmentation) and average the two networks' probabilities (profile setting `members`; the first member
# is the network a one-member run trains, so it is reused, and member *m* trains with seed key
# *k* + 100 *m*). The eighth screen trained a second member for each of the `long` run's five fold
# models and set the mean of the two against the `long` profile alone and the `cpu` recipe, all with the
# decision the seventh screen adopted, on the same 50 out-of-fold slices; the adoption rule was written
# down before any second member finished. Records: `benchmarks/external_members_screen.csv` (per slice)
# and `.json`.

# %%
members = ch.members_record()
if show_record(members and members[0], "Eighth screen, five folds (50 held-out slices): two networks per model for "
               "the long profile, with the adopted decision", record="external_members_screen.*", what="eighth screen"):
    display(Markdown(ch.members_words(*members)))

# %% [markdown]
# **What the eighth screen says.** A second network per model bought consolidation and no ground glass:
# the two members differ by about what one training differs from another, and their mean does not find
# ground glass that neither finds alone. The test part is already predicted with the mean of six models
# trained on different slices, which are more different from each other than two seeds on the same
# slices, so the gain there is likely smaller still. With the fifth to eighth screens, the ways of
# spending more CPU time that this appendix has tried -- pixels, channels, steps, members -- leave
# cross-validated ground glass at about 0.59-0.60, where the `long` profile's extra steps and the
# decision put it.

# %% [markdown]
# ### A ninth screen: the sampler
#
# The training loop draws each patch around a pixel: in the `cpu` recipe half of them around a
# consolidation pixel, the rest around any lesion pixel (the study's `lesion_oversample`, there meant
# for EF). On the 192-pixel grid a patch is the whole slice shifted so that the pixel lies near its
# centre, so the setting mostly decides how often slices with consolidation are drawn. A recipe tuned
# for ground glass might do better without that emphasis. The ninth screen trained the `cpu` recipe with
# every patch centred on any lesion pixel of a uniformly drawn slice, on all five folds, against the
# recorded `cpu` run, both with the adopted decision; the rule was written down before any fold
# finished. Records: `benchmarks/external_sampler_screen.csv` and `.json`.

# %%
sampler = ch.sampler_record()
if show_record(sampler and sampler[0], "Ninth screen, five folds (50 held-out slices): the sampler's emphasis on "
               "consolidation", record="external_sampler_screen.*", what="ninth screen"):
    display(Markdown(ch.paired_screen_words(*sampler)))

# %% [markdown]
# **What the ninth screen says.** Drawing slices with consolidation more often costs ground glass nothing
# that 50 slices can see, and is worth about 0.02 of consolidation Dice; the `cpu` recipe keeps it.

# %% [markdown]
# ### A tenth screen: the network
#
# Every screen so far changed how the same network is trained: MONAI's residual U-Net, whose levels
# each start with a strided convolution, so that it works below full resolution from its first layer and
# costs little. Two other networks were tried, each with the `cpu` recipe as it is (pretraining, two
# stages, dihedral averaging, the adopted decision) and its own pretraining, since pretrained weights
# belong to one network: the same U-Net with a fifth level (channels 16-256, a 12-pixel bottleneck on
# the 192-pixel grid, so each output pixel sees more of the chest), and nnU-Net's plain U-Net (MONAI
# `DynUNet`: two 3x3 convolution-norm-LeakyReLU blocks per stage, the first stage at full resolution),
# five levels of 8-128 channels to stay within about one and a half times the `cpu` recipe's training
# time (profile setting `architecture`, `"plain"`). Both on all five folds against the recorded `cpu`
# run, the rule written down before any fold trained. Records:
# `benchmarks/external_architecture_screen.csv` and `.json`.

# %%
architecture = ch.architecture_record()
if show_record(architecture and architecture[0], "Tenth screen, five folds (50 held-out slices): the network",
               record="external_architecture_screen.*", what="tenth screen"):
    display(Markdown(ch.paired_screen_words(*architecture)))

# %% [markdown]
# **What the tenth screen says.** Neither a deeper network nor nnU-Net's plain one does better on 40
# training slices per fold: both lose about 0.01-0.02 of ground-glass Dice beyond noise and cost more
# time. Together with the earlier screens (steps, pixels, channels, members, the sampler, consistency
# learning, self-training), this leaves no lever found on two CPU cores that moves cross-validated ground
# glass past the `long` profile's; what is left to try needs a GPU (the `paper` profile, larger grids and
# networks) or pretrained weights from outside this machine.

# %% [markdown]
# ## Cost

# %%
if chk.available:
    show(ch.fold_table(summary),
         caption="Cross-validation folds: slices and seconds (training seconds as recorded when trained)")
    minutes, cost_words = ch.cost(chk, summary)
    glue("external_minutes", round(minutes, 1), display=False)
    display(Markdown(cost_words))
