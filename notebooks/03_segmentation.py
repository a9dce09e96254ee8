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
# prediction), and scored against its reference labels in its original voxel grid.

# %% tags=["parameters"]
profile = "cpu"
data_dir = None

# %%
import pandas as pd
from IPython.display import Markdown, display

from sscild.cohort import load_cohort
from sscild.evaluate import evaluate_oof, summary_dict
from sscild.paper import PAPER
from sscild.paths import resolve_data_dir, write_json
from sscild.predict import predict_oof
from sscild.report import banner, chapter_context, glue, show

data_dir = resolve_data_dir(data_dir, profile)
run, prof, info = chapter_context(data_dir, profile)
banner(data_dir, profile)
cohort = load_cohort(data_dir)

# %%
paths = predict_oof(run, progress=False)
df = evaluate_oof(run, cohort, progress=False)
summary = summary_dict(df, info["name"], info["synthetic"], profile)
write_json(run.segmentation_summary, summary)
display(Markdown(f"{len(paths)} out-of-fold predictions scored."))

# %% [markdown]
# ## This run and the paper

# %%
m = summary["metrics"]
rows = []
for key, label in [("lesion", "total lesion (EF ∪ GGO)"), ("ef", "EF"), ("ggo", "GGO")]:
    rows.append({"Dice": label, f"this run ({info['folder']})": m[f"dice_{key}"]["mean"],
                 "HU baseline": m.get(f"baseline_dice_{key}", {}).get("mean"),
                 "paper (SICCS)": PAPER["dice"]["total_lesion" if key == "lesion" else key]})
show(pd.DataFrame(rows).set_index("Dice"), caption="Mean Dice over out-of-fold cases")
for key in ("lesion", "ef", "ggo"):
    glue(f"dice_{key}", m[f"dice_{key}"]["mean"], display=False)
