"""The external check's recipe: its profiles (derived from the study's), their image-folder and
semi-supervised settings, validation, and the recipe as plain values.

How the unlabelled slices are used is the study's own setting and word: the profile's
``semi_supervised`` (:data:`sscild.model.selftrain.SEMI_MODES`, checked by
:func:`sscild.model.selftrain.semi_mode`) and ``pretrain_steps``. Settings written with the former
names (``extra["semi"]``: ``"off"`` / ``"fine-tune"`` / ``"self-training"``, and ``extra["pretrain_steps"]``)
are read in those words (:data:`RENAMED_SEMI`, :func:`in_study_words`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sscild.model.selftrain import semi_mode
from sscild.profiles import Profile, get_profile

__all__ = [
    "SEMI_DEFAULTS",
    "ARGMAX",
    "MAX_MEMBERS",
    "STUDENT_MODES",
    "RENAMED_SEMI",
    "semi_settings",
    "in_study_words",
    "EXTERNAL_PROFILES",
    "check_extra",
    "external_profile",
    "recipe_dict",
    "run_folder",
]

_TTA = ("none", "flip", "dihedral")
MAX_MEMBERS = 8
"""The most networks a profile's ``members`` may train per model (their seed keys stay apart below 1000)."""
ARGMAX = {"lesion_threshold": None, "consolidation_weight": 1.0}
"""The decision from class probabilities that every recipe screen before the seventh used: the most
probable class (:func:`sscild.external.predict.decide`)."""

SEMI_DEFAULTS = {
    "second_stage": False,
    "pseudo_confidence": 0.9,
    "pseudo_share": 0.5,
    "student_iterations": 1000,
    "student_init": "teacher",
    "unlabelled_max": 800,
    "pseudo_tta": "flip",
    "pseudo_min_lesion": 0.0,
}
"""Semi-supervised settings of the profile's ``extra`` and their defaults, beside the profile's
``semi_supervised`` (the study's words) and ``pretrain_steps``:

* ``semi_supervised="pretrain"``: ``pretrain_steps`` steps of self-supervised pretraining on the
  unlabelled slices (:mod:`sscild.external.pretrain`), from which every model's first stage starts
  (0 steps: ``"off"``, as in the study).
* ``"self-training"``: each training (a fold, or the final model) first trains a supervised *teacher*
  on its own labelled slices (from the pretrained weights when ``pretrain_steps`` > 0: unlike the
  study's profiles, the external check can do both), the teacher labels up to ``unlabelled_max``
  unlabelled slices (an even spread over the folder, in natural id order; softmax averaged over the
  ``pseudo_tta`` variants), pixels whose highest class probability is below ``pseudo_confidence`` are
  ignored by the loss, and a *student* trains ``student_iterations`` steps on both, ``pseudo_share`` of
  each batch pseudo-labelled, starting from the teacher's weights (``student_init="teacher"``) or
  afresh (``"random"``). With ``pseudo_min_lesion`` > 0, only the slices whose confident pseudo-label
  marks at least that share of the grid as GGO or consolidation are kept.
* ``"consistency"``: as self-training, a first supervised stage; then the second stage
  (``student_iterations`` steps from its weights) takes, beside every labelled batch, as many of up
  to ``unlabelled_max`` unlabelled slices and learns to agree on a strongly perturbed view of them
  with a mean teacher's labels of a weakly perturbed one (:mod:`sscild.model.consistency`; pixels
  below ``pseudo_confidence`` ignored). Its control is ``second_stage`` without unlabelled slices.
* ``"off"``: the unlabelled slices are not used.

``second_stage``: without self-training, the model trains the same two stages without unlabelled
slices (the student continues ``student_iterations`` steps from the teacher's weights on the labelled
slices alone) -- the second screen's control, which separates what the unlabelled slices add from
what the extra steps add, and the adopted ``cpu`` recipe."""

STUDENT_MODES = ("self-training", "consistency")
"""The ``semi_supervised`` modes whose second stage (the student) trains on the unlabelled slices."""

RENAMED_SEMI = {"off": ("pretrain", False), "fine-tune": ("pretrain", True),
                "self-training": ("self-training", False)}
"""The former setting ``extra["semi"]`` read in the study's words: its value -> (``semi_supervised``,
``second_stage``). The former ``"off"`` and ``"fine-tune"`` pretrained whenever ``pretrain_steps`` > 0,
as ``"pretrain"`` does (with 0 steps it reads as ``"off"``); ``"fine-tune"`` is the second stage on the
labelled slices alone."""


def semi_settings(settings: Mapping) -> dict:
    """Settings with one of the former name ``semi`` read as ``semi_supervised`` and ``second_stage``
    (:data:`RENAMED_SEMI`: a recorded ``"fine-tune"`` is ``"pretrain"`` with the second stage); the
    others unchanged.

    >>> semi_settings({"semi": "fine-tune", "pretrain_steps": 2000})
    {'pretrain_steps': 2000, 'semi_supervised': 'pretrain', 'second_stage': True}
    """
    out = {k: v for k, v in settings.items() if k != "semi"}
    if "semi" in settings:
        if settings["semi"] not in RENAMED_SEMI:
            raise ValueError(f"extra['semi'] (the former name of semi_supervised) must be one of "
                             f"{', '.join(RENAMED_SEMI)}, got {settings['semi']!r}.")
        mode, second = RENAMED_SEMI[settings["semi"]]
        out.setdefault("semi_supervised", mode)
        out.setdefault("second_stage", second)
    return out


def in_study_words(p: Profile) -> Profile:
    """``p`` with the former ``extra["semi"]`` and ``extra["pretrain_steps"]`` moved to the profile's
    ``semi_supervised`` (:func:`semi_settings`) and ``pretrain_steps``; ``p`` itself when it has none.
    An ``extra`` that named pretraining steps but no ``semi`` had the former default, ``"off"``."""
    ex = dict(p.extra or {})
    if not {"semi", "semi_supervised", "pretrain_steps"} & set(ex):
        return p
    if "pretrain_steps" in ex and "semi" not in ex:
        ex["semi"] = "off"
    ex = semi_settings(ex)
    fields = {k: ex.pop(k) for k in ("semi_supervised", "pretrain_steps") if k in ex}
    return p.with_overrides(**fields, extra=ex)


def _base_overrides() -> dict:
    # The recipe chosen by cross-validation on the training slices (benchmarks/external_recipe_search.json):
    # whole slices on a 192-pixel grid, batch 4, 1500 iterations, one residual unit per level.
    return dict(
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        patch_size=(192, 192),
        batch_size=4,
        iterations=1500,
        learning_rate=2e-3,
        lesion_oversample=0.5,  # half the patches on consolidation; the ninth screen found GGO no better without it
        num_folds=5,
        seed=0,
        checkpoint_every=250,
        log_every=25,
        tta_flips=True,
        # image folders have no synthetic cohort: the unlabelled slices are a folder of their own
        phantom_unlabelled=0,
        phantom_controls=0,
    )


def _make_profiles() -> dict[str, Profile]:
    cpu = get_profile("cpu").with_overrides(
        name="external-cpu", **_base_overrides(),
        # third screen (sscild.external.screens.lever_screen): 2000 steps of self-supervised pretraining on the
        # unlabelled slices raised consolidation Dice on folds 0-2; no other nnU-Net lever helped
        semi_supervised="pretrain", pretrain_steps=2000,
        extra={"grid_size": 192, "rotations": True, "tta": "dihedral",
               # second screen (sscild.external.screens.semi_screen): 1000 more steps from the supervised model's
               # weights, and the test part predicted with the fold models too; self-training did not help there
               "second_stage": True, "student_iterations": 1000, "test_ensemble": True,
               # seventh screen (benchmarks/external_decision_screen.*): lesion where P(GGO) + P(consolidation) > 0.4,
               # consolidation where 0.7 P(consolidation) > P(GGO); chosen on the out-of-fold probabilities of folds
               # 0-2, it held on folds 3-4 and on the long run's five folds
               "lesion_threshold": 0.4, "consolidation_weight": 0.7})
    # the cpu recipe's structure (pretraining, two stages, fold ensemble on the test part) in a few steps
    smoke = get_profile("smoke").with_overrides(
        name="external-smoke", channels=(8, 16, 32), strides=(2, 2), num_res_units=1, patch_size=(64, 64),
        batch_size=4, iterations=6, num_folds=5, seed=0, checkpoint_every=6, log_every=3, tta_flips=False,
        lesion_oversample=0.5, phantom_unlabelled=0, phantom_controls=0, semi_supervised="pretrain", pretrain_steps=4,
        extra={"grid_size": 64, "rotations": True, "tta": "flip", "second_stage": True,
               "student_iterations": 3, "test_ensemble": True})
    # a larger budget for a GPU (mixed precision); not tuned: its settings scale the cpu recipe up, and it keeps the
    # cpu recipe's pretraining, two stages and fold ensemble (screened on CPU; no GPU run of it is recorded yet)
    paper = cpu.with_overrides(name="external-paper", num_res_units=2, batch_size=8, iterations=4000,
                               checkpoint_every=500, log_every=50, patch_size=(256, 256),
                               extra={**cpu.extra, "grid_size": 256})
    # a longer CPU run (make external EXTERNAL_PROFILE=long; under 90 minutes on two cores): the fifth screen
    # (benchmarks/external_budget_screen.*) found no lever of a longer budget -- a 256- or 320-pixel grid, 1.5x the
    # channels -- that beat the cpu recipe beyond noise, and the finer grids lowered consolidation Dice; the one lever
    # that lowered neither class is 1000 more first-stage steps (third screen), which is what this profile adds; the
    # sixth screen (benchmarks/external_steps_screen.*, with the pretraining, five folds) found 2500 more steps on top
    # of these no better, at about twice the training time; the eighth (benchmarks/external_members_screen.*) found a
    # second network per model (extra["members"] = 2) no better for GGO; the tenth
    # (benchmarks/external_architecture_screen.*) found a fifth level and nnU-Net's plain U-Net worse for GGO
    long = cpu.with_overrides(name="external-long", iterations=2500)
    return {"smoke": smoke, "cpu": cpu, "long": long, "paper": paper}


EXTERNAL_PROFILES: dict[str, Profile] = _make_profiles()
"""External-check profiles, derived from the study's profiles (``smoke`` for tests, ``cpu`` the
default of ``make external`` (about 30 minutes on two CPU cores), ``long`` the same recipe with 1000
more first-stage steps (``make external EXTERNAL_PROFILE=long``; the fifth screen found no larger use of a
90-minute budget that helped), ``paper`` a longer run for a GPU). The unlabelled slices are used as the
profile's ``semi_supervised`` and ``pretrain_steps`` say (:data:`SEMI_DEFAULTS`). Image-folder settings
live in ``extra``: ``grid_size`` (square network input, pixels), ``rotations`` (train on the four
90-degree rotations of each slice), ``tta`` (``"none"``, ``"flip"`` or ``"dihedral"``: flips and
90-degree rotations averaged at prediction), ``test_ensemble`` (the test part is predicted by the mean
softmax of the model trained on all labelled slices and the cross-validation fold models), ``members``
(how many networks each model is: trained from the same start with other seeds -- other draws of
batches and augmentation -- and averaged at prediction; 1 by default) and the
semi-supervised settings of :data:`SEMI_DEFAULTS`."""


def check_extra(p: Profile) -> dict:
    """The profile's image-folder and semi-supervised settings (its ``extra``, and its ``semi_supervised``
    and ``pretrain_steps``; former names read by :func:`in_study_words`), checked, with their defaults
    filled in; a ``ValueError`` names a setting out of range. ``semi_supervised`` is the mode in effect
    (:func:`sscild.model.selftrain.semi_mode`, the study's check: ``"pretrain"`` with 0 steps is
    ``"off"``) and ``pretrain_steps`` the steps that are trained (0 when the mode is ``"off"``)."""
    p = in_study_words(p)
    ex = dict(p.extra or {})
    grid = ex.get("grid_size")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 16:
        raise ValueError(f"profile {p.name!r}: extra['grid_size'] must be an integer >= 16, got {grid!r}.")
    mult = 2 ** len(p.strides)
    if grid % mult:
        raise ValueError(f"profile {p.name!r}: grid_size {grid} must be a multiple of {mult} "
                         f"(2 ** number of strides {list(p.strides)}); e.g. {int(math.ceil(grid / mult) * mult)}.")
    if any(int(s) > grid for s in p.patch_size[:2]):
        raise ValueError(f"profile {p.name!r}: patch_size {list(p.patch_size)} is larger than grid_size {grid}; "
                         "use a patch no larger than the grid.")
    if not isinstance(ex.get("rotations", True), bool):
        raise ValueError(f"profile {p.name!r}: extra['rotations'] must be True or False, got {ex['rotations']!r}.")
    if ex.get("tta", "dihedral") not in _TTA:
        raise ValueError(f"profile {p.name!r}: extra['tta'] must be one of {_TTA}, got {ex['tta']!r}.")
    if p.spatial_dims != 2:
        raise ValueError(f"profile {p.name!r}: the external check trains 2D networks (spatial_dims=2).")
    semi = {**SEMI_DEFAULTS, **{k: ex[k] for k in SEMI_DEFAULTS if k in ex}}
    pre = p.pretrain_steps
    if isinstance(pre, bool) or not isinstance(pre, (int, np.integer)) or pre < 0:
        raise ValueError(f"profile {p.name!r}: pretrain_steps must be an integer >= 0, got {pre!r}.")
    mode = semi_mode(p)
    if not isinstance(semi["second_stage"], bool):
        raise ValueError(f"profile {p.name!r}: extra['second_stage'] must be True or False, "
                         f"got {semi['second_stage']!r}.")
    conf = semi["pseudo_confidence"]
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= float(conf) < 1.0:
        raise ValueError(f"profile {p.name!r}: extra['pseudo_confidence'] must be a number in [0, 1), got {conf!r}.")
    share = semi["pseudo_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < float(share) < 1.0:
        raise ValueError(f"profile {p.name!r}: extra['pseudo_share'] must be a number in (0, 1), got {share!r}.")
    for k in ("student_iterations", "unlabelled_max"):
        v = semi[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"profile {p.name!r}: extra[{k!r}] must be a positive integer, got {v!r}.")
    if semi["student_init"] not in ("teacher", "random"):
        raise ValueError(f"profile {p.name!r}: extra['student_init'] must be 'teacher' or 'random', "
                         f"got {semi['student_init']!r}.")
    mls = semi["pseudo_min_lesion"]
    if isinstance(mls, bool) or not isinstance(mls, (int, float)) or not 0.0 <= float(mls) < 1.0:
        raise ValueError(f"profile {p.name!r}: extra['pseudo_min_lesion'] must be a number in [0, 1), got {mls!r}.")
    if semi["pseudo_tta"] not in _TTA:
        raise ValueError(f"profile {p.name!r}: extra['pseudo_tta'] must be one of {_TTA}, got {semi['pseudo_tta']!r}.")
    thr, w = ex.get("lesion_threshold"), ex.get("consolidation_weight", 1.0)
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 < float(thr) < 1.0):
        raise ValueError(f"profile {p.name!r}: extra['lesion_threshold'] must be None (the most probable class) or "
                         f"a number in (0, 1), got {thr!r}.")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not float(w) > 0.0:
        raise ValueError(f"profile {p.name!r}: extra['consolidation_weight'] must be a number > 0, got {w!r}.")
    if thr is None and float(w) != 1.0:
        raise ValueError(f"profile {p.name!r}: extra['consolidation_weight'] {w!r} needs a lesion_threshold "
                         "(without one the decision is the most probable class).")
    if not isinstance(ex.get("test_ensemble", False), bool):
        raise ValueError(f"profile {p.name!r}: extra['test_ensemble'] must be True or False, got {ex['test_ensemble']!r}.")
    members = ex.get("members", 1)
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or not 1 <= members <= MAX_MEMBERS:
        raise ValueError(f"profile {p.name!r}: extra['members'] must be an integer from 1 to {MAX_MEMBERS} (networks "
                         f"trained per model), got {members!r}.")
    return {"grid_size": int(grid), "rotations": bool(ex.get("rotations", True)), "tta": ex.get("tta", "dihedral"),
            "test_ensemble": bool(ex.get("test_ensemble", False)), "members": int(members),
            "lesion_threshold": None if thr is None else float(thr), "consolidation_weight": float(w),
            "semi_supervised": mode, "pretrain_steps": int(pre) if mode != "off" else 0, **semi}


def external_profile(name: str | Profile = "cpu", **overrides) -> Profile:
    """The external-check profile ``name`` (``smoke``, ``cpu``, ``long`` or ``paper``), with optional overrides.

    ``overrides`` are :class:`~sscild.profiles.Profile` fields (``semi_supervised`` and ``pretrain_steps``
    among them), plus ``grid_size``, ``rotations``, ``tta``, the decision (:data:`ARGMAX`'s keys) and the semi-supervised settings of
    :data:`SEMI_DEFAULTS`, which go into ``extra`` (the former ``semi`` is read as :data:`RENAMED_SEMI` says). A :class:`Profile` is validated and passed through.

    Example:
        >>> p = external_profile("cpu", iterations=300, rotations=False)
        >>> p.name, p.iterations, p.extra["rotations"], p.num_folds
        ('external-cpu', 300, False, 5)
    """
    if isinstance(name, Profile):
        p = name
    else:
        key = str(name).removeprefix("external-")
        if key not in EXTERNAL_PROFILES:
            raise ValueError(f"Unknown external-check profile {name!r}. Choose one of: {', '.join(EXTERNAL_PROFILES)} "
                             "(the chapter's `profile` parameter, or `make external EXTERNAL_PROFILE=...`).")
        p = EXTERNAL_PROFILES[key]
    p = in_study_words(p)
    overrides = semi_settings(overrides)
    extra_keys = {"grid_size", "rotations", "tta", "test_ensemble", "members", *ARGMAX, *SEMI_DEFAULTS}
    extra = {**(p.extra or {}), **{k: v for k, v in overrides.items() if k in extra_keys}}
    fields = {k: v for k, v in overrides.items() if k not in extra_keys}
    for k in ("channels", "strides", "patch_size"):
        if k in fields:
            fields[k] = tuple(int(v) for v in fields[k])
    try:
        p = p.with_overrides(**fields, extra=extra)
    except TypeError as e:
        raise ValueError(f"external_profile: {e}; use Profile fields or grid_size / rotations / tta / "
                         f"{' / '.join(SEMI_DEFAULTS)}.") from None
    check_extra(p)
    return p


def recipe_dict(p: Profile, threads: int) -> dict:
    """The recipe of profile ``p`` as plain values (``summary.json["recipe"]`` and the chapter's table)."""
    p = external_profile(p)
    ex = check_extra(p)
    return {
        "profile": p.name,
        "derived_from": "sscild.profiles 'cpu' (smoke for external-smoke) via Profile.with_overrides",
        "network": f"MONAI UNet 2D, channels {list(p.channels)}, strides {list(p.strides)}, "
                   f"{p.num_res_units} residual unit(s), {p.norm} norm",
        "channels": list(p.channels), "strides": list(p.strides), "num_res_units": p.num_res_units,
        "grid_size": ex["grid_size"], "patch_size": list(p.patch_size[:2]), "batch_size": p.batch_size,
        "iterations": p.iterations,
        "second_stage_iterations": (ex["student_iterations"] if ex["second_stage"]
                                    or ex["semi_supervised"] in STUDENT_MODES else 0),
        "pretrain_steps": ex["pretrain_steps"], "optimizer": p.optimizer, "learning_rate": p.learning_rate,
        "weight_decay": p.weight_decay,
        "lesion_oversample": p.lesion_oversample, "rotations": ex["rotations"], "tta": ex["tta"],
        "intensity": "v / 255 * 2 - 1 (8-bit windowed grey levels to [-1, 1])",
        "geometry": f"longer side resized to {ex['grid_size']} px, aspect kept, padded square; "
                    "probabilities resized back to each slice's size before the decision",
        "decision": ("the most probable class" if ex["lesion_threshold"] is None else
                     f"lesion where P(GGO) + P(consolidation) > {ex['lesion_threshold']:g}; of it, consolidation "
                     f"where {ex['consolidation_weight']:g} P(consolidation) > P(GGO), else GGO"),
        "lesion_threshold": ex["lesion_threshold"], "consolidation_weight": ex["consolidation_weight"],
        "loss": "DiceCELoss (sscild.model.train.train_model), 3 classes, Dice over "
                + ("the whole batch" if p.batch_dice else "each slice"),
        "folds": p.num_folds, "seed": p.seed, "split": "by slice (no patient ids in the benchmark), "
                                                        "stratified by consolidation share",
        "members": ex["members"],
        "test_prediction": ("mean softmax of the model trained on all labelled slices and the "
                            f"{p.num_folds} cross-validation fold models" if ex["test_ensemble"]
                            else "the model trained on all labelled slices")
                           + (f"; each model the mean of {ex['members']} networks trained with other seeds"
                              if ex["members"] > 1 else ""),
        "semi_supervised": (
            f"consistency learning: the supervised model is trained {ex['student_iterations']} more iterations "
            f"from its own weights, each step beside {max(2, p.batch_size)} of up to {ex['unlabelled_max']} "
            "unlabelled slices, matching on a strongly perturbed view (intensity changes, CutMix) a mean "
            f"teacher's labels of a weakly perturbed one (pixels below {ex['pseudo_confidence']} confidence ignored)"
            if ex["semi_supervised"] == "consistency" else
            "off" if ex["semi_supervised"] != "self-training" and not ex["second_stage"] else
            f"off; the supervised model is trained {ex['student_iterations']} more iterations from its own "
            "weights (warm restart of the schedule) on the labelled slices only"
            if ex["semi_supervised"] != "self-training" else
            f"self-training: the supervised teacher labels up to {ex['unlabelled_max']} unlabelled slices "
            f"({ex['pseudo_tta']} TTA), pixels below {ex['pseudo_confidence']} confidence ignored; the student "
            f"trains {ex['student_iterations']} iterations from the {ex['student_init']} weights, "
            f"{ex['pseudo_share']:.0%} of each batch pseudo-labelled"
            + (f"; only slices with >= {ex['pseudo_min_lesion']:.1%} confident lesion kept"
               if ex["pseudo_min_lesion"] else "")),
        "pretraining": (f"{ex['pretrain_steps']} steps restoring corrupted unlabelled slices (sscild.external.pretrain); "
                        "every first stage starts from those weights" if ex["pretrain_steps"] else "none"),
        "threads": threads,
    }


def run_folder(profile: str | Profile, results: str | Path) -> Path:
    """Where ``make external`` puts the run of an external profile: ``<results>/external`` for the
    default ``cpu``, ``<results>/external-<name>`` for another (``external-long``, ``external-smoke``), so
    that running one profile never overwrites another's models and scores.

    >>> run_folder("cpu", "results").as_posix(), run_folder("long", "results").as_posix()
    ('results/external', 'results/external-long')
    """
    name = external_profile(profile).name.removeprefix("external-")
    return Path(results) / ("external" if name == "cpu" else f"external-{name}")
