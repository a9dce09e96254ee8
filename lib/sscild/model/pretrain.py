"""Self-supervised pretraining: the segmentation network learns to restore corrupted CT before it
ever sees a label.

Each step takes a batch of unlabelled 2D images (the caller's ``next_batch``), hides random
rectangles under a constant grey, adds Gaussian noise (:func:`corrupt`), and trains the *segmentation
network itself* to give back the clean image in its first output channel (L1 loss,
:func:`restoration_pretrain`). To fill in a hidden rectangle it must learn what lung, vessels and
lesions look like around it. Training then starts from these weights instead of a random
initialisation. Used by the external benchmark (:mod:`sscild.external.pretrain`) on unlabelled
slices.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from sscild.model.device import select_device
from sscild.model.network import build_network
from sscild.profiles import Profile
from sscild.progress import Heartbeat

__all__ = ["corrupt", "restoration_pretrain"]


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
