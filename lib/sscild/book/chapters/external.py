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
* the recorded screens and end-to-end runs as tables and words (self-training, the fourth to tenth
  screens, the profile runs): re-exported from :mod:`sscild.book.chapters.external_records`.
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
from sscild.book.chapters import external_records
from sscild.book.chapters.external_records import (SELFTRAIN_CV_COMMAND, budget_record, budget_words,
                                                   consistency_record, consistency_words, gain_words,
                                                   recorded_profile_runs, recorded_profile_words, selftrain_cv,
                                                   selftrain_words, steps_record, steps_words, decision_record,
                                                   decision_words, members_record, members_words,
                                                   paired_screen_record, paired_screen_words, sampler_record,
                                                   architecture_record)
from sscild.external.screens import consistency_screen, gain_text, lever_screen, paired_gain, semi_screen
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
    "stage_comparison",
    "gpu_caption",
    "gpu_words",
    "example_figure",
    "distribution_figure",
    "scored_test_part",
    "fold_table",
    "who_predicted_test",
    "cost",
    "profile_runs",
    "profile_comparison",
    # the appendix's record readers (external_records), re-exported
    *external_records.__all__,
    # the external check's own names, for the notebook
    "CLASS_NAMES",
    "describe_slices",
    "results_table",
    "semi_screen",
    "lever_screen",
    "consistency_screen",
    "recorded_gpu_run",
]

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
            f"{PUBLISHED['dice_ggo'].max():.3f} / {PUBLISHED['dice_consolidation'].max():.3f}."
            + (" The recorded GPU run scored the most probable class of each pixel and this run the decision of "
               "the seventh screen (below), so the two differ in the decision as well as in the budget."
               if (summary.get("recipe") or {}).get("lesion_threshold") is not None
               and meta.get("lesion_threshold") is None else ""))


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


def who_predicted_test(n_models: int, members: int, n_train: int) -> str:
    """Which networks predicted the test part: ``n_models`` in all, ``members`` per model, the first model
    trained on all ``n_train`` slices and the rest the cross-validation fold models.

    >>> who_predicted_test(1, 1, 50)
    'One network trained on all 50 training slices with the recipe above'
    >>> who_predicted_test(6, 1, 50)
    'The mean class probabilities of 6 networks (the model trained on all 50 training slices with the recipe above and the 5 cross-validation fold models)'
    >>> who_predicted_test(12, 2, 50).endswith("the 5 cross-validation fold models, each the mean of 2 networks "
    ...                                         "trained with other seeds)")
    True
    >>> who_predicted_test(2, 2, 50)
    'The mean class probabilities of 2 networks trained on all 50 training slices with the recipe above and other seeds'
    """
    n_folds = n_models // members - 1
    if n_models == 1:
        return f"One network trained on all {n_train} training slices with the recipe above"
    if n_folds < 1:
        return (f"The mean class probabilities of {n_models} networks trained on all {n_train} training slices with "
                "the recipe above and other seeds")
    each = f", each the mean of {members} networks trained with other seeds" if members > 1 else ""
    return (f"The mean class probabilities of {n_models} networks (the model trained on all {n_train} training slices "
            f"with the recipe above and the {n_folds} cross-validation fold models{each})")


def scored_test_part(chk: ExternalCheck, summary: Mapping):
    """The test part's example figure (best, median, worst slice) and its sentence: which models
    predicted it, its Dice set against the published rows."""
    t = summary["test"]
    t_scores = _scores(chk, "test")
    t_preds = read_predictions(chk.out_dir / "test" / "predictions", chk.test)
    fig = example_slices(chk.test, t_preds, pick_examples(t_scores, 3), t_scores)
    who = who_predicted_test(int(t.get("models") or 1), int((summary.get("recipe") or {}).get("members") or 1),
                            summary["data"]["n_train"])
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


def _cost_ratio(summ: Mapping, base: Mapping) -> str:
    """How much longer run ``summ`` took than ``base``: from the fold models' training seconds as recorded
    when each was trained (a run that reused its models, e.g. after a change to the prediction, has a
    wall time of seconds), else from the runs' wall times."""
    def train_seconds(s: Mapping) -> float | None:
        folds = (s.get("cv") or {}).get("per_fold") or []
        secs = [f.get("train_seconds") for f in folds]
        return float(sum(secs)) if secs and all(x for x in secs) else None
    a, b = train_seconds(summ), train_seconds(base)
    if a and b:
        return f"{a / b:.1f} times the fold models' training time (as recorded when they were trained)"
    return f"{summ['seconds'] / base['seconds']:.1f} times the wall time"


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
            row[f"CV gain over cpu, {label} [95% CI]"] = gain_text(m) if m else ""
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
        parts.append(gain_words(name.removeprefix("external-"), "cpu", gain_text(g["ggo"]),
                                gain_text(g["consolidation"]), len(scores[base]))
                     + f" at {_cost_ratio(runs[name][0], runs[base][0])}.")
    return table, " ".join(parts) or "The runs were scored on different slices, so no paired gain is given."



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
