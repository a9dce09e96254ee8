"""Lungs of a chest CT without labels, by a classical rule, and statistics of the parenchyma.

The rule (thresholding, the largest connected components, holes filled) needs no training, so it is
the yardstick for lungs the network has never seen: real scans without labels (the real-lung check)
and the synthetic phantom's own lungs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["lung_mask_by_threshold", "body_mask", "fill_holes_in_plane", "parenchyma_stats", "MAX_HOLE_MM2"]

MAX_HOLE_MM2 = 1500.0
"""Largest hole (mm^2, in one slice) filled as lung: the largest intrapulmonary vessels fit with room
to spare; the dome of the diaphragm or the top of the heart, cut across by a slice, is larger."""


def _fill_holes_2d(mask, max_pixels: int | None = None):
    """Fill the holes of each axial slice; with ``max_pixels``, only holes up to that area."""
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        sl = mask[:, :, k]
        filled = ndi.binary_fill_holes(sl)
        if max_pixels is not None:
            holes, n = ndi.label(filled & ~sl)
            if n:
                big = np.flatnonzero(np.bincount(holes.ravel())[1:] > max_pixels) + 1
                filled[np.isin(holes, big)] = False
        out[:, :, k] = filled
    return out


def fill_holes_in_plane(mask, spacing, *, max_hole_mm2: float | None = MAX_HOLE_MM2) -> np.ndarray:
    """Fill the holes of every axial slice of ``mask`` up to ``max_hole_mm2`` each (``None``: all holes).

    Example:
        >>> m = np.zeros((9, 9, 1), bool); m[1:8, 1:8] = True; m[4, 4] = False
        >>> bool(fill_holes_in_plane(m, (1.0, 1.0, 1.0))[4, 4, 0])
        True
    """
    px = None if max_hole_mm2 is None else int(max_hole_mm2 / (float(spacing[0]) * float(spacing[1])))
    return _fill_holes_2d(np.asarray(mask, bool), max_pixels=px)


def _remove_airways(cand, sm, body, sp) -> None:
    """Take the trachea and main bronchi out of the lung candidates ``cand`` (in place).

    They are grown through air below -950 HU (in the smoothed image ``sm``) from small round air
    structures near the body's midline that are not part of a lung in their slice, then dilated by
    about 2 mm; nothing is removed when the grown region is implausibly large (250 mL or more).
    """
    air = cand & (sm < -950)
    alab, an = ndi.label(air)
    if an:
        vox_mm2 = sp[0] * sp[1]
        clab, _ = ndi.label(cand)
        seeds = set()
        xc = np.nonzero(body.any(axis=(1, 2)))[0]
        x_mid, x_half = 0.5 * (xc[0] + xc[-1]), 0.5 * (xc[-1] - xc[0]) + 1
        for k in range(cand.shape[2]):
            sl = alab[:, :, k]
            if not sl.any():
                continue
            l2, n2 = ndi.label(air[:, :, k])
            if n2 == 0:
                continue
            areas = np.bincount(l2.ravel())[1:] * vox_mm2
            coms = ndi.center_of_mass(np.ones_like(l2), l2, np.arange(1, n2 + 1))
            cl_area = np.bincount(clab[:, :, k].ravel()) * vox_mm2
            for j, (area, com) in enumerate(zip(areas, coms)):
                if not (40 <= area <= 800) or abs(com[0] - x_mid) > 0.25 * x_half:
                    continue
                comp = l2 == j + 1
                owner = np.bincount(clab[:, :, k][comp]).argmax()
                if cl_area[owner] > 1.6 * area + 30:  # part of a lung in this slice, not a separate tube
                    continue
                seeds.add(int(np.bincount(sl[comp]).argmax()))
        seeds.discard(0)
        if seeds:
            airway = np.isin(alab, list(seeds))
            vol_ml = airway.sum() * np.prod(sp) / 1000.0
            if vol_ml < 250:
                r = max(1, int(round(2.0 / sp[0])))
                st = np.zeros((2 * r + 1, 2 * r + 1, 3), bool)
                yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
                st[:, :, 1] = (xx ** 2 + yy ** 2) <= r * r
                airway = ndi.binary_dilation(airway, structure=st)
                cand &= ~airway


def body_mask(hu, spacing, *, threshold: float = -500.0, open_mm: float = 0.0) -> np.ndarray:
    """The patient's body with everything it encloses (the lungs included), from the image alone.

    Voxels above ``threshold`` HU, optionally opened in-plane by ``open_mm`` (to cut thin bridges to
    the scanner table; off by default: on a coarse grid an opening would break a thin chest wall and
    with it the lungs' enclosure), the largest 3D component, and every axial slice's holes filled, so
    that the lungs, airways and bowel gas inside the body are part of it while outside air, and a
    scanner table separated from the patient by its foam mattress, are not.

    Example:
        >>> hu = np.full((40, 40, 4), -1000, np.int16); hu[5:35, 5:35] = 40; hu[10:30, 10:30] = -850
        >>> hu[5:35, 37:39] = 300                            # a table below the body
        >>> m = body_mask(hu, (1.0, 1.0, 5.0)); bool(m[20, 20, 1]), bool(m[20, 38, 1])
        (True, False)
    """
    hu = np.asarray(hu)
    sp = np.asarray(spacing, float)
    dense = hu > threshold
    r = int(open_mm / float(min(sp[0], sp[1])))
    if r >= 1:
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        st = np.zeros((2 * r + 1, 2 * r + 1, 1), bool)
        st[:, :, 0] = xx ** 2 + yy ** 2 <= r * r
        opened = ndi.binary_opening(dense, structure=st)
        dense = opened if opened.any() else dense
    lab, n = ndi.label(dense)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return _fill_holes_2d(lab == int(sizes.argmax()))


def lung_mask_by_threshold(hu, spacing, *, threshold: float = -400.0) -> np.ndarray:
    """Lungs of a chest CT without labels, by thresholding (for real scans and comparisons).

    Steps: light in-plane smoothing; voxels below ``threshold`` HU inside the body (the largest
    connected non-air object, holes filled slice by slice; outside air, which reaches the in-plane
    border, and the scanner table are left out); trachea and main bronchi removed (a region grown
    through air below -950 HU from a small round air structure in the upper mediastinum, dilated by
    about 2 mm); the largest one or two connected components kept (the second only if it holds at
    least 15 % of the largest's volume); holes filled slice by slice so vessels count as lung (holes
    up to :data:`MAX_HOLE_MM2`, so the top of a diaphragmatic dome cut across by a slice stays out).

    Args:
        hu: CT in Hounsfield units, (x, y, z) with z the craniocaudal axis.
        spacing: voxel size in mm, (x, y, z).
        threshold: air/tissue threshold in HU.

    Returns:
        boolean lung mask with the shape of ``hu``.

    Example:
        >>> import numpy as np
        >>> hu = np.full((40, 40, 6), -1000, np.int16); hu[5:35, 5:35] = 40; hu[10:18, 10:30] = -850
        >>> hu[22:30, 10:30] = -850
        >>> int(lung_mask_by_threshold(hu, (1, 1, 1)).sum())
        1920
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"lung_mask_by_threshold: expected a 3D (x, y, z) volume, got shape {hu.shape}.")
    sp = np.asarray(spacing, float)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise ValueError(f"lung_mask_by_threshold: spacing must be three positive mm values, got {spacing!r}.")
    sig = np.minimum(0.7 / sp[:2], 1.0)
    sm = ndi.gaussian_filter(hu.astype(np.float32), (sig[0], sig[1], 0.0))
    dense = sm >= threshold
    lab, n = ndi.label(dense)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = _fill_holes_2d(lab == int(sizes.argmax()))
    del lab
    cand = body & ~dense
    if not cand.any():
        return cand
    _remove_airways(cand, sm, body, sp)  # trachea and main bronchi
    clab, cn = ndi.label(cand)
    if cn == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(clab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]]
    if cn > 1 and sizes[order[1]] >= 0.15 * sizes[order[0]]:
        keep.append(order[1])
    lung = np.isin(clab, keep)
    # vessels inside a slice are lung; a larger island is not (the top of a diaphragmatic dome or of
    # the heart, cut across by the slice)
    return _fill_holes_2d(lung, max_pixels=int(MAX_HOLE_MM2 / (float(spacing[0]) * float(spacing[1]))))


def parenchyma_stats(hu, lung_mask) -> dict:
    """Summary of lung attenuation inside ``lung_mask``.

    ``vessel_fraction`` is the share of lung voxels above -500 HU (vessels, airway walls, fissures and
    dense lesions); ``hu_std`` is the standard deviation.

    Returns:
        dict: ``n_voxels``, ``median_hu``, ``mean_hu``, ``iqr_hu``, ``p05_hu``, ``p25_hu``, ``p75_hu``,
        ``p95_hu``, ``hu_std``, ``vessel_fraction`` (NaN values when the mask is empty).

    Example:
        >>> import numpy as np
        >>> hu = np.array([-900, -850, -800, 0]); m = np.ones(4, bool)
        >>> parenchyma_stats(hu, m)["vessel_fraction"]
        0.25
    """
    hu = np.asarray(hu)
    m = np.asarray(lung_mask, bool)
    if m.shape != hu.shape:
        raise ValueError(f"parenchyma_stats: mask shape {m.shape} differs from image shape {hu.shape}.")
    v = hu[m].astype(np.float64)
    if v.size == 0:
        nan = float("nan")
        return dict(n_voxels=0, median_hu=nan, mean_hu=nan, iqr_hu=nan, p05_hu=nan, p25_hu=nan, p75_hu=nan,
                    p95_hu=nan, hu_std=nan, vessel_fraction=nan)
    p05, p25, p50, p75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    return dict(n_voxels=int(v.size), median_hu=float(p50), mean_hu=float(v.mean()), iqr_hu=float(p75 - p25),
                p05_hu=float(p05), p25_hu=float(p25), p75_hu=float(p75), p95_hu=float(p95), hu_std=float(v.std()),
                vessel_fraction=float((v > -500).mean()))
