"""Self-supervised pretraining on unlabelled slices: the network learns to restore corrupted CT
before it ever sees a label.

Each step takes a batch of unlabelled slices on the network's grid (each turned by a random
multiple of 90 degrees and maybe flipped), hides random rectangles under a constant grey, adds
Gaussian noise (the loop is :func:`sscild.model.pretrain.restoration_pretrain`), and trains the *segmentation network itself* to give back the clean slice in its
first output channel (L1 loss): to fill in a hidden rectangle it must learn what lung, vessels,
ground glass and consolidation look like around it. Every fold's first training stage then starts
from these weights instead of a random initialisation. The pretraining reads unlabelled slices
only, so one pretrained network serves every fold and the test model without any held-out slice
reaching it; it is cached under the run folder, keyed by the network, the steps and the slices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sscild.external.grid import GridMap, normalize_intensity
from sscild.external.recipe import check_extra
from sscild.external.slices import SliceImage, natural_key
from sscild.model.pretrain import restoration_pretrain
from sscild.paths import atomic_path, read_json, write_json
from sscild.profiles import Profile

__all__ = ["pretrain_key", "pretrained_state", "slice_batches"]


def pretrain_key(p: Profile, unlabelled: Mapping[str, SliceImage]) -> dict:
    """What the pretrained weights depend on: the network, grid, steps, batch, seed and the slices."""
    ex = check_extra(p)
    ids = sorted(unlabelled, key=natural_key)
    key = {"channels": list(p.channels), "strides": list(p.strides), "num_res_units": p.num_res_units,
           "norm": p.norm, "grid_size": ex["grid_size"], "steps": ex["pretrain_steps"], "batch_size": p.batch_size,
           "learning_rate": p.learning_rate, "seed": p.seed, "n_unlabelled": len(ids),
           "unlabelled_sha1": hashlib.sha1("".join(unlabelled[u].digest() for u in ids).encode()).hexdigest()}
    return key if p.architecture == "unet" else {"architecture": p.architecture, **key}


def slice_batches(unlabelled: Mapping[str, SliceImage], p: Profile, batch_size: int):
    """``rng -> (batch_size, 1, grid, grid)`` tensor: unlabelled slices on the profile's grid, drawn with
    replacement, the batch turned by a random multiple of 90 degrees and maybe flipped (the source of
    pretraining and of consistency learning)."""
    ex = check_extra(p)
    ids = sorted(unlabelled, key=natural_key)
    grids = np.stack([GridMap(shape=unlabelled[u].shape, size=ex["grid_size"]).image_to_grid(
        normalize_intensity(unlabelled[u].image)) for u in ids])[:, None]

    def next_batch(rng: np.random.Generator) -> torch.Tensor:
        x = torch.from_numpy(grids[rng.integers(0, len(ids), int(batch_size))])
        x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        if rng.random() < 0.5:
            x = torch.flip(x, dims=(3,))
        return x.contiguous()

    return next_batch


def pretrained_state(unlabelled: Mapping[str, SliceImage], p: Profile, out: Path, *,
                     log=print) -> tuple[dict, dict]:
    """The network weights after the profile's ``pretrain_steps`` steps of restoring corrupted unlabelled
    slices (trained now, or read from ``out`` when it holds a finished run with the same key).

    Returns (state dict for :func:`sscild.model.network.build_network` with 3 outputs, summary)."""
    out = Path(out)
    ex = check_extra(p)
    key = pretrain_key(p, unlabelled)
    if (out / "pretrain_key.json").exists() and read_json(out / "pretrain_key.json") == json.loads(json.dumps(key)) \
            and (out / "pretrained.pt").exists():
        return torch.load(out / "pretrained.pt", map_location="cpu", weights_only=False), read_json(out / "summary.json")
    ids = sorted(unlabelled, key=natural_key)
    next_batch = slice_batches(unlabelled, p, p.batch_size)
    state, summary = restoration_pretrain(next_batch, p, steps=int(ex["pretrain_steps"]), out_channels=3,
                                          desc=f"pretraining on {len(ids)} unlabelled slices", log=log)
    summary = {"steps": summary["steps"], "seconds": summary["seconds"], "slices": len(ids),
               "first_l1": summary["first_l1"], "last_l1": summary["last_l1"]}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pretrained.pt", suffix=".pt") as tmp:
        torch.save(state, tmp)
    write_json(out / "summary.json", summary)
    write_json(out / "pretrain_key.json", key)
    return state, summary
