"""How the recipe was chosen: the screens' variants (:data:`SEARCH_VARIANTS`), :func:`search_recipes`,
which cross-validates variants on the training part only, and the tables of the recorded screens
(per-slice scores in ``benchmarks/external_*_screen.csv``; the first screen's summary is
``benchmarks/external_recipe_search.json``). How each screen was run, and why it chose what it chose,
is told in the appendix (``notebooks/A1_external.py``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.evaluation.metrics import summarize
from sscild.external.recipe import external_profile
from sscild.external.runs import cross_validate
from sscild.external.scores import summarize_scores
from sscild.external.slices import CLASS_NAMES, read_slice_folder, read_unlabelled_folder
from sscild.external.training import profile_key
from sscild.paths import atomic_path, repo_root
from sscild.profiles import Profile

__all__ = [
    "semi_screen",
    "lever_screen",
    "screen_table",
    "SEARCH_VARIANTS",
    "search_recipes",
]


def semi_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The second recipe screen (self-training and its control, fold 0) from its recorded per-slice
    scores (``benchmarks/external_semi_screen.csv``): Dice per variant with 95 % BCa intervals over
    the 10 held-out slices, pooled Dice, the paired gain over the supervised row and, for the
    self-training rows, the paired gain over the control (the same extra steps without unlabelled
    slices): the gain from the unlabelled data itself.

    ``None`` when the file is absent. Re-running it: one variant of :data:`SEARCH_VARIANTS` at a time,
    ``python -m sscild.external search TRAIN_DIR OUT --folds 0 --unlabelled-dir UNLABELLED_DIR --only VARIANT``.
    """
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_semi_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="supervised",
                        control_prefix="control", treated_prefix="self-training",
                        control_name="the unlabelled slices (vs control)")


def lever_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The third recipe screen (nnU-Net's levers on the two-stage recipe, folds 0-2) from its recorded
    per-slice scores (``benchmarks/external_lever_screen.csv``): Dice per variant with 95 % BCa
    intervals over the 30 held-out slices, pooled Dice and the paired gain over the first row (the
    recipe as it was). ``None`` when the file is absent. Re-running it: each variant of
    :data:`SEARCH_VARIANTS` on folds 0-2 (``--folds 0 1 2``), recorded by ``scripts/record_screen.py``."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_lever_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="the first row")


def screen_table(df: pd.DataFrame, *, n_boot: int = 2000, baseline_name: str = "the first row",
                 control_prefix: str | None = None, treated_prefix: str | None = None,
                 control_name: str = "") -> pd.DataFrame:
    """A screen's table from per-slice scores of several variants on the same held-out slices
    (columns ``variant``, ``slice_id``, the Dice and pixel counts of
    :func:`~sscild.external.scores.score_slices`; the first variant is the baseline).

    One row per variant: Dice with 95 % BCa intervals, pooled Dice, the paired gain over the
    baseline and, for variants named ``treated_prefix...``, the paired gain over the variant named
    ``control_prefix...`` (column "gain from ``control_name``")."""
    variants = list(dict.fromkeys(df["variant"]))
    base = df[df["variant"] == variants[0]].set_index("slice_id")
    control = next((v for v in variants if control_prefix and v.startswith(control_prefix)), None)
    cols = [f"dice_{n}" for n in CLASS_NAMES]
    labels = ("GGO", "consolidation")

    def gain(a: pd.DataFrame, b: pd.DataFrame) -> dict:
        g = summarize((a[cols] - b[cols]).reset_index(drop=True), columns=cols, n_boot=n_boot, seed=0).set_index("metric")
        return {label: f"{g.loc[f'dice_{n}', 'mean']:+.3f} [{g.loc[f'dice_{n}', 'ci_low']:+.3f}, "
                       f"{g.loc[f'dice_{n}', 'ci_high']:+.3f}]" for n, label in zip(CLASS_NAMES, labels)}

    rows = []
    for v in variants:
        d = df[df["variant"] == v].set_index("slice_id")
        if sorted(d.index) != sorted(base.index):
            raise ValueError(f"screen variant {v!r} was scored on other slices than {variants[0]!r}")
        d = d.loc[base.index]
        sm = summarize_scores(d.reset_index(), n_boot=n_boot, seed=0)
        row = {"variant": v}
        for n, label in zip(CLASS_NAMES, labels):
            lo, hi = sm[f"dice_{n}_ci"]
            row[f"Dice {label} [95% CI]"] = f"{sm[f'dice_{n}']:.3f} [{lo:.3f}, {hi:.3f}]"
        for n, label in zip(CLASS_NAMES, labels):
            row[f"pooled {label}"] = f"{sm[f'pooled_dice_{n}']:.3f}"
        g = gain(d, base) if v != variants[0] else {k: "" for k in labels}
        row |= {f"gain over {baseline_name}, {k} [95% CI]": x for k, x in g.items()}
        if control is not None:
            c = (gain(d, df[df["variant"] == control].set_index("slice_id").loc[base.index])
                 if treated_prefix and v.startswith(treated_prefix) else {k: "" for k in labels})
            row |= {f"gain from {control_name}, {k} [95% CI]": x for k, x in c.items()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


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

SEARCH_VARIANTS: dict[str, dict] = {
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
    "self-supervised pretraining on the unlabelled slices, 2000 steps": {"pretrain_steps": 2000},
    "self-supervised pretraining on the unlabelled slices, 4000 steps": {"pretrain_steps": 4000},
}
"""Variants for :func:`search_recipes`: name -> overrides of the ``cpu`` external profile."""


def search_recipes(train_dir: str | Path, out_dir: str | Path, variants: Mapping[str, Mapping] | None = None, *,
                   base: str | Profile = "cpu", folds: Sequence[int] | None = None, n_boot: int = 1000,
                   unlabelled_dir: str | Path | None = None, log=print) -> pd.DataFrame:
    """Cross-validate each variant (overrides of ``base``) on the training folder only.

    Args:
        train_dir: the labelled training folder (no test data is read).
        out_dir: where each trained recipe gets a folder (named by a hash of its training
            settings, so variants differing only at test time share their models).
        variants: name -> overrides of :func:`sscild.external.recipe.external_profile`; default :data:`SEARCH_VARIANTS`.
        base: the profile the overrides apply to.
        folds: screen on these folds only (default all).
        unlabelled_dir: unlabelled slices for the variants that use them (``semi_supervised``).

    Returns:
        One row per variant: its overrides, the slices scored, cross-validated Dice (per-slice mean
        and pooled) and the mean training CPU seconds per fold; also ``out_dir/search.csv``.
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
        cpu = [f["train_cpu_seconds"] for f in info["folds"] if f.get("train_cpu_seconds") is not None]
        rows.append({"variant": name, "overrides": json.dumps(dict(ov)),
                     "folds": ",".join(str(f["fold"]) for f in info["folds"]),
                     "slices": len(scores),
                     **{k: round(s[k], 3) for k in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo",
                                                     "pooled_dice_consolidation")},
                     "train_cpu_seconds_per_fold": round(float(np.mean(cpu)), 0) if cpu else float("nan"),
                     "folder": tag})
        if log:
            log(f"[search] {rows[-1]}")
        with atomic_path(Path(out_dir) / "search.csv", suffix=".csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    return pd.DataFrame(rows)
