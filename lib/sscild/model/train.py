"""Training of one cross-validation fold.

The recipe (what the Model & training chapter tabulates):

* **Data**: the fold's *training* patients only (``splits.json[fold]["train"]``), from the preprocessed
  cache. The fold's held-out patients are never loaded: no early stopping or model selection touches
  them. Monitoring uses the training batches themselves.
* **Sampling**: 2D axial patches of ``profile.patch_size``. A share ``profile.lesion_oversample`` of
  patches is centred on a random EF or GGO voxel (nnU-Net's foreground oversampling); the rest are
  centred on a random lung voxel (or anywhere in the body when a case has no lung label).
* **Augmentation** (:mod:`sscild.model.augment`, batched tensor operations on the training device): flips,
  small rotations and scaling, intensity shift and scale, Gaussian noise.
* **Loss**: Dice + cross-entropy (``monai.losses.DiceCELoss``), softmax over four classes.
* **Optimiser**: AdamW, linear warm-up then polynomial decay (power 0.9), by *iterations*, so the
  budget is deterministic.
* **Device**: CUDA when present (mixed precision, cudnn autotuning), else CPU with threads matched to
  the cores (``SSCILD_THREADS`` overrides, e.g. when make runs folds in parallel).
* **Reproducibility**: every step's randomness derives from ``(seed, fold, step)``, so the same seed
  gives identical weights on CPU, and a run resumed from a checkpoint continues exactly as an
  uninterrupted one would.

Outputs in ``results/<cohort>/<profile>/fold_<k>/``: ``checkpoint_latest.pt`` (every
``profile.checkpoint_every`` steps), ``history.csv`` (per logged step), ``epochs.csv`` (per epoch of
``checkpoint_every`` steps), ``model_final.pt`` and ``train_summary.json`` (written last: the fold is
done).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sscild.model.augment import augment_for_profile
from sscild.data.folds import read_splits
from sscild.model.network import NUM_CLASSES, build_network, count_parameters, native_cpu_bf16
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.data.preprocess import load_cached
from sscild.progress import Heartbeat
from sscild.machine import cpu_name
from sscild.profiles import Profile, get_profile

__all__ = ["IGNORE_LABEL", "train_fold", "train_model", "unlabelled_scans", "pseudo_label_volumes", "fold_is_done",
           "PatchSampler", "select_device", "describe_device", "set_threads", "network_numerics"]


def select_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def set_threads() -> int:
    n = int(os.environ.get("SSCILD_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def network_numerics(p: Profile, device: torch.device) -> dict:
    """How the network computes on ``device`` under profile ``p``: autocast on or off, its dtype, layout.

    float16 autocast on CUDA when ``p.amp``; bfloat16 autocast on a CPU that computes it natively when
    ``p.cpu_bf16``; float32 otherwise.
    """
    if device.type == "cuda":
        autocast, dtype = bool(p.amp), torch.float16
    else:
        autocast, dtype = bool(p.cpu_bf16 and native_cpu_bf16()), torch.bfloat16
    return {"autocast": autocast, "dtype": dtype if autocast else torch.float32, "channels_last": bool(p.channels_last)}


def _step_rng(seed: int, fold: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(fold), int(step)])


class PatchSampler:
    """Draws 2D training patches from a set of cached cases.

    Args:
        cases: mapping case id -> object with ``image`` (float32, (x, y, z)) and ``label`` (uint8).
        patch_size: (px, py) patch size in voxels.
        lesion_oversample: share of patches centred on EF/GGO voxels.

    Example:
        >>> s = PatchSampler(cases, patch_size=(64, 64), lesion_oversample=0.5)
        >>> img, lab = s.sample(np.random.default_rng(0), batch_size=4)   # (4, 1, 64, 64) each
    """

    def __init__(self, cases: dict, *, patch_size, lesion_oversample: float):
        if not cases:
            raise ValueError("PatchSampler needs at least one training case")
        if not 0.0 <= lesion_oversample <= 1.0:
            raise ValueError(f"lesion_oversample must be in [0, 1], got {lesion_oversample}")
        self.case_ids = sorted(cases)
        self.cases = cases
        self.patch = tuple(int(v) for v in patch_size)
        self.lesion_oversample = float(lesion_oversample)
        # candidate centres, stored as flat indices (small: subsample large sets)
        self._lesion = {}
        self._lung = {}
        for cid in self.case_ids:
            lab = cases[cid].label
            les = np.flatnonzero((lab == 2) | (lab == 3))
            lung = np.flatnonzero(lab > 0)
            if lung.size == 0:
                lung = np.flatnonzero(cases[cid].image > -0.5)  # inside the body
            if lung.size == 0:
                lung = np.arange(lab.size)
            rs = np.random.default_rng(0)
            self._lesion[cid] = les if les.size <= 200_000 else np.sort(rs.choice(les, 200_000, replace=False))
            self._lung[cid] = lung if lung.size <= 200_000 else np.sort(rs.choice(lung, 200_000, replace=False))
        self._lesion_cases = [c for c in self.case_ids if self._lesion[c].size]

    def _crop(self, arr: np.ndarray, cx: int, cy: int, z: int, fill) -> np.ndarray:
        px, py = self.patch
        sl = arr[:, :, z]
        out = np.full((px, py), fill, dtype=sl.dtype)
        x0, y0 = cx - px // 2, cy - py // 2
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + px, sl.shape[0]), min(y0 + py, sl.shape[1])
        out[sx0 - x0:sx1 - x0, sy0 - y0:sy1 - y0] = sl[sx0:sx1, sy0:sy1]
        return out

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        imgs, labs = [], []
        for _ in range(batch_size):
            if self._lesion_cases and rng.random() < self.lesion_oversample:
                cid = self._lesion_cases[rng.integers(len(self._lesion_cases))]
                flat = self._lesion[cid][rng.integers(self._lesion[cid].size)]
            else:
                cid = self.case_ids[rng.integers(len(self.case_ids))]
                flat = self._lung[cid][rng.integers(self._lung[cid].size)]
            case = self.cases[cid]
            cx, cy, z = np.unravel_index(flat, case.label.shape)
            # jitter the centre so lesions are not always in the middle of the patch
            cx += int(rng.integers(-self.patch[0] // 4, self.patch[0] // 4 + 1))
            cy += int(rng.integers(-self.patch[1] // 4, self.patch[1] // 4 + 1))
            imgs.append(self._crop(case.image, cx, cy, int(z), fill=np.float32(case.image.min())))
            labs.append(self._crop(case.label, cx, cy, int(z), fill=np.uint8(0)))
        return np.stack(imgs)[:, None].astype(np.float32), np.stack(labs)[:, None].astype(np.int64)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is the (not yet augmented) batch of that training step and its augmentation seed.

    Each batch depends only on (seed, fold, step), so it is the same whether it is made in the
    main process or in a loader worker, and a resumed run continues with the batches it would
    have seen. With a ``pseudo`` sampler, the last ``n_pseudo`` patches of every batch come from
    it (pseudo-labelled cases), the others from ``sampler``.
    """

    def __init__(self, sampler: PatchSampler, *, seed: int, key: int, batch_size: int, total: int,
                 pseudo: PatchSampler | None = None, n_pseudo: int = 0):
        self.sampler = sampler
        self.seed, self.key, self.batch_size, self.total = int(seed), int(key), int(batch_size), int(total)
        self.pseudo, self.n_pseudo = pseudo, int(n_pseudo) if pseudo is not None else 0

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, step: int):
        rng = _step_rng(self.seed, self.key, int(step))
        img, lab = self.sampler.sample(rng, self.batch_size - self.n_pseudo)
        if self.n_pseudo:
            pi, pl = self.pseudo.sample(rng, self.n_pseudo)
            img, lab = np.concatenate([img, pi]), np.concatenate([lab, pl])
        return torch.from_numpy(img), torch.from_numpy(lab), int(rng.integers(2**31 - 1))


IGNORE_LABEL = 255
"""Label value of pixels the loss ignores (pseudo-labels below the confidence threshold)."""


class _MaskedDiceCE(torch.nn.Module):
    """Dice + cross-entropy like ``monai.losses.DiceCELoss``, ignoring pixels labelled
    :data:`IGNORE_LABEL` in both terms (MONAI ``DiceLoss(ignore_index=...)`` and a masked mean of
    the cross-entropy). Used when pseudo-labelled cases enter training."""

    def __init__(self, *, batch: bool):
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch,
                             ignore_index=IGNORE_LABEL)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        valid = y[:, 0] != IGNORE_LABEL
        ce = torch.nn.functional.cross_entropy(logits, torch.where(valid, y[:, 0], 0), reduction="none")
        ce = (ce * valid).sum() / valid.sum().clamp_min(1)
        return self.dice(logits, y) + ce


def loader_workers(device: torch.device) -> int:
    """Processes that prepare batches: none on CPU (2 cores train fastest alone), several on CUDA.

    ``SSCILD_LOADER_WORKERS`` overrides the choice.
    """
    env = os.environ.get("SSCILD_LOADER_WORKERS", "").strip()
    if env:
        return max(0, int(env))
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 2))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _lr_lambda(iterations: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, iterations - warmup)) ** 0.9
    return f


RECIPE_KEYS = ("spatial_dims", "channels", "strides", "num_res_units", "dropout", "norm", "patch_size",
               "iterations", "batch_size", "learning_rate", "weight_decay", "batch_dice", "intensity_aug",
               "lesion_oversample", "cpu_bf16", "channels_last",
               "seed", "target_spacing", "hu_clip")
"""Profile settings that change what training produces; a fold trained with others is stale."""


def training_recipe(p: Profile, iterations: int | None = None) -> dict:
    """The settings (:data:`RECIPE_KEYS`) a fold is trained with, JSON-ready (tuples as lists)."""
    d = p.to_dict()
    d["iterations"] = int(iterations or p.iterations)
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RECIPE_KEYS}


def _recipe_diff(saved: dict, now: dict) -> list[str]:
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in RECIPE_KEYS if k in saved and saved[k] != now[k]]


def fold_is_done(run: RunPaths, fold: int) -> bool:
    d = run.fold_dir(fold)
    return (d / "train_summary.json").exists() and (d / "model_final.pt").exists()


def load_training_cases(run: RunPaths, case_ids) -> dict:
    """Load the cached, preprocessed training cases (the only data a fold's training ever reads)."""
    return {cid: load_cached(run, cid) for cid in case_ids}


def train_fold(run: RunPaths, profile: str | Profile, fold: int, *, device=None, progress: bool = True,
               stop_after: int | None = None, iterations: int | None = None) -> dict:
    """Train (or resume, or skip if done) fold ``fold`` of ``run``.

    Args:
        run: the run's results folder (``RunPaths``); ``splits.json`` and the cache must exist.
        profile: profile name or object.
        fold: fold index, 0 <= fold < number of folds in ``splits.json``.
        device: torch device; default CUDA when available, else CPU.
        progress: show a tqdm bar (terminal only).
        stop_after: stop (as if killed) after this many steps, right after a checkpoint is written;
            used to test resumption. The fold is then *not* done.
        iterations: override the profile's budget (tests).

    Returns:
        The fold's summary dict (also ``fold_<k>/train_summary.json``).
    """
    p = get_profile(profile)
    fold = int(fold)
    out = run.fold_dir(fold)
    if not run.splits.exists():
        raise FileNotFoundError(f"{run.splits} is missing: run the Data chapter first (`make data`).")
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
        diff = _recipe_diff(summary.get("recipe", {}), training_recipe(p, iterations))
        scans = unlabelled_scans(run) if p.semi_supervised == "auto" else {}
        want = _semi_record(p, scans, iterations) if scans else None
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
    unlabelled = unlabelled_scans(run) if p.semi_supervised == "auto" else {}
    if unlabelled:
        return _train_fold_semi(run, p, fold, cases, unlabelled, test_ids, device=device, progress=progress,
                                stop_after=stop_after, iterations=iterations)
    result = train_model(cases, p, out, key=fold, device=device, progress=progress, stop_after=stop_after,
                         iterations=iterations, desc=f"fold {fold}")
    if result.get("interrupted"):
        return {"fold": fold, **result}
    summary = {"fold": fold, "profile": p.name, "cohort": run.cohort, **result,
               "train_cases": train_ids, "test_cases": sorted(test_ids)}
    write_json(out / "train_summary.json", summary)
    return summary


def unlabelled_scans(run: RunPaths) -> dict[str, Path]:
    """The run's cohort's unlabelled scans (``unlabelledTr/``) that validation found no error in.

    Read from ``validation.json`` (the Data chapter writes it, with the cohort folder and every
    problem); ``{}`` when it is absent or the cohort has no unlabelled scans.
    """
    if not run.validation.exists():
        return {}
    from sscild.data.cohort import UNLABELLED_DIR, load_cohort

    rec = read_json(run.validation)
    root = Path(rec.get("root", ""))
    if not (root / "unlabelledTr").is_dir():
        return {}
    bad = {str(q["case_id"]).split("/", 1)[1] for q in rec.get("problems", [])
           if q.get("severity") == "error" and str(q.get("case_id") or "").startswith(UNLABELLED_DIR + "/")}
    found = load_cohort(root, label_map=rec.get("label_map")).unlabelled
    return {u: f for u, f in found.items() if u not in bad}


class _Pseudo:
    __slots__ = ("image", "label")

    def __init__(self, image: np.ndarray, label: np.ndarray):
        self.image, self.label = image, label


@torch.no_grad()
def pseudo_label_volumes(net: torch.nn.Module, scans: dict[str, Path], profile: Profile, *,
                         device=None) -> tuple[dict, dict]:
    """Preprocess unlabelled scans and label them with a teacher, slice by slice (left-right flip
    averaged); voxels whose highest class probability is below ``profile.pseudo_confidence`` get
    :data:`IGNORE_LABEL`. Returns (id -> case with ``image``/``label`` (x, y, z), stats)."""
    from sscild.data.io import load_volume
    from sscild.data.preprocess import preprocess_volume

    p = get_profile(profile)
    device = select_device(device)
    net.eval()
    out, kept, total = {}, 0, 0
    for uid, path in sorted(scans.items()):
        pre = preprocess_volume(load_volume(path), None, profile=p, case_id=uid)
        img = np.asarray(pre.image, np.float32)
        lab = np.zeros(img.shape, np.uint8)
        for z0 in range(0, img.shape[2], 16):
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(img[:, :, z0:z0 + 16], 2, 0)))[:, None].to(device)
            prob = torch.softmax(net(x).float(), 1) + torch.flip(torch.softmax(net(torch.flip(x, (2,))).float(), 1), (2,))
            conf, arg = (prob / 2).max(1)
            arg = torch.where(conf >= p.pseudo_confidence, arg, torch.full_like(arg, IGNORE_LABEL))
            lab[:, :, z0:z0 + 16] = np.moveaxis(arg.to(torch.uint8).cpu().numpy(), 0, 2)
            kept += int((conf >= p.pseudo_confidence).sum())
            total += conf.numel()
        out[f"unlabelled/{uid}"] = _Pseudo(img, lab)
    return out, {"scans": len(out), "kept_share": round(kept / max(total, 1), 4)}


def _semi_record(p: Profile, scans: dict[str, Path], iterations: int | None) -> dict:
    return {"mode": "self-training", "unlabelled": sorted(scans), "pseudo_confidence": p.pseudo_confidence,
            "pseudo_share": p.pseudo_share, "student_iterations": int(p.student_iterations
                                                                      or max(1, int(iterations or p.iterations) // 2))}


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
            _recipe_diff(t_summary.get("recipe", {}), training_recipe(p, iterations)):
        raise ValueError(f"{tdir} was trained on other patients or settings than fold {fold} now has. "
                         f"Delete {out} (or run `make clean`) to retrain it.")
    from sscild.model.predict import load_fold_model

    teacher, _ = load_fold_model(tdir / "model_final.pt", device=device)
    semi = _semi_record(p, scans, iterations)
    pseudo, stats = pseudo_label_volumes(teacher, scans, p, device=device)
    init = torch.load(tdir / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    result = train_model(cases, p, out, key=fold, device=device, progress=progress, stop_after=stop_after,
                         iterations=semi["student_iterations"], desc=f"fold {fold}, student", pseudo_cases=pseudo,
                         pseudo_share=p.pseudo_share, init_state=init)
    if result.get("interrupted"):
        return {"fold": fold, **result}
    summary = {"fold": fold, "profile": p.name, "cohort": run.cohort, **result,
               "recipe": training_recipe(p, iterations), "semi": semi, "pseudo": stats,
               "teacher_seconds": t_summary.get("seconds"), "train_cases": train_ids,
               "test_cases": sorted(test_ids)}
    write_json(out / "train_summary.json", summary)
    return summary


def train_model(cases: dict, profile: str | Profile, out: Path, *, key: int = 0, num_classes: int = NUM_CLASSES,
                class_names: tuple[str, ...] = ("normal", "ef", "ggo"), device=None, progress: bool = True,
                stop_after: int | None = None, iterations: int | None = None, desc: str = "training",
                pseudo_cases: dict | None = None, pseudo_share: float = 0.0,
                init_state: dict | None = None) -> dict:
    """The training loop on already-loaded cases; resumes from ``out/checkpoint_latest.pt``.

    ``cases`` maps an id to an object with ``image`` (float32, (x, y, z)) and ``label`` (uint8). ``key``
    (the fold index) enters every random draw, with the profile's seed. Writes ``history.csv``,
    ``epochs.csv`` and ``model_final.pt`` into ``out`` and returns a summary dict (without writing it),
    or ``{"steps": n, "interrupted": True}`` when ``stop_after`` stopped it.

    **Semi-supervised (self-training) student.** ``pseudo_cases`` (same form as ``cases``) hold
    pseudo-labels made by a teacher from unlabelled images, with :data:`IGNORE_LABEL` where the
    teacher was not confident; ``round(pseudo_share * batch_size)`` patches of every batch (at least
    one, at most all but one) come from them, and the loss ignores the masked pixels.
    ``init_state`` (a network ``state_dict``, e.g. the teacher's) starts the weights from it instead
    of a random initialisation. With neither, training is exactly the supervised loop.
    """
    p = get_profile(profile)
    out = Path(out)
    if len(class_names) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} foreground classes, got {class_names}")
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
    out.mkdir(parents=True, exist_ok=True)
    total = int(iterations or p.iterations)
    seed = p.seed * 1000 + int(key)

    device = select_device(device)
    threads = set_threads()
    numerics = network_numerics(p, device)
    use_amp = bool(numerics["autocast"] and device.type == "cuda")   # float16 needs the gradient scaler
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)

    sampler = PatchSampler(cases, patch_size=p.patch_size[:2], lesion_oversample=p.lesion_oversample)
    pseudo = (PatchSampler(pseudo_cases, patch_size=p.patch_size[:2], lesion_oversample=p.lesion_oversample)
              if n_pseudo else None)
    aug = augment_for_profile(p)

    torch.manual_seed(seed)
    net = build_network(p, out_channels=num_classes).to(device)
    if init_state is not None:
        net.load_state_dict(init_state)
    if numerics["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    from monai.losses import DiceCELoss

    if n_pseudo:
        loss_fn = _MaskedDiceCE(batch=bool(p.batch_dice))
    else:
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=bool(p.batch_dice))
    opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    warmup = max(1, min(50, total // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict] = []
    epochs: list[dict] = []
    step = 0
    elapsed_before = 0.0
    ckpt = out / "checkpoint_latest.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        diff = _recipe_diff(state.get("recipe", {}), training_recipe(p, total))
        if diff:
            raise ValueError(f"{ckpt} was written with other settings than profile {p.name!r} now has "
                             f"({'; '.join(diff)}); it cannot be resumed. Delete it to start this fold afresh.")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        history = state["history"]
        epochs = state["epochs"]
        elapsed_before = float(state.get("seconds", 0.0))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=None, mininterval=2.0)

    beat = Heartbeat(desc, total=total, unit="step", start=step)  # make's terminal; not the notebook
    nfg = num_classes - 1
    workers = loader_workers(device)
    batches = torch.utils.data.DataLoader(
        _StepBatches(sampler, seed=p.seed, key=key, batch_size=p.batch_size, total=total,
                     pseudo=pseudo, n_pseudo=n_pseudo),
        batch_size=None, sampler=range(step, total), num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers else None)
    # running sums stay on the device: no host synchronisation except when a log line is written
    zeros = lambda n=(): torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
    net.train()
    t0 = time.perf_counter()
    window_loss, window_n = zeros(), 0
    epoch_loss, epoch_dice, epoch_cnt, epoch_n = zeros(), zeros(nfg), zeros(nfg), 0
    t_last = t0
    classes = torch.arange(1, num_classes, device=device).view(1, -1, *[1] * len(p.patch_size[:2]))
    batch_iter = iter(batches)
    while step < total:
        img, lab, aug_seed = next(batch_iter)
        x, y = aug(img.to(device, non_blocking=True), lab.to(device, non_blocking=True), seed=aug_seed)
        if numerics["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=numerics["dtype"], enabled=numerics["autocast"]):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        with torch.no_grad():
            pred = logits.argmax(1, keepdim=True) == classes          # (B, C-1, ...) one-hot of foreground
            ref = (y == classes) & (y != IGNORE_LABEL)
            pred = pred & (y != IGNORE_LABEL)
            dims = tuple(d for d in range(pred.ndim) if d != 1)
            inter = (pred & ref).sum(dims).double()
            denom = pred.sum(dims).double() + ref.sum(dims).double()
            present = denom > 0
            epoch_dice += torch.where(present, 2 * inter / denom.clamp_min(1), torch.zeros_like(denom))
            epoch_cnt += present.double()
            lv = loss.detach().double()
            window_loss += lv
            epoch_loss += lv
        window_n += 1
        epoch_n += 1
        if bar is not None:
            bar.update(1)
        if step % p.log_every == 0 or step == total:
            now = time.perf_counter()
            mean_loss = float(window_loss) / window_n
            history.append({"step": step, "loss": mean_loss, "lr": sched.get_last_lr()[0],
                            "steps_per_s": window_n / max(now - t_last, 1e-9)})
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
            beat.update(step, loss=mean_loss)
            t_last = now
            window_loss, window_n = zeros(), 0
        if step % p.checkpoint_every == 0 or step == total:
            row = {"epoch": len(epochs) + 1, "step": step, "train_loss": float(epoch_loss) / epoch_n}
            dice_sum, dice_cnt = epoch_dice.cpu().numpy(), epoch_cnt.cpu().numpy()
            for i, name in enumerate(class_names):
                row[f"train_dice_{name}"] = dice_sum[i] / dice_cnt[i] if dice_cnt[i] else float("nan")
            epochs.append(row)
            epoch_loss, epoch_dice, epoch_cnt, epoch_n = zeros(), zeros(nfg), zeros(nfg), 0
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "step": step, "history": history, "epochs": epochs,
                     "recipe": training_recipe(p, total),
                     "seconds": elapsed_before + time.perf_counter() - t0}
            with atomic_path(ckpt, suffix=".pt") as tmp:
                torch.save(state, tmp)
            if stop_after is not None and step >= stop_after and step < total:
                if bar is not None:
                    bar.close()
                return {"steps": step, "interrupted": True}
    if bar is not None:
        bar.close()
    seconds = elapsed_before + time.perf_counter() - t0

    with atomic_path(out / "history.csv", suffix=".csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    with atomic_path(out / "epochs.csv", suffix=".csv") as tmp:
        pd.DataFrame(epochs).to_csv(tmp, index=False)
    final = {"model": net.state_dict(), "profile": p.to_dict(), "fold": int(key), "num_classes": num_classes,
             "class_names": list(class_names), "train_cases": sorted(cases),
             # what the model segments, so `sscild segment` can refuse a model of another task
             "label_scheme": {"background": 0, **{str(c): i + 1 for i, c in enumerate(class_names)}},
             "input_kind": "2d-image-slices" if (p.extra or {}).get("grid_size") else "ct-volume-hu"}
    with atomic_path(out / "model_final.pt", suffix=".pt") as tmp:
        torch.save(final, tmp)
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
        "parameters": count_parameters(net),
        "seed": seed,
        "final_loss": history[-1]["loss"] if history else None,
        "recipe": training_recipe(p, total),
        "pseudo_cases": len(pseudo_cases or {}),
        "pseudo_per_batch": n_pseudo,
        "init": "given state" if init_state is not None else "random",
        "torch": torch.__version__,
    }
