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
# # Reproducibility
#
# What produced this book: code version, software, hardware, settings, seeds, the wall time of each
# step and a checksum of every input file, so that a reader can tell whether a re-run used the same
# inputs and the same code.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
from IPython.display import Markdown, display

from sscild.book.chapters import reproducibility as ch
from sscild.book.report import banner, chapter_context, show, show_record
from sscild.paths import resolve_data_dir

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %% [markdown]
# ## Code and environment

# %%
show(ch.environment_table(), caption="Code, software and hardware")

# %% [markdown]
# ## Settings and seeds

# %%
show(ch.run_settings(run, prof), caption="Profile settings and seeds of this run")

# %% [markdown]
# ## Wall time of each step
#
# From `runlog.json`, which make's notebook runner appends to (latest run of each step).

# %%
show(ch.step_times(run), caption="Steps: latest execution, and the longest (the run that did the work)")

# %% [markdown]
# ## Recorded benchmarks
#
# Measurements too long for `make all` (cross-validations of alternative recipes, seed repeats, timings,
# the GPU check) are recorded once in `benchmarks/` by a script and read by the chapters that show them.
# Each names the date, the commit and the machine it was measured on where it recorded them; for a record
# that does not, the commit that added it is given instead. Timings depend on the machine: machines of one
# kind differ by up to about twice. Results depend on the arithmetic too, so a record is reproduced exactly
# only on the same kind of machine (how much it moves them: below).

# %%
show(ch.benchmark_records(), caption="Recorded benchmarks (benchmarks/): what, when, commit, machine, command",
     fold=False)

# %% [markdown]
# ### How much the arithmetic moves the results
#
# Every run of one commit with one seed on one kind of machine gives the same weights and the same
# numbers. Across machines they can differ: where the CPU computes bfloat16 natively (recent x86 CPUs)
# the `cpu` profile trains in bfloat16, elsewhere in float32, and other processors round sums in other
# orders. The size of that difference was measured by training the default recipe's folds 0 and 1 again
# with the same seed in float32 instead of bfloat16, on the same machine, and scoring their held-out
# patients (`benchmarks/study_arithmetic.json`, `scripts/screen_training.py`).

# %%
arith, words = ch.arithmetic()
display(Markdown(words))
if arith is not None:
    show(arith, caption="Held-out Dice, folds 0-1, trained in bfloat16 and in float32 with the same seed (one machine)")

# %% [markdown]
# ## Training on other machines
#
# **The `paper` profile on a GPU.** The default run trains on the CPU. The GPU path (CUDA chosen
# automatically, mixed precision, cudnn autotuning, batches prepared by loader processes) is checked by
# `scripts/gpu_check.py`: it runs the library's own path (phantom, cache, `train_fold`, `segment_scan`) at
# the `paper` profile's resolution for a few hundred steps. The table is its recorded output
# (`benchmarks/gpu_paper.json`), a measurement of speed on synthetic data, not a result of the study. The
# batch for a step is a function of (seed, fold, step) alone, so loader processes change the speed, not
# the batches (a test trains with and without them and compares the weights).

# %%
show_record(ch.gpu_check_table(), "Recorded GPU check of the paper profile (synthetic phantom)",
            record="gpu_paper.json", what="GPU check");

# %% [markdown]
# **What a training step costs.** `scripts/bench_train.py` times one training step of a profile in one
# process: the real step (`sscild.model.train.train_model` itself: patch sampling from the cache,
# augmentation as batched tensor operations on the training device, transfer, forward and backward pass,
# optimiser) against the **pure network step**, the same network, loss and optimiser on ready-made
# tensors of the same shape. Their ratio, the **overhead ratio** (1.0: preparing the data costs nothing),
# is measured side by side on one machine, so it holds on any machine of the kind whatever its speed; the
# phases show where the rest goes (`benchmarks/train_cpu_cpu.json`).

# %%
step, variants = ch.train_step_tables() or (None, None)
if show_record(step, "Recorded training-step benchmark (CPU)", record="train_cpu_cpu.json",
               what="CPU training benchmark") and variants is not None:
    show(variants, caption="Pure network step under other numeric settings (same run)")

# %% [markdown]
# **How the folds share a CPU.** A small 2D network does not keep several cores busy: on a CPU, `make`
# therefore trains the folds side by side, one thread each, as many at once as there are cores
# (`sscild.context`), rather than one after the other on every core. `scripts/bench_folds.py` measures
# both ways in one session on one machine; their ratio is the figure that holds on any machine of the
# kind. One thread per fold also makes a fold's weights independent of the machine's core count:
# floating-point sums split over a different number of threads round differently.

# %%
show_record(ch.fold_parallel_table(), "Recorded fold-parallelism benchmark (CPU)", record="fold_parallel_cpu.json",
            what="fold-parallelism benchmark");

# %% [markdown]
# ## At paper scale: time, memory and disk of every stage
#
# A user's study runs `make all DATA=<cohort> PROFILE=paper` on 40 or more volumetric HRCT scans of
# 512 x 512 pixels and 300-600 slices. `scripts/paper_scale_dry_run.py` runs every stage of that path on
# a synthetic cohort of that size, on a CPU, with a token training budget (`make ... STEPS=N`: pretraining
# and each fold train N steps; everything else is the `paper` profile as it is), and records each stage's
# wall and CPU time, peak memory and disk (`benchmarks/paper_scale_cpu.json`). Times of stages that handle
# each case in turn are extrapolated linearly to 40 patients; the full training budget is extrapolated
# from the measured step time and from the recorded GPU step rate. Measured and extrapolated figures are
# in separate columns; nothing extrapolated was run.

# %%
scale = ch.paper_scale()
if scale is None:
    display(Markdown("No paper-scale dry run is recorded (`benchmarks/paper_scale_cpu.json` is absent)."))
else:
    words, stages, notes, gpu = scale
    display(Markdown(words))
    show(stages, caption="Paper profile at full HRCT size, stage by stage (measured on the CPU named above; "
                         "last column extrapolated)", fold=False, floatfmt=1)
    if notes:
        display(Markdown(notes))
    show(gpu, caption="What a GPU changes at paper scale: the full training budget and the "
                      "out-of-fold prediction of 40 patients (extrapolated, not run)", floatfmt=2)

# %% [markdown]
# ## Cluster jobs
#
# When the folds were trained as a Slurm job array (`make all LAUNCHER=slurm`), each task's job id,
# node, state, exit code and wall time.

# %%
jobs = ch.jobs_table(run)
if jobs is None or jobs.empty:
    display(Markdown("No Slurm job array was used for this run: the folds were trained locally."))
else:
    show(jobs, caption="Slurm tasks of this run")

# %% [markdown]
# ## Input checksums
#
# SHA-256 of every file of the cohort folder (the inputs are never modified by any step).

# %%
sums = ch.input_checksums(data_dir)
show(sums, caption=f"{len(sums)} input files of {info['folder']}")
