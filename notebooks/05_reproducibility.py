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
from sscild.paths import resolve_data_dir
from IPython.display import Markdown, display

from sscild.book.provenance import benchmark_records, environment_table, input_checksums, step_times, run_settings
from sscild.book.report import banner, chapter_context, show
from sscild.cluster.jobs import jobs_table

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %% [markdown]
# ## Code and environment

# %%
show(environment_table(), caption="Code, software and hardware")

# %% [markdown]
# ## Settings and seeds

# %%
show(run_settings(run, prof), caption="Profile settings and seeds of this run")

# %% [markdown]
# ## Wall time of each step
#
# From `runlog.json`, which make's notebook runner appends to (latest run of each step).

# %%
show(step_times(run), caption="Steps: latest execution, and the longest (the run that did the work)")

# %% [markdown]
# ## Recorded benchmarks
#
# Measurements too long for `make all` (cross-validations of alternative recipes, seed repeats, timings,
# the GPU check) are recorded once in `benchmarks/` by a script and read by the chapters that show them.
# Each names the date, the commit and the machine it was measured on where it recorded them; for a record
# that does not, the commit that added it is given instead. Timings depend on the machine: machines of one
# kind differ by up to about twice. Results depend on the arithmetic too: the same seed trains to slightly
# other weights where bfloat16 is native (recent x86 CPUs) than where it is emulated or float32 is used, so
# a record is reproduced exactly only on the same kind of machine.

# %%
show(benchmark_records(), caption="Recorded benchmarks (benchmarks/): what, when, commit, machine, command",
     fold=False)

# %% [markdown]
# ## Cluster jobs
#
# When the folds were trained as a Slurm job array (`make all LAUNCHER=slurm`), each task's job id,
# node, state, exit code and wall time.

# %%
jobs = jobs_table(run)
if jobs is None or jobs.empty:
    display(Markdown("No Slurm job array was used for this run: the folds were trained locally."))
else:
    show(jobs, caption="Slurm tasks of this run")

# %% [markdown]
# ## Input checksums
#
# SHA-256 of every file of the cohort folder (the inputs are never modified by any step).

# %%
sums = input_checksums(data_dir)
show(sums, caption=f"{len(sums)} input files of {info['folder']}")
