"""Training one model on labelled slices: supervised, or in two stages (a teacher, then a student
that continues from it, with or without pseudo-labelled unlabelled slices); a finished model trained
on the same slices with the same recipe is reused."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sscild.errors import InputError
from sscild.external.grid import training_case
from sscild.external.predict import pseudo_label_cases
from sscild.external.recipe import SEMI_DEFAULTS, check_extra, external_profile
from sscild.external.slices import CLASS_NAMES, SliceImage, natural_key
from sscild.model.loading import load_fold_model
from sscild.model.train import train_model
from sscild.model.checkpoint import training_recipe
from sscild.paths import read_json, write_json
from sscild.profiles import Profile

__all__ = ["profile_key", "semi_on", "train_or_load", "train_semi"]


def profile_key(p: Profile) -> dict:
    """The settings a trained model depends on: the training recipe of :mod:`sscild.model.train` and the
    image-folder settings (test-time augmentation is not one of them; the semi-supervised settings
    only when the mode is on, so a supervised model and a self-training teacher share their key)."""
    key = training_recipe(p)
    key["extra"] = {k: v for k, v in sorted((p.extra or {}).items())
                    if k not in ("tta", "test_ensemble") and k not in SEMI_DEFAULTS}
    ex = check_extra(p)
    if ex["semi"] != "off":
        key["semi"] = {k: ex[k] for k in SEMI_DEFAULTS}
    return key


def semi_on(p: Profile, unlabelled: Mapping[str, SliceImage] | None) -> bool:
    """Whether ``p`` trains in two stages: ``"fine-tune"``, or ``"self-training"`` with unlabelled slices."""
    mode = check_extra(p)["semi"]
    return mode == "fine-tune" or (mode == "self-training" and bool(unlabelled))


def _spread(ids: Sequence[str], n: int) -> list[str]:
    """``n`` ids spread evenly over ``ids`` (all when there are no more than ``n``)."""
    ids = list(ids)
    if len(ids) <= n:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]


def train_or_load(train: Mapping[str, SliceImage], p: Profile, out: Path, *, key: int, progress: bool,
                  desc: str) -> tuple[torch.nn.Module, dict, bool]:
    """Train on ``train`` into ``out`` (or reuse a finished model trained on the same slices and recipe).

    Returns (network in eval mode, training summary, whether it was reused rather than trained now)."""
    out = Path(out)
    ident = {"train_slices": sorted(train, key=natural_key), "key": int(key), "recipe": profile_key(p)}
    ident_path, summary_path, model_path = out / "recipe_key.json", out / "train_summary.json", out / "model_final.pt"
    if ident_path.exists() and json.loads(json.dumps(ident)) != read_json(ident_path):
        shutil.rmtree(out)  # a different recipe or training set: start again (derived files only)
    if summary_path.exists() and model_path.exists():
        net, _ = load_fold_model(model_path)
        return net, read_json(summary_path), True
    write_json(ident_path, ident)
    cases = {sid: training_case(s, p) for sid, s in train.items()}
    cpu0 = time.process_time()
    res = train_model(cases, p, out, key=key, num_classes=3, class_names=CLASS_NAMES, progress=progress, desc=desc)
    summary = {**res, "cpu_seconds": round(time.process_time() - cpu0, 2), "key": int(key), "profile": p.name,
               "train_slices": ident["train_slices"]}
    write_json(summary_path, summary)
    net, _ = load_fold_model(model_path)
    return net, summary, False


def train_semi(train: Mapping[str, SliceImage], unlabelled: Mapping[str, SliceImage], p: Profile, out: Path, *,
               key: int, progress: bool, desc: str) -> tuple[torch.nn.Module, torch.nn.Module, dict, bool]:
    """Self-training on ``train`` (labelled) and ``unlabelled``: the teacher is the supervised model of
    the same slices and recipe (``out/teacher``); it labels the unlabelled slices; the student trains
    into ``out``. Only ``train`` and ``unlabelled`` are ever read, so a held-out slice cannot reach
    its fold's teacher, pseudo-labels or student.

    Returns (student, teacher, summary, whether the student was reused)."""
    out = Path(out)
    ex = check_extra(p)
    sup = external_profile(p, semi="off")
    teacher, t_summ, t_reused = train_or_load(train, sup, out / "teacher", key=key, progress=progress,
                                              desc=f"{desc}, teacher")
    if ex["semi"] == "fine-tune":
        unlabelled = {}
    use = _spread(sorted(unlabelled, key=natural_key), ex["unlabelled_max"])
    u_digest = hashlib.sha1("".join(unlabelled[u].digest() for u in use).encode()).hexdigest()
    ident = {"train_slices": sorted(train, key=natural_key), "key": int(key), "recipe": profile_key(p),
             "unlabelled": {"n": len(use), "sha1": u_digest}}
    ident_path, summary_path, model_path = out / "recipe_key.json", out / "train_summary.json", out / "model_final.pt"
    if ident_path.exists() and json.loads(json.dumps(ident)) != read_json(ident_path):
        for f in out.iterdir():  # a different recipe, training set or unlabelled set: the student starts again
            if f.name != "teacher":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    if summary_path.exists() and model_path.exists():
        net, _ = load_fold_model(model_path)
        return net, teacher, read_json(summary_path), True
    write_json(ident_path, ident)
    cpu0, w0 = time.process_time(), time.perf_counter()
    pseudo, stats = pseudo_label_cases(teacher, {u: unlabelled[u] for u in use}, p) if use else ({}, {"slices": 0})
    if use and not pseudo:
        raise InputError(f"{desc}: none of the {len(use)} unlabelled slices has a confident lesion share of at least "
                         f"{ex['pseudo_min_lesion']:.1%}; lower pseudo_min_lesion or pseudo_confidence.")
    stats["seconds"] = round(time.perf_counter() - w0, 2)
    init = None
    if ex["student_init"] == "teacher":
        init = torch.load(out / "teacher" / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    cases = {sid: training_case(s, p) for sid, s in train.items()}
    res = train_model(cases, p, out, key=key, num_classes=3, class_names=CLASS_NAMES, progress=progress,
                      desc=f"{desc}, student", iterations=ex["student_iterations"], pseudo_cases=pseudo or None,
                      pseudo_share=ex["pseudo_share"] if pseudo else 0.0, init_state=init)
    student_s = res["seconds"]
    teacher_cpu = 0.0 if t_reused else float(t_summ.get("cpu_seconds") or 0.0)
    summary = {**res, "cpu_seconds": round(time.process_time() - cpu0 + teacher_cpu, 2),
               "seconds": round(stats["seconds"] + student_s + (t_summ.get("seconds") or 0), 2),
               "student_seconds": student_s, "teacher_seconds": t_summ.get("seconds"), "pseudo": stats,
               "key": int(key), "profile": p.name, "train_slices": ident["train_slices"],
               "unlabelled_slices": len(use)}
    write_json(summary_path, summary)
    net, _ = load_fold_model(model_path)
    return net, teacher, summary, False
