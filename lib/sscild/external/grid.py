"""From a slice to the network's square grid and back: intensity, size, orientation of training slices.

**Preprocessing** (decided once, here):

* *Intensity*: the grey level v in [0, 255] becomes ``v / 255 * 2 - 1`` in [-1, 1]. The slices were
  all exported in a lung display window, so a grey level stands for roughly the same density in
  every slice; a per-image z-score would instead depend on how much of the slice is lung and how
  much mediastinum or chest wall, and was not used.
* *Geometry*: there is no pixel spacing; each slice is cropped to the body, so body width is the
  natural scale. Each slice is resized (bilinear, anti-aliased) so that its longer side is
  ``grid_size`` pixels, keeping its aspect ratio, and centred on a square ``grid_size`` grid padded
  with -1 (air). Labels go to the grid through their one-hot maps (same interpolation, then argmax).
* *Back to the original size*: the network's class probabilities are cropped from the grid and
  resized to the slice's own size before the argmax, so every slice is scored at its own size
  against its own, untouched reference mask.
* *Orientation*: some slices of the benchmark are turned by 90 degrees. When ``rotations`` is on,
  every training slice enters the training loop as a 4-slice "volume" of its 0/90/180/270 degree
  rotations (the loop's own augmentation adds flips, small rotations and scaling), and at test time
  the probabilities are averaged over the rotations (and flips) of the input, each turned back
  first (:func:`sscild.external.predict.predict_slices`): predictions are always in the slice's
  original orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sscild.errors import InputError
from sscild.external.recipe import check_extra
from sscild.external.slices import SliceImage
from sscild.profiles import Profile

__all__ = ["normalize_intensity", "GridMap", "TrainingCase", "training_case"]


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """8-bit grey levels -> float32 in [-1, 1] (``v / 255 * 2 - 1``; see the module docstring).

    Example:
        >>> normalize_intensity(np.array([[0, 255]], np.uint8)).tolist()
        [[-1.0, 1.0]]
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"normalize_intensity expects 8-bit grey levels (uint8), got {a.dtype}")
    return (a.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, nx, ny) float32 to (C, *shape); anti-aliased when shrinking."""
    import torch.nn.functional as F

    if tuple(arr.shape[1:]) == tuple(shape):
        return arr.astype(np.float32, copy=True)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    shrink = shape[0] < arr.shape[1] or shape[1] < arr.shape[2]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy()


@dataclass(frozen=True)
class GridMap:
    """How one slice maps onto the network's square grid and back.

    The slice (``shape`` = (nx, ny)) is scaled so that its longer side is ``size`` pixels, aspect
    ratio kept, and centred on a ``size`` x ``size`` grid; the rest of the grid is padding.

    Example:
        >>> g = GridMap(shape=(100, 50), size=64)
        >>> g.resized, g.offset
        ((64, 32), (0, 16))
        >>> lab = np.zeros((100, 50), np.uint8); lab[20:60, 10:40] = 1
        >>> back = g.probs_from_grid(np.eye(2, dtype=np.float32)[g.label_to_grid(lab, 2)].transpose(2, 0, 1))
        >>> back.shape, float((back.argmax(0) == lab).mean()) > 0.95
        ((2, 100, 50), True)
    """

    shape: tuple[int, int]
    size: int

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"GridMap: shape must be two positive sizes, got {self.shape}")
        if int(self.size) < 1:
            raise ValueError(f"GridMap: size must be positive, got {self.size}")

    @property
    def resized(self) -> tuple[int, int]:
        scale = self.size / max(self.shape)
        return tuple(min(self.size, max(1, int(round(n * scale)))) for n in self.shape)

    @property
    def offset(self) -> tuple[int, int]:
        return tuple((self.size - r) // 2 for r in self.resized)

    def _window(self):
        (ox, oy), (rx, ry) = self.offset, self.resized
        return slice(ox, ox + rx), slice(oy, oy + ry)

    def image_to_grid(self, image: np.ndarray, fill: float = -1.0) -> np.ndarray:
        """(nx, ny) float image -> (size, size) float32, padded with ``fill``."""
        image = np.asarray(image, dtype=np.float32)
        if image.shape != tuple(self.shape):
            raise ValueError(f"GridMap: image is {image.shape}, expected {tuple(self.shape)}")
        out = np.full((self.size, self.size), fill, dtype=np.float32)
        out[self._window()] = _resize(image[None], self.resized)[0]
        return out

    def label_to_grid(self, label: np.ndarray, num_classes: int = 3) -> np.ndarray:
        """(nx, ny) label map -> (size, size) uint8 via its resized one-hot maps (0 in the padding)."""
        label = np.asarray(label)
        if label.shape != tuple(self.shape):
            raise ValueError(f"GridMap: label is {label.shape}, expected {tuple(self.shape)}")
        onehot = (label[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
        out = np.zeros((self.size, self.size), dtype=np.uint8)
        out[self._window()] = _resize(onehot, self.resized).argmax(0).astype(np.uint8)
        return out

    def probs_from_grid(self, probs: np.ndarray) -> np.ndarray:
        """(C, size, size) class probabilities -> (C, nx, ny) at the slice's own size."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[1:] != (self.size, self.size):
            raise ValueError(f"GridMap: probabilities are {probs.shape}, expected (C, {self.size}, {self.size})")
        sx, sy = self._window()
        return _resize(probs[:, sx, sy], tuple(self.shape))


class TrainingCase:
    """What :func:`sscild.model.train.train_model` reads: ``image`` float32 and ``label`` uint8, (x, y, z)."""

    __slots__ = ("image", "label")

    def __init__(self, image: np.ndarray, label: np.ndarray):
        self.image, self.label = image, label


def training_case(s: SliceImage, profile: Profile) -> TrainingCase:
    """One labelled slice as a training "volume": (grid, grid, 1), or (grid, grid, 4) holding its
    0/90/180/270-degree rotations when the profile's ``rotations`` is on."""
    ex = check_extra(profile)
    if s.label is None:
        raise InputError(f"slice {s.slice_id}: {s.image_path} has no label; training needs labelled slices.")
    g = GridMap(shape=s.shape, size=ex["grid_size"])
    img = g.image_to_grid(normalize_intensity(s.image))
    lab = g.label_to_grid(s.label, 3)
    ks = range(4) if ex["rotations"] else range(1)
    return TrainingCase(np.stack([np.rot90(img, k) for k in ks], axis=-1).astype(np.float32),
                        np.stack([np.rot90(lab, k) for k in ks], axis=-1).astype(np.uint8))
