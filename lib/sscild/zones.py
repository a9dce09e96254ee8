"""Where the disease is: EF and GGO extent per lung zone.

SSc-ILD (mostly NSIP) is read by its distribution: basal and subpleural. This module splits the lung
of a label map into zones and reports, per zone, the share of that zone's lung that is EF, GGO and
total lesion (EF ∪ GGO), in percent of the zone's own lung volume.

**Zones** (every lung voxel -- labels 1, 2, 3 -- belongs to exactly one side, one level and one
depth, so each family of zones partitions the lung):

* **Right / left.** The two largest 26-connected lung components when they are two lungs (the
  second holds at least :data:`SECOND_LUNG_SHARE` of the first); otherwise (lungs touching at a
  junction line) the sagittal plane at the minimum of the lung's left-right profile, searched in
  the middle 40 % of the lung's width. Patient sides from the affine (RAS), whatever the voxel order.
* **Upper / middle / lower.** Thirds of *each lung's own* cranio-caudal extent (its first to its
  last axial slice), so a lung that reaches lower than the other is split along its own height.
* **Peripheral / central.** On every axial slice, for each lung, the in-plane distance of each lung
  voxel to the nearest non-lung voxel (the pleura: costal, mediastinal and, on the slices where it
  is cut, diaphragmatic) is measured in millimetres. A voxel is **peripheral** when that distance
  is at most :data:`PERIPHERAL_FRACTION` (one third) of the greatest distance found on that slice of
  that lung -- the outer third of the lung's depth, the "outer third" radiologists use for
  subpleural disease. Why relative and not a fixed band (e.g. 10 mm): a fixed band covers a larger
  share of a small or expiratory lung than of a large inspiratory one, so a follow-up at a
  different inspiration would change the peripheral extent through geometry alone; the relative
  band scales with the lung. Why in-plane: HRCT is often reconstructed at 1-5 mm slices, and a 3D
  distance on 5 mm slices would make whole slices near the apex and the bases "peripheral". On a
  round cross-section the outer third of the depth is about 56 % of the area.

**Cost.** Distances are computed on a grid coarsened in-plane to about :data:`ZONE_GRID_MM`
(1.4 mm, the ``cpu`` network's resolution; each coarse pixel is lung when any of its fine voxels
is), then every fine voxel takes its coarse pixel's zone; the counts are on the full label map, so
the zone volumes add up exactly to the whole lung (a test checks it).

Example:
    >>> table = zone_extent(label, affine)                     # doctest: +SKIP
    >>> table.loc["lower", "ef_pct"], table.loc["peripheral", "lesion_pct"]   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["ZONES", "PERIPHERAL_FRACTION", "SECOND_LUNG_SHARE", "ZONE_GRID_MM", "ZONE_RULES", "ZoneMap",
           "zone_map", "zone_extent", "zone_row", "cohort_zone_extent", "zone_correlations"]

PERIPHERAL_FRACTION = 1.0 / 3.0
"""A lung voxel is peripheral when its in-plane distance to the pleura is at most this share of the
slice's deepest distance in that lung."""

SECOND_LUNG_SHARE = 0.2
"""The two largest lung components are taken as the two lungs when the second has this share of the first."""

ZONE_GRID_MM = 1.4
"""In-plane grid (mm) on which distances to the pleura are computed."""

ZONES = ("whole lung", "right", "left", "upper", "middle", "lower", "peripheral", "central")
"""The zones of :func:`zone_extent`, in table order."""

ZONE_RULES = {
    "sides": "right / left: the two lungs as connected components, or the sagittal plane of least lung between them",
    "levels": "upper / middle / lower: thirds of each lung's own cranio-caudal extent",
    "depth": f"peripheral: in-plane distance to the pleura at most {PERIPHERAL_FRACTION:.3g} of the slice's deepest "
             "point of that lung (the outer third of its depth); central: the rest",
}
"""One sentence per zone family, for reports and the book."""

_SIDES = ("right", "left")
_LEVELS = ("upper", "middle", "lower")
_DEPTHS = ("central", "peripheral")
_NO_ZONE = 255


@dataclass
class ZoneMap:
    """Zone code per voxel of a label map in canonical (RAS) voxel order.

    ``code = side * 6 + level * 2 + depth`` (side 0 right, 1 left; level 0 upper, 1 middle, 2 lower;
    depth 0 central, 1 peripheral); 255 outside the lung.

    Attributes:
        code: uint8 array, canonical orientation (x to the patient's right, y anterior, z superior).
        label: the label map in the same orientation.
        voxel_ml: volume of one voxel.
        how: how the sides were separated (``"components"`` or ``"midline"``).
    """

    code: np.ndarray
    label: np.ndarray
    voxel_ml: float
    how: str
    rules: dict = field(default_factory=lambda: dict(ZONE_RULES))

    def counts(self) -> np.ndarray:
        """(12, 4) voxel counts: zone code x label value (0..3)."""
        lung = self.label > 0
        idx = self.code[lung].astype(np.int64) * 4 + self.label[lung].astype(np.int64)
        return np.bincount(idx, minlength=48)[:48].reshape(12, 4)


def _canonical(array: np.ndarray, affine: np.ndarray):
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=float)
    ornt = nio.io_orientation(affine)
    can = nio.apply_orientation(np.asarray(array), ornt)
    can_aff = affine @ nio.inv_ornt_aff(ornt, np.asarray(array).shape)
    spacing = tuple(float(s) for s in np.sqrt((can_aff[:3, :3] ** 2).sum(axis=0)))
    return can, spacing


def _block_any(mask: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return mask.copy()
    nx, ny, nz = mask.shape
    px, py = -nx % s, -ny % s
    if px or py:
        mask = np.pad(mask, ((0, px), (0, py), (0, 0)))
    return mask.reshape(mask.shape[0] // s, s, mask.shape[1] // s, s, nz).any(axis=(1, 3))


def _sides(lung: np.ndarray) -> tuple[np.ndarray, str]:
    """Side index per voxel of the (coarse) lung mask: 0 right, 1 left (canonical: x grows to the right)."""
    comp, n = ndi.label(lung, structure=np.ones((3, 3, 3), bool))
    side = np.full(lung.shape, _NO_ZONE, np.uint8)
    xs = np.arange(lung.shape[0])[:, None, None]
    if n >= 2:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        a, b = np.argsort(sizes)[::-1][:2]
        if sizes[b] >= SECOND_LUNG_SHARE * sizes[a]:
            cx = ndi.center_of_mass(lung, comp, [a, b])
            right, left = (a, b) if cx[0][0] > cx[1][0] else (b, a)
            mid = 0.5 * (cx[0][0] + cx[1][0])
            side[lung] = np.where(np.broadcast_to(xs, lung.shape)[lung] > mid, 0, 1)  # stray bits by the midline
            side[comp == right] = 0
            side[comp == left] = 1
            return side, "components"
    profile = lung.sum(axis=(1, 2)).astype(float)
    xi = np.flatnonzero(profile)
    if xi.size == 0:
        return side, "none"
    lo, hi = xi[0], xi[-1]
    a, b = int(lo + 0.3 * (hi - lo)), int(np.ceil(lo + 0.7 * (hi - lo)))
    smooth = ndi.uniform_filter1d(profile, 3)
    mid = a + int(np.argmin(smooth[a:b + 1])) if b > a else (lo + hi) // 2
    side[lung] = np.where(np.broadcast_to(xs, lung.shape)[lung] > mid, 0, 1)
    return side, "midline"


def zone_map(label: np.ndarray, affine: np.ndarray, *, peripheral_fraction: float = PERIPHERAL_FRACTION,
             grid_mm: float = ZONE_GRID_MM) -> ZoneMap:
    """Assign every lung voxel of ``label`` to its side, level and depth (see the module docstring).

    Args:
        label: (x, y, z) label map, 0 background, 1..3 lung classes.
        affine: its voxel -> RAS mm affine.
        peripheral_fraction: share of the slice's deepest in-plane distance that is peripheral, in (0, 1).
        grid_mm: in-plane grid for the distance computation (> 0).

    Returns:
        :class:`ZoneMap` (canonical orientation).
    """
    if not 0.0 < float(peripheral_fraction) < 1.0:
        raise ValueError(f"peripheral_fraction must lie in (0, 1), got {peripheral_fraction!r}")
    if not float(grid_mm) > 0:
        raise ValueError(f"grid_mm must be > 0, got {grid_mm!r}")
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be 3D (x, y, z), got shape {label.shape}")
    lab, spacing = _canonical(label, affine)
    lab = np.ascontiguousarray(lab, dtype=np.uint8)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    s = max(1, int(float(grid_mm) // max(min(spacing[:2]), 1e-6)))
    lung_c = _block_any(lab > 0, s)
    sp_c = (spacing[0] * s, spacing[1] * s)
    side, how = _sides(lung_c)
    code_c = np.full(lung_c.shape, _NO_ZONE, np.uint8)
    for si in (0, 1):
        m = side == si
        zs = np.flatnonzero(m.any(axis=(0, 1)))
        if zs.size == 0:
            continue
        z0, z1 = zs[0], zs[-1]
        for z in range(z0, z1 + 1):
            m2 = m[:, :, z]
            if not m2.any():
                continue
            t = (z - z0 + 0.5) / (z1 - z0 + 1)          # 0 at the base .. 1 at the apex (canonical z is superior)
            level = 0 if t > 2 / 3 else 1 if t > 1 / 3 else 2
            ii, jj = np.nonzero(m2)
            box = (slice(ii.min(), ii.max() + 1), slice(jj.min(), jj.max() + 1))
            sub = np.pad(m2[box], 1)                    # the pleura lies outside the box at worst
            # centre-to-centre distance to the nearest non-lung pixel, less half a pixel: to the pleura itself
            d = ndi.distance_transform_edt(sub, sampling=sp_c)[1:-1, 1:-1] - 0.5 * min(sp_c)
            inside = m2[box]
            periph = d <= float(peripheral_fraction) * d[inside].max()
            block = code_c[box[0], box[1], z]
            block[inside] = si * 6 + level * 2 + periph[inside].astype(np.uint8)
    code = code_c if s == 1 else np.repeat(np.repeat(code_c, s, axis=0), s, axis=1)[: lab.shape[0], : lab.shape[1]]
    code = np.ascontiguousarray(code)
    code[lab == 0] = _NO_ZONE
    return ZoneMap(code=code, label=lab, voxel_ml=voxel_ml, how=how)


def _zone_members() -> dict[str, list[int]]:
    codes = [(si, lv, dp) for si in range(2) for lv in range(3) for dp in range(2)]
    idx = {c: c[0] * 6 + c[1] * 2 + c[2] for c in codes}
    out = {"whole lung": list(range(12))}
    out.update({_SIDES[s]: [i for c, i in idx.items() if c[0] == s] for s in range(2)})
    out.update({_LEVELS[v]: [i for c, i in idx.items() if c[1] == v] for v in range(3)})
    out.update({"peripheral": [i for c, i in idx.items() if c[2] == 1], "central": [i for c, i in idx.items() if c[2] == 0]})
    return out


def zone_extent(label: np.ndarray, affine: np.ndarray, **kwargs) -> pd.DataFrame:
    """EF, GGO and lesion extent per zone, in mL and in % of the zone's lung.

    Args:
        label: (x, y, z) label map (0 background, 1 normal, 2 EF, 3 GGO).
        affine: its voxel -> RAS affine.
        **kwargs: passed to :func:`zone_map`.

    Returns:
        DataFrame indexed by :data:`ZONES`, columns ``lung_ml``, ``normal_ml``, ``ef_ml``, ``ggo_ml``,
        ``lesion_ml``, ``ef_pct``, ``ggo_pct``, ``lesion_pct`` (NaN where a zone has no lung), and
        ``share_of_lung_pct`` (the zone's share of the whole lung).

    Example:
        >>> lab = np.zeros((20, 8, 9), np.uint8); lab[2:8, 2:6, :] = 1; lab[12:18, 2:6, :] = 1
        >>> lab[12:18, 2:6, :3] = 2                          # EF in the lower third of the right lung
        >>> t = zone_extent(lab, np.eye(4))
        >>> [round(float(t.loc[z, "ef_pct"]), 2) for z in ("right", "left", "lower", "whole lung")]
        [33.33, 0.0, 50.0, 16.67]
    """
    zm = zone_map(label, affine, **kwargs)
    counts = zm.counts()
    rows = {}
    for zone, members in _zone_members().items():
        c = counts[members].sum(axis=0).astype(float) * zm.voxel_ml
        lung = c[1:].sum()
        rows[zone] = {"lung_ml": lung, "normal_ml": c[1], "ef_ml": c[2], "ggo_ml": c[3], "lesion_ml": c[2] + c[3]}
    df = pd.DataFrame.from_dict(rows, orient="index").loc[list(ZONES)]
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ("ef", "ggo", "lesion"):
            df[f"{k}_pct"] = np.where(df["lung_ml"] > 0, 100.0 * df[f"{k}_ml"] / df["lung_ml"], np.nan)
        total = df.loc["whole lung", "lung_ml"]
        df["share_of_lung_pct"] = 100.0 * df["lung_ml"] / total if total > 0 else np.nan
    df.index.name = "zone"
    df.attrs["sides_by"] = zm.how
    return df


def zone_row(table: pd.DataFrame, *, prefix: str = "") -> dict:
    """Flatten a :func:`zone_extent` table into one row (``ef_pct_lower``, ``lesion_ml_right``, ...)."""
    out = {}
    for zone, row in table.iterrows():
        key = zone.replace(" ", "_")
        for col in ("lung_ml", "ef_pct", "ggo_pct", "lesion_pct", "ef_ml", "ggo_ml"):
            out[f"{prefix}{col}_{key}"] = float(row[col])
    return out


def cohort_zone_extent(run, cohort, *, progress: bool = False) -> pd.DataFrame:
    """Zone extents of every case with an out-of-fold prediction, predicted and reference.

    Args:
        run: :class:`sscild.paths.RunPaths` (``run.predictions/<case>.nii.gz`` are read).
        cohort: :class:`sscild.cohort.Cohort` (its reference label files are read).
        progress: tqdm bar.

    Returns:
        Long DataFrame: ``case_id``, ``source`` (``"predicted"`` / ``"reference"``), ``zone`` and the
        columns of :func:`zone_extent`.
    """
    from .io import load_volume

    frames = []
    cases = [c for c in cohort.cases if (run.predictions / f"{c.case_id}.nii.gz").exists()]
    it = cases
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(cases, desc="zones", unit="case", disable=None)
    for case in it:
        for source, path in (("predicted", run.predictions / f"{case.case_id}.nii.gz"), ("reference", case.label)):
            vol = load_volume(path)
            t = zone_extent(np.asarray(vol.array), vol.affine).reset_index()
            t.insert(0, "source", source)
            t.insert(0, "case_id", case.case_id)
            frames.append(t)
    if not frames:
        return pd.DataFrame(columns=["case_id", "source", "zone", *zone_extent(np.zeros((2, 2, 2), np.uint8),
                                                                               np.eye(4)).columns])
    return pd.concat(frames, ignore_index=True)


def zone_correlations(zones: pd.DataFrame, clinical: pd.DataFrame, *, source: str = "predicted",
                      measures=(("lower", "lesion_pct"), ("lower", "ef_pct"), ("peripheral", "lesion_pct"),
                                ("peripheral", "ef_pct"), ("whole lung", "lesion_pct")),
                      outcomes=("fvc_pct", "dlco_pct"), n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation of zonal extent with lung function (bootstrap CI, as :func:`sscild.stats.spearman`).

    Args:
        zones: :func:`cohort_zone_extent` output.
        clinical: table with ``case_id`` and the ``outcomes`` columns.
        source: ``"predicted"`` or ``"reference"``.
        measures: (zone, column) pairs.
        outcomes: clinical columns.

    Returns:
        One row per (measure, outcome): ``zone``, ``extent``, ``outcome``, ``n``, ``rho``, ``ci_low``,
        ``ci_high``, ``p``.
    """
    from .stats import spearman

    if source not in ("predicted", "reference"):
        raise ValueError(f"source must be 'predicted' or 'reference', got {source!r}")
    sub = zones[zones["source"] == source]
    clin = clinical.set_index("case_id") if "case_id" in clinical.columns else clinical
    rows = []
    for zone, col in measures:
        x = sub[sub["zone"] == zone].set_index("case_id")[col]
        for outcome in outcomes:
            if outcome not in clin.columns:
                continue
            pair = pd.concat([x.rename("x"), pd.to_numeric(clin[outcome], errors="coerce").rename("y")],
                             axis=1, join="inner").dropna()
            r = spearman(pair["x"].to_numpy(), pair["y"].to_numpy(), n_resamples=n_resamples, seed=seed)
            rows.append({"zone": zone, "extent": col, "outcome": outcome, "n": len(pair),
                         "rho": r.get("rho"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
                         "p": r.get("p")})
    return pd.DataFrame(rows)
