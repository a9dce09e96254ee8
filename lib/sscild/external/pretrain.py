"""Self-supervised pretraining on unlabelled slices: the network learns to restore corrupted CT
before it ever sees a label.

Each step takes a batch of unlabelled slices on the network's grid (each turned by a random
multiple of 90 degrees and maybe flipped), hides random rectangles under a constant grey, adds
Gaussian noise, and trains the *segmentation network itself* to give back the clean slice in its
first output channel (L1 loss): to fill in a hidden rectangle it must learn what lung, vessels,
ground glass and consolidation look like around it. Every fold's first training stage then starts
from these weights instead of a random initialisation. The pretraining reads unlabelled slices
only, so one pretrained network serves every fold and the test model without any held-out slice
reaching it; it is cached under the run folder, keyed by the network, the steps and the slices.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sscild.external.grid import GridMap, normalize_intensity
from sscild.external.recipe import check_extra
from sscild.external.slices import SliceImage, natural_key
from sscild.model.device import select_device
from sscild.model.network import build_network
from sscild.paths import atomic_path, read_json, write_json
from sscild.profiles import Profile
from sscild.progress import Heartbeat

__all__ = ["corrupt", "pretrain_key", "pretrained_state"]


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


def pretrain_key(p: Profile, unlabelled: Mapping[str, SliceImage]) -> dict:
    """What the pretrained weights depend on: the network, grid, steps, batch, seed and the slices."""
    ex = check_extra(p)
    ids = sorted(unlabelled, key=natural_key)
    return {"channels": list(p.channels), "strides": list(p.strides), "num_res_units": p.num_res_units,
            "norm": p.norm, "grid_size": ex["grid_size"], "steps": ex["pretrain_steps"], "batch_size": p.batch_size,
            "learning_rate": p.learning_rate, "seed": p.seed, "n_unlabelled": len(ids),
            "unlabelled_sha1": hashlib.sha1("".join(unlabelled[u].digest() for u in ids).encode()).hexdigest()}


def pretrained_state(unlabelled: Mapping[str, SliceImage], p: Profile, out: Path, *,
                     log=print) -> tuple[dict, dict]:
    """The network weights after ``extra["pretrain_steps"]`` steps of restoring corrupted unlabelled
    slices (trained now, or read from ``out`` when it holds a finished run with the same key).

    Returns (state dict for :func:`sscild.model.network.build_network` with 3 outputs, summary)."""
    out = Path(out)
    ex = check_extra(p)
    key = pretrain_key(p, unlabelled)
    if (out / "pretrain_key.json").exists() and read_json(out / "pretrain_key.json") == json.loads(json.dumps(key)) \
            and (out / "pretrained.pt").exists():
        return torch.load(out / "pretrained.pt", map_location="cpu", weights_only=False), read_json(out / "summary.json")
    device = select_device(None)
    ids = sorted(unlabelled, key=natural_key)
    grids = np.stack([GridMap(shape=unlabelled[u].shape, size=ex["grid_size"]).image_to_grid(
        normalize_intensity(unlabelled[u].image)) for u in ids])[:, None]
    torch.manual_seed(p.seed)
    net = build_network(p, out_channels=3).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    steps = int(ex["pretrain_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps) ** 0.9)
    rng = np.random.default_rng([p.seed, 7919])
    t0, losses = time.perf_counter(), []
    beat = Heartbeat(f"pretraining on {len(ids)} unlabelled slices", total=steps, unit="step")  # make's terminal
    net.train()
    for step in range(steps):
        pick = rng.integers(0, len(ids), p.batch_size)
        x = torch.from_numpy(grids[pick])
        x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        if rng.random() < 0.5:
            x = torch.flip(x, dims=(3,))
        x = x.contiguous()
        y = corrupt(x, rng)
        loss = torch.nn.functional.l1_loss(net(y.to(device))[:, :1].float(), x.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        beat.update(step + 1, l1=float(np.mean(losses[-50:])))
        if log and (step + 1) % max(1, steps // 4) == 0:
            log(f"pretraining on {len(ids)} unlabelled slices: step {step + 1}/{steps}, L1 {np.mean(losses[-50:]):.3f}")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    summary = {"steps": steps, "seconds": round(time.perf_counter() - t0, 2), "slices": len(ids),
               "first_l1": round(float(np.mean(losses[:50])), 4), "last_l1": round(float(np.mean(losses[-50:])), 4)}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pretrained.pt", suffix=".pt") as tmp:
        torch.save(state, tmp)
    write_json(out / "summary.json", summary)
    write_json(out / "pretrain_key.json", key)
    return state, summary
