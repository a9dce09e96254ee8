"""Classical quantification: a Hounsfield-unit density mask inside a given lung.

Quantitative-CT studies measure interstitial abnormality without any learning, as the share of
lung whose attenuation falls in a band denser than aerated lung and lighter than soft tissue: the
*high-attenuation area* (HAA), lung voxels between -600 and -250 HU (Lederer et al., 2009;
Podolanczuk et al., 2016, MESA). This module labels those voxels as lesion, the rest of the lung
as normal, and so gives the network a transparent, threshold-only comparator.

Rules (all bounds inclusive):

* outside ``lung_mask`` -> 0 (background);
* inside, ``low <= HU <= high`` -> lesion; every other lung voxel -> 1 (normal lung). Voxels
  denser than ``high`` (vessels, airway walls, consolidation) stay normal lung, as in the HAA
  literature; so do air cysts of honeycombing, below ``low``: a density band cannot see them.
* lesion label: with ``ef_cut=None`` (default) every lesion voxel is 3 (GGO). Density alone does
  not tell established fibrosis from ground glass, so the default makes no such claim and only the
  *total lesion* (EF ∪ GGO, the "lesion" region of :mod:`sscild.evaluation.metrics`) is meant for comparison.
  With a number, lesion voxels with ``HU > ef_cut`` become 2 (EF: denser reticulation and fibrotic
  bands) and those at or below it 3 (GGO). This split is a coarse illustration with no
  published threshold behind it; report it as such.
* optional smoothing (``smooth_mm``): a Gaussian of that sigma in mm, computed within the lung
  only (normalised convolution: smoothed ``HU x mask`` over smoothed ``mask``), so chest wall and
  mediastinum do not raise the attenuation of the lung border. It damps noise-driven speckle in
  thin-slice, sharp-kernel scans; the MESA definition uses none.

The lung itself is not found here: it is given, taken from a label map as ``label > 0`` (the
reference or the network's own prediction), so a comparison with the network is about lesion
quantification, not lung finding.

Example:
    >>> import numpy as np
    >>> hu = np.full((4, 4, 1), -850.0); hu[0, :2] = -400; hu[1, :2] = -100
    >>> lung = np.ones((4, 4, 1), bool); lung[3] = False
    >>> density_mask(hu, lung)[:, :, 0].tolist()
    [[3, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["HAA_RANGE_HU", "REFERENCES", "density_mask", "band_histograms", "split_dice", "fit_ef_cut"]

HAA_RANGE_HU = (-600.0, -250.0)
"""The high-attenuation-area band of the MESA studies, in HU, both ends inclusive."""

REFERENCES = {
    "lederer2009": "Lederer DJ, Enright PL, Kawut SM, et al. Cigarette smoking is associated with subclinical "
    "parenchymal lung disease: the Multi-Ethnic Study of Atherosclerosis (MESA)-Lung Study. "
    "Am J Respir Crit Care Med. 2009;180(5):407-414.",
    "podolanczuk2016": "Podolanczuk AJ, Oelsner EC, Barr RG, et al. High attenuation areas on chest computed "
    "tomography in community-dwelling adults: the MESA study. Eur Respir J. 2016;48(5):1442-1452.",
}
"""Citations of the density-mask rule, for the book to print."""


def _check_density_args(image: np.ndarray, lung: np.ndarray, *, low, high, ef_cut, smooth_mm, spacing):
    """:func:`density_mask`'s arguments checked and as floats: ``(low, high, ef_cut, smooth, spacing or None)``."""
    if image.shape != lung.shape:
        raise ValueError(
            f"CT image has shape {image.shape} but the lung mask has {lung.shape}; they must share one grid "
            "(take the lung from the label map of the same case, resampled onto the CT if needed)."
        )
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (x, y) or 3D (x, y, z) CT, got shape {image.shape}; drop channel axes first.")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"the lesion band needs finite low < high (HU), got low={low}, high={high}.")
    if ef_cut is not None:
        ef_cut = float(ef_cut)
        if not low < ef_cut < high:
            raise ValueError(
                f"ef_cut={ef_cut} HU must lie strictly inside the lesion band ({low}, {high}) to split it; "
                "use None to label every lesion voxel GGO."
            )
    smooth = float(smooth_mm or 0.0)
    if smooth < 0 or not math.isfinite(smooth):
        raise ValueError(f"smooth_mm must be None or a Gaussian sigma >= 0 in mm, got {smooth_mm!r}.")
    sp = None
    if smooth > 0:
        if spacing is None:
            raise ValueError("smooth_mm needs the voxel spacing in mm: pass spacing=(sx, sy[, sz]).")
        sp = tuple(float(s) for s in spacing)
        if len(sp) != image.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
            raise ValueError(f"spacing {spacing!r} must hold {image.ndim} positive voxel sizes in mm.")
    return low, high, ef_cut, smooth, sp


def density_mask(
    image_hu,
    lung_mask,
    *,
    low: float = HAA_RANGE_HU[0],
    high: float = HAA_RANGE_HU[1],
    ef_cut: float | None = None,
    smooth_mm: float | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Label a lung by attenuation: 1 normal, lesion (3, or 2/3 split at ``ef_cut``) in [low, high].

    Args:
        image_hu: CT in Hounsfield units, 2D (x, y) or 3D (x, y, z).
        lung_mask: lung region, same shape; non-zero is lung (a label map works: ``label > 0``).
        low: lower end of the lesion band in HU (inclusive).
        high: upper end of the lesion band in HU (inclusive).
        ef_cut: None -> every lesion voxel is GGO (3); a HU value strictly inside (low, high) ->
            lesion voxels above it are EF (2), the others GGO (3).
        smooth_mm: Gaussian sigma in mm applied within the lung before thresholding; None or 0
            for none. Needs ``spacing``.
        spacing: voxel size in mm per axis (required only for smoothing).

    Returns:
        uint8 label map: 0 outside the lung, 1 normal lung, 2 EF, 3 GGO.

    Raises:
        ValueError: shapes differ, bounds are inconsistent, smoothing lacks a spacing, or the
            image does not look like Hounsfield units.

    Example:
        >>> hu = np.array([[-900.0, -500.0, -300.0, 40.0]])
        >>> density_mask(hu, np.ones_like(hu, bool), ef_cut=-400).tolist()
        [[1, 3, 2, 1]]
    """
    image = np.asarray(image_hu)
    lung = np.asarray(lung_mask) != 0
    low, high, ef_cut, smooth, sp = _check_density_args(image, lung, low=low, high=high, ef_cut=ef_cut,
                                                        smooth_mm=smooth_mm, spacing=spacing)

    out = np.zeros(image.shape, dtype=np.uint8)
    if not lung.any():
        return out
    hu = image.astype(np.float32, copy=False)
    inside = hu[lung]
    if float(inside.min()) >= -5.0 and float(inside.max()) <= 5.0:
        raise ValueError(
            f"the CT values inside the lung span {inside.min():.3g}..{inside.max():.3g}, which is not Hounsfield "
            "units (aerated lung is about -900 HU); pass the raw CT, not a normalised image."
        )
    if sp is not None:
        sigma = [smooth / s for s in sp]
        weight = lung.astype(np.float32)
        num = ndimage.gaussian_filter(np.where(lung, hu, 0.0).astype(np.float32), sigma, mode="constant")
        den = ndimage.gaussian_filter(weight, sigma, mode="constant")
        hu = np.where(lung, num / np.maximum(den, 1e-6), hu)

    out[lung] = 1
    lesion = lung & (hu >= low) & (hu <= high)
    if ef_cut is None:
        out[lesion] = 3
    else:
        out[lesion & (hu > ef_cut)] = 2
        out[lesion & (hu <= ef_cut)] = 3
    return out


# --------------------------------------------------------------------------------------------
# an EF/GGO split of the density band, fitted on training patients
# --------------------------------------------------------------------------------------------
#
# Density does not separate EF from GGO by any published rule, but a comparator for the network's EF
# and GGO Dice needs *some* split. The fairest one a threshold method can have is the cut that works
# best on the patients the network was trained on: for each fold, :func:`fit_ef_cut` chooses the HU
# value that maximises the mean of EF and GGO Dice over the fold's training cases, and the held-out
# cases are scored with it. Cuts are half-integers (x.5 HU), so on integer CT values the histogram
# arithmetic below equals ``density_mask(..., ef_cut=cut)`` exactly.


def band_histograms(image_hu, label, *, low: float = HAA_RANGE_HU[0], high: float = HAA_RANGE_HU[1]) -> dict:
    """Counts of one case from which the split's EF and GGO Dice follow for any cut.

    Args:
        image_hu: CT in HU, same grid as ``label``.
        label: reference labels (0 background, 1 normal, 2 EF, 3 GGO); the lung is ``label > 0``,
            as in the evaluation's baseline.
        low, high: the lesion band in HU (inclusive).

    Returns:
        ``{"low": int, "band": counts of lung voxels in the band per 1-HU bin (bin ``b`` holds
        ``floor(HU) == low + b``), "ef": same for reference EF voxels, "ggo": for reference GGO,
        "n_ef": reference EF voxels, "n_ggo": reference GGO voxels}``.
    """
    hu = np.asarray(image_hu)
    lab = np.asarray(label)
    if hu.shape != lab.shape:
        raise ValueError(f"band_histograms: image {hu.shape} and label {lab.shape} differ in shape.")
    lo, hi = math.floor(float(low)), math.floor(float(high))
    nbins = hi - lo + 1
    lung = lab > 0
    v = hu[lung].astype(np.float64)
    labs = lab[lung]
    inband = (v >= low) & (v <= high)
    bins = np.floor(v[inband]).astype(np.int64) - lo
    lb = labs[inband]
    return {
        "low": lo,
        "band": np.bincount(bins, minlength=nbins)[:nbins],
        "ef": np.bincount(bins[lb == 2], minlength=nbins)[:nbins],
        "ggo": np.bincount(bins[lb == 3], minlength=nbins)[:nbins],
        "n_ef": int((labs == 2).sum()),
        "n_ggo": int((labs == 3).sum()),
    }


def _split_dice_all(h: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cuts, EF Dice, GGO Dice) of one case for every half-integer cut inside the band."""
    band, ef, ggo = (np.asarray(h[k], dtype=np.float64) for k in ("band", "ef", "ggo"))
    n = band.size
    # cut after bin j (j = 0 .. n-2): EF = bins > j, GGO = bins <= j
    cuts = h["low"] + np.arange(n - 1) + 0.5
    band_le, ef_gt, ggo_le = np.cumsum(band)[:-1], None, np.cumsum(ggo)[:-1]
    band_gt = band.sum() - band_le
    ef_gt = ef.sum() - np.cumsum(ef)[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        d_ef = np.where(h["n_ef"] > 0, 2 * ef_gt / (band_gt + h["n_ef"]), np.nan)
        d_ggo = np.where(h["n_ggo"] > 0, 2 * ggo_le / (band_le + h["n_ggo"]), np.nan)
    return cuts, d_ef, d_ggo


def split_dice(h: dict, cut: float) -> tuple[float, float]:
    """EF and GGO Dice of one case (:func:`band_histograms`) when the band is split at ``cut`` (x.5 HU).

    An empty reference region gives NaN (the evaluation's empty-reference policy).
    """
    cuts, d_ef, d_ggo = _split_dice_all(h)
    i = np.flatnonzero(np.isclose(cuts, float(cut)))
    if i.size != 1:
        raise ValueError(f"cut {cut} HU is not a half-integer inside the band {cuts[0] - 0.5:g}..{cuts[-1] + 0.5:g}.")
    return float(d_ef[i[0]]), float(d_ggo[i[0]])


def fit_ef_cut(hists) -> float:
    """The half-integer HU cut maximising mean (over cases) of the mean of EF and GGO Dice.

    Args:
        hists: :func:`band_histograms` of the training cases (same band).

    Returns:
        The cut in HU; ties go to the lower cut. Cases without EF or GGO in the reference count
        only through the region they have.
    """
    hists = list(hists)
    if not hists:
        raise ValueError("fit_ef_cut needs the histograms of at least one training case.")
    per_case = []
    for h in hists:
        cuts, d_ef, d_ggo = _split_dice_all(h)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_case.append(np.nanmean(np.stack([d_ef, d_ggo]), axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = np.nanmean(np.stack(per_case), axis=0)
    if not np.isfinite(score).any():
        raise ValueError("fit_ef_cut: no training case has EF or GGO in its reference; nothing to fit.")
    return float(cuts[int(np.nanargmax(score))])
