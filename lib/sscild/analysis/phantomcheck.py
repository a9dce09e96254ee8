"""The synthetic phantom's lung against real chest CT, measured the same way on both.

The Data chapter shows the synthetic patient with the least disease beside real chest CT samples
(public scans without lesion labels) and compares their lung attenuation. Real scans are read in RAS
order and, when their pixels are finer, resampled in-plane to the phantom's pixel size, so partial
volume is alike; lungs are found on every scan by the classical threshold rule of
:mod:`sscild.data.lungmask`, which needs no labels.

* :func:`real_ct_files`: the real chest CT samples beside the checkout.
* :func:`resample_inplane`, :func:`load_real_ct`: a real scan at a common pixel size.
* :func:`parenchyma_comparison`: lung volume and attenuation of several scans.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from sscild.data.image import load_volume
from sscild.data.lungmask import lung_mask_by_threshold, parenchyma_stats
from sscild.data.orientation import to_canonical
from sscild.paths import repo_root

__all__ = ["real_ct_files", "resample_inplane", "load_real_ct", "parenchyma_comparison"]


def real_ct_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """The real chest CT samples ``chest-ct-*.nrrd`` (default ``../shared/data/real-ct`` beside the
    checkout); an empty list when the folder is absent."""
    folder = Path(folder) if folder is not None else repo_root().parent / "shared" / "data" / "real-ct"
    return sorted(folder.glob("chest-ct-*.nrrd")) if folder.is_dir() else []


def resample_inplane(hu: np.ndarray, spacing, pixel_mm: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample a volume in-plane to square pixels of ``pixel_mm`` (slices unchanged).

    Downsampling first smooths with a Gaussian matched to the size ratio (so each new pixel averages
    the area it covers, like a coarser detector), then interpolates linearly. A volume already at
    ``pixel_mm`` (within 2 %) is returned as it is.

    Returns:
        ``(hu, spacing)``: int16 HU and the new (x, y, z) spacing.
    """
    sx, sy, sz = (float(v) for v in spacing)
    fx, fy = sx / pixel_mm, sy / pixel_mm
    if abs(fx - 1) < 0.02 and abs(fy - 1) < 0.02:
        return np.asarray(hu), (sx, sy, sz)
    x = np.asarray(hu, np.float32)
    sigma = tuple(0.42 / f if f < 1 else 0.0 for f in (fx, fy)) + (0.0,)
    if any(sigma):
        x = ndi.gaussian_filter(x, sigma)
    x = ndi.zoom(x, (fx, fy, 1.0), order=1, grid_mode=False)
    return np.rint(x).astype(np.int16), (float(pixel_mm), float(pixel_mm), sz)


def load_real_ct(path: str | os.PathLike, *, pixel_mm: float | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real CT scan in RAS order, resampled in-plane to ``pixel_mm`` when its pixels are finer.

    Returns:
        ``(hu, spacing)``.

    Example: ``load_real_ct(real_ct_files()[0], pixel_mm=1.4)``.
    """
    vol = load_volume(path)
    hu, sp = to_canonical(vol.array, vol.affine)
    if pixel_mm is not None and min(sp[:2]) < float(pixel_mm) * 0.98:
        hu, sp = resample_inplane(hu, sp, float(pixel_mm))
    return hu, sp


def parenchyma_comparison(scans: Sequence[tuple[str, str, np.ndarray, Sequence[float]]], *,
                          pixel_mm: float | None = None) -> pd.DataFrame:
    """Lung attenuation of several scans, measured the same way on each.

    Each scan's lungs are found by thresholding (:func:`sscild.data.lungmask.lung_mask_by_threshold`, no
    labels needed) and summarised by :func:`sscild.data.lungmask.parenchyma_stats`. With ``pixel_mm``,
    scans with finer pixels are first resampled in-plane to it (:func:`resample_inplane`), so that
    partial volume, which decides how many voxels of small vessels exceed -500 HU, is alike.

    Args:
        scans: ``(name, kind, hu, spacing)`` per scan, ``hu`` (x, y, z) in RAS order.
        pixel_mm: common in-plane pixel size, or ``None`` to measure each at its own.

    Returns:
        DataFrame indexed by ``scan`` with ``kind``, ``pixel (mm)``, ``slice (mm)``, ``lung (mL)``,
        ``median HU``, ``IQR HU`` and ``voxels above -500 HU (%)``.
    """
    rows = []
    for name, kind, hu, sp in scans:
        sp = tuple(float(v) for v in sp)
        if pixel_mm is not None and min(sp[:2]) < pixel_mm * 0.98:
            hu, sp = resample_inplane(hu, sp, pixel_mm)
        mask = lung_mask_by_threshold(hu, sp)
        st = parenchyma_stats(hu, mask)
        rows.append({"scan": name, "kind": kind, "pixel (mm)": f"{sp[0]:.2f}", "slice (mm)": f"{sp[2]:.2f}",
                     "lung (mL)": st["n_voxels"] * float(np.prod(sp)) / 1000.0, "median HU": st["median_hu"],
                     "IQR HU": st["iqr_hu"], "voxels above -500 HU (%)": 100.0 * st["vessel_fraction"]})
    return pd.DataFrame(rows).set_index("scan")
