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
# # The trained models on real CT
#
# `sscild segment` offers this run's fold ensemble for new, real scans. When the run's cohort is the
# synthetic one, the networks have never seen a real chest, so before anyone reads a lesion volume
# off a real scan the study checks the most basic thing: **does the network find the lungs?**
#
# Real scans without labels are enough for that. Their lungs are found without any training by a
# classical rule (`sscild.data.lungmask.lung_mask_by_threshold`: below -400 HU inside the body, trachea and
# main bronchi removed, the one or two largest components, holes filled), and the network's lung field
# (every non-background label of the ensemble, after the usual post-processing) is compared with it.
# A lung Dice below about 0.95 means lung left out (emphysema and bullae look like outside air to a
# network that learned "lung is about -850 HU") or non-lung called lung (the scanner table's foam
# mattress, an air-filled oesophagus). The scans checked here are not SSc patients, so every voxel
# the network calls established fibrosis (EF) or ground glass (GGO) is, until a reader says
# otherwise, a false positive: the **lesion share** is reported for that reason.
#
# This is a check of the lung field, not of lesion segmentation; the external check (previous
# appendix) is the one with real lesion labels.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None  # the run's cohort (selects results/<cohort>/<profile>); None: the synthetic cohort
real_ct_dir = None  # a folder of real chest CT volumes (.nrrd, .nii.gz, .mha); None: ../shared/data/real-ct

# %%
import time
from pathlib import Path

from IPython.display import Markdown, display

from sscild.book import plots
from sscild.paths import RunPaths, repo_root, resolve_data_dir
from sscild.book.plots.realct import lung_check_overlays
from sscild.book.provenance import read_record
from sscild.analysis.realcheck import list_volumes, real_lung_check
from sscild.book.report import figure, show

plots.style()
t0 = time.perf_counter()
data_dir = resolve_data_dir(data_dir, profile)
run = RunPaths.for_run(data_dir, profile)
if real_ct_dir in (None, ""):
    default = repo_root().parent / "shared" / "data" / "real-ct"
    real_ct_dir = default if default.is_dir() else None
scans = list_volumes(real_ct_dir) if real_ct_dir is not None and Path(real_ct_dir).is_dir() else []
if not scans:
    display(Markdown(
        ":::{note}\n**No real CT volumes were given to this build**, so the check did not run here. "
        "Run it with `make all REAL_CT=/path/to/folder` (a folder of chest CT volumes in HU: .nrrd, "
        ".nii.gz or .mha). The recorded result below comes from `scripts/check_real_ct.py`.\n:::"))
else:
    display(Markdown(f":::{{note}}\nModels: the {run.profile!r} run of cohort `{run.cohort}`. "
                     f"Real scans: {len(scans)} volume(s) from `{Path(real_ct_dir).name}`.\n:::"))

# %% [markdown]
# ## Lung field and lesion share, scan by scan
#
# `lung_dice`: network lung against the classical lung. `missed_ml` is lung the network left out
# (with its mean attenuation: values near -950 HU and below point to emphysema), `extra_ml` is what it
# called lung outside the classical mask. `classical_low_attenuation_pct` is the share of the
# classical lung below -950 HU (the usual emphysema index), so a reader can see how much
# emphysema each scan holds.

# %%
if scans:
    table, views = real_lung_check(scans, run.root)
    show(table.drop(columns=["shape"]), "Real-CT lung check")

# %% [markdown]
# ## What the network draws
#
# Three levels of each scan (a quarter, half and four fifths up its classical lung): the raw slice,
# then the network's labels as translucent fills with the classical lung outlined in white. Look for
# lung left unfilled inside the white outline (emphysema, dense bases), fill outside it (table,
# oesophagus, airways), and EF or GGO on lungs that are not diseased.

# %%
if scans:
    figure(lung_check_overlays(views, table), "real_ct_lung_check", run.figures, caption=(
        f"Three levels of each real scan ({plots.window_text()}): the raw slice, then the network's labels as "
        "translucent fills with the classical lung outlined in white. Look for lung left unfilled inside the white "
        "outline, fill outside it, and EF or GGO drawn on lungs that are not diseased."))

# %% [markdown]
# ## The recorded check
#
# The result recorded with the repository (`benchmarks/real_lung_cpu.json`, made by
# `python scripts/check_real_ct.py --models results/synthetic-cpu/cpu` after the default `make all`),
# for readers of a build that had no real scans.

# %%
rec = read_record("real_lung_cpu.json")
if rec is None:
    display(Markdown("No recorded check is in `benchmarks/`."))
else:
    import pandas as pd

    display(Markdown(f"Recorded {rec['date']} with `{rec['command']}` ({rec['models']}):"))
    show(pd.DataFrame(rec["scans"]).drop(columns=["shape"], errors="ignore"), "Recorded real-CT lung check")
print(f"chapter time {time.perf_counter() - t0:.1f} s")
