"""Training of one cross-validation fold.

The recipe (what the Model & training chapter tabulates):

* **Data**: the fold's *training* patients only (``splits.json[fold]["train"]``), from the preprocessed
  cache. The fold's held-out patients are never loaded: no early stopping or model selection touches
  them. Monitoring uses the training batches themselves.
* **Sampling**: 2D axial patches, lesion-oversampled (:mod:`sscild.model.sampling`).
* **Augmentation** (:mod:`sscild.model.augment`, batched tensor operations on the training device): flips,
  small rotations and scaling, intensity shift and scale, Gaussian noise.
* **Loss**: Dice + cross-entropy (``monai.losses.DiceCELoss``), softmax over four classes; with
  ``profile.deep_supervision``, also on auxiliary decoder outputs (:mod:`sscild.model.deepsup`).
* **Optimiser**: AdamW (or SGD with Nesterov momentum, ``profile.optimizer``), linear warm-up then
  polynomial decay (power 0.9), by *iterations*, so the budget is deterministic.
* **Device**: CUDA when present (mixed precision, cudnn autotuning), else CPU with threads matched to
  the cores (:mod:`sscild.model.device`).
* **Reproducibility**: every step's randomness derives from ``(seed, fold, step)``, so the same seed
  gives identical weights on CPU, and a run resumed from a checkpoint continues exactly as an
  uninterrupted one would (:mod:`sscild.model.checkpoint`).
* **Unlabelled scans** (when the cohort has some, ``profile.semi_supervised``): by default every fold
  starts from a network pretrained to restore corrupted patches of them (:mod:`sscild.model.pretrain`);
  with ``"self-training"``, a supervised teacher pseudo-labels them and the fold's model is a
  student trained on both (:mod:`sscild.model.selftrain`); with ``"consistency"``, every step also
  trains the network to agree with a mean teacher on perturbed unlabelled patches
  (:mod:`sscild.model.consistency`), starting from the pretrained weights when ``pretrain_steps`` > 0.

Outputs in ``results/<cohort>/<profile>/fold_<k>/``: ``checkpoint_latest.pt`` (every
``profile.checkpoint_every`` steps), ``history.csv`` (per logged step), ``epochs.csv`` (per epoch of
``checkpoint_every`` steps), ``model_final.pt`` and ``train_summary.json`` (written last: the fold is
done).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import torch

from sscild.data.folds import read_splits
from sscild.data.cache import load_cached
from sscild.model.augment import augment_for_profile
from sscild.model.consistency import Consistency, ConsistencySettings
from sscild.model.checkpoint import (final_model_state, recipe_diff, resume_training, save_checkpoint,
                                     training_recipe)
from sscild.model.device import (configure_backend, describe_device, loader_workers, network_numerics,
                                 select_device, set_threads, worker_init)
from sscild.model.loading import fold_is_done, load_fold_model
from sscild.model.fit import Fit, RunningMeans, setup_fit, train_step
from sscild.model.network import NUM_CLASSES, count_parameters
from sscild.model.sampling import PatchSampler, StepBatches
from sscild.model.pretrain import PatchSource, cohort_pretrained_state, unlabelled_image
from sscild.model.selftrain import (pretrains, pseudo_label_volumes, semi_mode, semi_record,
                                    study_consistency, unlabelled_scans)
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.profiles import Profile, require_profile
from sscild.progress import Heartbeat

__all__ = ["train_fold", "train_model", "load_training_cases"]


def load_training_cases(run: RunPaths, case_ids) -> dict:
    """Load the cached, preprocessed training cases (the only data a fold's training ever reads)."""
    return {cid: load_cached(run, cid) for cid in case_ids}


def cohort_identity(run: RunPaths) -> dict:
    """Which cohort a run trains on, for the model files: ``{"name", "synthetic"}``.

    ``synthetic`` is the cohort's ``dataset.json`` flag (the data stage's ``validation.json`` names the
    cohort folder); ``None`` when that cannot be read.
    """
    synthetic = None
    try:
        root = Path(read_json(run.validation)["root"])
        synthetic = json.loads((root / "dataset.json").read_text()).get("synthetic")
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return {"name": run.cohort, "synthetic": synthetic if isinstance(synthetic, bool) else None}


def train_fold(run: RunPaths, profile: Profile, fold: int, *, device=None, progress: bool = True,
               stop_after: int | None = None, iterations: int | None = None) -> dict:
    """Train (or resume, or skip if done) fold ``fold`` of ``run``.

    Args:
        run: the run's results folder (``RunPaths``); ``splits.json`` and the cache must exist.
        profile: the resolved :class:`~sscild.profiles.Profile`.
        fold: fold index, 0 <= fold < number of folds in ``splits.json``.
        device: torch device; default CUDA when available, else CPU.
        progress: show a tqdm bar (terminal only).
        stop_after: stop (as if killed) after this many steps, right after a checkpoint is written;
            used to test resumption. The fold is then *not* done.
        iterations: override the profile's budget (tests).

    Returns:
        The fold's summary dict (also ``fold_<k>/train_summary.json``).
    """
    p = require_profile(profile)
    fold = int(fold)
    out = run.fold_dir(fold)
    if not run.splits.exists():
        raise FileNotFoundError(f"{run.splits} is missing: run the data stage first (`make data`).")
    splits = read_splits(run.splits)
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} does not exist: {run.splits} has {len(splits)} folds (0..{len(splits) - 1}).")
    train_ids = sorted(splits[fold]["train"])
    if fold_is_done(run, fold):
        summary = read_json(out / "train_summary.json")
        if sorted(summary.get("train_cases", [])) != train_ids:
            raise ValueError(
                f"{out} was trained on other patients than fold {fold} of {run.splits} now lists (the cohort or "
                f"the splits changed). Delete {out} (or run `make clean`) to retrain it.")
        diff = recipe_diff(summary.get("recipe", {}), training_recipe(p, iterations))
        scans = unlabelled_scans(run) if semi_mode(p) != "off" else {}
        want = semi_record(p, scans, iterations) if scans else None
        if summary.get("semi") != want:
            diff.append(f"semi-supervised: {summary.get('semi')!r} -> {want!r}")
        if diff:
            raise ValueError(
                f"{out} was trained with other settings than profile {p.name!r} now has ({'; '.join(diff)}). "
                f"Delete {out} (or run `make clean`) to retrain it.")
        return summary
    test_ids = set(splits[fold]["val"])
    if test_ids & set(train_ids):
        raise ValueError(f"{run.splits}: fold {fold} has cases in both train and test: {sorted(test_ids & set(train_ids))}")
    cases = load_training_cases(run, train_ids)
    mode = semi_mode(p)
    unlabelled = unlabelled_scans(run) if mode != "off" else {}
    if unlabelled and mode == "self-training":
        return _train_fold_semi(run, p, fold, cases, unlabelled, test_ids, device=device, progress=progress,
                                stop_after=stop_after, iterations=iterations)
    init, pre, cons = None, None, {}
    if unlabelled and pretrains(p):  # pretraining: unlabelled scans only, the same weights for every fold
        init, pre = cohort_pretrained_state(run, p, unlabelled, device=device)
    if unlabelled and mode == "consistency":  # unlabelled patches beside every labelled batch
        settings = study_consistency(p)
        volumes = [unlabelled_image(run, p, uid, unlabelled[uid]) for uid in sorted(unlabelled)]
        cons = {"consistency": settings, "unlabelled_batch": PatchSource(volumes, p.patch_size[:2], settings.per_batch)}
    result = train_model(cases, p, out, key=fold, device=device, progress=progress, stop_after=stop_after,
                         iterations=iterations, desc=f"fold {fold}", init_state=init, cohort=cohort_identity(run),
                         **cons)
    if result.get("interrupted"):
        return {"fold": fold, **result}
    summary = {"fold": fold, "profile": p.name, "cohort": run.cohort, **result,
               "train_cases": train_ids, "test_cases": sorted(test_ids)}
    if unlabelled:
        summary["semi"] = semi_record(p, unlabelled, iterations)
        if pre is not None:
            summary["pretraining"] = {k: pre[k] for k in ("steps", "seconds", "scans", "first_l1", "last_l1")}
    write_json(out / "train_summary.json", summary)
    return summary


def _train_fold_semi(run: RunPaths, p: Profile, fold: int, cases: dict, scans: dict[str, Path], test_ids: set, *,
                     device, progress, stop_after, iterations) -> dict:
    """Self-training of one fold: the supervised teacher (``fold_<k>/teacher``, this fold's training
    patients only) pseudo-labels the unlabelled scans; the student (the fold's model) trains from the
    teacher's weights on both. Held-out patients are never loaded."""
    out = run.fold_dir(fold)
    tdir = out / "teacher"
    train_ids = sorted(cases)
    if not ((tdir / "train_summary.json").exists() and (tdir / "model_final.pt").exists()):
        res = train_model(cases, p, tdir, key=fold, device=device, progress=progress, stop_after=stop_after,
                          iterations=iterations, desc=f"fold {fold}, teacher")
        if res.get("interrupted"):
            return {"fold": fold, **res}
        write_json(tdir / "train_summary.json", {"fold": fold, **res, "train_cases": train_ids})
    t_summary = read_json(tdir / "train_summary.json")
    if sorted(t_summary.get("train_cases", [])) != train_ids or \
            recipe_diff(t_summary.get("recipe", {}), training_recipe(p, iterations)):
        raise ValueError(f"{tdir} was trained on other patients or settings than fold {fold} now has. "
                         f"Delete {out} (or run `make clean`) to retrain it.")
    teacher, _ = load_fold_model(tdir / "model_final.pt", device=device)
    semi = semi_record(p, scans, iterations)
    pseudo, stats = pseudo_label_volumes(teacher, scans, p, device=device)
    init = torch.load(tdir / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    result = train_model(cases, p, out, key=fold, device=device, progress=progress, stop_after=stop_after,
                         iterations=semi["student_iterations"], desc=f"fold {fold}, student", pseudo_cases=pseudo,
                         pseudo_share=p.pseudo_share, init_state=init, cohort=cohort_identity(run))
    if result.get("interrupted"):
        return {"fold": fold, **result}
    summary = {"fold": fold, "profile": p.name, "cohort": run.cohort, **result,
               "recipe": training_recipe(p, iterations), "semi": semi, "pseudo": stats,
               "teacher_seconds": t_summary.get("seconds"), "train_cases": train_ids,
               "test_cases": sorted(test_ids)}
    write_json(out / "train_summary.json", summary)
    return summary


def _pseudo_per_batch(p: Profile, cases: dict, pseudo_cases: dict | None, pseudo_share: float) -> int:
    """Patches of every batch that come from the pseudo-labelled cases (0 without them)."""
    n_pseudo = 0
    if pseudo_cases:
        if not 0.0 < float(pseudo_share) < 1.0:
            raise ValueError(f"pseudo_share must be in (0, 1) when pseudo_cases are given, got {pseudo_share!r}")
        if p.batch_size < 2:
            raise ValueError(f"profile {p.name!r}: batch_size {p.batch_size} leaves no room for pseudo-labelled "
                             "patches beside the labelled ones; use batch_size >= 2.")
        n_pseudo = min(p.batch_size - 1, max(1, int(round(float(pseudo_share) * p.batch_size))))
        clash = sorted(set(pseudo_cases) & set(cases))
        if clash:
            raise ValueError(f"ids {clash[:10]} are both labelled and pseudo-labelled cases; give them distinct ids.")
    elif pseudo_share:
        raise ValueError("pseudo_share was given without pseudo_cases")
    return n_pseudo


def _batch_loader(data: StepBatches, *, start: int, device: torch.device, workers: int):
    """The batches of steps ``start .. data.total - 1``, made by ``workers`` loader processes (or none)."""
    return torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(start, data.total), num_workers=workers,
        pin_memory=device.type == "cuda", worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None, multiprocessing_context="fork" if workers else None)


def _run_steps(fit: Fit, aug, data: StepBatches, p: Profile, *, step: int, history: list, epochs: list, ckpt: Path,
               elapsed_before: float, num_classes: int, class_names, desc: str, progress: bool,
               stop_after: int | None, workers: int, recipe: dict) -> tuple[int, float, bool]:
    """The training loop from ``step`` on: log rows into ``history``, epoch rows into ``epochs``, checkpoints.

    Returns:
        ``(steps done, seconds in all, whether stop_after interrupted it)``.
    """
    total, device = data.total, fit.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=None, mininterval=2.0)
    beat = Heartbeat(desc, total=total, unit="step", start=step)  # make's terminal; not the notebook
    batches = _batch_loader(data, start=step, device=device, workers=workers)
    fit.trained.train()
    t0 = time.perf_counter()
    means = RunningMeans(num_classes, device, len(p.patch_size[:2]))
    t_last = t0
    batch_iter = iter(batches)
    while step < total:
        img, lab, aug_seed = next(batch_iter)
        x, y = aug(img.to(device, non_blocking=True), lab.to(device, non_blocking=True), seed=aug_seed)
        unl = None
        if fit.cons is not None:
            xs, tu, info = fit.cons.views(step, device, numerics=fit.numerics)
            unl = (xs, tu, fit.cons.ramp(step))
            means.add_unlabelled(info["labelled_share"])
        logits, loss = train_step(fit, x, y, unl)
        step += 1
        means.add(logits, y, loss)
        if bar is not None:
            bar.update(1)
        if step % p.log_every == 0 or step == total:
            now = time.perf_counter()
            mean_loss = float(means.window_loss) / means.window_n
            history.append({"step": step, "loss": mean_loss, "lr": fit.sched.get_last_lr()[0],
                            "steps_per_s": means.window_n / max(now - t_last, 1e-9),
                            **({"teacher_labelled_share": float(means.window_unl) / means.window_n}
                               if fit.cons is not None else {})})
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
            beat.update(step, loss=mean_loss)
            t_last = now
            means.reset_window()
        if step % p.checkpoint_every == 0 or step == total:
            epochs.append(means.epoch_row(len(epochs) + 1, step, class_names))
            save_checkpoint(ckpt, fit.trained, fit.opt, fit.sched, fit.scaler, step=step, history=history, epochs=epochs,
                            recipe=recipe, seconds=elapsed_before + time.perf_counter() - t0)
            if stop_after is not None and step >= stop_after and step < total:
                if bar is not None:
                    bar.close()
                return step, elapsed_before + time.perf_counter() - t0, True
    if bar is not None:
        bar.close()
    return step, elapsed_before + time.perf_counter() - t0, False


def _write_outputs(out: Path, history: list, epochs: list, final: dict) -> None:
    """``history.csv``, ``epochs.csv`` and ``model_final.pt`` of a finished training, each written atomically."""
    with atomic_path(out / "history.csv", suffix=".csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    with atomic_path(out / "epochs.csv", suffix=".csv") as tmp:
        pd.DataFrame(epochs).to_csv(tmp, index=False)
    with atomic_path(out / "model_final.pt", suffix=".pt") as tmp:
        torch.save(final, tmp)


def _state_digest(state: dict) -> str:
    """SHA-1 of a state dict's names and values (identifies the weights a training started from)."""
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# long: the set-up of one training in the order it happens (arguments, device, data, network, resumption,
# the loop, outputs, summary), so that a reader follows a training from top to bottom in one place
def train_model(cases: dict, profile: Profile, out: Path, *, key: int = 0, num_classes: int = NUM_CLASSES,
                class_names: tuple[str, ...] = ("normal", "ef", "ggo"), device=None, progress: bool = True,
                stop_after: int | None = None, iterations: int | None = None, desc: str = "training",
                pseudo_cases: dict | None = None, pseudo_share: float = 0.0,
                init_state: dict | None = None, cohort: dict | None = None,
                consistency: ConsistencySettings | None = None, unlabelled_batch=None) -> dict:
    """The training loop on already-loaded cases; resumes from ``out/checkpoint_latest.pt``.

    ``cases`` maps an id to an object with ``image`` (float32, (x, y, z)) and ``label`` (uint8). ``key``
    (the fold index) enters every random draw, with the profile's seed. Writes ``history.csv``,
    ``epochs.csv`` and ``model_final.pt`` into ``out`` and returns a summary dict (without writing it),
    or ``{"steps": n, "interrupted": True}`` when ``stop_after`` stopped it.

    **Semi-supervised (self-training) student.** ``pseudo_cases`` (same form as ``cases``) hold
    pseudo-labels made by a teacher from unlabelled images, with :data:`~sscild.model.selftrain.IGNORE_LABEL`
    where the teacher was not confident; ``round(pseudo_share * batch_size)`` patches of every batch (at
    least one, at most all but one) come from them, and the loss ignores the masked pixels.
    ``init_state`` (a network ``state_dict``, e.g. the teacher's) starts the weights from it instead
    of a random initialisation. With neither, training is exactly the supervised loop.

    **Consistency learning.** ``consistency`` (:class:`~sscild.model.consistency.ConsistencySettings`)
    with ``unlabelled_batch`` (``rng -> (n, 1, H, W)`` tensor of unlabelled images): every step also
    trains the network to agree, on a strongly perturbed view of those images, with a mean teacher's
    labels of a weakly perturbed one (:mod:`sscild.model.consistency`). Not with ``pseudo_cases`` or
    deep supervision.
    """
    p = require_profile(profile)
    out = Path(out)
    if len(class_names) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} foreground classes, got {class_names}")
    n_pseudo = _pseudo_per_batch(p, cases, pseudo_cases, pseudo_share)
    if (consistency is None) != (unlabelled_batch is None):
        raise ValueError("consistency learning needs both its settings and unlabelled_batch")
    if consistency is not None and (n_pseudo or p.deep_supervision):
        raise ValueError(f"profile {p.name!r}: consistency learning is not combined with pseudo-labelled cases "
                         "or deep supervision")
    out.mkdir(parents=True, exist_ok=True)
    total = int(iterations or p.iterations)
    seed = p.seed * 1000 + int(key)

    device = select_device(device)
    threads = set_threads()
    numerics = network_numerics(p, device)
    use_amp = bool(numerics["autocast"] and device.type == "cuda")   # float16 needs the gradient scaler
    configure_backend(device)

    sampler = PatchSampler(cases, patch_size=p.patch_size[:2], lesion_oversample=p.lesion_oversample)
    pseudo = (PatchSampler(pseudo_cases, patch_size=p.patch_size[:2], lesion_oversample=p.lesion_oversample)
              if n_pseudo else None)
    aug = augment_for_profile(p)
    fit = setup_fit(p, seed=seed, total=total, device=device, numerics=numerics, use_amp=use_amp,
                     num_classes=num_classes, init_state=init_state, masked=bool(n_pseudo))
    if consistency is not None:
        fit.cons = Consistency(fit.net, unlabelled_batch, consistency, seed=seed, key=key, total=total)
    ckpt = out / "checkpoint_latest.pt"
    # the checkpoint also records where the weights started, so a run is never resumed from another start
    recipe = {**training_recipe(p, total), "init": _state_digest(init_state) if init_state is not None else "random"}
    if consistency is not None:
        recipe["consistency"] = consistency.record()
    step, history, epochs, elapsed_before = resume_training(ckpt, fit.trained, fit.opt, fit.sched, fit.scaler,
                                                            recipe=recipe, profile_name=p.name, device=device)
    workers = loader_workers(device)
    data = StepBatches(sampler, seed=p.seed, key=key, batch_size=p.batch_size, total=total, pseudo=pseudo,
                       n_pseudo=n_pseudo)
    step, seconds, interrupted = _run_steps(fit, aug, data, p, step=step, history=history, epochs=epochs, ckpt=ckpt,
                                            elapsed_before=elapsed_before, num_classes=num_classes,
                                            class_names=class_names, desc=desc,
                                            progress=progress, stop_after=stop_after, workers=workers,
                                            recipe=recipe)
    if interrupted:
        return {"steps": step, "interrupted": True}

    _write_outputs(out, history, epochs, final_model_state(fit.net, p, key=key, num_classes=num_classes,
                                                          class_names=class_names, train_cases=cases,
                                                          cohort=cohort))
    ckpt.unlink(missing_ok=True)
    return {
        "steps": step,
        "seconds": round(seconds, 2),
        "steps_per_s": round(step / seconds, 3) if seconds > 0 else None,
        "device": describe_device(device),
        "threads": threads,
        "amp": use_amp,
        "numerics": {"autocast": numerics["autocast"], "dtype": str(numerics["dtype"]).replace("torch.", ""),
                     "channels_last": numerics["channels_last"]},
        "loader_workers": workers,
        "parameters": count_parameters(fit.net),
        "seed": seed,
        "final_loss": history[-1]["loss"] if history else None,
        "recipe": training_recipe(p, total),
        "pseudo_cases": len(pseudo_cases or {}),
        "pseudo_per_batch": n_pseudo,
        "init": "given state" if init_state is not None else "random",
        "torch": torch.__version__,
        **({"consistency": _consistency_summary(consistency, history)} if consistency is not None else {}),
    }


def _consistency_summary(settings: ConsistencySettings, history: list) -> dict:
    """The consistency settings and the mean share of unlabelled pixels the teacher labelled."""
    share = pd.DataFrame(history)["teacher_labelled_share"].mean() if history else None
    return {**settings.record(), "teacher_labelled_share": None if share is None else round(float(share), 4)}
