"""The Model & training chapter: what its notebook shows, section by section.

The folds are trained by their own notebook (``notebooks/train_fold.py``), where make calls it; this
module only reads what they wrote (``train_summary.json``, ``epochs.csv``, ``history.csv`` of each fold,
``pretrained/`` of the run) and never trains or pretrains.

* :func:`recipe`: the training recipe of the profile and its voxel grid in words.
* :func:`trained_folds`: which folds finished and which did not.
* :func:`training_plateau`, :func:`plateau_words`, :func:`plateau_sections`: whether the training Dice
  levelled off before the budget ended.
* :func:`fold_costs`: what each fold cost.
* :func:`pretraining`: the pretraining on the unlabelled scans, read
  from the run folder, and one restored patch.
* :func:`pretraining_records`: the recorded comparison with and without pretraining.

:func:`learning_curves` is the plots' own, for the notebook.
"""

from __future__ import annotations


import matplotlib.figure
import numpy as np
import pandas as pd

from sscild.analysis.arms import arms_table, read_arms
from sscild.book.plots.data import restoration_plot
from sscild.book.plots.training import learning_curves
from sscild.data.folds import read_splits
from sscild.model.pretrain import finished_pretrained_state, restoration_example
from sscild.model.loading import fold_is_done
from sscild.model.recipe import recipe_table
from sscild.model.selftrain import pretrains, semi_mode, study_consistency, unlabelled_scans
from sscild.book.provenance import read_record
from sscild.paths import RunPaths, read_json, repo_root
from sscild.profiles import Profile

__all__ = ["recipe", "trained_folds", "learning_curves", "training_plateau", "plateau_words", "plateau_sections",
           "fold_costs", "pretraining", "pretraining_records", "consistency_record"]

PRETRAINING_RECORDS = (("study_pretrain_cv.csv", "seed 0"), ("study_pretrain_cv_seed1.csv", "seed 1"))
"""The recorded comparisons without and with pretraining (``benchmarks/``), with the seed each was run with."""


def recipe(prof: Profile) -> tuple[pd.DataFrame, str]:
    """The profile's training recipe (:func:`sscild.model.recipe.recipe_table`) and a sentence on its
    voxel grid: the synthetic scans' spacing, the resampling, and whether that grid is HRCT-like."""
    ps, ts = prof.phantom_spacing, prof.target_spacing
    grid = (f"Grid of profile `{prof.name}`: synthetic scans with {ps[0]:g} × {ps[1]:g} mm pixels and {ps[2]:g} mm "
            f"slices, resampled to " + ", ".join("native" if t is None else f"{t:g} mm" for t in ts) + " (x, y, z). "
            + ("This is not HRCT: thin-section HRCT has sub-millimetre pixels and about 1 mm slices."
               if (ps[2] > 2.0 or ps[0] > 1.0) else "This is an HRCT-like grid."))
    return recipe_table(prof), grid


def trained_folds(run: RunPaths) -> tuple[list[int], list[int]]:
    """The folds of the run's ``splits.json`` whose training finished, and those that did not."""
    folds = list(range(len(read_splits(run.splits))))
    done = [k for k in folds if fold_is_done(run, k)]
    return done, sorted(set(folds) - set(done))


def training_plateau(run, folds, *, last_fraction: float = 0.2, column: str = "train_dice_ef",
                     min_points: int = 4) -> pd.DataFrame:
    """Is training still improving when the budget ends? One row per fold from its ``epochs.csv``.

    For each fold, ``column`` (training-batch Dice of a class, logged once per epoch) is regressed
    on the step over the last ``last_fraction`` of the steps, widened to the last ``min_points``
    logged epochs when that window holds fewer (:func:`scipy.stats.linregress`); the slope is given
    per 1000 steps with its 95 % t interval, and the gain over the window as a share of the whole
    run's gain. A slope whose interval lies above 0 means the curve was still rising: the budget
    stopped training before a plateau.

    Args:
        run: the run's paths (``run.fold_dir(k)``).
        folds: fold numbers with a finished training.
        last_fraction: share of the last steps the slope is fitted on, in (0, 1].
        column: the ``epochs.csv`` column (``train_dice_ef``, ``train_dice_ggo``, ``train_loss``).

    Returns:
        Columns ``fold, steps, window from step, last value, slope per 1000 steps, slope 95% CI low,
        slope 95% CI high, gain in window, % of total gain, still rising`` (empty if no fold has an
        ``epochs.csv`` with three logged epochs).
    """
    from scipy import stats as sps

    if not (0.0 < float(last_fraction) <= 1.0):
        raise ValueError(f"last_fraction must lie in (0, 1], got {last_fraction!r}")
    rows = []
    for k in folds:
        path = run.fold_dir(k) / "epochs.csv"
        if not path.exists():
            continue
        e = pd.read_csv(path)
        if column not in e.columns:
            raise ValueError(f"{path} has no column {column!r}; columns: {list(e.columns)}")
        e = e.sort_values("step")
        last = int(e["step"].max())
        w = e[e["step"] >= last * (1.0 - last_fraction)]
        if len(w) < min_points:
            w = e.tail(min_points)
        if len(w) < 3:
            continue
        fit = sps.linregress(w["step"].to_numpy(float), w[column].to_numpy(float))
        t = sps.t.ppf(0.975, len(w) - 2)
        lo, hi = 1000 * (fit.slope - t * fit.stderr), 1000 * (fit.slope + t * fit.stderr)
        y = e[column].to_numpy(float)
        total_gain = float(y.max() - y[0])
        window_gain = float(w[column].iloc[-1] - w[column].iloc[0])
        rows.append({"fold": int(k), "steps": last, "window from step": int(w["step"].iloc[0]),
                     "last value": float(y[-1]), "slope per 1000 steps": 1000 * fit.slope,
                     "slope 95% CI low": lo, "slope 95% CI high": hi,
                     "gain in window, % of total gain": 100.0 * window_gain / total_gain if total_gain > 0 else float("nan"),
                     "still rising": bool(lo > 0)})
    cols = ["fold", "steps", "window from step", "last value", "slope per 1000 steps", "slope 95% CI low",
            "slope 95% CI high", "gain in window, % of total gain", "still rising"]
    return pd.DataFrame(rows, columns=cols).set_index("fold")


def plateau_words(table, *, what: str = "EF training Dice", last_fraction: float = 0.2) -> str:
    """One computed paragraph on :func:`training_plateau`'s table.

    Each fold's slope alone is noisy, so the folds are also judged together: when (nearly) all slopes are
    positive, a two-sided sign test across folds says whether that is more than chance. Training is called
    still rising when the folds together are (sign test p < 0.05) or any fold's slope interval lies above 0.
    """
    from scipy.stats import binomtest

    if table is None or table.empty:
        return f"No fold has enough logged epochs to judge whether the {what} levelled off."
    n, rising = len(table), int(table["still rising"].sum())
    slopes = table["slope per 1000 steps"].to_numpy(float)
    positive = int((slopes > 0).sum())
    sign_p = float(binomtest(positive, n, 0.5).pvalue) if n else float("nan")
    med = float(np.median(slopes))
    last = float(table["last value"].median())
    share = float(table["gain in window, % of total gain"].median())
    head = (f"Over the last {last_fraction:.0%} of the steps (at least the last four logged epochs) the {what} "
            f"changed by a median {med:+.3f} per 1000 steps, {share:.0f} % of the run's whole gain (last value, "
            f"median over folds: {last:.2f}). The slope was positive in {positive} of {n} folds (sign test across "
            f"folds p = {sign_p:.3f}); {rising} of {n} had a slope interval above 0 on its own. ")
    if rising == 0 and not sign_p < 0.05:
        return head + ("The curves cannot be told from a plateau: more steps would probably not raise this run's "
                       "Dice much.")
    return head + ("**Training was still improving when its budget ended**: this run's Dice understates what the "
                   "recipe reaches with more steps.")


def plateau_sections(run: RunPaths, folds) -> list[tuple[str, pd.DataFrame, str]]:
    """The plateau check of the EF and of the GGO training Dice: for each, the table's caption, the
    table (:func:`training_plateau`) and its paragraph (:func:`plateau_words`)."""
    out = []
    for col, what in (("train_dice_ef", "EF training Dice"), ("train_dice_ggo", "GGO training Dice")):
        pt = training_plateau(run, folds, column=col)
        out.append((f"{what}: slope over the last 20 % of steps", pt, plateau_words(pt, what=what)))
    return out


def fold_costs(run: RunPaths, folds) -> tuple[pd.DataFrame, int | None]:
    """What each finished fold cost, from its ``train_summary.json`` (patients, steps, seconds, device,
    numerics), and the network's parameter count (``None`` without a fold)."""
    rows, params = [], None
    for k in folds:
        s = read_json(run.fold_dir(k) / "train_summary.json")
        rows.append({"fold": k, "training patients": len(s["train_cases"]), "held-out patients": len(s["test_cases"]),
                     "steps": s["steps"], "seconds": s["seconds"], "steps/s": s["steps_per_s"],
                     "final loss": s["final_loss"], "device": s["device"],
                     "numerics": (s.get("numerics") or {}).get("dtype", "float16" if s["amp"] else "float32")})
        params = s["parameters"]
    return pd.DataFrame(rows).set_index("fold"), params


def pretraining(run: RunPaths, prof: Profile, done) -> tuple[str, matplotlib.figure.Figure | None]:
    """What the unlabelled scans were used for, in words, and, when the folds started from a finished
    pretraining, its cost and restoration error and a figure of one restored patch
    (:func:`sscild.model.pretrain.restoration_example`); otherwise the figure is ``None``."""
    unlabelled = unlabelled_scans(run)
    mode = semi_mode(prof)
    if not unlabelled:
        return "This cohort has no unlabelled scans: every fold started from a random initialisation.", None
    lead = ""
    if mode == "consistency":
        lead = (f"{len(unlabelled)} unlabelled scans; the profile's `semi_supervised` is `consistency`: every "
                f"training step also took {study_consistency(prof).per_batch} unlabelled patches, on which the fold "
                "learned to agree with a mean teacher (Model & training recipe above). ")
        if not pretrains(prof):
            return lead + "The folds started from a random initialisation (`pretrain_steps` 0).", None
    elif mode != "pretrain":
        return (f"{len(unlabelled)} unlabelled scans; the profile's `semi_supervised` is `{mode}`, so they were "
                + ("pseudo-labelled by each fold's teacher." if mode == "self-training" else "not used.")), None
    if not done:
        return "No fold is trained yet, so the pretraining has not run (run `make train`).", None
    found = finished_pretrained_state(run, prof, unlabelled)
    if found is None:
        return ("The folds are trained, but `pretrained/` of the run folder holds no finished pretraining of these "
                "unlabelled scans with this profile's settings (missing, or made from other scans or settings); "
                "this page never pretrains (run `make train`)."), None
    state, pre = found
    words = lead + (f"{len(unlabelled)} unlabelled scans: pretraining of {pre['steps']} iterations (batch {prof.batch_size}, "
             f"patch {list(prof.patch_size)}) took {pre['seconds']:.0f} s; the restoration error (L1 on the [-1, 1] "
             f"scale) went from {pre['first_l1']:.3f} (first 50 iterations) to {pre['last_l1']:.3f} (last 50).")
    example = restoration_example(state, prof, unlabelled[sorted(unlabelled)[0]], seed=prof.seed)
    return words, restoration_plot(example, l1_first=pre["first_l1"], l1_last=pre["last_l1"])


def pretraining_records(prof: Profile) -> list[tuple[str, str, pd.DataFrame | None]]:
    """The recorded cross-validations without and with pretraining (:data:`PRETRAINING_RECORDS`): for each,
    the record's name, its seed in words and :func:`sscild.analysis.arms.arms_table` (``None`` when the
    record is not in this checkout)."""
    out = []
    for name, seed_words in PRETRAINING_RECORDS:
        path = repo_root() / "benchmarks" / name
        out.append((name, seed_words, arms_table(read_arms(path), seed=prof.seed) if path.exists() else None))
    return out


def consistency_record(prof: Profile) -> tuple[pd.DataFrame, str] | None:
    """The recorded comparison of consistency learning with the default recipe on the built-in cohort
    (``benchmarks/study_consistency_cv.csv``, its run in ``study_consistency_cv.json``): the arms table
    (:func:`sscild.analysis.arms.arms_table`) and a sentence on how it was made; ``None`` when absent."""
    path = repo_root() / "benchmarks" / "study_consistency_cv.csv"
    rec = read_record("study_consistency_cv.json")
    if not path.exists() or rec is None:
        return None
    table = arms_table(read_arms(path), seed=prof.seed)
    return table, (f"Folds {', '.join(str(k) for k in rec['folds'])} of the default run retrained with "
                   f"`semi_supervised = \"consistency\"` from the same pretrained weights, seed and splits, "
                   f"their held-out patients scored on the network's grid. Measured on {rec['machine']} at commit "
                   f"{rec['commit']}: {rec['train_seconds_consistency']:.0f} s of training for the "
                   f"{len(rec['folds'])} folds side by side, against {rec['train_seconds_base']:.0f} s for the "
                   f"same folds of the default run. {rec['adopted']}")

