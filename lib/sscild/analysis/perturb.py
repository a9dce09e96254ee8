"""Controlled changes of a real chest CT: what another patient, breath or scanner would have given.

The robustness check (:mod:`sscild.analysis.robustness`) applies these to real scans and asks whether
the network still finds the same lungs. Each function takes a CT in Hounsfield units (x, y, z) and
returns a new float32 array on the *same voxel grid* (the input is never modified), so the network's
answer on the changed scan can be compared voxel by voxel with the lung of the original.

* **Lung density** (:func:`shift_lung_hu`): the lung parenchyma is made darker (deep inspiration,
  emphysema) or denser (expiration) by a fixed number of HU; vessels, airway walls and everything
  outside the lung stay as they are.
* **Emphysema** (:func:`add_emphysema`): lung destroyed into low-attenuation areas, in one of the
  patterns a radiologist names: panlobular (diffuse, lower zones), centrilobular (small lucencies
  without walls, upper zones), paraseptal (a subpleural row of lucencies with thin walls) and
  bullae (air spaces of several centimetres at the apices).
* **Resolution** (:func:`degrade_inplane`): a blurrier reconstruction with larger pixels.
* **Kernel** (:func:`sharp_kernel`): the edge overshoot and fine-grained noise of a sharp (lung)
  reconstruction kernel.
* **Slice thickness** (:func:`thicker_slices`): thick slices reconstructed at the same positions
  (overlapping slabs), as a 10 mm reconstruction of a 5 mm scan.
* **Failures** the segmentation command must catch: lungs filled with soft tissue
  (:func:`fill_lungs`) and a volume whose slices are stored head-feet reversed while its header is
  unchanged (:func:`reverse_slices`).

Example:
    >>> import numpy as np
    >>> hu = np.full((20, 20, 10), -850.0, np.float32); lung = np.ones(hu.shape, bool)
    >>> float(shift_lung_hu(hu, lung, -70)[5, 5, 5])
    -920.0
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["PARENCHYMA_HU", "EMPHYSEMA_KINDS", "parenchyma_weight", "shift_lung_hu", "add_emphysema",
           "degrade_inplane", "sharp_kernel", "thicker_slices", "fill_lungs", "reverse_slices"]

PARENCHYMA_HU = (-500.0, -300.0)
"""Lung voxels below the first value are parenchyma (weight 1), above the second they are vessels,
airway walls or lesions (weight 0); in between the weight falls linearly."""

EMPHYSEMA_KINDS = ("panlobular", "centrilobular", "paraseptal", "bullae")

_AIR = -1000.0
_MIN_HU = -1024.0


def _check(hu, lung=None):
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a 3D (x, y, z) CT volume, got shape {hu.shape}")
    if lung is not None and np.shape(lung) != hu.shape:
        raise ValueError(f"lung mask shape {np.shape(lung)} differs from the CT's {hu.shape}")
    return hu.astype(np.float32)


def parenchyma_weight(hu, lung) -> np.ndarray:
    """How much each voxel is lung parenchyma (1) rather than vessel, wall or lesion (0); 0 outside ``lung``."""
    lo, hi = PARENCHYMA_HU
    w = np.clip((hi - np.asarray(hu, np.float32)) / (hi - lo), 0.0, 1.0)
    return w * np.asarray(lung, bool)


def shift_lung_hu(hu, lung, delta_hu: float) -> np.ndarray:
    """The lung parenchyma shifted by ``delta_hu`` (negative: darker), nothing else changed.

    Vessels and other dense structures inside the lung keep their values (the shift fades out between
    -500 and -300 HU, :data:`PARENCHYMA_HU`); the result is never darker than -1024 HU.
    """
    out = _check(hu, lung)
    out += np.float32(delta_hu) * parenchyma_weight(out, lung)
    return np.maximum(out, np.float32(_MIN_HU))


def _lung_height(lung) -> np.ndarray:
    """Per slice, the height within the lung's z extent: 0 at its lowest slice, 1 at its highest."""
    zs = np.nonzero(np.asarray(lung).any(axis=(0, 1)))[0]
    z = np.arange(np.shape(lung)[2], dtype=np.float32)
    if zs.size < 2:
        return np.zeros_like(z)
    return np.clip((z - zs[0]) / float(zs[-1] - zs[0]), 0.0, 1.0)


def _select(score, cand, fraction: float) -> np.ndarray:
    """The ``fraction`` of the ``cand`` voxels with the highest score."""
    n = int(round(fraction * cand.sum()))
    if n <= 0:
        return np.zeros(cand.shape, bool)
    thr = np.partition(score[cand], -n)[-n]
    return cand & (score >= thr)


def add_emphysema(hu, lung, spacing, *, kind: str, fraction: float, seed: int = 0) -> np.ndarray:
    """Emphysema of one pattern drawn into the lung, covering about ``fraction`` of it.

    Destroyed lung keeps a trace of its tissue (-1000 HU plus a quarter of its former excess over air,
    about -960 to -990 HU, with noise); vessels inside it are thinned but not removed. Bullae and the
    lucencies of centrilobular and paraseptal emphysema are air with fine noise; paraseptal lucencies
    and bullae have thin walls.

    Args:
        hu: CT in HU (x, y, z); lung: its lung mask (e.g. :func:`sscild.data.lungmask.lung_mask_by_threshold`).
        spacing: voxel size in mm.
        kind: one of :data:`EMPHYSEMA_KINDS`.
        fraction: share of the lung to destroy, in (0, 0.8].
        seed: random seed (the same seed gives the same emphysema).
    """
    if kind not in EMPHYSEMA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(EMPHYSEMA_KINDS)}, got {kind!r}")
    if not 0.0 < float(fraction) <= 0.8:
        raise ValueError(f"fraction must lie in (0, 0.8], got {fraction!r}")
    out = _check(hu, lung)
    lung = np.asarray(lung, bool)
    sp = np.asarray(spacing, float)
    rng = np.random.default_rng(seed)
    w = parenchyma_weight(out, lung)
    t = _lung_height(lung)[None, None, :]

    def field(scale_mm):
        f = ndi.gaussian_filter(rng.standard_normal(out.shape).astype(np.float32), scale_mm / sp)
        return f / (float(f.std()) + 1e-6)

    noise = rng.normal(0.0, 8.0, out.shape).astype(np.float32)
    if kind == "panlobular":           # diffuse destruction, lower zones
        region = _select(field(25.0) + 2.0 * (1.0 - t), lung, fraction)
        region = ndi.binary_opening(region, iterations=1) & lung
        destroyed = _AIR + 0.25 * (out - _AIR) + noise
        out = np.where(region, out + (destroyed - out) * np.maximum(w, 0.6 * region), out)
        return np.maximum(out, np.float32(_MIN_HU))
    dsub = ndi.distance_transform_edt(lung, sampling=sp).astype(np.float32)
    if kind == "centrilobular":        # clusters of small lucencies without walls, upper zones
        score = field(2.5) + 1.5 * t
        cand = lung & (dsub > 4.0)
        holes = _select(score, cand, min(0.9, fraction * lung.sum() / max(cand.sum(), 1)))
        out = np.where(holes, np.minimum(out, _AIR + 15.0 + noise), out)
    elif kind == "paraseptal":         # a subpleural row of larger lucencies with thin walls
        score = field(4.0) + 0.8 * t
        cand = lung & (dsub < 12.0)
        holes = _select(score, cand, min(0.9, fraction * lung.sum() / max(cand.sum(), 1)))
        walls = ndi.binary_dilation(holes, iterations=1) & ~holes & lung
        out = np.where(holes, _AIR + 10.0 + noise, out)
        out = np.where(walls, np.maximum(out, -600.0), out)
    else:                              # bullae: a few large air spaces at the apices, subpleural
        target = fraction * lung.sum()
        cand = np.argwhere(lung & (dsub < 15.0) & (t > 0.55))
        if cand.size == 0:
            cand = np.argwhere(lung)
        grid = np.indices(out.shape, dtype=np.float32)
        holes = np.zeros(out.shape, bool)
        for _ in range(30):
            if holes.sum() >= target:
                break
            c = cand[rng.integers(len(cand))]
            r = float(rng.uniform(10.0, 25.0))
            d = np.sqrt(sum(((grid[a] - c[a]) * sp[a]) ** 2 for a in range(3)))
            holes |= (d < r) & lung
        walls = ndi.binary_dilation(holes, iterations=1) & ~holes & lung
        out = np.where(holes, _AIR + noise, out)
        out = np.where(walls, np.maximum(out, -500.0), out)
    return np.maximum(out, np.float32(_MIN_HU))


def degrade_inplane(hu, spacing, pixel_mm: float) -> np.ndarray:
    """The scan as a reconstruction with ``pixel_mm`` pixels would show it, back on its own grid.

    Blurred with a Gaussian whose full width at half maximum is ``pixel_mm``, sampled at
    ``pixel_mm`` and interpolated back (linearly) onto the original pixels. A pixel size at or below
    the scan's own returns a copy.
    """
    out = _check(hu)
    sp = np.asarray(spacing, float)
    f = float(pixel_mm) / sp[:2]
    if np.all(f <= 1.0):
        return out.copy()
    sigma = [max(0.0, (float(pixel_mm) ** 2 - s ** 2)) ** 0.5 / 2.355 / s for s in sp[:2]] + [0.0]
    small = ndi.zoom(ndi.gaussian_filter(out, sigma), (1 / f[0], 1 / f[1], 1.0), order=1, grid_mode=True,
                     mode="nearest")
    back = ndi.zoom(small, np.asarray(out.shape) / np.asarray(small.shape), order=1, grid_mode=True, mode="nearest")
    return back.astype(np.float32)


def sharp_kernel(hu, spacing, *, noise_hu: float = 60.0, edge: float = 0.6, seed: int = 0) -> np.ndarray:
    """The edge overshoot and fine-grained noise of a sharp reconstruction kernel.

    ``edge`` times the difference between the image and its 1 mm Gaussian blur is added (unsharp
    masking: overshoot at every edge), then noise whose texture is the high-pass part of white noise,
    with standard deviation ``noise_hu`` inside the body (outside air stays quiet above -1024 HU).
    """
    out = _check(hu)
    sp = np.asarray(spacing, float)
    sig = [1.0 / s for s in sp[:2]] + [0.0]
    out = out + np.float32(edge) * (out - ndi.gaussian_filter(out, sig))
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(out.shape).astype(np.float32)
    hp = white - ndi.gaussian_filter(white, [0.8, 0.8, 0.0])
    hp *= np.float32(noise_hu) / (float(hp.std()) + 1e-6)
    return np.maximum(out + hp, np.float32(_MIN_HU))


def thicker_slices(hu, factor: int) -> np.ndarray:
    """Slices ``factor`` times as thick, at the same positions (each slice averaged with its neighbours)."""
    out = _check(hu)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if factor == 1:
        return out.copy()
    return ndi.uniform_filter1d(out, size=factor, axis=2, mode="nearest")


def fill_lungs(hu, lung, *, tissue_hu: float = 40.0, noise_hu: float = 15.0, seed: int = 0) -> np.ndarray:
    """The lungs filled with soft tissue (as a scan of something that is not an aerated chest)."""
    out = _check(hu, lung)
    rng = np.random.default_rng(seed)
    fill = np.float32(tissue_hu) + rng.normal(0.0, noise_hu, out.shape).astype(np.float32)
    return np.where(np.asarray(lung, bool), fill, out)


def reverse_slices(hu) -> np.ndarray:
    """The slices in reverse order (head and feet swapped) on the same grid: a header that lies."""
    return _check(hu)[:, :, ::-1].copy()
