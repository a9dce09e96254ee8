"""Consistency learning on unlabelled images: a mean teacher and a perturbed student.

The family that leads semi-supervised segmentation benchmarks (Mean Teacher, FixMatch, UniMatch),
in one form that the study's folds and the external check share (``semi_supervised="consistency"``).
Each training step, beside its labelled batch, takes ``per_batch`` unlabelled images
(``next_batch(rng)``, the caller's source of patches or slices) and:

1. makes a **weak view** of them: random flips and 90-degree turns only;
2. lets the **teacher** label the weak view: its softmax, the arg-max class where the highest
   probability reaches ``confidence``, and :data:`~sscild.model.ignore.IGNORE_LABEL` elsewhere.
   The teacher is an exponential moving average (decay ``ema``) of the student's weights and
   batch-norm statistics, so its labels change slowly and are better than any single student state;
3. makes a **strong view** of the weak one: intensity changes (scale, shift, gamma, blur, low
   resolution, noise) and, with probability ``cutmix`` per image, CutMix: a random rectangle (a
   tenth to a half of the image's area, sides 1:2 to 2:1) taken from the next image of the batch,
   with the teacher's labels mixed the same way;
4. trains the **student** on the labelled batch and the strong view together (one forward pass):
   the supervised loss plus ``weight`` times the cross-entropy between the student's prediction on
   the strong view and the teacher's labels, averaged over every pixel (unsure pixels count as
   zero, so an unsure teacher pulls less), ramped up linearly over the first ``rampup`` share of
   the steps;
5. moves the teacher towards the student (:meth:`Consistency.update`).

The student learns to give on a perturbed image what a steadier network gives on a clean one. Every
random choice derives from ``(seed, key, step)``, as the labelled batches' do, so a resumed run goes
on as an uninterrupted one would; the teacher is saved in the checkpoint beside the student. The
saved model is the student.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sscild.model.augment import BatchAugment
from sscild.model.ignore import IGNORE_LABEL

__all__ = ["ConsistencySettings", "Consistency"]


@dataclass(frozen=True)
class ConsistencySettings:
    """How a training uses its unlabelled images (module docstring).

    ``per_batch``: unlabelled images per step; ``confidence``: the teacher's lowest probability that
    still gives a label; ``weight``: the consistency loss's weight beside the supervised loss;
    ``ema``: the teacher's decay per step; ``cutmix``: probability of CutMix per image; ``rampup``:
    share of the steps over which the weight grows linearly from 0; ``rot90``: the weak view also
    turns by multiples of 90 degrees (square images only)."""

    per_batch: int = 4
    confidence: float = 0.9
    weight: float = 1.0
    ema: float = 0.99
    cutmix: float = 0.5
    rampup: float = 0.1
    rot90: bool = True

    def __post_init__(self):
        if isinstance(self.per_batch, bool) or not isinstance(self.per_batch, (int, np.integer)) or self.per_batch < 2:
            raise ValueError(f"consistency: per_batch must be an integer >= 2 (CutMix pairs images), "
                             f"got {self.per_batch!r}")
        for name, lo, hi in (("confidence", 0.0, 1.0), ("ema", 0.0, 1.0), ("cutmix", 0.0, 1.0), ("rampup", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
                raise ValueError(f"consistency: {name} must be a number in [{lo}, {hi}], got {v!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ValueError(f"consistency: weight must be a number >= 0, got {self.weight!r}")

    def record(self) -> dict:
        """The settings as plain values (for the recipe and the reuse keys)."""
        return {"per_batch": int(self.per_batch), "confidence": float(self.confidence), "weight": float(self.weight),
                "ema": float(self.ema), "cutmix": float(self.cutmix), "rampup": float(self.rampup),
                "rot90": bool(self.rot90)}


_STRONG = dict(flip_prob=(0.0, 0.0), affine_prob=0.0, shift_prob=0.8, scale_prob=0.8, intensity=0.2, gamma_prob=0.5,
               gamma_range=(0.6, 1.6), blur_prob=0.3, blur_sigma=(0.5, 1.5), lowres_prob=0.3, lowres_range=(0.5, 1.0),
               noise_prob=0.5, noise_std=0.05)
"""The strong view's intensity perturbations (no geometry: the teacher's labels stay aligned)."""


class Consistency:
    """The mean teacher and the perturbed views of one training (module docstring).

    Args:
        net: the student network (the teacher starts as a copy of it, on the same device).
        next_batch: ``rng -> (n, 1, H, W)`` float tensor of unlabelled images, ``n >= settings.per_batch``
            (the first ``per_batch`` are used).
        settings: :class:`ConsistencySettings`.
        seed, key: with the step, the seed of every random choice.
        total: the training's steps (for the ramp-up).
    """

    def __init__(self, net: torch.nn.Module, next_batch: Callable[[np.random.Generator], torch.Tensor],
                 settings: ConsistencySettings, *, seed: int, key: int, total: int):
        self.s = settings
        self.next_batch = next_batch
        self.seed, self.key, self.total = int(seed), int(key), max(1, int(total))
        self.teacher = copy.deepcopy(net)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.strong = BatchAugment(**_STRONG)

    def ramp(self, step: int) -> float:
        """The consistency weight at ``step`` (0-based): linear from 0 over the first ``rampup`` share."""
        n = self.s.rampup * self.total
        return float(self.s.weight) * (1.0 if n <= 0 else min(1.0, (step + 1) / n))

    @torch.no_grad()
    def views(self, step: int, device: torch.device, *, numerics: dict | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The strong view of step ``step``'s unlabelled images and the teacher's labels for it
        (:data:`IGNORE_LABEL` where unsure), and what share of pixels got a label (a 0-d tensor). ``numerics``: the
        training's autocast settings (:func:`sscild.model.device.network_numerics`), which the
        teacher's forward pass uses too."""
        rng = np.random.default_rng([self.seed, self.key, int(step), 7])   # a stream of its own
        x = self.next_batch(rng)[: self.s.per_batch].to(device, non_blocking=True).float()
        b = x.shape[0]
        if b < 2:
            raise ValueError(f"consistency: the unlabelled source gave {b} image(s); it needs at least 2 per step")
        # weak view: flips and quarter turns, the same for image and (later) labels
        if rng.random() < 0.5:
            x = x.flip(2)
        if rng.random() < 0.5:
            x = x.flip(3)
        if self.s.rot90 and x.shape[2] == x.shape[3]:
            x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        self.teacher.eval()
        num = numerics or {"autocast": False, "dtype": torch.float32}
        with torch.autocast(device_type=device.type, dtype=num["dtype"], enabled=bool(num["autocast"])):
            logits = self.teacher(x)
        prob = torch.softmax(logits.float(), 1)
        conf, lab = prob.max(1, keepdim=True)
        lab = torch.where(conf >= self.s.confidence, lab, torch.full_like(lab, IGNORE_LABEL))
        # strong view: intensity changes, then CutMix with the next image of the batch
        xs, _ = self.strong(x, torch.zeros_like(lab), seed=int(rng.integers(2**31 - 1)))
        h, w = x.shape[2:]
        box = torch.zeros((b, 1, h, w), dtype=torch.bool, device=device)
        for i in range(b):
            if rng.random() < self.s.cutmix:
                area = rng.uniform(0.1, 0.5)
                ratio = rng.uniform(0.5, 2.0)
                bh = max(1, min(h, int(round(np.sqrt(area * h * w * ratio)))))
                bw = max(1, min(w, int(round(np.sqrt(area * h * w / ratio)))))
                r0, c0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
                box[i, :, r0:r0 + bh, c0:c0 + bw] = True
        other = torch.roll(torch.arange(b, device=device), 1)
        xs = torch.where(box, xs[other], xs)
        lab = torch.where(box, lab[other], lab)
        # a 0-d tensor on the device: read on the host only when a log line is written
        return xs, lab, {"labelled_share": (lab != IGNORE_LABEL).float().mean()}

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the teacher's labels, summed over the labelled pixels and divided by
        all pixels (FixMatch's normalisation)."""
        valid = target[:, 0] != IGNORE_LABEL
        ce = F.cross_entropy(logits.float(), torch.where(valid, target[:, 0], 0), reduction="none")
        return (ce * valid).sum() / valid.numel()

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Move the teacher's weights towards the student's (decay ``ema``); copy its batch-norm statistics
        the same way (integer buffers, such as the batch count, are copied)."""
        d = float(self.s.ema)
        for t, s in zip(self.teacher.parameters(), net.parameters()):
            t.mul_(d).add_(s.detach(), alpha=1.0 - d)
        for t, s in zip(self.teacher.buffers(), net.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(d).add_(s.detach(), alpha=1.0 - d)
            else:
                t.copy_(s)
