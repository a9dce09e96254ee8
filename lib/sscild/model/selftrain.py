"""Self-training with unlabelled scans: the teacher's pseudo-labels and the loss that skips unsure pixels.

When the cohort has unlabelled scans (``unlabelledTr/``, :func:`unlabelled_scans`) and the profile asks
for it, a fold is trained twice (:func:`sscild.model.train.train_fold`): a supervised *teacher* on the
fold's training patients, which labels the unlabelled scans slice by slice (:func:`pseudo_label_volumes`,
left-right flip averaged), and the fold's model, a *student* trained from the teacher's weights on both.
Voxels where the teacher is less sure than ``profile.pseudo_confidence`` get :data:`IGNORE_LABEL`, which
the student's loss (:class:`MaskedDiceCE`) skips. :func:`semi_record` is what the fold records about it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceLoss

from sscild.data.image import load_volume
from sscild.data.prepare import validated_scans
from sscild.data.preprocess import preprocess_volume
from sscild.model.consistency import ConsistencySettings
from sscild.model.device import select_device
from sscild.model.ignore import IGNORE_LABEL
from sscild.paths import RunPaths
from sscild.profiles import Profile, require_profile

__all__ = ["IGNORE_LABEL", "MaskedDiceCE", "SEMI_MODES", "semi_mode", "unlabelled_scans", "pseudo_label_volumes",
           "semi_record", "study_consistency", "pretrains"]

SEMI_MODES = ("pretrain", "self-training", "consistency", "off")
"""Values of ``profile.semi_supervised``: how training uses the cohort's unlabelled scans (and the external
check its unlabelled slices, :mod:`sscild.external.recipe`; both are checked by :func:`semi_mode`).
``"consistency"``: a mean teacher and a perturbed student (:mod:`sscild.model.consistency`), from the
pretrained weights when ``pretrain_steps`` > 0."""


class MaskedDiceCE(torch.nn.Module):
    """Dice + cross-entropy like ``monai.losses.DiceCELoss``, ignoring pixels labelled
    :data:`IGNORE_LABEL` in both terms (MONAI ``DiceLoss(ignore_index=...)`` and a masked mean of
    the cross-entropy). Used when pseudo-labelled cases enter training."""

    def __init__(self, *, batch: bool):
        super().__init__()
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch,
                             ignore_index=IGNORE_LABEL)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        valid = y[:, 0] != IGNORE_LABEL
        ce = torch.nn.functional.cross_entropy(logits, torch.where(valid, y[:, 0], 0), reduction="none")
        ce = (ce * valid).sum() / valid.sum().clamp_min(1)
        return self.dice(logits, y) + ce


def unlabelled_scans(run: RunPaths) -> dict[str, Path]:
    """The run's cohort's unlabelled scans (``unlabelledTr/``) that validation found no error in.

    Read from ``validation.json`` (make's data stage writes it, with the cohort folder and every
    problem); ``{}`` when it is absent or the cohort has no unlabelled scans.
    """
    return validated_scans(run, "unlabelled")


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
    p = require_profile(profile)
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


def semi_mode(p: Profile) -> str:
    """``profile.semi_supervised``, checked: one of :data:`SEMI_MODES` (``"pretrain"`` with
    ``pretrain_steps`` 0 is ``"off"``).

    >>> from sscild.profiles import get_profile
    >>> semi_mode(get_profile("smoke")), semi_mode(get_profile("smoke").with_overrides(pretrain_steps=0))
    ('pretrain', 'off')
    """
    mode = p.semi_supervised
    if mode not in SEMI_MODES:
        raise ValueError(f"profile {p.name!r}: semi_supervised must be one of {', '.join(SEMI_MODES)}, got {mode!r}.")
    if mode == "pretrain" and int(p.pretrain_steps) < 1:
        return "off"
    return mode


def pretrains(p: Profile) -> bool:
    """Whether a run of ``p`` pretrains on its unlabelled scans: ``"pretrain"``, and ``"consistency"``
    with ``pretrain_steps`` > 0 (the folds then start from those weights)."""
    return semi_mode(p) in ("pretrain", "consistency") and int(p.pretrain_steps) > 0


def semi_record(p: Profile, scans: dict[str, Path], iterations: int | None) -> dict:
    """How a fold used the unlabelled scans (recorded, and compared with when the fold is reused)."""
    if semi_mode(p) == "pretrain":
        return {"mode": "pretrain", "unlabelled": sorted(scans), "pretrain_steps": int(p.pretrain_steps)}
    if semi_mode(p) == "consistency":
        return {"mode": "consistency", "unlabelled": sorted(scans), "pretrain_steps": int(p.pretrain_steps),
                **study_consistency(p).record()}
    return {"mode": "self-training", "unlabelled": sorted(scans), "pseudo_confidence": p.pseudo_confidence,
            "pseudo_share": p.pseudo_share, "student_iterations": int(p.student_iterations
                                                                      or max(1, int(iterations or p.iterations) // 2))}


def study_consistency(p: Profile):
    """The consistency-learning settings of a study profile (:mod:`sscild.model.consistency`): as many
    unlabelled patches per step as labelled ones, the profile's ``pseudo_confidence`` as the teacher's
    threshold, the module's defaults otherwise."""
    return ConsistencySettings(per_batch=max(2, int(p.batch_size)), confidence=float(p.pseudo_confidence))
