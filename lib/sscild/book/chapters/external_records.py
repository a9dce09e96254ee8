"""The external appendix's recorded screens and runs in words: the tables of the records in
``benchmarks/external_*`` (written by the recipe screens and by end-to-end runs, never by the page) and the
sentences that say what each found. :mod:`sscild.book.chapters.external` hands them to the notebook.

* :func:`selftrain_cv`, :func:`selftrain_words`: the recorded five-fold self-training comparison.
* :func:`consistency_record`, :func:`consistency_words`: the fourth screen (consistency learning).
* :func:`budget_record`, :func:`budget_words`: the fifth screen (a longer CPU budget) and the ``long``
  profile it chose.
* :func:`recorded_profile_runs`, :func:`recorded_profile_words`: both external profiles run end to end
  from a fresh clone (``benchmarks/external_profile_runs.*``).
* :func:`steps_record`, :func:`steps_words`: the sixth screen (first-stage steps with the pretraining,
  five folds) and what the ``long`` profile took from it.
* :func:`decision_record`, :func:`decision_words`: the seventh screen (the decision from the class
  probabilities), where it was chosen and where it was checked.
* :func:`members_record`, :func:`members_words`: the eighth screen (two networks per model for the
  ``long`` profile).
* :func:`paired_screen_record`, :func:`paired_screen_words`: a screen of variants against one control, paired
  over the same slices; :func:`sampler_record` (the ninth screen: the training sampler's emphasis on
  consolidation) and :func:`architecture_record` (the tenth: other networks) read theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.external.screens import (budget_screen, consistency_screen, gain_text, paired_gain, screen_table,
                                     semi_screen)
from sscild.paths import read_json, repo_root

__all__ = [
    "SELFTRAIN_CV_COMMAND",
    "selftrain_cv",
    "selftrain_words",
    "consistency_record",
    "consistency_words",
    "budget_record",
    "budget_words",
    "gain_words",
    "recorded_profile_runs",
    "recorded_profile_words",
    "steps_record",
    "steps_words",
    "decision_record",
    "decision_words",
    "members_record",
    "members_words",
    "paired_screen_record",
    "paired_screen_words",
    "sampler_record",
    "architecture_record",
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


def gain_words(name: str, base: str, ggo: str, consolidation: str, n_slices: int) -> str:
    """The sentence (without its full stop) on what profile ``name`` changed over ``base``: the paired
    gains in cross-validated Dice, each already written as ``+mean [low, high]``, on ``n_slices`` slices."""
    return (f"`{name}` changes cross-validated Dice over `{base}` by {ggo} for GGO and {consolidation} for "
            f"consolidation (paired, the same {n_slices} out-of-fold slices)")


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
        parts.append(gain_words(name, base, row[f"gain over {base}, GGO [95% CI]"],
                                row[f"gain over {base}, consolidation [95% CI]"], rec["runs"][base]["cv"]["n_slices"])
                     + f", its models training {r['models_wall_seconds'] / runs[base]['models_wall_seconds']:.2f} times as long "
                     f"({r['run_seconds'] / runs[base]['run_seconds']:.2f} times the whole run)")
    return (f"Recorded on {rec['date']} from a fresh clone at commit {rec['commit']} ({rec['machine']}): {times}. "
            f"{rec['setup_note']}; {rec['overlap_note']}. "
            + ". ".join(parts) + ". The intervals are over slices, not over trainings: the same recipe trained "
            "twice does not repeat slice for slice (the fifth screen's control, above), and one run of each "
            "profile cannot show how much of a gain of this size is that noise.")


def steps_record(path: str | Path | None = None, *, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The sixth screen (``benchmarks/external_steps_screen.csv``: per-slice out-of-fold scores of the
    cpu recipe with more first-stage steps, the control first; ``.json``: where each row was trained, its
    training time per fold, what was adopted and why): the table of
    :func:`sscild.external.screens.screen_table` (paired gain over the control, and of the treated rows
    over the record's ``reference`` row) and the record. ``None`` when either file is absent."""
    return paired_screen_record("external_steps_screen", path, n_boot=n_boot)


def steps_words(table: pd.DataFrame, rec: Mapping) -> str:
    """The sixth screen in words: each row's paired gain over the control and its training time relative to
    the control's (``train_seconds_per_fold``), the treated rows' gain over the reference row, where the
    rows were trained, and what was adopted and why."""
    ctrl, ref = rec["control"], rec["reference"]
    base = np.mean(rec["variants"][ctrl]["train_seconds_per_fold"])
    parts = []
    for name, v in rec["variants"].items():
        if name == ctrl:
            continue
        row = table.loc[name]
        text = (f"*{name}*: GGO {row['gain over the control, GGO [95% CI]']}, consolidation "
                f"{row['gain over the control, consolidation [95% CI]']} over the control, at "
                f"{np.mean(v['train_seconds_per_fold']) / base:.2f} times its training time per fold")
        if name.startswith(rec["treated_prefix"]):
            text += (f" (over *{ref}*: GGO {row[f'gain from {ref}, GGO [95% CI]']}, consolidation "
                     f"{row[f'gain from {ref}, consolidation [95% CI]']})")
        parts.append(text)
    trained = "; ".join(f"*{name}*: {v['trained']}" for name, v in rec["variants"].items())
    return (f"Paired gains ({rec['held_out_slices']} out-of-fold slices, folds "
            f"{', '.join(str(k) for k in rec['folds'])}): " + "; ".join(parts) + f". Where each row was trained: "
            f"{trained}. {rec['determinism_note']} The adoption rule, {rec['rule']}. **{rec['adopted']}**: "
            f"{rec['why'].rstrip('.')}.")


def decision_record(path: str | Path | None = None, *, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The seventh screen (``benchmarks/external_decision_screen.csv``: per-slice out-of-fold scores of the
    cpu and long runs' models under two decisions from the class probabilities, the cpu recipe's most
    probable class first; ``.json``: how the decision was chosen, what was adopted and why): the table
    (paired gain over the control, and of the long profile's new decision over its most probable class)
    and the record. ``None`` when either file is absent."""
    return paired_screen_record("external_decision_screen", path, n_boot=n_boot)


def decision_words(table: pd.DataFrame, rec: Mapping, *, n_boot: int = 2000) -> str:
    """The seventh screen in words: how the decision was chosen (folds ``rec["chosen_on_folds"]``, leave
    one fold out), and its paired gain where it was chosen and where it was not (the cpu run's other folds;
    the long run's models, on all folds), computed from the record's per-slice scores."""
    scores = table.attrs["scores"]
    ctrl, ref, new = rec["control"], rec["reference"], rec["adopted_variant"]
    long_new = [v for v in table.index if v.startswith(rec["treated_prefix"])][0]

    def gain(a: str, b: str, folds) -> str:
        x = scores[(scores["variant"] == a) & scores["fold"].isin(folds)].set_index("slice_id")
        y = scores[(scores["variant"] == b) & scores["fold"].isin(folds)].set_index("slice_id")
        g = paired_gain(x, y.loc[x.index], n_boot=n_boot)
        return f"GGO {gain_text(g['ggo'])}, consolidation {gain_text(g['consolidation'])} ({len(x)} slices)"

    chosen = list(rec["chosen_on_folds"])
    other = sorted(set(scores["fold"]) - set(chosen))
    every = sorted(set(scores["fold"]))
    return (f"{rec['how_chosen']} Paired gain of the new decision over the most probable class, on the cpu "
            f"run's models: where it was chosen (folds {', '.join(map(str, chosen))}) {gain(new, ctrl, chosen)}; "
            f"on the folds that took no part (folds {', '.join(map(str, other))}) {gain(new, ctrl, other)}; "
            f"on all five {gain(new, ctrl, every)}. On the long run's models, which took no part in the choice: "
            f"{gain(long_new, ref, every)}. {rec['caveat']}{_ensemble_words(rec.get('ensemble_check'))} "
            f"**{rec['adopted']}**: {rec['why'].rstrip('.')}.")


def _ensemble_words(check: Mapping | None) -> str:
    """The recorded check of the decision on averaged models (``scripts/decision_grid.py --check``)."""
    if not check:
        return ""
    a, b, g = check["most_probable_class"], check["decision"], check["gain"]
    return (f" On {check['what']} ({check['n_slices']} slices; `{check['command']}`): the most probable class "
            f"scores GGO {a['ggo']:.3f} and consolidation {a['consolidation']:.3f}, the decision {b['ggo']:.3f} and "
            f"{b['consolidation']:.3f}, a paired gain of GGO {g['ggo']}, consolidation {g['consolidation']}.")


def members_record(path: str | Path | None = None, *, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The eighth screen (``benchmarks/external_members_screen.csv``: per-slice out-of-fold scores of the
    cpu recipe, the long profile and the long profile with a second network per model, all with the
    adopted decision, the cpu recipe first; ``.json``: where each row was trained, its training time per
    fold, the rule, what was adopted and why): the table (paired gain over the control, and of the
    treated row over the long profile) and the record. ``None`` when either file is absent."""
    return paired_screen_record("external_members_screen", path, n_boot=n_boot)


def members_words(table: pd.DataFrame, rec: Mapping) -> str:
    """The eighth screen in words: as :func:`steps_words` (gains, times, where trained, the rule and the
    verdict), then the recorded check of the adopted decision on the mean of three networks per fold."""
    note = rec.get("ensemble_note")
    if not note:
        return steps_words(table, rec)
    a, b, lofo = note["most_probable_class"], note["adopted_decision"], note["leave_one_fold_out"]
    return (steps_words(table, rec) + f" The decision on {note['what']} (`{note['command']}`): the most probable "
            f"class scores GGO {a['ggo']:.3f} and consolidation {a['consolidation']:.3f}, the adopted decision "
            f"{b['ggo']:.3f} and {b['consolidation']:.3f}, and the decision chosen afresh leave one fold out from the "
            f"seventh screen's grid ({note['chosen']}) {lofo['ggo']:.3f} and {lofo['consolidation']:.3f}: "
            f"{note['reading']}.")


def paired_screen_record(name: str, path: str | Path | None = None, *,
                         n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """A screen recorded as ``benchmarks/<name>.csv`` (per-slice out-of-fold scores, the control first) and
    ``<name>.json`` (``control``, ``folds``, ``held_out_slices``, ``rule``, ``adopted``, ``why`` and per
    variant ``train_seconds_per_fold`` and ``trained``; ``path``: another place for the ``.json``): the table
    of :func:`sscild.external.screens.screen_table` (paired gain over the control, and -- when the record
    names a ``reference`` row and a ``treated_prefix`` -- of the treated rows over the reference row) and the
    record. ``None`` when either file is absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / f"{name}.json"
    if not path.exists() or not path.with_suffix(".csv").exists():
        return None
    rec = read_json(path)
    ref = rec.get("reference")
    table = screen_table(pd.read_csv(path.with_suffix(".csv"), dtype={"slice_id": str}), n_boot=n_boot,
                         baseline_name="the control", control_prefix=ref, treated_prefix=rec.get("treated_prefix"),
                         control_name=ref or "")
    return table, rec


def paired_screen_words(table: pd.DataFrame, rec: Mapping) -> str:
    """A screen of :func:`paired_screen_record` in words: each row's paired gain over the control and its
    training time relative to the control's, where the rows were trained, the rule and the verdict."""
    ctrl = rec["control"]
    base = np.mean(rec["variants"][ctrl]["train_seconds_per_fold"])
    parts = [f"*{name}*: GGO {table.loc[name, 'gain over the control, GGO [95% CI]']}, consolidation "
             f"{table.loc[name, 'gain over the control, consolidation [95% CI]']}, at "
             f"{np.mean(v['train_seconds_per_fold']) / base:.2f} times the control's training time per fold"
             for name, v in rec["variants"].items() if name != ctrl]
    trained = "; ".join(f"*{name}*: {v['trained']}" for name, v in rec["variants"].items())
    return (f"Paired gains over the control ({rec['held_out_slices']} out-of-fold slices, folds "
            f"{', '.join(str(k) for k in rec['folds'])}): " + "; ".join(parts) + f". Where each row was trained: "
            f"{trained}. The adoption rule, {rec['rule']}. **{rec['adopted']}**: {rec['why'].rstrip('.')}.")


def sampler_record(*, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The ninth screen (``benchmarks/external_sampler_screen.*``: the cpu recipe and the same recipe without
    the sampler's emphasis on consolidation) by :func:`paired_screen_record`."""
    return paired_screen_record("external_sampler_screen", n_boot=n_boot)


def architecture_record(*, n_boot: int = 2000) -> tuple[pd.DataFrame, dict] | None:
    """The tenth screen (``benchmarks/external_architecture_screen.*``: the cpu recipe and the same recipe on
    other networks, each with its own pretraining) by :func:`paired_screen_record`."""
    return paired_screen_record("external_architecture_screen", n_boot=n_boot)
