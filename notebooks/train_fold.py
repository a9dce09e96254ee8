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
# # Training one fold
#
# Make runs this notebook once per fold of the cross-validation (`make fold-K`, `make train`, a Slurm
# task), with `fold = K`; the executed copy is kept beside the fold's checkpoints
# (`<results>/<cohort>/<profile>/fold_K/training.ipynb`). It trains the fold (or resumes it from its
# last checkpoint, or finds it finished) and says what it did. It is not a chapter: the Model & training
# chapter reads what the folds wrote, so changing a chapter's figure never retrains a fold.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None
fold = 0

# %%
from IPython.display import Markdown, display

from sscild.book.report import banner, chapter_context
from sscild.model.train import train_fold
from sscild.paths import resolve_data_dir

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)

# %%
summary = train_fold(run, prof, int(fold))
display(Markdown(f"Fold {fold}: {summary['steps']} steps in {summary['seconds']:.0f} s "
                 f"({summary['steps_per_s']:.2f} steps/s) on {summary['device']}; "
                 f"{len(summary['train_cases'])} training and {len(summary['test_cases'])} held-out patients; "
                 f"files in `{run.fold_dir(int(fold))}`."))
