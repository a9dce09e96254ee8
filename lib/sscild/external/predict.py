"""Prediction on slices: test-time averaging over flips and rotations, a mean of several networks,
a teacher's pseudo-labels for unlabelled slices, and predicted masks as PNG files."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sscild.errors import InputError
from sscild.external.grid import GridMap, TrainingCase, normalize_intensity
from sscild.external.recipe import check_extra
from sscild.external.slices import CLASS_NAMES, SliceImage, read_label
from sscild.model.selftrain import IGNORE_LABEL
from sscild.model.device import select_device
from sscild.paths import atomic_path
from sscild.profiles import Profile

__all__ = ["predict_slices", "decide", "MeanProb", "pseudo_label_cases", "write_png", "read_predictions"]


def decide(probs: np.ndarray, lesion_threshold: float | None = None, consolidation_weight: float = 1.0) -> np.ndarray:
    """The label map (uint8) from class probabilities ``probs`` (C, ...; background, GGO, consolidation).

    Without ``lesion_threshold``: the most probable class. With it: lesion where P(GGO) +
    P(consolidation) > ``lesion_threshold``, and of the lesion, consolidation where
    ``consolidation_weight`` x P(consolidation) > P(GGO), else GGO (the profile's
    ``lesion_threshold`` and ``consolidation_weight``).

    Example:
        >>> p = np.array([[0.55, 0.2, 0.15], [0.3, 0.38, 0.2], [0.15, 0.42, 0.65]])  # rows: classes; 3 pixels
        >>> decide(p).ravel().tolist(), decide(p, 0.4, 0.7).ravel().tolist()
        ([0, 2, 2], [1, 1, 2])
    """
    if lesion_threshold is None:
        return probs.argmax(0).astype(np.uint8)
    lesion = probs[1] + probs[2] > lesion_threshold
    cons = consolidation_weight * probs[2] > probs[1]
    return np.where(lesion, np.where(cons, 2, 1), 0).astype(np.uint8)


def _tta_variants(mode: str) -> list[tuple[int, bool]]:
    if mode == "none":
        return [(0, False)]
    if mode == "flip":
        return [(0, False), (0, True)]
    return [(k, f) for k in range(4) for f in (False, True)]


@torch.no_grad()
def predict_slices(net: torch.nn.Module, slices: Mapping[str, SliceImage], profile: Profile, *,
                   device=None, return_probs: bool = False) -> dict[str, np.ndarray]:
    """Label maps (uint8, each slice's own size and orientation) predicted by ``net``.

    The slice goes onto the grid, the network sees it under each test-time variant (rotation by
    k x 90 degrees, then optional flip), each softmax is turned back, the mean is resized to the
    slice's size, then the profile's decision (:func:`decide`). With ``return_probs`` the (C, nx, ny) mean
    probabilities are returned.
    """
    ex = check_extra(profile)
    device = select_device(device)
    net.eval()
    variants = _tta_variants(ex["tta"])
    out = {}
    for sid, s in slices.items():
        g = GridMap(shape=s.shape, size=ex["grid_size"])
        x = torch.from_numpy(g.image_to_grid(normalize_intensity(s.image)))[None, None]
        batch = []
        for k, flip in variants:
            xi = torch.rot90(x, k, dims=(2, 3))
            batch.append(torch.flip(xi, dims=(2,)) if flip else xi)
        prob = torch.softmax(net(torch.cat(batch).to(device)).float(), 1).cpu()
        acc = torch.zeros_like(prob[0])
        for i, (k, flip) in enumerate(variants):
            p = torch.flip(prob[i], dims=(1,)) if flip else prob[i]
            acc += torch.rot90(p, -k, dims=(1, 2))
        probs = g.probs_from_grid((acc / len(variants)).numpy())
        out[sid] = probs if return_probs else decide(probs, ex["lesion_threshold"], ex["consolidation_weight"])
    return out


class MeanProb(torch.nn.Module):
    """Several networks as one: the log of their mean softmax (so a softmax of the output is the mean)."""

    def __init__(self, nets: Sequence[torch.nn.Module]):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x):
        return torch.log(torch.stack([torch.softmax(n(x).float(), 1) for n in self.nets]).mean(0).clamp_min(1e-8))


@torch.no_grad()
def pseudo_label_cases(net: torch.nn.Module, unlabelled: Mapping[str, SliceImage], profile: Profile, *,
                       device=None, batch: int = 16) -> tuple[dict[str, TrainingCase], dict]:
    """Pseudo-labelled training cases made by a teacher network from unlabelled slices.

    Each slice goes onto the grid, in one 90-degree orientation chosen from its id and the
    profile's seed (so the student also sees turned slices); the teacher's softmax is averaged over
    the profile's ``pseudo_tta`` variants; pixels whose highest class probability is below
    ``pseudo_confidence`` get :data:`sscild.model.selftrain.IGNORE_LABEL` (the loss skips them).

    Returns:
        (id -> case of shape (grid, grid, 1), stats: slices, share of pixels kept, share of kept
        pixels per class).
    """
    ex = check_extra(profile)
    device = select_device(device)
    net.eval()
    variants = _tta_variants(ex["pseudo_tta"])
    ids = list(unlabelled)
    out: dict[str, TrainingCase] = {}
    kept = total = 0
    counts = np.zeros(3, np.int64)
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        grids = []
        for sid in chunk:
            s = unlabelled[sid]
            k = int(hashlib.sha1(f"{profile.seed}:{sid}".encode()).hexdigest(), 16) % 4
            g = GridMap(shape=s.shape, size=ex["grid_size"])
            grids.append(np.rot90(g.image_to_grid(normalize_intensity(s.image)), k).copy())
        x = torch.from_numpy(np.stack(grids))[:, None]
        acc = 0
        for k, flip in variants:
            xi = torch.rot90(x, k, dims=(2, 3))
            xi = torch.flip(xi, dims=(2,)) if flip else xi
            pr = torch.softmax(net(xi.to(device)).float(), 1).cpu()
            pr = torch.flip(pr, dims=(2,)) if flip else pr
            acc = acc + torch.rot90(pr, -k, dims=(2, 3))
        prob = (acc / len(variants)).numpy()
        conf, lab = prob.max(1), prob.argmax(1).astype(np.uint8)
        keep = conf >= float(ex["pseudo_confidence"])
        lab[~keep] = IGNORE_LABEL
        for j, sid in enumerate(chunk):
            lesion = float(np.count_nonzero((lab[j] == 1) | (lab[j] == 2))) / lab[j].size
            if lesion < float(ex["pseudo_min_lesion"]):
                continue
            kept += int(keep[j].sum())
            total += keep[j].size
            counts += np.bincount(lab[j][keep[j]].ravel(), minlength=3)[:3]
            out[f"u:{sid}"] = TrainingCase(grids[j][..., None].astype(np.float32), lab[j][..., None])
    stats = {"slices": len(out), "labelled_by_teacher": len(ids), "kept_share": round(kept / max(total, 1), 4),
             **{f"kept_share_{n}": round(float(counts[c]) / max(kept, 1), 4)
                for c, n in enumerate(("background",) + CLASS_NAMES)}}
    return out, stats


def read_predictions(folder: str | Path, slices: Mapping[str, SliceImage]) -> dict[str, np.ndarray]:
    """Read predicted masks ``folder/<id>.png`` for ``slices`` (as written by
    :func:`sscild.external.runs.cross_validate`).

    Raises:
        InputError: a mask is missing or its size differs from its slice's.
    """
    folder = Path(folder)
    out, problems = {}, []
    for sid, s in slices.items():
        path = folder / f"{sid}.png"
        if not path.exists():
            problems.append(f"slice {sid}: {path} is missing")
            continue
        lab = read_label(path).astype(np.uint8)
        if lab.shape != s.shape:
            problems.append(f"slice {sid}: {path} is {lab.shape}, the slice {s.shape}")
            continue
        out[sid] = lab
    if problems:
        raise InputError(f"predictions in {folder} do not match the slices ({len(problems)} problem(s)): "
                         + "; ".join(problems[:10]) + ". Re-run the external check (make external).")
    return out


def write_png(path: Path, label_xy: np.ndarray) -> None:
    """Write an (x, y) label map as a PNG in the file's own orientation (rows = y)."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(label_xy.T.astype(np.uint8))).save(tmp)
