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
* **Peripheral / central.** On every axial slice, the in-plane distance of each lung voxel to the
  chest wall is measured in millimetres: to the boundary of the chest cavity, taken as each row of
  the slice filled from the patient's rightmost to leftmost lung voxel, so that the mediastinum and
  the hila lie inside it and only the costal pleura is its edge. A voxel is **peripheral** when that
  distance is at most :data:`PERIPHERAL_FRACTION` (one third) of the greatest distance of that lung
  on that slice (usually reached at the hilum or the mediastinal border): the outer third of the
  lung from the chest wall inwards, the "outer third" radiologists use for subpleural disease.
  Lung beside the mediastinum and around the hila is **central** (peribronchovascular), as in the
  radiological reading, not "subpleural" because the mediastinal pleura is near. Why relative and not
  a fixed band (e.g. 10 mm): a fixed band covers a larger share of a small or expiratory lung than of
  a large inspiratory one, so a follow-up at a different inspiration would change the peripheral
  extent through geometry alone; the relative band scales with the lung. Why in-plane: HRCT is often
  reconstructed at 1-5 mm slices, and a 3D distance on 5 mm slices would make whole slices near the
  apex and the bases "peripheral". For a round lung whose deepest point is its centre, the outer third
  of the depth is about 56 % of the area.

**Cost.** Distances are computed on a grid coarsened in-plane to about :data:`ZONE_GRID_MM`
(1.4 mm, the ``cpu`` network's resolution; each coarse pixel is lung when any of its fine voxels
is), then every fine voxel takes its coarse pixel's zone; the counts are on the full label map, so
the zone volumes add up exactly to the whole lung (a test checks it).

Usage::

    table = zone_extent(label, affine)
    table.loc["lower", "ef_pct"], table.loc["peripheral", "lesion_pct"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from sscild.data.orientation import to_canonical

__all__ = ["ZONES", "PERIPHERAL_FRACTION", "SECOND_LUNG_SHARE", "ZONE_GRID_MM", "ZONE_RULES", "ZoneMap",
           "zone_map", "zone_members", "zone_extent", "zone_row", "cohort_zone_extent", "zone_agreement", "zone_correlations"]

PERIPHERAL_FRACTION = 1.0 / 3.0
"""A lung voxel is peripheral when its in-plane distance to the chest wall is at most this share of the
greatest such distance of that lung on the slice."""

SECOND_LUNG_SHARE = 0.2
"""The two largest lung components are taken as the two lungs when the second has this share of the first."""

ZONE_GRID_MM = 1.4
"""In-plane grid (mm) on which distances to the chest wall are computed."""

ZONES = ("whole lung", "right", "left", "upper", "middle", "lower", "peripheral", "central")
"""The zones of :func:`zone_extent`, in table order."""

ZONE_RULES = {
    "sides": "right / left: the two lungs as connected components, or the sagittal plane of least lung between them",
    "levels": "upper / middle / lower: thirds of each lung's own cranio-caudal extent",
    "depth": f"peripheral: in-plane distance to the chest wall at most {PERIPHERAL_FRACTION:.3g} of that lung's "
             "greatest on the slice (the outer third from the costal pleura inwards); central: the rest, including "
             "the lung beside the mediastinum and the hila",
}
"""One sentence per zone family, for reports and the book."""

_SIDES = ("right", "left")
_LEVELS = ("upper", "middle", "lower")
_DEPTHS = ("central", "peripheral")
_NO_ZONE = 255


@dataclass
class ZoneMap:
    """Zone code per lung pixel of a coarse in-plane grid, and the label map it applies to.

    Both arrays are in the canonical orientation (x to the patient's right, y anterior, z superior).
    ``code = side * 6 + level * 2 + depth`` (side 0 right, 1 left; level 0 upper, 1 middle, 2 lower;
    depth 0 central, 1 peripheral); 255 where the coarse pixel holds no lung. Fine voxel
    ``(i, j, k)`` takes the code of coarse pixel ``(i // scale, j // scale, k)``.

    Attributes:
        code: uint8 ``(ceil(x / scale), ceil(y / scale), z)``.
        scale: in-plane coarsening factor (1: the label's own grid).
        label: uint8 ``(x, y, z)``, the label map (C order).
        voxel_ml: volume of one fine voxel.
        how: how the sides were separated (``"components"`` or ``"midline"``).
    """

    code: np.ndarray
    scale: int
    label: np.ndarray
    voxel_ml: float
    how: str
    rules: dict = field(default_factory=lambda: dict(ZONE_RULES))

    def fine_code(self, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """The zone code of the label's voxels ``[x0:x1]`` (255 outside the lung); ``x0`` a multiple of ``scale``."""
        s = self.scale
        x1 = self.label.shape[0] if x1 is None else min(int(x1), self.label.shape[0])
        if x0 % s:
            raise ValueError(f"x0 must be a multiple of scale={s}, got {x0}")
        c = self.code[x0 // s: -(-x1 // s)]
        if s > 1:
            c = np.repeat(np.repeat(c, s, axis=0), s, axis=1)
        c = c[: x1 - x0, : self.label.shape[1]].copy()
        c[self.label[x0:x1] == 0] = _NO_ZONE
        return c

    def counts(self) -> np.ndarray:
        """(12, 4) voxel counts: zone code x label value (0..3), in slabs along x (no full-size temporaries)."""
        total = np.zeros(256, np.int64)
        step = self.scale * max(1, 4_000_000 // max(1, self.scale * self.label.shape[1] * self.label.shape[2]))
        for x0 in range(0, self.label.shape[0], step):
            c = self.fine_code(x0, x0 + step)
            # code <= 11 and label <= 3 fit in one byte as code * 4 + label; 255 (no lung) lands at >= 252
            total += np.bincount((c << 2 | self.label[x0:x0 + step]).ravel(), minlength=256)
        return total[:48].reshape(12, 4)


def _block_any(mask: np.ndarray, s: int) -> np.ndarray:
    """(x, y, z) mask -> (ceil(x / s), ceil(y / s), z): a coarse pixel is set when any of its fine pixels is."""
    if s == 1:
        return mask.copy()
    nx, ny, nz = mask.shape
    out = np.zeros((-(-nx // s), -(-ny // s), nz), bool)
    for a in range(s):
        for b in range(s):
            part = mask[a::s, b::s]
            out[: part.shape[0], : part.shape[1]] |= part
    return out


def _sides(lung: np.ndarray) -> tuple[np.ndarray, str]:
    """Side per voxel of a (z, x, y) lung mask: 0 right, 1 left, 255 no lung (x grows to the patient's right)."""
    comp, n = ndi.label(lung, structure=np.ones((3, 3, 3), bool))
    if n >= 2:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        a, b = np.argsort(sizes)[::-1][:2]
        if sizes[b] >= SECOND_LUNG_SHARE * sizes[a]:
            xsum = np.bincount(comp.ravel(), weights=np.broadcast_to(
                np.arange(lung.shape[1], dtype=float)[None, :, None], lung.shape).ravel())
            cx = xsum / np.maximum(sizes, 1)
            mid = 0.5 * (cx[a] + cx[b])
            lut = np.where(cx > mid, 0, 1).astype(np.uint8)   # stray components go by their centre
            lut[a], lut[b] = (0, 1) if cx[a] > cx[b] else (1, 0)
            lut[0] = _NO_ZONE
            return lut[comp], "components"
    profile = lung.sum(axis=(0, 2)).astype(float)
    xi = np.flatnonzero(profile)
    if xi.size == 0:
        return np.full(lung.shape, _NO_ZONE, np.uint8), "none"
    lo, hi = xi[0], xi[-1]
    a, b = int(lo + 0.3 * (hi - lo)), int(np.ceil(lo + 0.7 * (hi - lo)))
    smooth = ndi.uniform_filter1d(profile, 3)
    mid = a + int(np.argmin(smooth[a:b + 1])) if b > a else (lo + hi) // 2
    side_x = np.where(np.arange(lung.shape[1]) > mid, 0, 1).astype(np.uint8)
    return np.where(lung, side_x[None, :, None], np.uint8(_NO_ZONE)).astype(np.uint8), "midline"


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
    can, spacing = to_canonical(label, affine)
    lab = np.ascontiguousarray(can, dtype=np.uint8)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    s = max(1, int(float(grid_mm) // max(min(spacing[:2]), 1e-6)))
    # the coarse work is slice-first, (z, x, y), so that one axial slice is one contiguous block
    lung_c = np.ascontiguousarray(_block_any(lab > 0, s).transpose(2, 0, 1))
    sp_c = (spacing[0] * s, spacing[1] * s)
    side, how = _sides(lung_c)
    code_c = np.full(lung_c.shape, _NO_ZONE, np.uint8)
    extent = {}
    for si in (0, 1):
        zs = np.flatnonzero((side == si).reshape(side.shape[0], -1).any(axis=1))
        if zs.size:
            extent[si] = (int(zs[0]), int(zs[-1]))
    # the chest cavity of each slice: every row from the patient's rightmost to leftmost lung pixel, so the
    # mediastinum between the lungs is inside and only the costal surface (chest wall) is its boundary
    cavity = np.maximum.accumulate(lung_c, axis=1) & np.maximum.accumulate(lung_c[:, ::-1], axis=1)[:, ::-1]
    for z in np.flatnonzero(lung_c.reshape(lung_c.shape[0], -1).any(axis=1)):
        m = cavity[z]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        # distance to the chest wall (centre to centre, less half a pixel: to the costal pleura itself)
        d = ndi.distance_transform_edt(np.pad(m[box], 1), sampling=sp_c)[1:-1, 1:-1] - 0.5 * min(sp_c)
        side2 = side[z][box]
        block = code_c[z][box]
        for si, (z0, z1) in extent.items():
            inside = side2 == si
            if not z0 <= z <= z1 or not inside.any():
                continue
            t = (z - z0 + 0.5) / (z1 - z0 + 1)          # 0 at the base .. 1 at the apex (canonical z is superior)
            level = 0 if t > 2 / 3 else 1 if t > 1 / 3 else 2
            di = d[inside]
            block[inside] = si * 6 + level * 2 + (di <= float(peripheral_fraction) * di.max()).astype(np.uint8)
    code_c = np.ascontiguousarray(code_c.transpose(1, 2, 0))
    return ZoneMap(code=code_c, scale=s, label=lab, voxel_ml=voxel_ml, how=how)


def zone_members() -> dict[str, list[int]]:
    """The zone codes (0..11 of :class:`ZoneMap`) that make up each zone of :data:`ZONES`."""
    codes = [(si, lv, dp) for si in range(2) for lv in range(3) for dp in range(2)]
    idx = {c: c[0] * 6 + c[1] * 2 + c[2] for c in codes}
    out = {"whole lung": list(range(12))}
    out.update({_SIDES[s]: [i for c, i in idx.items() if c[0] == s] for s in range(2)})
    out.update({_LEVELS[v]: [i for c, i in idx.items() if c[1] == v] for v in range(3)})
    out.update({"peripheral": [i for c, i in idx.items() if c[2] == 1], "central": [i for c, i in idx.items() if c[2] == 0]})
    return out


def zone_extent(label: np.ndarray, affine: np.ndarray, *, zmap: ZoneMap | None = None, **kwargs) -> pd.DataFrame:
    """EF, GGO and lesion extent per zone, in mL and in % of the zone's lung.

    Args:
        label: (x, y, z) label map (0 background, 1 normal, 2 EF, 3 GGO).
        affine: its voxel -> RAS affine.
        zmap: the label map's :func:`zone_map`, when already computed (``kwargs`` are then not used).
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
    zm = zmap if zmap is not None else zone_map(label, affine, **kwargs)
    counts = zm.counts()
    rows = {}
    for zone, members in zone_members().items():
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
        cohort: :class:`sscild.data.cohort.Cohort` (its reference label files are read).
        progress: tqdm bar.

    Returns:
        Long DataFrame: ``case_id``, ``source`` (``"predicted"`` / ``"reference"``), ``zone`` and the
        columns of :func:`zone_extent`.
    """
    from sscild.data.image import load_volume

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


def zone_agreement(zones: pd.DataFrame, *, zones_shown=("upper", "middle", "lower", "peripheral", "central"),
                   classes=("ef", "ggo")) -> pd.DataFrame:
    """Predicted against reference extent per zone over the cohort (out of fold).

    Args:
        zones: :func:`cohort_zone_extent` output.
        zones_shown: zones to tabulate.
        classes: ``"ef"``, ``"ggo"``, ``"lesion"``.

    Returns:
        One row per (zone, class): ``n``, ``reference_mean_pct``, ``predicted_mean_pct``, ``bias_pp``
        (mean of predicted - reference) and ``icc`` (ICC(2,1), :func:`sscild.evaluation.agreement.icc`), extent in % of
        the zone's lung.
    """
    from sscild.evaluation.agreement import icc

    rows = []
    for zone in zones_shown:
        sub = zones[zones["zone"] == zone]
        for cls in classes:
            wide = sub.pivot(index="case_id", columns="source", values=f"{cls}_pct").dropna()
            if not {"predicted", "reference"} <= set(wide.columns):
                continue
            p, r = wide["predicted"].to_numpy(float), wide["reference"].to_numpy(float)
            agree = icc(p, r)["icc"] if len(wide) >= 3 else float("nan")
            rows.append({"zone": zone, "class": cls.upper(), "n": len(wide), "reference_mean_pct": r.mean(),
                         "predicted_mean_pct": p.mean(), "bias_pp": (p - r).mean(), "icc": agree})
    return pd.DataFrame(rows)


def zone_correlations(zones: pd.DataFrame, clinical: pd.DataFrame, *, source: str = "predicted",
                      measures=(("lower", "lesion_pct"), ("lower", "ef_pct"), ("peripheral", "lesion_pct"),
                                ("peripheral", "ef_pct"), ("whole lung", "lesion_pct")),
                      outcomes=("fvc_pct", "dlco_pct"), n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation of zonal extent with lung function (bootstrap CI, as :func:`sscild.evaluation.stats.spearman`).

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
    from sscild.evaluation.stats import spearman

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
