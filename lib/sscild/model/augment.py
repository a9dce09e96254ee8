"""Training augmentation as batched tensor operations on the training device.

One :class:`BatchAugment` turns a batch of 2D patches ``image`` (B, 1, H, W) float and ``label``
(B, 1, H, W) integer into an augmented pair, with every random choice drawn from one seed, so a
training step's batch depends only on (seed, fold, step) wherever it is made (CPU, GPU, a loader
worker or the main process). The operations run on the whole batch at once: a flip is a
``torch.where`` between the batch and its flipped copy, rotation and scaling are one
``affine_grid`` + ``grid_sample`` call for the samples that draw them, intensity changes are
per-sample broadcasts. No per-sample Python loop runs on the hot path.

Spatial transforms move image and label together (bilinear for the image, nearest for the label,
so labels stay integers); intensity transforms touch the image only. The default settings are the
ones the study has always trained with (:attr:`BatchAugment.light`):

================================  ===========  ==================================================
transform                         probability  range
================================  ===========  ==================================================
flip along x (left-right)         0.5
flip along y (antero-posterior)   0.2
rotation and isotropic scaling    0.3          +-15 degrees, scale 0.85-1.15 (border padding)
intensity shift                   0.3          +-``intensity`` (normalised units)
intensity scale                   0.3          x (1 +- ``intensity``)
gamma (contrast), optional        ``gamma_prob``  gamma 0.7-1.5 on the patch's own range
Gaussian blur, optional           ``blur_prob``   sigma 0.5-1.0 px
low-resolution simulation, opt.   ``lowres_prob`` down to 0.5-1.0 of the size and back
Gaussian noise                    0.2          standard deviation ``noise_std``
================================  ===========  ==================================================

Example:
    >>> import torch
    >>> aug = BatchAugment(flip_prob=(1.0, 0.0), affine_prob=0.0, shift_prob=0.0, scale_prob=0.0,
    ...                    noise_prob=0.0)
    >>> img = torch.zeros(1, 1, 2, 3); img[0, 0, 0, 0] = 1.0
    >>> out, lab = aug(img, img.long(), seed=0)
    >>> out[0, 0].tolist()
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "augment_for_profile"]


@dataclass(frozen=True)
class _Draw:
    flip_x: np.ndarray
    flip_y: np.ndarray
    rot90: np.ndarray
    affine: np.ndarray          # bool: sample gets rotation+scaling
    angle: np.ndarray
    zoom: np.ndarray
    shift: np.ndarray
    scale: np.ndarray
    gamma: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray
    lowres: np.ndarray
    lowres_zoom: np.ndarray
    noise: np.ndarray
    noise_seed: int


def _prob(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
    return v


class BatchAugment:
    """Random flips, rotation/scaling and intensity changes of a batch of 2D patches.

    Args:
        flip_prob: probability of flipping along x and along y (the patch's first and second axis).
        rot90: also rotate by a random multiple of 90 degrees (square patches only), for images that
            come in several orientations.
        affine_prob: probability of a rotation by up to ``rotate_deg`` degrees combined with an
            isotropic scaling by a factor in ``[1 - zoom, 1 + zoom]``.
        shift_prob, scale_prob: probabilities of an additive shift in ``[-intensity, intensity]`` and a
            multiplicative change by ``1 + u``, ``u`` in ``[-intensity, intensity]``.
        gamma_prob: probability of a gamma change (``gamma`` in ``gamma_range``) on the patch's own
            intensity range.
        blur_prob: probability of a Gaussian blur with sigma in ``blur_sigma`` pixels.
        lowres_prob: probability of down-sampling to a factor in ``lowres_range`` and back (nnU-Net's
            low-resolution simulation).
        noise_prob: probability of additive Gaussian noise of standard deviation ``noise_std``.

    All arguments are keyword-only and validated when the object is made.
    """

    def __init__(self, *, flip_prob=(0.5, 0.2), rot90: bool = False, affine_prob: float = 0.3,
                 rotate_deg: float = 15.0, zoom: float = 0.15, shift_prob: float = 0.3, scale_prob: float = 0.3,
                 intensity: float = 0.05, gamma_prob: float = 0.0, gamma_range=(0.7, 1.5), blur_prob: float = 0.0,
                 blur_sigma=(0.5, 1.0), lowres_prob: float = 0.0, lowres_range=(0.5, 1.0),
                 noise_prob: float = 0.2, noise_std: float = 0.03):
        if len(flip_prob) != 2:
            raise ValueError(f"flip_prob needs two probabilities (x, y), got {flip_prob!r}")
        self.flip_prob = tuple(_prob("flip_prob", v) for v in flip_prob)
        self.rot90 = bool(rot90)
        self.affine_prob = _prob("affine_prob", affine_prob)
        self.rotate = math.radians(float(rotate_deg))
        if not 0.0 <= zoom < 1.0:
            raise ValueError(f"zoom must be in [0, 1), got {zoom}")
        self.zoom = float(zoom)
        self.shift_prob = _prob("shift_prob", shift_prob)
        self.scale_prob = _prob("scale_prob", scale_prob)
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        self.intensity = float(intensity)
        self.gamma_prob = _prob("gamma_prob", gamma_prob)
        self.gamma_range = tuple(float(v) for v in gamma_range)
        if not 0 < self.gamma_range[0] <= self.gamma_range[1]:
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, got {gamma_range!r}")
        self.blur_prob = _prob("blur_prob", blur_prob)
        self.blur_sigma = tuple(float(v) for v in blur_sigma)
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {blur_sigma!r}")
        self.lowres_prob = _prob("lowres_prob", lowres_prob)
        self.lowres_range = tuple(float(v) for v in lowres_range)
        if not 0 < self.lowres_range[0] <= self.lowres_range[1] <= 1:
            raise ValueError(f"lowres_range must be (low, high) with 0 < low <= high <= 1, got {lowres_range!r}")
        self.noise_prob = _prob("noise_prob", noise_prob)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)

    # ---- randomness: every draw of one batch from one numpy generator ------------------------
    def draw(self, rng: np.random.Generator, batch_size: int) -> _Draw:
        """All random choices for a batch of ``batch_size`` (cheap; on the CPU)."""
        b = int(batch_size)
        u = lambda lo, hi: rng.uniform(lo, hi, b)  # noqa: E731
        return _Draw(
            flip_x=rng.random(b) < self.flip_prob[0],
            flip_y=rng.random(b) < self.flip_prob[1],
            rot90=rng.integers(0, 4, b) if self.rot90 else np.zeros(b, dtype=np.int64),
            affine=rng.random(b) < self.affine_prob,
            angle=u(-self.rotate, self.rotate),
            zoom=u(1.0 - self.zoom, 1.0 + self.zoom),
            shift=np.where(rng.random(b) < self.shift_prob, u(-self.intensity, self.intensity), 0.0),
            scale=np.where(rng.random(b) < self.scale_prob, 1.0 + u(-self.intensity, self.intensity), 1.0),
            gamma=np.where(rng.random(b) < self.gamma_prob, u(*self.gamma_range), 1.0),
            blur=rng.random(b) < self.blur_prob,
            sigma=u(*self.blur_sigma),
            lowres=rng.random(b) < self.lowres_prob,
            lowres_zoom=u(*self.lowres_range),
            noise=rng.random(b) < self.noise_prob,
            noise_seed=int(rng.integers(2**62)),
        )

    def __call__(self, image: torch.Tensor, label: torch.Tensor, *, seed: int):
        """Augment ``image`` (B, 1, H, W) and ``label`` (B, 1, H, W) with the draws of ``seed``."""
        return self.apply(image, label, self.draw(np.random.default_rng(int(seed)), image.shape[0]))

    # ---- application: batched tensor operations ---------------------------------------------
    def apply(self, image: torch.Tensor, label: torch.Tensor, d: _Draw):
        if image.ndim != 4 or label.shape != image.shape:
            raise ValueError(f"image and label must both be (B, 1, H, W); got {tuple(image.shape)} and {tuple(label.shape)}")
        dev = image.device
        image = image.float()
        lab_dtype = label.dtype
        mask = lambda a: torch.as_tensor(a, device=dev).view(-1, 1, 1, 1)  # noqa: E731
        # flips: one flipped copy of the batch, taken where drawn
        for axis, sel in ((2, d.flip_x), (3, d.flip_y)):
            if sel.any():
                m = mask(sel)
                image = torch.where(m, image.flip(axis), image)
                label = torch.where(m, label.flip(axis), label)
        if d.rot90.any():
            if image.shape[2] != image.shape[3]:
                raise ValueError(f"rot90 needs square patches, got {tuple(image.shape[2:])}")
            for k in (1, 2, 3):
                sel = d.rot90 == k
                if sel.any():
                    m = mask(sel)
                    image = torch.where(m, image.rot90(k, (2, 3)), image)
                    label = torch.where(m, label.rot90(k, (2, 3)), label)
        idx = np.flatnonzero(d.affine)
        if idx.size:
            ang = torch.as_tensor(d.angle[idx], dtype=torch.float32)
            inv = torch.as_tensor(1.0 / d.zoom[idx], dtype=torch.float32)
            c, s = torch.cos(ang) * inv, torch.sin(ang) * inv
            z = torch.zeros_like(c)
            theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1).to(dev)
            ii = torch.as_tensor(idx, device=dev)
            grid = F.affine_grid(theta, [idx.size, 1, *image.shape[2:]], align_corners=False)
            image = image.index_copy(0, ii, F.grid_sample(image[ii], grid, mode="bilinear", padding_mode="border",
                                                          align_corners=False))
            lab_f = F.grid_sample(label[ii].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
            label = label.index_copy(0, ii, lab_f.to(lab_dtype))
        image = self._intensity(image, d, mask)
        return image, label

    def _intensity(self, image: torch.Tensor, d: _Draw, mask) -> torch.Tensor:
        dev = image.device
        vec = lambda a: torch.as_tensor(a, dtype=image.dtype, device=dev).view(-1, 1, 1, 1)  # noqa: E731
        if (d.scale != 1.0).any():
            image = image * vec(d.scale)
        if (d.shift != 0.0).any():
            image = image + vec(d.shift)
        if (d.gamma != 1.0).any():
            lo = image.amin((1, 2, 3), keepdim=True)
            rng = (image.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
            image = ((image - lo) / rng).clamp_min(0).pow(vec(d.gamma)) * rng + lo
        idx = np.flatnonzero(d.blur)
        if idx.size:
            ii = torch.as_tensor(idx, device=dev)
            image = image.index_copy(0, ii, _gaussian_blur(image[ii], d.sigma[idx]))
        idx = np.flatnonzero(d.lowres)
        if idx.size:
            ii = torch.as_tensor(idx, device=dev)
            out = image[ii].clone()
            for j, i in enumerate(idx):  # sizes differ per sample; few samples, cheap resizes
                size = [max(2, int(round(n * d.lowres_zoom[i]))) for n in image.shape[2:]]
                small = F.interpolate(out[j:j + 1], size=size, mode="nearest")
                out[j:j + 1] = F.interpolate(small, size=image.shape[2:], mode="bilinear", align_corners=False)
            image = image.index_copy(0, ii, out)
        if d.noise.any():
            g = torch.Generator(device=dev).manual_seed(d.noise_seed)
            noise = torch.randn(image.shape, generator=g, device=dev, dtype=image.dtype) * self.noise_std
            image = torch.where(mask(d.noise), image + noise, image)
        return image


def _gaussian_blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per sample (grouped convolution over the batch)."""
    radius = int(math.ceil(3 * float(np.max(sigmas))))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)                                   # (n, 2r+1)
    n = x.shape[0]
    y = x.transpose(0, 1)                                            # (1, n, H, W): samples as channels
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n, 1, -1, 1), groups=n)
    y = F.conv2d(y, k.view(n, 1, 1, -1), groups=n)
    return y.transpose(0, 1)


def augment_for_profile(profile) -> BatchAugment:
    """The augmentation a profile trains with (``profile.intensity_aug``: ``"light"``, ``"strong"`` or
    ``"nnunet"``; the last adds nnU-Net's blur, low-resolution simulation and gamma to the strong
    intensity changes, and widens the rotation and scaling)."""
    kind = profile.intensity_aug
    if kind not in ("light", "strong", "nnunet"):
        raise ValueError(f"intensity_aug must be 'light', 'strong' or 'nnunet', got {kind!r}")
    if kind == "strong":
        return BatchAugment(intensity=0.15, gamma_prob=0.3)
    if kind == "nnunet":
        return BatchAugment(affine_prob=0.4, rotate_deg=20.0, zoom=0.25, intensity=0.15, gamma_prob=0.3,
                            blur_prob=0.2, lowres_prob=0.25, noise_prob=0.15)
    return BatchAugment()
