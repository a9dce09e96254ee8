"""The appendix "External check on real CT" (A1): what its notebook shows, section by section.

The check itself is :mod:`sscild.external`: it reads the COVID-SemiSeg slice folders, trains the study's
recipe on them and scores it (``summary.json``, ``cv/scores*.csv``, ``cv/predictions/``). This module
sets the check up from the notebook's parameters, reads what the check wrote, and hands the page its tables, figures and
sentences, from the run's files and from the recorded benchmarks (``benchmarks/external_*``).

* :class:`ExternalCheck`, :func:`setup`, :func:`data_note`: the parameters resolved, the slices read,
  what the run uses.
* :func:`recipe_table`: the recipe as plain values.
* :func:`recipe_search`: the first recipe screen (``benchmarks/external_recipe_search.json``).
* :func:`read_check`: what the external check wrote (``make external`` runs
  :func:`sscild.external.runs.run_external` first; this page never trains).
* :func:`cv_words`, :func:`lesion_union`: the cross-validated Dice in words; GGO and consolidation as
  one lesion class.
* :func:`selftrain_cv`, :func:`selftrain_words`: the recorded five-fold self-training comparison.
* :func:`consistency_record`, :func:`consistency_words`: the fourth screen (consistency learning).
* :func:`budget_record`, :func:`budget_words`: the fifth screen (a longer CPU budget) and the ``long``
  profile it chose.
* :func:`stage_comparison`: the two training stages of the run side by side.
* :func:`gpu_caption`, :func:`gpu_words`: the recorded GPU run of the ``paper`` external profile.
* :func:`example_figure`, :func:`distribution_figure`: out-of-fold predictions, Dice per slice.
* :func:`scored_test_part`: the test part's Dice, examples and sentence.
* :func:`fold_table`, :func:`cost`: what the run cost.
* :func:`profile_runs`, :func:`profile_comparison`: the runs of the other external profiles on the same
  folders (``make external EXTERNAL_PROFILE=long``), set beside this one.

The other names are the external check's own, for the notebook: :func:`describe_slices`,
:func:`results_table`, :func:`lesion_table`, :func:`semi_screen`, :func:`lever_screen`, :func:`recorded_gpu_run`, :data:`CLASS_NAMES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.book.plots import style
from sscild.book.plots.external import dice_distribution, example_slices, pick_examples
from sscild.evaluation.overlap import dice
from sscild.external.predict import read_predictions
from sscild.external.recipe import EXTERNAL_PROFILES, check_extra, external_profile, recipe_dict, run_folder
from sscild.external.screens import (budget_screen, consistency_screen, lever_screen, paired_gain, screen_table,
                                     semi_screen)
from sscild.external.slices import (CLASS_NAMES, HOW_TO_GET_DATA, SliceImage, default_train_dir,
                                    default_unlabelled_dir, read_slice_folder)
from sscild.external.tables import (PUBLISHED, compare_to_published, describe_slices, lesion_table, recorded_gpu_run,
                                    results_table, semi_supervised_table)
from sscild.paths import read_json, repo_root, results_root
from sscild.profiles import Profile

__all__ = [
    "ExternalCheck",
    "setup",
    "data_note",
    "recipe_table",
    "recipe_search",
    "read_check",
    "cv_words",
    "lesion_union",
    "lesion_table",
    "selftrain_cv",
    "selftrain_words",
    "consistency_record",
    "consistency_words",
    "budget_record",
    "budget_words",
    "stage_comparison",
    "gpu_caption",
    "gpu_words",
    "example_figure",
    "distribution_figure",
    "scored_test_part",
    "fold_table",
    "cost",
    "profile_runs",
    "profile_comparison",
    "recorded_profile_runs",
    "recorded_profile_words",
    "SELFTRAIN_CV_COMMAND",
    # the external check's own names, for the notebook
    "CLASS_NAMES",
    "describe_slices",
    "results_table",
    "semi_screen",
    "lever_screen",
    "consistency_screen",
    "recorded_gpu_run",
]

SELFTRAIN_CV_COMMAND = (
    "the fold teachers of a finished run of the cpu recipe (results/external/cv/fold_<k>/teacher) copied into OUT; "
    "then cross_validate(train, OUT, external_profile('cpu', semi='self-training'), unlabelled=...) with "
    "SSCILD_THREADS=1, and python scripts/record_screen.py benchmarks/external_selftrain_cv.csv --folds 0,1,2,3,4 "
    "with the teachers' scores, the run's cv/scores.csv (control) and OUT's scores"
)
"""How the five-fold self-training comparison (``benchmarks/external_selftrain_cv.csv``) was made: the
same teachers, two second stages (the record's words: its former setting ``semi`` reads as
``semi_supervised``, :data:`sscild.external.recipe.RENAMED_SEMI`)."""


@dataclass
class ExternalCheck:
    """The appendix's run: its profile and settings, its folders, the labelled slices read (``train``
    is ``None`` when the training folder is absent)."""

    prof: Profile
    settings: dict
    train_dir: str | Path | None
    test_dir: Path | None
    unlabelled_dir: Path | None
    out_dir: Path
    self_training: bool
    use_unlabelled: bool
    train: dict[str, SliceImage] | None = None
    test: dict[str, SliceImage] | None = None

    @property
    def available(self) -> bool:
        """Whether the training folder was found (the check runs)."""
        return self.train is not None

    @property
    def fig_dir(self) -> Path:
        return self.out_dir / "figures"


def setup(profile: str, *, train_dir=None, test_dir=None, unlabelled_dir=None, out_dir=None) -> ExternalCheck:
    """The notebook's parameters resolved: the external profile, the folders (defaults beside the
    checkout; ``unlabelled_dir="none"``: without), whether the unlabelled slices are used (the profile
    pretrains on them or self-trains with them), and the labelled slices read when present."""
    style()
    prof = external_profile(profile)
    if train_dir in (None, ""):
        train_dir = default_train_dir()
    test_dir = None if test_dir in (None, "") else Path(test_dir)
    if unlabelled_dir is None:
        unlabelled_dir = default_unlabelled_dir()
    unlabelled_dir = None if str(unlabelled_dir).lower() in ("", "none") else Path(unlabelled_dir)
    ex = check_extra(prof)
    self_training = ex["semi_supervised"] == "self-training" and unlabelled_dir is not None
    use_unlabelled = (self_training or ex["pretrain_steps"] > 0) and unlabelled_dir is not None
    out_dir = Path(run_folder(prof, results_root()) if out_dir in (None, "") else out_dir)
    chk = ExternalCheck(prof=prof, settings=ex, train_dir=train_dir, test_dir=test_dir, unlabelled_dir=unlabelled_dir,
                        out_dir=out_dir, self_training=self_training, use_unlabelled=use_unlabelled)
    if train_dir is not None and (Path(train_dir) / "images").is_dir():
        chk.train_dir = Path(train_dir)
        chk.train = read_slice_folder(chk.train_dir, what="training folder")
        chk.test = read_slice_folder(test_dir, what="test folder") if test_dir is not None else None
    return chk


def data_note(chk: ExternalCheck) -> str:
    """The note at the top of the page: the slices and the profile of this run, or how to get the data."""
    if not chk.available:
        return (":::{note}\n**Not run: the training folder is absent**"
                + (f" (`{chk.train_dir}` has no `images/`)" if chk.train_dir is not None else "")
                + ".\n\n" + HOW_TO_GET_DATA + "\n:::")
    pre = chk.settings["pretrain_steps"]
    unl = chk.unlabelled_dir
    return (f":::{{note}}\nReal CT: **{len(chk.train)} labelled training slices** from `{chk.train_dir.name}`"
            + (f" and **{len(chk.test)} test slices** from `{chk.test_dir.name}`" if chk.test else
               "; no test folder was given, so the results are cross-validated only")
            + (f"; **{len(list((unl / 'images').iterdir()))} files of unlabelled slices** from `{unl.name}` for "
               + " and ".join((["pretraining"] if pre else []) + (["self-training"] if chk.self_training else []))
               if chk.use_unlabelled else
               "; no unlabelled slices are used (labelled slices only" + (", so no pretraining" if pre else "") + ")")
            + f". Profile `{chk.prof.name}`.\n:::")


def recipe_table(chk: ExternalCheck) -> pd.DataFrame:
    """The recipe of the run as plain values (:func:`sscild.external.recipe.recipe_dict`), one row each."""
    rec = recipe_dict(chk.prof, threads=int(os.environ.get("SSCILD_THREADS") or 0) or os.cpu_count())
    return pd.DataFrame({"value": {k: str(v) for k, v in rec.items()}})


def recipe_search(path: str | Path | None = None) -> pd.DataFrame | None:
    """The first recipe screen (``benchmarks/external_recipe_search.json``): one row per variant, its
    fold-0 Dice (per-slice mean and pooled) and training CPU seconds; ``None`` when the record is absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_recipe_search.json"
    if not path.exists():
        return None
    return pd.DataFrame(read_json(path)["variants"]).set_index("variant")


def read_check(chk: ExternalCheck, out_dir: str | Path | None = None, prof: Profile | None = None) -> dict:
    """The external check's ``summary.json`` in ``chk.out_dir``, which ``make external`` wrote
    (``python -m sscild.external run``) for these folders and this profile; the page never trains.
    ``out_dir`` and ``prof``: another profile's run, which must have read the same folders."""
    path = Path(out_dir if out_dir is not None else chk.out_dir) / "summary.json"
    prof = prof if prof is not None else chk.prof
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the external check has not run for this folder (`make external`, "
                                "or `python -m sscild.external run TRAIN_DIR OUT_DIR --profile P`).")
    summary = read_json(path)
    data, want = summary.get("data") or {}, {
        "train_dir": str(Path(chk.train_dir).resolve()),
        "test_dir": str(Path(chk.test_dir).resolve()) if chk.test_dir is not None else None,
        "unlabelled_dir": str(Path(chk.unlabelled_dir).resolve()) if chk.use_unlabelled else None}
    other = {k: (data.get(k), v) for k, v in want.items() if data.get(k) != v}
    if summary.get("recipe", {}).get("profile") not in (None, prof.name):
        other["profile"] = (summary["recipe"]["profile"], prof.name)
    if other:
        raise ValueError(f"{path} is the check of other settings than this page's ({other}: recorded, asked); "
                         "run `make external` with these settings.")
    return summary


def cv_words(summary: Mapping) -> str:
    """The cross-validated Dice in words, set against the best published rows."""
    cv = summary["cv"]
    return (f"Cross-validated Dice, mean over slices: **GGO {cv['dice_ggo']:.3f}** "
            f"({cv['n_ggo']} slices with GGO), **consolidation {cv['dice_consolidation']:.3f}** "
            f"({cv['n_consolidation']} slices with consolidation; {cv['n_excluded_consolidation']} without it "
            f"are left out of that mean). Pooled over slices: GGO {cv['pooled_dice_ggo']:.3f}, consolidation "
            f"{cv['pooled_dice_consolidation']:.3f}. " + compare_to_published(cv))


def lesion_union(chk: ExternalCheck, summary: Mapping) -> tuple[float, str]:
    """The out-of-fold masks scored as one lesion class (GGO or consolidation): the mean Dice over the
    slices with a lesion, and the sentence setting it beside the two classes apart."""
    cv = summary["cv"]
    masks = read_predictions(chk.out_dir / "cv" / "predictions", chk.train)
    union = [dice(masks[s] > 0, chk.train[s].label > 0) for s in chk.train if (chk.train[s].label > 0).any()]
    mean = float(np.mean(union))
    return mean, (
        f"The same out-of-fold masks scored as one lesion class (GGO or consolidation): mean Dice "
        f"**{np.mean(union):.3f}** over {len(union)} slices, against {cv['dice_ggo']:.3f} and "
        f"{cv['dice_consolidation']:.3f} for the two classes apart: much of what the classes lose is the border "
        "between them.")


def selftrain_cv(path: str | Path | None = None) -> pd.DataFrame | None:
    """The recorded five-fold comparison of self-training and its control
    (``benchmarks/external_selftrain_cv.csv``) as a screen table; ``None`` when the record is absent."""
    return semi_screen(path if path is not None else repo_root() / "benchmarks" / "external_selftrain_cv.csv")


def selftrain_words(st_cv: pd.DataFrame) -> str:
    """What the unlabelled slices gained over the control in the five-fold record, and how it was made."""
    st_row = st_cv.loc[[v for v in st_cv.index if v.startswith("self-training")][0]]
    st_gain = {label: st_row[f"gain from the unlabelled slices (vs control), {label} [95% CI]"]
               for label in ("GGO", "consolidation")}
    worse = all(g.startswith("-") for g in st_gain.values())
    return ("Gain from the unlabelled slices over the control that spends the same steps on the labelled slices "
            f"alone: GGO {st_gain['GGO']}, consolidation {st_gain['consolidation']} (paired, 50 slices). "
            + ("Self-training is **worse** than the control for both classes: the teacher's confident pseudo-labels "
               "are mostly background and carry its own mistakes into the student. " if worse else "")
            + "Self-training stays off in the `cpu` recipe; it remains a profile setting of the study "
            "(`semi_supervised = \"self-training\"`), whose default for unlabelled scans is pretraining. "
            "How the record was made: " + SELFTRAIN_CV_COMMAND + ".")


def consistency_record(path: str | Path | None = None) -> tuple[pd.DataFrame, dict] | None:
    """The fourth screen (consistency learning against its control, folds 0-2): its table
    (:func:`sscild.external.screens.consistency_screen`) and its record
    (``benchmarks/external_consistency_screen.json``: settings, wall times, what was adopted and why);
    ``None`` when either is absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_consistency_screen.json"
    table = consistency_screen(path.with_suffix(".csv"))
    if table is None or not path.exists():
        return None
    return table, read_json(path)


def consistency_words(table: pd.DataFrame, rec: Mapping) -> str:
    """The fourth screen in words: the paired gains, the cost and what was adopted, from the record."""
    row = table.loc[[v for v in table.index if v.startswith("consistency")][0]]
    gain = {label: row[f"gain over its control, {label} [95% CI]"] for label in ("GGO", "consolidation")}
    wall = rec["wall_seconds"]
    ctrl = wall["second stage per fold, control"][-1]
    cons = wall["second stage per fold, consistency learning"][-1]
    return (f"Gain of consistency learning over its control (paired, {rec['held_out_slices']} slices): GGO "
            f"{gain['GGO']}, consolidation {gain['consolidation']}. Its second stage took {cons / ctrl:.1f} times "
            f"as long ({cons:.0f} s against {ctrl:.0f} s for fold 2, each trained alone on one thread of "
            f"{rec['machine'].split(',')[0]}); the teacher gave a confident label to "
            f"{100 * float(np.mean(rec['teacher_labelled_share'])):.0f} % of the unlabelled pixels. "
            f"{rec['adopted']}.")


def budget_record(path: str | Path | None = None) -> tuple[pd.DataFrame, dict] | None:
    """The fifth screen (resolution, width and steps for a longer CPU budget, folds 0-2): its table
    (:func:`sscild.external.screens.budget_screen`) and its record (``benchmarks/external_budget_screen.json``:
    each variant's training time, what the ``long`` profile adopted and why); ``None`` when either is absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_budget_screen.json"
    table = budget_screen(path.with_suffix(".csv"))
    if table is None or not path.exists():
        return None
    return table, read_json(path)


def budget_words(table: pd.DataFrame, rec: Mapping, *, lever_t: pd.DataFrame | None = None) -> str:
    """The fifth screen in words, from its table and record (:func:`budget_record`): each lever's paired
    gain over the control and its cost (``relative_cost``: training time per fold against the control's),
    the steps lever from the third screen's table ``lever_t`` (:func:`lever_screen`; against that screen's
    own control), how far the control trained again lies from the third screen's (the run-to-run noise of
    a lever's estimate, from both tables' per-slice scores), and what was adopted. Without ``lever_t``
    the steps lever and the noise are left out."""
    ctrl = rec["control"]
    parts = []
    for name, v in rec["variants"].items():
        if name == ctrl:
            continue
        row = table.loc[name]
        gain = {label: row[f"gain over the control, {label} [95% CI]"] for label in ("GGO", "consolidation")}
        parts.append(f"{v['lever']} ({name}): GGO {gain['GGO']}, consolidation {gain['consolidation']}, "
                     f"{v['relative_cost']:.1f} times the control's training time")
    steps = rec.get("steps_from_third_screen")
    if steps and lever_t is not None and steps["variant"] in lever_t.index:
        row = lever_t.loc[steps["variant"]]
        parts.append(f"steps ({steps['variant']}, the third screen's row against its own control): GGO "
                     f"{row['gain over the first row, GGO [95% CI]']}, consolidation "
                     f"{row['gain over the first row, consolidation [95% CI]']}, {steps['relative_cost']:.1f} times "
                     "the training time")
    noise = ""
    if lever_t is not None:
        old = lever_t.attrs["scores"]
        old = old[old["variant"] == ctrl].set_index("slice_id")
        new = table.attrs["scores"]
        new = new[new["variant"] == ctrl].set_index("slice_id")
        if len(old) and sorted(old.index) == sorted(new.index):
            d = new.loc[old.index, "dice_ggo"] - old["dice_ggo"]
            noise = (f" The control trained again (another day, another machine) does not repeat the third "
                     f"screen's control slice for slice: per slice its GGO Dice differs by up to {d.abs().max():.3f}, "
                     f"on average by {d.mean():+.3f}, so differences of that size between levers are noise.")
    return (f"Paired gains over the control ({rec['held_out_slices']} slices): " + "; ".join(parts) + ". "
            f"{rec['cost_note']}{noise} **{rec['adopted']}**: {rec['why'].rstrip('.')}.")


def stage_comparison(chk: ExternalCheck, summary: Mapping) -> tuple[pd.DataFrame, dict, str]:
    """The run's two training stages on the same out-of-fold slices: their table (mean [95 % CI]), the
    paired gain per class and the sentence. The second stage is labelled-only unless the run self-trained."""
    self_trained = chk.settings["semi_supervised"] == "self-training" and bool(summary["data"]["n_unlabelled"])
    sup_scores = pd.read_csv(chk.out_dir / "cv" / "scores_supervised.csv", dtype={"slice_id": str})
    cv_scores = pd.read_csv(chk.out_dir / "cv" / "scores.csv", dtype={"slice_id": str})
    names = (("supervised (fold teachers, labelled slices only)", "semi-supervised (self-trained fold students)")
             if self_trained else
             ("first stage: supervised recipe", "second stage: more steps, labelled slices only"))
    stage_t = semi_supervised_table(cv_scores, sup_scores, seed=chk.prof.seed, names=names)
    gain = stage_t.attrs["gain"]
    words = (f"The second stage changes cross-validated Dice by {gain['ggo']['mean']:+.3f} "
             f"[{gain['ggo']['ci'][0]:+.3f}, {gain['ggo']['ci'][1]:+.3f}] for GGO and "
             f"{gain['consolidation']['mean']:+.3f} [{gain['consolidation']['ci'][0]:+.3f}, "
             f"{gain['consolidation']['ci'][1]:+.3f}] for consolidation (paired, same slices)."
             + (f" Self-training used {summary['data']['n_unlabelled']} unlabelled slices." if self_trained else ""))
    return stage_t, gain, words


def gpu_caption(gpu_cv: pd.DataFrame) -> str:
    """The caption of the recorded GPU run's table: when, where and with which settings."""
    meta = gpu_cv.attrs["meta"]
    return (f"Recorded {meta['date']} on {meta['device']}: profile `{meta['profile']}`, "
            f"{meta['iterations']} iterations x batch {meta['batch']}, grid {meta['grid']}, "
            f"{meta['res_units']} residual units, TTA {meta['tta']}")


def gpu_words(gpu_cv: pd.DataFrame, chk: ExternalCheck, summary: Mapping) -> str:
    """The recorded GPU run's Dice beside this run's and the best published rows."""
    meta, g, here = gpu_cv.attrs["meta"], gpu_cv.attrs["cv"], summary["cv"]
    views = meta["iterations"] * meta["batch"] / (chk.prof.iterations * chk.prof.batch_size)
    return (f"With {views:.1f} times the training slices seen by a wider network, cross-validated Dice moves "
            f"from {here['dice_ggo']:.3f} to {g['dice_ggo']:.3f} for GGO and from "
            f"{here['dice_consolidation']:.3f} to {g['dice_consolidation']:.3f} for consolidation (mean over "
            "slices), against the best published test-part row of "
            f"{PUBLISHED['dice_ggo'].max():.3f} / {PUBLISHED['dice_consolidation'].max():.3f}.")


def _scores(chk: ExternalCheck, part: str) -> pd.DataFrame:
    return pd.read_csv(chk.out_dir / part / "scores.csv", dtype={"slice_id": str})


def example_figure(chk: ExternalCheck):
    """The out-of-fold predictions of the best, the median and the worst slice beside the expert outlines."""
    scores = _scores(chk, "cv")
    preds = read_predictions(chk.out_dir / "cv" / "predictions", chk.train)
    return example_slices(chk.train, preds, pick_examples(scores, 3), scores)


def distribution_figure(chk: ExternalCheck):
    """Per-slice cross-validated Dice with the pooled and the published values."""
    return dice_distribution(_scores(chk, "cv"), PUBLISHED)


def scored_test_part(chk: ExternalCheck, summary: Mapping):
    """The test part's example figure (best, median, worst slice) and its sentence: which models
    predicted it, its Dice set against the published rows."""
    t = summary["test"]
    t_scores = _scores(chk, "test")
    t_preds = read_predictions(chk.out_dir / "test" / "predictions", chk.test)
    fig = example_slices(chk.test, t_preds, pick_examples(t_scores, 3), t_scores)
    n_models = int(t.get("models") or 1)
    n_train = summary["data"]["n_train"]
    who = (f"One network trained on all {n_train} training slices with the recipe above" if n_models == 1 else
           f"The mean class probabilities of {n_models} models (the network trained on all "
           f"{n_train} training slices with the recipe above and the {n_models - 1} "
           "cross-validation fold models)")
    lesion = (f"; both as one lesion class **{t['dice_lesion']:.3f}** (the lesion table sets it beside the "
              "published single-class rows)" if "dice_lesion" in t else "")
    words = (f"{who}, scored on the {t['n_slices']} test slices: GGO **{t['dice_ggo']:.3f}**, "
             f"consolidation **{t['dice_consolidation']:.3f}** (mean over slices){lesion}; the table above "
             "sets them beside the published rows. " + compare_to_published(t, what="test-part"))
    return fig, words


def profile_runs(chk: ExternalCheck, summary: Mapping) -> dict[str, tuple[dict, Path]]:
    """This page's run and every finished run of another external profile (but ``smoke``) on the same
    folders, in the folders ``make external EXTERNAL_PROFILE=...`` gives them
    (:func:`sscild.external.recipe.run_folder`, beside this run's): profile name -> (summary, run folder).
    A run of other folders, or one whose scores are missing, is left out."""
    runs = {chk.prof.name: (dict(summary), chk.out_dir)}
    for key, prof in EXTERNAL_PROFILES.items():
        folder = run_folder(prof, chk.out_dir.parent)
        if key == "smoke" or prof.name == chk.prof.name or not (folder / "cv" / "scores.csv").exists():
            continue
        try:
            runs[prof.name] = (read_check(chk, folder, prof), folder)
        except (ValueError, FileNotFoundError):
            continue
    order = [p.name for p in EXTERNAL_PROFILES.values()]
    return dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def profile_comparison(chk: ExternalCheck, summary: Mapping, *, n_boot: int = 2000) -> tuple[pd.DataFrame, str]:
    """The external profiles that ran on these folders, side by side (:func:`profile_runs`): each one's
    budget (grid, network, steps), its cross-validated Dice (and the test part's when scored), its wall
    time, and the paired gain over the default ``cpu`` run on the same out-of-fold slices; with the
    sentence saying what the longer budget bought, or how to run the other profile."""
    runs = profile_runs(chk, summary)
    base = "external-cpu"
    scores = {name: pd.read_csv(folder / "cv" / "scores.csv", dtype={"slice_id": str}).set_index("slice_id")
              for name, (_, folder) in runs.items()}
    rows, gains = [], {}
    for name, (summ, _) in runs.items():
        rec, cv, test = summ["recipe"], summ["cv"], summ.get("test") or {}
        second, pre = rec.get("second_stage_iterations"), rec.get("pretrain_steps")
        row = {"profile": name.removeprefix("external-"),
               "grid, network": f"{rec['grid_size']} px, channels {'-'.join(str(c) for c in rec['channels'])}",
               "steps (first + second stage)": f"{rec['iterations']} + {second}" if second else str(rec["iterations"]),
               "pretraining steps": "?" if pre is None else str(pre)}
        for n, label in (("ggo", "GGO"), ("consolidation", "consolidation")):
            lo, hi = cv[f"dice_{n}_ci"]
            row[f"CV {label} [95% CI]"] = f"{cv[f'dice_{n}']:.3f} [{lo:.3f}, {hi:.3f}]"
        for n, label in (("ggo", "GGO"), ("consolidation", "consolidation")):
            row[f"test {label}"] = f"{test[f'dice_{n}']:.3f}" if f"dice_{n}" in test else "not scored"
        row["minutes"] = f"{summ['seconds'] / 60:.1f}"
        if name != base and base in runs:
            a, b = scores[name], scores[base]
            if sorted(a.index) == sorted(b.index):
                gains[name] = paired_gain(a, b, n_boot=n_boot)
        for n, label in (("ggo", "GGO"), ("consolidation", "consolidation")):
            m = gains.get(name, {}).get(n)
            row[f"CV gain over cpu, {label} [95% CI]"] = f"{m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}]" if m else ""
        rows.append(row)
    table = pd.DataFrame(rows).set_index("profile")
    if len(runs) == 1:
        other = "long" if chk.prof.name == base else "cpu"
        folder = run_folder(other, chk.out_dir.parent)
        words = (f"Only the `{chk.prof.name.removeprefix('external-')}` profile has run on these folders. "
                 f"`make external{'' if other == 'cpu' else ' EXTERNAL_PROFILE=' + other}` runs the `{other}` profile "
                 f"into `{folder.name}/` beside "
                 "this run, and this table then sets both side by side.")
        return table, words
    parts = []
    for name, g in gains.items():
        ratio = runs[name][0]["seconds"] / runs[base][0]["seconds"]
        parts.append(f"The `{name.removeprefix('external-')}` profile changes cross-validated Dice over the `cpu` "
                     f"run by {g['ggo'][0]:+.3f} [{g['ggo'][1]:+.3f}, {g['ggo'][2]:+.3f}] for GGO and "
                     f"{g['consolidation'][0]:+.3f} [{g['consolidation'][1]:+.3f}, {g['consolidation'][2]:+.3f}] "
                     f"for consolidation (paired, the same {len(scores[base])} out-of-fold slices) at {ratio:.1f} "
                     "times the wall time.")
    return table, " ".join(parts) or "The runs were scored on different slices, so no paired gain is given."



def recorded_profile_runs(path: str | Path | None = None, *, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The recorded end-to-end runs of the external profiles (``benchmarks/external_profile_runs.csv``:
    each run's out-of-fold scores per slice, the ``cpu`` run first; ``.json``: the commands, wall times,
    machine and commit): the table of :func:`sscild.external.screens.screen_table` (paired gain over the
    ``cpu`` run) and the record. ``None`` when either file is absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_profile_runs.json"
    if not path.exists() or not path.with_suffix(".csv").exists():
        return None
    rec = read_json(path)
    table = screen_table(pd.read_csv(path.with_suffix(".csv"), dtype={"slice_id": str}), n_boot=n_boot,
                         baseline_name=rec["baseline"])
    return table, rec


def recorded_profile_words(table: pd.DataFrame, rec: Mapping) -> str:
    """The recorded profile runs in words: how long each ``make`` took from the fresh clone, what the
    longer profiles changed over the baseline on the same out-of-fold slices, and at what cost."""
    base = rec["baseline"]
    runs = rec["runs"]
    times = "; ".join(f"`{r['command']}` {r['make_wall_seconds'] / 60:.1f} min ({r['models']} models, "
                      f"{r['at_once']} at a time, {np.mean(r['model_train_seconds']):.0f} s each; pretraining "
                      f"{r['pretraining_seconds']:.0f} s)" for r in runs.values())
    parts = []
    for name, r in runs.items():
        if name == base:
            continue
        row = table.loc[name]
        parts.append(f"`{name}` changes cross-validated Dice over `{base}` by "
                     f"{row[f'gain over {base}, GGO [95% CI]']} for GGO and "
                     f"{row[f'gain over {base}, consolidation [95% CI]']} for consolidation (paired, the same "
                     f"{rec['runs'][base]['cv']['n_slices']} out-of-fold slices), its models training "
                     f"{r['models_wall_seconds'] / runs[base]['models_wall_seconds']:.2f} times as long "
                     f"({r['run_seconds'] / runs[base]['run_seconds']:.2f} times the whole run)")
    return (f"Recorded on {rec['date']} from a fresh clone at commit {rec['commit']} ({rec['machine']}): {times}. "
            f"{rec['setup_note']}; {rec['overlap_note']}. "
            + ". ".join(parts) + ". The intervals are over slices, not over trainings: the same recipe trained "
            "twice does not repeat slice for slice (the fifth screen's control, above), and one run of each "
            "profile cannot show how much of a gain of this size is that noise.")

def fold_table(summary: Mapping) -> pd.DataFrame:
    """The cross-validation folds: slices, seconds, whether each model was reused."""
    return pd.DataFrame(summary["cv"]["per_fold"]).set_index("fold")


def cost(chk: ExternalCheck, summary: Mapping) -> tuple[float, str]:
    """The minutes the check took (``summary.json``'s wall time), and the sentence on what it cost:
    training time, side-by-side training, pretraining, reused models, where the results are."""
    minutes = summary["seconds"] / 60
    per_fold = fold_table(summary)
    test = summary["test"] or {}
    trained_min = per_fold["train_seconds"].sum() / 60 + (test.get("train_seconds") or 0) / 60
    reused = int(per_fold["reused"].sum()) + int(bool(test.get("reused")))
    tr = summary.get("training") or {}
    side = (f"; the {tr['models']} networks trained {tr['at_once']} at a time on {tr['threads_each']} thread(s) "
            f"each, {tr['seconds'] / 60:.1f} min of wall time" if tr.get("at_once", 1) > 1 and tr.get("trained_now")
            else "")
    if tr.get("pretrained"):
        side += (f"; the pretraining on {tr['pretrained']['slices']} unlabelled slices took "
                 f"{tr['pretrained']['seconds'] / 60:.1f} min when it ran (L1 restoration error "
                 f"{tr['pretrained']['first_l1']:.3f} -> {tr['pretrained']['last_l1']:.3f})")
    return minutes, (
        f"The check took **{minutes:.1f} min** on {summary['recipe']['threads']} CPU threads "
        f"(torch {summary['torch']}). Training took {trained_min:.1f} min in all when the networks were trained"
        + side
        + (f"; {reused} finished network(s) trained earlier with the same recipe and slices were reused in this run"
           if reused else "")
        + f". Results: `{chk.out_dir.name}/summary.json`, per-slice scores in `cv/scores.csv`, out-of-fold masks in "
          "`cv/predictions/`.")
