"""Training one model on labelled slices: supervised, or in two stages (a teacher, then a student
that continues from it, with or without pseudo-labelled unlabelled slices); a finished model trained
on the same slices with the same recipe is reused."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sscild.errors import InputError
from sscild.external.grid import training_case
from sscild.external.predict import pseudo_label_cases
from sscild.external.pretrain import slice_batches
from sscild.external.recipe import (ARGMAX, SEMI_DEFAULTS, STUDENT_MODES, check_extra, external_profile,
                                    in_study_words, semi_settings)
from sscild.external.slices import CLASS_NAMES, SliceImage, natural_key
from sscild.model.consistency import ConsistencySettings
from sscild.model.loading import load_fold_model
from sscild.model.train import train_model
from sscild.model.checkpoint import training_recipe
from sscild.paths import read_json, write_json
from sscild.profiles import Profile

__all__ = ["Init", "TrainTask", "profile_key", "recorded_ident", "semi_on", "train_or_load", "train_semi", "train_many",
           "training_jobs"]


@dataclass(frozen=True)
class Init:
    """Starting weights for a model's first stage: a network state dict and an id of what made it."""

    state: dict
    ident: str


def profile_key(p: Profile) -> dict:
    """The settings a trained model depends on: the training recipe of :mod:`sscild.model.train` and the
    image-folder settings with the pretraining steps (test-time augmentation, the decision from the
    probabilities and the number of members are not among them -- a member's own seed key is in its
    reuse key; the
    semi-supervised settings only with a second stage, so a supervised model and a self-training teacher
    share their key)."""
    p = in_study_words(p)
    ex = check_extra(p)
    key = training_recipe(p)
    if key["architecture"] == "unet":  # the network every run had before the choice existed: its keys stay as they were
        del key["architecture"]
    key["extra"] = {k: v for k, v in sorted({**p.extra, "pretrain_steps": ex["pretrain_steps"]}.items())
                    if k not in ("tta", "test_ensemble", "members", *ARGMAX) and k not in SEMI_DEFAULTS}
    if ex["second_stage"] or ex["semi_supervised"] in STUDENT_MODES:
        key["semi"] = {"semi_supervised": ex["semi_supervised"], **{k: ex[k] for k in SEMI_DEFAULTS}}
    return key


def recorded_ident(rec: dict) -> dict:
    """A model's recorded ``recipe_key.json`` with semi-supervised settings of the former name read in
    the study's words (:func:`sscild.external.recipe.semi_settings`), so a model trained before the
    renaming is still found finished: a recorded ``"fine-tune"`` reads as ``"pretrain"`` with the second
    stage, or ``"off"`` when the recipe had no pretraining steps."""
    semi = (rec.get("recipe") or {}).get("semi")
    if not isinstance(semi, dict) or "semi" not in semi:
        return rec
    new = semi_settings(semi)
    if new["semi_supervised"] == "pretrain" and not rec["recipe"].get("extra", {}).get("pretrain_steps"):
        new["semi_supervised"] = "off"
    return {**rec, "recipe": {**rec["recipe"], "semi": new}}


def semi_on(p: Profile, unlabelled: Mapping[str, SliceImage] | None) -> bool:
    """Whether ``p`` trains in two stages: ``"self-training"`` or ``"consistency"`` with unlabelled
    slices, or ``second_stage``."""
    ex = check_extra(p)
    return ex["second_stage"] or (ex["semi_supervised"] in STUDENT_MODES and bool(unlabelled))


def _spread(ids: Sequence[str], n: int) -> list[str]:
    """``n`` ids spread evenly over ``ids`` (all when there are no more than ``n``)."""
    ids = list(ids)
    if len(ids) <= n:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]


def train_or_load(train: Mapping[str, SliceImage], p: Profile, out: Path, *, key: int, progress: bool,
                  desc: str, init: Init | None = None) -> tuple[torch.nn.Module, dict, bool]:
    """Train on ``train`` into ``out`` (or reuse a finished model trained on the same slices and recipe).

    ``init``: start from these weights (self-supervised pretraining, :mod:`sscild.external.pretrain`)
    rather than a random initialisation; its id enters the reuse key.

    Returns (network in eval mode, training summary, whether it was reused rather than trained now)."""
    out = Path(out)
    ident = {"train_slices": sorted(train, key=natural_key), "key": int(key), "recipe": profile_key(p)}
    if init is not None:
        ident["init"] = init.ident
    ident_path, summary_path, model_path = out / "recipe_key.json", out / "train_summary.json", out / "model_final.pt"
    if ident_path.exists() and json.loads(json.dumps(ident)) != recorded_ident(read_json(ident_path)):
        shutil.rmtree(out)  # a different recipe or training set: start again (derived files only)
    if summary_path.exists() and model_path.exists():
        net, _ = load_fold_model(model_path)
        return net, read_json(summary_path), True
    write_json(ident_path, ident)
    cases = {sid: training_case(s, p) for sid, s in train.items()}
    cpu0 = time.process_time()
    res = train_model(cases, p, out, key=key, num_classes=3, class_names=CLASS_NAMES, progress=progress, desc=desc,
                      init_state=init.state if init is not None else None)
    summary = {**res, "cpu_seconds": round(time.process_time() - cpu0, 2), "key": int(key), "profile": p.name,
               "train_slices": ident["train_slices"]}
    write_json(summary_path, summary)
    net, _ = load_fold_model(model_path)
    return net, summary, False


def train_semi(train: Mapping[str, SliceImage], unlabelled: Mapping[str, SliceImage], p: Profile, out: Path, *,
               key: int, progress: bool, desc: str,
               init: Init | None = None) -> tuple[torch.nn.Module, torch.nn.Module, dict, bool]:
    """Two stages on ``train`` (labelled) and ``unlabelled``: the first is the supervised model of the
    same slices and recipe (``out/teacher``); the second (the student, into ``out``) continues from
    it, as the profile's ``semi_supervised`` says: ``"self-training"``, the first stage labels the
    unlabelled slices and the student trains on both; ``"consistency"``, the student trains with a
    mean teacher on perturbed unlabelled slices beside every labelled batch
    (:mod:`sscild.model.consistency`); otherwise (``second_stage``), on the labelled slices alone.
    Only ``train`` and ``unlabelled`` are ever read, so a held-out slice cannot reach its fold's
    teacher, pseudo-labels or student.

    Returns (student, teacher, summary, whether the student was reused)."""
    out = Path(out)
    ex = check_extra(p)
    # the teacher: the supervised recipe in one stage, pretrained as the profile says (``init``)
    sup = external_profile(p, second_stage=False,
                           **({"semi_supervised": "pretrain"} if ex["semi_supervised"] in STUDENT_MODES
                              else {}))
    teacher, t_summ, t_reused = train_or_load(train, sup, out / "teacher", key=key, progress=progress,
                                              desc=f"{desc}, teacher", init=init)
    if ex["semi_supervised"] not in STUDENT_MODES:
        unlabelled = {}
    consistency = ex["semi_supervised"] == "consistency"
    use = _spread(sorted(unlabelled, key=natural_key), ex["unlabelled_max"])
    u_digest = hashlib.sha1("".join(unlabelled[u].digest() for u in use).encode()).hexdigest()
    ident = {"train_slices": sorted(train, key=natural_key), "key": int(key), "recipe": profile_key(p),
             "unlabelled": {"n": len(use), "sha1": u_digest}}
    if init is not None:
        ident["init"] = init.ident
    ident_path, summary_path, model_path = out / "recipe_key.json", out / "train_summary.json", out / "model_final.pt"
    if ident_path.exists() and json.loads(json.dumps(ident)) != recorded_ident(read_json(ident_path)):
        for f in out.iterdir():  # a different recipe, training set or unlabelled set: the student starts again
            if f.name != "teacher":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    if summary_path.exists() and model_path.exists():
        net, _ = load_fold_model(model_path)
        return net, teacher, read_json(summary_path), True
    write_json(ident_path, ident)
    cpu0, w0 = time.process_time(), time.perf_counter()
    cons = {}
    if consistency and use:
        cons = {"consistency": ConsistencySettings(per_batch=max(2, p.batch_size), confidence=ex["pseudo_confidence"],
                                                   rot90=ex["rotations"]),
                "unlabelled_batch": slice_batches({u: unlabelled[u] for u in use}, p, max(2, p.batch_size))}
        pseudo, stats = {}, {"slices": len(use), "consistency": True}
    else:
        pseudo, stats = pseudo_label_cases(teacher, {u: unlabelled[u] for u in use}, p) if use else ({}, {"slices": 0})
    if use and not pseudo and not consistency:
        raise InputError(f"{desc}: none of the {len(use)} unlabelled slices has a confident lesion share of at least "
                         f"{ex['pseudo_min_lesion']:.1%}; lower pseudo_min_lesion or pseudo_confidence.")
    stats["seconds"] = round(time.perf_counter() - w0, 2)
    init = None
    if ex["student_init"] == "teacher":
        init = torch.load(out / "teacher" / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    cases = {sid: training_case(s, p) for sid, s in train.items()}
    res = train_model(cases, p, out, key=key, num_classes=3, class_names=CLASS_NAMES, progress=progress,
                      desc=f"{desc}, student", iterations=ex["student_iterations"], pseudo_cases=pseudo or None,
                      pseudo_share=ex["pseudo_share"] if pseudo else 0.0, init_state=init, **cons)
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


@dataclass(frozen=True)
class TrainTask:
    """One model to train: its labelled slices, output folder, seed key and a name for messages."""

    train: Mapping[str, SliceImage]
    out: Path
    key: int
    desc: str


def training_jobs(n_tasks: int, threads: int, *, jobs: int | None = None, cuda: bool | None = None) -> tuple[int, int]:
    """``(trainings at once, threads each)`` for ``n_tasks`` trainings given ``threads`` CPU threads.

    On a CPU a small 2D network does not keep several cores busy, so trainings run side by side on
    one thread each (as the study's folds do, :func:`sscild.context.fold_parallelism`); on a GPU one at
    a time. ``jobs`` overrides the number at once; the threads are then shared among them.

    >>> training_jobs(6, 2, cuda=False)
    (2, 1)
    >>> training_jobs(6, 2, cuda=True)
    (1, 2)
    >>> training_jobs(6, 8, jobs=2, cuda=False)
    (2, 4)
    """
    threads, n_tasks = max(1, int(threads)), max(1, int(n_tasks))
    if jobs is not None and int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs!r}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if jobs is None:
        jobs = 1 if cuda else threads
    jobs = max(1, min(int(jobs), n_tasks))
    return jobs, max(1, threads // jobs)


def _worker_init(threads: int) -> None:
    os.environ["SSCILD_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _train_task(task: TrainTask, p: Profile, unlabelled: Mapping[str, SliceImage] | None,
                progress: bool, init: Init | None = None) -> tuple[str, bool, float]:
    t0 = time.perf_counter()
    if semi_on(p, unlabelled):
        _, _, _, reused = train_semi(task.train, unlabelled or {}, p, task.out, key=task.key, progress=progress,
                                     desc=task.desc, init=init)
    else:
        _, _, reused = train_or_load(task.train, p, task.out, key=task.key, progress=progress, desc=task.desc,
                                     init=init)
    return str(task.out), reused, round(time.perf_counter() - t0, 2)


def train_many(tasks: Sequence[TrainTask], p: Profile, *, unlabelled: Mapping[str, SliceImage] | None = None,
               jobs: int = 1, threads: int = 1, progress: bool = False,
               log: Callable[[str], None] | None = print, init: Init | None = None) -> set[str]:
    """Train every task (supervised, or in two stages when :func:`semi_on`), ``jobs`` at a time in
    worker processes of ``threads`` threads each (``jobs=1``: one after another in this process).
    Finished models are reused as :func:`train_or_load` reuses them.

    Returns the output folders trained now (not reused)."""
    p = external_profile(p)
    fresh: set[str] = set()
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            out, reused, _ = _train_task(t, p, unlabelled, progress, init)
            if not reused:
                fresh.add(out)
        return fresh
    if log:
        log(f"training {len(tasks)} models, {jobs} at a time on {threads} thread(s) each")
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_train_task, t, p, unlabelled, False, init): t for t in tasks}
            for fut in as_completed(futures):
                out, reused, sec = fut.result()
                if not reused:
                    fresh.add(out)
                if log:
                    log(f"{futures[fut].desc}: {'reused' if reused else f'trained in {sec:.0f} s'}")
    except BrokenProcessPool:
        # a worker died before training: most often a script that starts the run at import time, which
        # every spawned worker re-imports (guard it with `if __name__ == "__main__":`); finished models are kept
        if log:
            log("the worker processes stopped; training the remaining models one after another in this process "
                "(a script that calls the external check needs `if __name__ == \"__main__\":` for side-by-side training)")
        return fresh | train_many(tasks, p, unlabelled=unlabelled, jobs=1, threads=threads * jobs, progress=progress,
                                  log=log, init=init)
    return fresh
