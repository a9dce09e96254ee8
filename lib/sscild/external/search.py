"""How the recipe was chosen, re-runnable: the screens' variants (:data:`SEARCH_VARIANTS`) and
:func:`search_recipes`, which cross-validates variants on the training part only and writes their
per-slice scores (``python -m sscild.external search``). The recorded screens it produced are
read as tables by :mod:`sscild.external.screens`; how each screen was run, and why it chose what it
chose, is told in the appendix (``notebooks/A1_external.py``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.external.recipe import ARGMAX, external_profile
from sscild.external.runs import cross_validate
from sscild.external.scores import summarize_scores
from sscild.external.slices import read_slice_folder, read_unlabelled_folder
from sscild.external.training import profile_key
from sscild.paths import atomic_path
from sscild.profiles import Profile

__all__ = ["SEARCH_VARIANTS", "search_recipes"]


_FIRST_SCREEN: dict[str, dict] = {
    "chosen recipe": {},
    "chosen, flip-only TTA": {"tta": "flip"},
    "chosen, no TTA": {"tta": "none"},
    "no 90-degree rotations in training (flip TTA)": {"rotations": False, "tta": "flip"},
    "learning rate 5e-3": {"learning_rate": 5e-3},
    "2 residual units": {"num_res_units": 2},
    "2 residual units, 1000 iterations": {"num_res_units": 2, "iterations": 1000},
    "2 residual units, batch 2, 2000 iterations": {"num_res_units": 2, "batch_size": 2, "iterations": 2000},
    "2 residual units, grid 160": {"num_res_units": 2, "grid_size": 160, "patch_size": (160, 160)},
    "2 residual units, grid 256, 192-px patches, batch 8, 600 iterations":
        {"num_res_units": 2, "grid_size": 256, "batch_size": 8, "iterations": 600},
    "batch Dice": {"batch_dice": True},
    "batch Dice, 2 residual units": {"batch_dice": True, "num_res_units": 2},
    "batch Dice, batch 8, 1000 iterations": {"batch_dice": True, "batch_size": 8, "iterations": 1000},
    "strong intensity augmentation": {"intensity_aug": "strong"},
}

_SELF_TRAINING = {"semi_supervised": "self-training", "second_stage": False}

_SECOND_SCREEN: dict[str, dict] = {
    "self-training, student from teacher, 1000 iterations": _SELF_TRAINING,
    "control: teacher fine-tuned 1000 more iterations, no unlabelled slices":
        {"semi_supervised": "off", "second_stage": True},
    "nnU-Net-style augmentation (blur, low resolution, gamma, wider rotation and scaling)": {"intensity_aug": "nnunet"},
    "self-training, confidence 0.7": {**_SELF_TRAINING, "pseudo_confidence": 0.7},
    "self-training, all 1600 slices labelled, those with >= 1 % lesion kept":
        {**_SELF_TRAINING, "unlabelled_max": 1600, "pseudo_min_lesion": 0.01},
    "self-training, student afresh, 1500 iterations": {**_SELF_TRAINING, "student_init": "random",
                                                        "student_iterations": 1500},
}

_THIRD_SCREEN: dict[str, dict] = {  # on the two-stage recipe; the nnU-Net augmentation row above is its first lever
    "recipe as it was: two stages, 1500 + 1000 iterations": {},
    "grid 256, whole slices": {"grid_size": 256, "patch_size": (256, 256)},
    "deep supervision, 2 levels": {"deep_supervision": 2},
    "SGD, Nesterov, lr 1e-2": {"optimizer": "sgd", "learning_rate": 1e-2},
    "2500 + 1000 iterations": {"iterations": 2500},
    "5 levels (channels 16-256)": {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
}

_FOURTH_SCREEN: dict[str, dict] = {  # on the adopted cpu recipe (pretraining, two stages)
    "control: the cpu recipe, second stage on the labelled slices only": {},
    "consistency learning in the second stage (mean teacher, strong view, CutMix)": {"semi_supervised": "consistency"},
}

_FIFTH_SCREEN: dict[str, dict] = {  # for a longer cpu budget, on the third screen's base (two stages, no pretraining),
    # beside its rows "grid 256, whole slices" (resolution) and "2500 + 1000 iterations" (steps)
    "channels 24-192 (1.5x width)": {"channels": (24, 48, 96, 192)},
    "grid 320, whole slices": {"grid_size": 320, "patch_size": (320, 320)},
}

_SIXTH_SCREEN: dict[str, dict] = {  # on the adopted cpu recipe (pretraining, two stages): its first-stage steps,
    # beside the fourth screen's control (1500 + 1000 iterations)
    "the long profile: 2500 + 1000 iterations, pretrained": {"iterations": 2500},
    "5000 + 1000 iterations, pretrained": {"iterations": 5000},
}

_SEVENTH_SCREEN: dict[str, dict] = {  # the decision from the probabilities, on the cpu recipe as adopted
    "the cpu recipe, the most probable class": dict(ARGMAX),
    "the cpu recipe, lesion where P(GGO) + P(consolidation) > 0.4, consolidation where 0.7 P(consolidation) > P(GGO)":
        {"lesion_threshold": 0.4, "consolidation_weight": 0.7},
    # the same two decisions on the long profile's models, which took no part in the choice
    "the long profile, the most probable class": {"iterations": 2500, **ARGMAX},
    "the long profile, lesion where P(GGO) + P(consolidation) > 0.4, consolidation where 0.7 P(consolidation) > P(GGO)":
        {"iterations": 2500, "lesion_threshold": 0.4, "consolidation_weight": 0.7},
}

_EIGHTH_SCREEN: dict[str, dict] = {  # a longer budget spent on members, with the decision as adopted; beside the
    # seventh screen's rows for the cpu recipe and the long profile with that decision
    "the long profile with two members (networks per model, seed keys k and k + 100)": {"iterations": 2500, "members": 2},
}

_NINTH_SCREEN: dict[str, dict] = {  # the sampler, with the decision as adopted, against the cpu recipe (seventh screen's row)
    "the cpu recipe, every patch centred on any lesion pixel (no consolidation emphasis)": {"lesion_oversample": 0.0},
}

_TENTH_SCREEN: dict[str, dict] = {  # other networks, each pretrained afresh, with the decision as adopted
    "the cpu recipe with a fifth level (channels 16-256)": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]},
    "the cpu recipe on a plain two-convolution U-Net (nnU-Net blocks), five levels 8-128":
        {"architecture": "plain", "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 0},
}

_EARLIER: dict[str, dict] = {
    # every screen before the third ran without pretraining (pretrain_steps 0): the variants say so, so that they
    # re-run as they were recorded now that the cpu recipe pretrains
    # the first screen (benchmarks/external_recipe_search.json) trained one stage: its variants keep the second
    # stage off
    **{name: {"semi_supervised": "off", "second_stage": False, "pretrain_steps": 0, **ov}
       for name, ov in _FIRST_SCREEN.items()},
    # the second screen (semi_screen)
    **{name: {"pretrain_steps": 0, **ov} for name, ov in _SECOND_SCREEN.items()},
    # the third screen (lever_screen); its adopted lever is the cpu recipe's pretraining
    **{name: {"pretrain_steps": 0, **ov} for name, ov in _THIRD_SCREEN.items()},
    # the fifth screen (width and resolution for the long profile) on the same base
    **{name: {"pretrain_steps": 0, **ov} for name, ov in _FIFTH_SCREEN.items()},
    "self-supervised pretraining on the unlabelled slices, 2000 steps": {"pretrain_steps": 2000},
    "self-supervised pretraining on the unlabelled slices, 4000 steps": {"pretrain_steps": 4000},
    # the fourth screen (consistency_screen): the cpu recipe as adopted, against consistency learning
    **_FOURTH_SCREEN,
    # the sixth screen (first-stage steps with the pretraining, for the long profile)
    **_SIXTH_SCREEN,
}

SEARCH_VARIANTS: dict[str, dict] = {
    # the screens before the seventh scored the most probable class: their variants say so, so that they re-run
    # as they were recorded now that the cpu recipe decides with a lesion threshold
    **{name: {**ARGMAX, **ov} for name, ov in _EARLIER.items()},
    # the seventh screen (the decision; both variants share their models, the decision is not a training setting)
    **_SEVENTH_SCREEN,
    # the eighth screen (members; the first member of each model is the long profile's network, reused)
    **_EIGHTH_SCREEN,
    # the ninth screen (the sampler's consolidation emphasis)
    **_NINTH_SCREEN,
    # the tenth screen (the network: one level more, or nnU-Net's plain blocks)
    **_TENTH_SCREEN,
}
"""Variants for :func:`search_recipes`: name -> overrides of the ``cpu`` external profile."""


def search_recipes(train_dir: str | Path, out_dir: str | Path, variants: Mapping[str, Mapping] | None = None, *,
                   base: str | Profile = "cpu", folds: Sequence[int] | None = None, n_boot: int = 1000,
                   unlabelled_dir: str | Path | None = None, log=print) -> pd.DataFrame:
    """Cross-validate each variant (overrides of ``base``) on the training folder only.

    Args:
        train_dir: the labelled training folder (no test data is read).
        out_dir: where each trained recipe gets a folder (named by a hash of its training
            settings, so variants differing only at test time share their models); each variant's
            per-slice scores go to ``<folder>/scores_<hash of its overrides>.csv`` (the folder's own
            ``scores.csv`` holds the last variant scored with its models).
        variants: name -> overrides of :func:`sscild.external.recipe.external_profile`; default :data:`SEARCH_VARIANTS`.
        base: the profile the overrides apply to.
        folds: screen on these folds only (default all).
        unlabelled_dir: unlabelled slices for the variants that use them (``semi_supervised``).

    Returns:
        One row per variant: its overrides, the slices scored, cross-validated Dice (per-slice mean
        and pooled), the mean training CPU seconds per fold and the variant's per-slice scores file
        (relative to ``out_dir``); also ``out_dir/search.csv``.
    """
    variants = dict(variants if variants is not None else SEARCH_VARIANTS)
    if not variants:
        raise ValueError("search_recipes: no variants given")
    train = read_slice_folder(train_dir, what="training folder")
    unlabelled = read_unlabelled_folder(unlabelled_dir) if unlabelled_dir not in (None, "") else None
    rows = []
    for name, ov in variants.items():
        p = external_profile(base, **dict(ov))
        tag = hashlib.sha1(json.dumps(profile_key(p), sort_keys=True).encode()).hexdigest()[:10]
        scores, info = cross_validate(train, Path(out_dir) / tag, p, folds=folds, log=log, unlabelled=unlabelled)
        s = summarize_scores(scores, n_boot=n_boot, seed=p.seed)
        mine = Path(tag) / f"scores_{hashlib.sha1(json.dumps(dict(ov), sort_keys=True).encode()).hexdigest()[:10]}.csv"
        with atomic_path(Path(out_dir) / mine, suffix=".csv") as tmp:
            scores.to_csv(tmp, index=False)
        cpu = [f["train_cpu_seconds"] for f in info["folds"] if f.get("train_cpu_seconds") is not None]
        rows.append({"variant": name, "overrides": json.dumps(dict(ov)),
                     "folds": ",".join(str(f["fold"]) for f in info["folds"]),
                     "slices": len(scores),
                     **{k: round(s[k], 3) for k in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo",
                                                     "pooled_dice_consolidation")},
                     "train_cpu_seconds_per_fold": round(float(np.mean(cpu)), 0) if cpu else float("nan"),
                     "folder": tag, "scores": str(mine)})
        if log:
            log(f"[search] {rows[-1]}")
        with atomic_path(Path(out_dir) / "search.csv", suffix=".csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    return pd.DataFrame(rows)
