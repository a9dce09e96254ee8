"""Lung densitometry: the attenuation histogram of the segmented lung, whole and per zone.

ILD research reports density measures beside the extent of disease, because they need no reader
and no trained model: fibrosis and ground glass raise the lung's attenuation and skew its histogram
towards higher values; emphysema adds a tail below -950 HU. For every lung zone of
:mod:`sscild.clinic.zones` (whole lung, right, left, upper, middle, lower, peripheral, central),
over every lung voxel the segmentation calls lung (normal, EF and GGO alike):

* ``mean_hu`` (mean lung attenuation), ``sd_hu``;
* ``skewness`` and ``kurtosis`` of the HU histogram (kurtosis as *excess* kurtosis: 0 for a normal
  distribution; a healthy lung's histogram is peaked and right-skewed, and both fall as fibrosis
  spreads, Best et al. 2003);
* ``haa_pct``: high-attenuation area, the share of lung between -600 and -250 HU (Podolanczuk
  et al. 2016; :data:`sscild.evaluation.baseline.HAA_RANGE_HU`);
* ``laa950_pct``: the share below -950 HU (emphysema index);
* ``pd15_hu``: the 15th percentile of the HU distribution.

The measures depend on the scan as much as on the lung: on inspiration (a deep breath lowers the
mean by 100 HU or more), the kernel (a sharp kernel widens the histogram) and the slice thickness.
Compare them between scans of one protocol only.

HU are counted in 1-HU bins from -1024 to +1000 (values outside are clipped to the ends), on the
label map's own grid, in slabs, so a 512 x 512 x 600 scan needs no full-size temporary.

Usage::

    zm = zone_map(label, vol.affine)
    table = zone_densitometry(zm, vol.array, vol.affine)
    table.loc["lower", "haa_pct"]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sscild.clinic.zones import ZONES, ZoneMap, zone_members
from sscild.data.orientation import to_canonical
from sscild.evaluation.baseline import HAA_RANGE_HU

__all__ = ["DENSITY_COLUMNS", "LAA_HU", "DENSITY_RULES", "zone_densitometry", "histogram_measures"]

LAA_HU = -950.0
"""Low-attenuation threshold of the emphysema index."""

_LO, _HI = -1024, 1000
_NB = _HI - _LO + 1
_NO_ZONE = 255

DENSITY_COLUMNS = ("mean_hu", "sd_hu", "skewness", "kurtosis", "haa_pct", "laa950_pct", "pd15_hu")
"""Columns of :func:`zone_densitometry`."""

DENSITY_RULES = {
    "voxels": "every voxel the segmentation calls lung (normal, EF, GGO), HU clipped to -1024..+1000",
    "mean_hu": "mean lung attenuation",
    "sd_hu": "standard deviation of lung attenuation",
    "skewness": "skewness of the lung's HU histogram",
    "kurtosis": "excess kurtosis of the lung's HU histogram (0 for a normal distribution)",
    "haa_pct": f"high-attenuation area: % of lung between {HAA_RANGE_HU[0]:g} and {HAA_RANGE_HU[1]:g} HU",
    "laa950_pct": f"% of lung below {LAA_HU:g} HU (emphysema index)",
    "pd15_hu": "15th percentile of the lung's HU distribution",
    "caution": "depends on inspiration, kernel and slice thickness: compare scans of one protocol only",
}
"""What each measure is, for the report."""


def histogram_measures(hist: np.ndarray) -> dict:
    """The measures of :data:`DENSITY_COLUMNS` from a 1-HU histogram over -1024..+1000.

    Example:
        >>> h = np.zeros(2025); h[[124, 224, 424]] = [1, 2, 1]     # -900, -800 and -600 HU
        >>> m = histogram_measures(h)
        >>> m["mean_hu"], m["haa_pct"], m["pd15_hu"]
        (-775.0, 25.0, -900.0)
    """
    hist = np.asarray(hist, dtype=float)
    n = hist.sum()
    out = dict.fromkeys(DENSITY_COLUMNS, float("nan"))
    if n <= 0:
        return out
    hu = np.arange(_LO, _HI + 1, dtype=float)
    mean = float((hist * hu).sum() / n)
    d = hu - mean
    var = float((hist * d ** 2).sum() / n)
    sd = var ** 0.5
    out.update(mean_hu=mean, sd_hu=sd)
    if sd > 0:
        out["skewness"] = float((hist * d ** 3).sum() / n / sd ** 3)
        out["kurtosis"] = float((hist * d ** 4).sum() / n / var ** 2 - 3.0)
    haa = (hu >= HAA_RANGE_HU[0]) & (hu <= HAA_RANGE_HU[1])
    out["haa_pct"] = float(100.0 * hist[haa].sum() / n)
    out["laa950_pct"] = float(100.0 * hist[hu < LAA_HU].sum() / n)
    cdf = np.cumsum(hist) / n
    out["pd15_hu"] = float(hu[int(np.searchsorted(cdf, 0.15))])
    return out


def zone_densitometry(zm: ZoneMap, image_hu: np.ndarray, affine: np.ndarray) -> pd.DataFrame:
    """Densitometry of the lung in every zone of ``zm``.

    Args:
        zm: :func:`sscild.clinic.zones.zone_map` of the label map (canonical orientation).
        image_hu: the CT in HU on the label map's grid, ``(x, y, z)`` as read (not reoriented).
        affine: its voxel -> RAS affine (the label map's).

    Returns:
        DataFrame indexed by :data:`sscild.clinic.zones.ZONES`, columns :data:`DENSITY_COLUMNS` (NaN for a
        zone without lung).

    Raises:
        ValueError: the image and the label map differ in shape.
    """
    can, _ = to_canonical(image_hu, affine)
    if tuple(can.shape) != tuple(zm.label.shape):
        raise ValueError(f"the image {tuple(can.shape)} and the label map {tuple(zm.label.shape)} differ in shape")
    hist = np.zeros(12 * _NB, np.int64)
    nx = zm.label.shape[0]
    step = zm.scale * max(1, 2_000_000 // max(1, zm.scale * zm.label.shape[1] * zm.label.shape[2]))
    for x0 in range(0, nx, step):
        code = zm.fine_code(x0, x0 + step)
        inside = code != _NO_ZONE
        if not inside.any():
            continue
        hu = np.clip(np.rint(np.asarray(can[x0:x0 + step], dtype=np.float32)[inside]), _LO, _HI).astype(np.int64)
        hist += np.bincount(code[inside].astype(np.int64) * _NB + (hu - _LO), minlength=12 * _NB)
    per_code = hist.reshape(12, _NB)
    rows = {zone: histogram_measures(per_code[members].sum(axis=0)) for zone, members in zone_members().items()}
    df = pd.DataFrame.from_dict(rows, orient="index").loc[list(ZONES), list(DENSITY_COLUMNS)]
    df.index.name = "zone"
    return df
