"""Self-supervised pretraining: the segmentation network learns to restore corrupted CT before it
ever sees a label.

Each step takes a batch of unlabelled 2D images (the caller's ``next_batch``), hides random
rectangles under a constant grey, adds Gaussian noise (:func:`corrupt`), and trains the *segmentation
network itself* to give back the clean image in its first output channel (L1 loss,
:func:`restoration_pretrain`). To fill in a hidden rectangle it must learn what lung, vessels and
lesions look like around it. Training then starts from these weights instead of a random
initialisation.

* **Study** (:func:`cohort_pretrained_state`): when the cohort has unlabelled scans
  (``unlabelledTr/``) and the profile's ``semi_supervised`` is ``"pretrain"``, the network restores
  random axial patches (``profile.patch_size``) of the preprocessed unlabelled scans for
  ``profile.pretrain_steps`` steps; every fold then starts from these weights. It reads no labelled
  scan and no label, so one pretrained network serves every fold without a held-out patient
  reaching it. It runs once per run and is kept in ``<run>/pretrained/``, keyed by the network, the
  steps, the preprocessing and a hash of each scan file (a file lock makes folds trained at once
  wait for one pretraining). The preprocessed scans are cached as float16 files and read through
  memory maps (:func:`unlabelled_image`), so memory does not grow with their number.
* **External benchmark** (:mod:`sscild.external.pretrain`): whole unlabelled slices on its grid.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from sscild.data.cache import cache_key
from sscild.data.image import load_volume
from sscild.data.preprocess import normalise_hu, preprocess_volume
from sscild.model.device import select_device
from sscild.model.network import NUM_CLASSES, build_network
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.profiles import Profile, require_profile
from sscild.progress import Heartbeat

__all__ = ["corrupt", "restoration_pretrain", "cohort_pretrain_key", "cohort_pretrained_state", "PatchSource",
           "finished_pretrained_state", "restoration_example", "unlabelled_image"]


def corrupt(x: torch.Tensor, rng: np.random.Generator, *, boxes: int = 6, max_side: float = 0.25,
            noise: float = 0.1) -> torch.Tensor:
    """A corrupted copy of the batch ``x`` (B, 1, H, W): ``boxes`` rectangles per image (sides up
    to ``max_side`` of the grid) set to one random grey each, then Gaussian noise of SD ``noise``.

    >>> x = torch.zeros(2, 1, 32, 32)
    >>> y = corrupt(x, np.random.default_rng(0), noise=0.0)
    >>> y.shape == x.shape and bool((y != 0).any()) and bool((x == 0).all())
    True
    """
    y = x.clone()
    _, _, h, w = y.shape
    for b in range(y.shape[0]):
        for _ in range(boxes):
            bh, bw = (int(rng.integers(2, max(3, int(max_side * s)) + 1)) for s in (h, w))
            r0, c0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            y[b, :, r0:r0 + bh, c0:c0 + bw] = float(rng.uniform(-1.0, 1.0))
    if noise:
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        y = y + noise * torch.randn(y.shape, generator=gen)
    return y


def restoration_pretrain(next_batch: Callable[[np.random.Generator], torch.Tensor], p: Profile, *, steps: int,
                         out_channels: int, desc: str, log=print, device=None) -> tuple[dict, dict]:
    """Train a fresh network of profile ``p`` (``out_channels`` outputs) for ``steps`` steps to
    restore corrupted images; ``next_batch(rng)`` gives each step's clean batch (B, 1, H, W) in
    [-1, 1]. The randomness derives from ``p.seed`` alone.

    Returns (the weights on the CPU, summary: steps, seconds, first and last L1, each a mean over 50 steps).
    """
    device = select_device(device)
    torch.manual_seed(p.seed)
    net = build_network(p, out_channels=out_channels).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    steps = int(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps) ** 0.9)
    rng = np.random.default_rng([p.seed, 7919])
    t0, losses = time.perf_counter(), []
    beat = Heartbeat(desc, total=steps, unit="step")  # make's terminal
    net.train()
    for step in range(steps):
        x = next_batch(rng)
        y = corrupt(x, rng)
        loss = torch.nn.functional.l1_loss(net(y.to(device))[:, :1].float(), x.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        beat.update(step + 1, l1=float(np.mean(losses[-50:])))
        if log and (step + 1) % max(1, steps // 4) == 0:
            log(f"{desc}: step {step + 1}/{steps}, L1 {np.mean(losses[-50:]):.3f}")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    summary = {"steps": steps, "seconds": round(time.perf_counter() - t0, 2),
               "first_l1": round(float(np.mean(losses[:50])), 4), "last_l1": round(float(np.mean(losses[-50:])), 4)}
    return state, summary


def cohort_pretrain_key(p: Profile, scans: Mapping[str, Path]) -> dict:
    """What the study's pretrained weights depend on: network, patch, steps, optimiser, seed, and
    each unlabelled scan's preprocessing cache key (its file's bytes and the preprocessing settings,
    :func:`sscild.data.cache.cache_key`)."""
    key = {"channels": list(p.channels), "strides": list(p.strides), "num_res_units": p.num_res_units,
           "norm": p.norm, "dropout": p.dropout, "patch_size": list(p.patch_size), "steps": int(p.pretrain_steps),
           "batch_size": p.batch_size, "learning_rate": p.learning_rate, "weight_decay": p.weight_decay,
           "seed": p.seed, "scans": {u: cache_key(scans[u], None, p) for u in sorted(scans)}}
    return key if p.architecture == "unet" else {"architecture": p.architecture, **key}


def _crop(sl: np.ndarray, x0: int, y0: int, px: int, py: int) -> np.ndarray:
    """The (px, py) window of the 2D slice ``sl`` from corner (x0, y0); outside the slice: air (-1)."""
    out = np.full((px, py), -1.0, np.float32)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + px, sl.shape[0]), min(y0 + py, sl.shape[1])
    out[sx0 - x0:sx1 - x0, sy0 - y0:sy1 - y0] = sl[sx0:sx1, sy0:sy1]
    return out


class PatchSource:
    """Random axial patches of preprocessed unlabelled scans (float16 in memory), each turned by a
    random multiple of 90 degrees and maybe flipped; patches that reach past a scan's edge are
    filled with air (-1)."""

    def __init__(self, volumes: list[np.ndarray], patch_size, batch_size: int):
        if not volumes:
            raise ValueError("PatchSource needs at least one scan")
        self.volumes = volumes
        self.patch = tuple(int(v) for v in patch_size)
        self.batch_size = int(batch_size)

    def __call__(self, rng: np.random.Generator) -> torch.Tensor:
        px, py = self.patch
        out = np.empty((self.batch_size, 1, px, py), np.float32)
        for b in range(self.batch_size):
            vol = self.volumes[int(rng.integers(len(self.volumes)))]
            z = int(rng.integers(vol.shape[2]))
            x0 = int(rng.integers(-(px // 4), max(1, vol.shape[0] - px + px // 4)))
            y0 = int(rng.integers(-(py // 4), max(1, vol.shape[1] - py + py // 4)))
            out[b, 0] = _crop(vol[:, :, z], x0, y0, px, py)
        x = torch.from_numpy(out)
        if px == py:
            x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        if rng.random() < 0.5:
            x = torch.flip(x, dims=(2,))
        return x.contiguous()


def unlabelled_image(run: RunPaths, profile: Profile, uid: str, scan: Path, *, key: str | None = None) -> np.ndarray:
    """The preprocessed unlabelled scan ``uid`` as float16, memory-mapped read-only from the run's cache.

    ``<run>/cache/unlabelled/<uid>.f16.npy`` is written once (and again when the scan or the
    preprocessing changes: its :func:`~sscild.data.cache.cache_key` is kept beside it), so pretraining
    holds no scan in memory however many there are: the patches are read from the file. ``key``: that
    cache key when the caller already has it (hashing a full-size scan twice is not free).
    """
    folder = run.cache / "unlabelled"
    arr_path, key_path = folder / f"{uid}.f16.npy", folder / f"{uid}.json"
    key = key or cache_key(scan, None, profile)
    fresh = arr_path.exists() and key_path.exists() and read_json(key_path).get("key") == key
    if not fresh:
        folder.mkdir(parents=True, exist_ok=True)
        key_path.unlink(missing_ok=True)  # a stale key must not vouch for the array being replaced
        pre = preprocess_volume(load_volume(scan), None, profile=profile, case_id=uid)
        with atomic_path(arr_path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(pre.image, np.float16))
        del pre
        write_json(key_path, {"key": key, "scan": str(scan)})
    return np.load(arr_path, mmap_mode="r")


def cohort_pretrained_state(run: RunPaths, profile: Profile, scans: Mapping[str, Path], *, device=None,
                            log=print) -> tuple[dict, dict]:
    """The study network's weights after ``profile.pretrain_steps`` steps of restoring corrupted
    patches of the unlabelled ``scans`` (id -> CT file): trained now, or read from
    ``<run>/pretrained/`` when it holds a finished pretraining with the same key.

    Returns (state dict for :func:`sscild.model.network.build_network`, summary: steps, seconds,
    scans, first and last L1, ``reused``)."""
    p = require_profile(profile)
    if p.spatial_dims != 2:
        raise ValueError(f"profile {p.name!r}: pretraining on unlabelled scans is implemented for 2D networks "
                         f"(spatial_dims 2), not {p.spatial_dims}; set semi_supervised='off'.")
    if not scans:
        raise ValueError("cohort_pretrained_state: no unlabelled scans given")
    if int(p.pretrain_steps) < 1:
        raise ValueError(f"profile {p.name!r}: pretrain_steps must be >= 1 to pretrain, got {p.pretrain_steps!r}")
    out = run.root / "pretrained"
    out.mkdir(parents=True, exist_ok=True)
    key = json.loads(json.dumps(cohort_pretrain_key(p, scans)))
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # folds trained at once: one pretrains, the others wait and reuse
        try:
            found = finished_pretrained_state(run, p, scans)
            if found is not None:
                return found[0], {**found[1], "reused": True}
            volumes = [unlabelled_image(run, p, uid, scans[uid], key=key["scans"][uid]) for uid in sorted(scans)]
            source = PatchSource(volumes, p.patch_size, p.batch_size)
            state, summary = restoration_pretrain(source, p, steps=int(p.pretrain_steps), out_channels=NUM_CLASSES,
                                                  desc=f"pretraining on {len(volumes)} unlabelled scans",
                                                  log=log, device=device)
            summary = {**summary, "scans": len(volumes)}
            with atomic_path(out / "pretrained.pt", suffix=".pt") as tmp:
                torch.save(state, tmp)
            write_json(out / "summary.json", summary)
            write_json(out / "pretrain_key.json", key)
            return state, {**summary, "reused": False}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def finished_pretrained_state(run: RunPaths, profile: Profile, scans: Mapping[str, Path]) -> tuple[dict, dict] | None:
    """The weights and summary of a finished pretraining in ``<run>/pretrained/`` made with the key these
    ``scans`` and this profile give (:func:`cohort_pretrain_key`); ``None`` when there is none. Never trains."""
    out = run.root / "pretrained"
    files = [out / "pretrain_key.json", out / "pretrained.pt", out / "summary.json"]
    if not all(f.exists() for f in files):
        return None
    if read_json(files[0]) != json.loads(json.dumps(cohort_pretrain_key(require_profile(profile), scans))):
        return None
    return torch.load(files[1], map_location="cpu", weights_only=False), read_json(files[2])


@torch.no_grad()
def restoration_example(state: dict, profile: Profile, scan: Path, *, seed: int = 0) -> dict:
    """One patch of ``scan`` as the pretraining sees it, centred in the lung for the eye: ``clean``,
    ``corrupted`` and the pretrained network's ``restored`` version (2D arrays in [-1, 1], axial,
    (x, y)), for a figure."""
    p = require_profile(profile)
    vol = np.asarray(preprocess_volume(load_volume(scan), None, profile=p, case_id=Path(scan).name).image, np.float32)
    lo, hi = normalise_hu(np.array([-950.0, -300.0]), p)  # lung parenchyma to ground glass, on the [-1, 1] scale
    lungish = (vol > lo) & (vol < hi)
    z = int(np.argmax(lungish.sum(axis=(0, 1))))  # the level with the most lung-like voxels
    xs, ys = np.nonzero(lungish[:, :, z])
    rng = np.random.default_rng([seed, 7919])
    cx, cy = (int(xs.mean()), int(ys.mean())) if xs.size else (vol.shape[0] // 2, vol.shape[1] // 2)
    px, py = (int(v) for v in p.patch_size)
    clean = _crop(vol[:, :, z], cx - px // 2, cy - py // 2, px, py)
    clean_t = torch.from_numpy(clean)[None, None]
    bad = corrupt(clean_t, rng)
    net = build_network(p, out_channels=NUM_CLASSES)
    net.load_state_dict(state)
    net.eval()
    restored = net(bad)[:, :1]
    return {"clean": clean, "corrupted": bad[0, 0].numpy(), "restored": restored[0, 0].numpy()}
