"""Training batches: 2D patches drawn from the cached cases, each step's batch from (seed, fold, step) alone.

**Sampling**: 2D axial patches of ``profile.patch_size``. A share ``profile.lesion_oversample`` of
patches is centred on a random EF or GGO voxel (nnU-Net's foreground oversampling); the rest are
centred on a random lung voxel (or anywhere in the body when a case has no lung label). The centre is
jittered by up to a quarter patch so lesions are not always in the middle.

**Reproducibility**: the random generator of step ``s`` is seeded with ``(seed, fold, s)``
(:func:`step_rng`), so a batch is the same whether it is made in the training process or in a
loader process, and a resumed run continues with the batches it would have seen.

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> lab = np.zeros((32, 32, 4), np.uint8); lab[8:24, 8:24] = 1; lab[12:16, 12:16, 1] = 2
    >>> case = SimpleNamespace(image=np.zeros(lab.shape, np.float32), label=lab)
    >>> s = PatchSampler({"c": case}, patch_size=(16, 16), lesion_oversample=0.5)
    >>> [a.shape for a in s.sample(step_rng(0, 0, 0), batch_size=4)]
    [(4, 1, 16, 16), (4, 1, 16, 16)]
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["step_rng", "PatchSampler", "StepBatches"]


def step_rng(seed: int, fold: int, step: int) -> np.random.Generator:
    """The random generator of one training step: seeded with ``(seed, fold, step)``."""
    return np.random.default_rng([int(seed), int(fold), int(step)])


class PatchSampler:
    """Draws 2D training patches from a set of cached cases.

    Args:
        cases: mapping case id -> object with ``image`` (float32, (x, y, z)) and ``label`` (uint8).
        patch_size: (px, py) patch size in voxels.
        lesion_oversample: share of patches centred on EF/GGO voxels.
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


class StepBatches(torch.utils.data.Dataset):
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
        rng = step_rng(self.seed, self.key, int(step))
        img, lab = self.sampler.sample(rng, self.batch_size - self.n_pseudo)
        if self.n_pseudo:
            pi, pl = self.pseudo.sample(rng, self.n_pseudo)
            img, lab = np.concatenate([img, pi]), np.concatenate([lab, pl])
        return torch.from_numpy(img), torch.from_numpy(lab), int(rng.integers(2**31 - 1))
