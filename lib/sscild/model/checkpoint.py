"""What a fold's training writes to resume and to finish: the recipe it was trained with, the latest
checkpoint, the final model file.

* **Recipe** (:data:`RECIPE_KEYS`, :func:`training_recipe`): the profile settings that change what
  training produces. A checkpoint or a finished fold trained with other settings is stale: it is
  neither resumed nor reused (:func:`recipe_diff` says what changed).
* **Checkpoint** (``checkpoint_latest.pt``, every ``profile.checkpoint_every`` steps): network,
  optimiser, scheduler and gradient-scaler state, the step, the log so far, the recipe and the
  seconds spent; :func:`resume_training` restores all of it, so a resumed run continues exactly as an
  uninterrupted one would.
* **Final model** (``model_final.pt``, :func:`final_model_state`): the weights, the profile, the
  cases it was trained on and what it segments (label scheme, input kind), so ``sscild segment`` can
  refuse a model of another task.

Example:
    >>> from sscild.profiles import get_profile
    >>> recipe_diff({"iterations": 10}, {**training_recipe(get_profile("smoke")), "iterations": 20})
    ['iterations: 10 -> 20']
"""

from __future__ import annotations

from pathlib import Path

import torch

from sscild.paths import atomic_path
from sscild.profiles import Profile

__all__ = ["RECIPE_KEYS", "training_recipe", "recipe_diff", "save_checkpoint", "resume_training",
           "final_model_state"]

RECIPE_KEYS = ("architecture", "spatial_dims", "channels", "strides", "num_res_units", "dropout", "norm", "patch_size",
               "iterations", "batch_size", "learning_rate", "weight_decay", "batch_dice", "intensity_aug",
               "lung_density_aug", "lung_density_hu", "kernel_aug", "lowres_aug",
               "optimizer", "deep_supervision", "lesion_oversample", "cpu_bf16", "channels_last",
               "seed", "target_spacing", "hu_clip")
"""Profile settings that change what training produces; a fold trained with others is stale."""


def training_recipe(p: Profile, iterations: int | None = None) -> dict:
    """The settings (:data:`RECIPE_KEYS`) a fold is trained with, JSON-ready (tuples as lists)."""
    d = p.to_dict()
    d["iterations"] = int(iterations or p.iterations)
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RECIPE_KEYS}


def recipe_diff(saved: dict, now: dict) -> list[str]:
    """``"key: saved -> now"`` for every recipe setting in which ``saved`` differs from ``now``.

    A setting ``saved`` does not record was added to the recipe after it was written; it was trained
    with that setting's default (the :class:`~sscild.profiles.Profile` field's), so a later profile
    that changes it still finds the old fold stale.
    """
    out = []
    for k in RECIPE_KEYS:
        if k not in now:
            continue
        if k in saved:
            old = saved[k]
        elif k in _NEW_KEY_DEFAULTS:
            old = _NEW_KEY_DEFAULTS[k]
        else:
            continue
        if old != now[k]:
            out.append(f"{k}: {old!r} -> {now[k]!r}")
    return out


_NEW_KEY_DEFAULTS = {"architecture": "unet", "lung_density_aug": 0.0, "lung_density_hu": [-110.0, 0.0],
                     "kernel_aug": 0.0, "lowres_aug": 0.0}
"""Recipe settings added after recipes were first recorded, with the value every older recipe had."""


def save_checkpoint(path: Path, net, opt, sched, scaler, *, step: int, history: list, epochs: list, recipe: dict,
                    seconds: float) -> None:
    """Write ``checkpoint_latest.pt`` atomically (a killed run leaves the previous one whole)."""
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "history": history, "epochs": epochs,
             "recipe": recipe,
             "seconds": seconds}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def resume_training(path: Path, net, opt, sched, scaler, *, recipe: dict, profile_name: str,
                    device) -> tuple[int, list, list, float]:
    """Restore the training state from the checkpoint at ``path``, when there is one.

    Returns:
        ``(step, history, epochs, seconds spent before)``; ``(0, [], [], 0.0)`` without a checkpoint.

    Raises:
        ValueError: the checkpoint was written with another recipe, or (when both record ``"init"``,
            an identity of the starting weights) from other starting weights.
    """
    if not path.exists():
        return 0, [], [], 0.0
    state = torch.load(path, map_location=device, weights_only=False)
    saved = state.get("recipe", {})
    diff = recipe_diff(saved, recipe)
    if "init" in saved and "init" in recipe and saved["init"] != recipe["init"]:
        diff.append("initial weights: " + ("a random initialisation" if saved["init"] == "random" else "given weights")
                    + " -> " + ("a random initialisation" if recipe["init"] == "random" else "other given weights"))
    if saved.get("consistency") != recipe.get("consistency"):
        diff.append(f"consistency learning: {saved.get('consistency')!r} -> {recipe.get('consistency')!r}")
    if diff:
        raise ValueError(f"{path} was written with other settings than profile {profile_name!r} now has "
                         f"({'; '.join(diff)}); it cannot be resumed. Delete it to start this fold afresh.")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"]), state["history"], state["epochs"], float(state.get("seconds", 0.0))


def final_model_state(net, p: Profile, *, key: int, num_classes: int, class_names, train_cases,
                      cohort: dict | None = None) -> dict:
    """The content of ``model_final.pt``: weights, profile, fold, classes, training cases, what it segments,
    and (when given) the training cohort (``{"name", "synthetic"}``, :func:`sscild.model.train.cohort_identity`)."""
    extra = {"training_cohort": dict(cohort)} if cohort else {}
    return {"model": net.state_dict(), "profile": p.to_dict(), "fold": int(key), "num_classes": num_classes,
            "class_names": list(class_names), "train_cases": sorted(train_cases),
            # what the model segments, so `sscild segment` can refuse a model of another task
            "label_scheme": {"background": 0, **{str(c): i + 1 for i, c in enumerate(class_names)}},
            "input_kind": "2d-image-slices" if (p.extra or {}).get("grid_size") else "ct-volume-hu", **extra}
