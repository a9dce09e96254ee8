"""The external check's runs: cross-validation on the training part, training on all of it and
scoring the test part, and the whole check with its ``summary.json``.

This runs the *same* library code as the study -- the network factory
(:func:`sscild.model.network.build_network`), the training loop (:func:`sscild.model.train.train_model`)
and the MONAI-based Dice (:func:`sscild.evaluation.metrics.dice`) -- on real CT slices with expert
labels (:mod:`sscild.external.slices`), and scores the result against published numbers
(:mod:`sscild.external.tables`).

**Cross-validation** is K-fold *by slice* (:func:`sscild.data.folds.make_splits`, seeded, stratified by
each slice's consolidation share). The benchmark publishes no patient identifiers, so slices of one
patient may fall on both sides of a fold; cross-validated Dice may therefore be optimistic
compared with a patient-wise split.

Usage: ``run_external("covid-semiseg/train", out_dir="results/external", profile=external_profile("cpu"))``
returns the summary; ``summary["cv"]["dice_ggo"]`` is the cross-validated GGO Dice. The command line
``python -m sscild.external run TRAIN_DIR OUT_DIR`` does the same.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sscild.data.folds import make_splits
from sscild.errors import InputError
from sscild.external.predict import MeanProb, predict_slices, write_png
from sscild.external.recipe import STUDENT_MODES, check_extra, external_profile, recipe_dict
from sscild.external.scores import score_slices, summarize_scores
from sscild.external.slices import (SliceImage, check_no_overlap, natural_key, read_slice_folder,
                                    read_unlabelled_folder)
from sscild.external.tables import PUBLISHED
from sscild.external.pretrain import pretrain_key, pretrained_state
from sscild.external.training import (Init, TrainTask, semi_on, train_many, train_or_load, train_semi,
                                      training_jobs)
from sscild.model.loading import load_fold_model
from sscild.model.device import set_threads
from sscild.paths import atomic_path, read_json, write_json
from sscild.profiles import Profile

__all__ = ["cross_validate", "fold_tasks", "member_folders", "train_and_test", "run_external"]

MEMBER_KEY_STEP = 100
"""A model's member m trains with seed key ``key + MEMBER_KEY_STEP * m`` (:func:`member_folders`)."""


def cross_validate(slices: Mapping[str, SliceImage], out_dir: str | Path, profile: str | Profile = "cpu", *,
                   folds: Sequence[int] | None = None, progress: bool = False,
                   log=print, unlabelled: Mapping[str, SliceImage] | None = None, jobs: int | None = None,
                   trained_now: set[str] | None = None, init: Init | None = None) -> tuple[pd.DataFrame, dict]:
    """K-fold cross-validation by slice on a labelled folder (``profile.num_folds`` folds, its seed).

    ``folds`` limits the run to some folds (a quick screen of a recipe); default all.

    The folds train side by side when there are spare CPU threads (:func:`sscild.external.training.training_jobs`;
    ``jobs`` overrides how many at once), then each is scored in this process. ``trained_now``: the
    fold folders a caller has just trained itself (:func:`run_external` trains the folds and the
    test model in one batch); they are not trained again and are reported as trained, not reused.
    With ``pretrain_steps`` (and ``semi_supervised`` on), every fold starts from the network pretrained on the
    unlabelled slices (:mod:`sscild.external.pretrain`, cached in ``out_dir/pretrained``, or ``init``).

    With ``unlabelled`` slices and a profile whose ``semi_supervised`` is ``"self-training"`` or
    ``"consistency"``, each fold's teacher is trained on that fold's training slices only, the
    fold's student learns from it and the unlabelled slices, and the student is what is scored; the teachers' (supervised) out-of-fold predictions are scored
    too, into ``scores_supervised.csv`` and ``info["supervised_scores"]``. An unlabelled slice
    identical to a labelled one is an ``InputError`` (:func:`sscild.external.slices.check_no_overlap`).

    Writes ``out_dir/splits.json``, ``fold_<k>/`` (model, learning curves, summary),
    ``predictions/<id>.png`` (out-of-fold masks, the files' orientation) and ``scores.csv``.
    Finished folds trained on the same slices with the same recipe are reused.

    Returns:
        (per-slice scores with a ``fold`` column, info dict: splits, seconds per fold, total seconds).
    """
    p = external_profile(profile)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    threads = set_threads()
    if len(slices) < p.num_folds:
        raise InputError(f"{len(slices)} labelled slices cannot make {p.num_folds} folds; add slices or lower "
                         "num_folds.")
    strata = _consolidation_share(slices)
    semi = semi_on(p, unlabelled)
    student_learns = check_extra(p)["semi_supervised"] in STUDENT_MODES
    if unlabelled and (student_learns or check_extra(p)["pretrain_steps"]):
        check_no_overlap(unlabelled, {"training": slices})
    splits = make_splits(list(slices), strata=strata, k=p.num_folds, seed=p.seed)
    write_json(out_dir / "splits.json", splits)
    if folds is not None:
        bad = [k for k in folds if not 0 <= int(k) < len(splits)]
        if bad:
            raise ValueError(f"folds {bad} do not exist: the split has folds 0..{len(splits) - 1}.")
    chosen = [k for k in range(len(splits)) if folds is None or k in {int(f) for f in folds}]
    if init is None:
        init = pretraining(p, unlabelled, out_dir / "pretrained", log=log)
    if trained_now is None:
        tasks = fold_tasks(slices, splits, out_dir, chosen, members=check_extra(p)["members"])
        n_jobs, n_threads = training_jobs(len(tasks), threads, jobs=jobs)
        trained_now = train_many(tasks, p, unlabelled=unlabelled if student_learns else None, jobs=n_jobs, threads=n_threads,
                                 progress=progress, log=log, init=init)
    frames, sup_frames, done = [], [], []
    for k in chosen:
        df, sdf, row = _run_fold(k, splits[k], slices, p, out_dir, semi=semi, unlabelled=unlabelled,
                                 progress=progress, log=log, trained_now=trained_now, init=init)
        frames.append(df)
        if semi:
            sup_frames.append(sdf)
        done.append(row)
    scores = pd.concat(frames, ignore_index=True)
    scores["_o"] = scores["slice_id"].map(natural_key)
    scores = scores.sort_values("_o").drop(columns="_o").reset_index(drop=True)
    with atomic_path(out_dir / "scores.csv", suffix=".csv") as tmp:
        scores.to_csv(tmp, index=False)
    info = {"splits": splits, "folds": done, "threads": threads, "seconds": round(time.perf_counter() - t0, 2),
            "semi": semi}
    if semi:
        sup = pd.concat(sup_frames, ignore_index=True).set_index("slice_id").loc[scores["slice_id"]].reset_index()
        with atomic_path(out_dir / "scores_supervised.csv", suffix=".csv") as tmp:
            sup.to_csv(tmp, index=False)
        info["supervised_scores"] = sup
    return scores, info


def pretraining(p: Profile, unlabelled: Mapping[str, SliceImage] | None, folder: Path, *, log=print) -> Init | None:
    """The pretrained starting weights when the profile asks for them (``pretrain_steps``) and
    there are unlabelled slices, else ``None`` (without unlabelled slices the models start from a
    random initialisation, and the log says so)."""
    steps = check_extra(p)["pretrain_steps"]
    if not steps:
        return None
    if not unlabelled:
        if log:
            log(f"profile {p.name!r} pretrains on unlabelled slices ({steps} steps), but none were given "
                "(make external EXTERNAL_UNLABELLED=DIR): the models start from a random initialisation")
        return None
    state, _ = pretrained_state(unlabelled, p, folder, log=log)
    digest = hashlib.sha1(json.dumps(pretrain_key(p, unlabelled), sort_keys=True).encode()).hexdigest()
    return Init(state=state, ident=f"pretrained:{digest}")


def member_folders(folder: str | Path, key: int, members: int) -> list[tuple[Path, int]]:
    """Where each of a model's ``members`` networks is trained, and its seed key: the first in ``folder``
    with ``key`` (the network a one-member profile trains, so finished runs are reused), member m in
    ``folder/member_<m>`` with ``key + 100 m`` (:data:`MEMBER_KEY_STEP`). All start from the same
    pretrained weights; the seed key changes the network's other draws (batches, augmentation).

    >>> [(f.as_posix(), k) for f, k in member_folders("cv/fold_2", 2, 3)]
    [('cv/fold_2', 2), ('cv/fold_2/member_1', 102), ('cv/fold_2/member_2', 202)]
    """
    return [(Path(folder) / f"member_{m}" if m else Path(folder), int(key) + MEMBER_KEY_STEP * m)
            for m in range(int(members))]


def _member_tasks(train: Mapping[str, SliceImage], folder: Path, key: int, desc: str, members: int) -> list[TrainTask]:
    return [TrainTask(train, f, k, f"{desc}, member {m + 1}" if m else desc)
            for m, (f, k) in enumerate(member_folders(folder, key, members))]


def fold_tasks(slices: Mapping[str, SliceImage], splits: Sequence[Mapping], out_dir: Path,
               folds: Sequence[int], *, members: int = 1) -> list[TrainTask]:
    """The training of each chosen fold: its training slices, into ``out_dir/fold_<k>``, seed key ``k``
    (and its further ``members``, :func:`member_folders`)."""
    return [t for k in folds for t in _member_tasks({s: slices[s] for s in splits[k]["train"]},
                                                    Path(out_dir) / f"fold_{k}", k, f"fold {k}", members)]


def _model(train: Mapping[str, SliceImage], p: Profile, folder: Path, key: int, *, semi: bool,
           unlabelled: Mapping[str, SliceImage] | None, progress: bool, desc: str, init: Init | None,
           trained_now: set[str]) -> tuple[torch.nn.Module, torch.nn.Module | None, dict, bool]:
    """The model in ``folder``, its members trained or reused (:func:`member_folders`): (network -- the mean
    softmax of the members when there are several --, the teacher(s) likewise when ``semi`` else ``None``,
    summary -- training seconds and CPU seconds summed over the members --, reused)."""
    nets, teachers, summs, reused = [], [], [], True
    for t in _member_tasks(train, folder, key, desc, check_extra(p)["members"]):
        if semi:
            net, teacher, summ, r = train_semi(train, unlabelled or {}, p, t.out, key=t.key, progress=progress,
                                               desc=t.desc, init=init)
            teachers.append(teacher)
        else:
            net, summ, r = train_or_load(train, p, t.out, key=t.key, progress=progress, desc=t.desc, init=init)
        nets.append(net)
        summs.append(summ)
        reused = reused and r and str(t.out) not in trained_now
    if len(nets) == 1:
        return nets[0], (teachers[0] if semi else None), summs[0], reused
    total = {n: round(sum(float(s.get(n) or 0.0) for s in summs), 2) for n in ("seconds", "cpu_seconds")}
    return MeanProb(nets).eval(), (MeanProb(teachers).eval() if semi else None), total, reused


def _consolidation_share(slices: Mapping[str, SliceImage]) -> dict[str, float]:
    """Each slice's consolidation share of its lesion pixels (0 without lesion): the folds' strata."""
    strata = {}
    for sid, s in slices.items():
        g, c = int(np.count_nonzero(s.label == 1)), int(np.count_nonzero(s.label == 2))
        strata[sid] = c / (g + c) if g + c else 0.0
    return strata


def _run_fold(k: int, fold: Mapping, slices: Mapping[str, SliceImage], p: Profile, out_dir: Path, *, semi: bool,
              unlabelled: Mapping[str, SliceImage] | None, progress: bool, log,
              trained_now: set[str], init: Init | None) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """Train fold ``k`` (or reuse it), predict and score its held-out slices, writing their masks.

    Returns (the held-out slices' scores, the teacher's scores of the same slices when ``semi``, else
    ``None``, and the fold's row of ``info["folds"]``)."""
    tk = time.perf_counter()
    fold_train = {s: slices[s] for s in fold["train"]}
    net, teacher, summ, reused = _model(fold_train, p, out_dir / f"fold_{k}", k, semi=semi, unlabelled=unlabelled,
                                        progress=progress, desc=f"fold {k}", init=init, trained_now=trained_now)
    held = {s: slices[s] for s in sorted(fold["val"], key=natural_key)}
    ti = time.perf_counter()
    preds = predict_slices(net, held, p)
    for sid, pred in preds.items():
        write_png(out_dir / "predictions" / f"{sid}.png", pred)
    df = score_slices(preds, held)
    df.insert(1, "fold", k)
    sdf = None
    if semi:
        sdf = score_slices(predict_slices(teacher, held, p), held)
        sdf.insert(1, "fold", k)
    row = {"fold": k, "n_train": len(fold["train"]), "n_test": len(held),
           "reused": reused, "train_seconds": summ.get("seconds"),
           "train_cpu_seconds": summ.get("cpu_seconds"),
           "predict_seconds": round(time.perf_counter() - ti, 2),
           "wall_seconds": round(time.perf_counter() - tk, 2)}
    if log:
        log(f"fold {k}: {'reused the model' if reused else 'trained'} on {len(fold['train'])} slices "
            f"({summ.get('seconds', 0):.0f} s when trained), "
            f"scored {len(held)}: GGO {np.nanmean(df['dice_ggo']):.3f}, "
            f"consolidation {np.nanmean(df['dice_consolidation']):.3f}")
    return df, sdf, row


def train_and_test(train: Mapping[str, SliceImage], test: Mapping[str, SliceImage], out_dir: str | Path,
                   profile: str | Profile = "cpu", *, progress: bool = False, log=print,
                   unlabelled: Mapping[str, SliceImage] | None = None,
                   ensemble_with: Sequence[str | Path] = (), trained_now: set[str] = frozenset(),
                   init: Init | None = None) -> tuple[pd.DataFrame, dict]:
    """Train on every slice of ``train`` (and, self-training, ``unlabelled``), predict and score ``test``.

    ``ensemble_with``: further model files (e.g. the cross-validation folds' ``model_final.pt``,
    each trained on part of ``train`` only) whose softmax is averaged with the new model's at
    prediction, as nnU-Net predicts with its fold models.

    Raises ``InputError`` when a test image is pixel-identical to a training image, or an unlabelled
    image to a training or test image (leakage). Writes ``out_dir/model/``, ``predictions/<id>.png``
    and ``scores.csv``. ``trained_now``: as in :func:`cross_validate` (``out_dir/model`` trained by
    the caller).
    """
    p = external_profile(profile)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    set_threads()
    _check_test_apart(train, test)
    semi = semi_on(p, unlabelled)
    if semi and unlabelled:
        check_no_overlap(unlabelled, {"training": train, "test": test})
    net, _, summ, reused = _model(train, p, out_dir / "model", p.num_folds, semi=semi, unlabelled=unlabelled,
                                  progress=progress, desc="all slices", init=init, trained_now=trained_now)
    n_nets = len(net.nets) if isinstance(net, MeanProb) else 1
    ti = time.perf_counter()
    if ensemble_with:
        net = MeanProb(list(net.nets if isinstance(net, MeanProb) else [net])
                       + [load_fold_model(Path(f))[0] for f in ensemble_with]).eval()
    preds = predict_slices(net, test, p)
    for sid, pred in preds.items():
        write_png(out_dir / "predictions" / f"{sid}.png", pred)
    scores = score_slices(preds, test)
    with atomic_path(out_dir / "scores.csv", suffix=".csv") as tmp:
        scores.to_csv(tmp, index=False)
    if log:
        log(f"test: {'reused the model' if reused else 'trained'} on {len(train)} slices "
            f"({summ.get('seconds', 0):.0f} s when trained), scored {len(test)}")
    return scores, {"reused": reused, "train_seconds": summ.get("seconds"), "ensemble": n_nets + len(ensemble_with),
                    "predict_seconds": round(time.perf_counter() - ti, 2),
                    "seconds": round(time.perf_counter() - t0, 2)}


def _check_test_apart(train: Mapping[str, SliceImage], test: Mapping[str, SliceImage]) -> None:
    """``InputError`` when a test image is pixel-identical to a training image."""
    seen = {s.digest(): sid for sid, s in train.items()}
    dup = [(sid, seen[s.digest()]) for sid, s in test.items() if s.digest() in seen]
    if dup:
        raise InputError(f"{len(dup)} test slice(s) are identical to training slices (test id, training id): "
                         f"{dup[:10]}; "
                         "the test folder must hold only slices the network never trained on.")


def _train_everything(train: Mapping[str, SliceImage], test: Mapping[str, SliceImage] | None,
                      unlabelled: Mapping[str, SliceImage] | None, p: Profile, out_dir: Path, *, jobs: int | None,
                      progress: bool, log) -> tuple[set[str], Init | None, dict]:
    """Pretrain when the profile says so, then train the fold models and the test model in one batch.

    Returns (folders trained now, the pretrained starting weights or ``None``, ``summary["training"]``)."""
    splits = make_splits(list(train), strata=_consolidation_share(train), k=p.num_folds, seed=p.seed)
    members = check_extra(p)["members"]
    tasks = fold_tasks(train, splits, out_dir / "cv", range(len(splits)), members=members)
    if test is not None:
        tasks += _member_tasks(train, out_dir / "test" / "model", p.num_folds, "all slices", members)
    n_jobs, n_threads = training_jobs(len(tasks), set_threads(), jobs=jobs)
    init = pretraining(p, unlabelled, out_dir / "pretrained", log=log)
    tt = time.perf_counter()  # the models' wall time; the pretraining's own is in its summary
    student_learns = check_extra(p)["semi_supervised"] in STUDENT_MODES
    fresh = train_many(tasks, p, unlabelled=unlabelled if student_learns else None, jobs=n_jobs, threads=n_threads,
                       progress=progress, log=log, init=init)
    pre = read_json(out_dir / "pretrained" / "summary.json") if init is not None else None
    return fresh, init, {"models": len(tasks), "trained_now": len(fresh), "at_once": n_jobs,
                         "threads_each": n_threads, "seconds": round(time.perf_counter() - tt, 2),
                         "pretrained": pre}


def run_external(train_dir: str | Path, out_dir: str | Path, *, test_dir: str | Path | None = None,
                 unlabelled_dir: str | Path | None = None, profile: str | Profile = "cpu", n_boot: int = 2000,
                 progress: bool = False, log=print, jobs: int | None = None) -> dict:
    """The whole external check: cross-validation on ``train_dir``, optional test on ``test_dir``.

    ``unlabelled_dir`` (``images/`` only) feeds the profile's semi-supervised mode; it is read and
    checked against the labelled parts (:func:`sscild.external.slices.check_no_overlap`) only when the mode is on, and
    only ever used for training. With the mode on, ``summary["cv_supervised"]`` holds the
    cross-validated Dice of the fold teachers (the same recipe without unlabelled data).

    The fold models and the test model train in one batch, side by side on a CPU
    (:func:`sscild.external.training.training_jobs`; ``jobs`` overrides how many at once).

    Writes ``out_dir/cv/`` and ``out_dir/test/`` (see :func:`cross_validate`, :func:`train_and_test`)
    and ``out_dir/summary.json``::

        {"cv": {"dice_ggo", "dice_ggo_ci", "pooled_dice_ggo", "pooled_dice_ggo_ci", ... same for
                "consolidation", "n_slices", "folds", "seconds"},
         "test": {... the same keys ...} or null,
         "training": {"models", "trained_now", "at_once", "threads_each", "seconds" (wall, after pretraining),
                      "pretrained": {"steps", "seconds", "slices", "first_l1", "last_l1"} or null},
         "recipe": {...}, "published": [...], "data": {...}, "seconds": total}

    Usage: ``run_external("covid-semiseg/train", "results/external", profile="smoke")``.
    """
    p = external_profile(profile)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    train = read_slice_folder(train_dir, what="training folder")
    test = read_slice_folder(test_dir, what="test folder") if test_dir not in (None, "") else None
    unlabelled = None
    if unlabelled_dir not in (None, "") and check_extra(p)["semi_supervised"] != "off":
        unlabelled = read_unlabelled_folder(unlabelled_dir)
        check_no_overlap(unlabelled, {"training": train, **({"test": test} if test is not None else {})})
    if test is not None:  # leakage checks before any training
        _check_test_apart(train, test)
    fresh, init, training = _train_everything(train, test, unlabelled, p, out_dir, jobs=jobs, progress=progress,
                                              log=log)
    cv_scores, cv_info = cross_validate(train, out_dir / "cv", p, progress=progress, log=log, unlabelled=unlabelled,
                                        trained_now=fresh, init=init)
    cv = summarize_scores(cv_scores, n_boot=n_boot, seed=p.seed) | {
        "folds": p.num_folds, "seconds": cv_info["seconds"], "per_fold": cv_info["folds"]}
    cv_sup = None
    if cv_info.get("semi"):
        cv_sup = summarize_scores(cv_info["supervised_scores"], n_boot=n_boot, seed=p.seed)
    test_summary = None
    if test is not None:
        folds = [f / "model_final.pt" for k in range(p.num_folds)
                 for f, _ in member_folders(out_dir / "cv" / f"fold_{k}", k, check_extra(p)["members"])] \
            if check_extra(p)["test_ensemble"] else []
        t_scores, t_info = train_and_test(train, test, out_dir / "test", p, progress=progress, log=log,
                                          unlabelled=unlabelled, ensemble_with=folds, trained_now=fresh, init=init)
        test_summary = summarize_scores(t_scores, n_boot=n_boot, seed=p.seed) | {
            "seconds": t_info["seconds"], "train_seconds": t_info["train_seconds"], "reused": t_info["reused"],
            "models": t_info["ensemble"]}
    summary = {
        "cv": cv,
        "cv_supervised": cv_sup,
        "test": test_summary,
        "training": training,
        "recipe": recipe_dict(p, set_threads()),
        "published": PUBLISHED.to_dict(orient="records"),
        "published_source": "Fan et al. 2020 (Inf-Net), COVID-SemiSeg 48-slice test part",
        "data": {"train_dir": str(Path(train_dir).resolve()), "n_train": len(train),
                 "test_dir": str(Path(test_dir).resolve()) if test is not None else None,
                 "n_test": len(test) if test is not None else None,
                 "unlabelled_dir": str(Path(unlabelled_dir).resolve()) if unlabelled is not None else None,
                 "n_unlabelled": len(unlabelled) if unlabelled is not None else None},
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
