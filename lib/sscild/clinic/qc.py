"""Quality control of one segmented scan: plain flags that say when an answer is not to be trusted.

Every number ``sscild segment`` reports is a share of the lung the network found, so the check asks
first whether that lung is plausible, then whether the scan is one the models can read. Each flag
says what it saw (with the numbers) and what it means for the report; a refusal stops the command
before any result is written (:class:`NoLungsError`, exit status 5).

================  ========  ===================================================================
flag              severity  when
================  ========  ===================================================================
``no_lungs``      refuse    lung volume below :data:`MIN_LUNG_ML` or above :data:`MAX_LUNG_ML`
``small_lungs``   warning   lung volume below :data:`SMALL_LUNG_ML`
``lung_missed``   warning   more than :data:`MISSED_LUNG_PCT` % of the lung was found only by the
                            classical threshold rule (the lung completion of
                            :mod:`sscild.model.inference` added it as normal lung)
``orientation``   warning   the lung is convex where the header says the feet are and hollowed
                            around the diaphragm's dome where it says the head is
``coverage``      warning   lung on the first or last axial slice, more than :data:`COVERAGE_PCT` %
                            of the largest slice's lung area (apex or base cut off)
``contrast``      warning   mediastinal blood above :data:`CONTRAST_HU` HU (contrast medium)
``thick_slices``  warning   slices more than 1.5 x as thick as the models were trained on
``uncertain``     warning   more than :data:`UNCERTAIN_LESION_PCT` % of the called lesion, or
                            :data:`UNCERTAIN_LUNG_PCT` % of the lung, is uncertain
================  ========  ===================================================================

Why the orientation rule works: each lung's axial section is a convex blob at the apex (solidity,
area over convex-hull area, near 1) and a crescent around the dome of the diaphragm at the base
(solidity about 0.4-0.7); on the two real chest CTs and the phantom the top fifth of the lung was
0.24-0.54 more solid than the bottom fifth, and exactly as much less when the slices were reversed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from sscild.data.lungmask import lung_mask_by_threshold
from sscild.data.orientation import to_canonical
from sscild.data.preprocess import denormalise
from sscild.errors import InputError
from sscild.model.inference import COMPLETE_MIN_PCT, UNCERTAIN_PCT

__all__ = ["NoLungsError", "Flag", "MIN_LUNG_ML", "MAX_LUNG_ML", "SMALL_LUNG_ML", "MISSED_LUNG_PCT",
           "CONTRAST_HU", "COVERAGE_PCT", "UNCERTAIN_LESION_PCT", "UNCERTAIN_LUNG_PCT", "ORIENTATION_MARGIN", "uncertainty_summary",
           "quality_control", "check_lungs_found", "training_slice_mm"]

MIN_LUNG_ML = 200.0
"""Less lung than this (mL) is no chest CT the models can read: the command refuses."""
MAX_LUNG_ML = 12000.0
"""More than this (mL) is more than any adult chest holds: outside air or bowel taken for lung."""
SMALL_LUNG_ML = 1500.0
"""Below this (mL) the lung is small for an adult: partial coverage, a child, or lung not found."""
MISSED_LUNG_PCT = COMPLETE_MIN_PCT
"""Share of the lung that only the classical threshold rule found (the network left it out) above which
the scan is flagged: the threshold above which the lung completion adds it."""
CONTRAST_HU = 110.0
"""Median attenuation of the central mediastinum above which the scan is taken as contrast-enhanced
(unenhanced blood and myocardium: 30-60 HU; the two real scans and the phantom: 40-49 HU)."""
UNCERTAIN_LESION_PCT = 50.0
"""Flag when more than this share of the voxels called EF or GGO is uncertain."""
UNCERTAIN_LUNG_PCT = 10.0
"""Flag when more than this share of the lung is uncertain."""
COVERAGE_PCT = 10.0
"""Lung on the first or last axial slice covering more than this share of the largest slice's lung area
means the apex or the base is cut off (a sliver of costophrenic recess below it loses little volume)."""
ORIENTATION_MARGIN = 0.1
"""The bottom fifth of the lung must be this much more solid than the top fifth to flag the orientation."""
EXIT_NO_LUNGS = 5
"""Exit status of ``sscild segment`` when it refuses a scan without plausible lungs."""


class NoLungsError(InputError):
    """The network found no plausible lungs: the scan is refused (exit status 5)."""

    exit_code = EXIT_NO_LUNGS


@dataclass
class Flag:
    """One quality-control finding: ``code``, ``severity`` (``"refuse"`` or ``"warning"``), what it
    ``seen`` (with numbers), what it ``means`` for the report, and which results it ``affects``."""

    code: str
    severity: str
    seen: str
    means: str
    affects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_lungs_found(lung_ml: float, scan) -> None:
    """Refuse a scan whose lung volume is implausible (:class:`NoLungsError`, module docstring)."""
    if lung_ml < MIN_LUNG_ML:
        raise NoLungsError(
            f"{scan}: no lungs found - is this a chest CT? The network found {lung_ml:.0f} mL of lung (an adult chest "
            f"holds several litres; below {MIN_LUNG_ML:.0f} mL nothing can be measured). Check that the file is a chest "
            "CT in Hounsfield units with the lungs in the field of view; no result was written.")
    if lung_ml > MAX_LUNG_ML:
        raise NoLungsError(
            f"{scan}: implausibly large lung ({lung_ml / 1000:.1f} L, more than any adult chest holds): air outside the "
            "body or in the bowel was taken for lung. Check the scan (a chest CT in HU, one patient, the table not "
            "in air); no result was written.")


def training_slice_mm(profile) -> float:
    """The slice spacing the models of ``profile`` were trained on (its target, else its phantom's)."""
    z = profile.target_spacing[2]
    return float(z if z is not None else profile.phantom_spacing[2])


def uncertainty_summary(label: np.ndarray, unc: np.ndarray) -> dict:
    """Per class (and lung, lesion): voxels, mean uncertainty and the share that is uncertain (percent)."""
    out = {}
    for name, sel in (("lung", label > 0), ("normal", label == 1), ("ef", label == 2), ("ggo", label == 3),
                      ("lesion", label >= 2)):
        n = int(sel.sum())
        u = unc[sel]
        out[name] = {"voxels": n,
                     "mean_uncertainty_pct": round(float(u.mean()), 1) if n else None,
                     "uncertain_pct": round(100.0 * float((u >= UNCERTAIN_PCT).mean()), 1) if n else None}
    return out


def _solidity(mask2d: np.ndarray) -> float:
    """Area over convex-hull area of a slice's lung (its components together); NaN when too small."""
    lab, n = ndi.label(mask2d)
    area = hull = 0.0
    for i in range(1, n + 1):
        pts = np.argwhere(lab == i)
        if len(pts) < 20:
            continue
        try:
            h = ConvexHull(pts + 0.5).volume
        except QhullError:
            continue
        area += len(pts)
        hull += max(h, len(pts))
    return area / hull if hull else float("nan")


def orientation_measure(lung_ras: np.ndarray) -> dict:
    """Solidity of the lung's top and bottom fifth (RAS grid: z superior); see the module docstring."""
    a = lung_ras.sum(axis=(0, 1)).astype(float)
    zs = np.nonzero(a > 0.02 * a.max())[0] if a.max() > 0 else np.array([], int)
    if zs.size < 6:
        return {"solidity_top": None, "solidity_bottom": None}
    n = max(2, int(round(0.2 * (zs[-1] - zs[0] + 1))))
    s = np.array([_solidity(lung_ras[:, :, z]) for z in range(zs[0], zs[-1] + 1)])

    def mean(part: np.ndarray) -> float | None:  # None when no slice of the part had a measurable lung
        part = part[np.isfinite(part)]
        return round(float(part.mean()), 3) if part.size else None

    return {"solidity_top": mean(s[-n:]), "solidity_bottom": mean(s[:n])}


def _mediastinum_hu(hu_ras: np.ndarray, lung_ras: np.ndarray) -> float | None:
    """Median HU of soft tissue (-50..600 HU) in the central band between the lungs, lower 60 % of the lung."""
    a = lung_ras.sum(axis=(0, 1))
    zs = np.nonzero(a > 0.02 * a.max())[0] if a.max() > 0 else []
    vals = []
    for z in (range(zs[0], zs[0] + max(1, int(0.6 * (zs[-1] - zs[0])))) if len(zs) > 2 else []):
        sl = lung_ras[:, :, z]
        xs, ys = np.nonzero(sl.any(axis=1))[0], np.nonzero(sl.any(axis=0))[0]
        if xs.size < 2 or ys.size < 2:
            continue
        xc, w = int(0.5 * (xs[0] + xs[-1])), int(0.25 * (xs[-1] - xs[0]))
        reg = np.zeros_like(sl)
        reg[xc - w:xc + w + 1, ys[0]:ys[-1] + 1] = True
        reg &= ~ndi.binary_dilation(sl, iterations=2)
        v = hu_ras[:, :, z][reg]
        vals.append(v[(v > -50) & (v < 600)])
    v = np.concatenate(vals) if vals else np.array([])
    return round(float(np.median(v)), 1) if v.size > 100 else None


def _coverage(label: np.ndarray, affine) -> dict:
    """Lung area on the lowest and highest axial slice, as percent of the largest slice's."""
    can, _ = to_canonical(np.asarray(label) > 0, affine)
    a = can.sum(axis=(0, 1)).astype(float)
    top = a.max() if a.size else 0.0
    if top <= 0:
        return {"lung_on_lowest_slice_pct": None, "lung_on_highest_slice_pct": None}
    return {"lung_on_lowest_slice_pct": round(100.0 * a[0] / top, 1),
            "lung_on_highest_slice_pct": round(100.0 * a[-1] / top, 1)}


def _missed_lung(pred, profile) -> dict:
    """How much of the lung only the threshold rule found (the lung completion added it), and the
    mediastinum's attenuation, on the network's grid."""
    hu = denormalise(pred.pre.image, profile)
    lung = pred.label_pre > 0
    added = pred.lung_added_pre if pred.lung_added_pre is not None else np.zeros(lung.shape, bool)
    if pred.lung_added_pre is None:  # labels without the completion: measure what it would add
        classical = lung_mask_by_threshold(hu, pred.pre.spacing)
        added = classical & ~lung
    ml = float(np.prod(pred.pre.spacing)) / 1000.0
    n_own = int((lung & ~added).sum())               # the network's own lung
    return {"missed_lung_ml": round(int(added.sum()) * ml, 1),
            "missed_lung_pct": round(100.0 * int(added.sum()) / n_own, 1) if n_own else None,
            "missed_lung_median_hu": round(float(np.median(hu[added])), 1) if added.any() else None,
            "mediastinum_hu": _mediastinum_hu(hu, lung)}


def quality_control(pred, affine, *, lung_ml: float, profile, slice_mm: float, uncertainty: dict | None) -> dict:
    """The measures and flags of one segmented scan (module docstring).

    Args:
        pred: the :class:`~sscild.model.inference.VolumePrediction` (labels on the input grid and the
            network's grid, the preprocessed image).
        affine: the input's voxel -> RAS affine.
        lung_ml: the network's lung volume (input grid); :func:`check_lungs_found` has passed.
        profile: the models' profile (their training slice spacing).
        slice_mm: the scan's slice thickness (DICOM SliceThickness, else the slice spacing).
        uncertainty: :func:`uncertainty_summary` of the scan, or ``None``.

    Returns:
        ``{"measures": {...}, "flags": [Flag.to_dict(), ...]}``.
    """
    m = {"lung_ml": round(float(lung_ml), 1), **_missed_lung(pred, profile),
         **orientation_measure(pred.label_pre > 0), **_coverage(pred.label, affine),
         "slice_mm": round(float(slice_mm), 2), "training_slice_mm": training_slice_mm(profile)}
    flags = []
    if lung_ml < SMALL_LUNG_ML:
        flags.append(Flag("small_lungs", "warning", f"The lung measures {lung_ml:.0f} mL, small for an adult chest.",
                          "Partial coverage, a child, or lung the network did not find; look at the overlay before "
                          "reading percentages.", ["lung volume", "percent of lung", "extent stage"]))
    if m["missed_lung_pct"] is not None and m["missed_lung_pct"] >= MISSED_LUNG_PCT:
        flags.append(Flag(
            "lung_missed", "warning",
            f"{m['missed_lung_ml']:.0f} mL of lung ({m['missed_lung_pct']:.1f} % of the network's) was found only by the threshold rule "
            f"(air-filled, median {m['missed_lung_median_hu']:.0f} HU): the network left it out and it was added as "
            "normal lung.",
            "Emphysema, bullae or a lung darker than the training cohort's: the models did not judge that part for EF "
            "or GGO, and disease inside it would be missed.", ["EF", "GGO", "zones"]))
    top, bottom = m["solidity_top"], m["solidity_bottom"]
    if top is not None and bottom is not None and bottom - top > ORIENTATION_MARGIN:
        flags.append(Flag(
            "orientation", "warning",
            f"The lung is convex at the bottom of the scan (solidity {bottom:.2f}) and hollowed at the top "
            f"({top:.2f}): the apex appears where the header puts the feet.",
            "Head and feet are probably swapped (slices stored in reverse order, or a wrong header): the upper and "
            "lower zones are exchanged in the zone table, and lower-zone predominance reads as upper.",
            ["zones (upper/lower)"]))
    for side, key, part in (("lowest", "lung_on_lowest_slice_pct", "base"),
                            ("highest", "lung_on_highest_slice_pct", "apex")):
        if m[key] is not None and m[key] > COVERAGE_PCT:
            flags.append(Flag(
                "coverage", "warning",
                f"Lung reaches the {side} slice of the scan ({m[key]:.0f} % of the largest slice's lung area).",
                f"The lung {part} is probably cut off: the lung volume is too small and the {part}'s zone incomplete.",
                ["lung volume", "percent of lung", "zones"]))
    if m["mediastinum_hu"] is not None and m["mediastinum_hu"] > CONTRAST_HU:
        flags.append(Flag(
            "contrast", "warning",
            f"The blood in the mediastinum measures {m['mediastinum_hu']:.0f} HU (unenhanced blood: 30-60 HU).",
            "Contrast medium: the models were trained on unenhanced scans; enhanced vessels can be called lesion.",
            ["EF", "GGO"]))
    if slice_mm > 1.5 * m["training_slice_mm"]:
        flags.append(Flag(
            "thick_slices", "warning",
            f"Slices of {slice_mm:g} mm; the models were trained on {m['training_slice_mm']:g} mm.",
            "Partial volume over thick slices blurs fine reticulation and raises the attenuation of normal lung: EF "
            "and GGO are less reliable.", ["EF", "GGO"]))
    if uncertainty is not None:
        les, lung = uncertainty["lesion"], uncertainty["lung"]
        hi_les = les["voxels"] and les["uncertain_pct"] > UNCERTAIN_LESION_PCT
        hi_lung = lung["voxels"] and lung["uncertain_pct"] > UNCERTAIN_LUNG_PCT
        if hi_les or hi_lung:
            flags.append(Flag(
                "uncertain", "warning",
                f"{les['uncertain_pct'] or 0:.0f} % of the voxels called lesion and {lung['uncertain_pct']:.0f} % of "
                "the lung are uncertain (the fold models disagree or are unsure).",
                "Read the lesion volumes as approximate and look at the uncertainty map.", ["EF", "GGO"]))
    return {"measures": m, "flags": [f.to_dict() for f in flags]}
