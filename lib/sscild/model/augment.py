"""Training augmentation as batched tensor operations on the training device.

One :class:`BatchAugment` turns a batch of 2D patches ``image`` (B, 1, H, W) float and ``label``
(B, 1, H, W) integer into an augmented pair, with every random choice drawn from one seed, so a
training step's batch depends only on (seed, fold, step) wherever it is made (CPU, GPU, a loader
worker or the main process). The operations run on the whole batch at once: a flip is a
``torch.where`` between the batch and its flipped copy, rotation and scaling are one
``affine_grid`` + ``grid_sample`` call for the samples that draw them, intensity changes are
per-sample broadcasts. No per-sample Python loop runs on the hot path.

Spatial transforms move image and label together (bilinear for the image, nearest for the label,
so labels stay integers); intensity transforms touch the image only.

**Lung density.** Deep inspiration and emphysema make the same lung darker, from about -850 HU down to
-950 HU and below, while the lesions stay dense. The density transform shifts the parenchyma band by
``delta`` HU: voxels between -1000 and -700 HU move by ``delta * w``, where ``w`` rises linearly from 0
at -1000 HU to 1 at -880 HU and falls back to 0 from -850 to -700 HU. Air, ground glass, vessels and
everything denser stay put, the order of intensities is kept (the map is monotonic for ``delta``
between -120 and +150 HU), and a -880 HU lung becomes anything down to about -990 HU: lung that is
darker than the training cohort's is still lung. The default settings are the
ones the study has always trained with (:attr:`BatchAugment.light`):

================================  ===========  ==================================================
transform                         probability  range
================================  ===========  ==================================================
flip along x (left-right)         0.5
flip along y (antero-posterior)   0.2
rotation and isotropic scaling    0.3          +-15 degrees, scale 0.85-1.15 (border padding)
intensity shift                   0.3          +-``intensity`` (normalised units)
intensity scale                   0.3          x (1 +- ``intensity``)
lung density, optional            ``density_prob``  parenchyma shifted by ``density_hu``
sharp kernel, optional            ``kernel_prob``   edge overshoot x 0.3-1.0 and high-pass noise of sd ``kernel_noise``
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
    density: np.ndarray
    kernel: np.ndarray
    kernel_amount: np.ndarray
    kernel_sd: np.ndarray
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
        density_prob: probability of the lung-density transform (module docstring), with the shift
            drawn uniformly from ``density_hu`` (HU; within [-120, 150] so the map stays monotonic).
        density_spare_lesions: leave the lesions (labels 2, 3) and a 2-pixel fade around them unshifted,
            so only normal lung turns darker (inspiration, emphysema) and EF and GGO keep their look.
        kernel_prob: probability of the sharp-kernel transform: the difference between the patch and its
            Gaussian blur (sigma 1 pixel) added 0.3-1.0 times (edge overshoot), then the high-pass part
            of white noise with standard deviation drawn from ``kernel_noise`` (normalised units), the
            fine-grained noise of a lung (sharp) reconstruction kernel.
        hu_clip: the HU window the images were normalised with (onto [-1, 1]); the density transform
            works in HU.

    All arguments are keyword-only and validated when the object is made.
    """

    def __init__(self, *, flip_prob=(0.5, 0.2), rot90: bool = False, affine_prob: float = 0.3,
                 rotate_deg: float = 15.0, zoom: float = 0.15, shift_prob: float = 0.3, scale_prob: float = 0.3,
                 intensity: float = 0.05, gamma_prob: float = 0.0, gamma_range=(0.7, 1.5), blur_prob: float = 0.0,
                 blur_sigma=(0.5, 1.0), lowres_prob: float = 0.0, lowres_range=(0.5, 1.0),
                 noise_prob: float = 0.2, noise_std: float = 0.03, density_prob: float = 0.0,
                 density_hu=(-110.0, 0.0), density_spare_lesions: bool = False, kernel_prob: float = 0.0,
                 kernel_noise=(0.01, 0.06),
                 hu_clip=(-1024.0, 600.0)):
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
        self.density_prob = _prob("density_prob", density_prob)
        self.density_hu = tuple(float(v) for v in density_hu)
        if not (len(self.density_hu) == 2 and -120.0 <= self.density_hu[0] <= self.density_hu[1] <= 150.0):
            raise ValueError(f"density_hu must be (low, high) with -120 <= low <= high <= 150 HU, got {density_hu!r}")
        self.density_spare_lesions = density_spare_lesions if density_spare_lesions == "patches" \
            else bool(density_spare_lesions)
        self.kernel_prob = _prob("kernel_prob", kernel_prob)
        self.kernel_noise = tuple(float(v) for v in kernel_noise)
        if not (len(self.kernel_noise) == 2 and 0 <= self.kernel_noise[0] <= self.kernel_noise[1]):
            raise ValueError(f"kernel_noise must be (low, high) with 0 <= low <= high, got {kernel_noise!r}")
        self.hu_clip = tuple(float(v) for v in hu_clip)
        if not (len(self.hu_clip) == 2 and self.hu_clip[0] < -1000.0 + 1e-6 and self.hu_clip[1] > 40.0):
            raise ValueError(f"hu_clip must be (low, high) with low <= -1000 and high > 40 HU, got {hu_clip!r}")

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
            # drawn last, so profiles without it draw everything else exactly as before
            density=(np.where(rng.random(b) < self.density_prob, u(*self.density_hu), 0.0)
                     if self.density_prob > 0 else np.zeros(b)),
            kernel=(rng.random(b) < self.kernel_prob) if self.kernel_prob > 0 else np.zeros(b, bool),
            kernel_amount=u(0.3, 1.0) if self.kernel_prob > 0 else np.zeros(b),
            kernel_sd=u(*self.kernel_noise) if self.kernel_prob > 0 else np.zeros(b),
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
        image = self._intensity(image, d, mask, label)
        return image, label

    def _intensity(self, image: torch.Tensor, d: _Draw, mask, label: torch.Tensor | None = None) -> torch.Tensor:
        dev = image.device
        vec = lambda a: torch.as_tensor(a, dtype=image.dtype, device=dev).view(-1, 1, 1, 1)  # noqa: E731
        if (d.density != 0.0).any():
            image = self._density(image, vec(d.density), label if self.density_spare_lesions else None)
        if (d.scale != 1.0).any():
            image = image * vec(d.scale)
        if (d.shift != 0.0).any():
            image = image + vec(d.shift)
        if (d.gamma != 1.0).any():
            lo = image.amin((1, 2, 3), keepdim=True)
            rng = (image.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
            image = ((image - lo) / rng).clamp_min(0).pow(vec(d.gamma)) * rng + lo
        idx = np.flatnonzero(d.kernel)
        if idx.size:
            ii = torch.as_tensor(idx, device=dev)
            image = image.index_copy(0, ii, self._sharp_kernel(image[ii], d, idx))
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


    def _sharp_kernel(self, x: torch.Tensor, d: _Draw, idx: np.ndarray) -> torch.Tensor:
        """Edge overshoot and high-pass noise of a sharp reconstruction kernel, on the samples ``idx``."""
        dev, dt = x.device, x.dtype
        vec = lambda a: torch.as_tensor(a, dtype=dt, device=dev).view(-1, 1, 1, 1)  # noqa: E731
        ones = np.ones(len(idx))
        x = x + vec(d.kernel_amount[idx]) * (x - _gaussian_blur(x, ones))
        g = torch.Generator(device=dev).manual_seed(d.noise_seed + 1)
        white = torch.randn(x.shape, generator=g, device=dev, dtype=dt)
        hp = white - _gaussian_blur(white, 0.8 * ones)
        hp = hp / hp.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return x + vec(d.kernel_sd[idx]) * hp

    def _density(self, image: torch.Tensor, delta: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The parenchyma band shifted by ``delta`` HU per sample (module docstring); with ``label``, lesion
        voxels (labels 2 and 3) and their surroundings (a 2-pixel Gaussian fade) are spared."""
        lo, hi = self.hu_clip
        hu = (image + 1.0) * (0.5 * (hi - lo)) + lo
        w = ((hu + 1000.0) / 120.0).clamp(0.0, 1.0) * ((-700.0 - hu) / 150.0).clamp(0.0, 1.0)
        if label is not None:
            if self.density_spare_lesions == "patches":   # only patches without any lesion
                clean = (label <= 1).flatten(1).all(1).to(image.dtype).view(-1, 1, 1, 1)
                w = w * clean
            else:
                keep = (label <= 1).to(image.dtype)
                keep = _gaussian_blur(keep, np.full(keep.shape[0], 2.0)).clamp(0.0, 1.0)
                w = w * keep
        return image + delta * w / (0.5 * (hi - lo))


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
    intensity changes, and widens the rotation and scaling), plus the lung-density transform with
    probability ``profile.lung_density_aug``."""
    kind = profile.intensity_aug
    if kind not in ("light", "strong", "nnunet"):
        raise ValueError(f"intensity_aug must be 'light', 'strong' or 'nnunet', got {kind!r}")
    density = dict(density_prob=profile.lung_density_aug, density_hu=profile.lung_density_hu,
                   density_spare_lesions=profile.extra.get("density_spare", True),
                   kernel_prob=profile.kernel_aug, hu_clip=profile.hu_clip)
    if kind == "strong":
        return BatchAugment(intensity=0.15, gamma_prob=0.3, **density)
    if kind == "nnunet":
        return BatchAugment(affine_prob=0.4, rotate_deg=20.0, zoom=0.25, intensity=0.15, gamma_prob=0.3,
                            blur_prob=0.2, lowres_prob=0.25, noise_prob=0.15, **density)
    return BatchAugment(lowres_prob=profile.lowres_aug, **density)
