"""What each lesion the models call on a lung without ILD is: a named list instead of "look for ...".

On a real scan of a patient without interstitial lung disease every voxel called EF or GGO is
suspect. :func:`name_false_lesions` splits the called lesion into connected pieces and names each
by where it lies and what it looks like, with the rule that named it, so a reader can check it on the
overlay:

=============================  ======================================================================
name                           rule (first that applies)
=============================  ======================================================================
focal solid opacity            compact (at least 1 mL, filling a third of its bounding box or more),
                               median above -300 HU and away from the hilum: a nodule or mass, on
                               these public lung-cancer test scans possibly the tumour itself
diaphragm partial volume       most voxels within one slice of the lung's lower surface, where the
                               slice cuts through the dome of the diaphragm
hilum and mediastinal border   in the inner third of the chest, beside the mediastinum: hilar vessels,
                               bronchial walls, partial volume with the heart and great vessels
vessels or airway walls        thin (at most 2 voxels across in the median) and dense (median above
                               -500 HU): a vessel or airway wall taken for reticulation
dependent density              in the posterior fifth of the lung and within 15 mm of the pleura:
                               gravity-dependent density of a supine scan (atelectasis)
apical cap                     in the top sixth of the lung, within 15 mm of the pleura
other                          none of the above
=============================  ======================================================================

Pieces under :data:`MIN_PIECE_ML` are counted together as "specks".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from sscild.data.orientation import to_canonical

__all__ = ["MIN_PIECE_ML", "NAMES", "name_false_lesions", "false_lesion_summary"]

MIN_PIECE_ML = 0.1
"""Pieces of called lesion smaller than this (mL) are not named one by one."""

NAMES = ("focal solid opacity", "diaphragm partial volume", "hilum and mediastinal border", "vessels or airway walls",
         "dependent density", "apical cap", "other", "specks")


def _lung_frame(lung: np.ndarray, sp) -> dict:
    """Per lung voxel: distance to the pleura (mm), and the lung's extents, on a canonical RAS grid."""
    dist = ndi.distance_transform_edt(lung, sampling=(sp[0], sp[1], 1e6)).astype(np.float32)  # in-plane only
    xs, ys, zs = (np.nonzero(lung.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3))
    # the lowest lung voxel of each (x, y) column: the lower surface the diaphragm's dome makes
    has = lung.any(axis=2)
    bottom = np.where(has, np.argmax(lung, axis=2), -1)
    return {"dist": dist, "x": (xs[0], xs[-1]), "y": (ys[0], ys[-1]), "z": (zs[0], zs[-1]), "bottom": bottom}


def _thickness(piece: np.ndarray) -> float:
    """Median width of a piece in voxels, in-plane (twice the median distance to its edge)."""
    d = ndi.distance_transform_edt(np.pad(piece, 1), sampling=(1.0, 1.0, 1e6))[1:-1, 1:-1, 1:-1]
    return 2.0 * float(np.median(d[piece]))


def _name(idx: np.ndarray, thick: float, hu: np.ndarray, frame: dict, ml: float) -> tuple[str, str]:
    """The name of one piece and the measured values that decided it."""
    x, y, z = idx[:, 0], idx[:, 1], idx[:, 2]
    med_hu = float(np.median(hu[x, y, z]))
    (x0, x1), (y0, y1), (z0, z1) = frame["x"], frame["y"], frame["z"]
    xm = 0.5 * (x0 + x1)
    # inner third: between the midline and a third of the way to the lateral edge of its own side
    inner = float(np.mean(np.abs(x - xm) < (x1 - x0) / 6.0))
    height = (np.mean(z) - z0) / max(z1 - z0, 1)
    post = float(np.mean((y - y0) < 0.2 * (y1 - y0)))                      # RAS: low y is posterior
    pleura = float(np.median(frame["dist"][x, y, z]))
    near_dome = float(np.mean(z - frame["bottom"][x, y] <= 1))
    box = np.prod(idx.max(axis=0) - idx.min(axis=0) + 1)
    fill = len(idx) / float(box)
    vals = (f"{len(idx) * ml:.2f} mL, median {med_hu:.0f} HU, {100 * inner:.0f} % inner third, height "
            f"{height:.2f}, {100 * post:.0f} % posterior fifth, {pleura:.0f} mm from the pleura, {100 * near_dome:.0f} % "
            "on the lower surface")
    if len(idx) * ml >= 1.0 and fill >= 1 / 3 and med_hu > -300 and inner < 0.5:
        return "focal solid opacity", vals
    if near_dome >= 0.5:
        return "diaphragm partial volume", vals
    if inner >= 0.5:
        return "hilum and mediastinal border", vals
    if thick <= 2 and med_hu > -500:
        return "vessels or airway walls", vals
    if post >= 0.5 and pleura <= 15:
        return "dependent density", vals
    if height >= 5 / 6 and pleura <= 15:
        return "apical cap", vals
    return "other", vals


def name_false_lesions(hu: np.ndarray, label: np.ndarray, affine) -> pd.DataFrame:
    """Every piece (26-connected) of called lesion on a scan without ILD, named (module docstring).

    Args:
        hu: the CT in HU; ``label``: the labels on its grid (0 background, 1 normal, 2 EF, 3 GGO);
        affine: voxel -> RAS (the pieces are placed on the canonical RAS grid).

    Returns:
        One row per piece of at least :data:`MIN_PIECE_ML` (largest first) plus one ``specks`` row:
        ``name``, ``ml``, ``ef_ml``, ``ggo_ml``, ``share_of_lesion_pct``, ``slice`` (the axial slice of
        its centre on the canonical grid, counted from the feet), ``measured`` (the values the rule used).
    """
    hu_c, sp = to_canonical(np.asarray(hu), affine)
    lab_c, _ = to_canonical(np.asarray(label), affine)
    lung = lab_c > 0
    les = lab_c >= 2
    ml = float(np.prod(sp)) / 1000.0
    cols = ["name", "ml", "ef_ml", "ggo_ml", "share_of_lesion_pct", "slice", "measured"]
    if not les.any():
        return pd.DataFrame(columns=cols)
    frame = _lung_frame(lung, sp)
    comp, n = ndi.label(les, structure=np.ones((3, 3, 3), bool))
    objs = ndi.find_objects(comp)
    total = int(les.sum())
    rows, specks = [], {"ml": 0.0, "ef_ml": 0.0, "ggo_ml": 0.0, "n": 0}
    for i, sl in enumerate(objs, 1):
        piece = comp[sl] == i
        n_vox = int(piece.sum())
        ef = int((lab_c[sl][piece] == 2).sum())
        if n_vox * ml < MIN_PIECE_ML:
            specks["ml"] += n_vox * ml
            specks["ef_ml"] += ef * ml
            specks["ggo_ml"] += (n_vox - ef) * ml
            specks["n"] += 1
            continue
        idx = np.argwhere(piece) + np.array([s.start for s in sl])
        name, vals = _name(idx, _thickness(piece), hu_c, frame, ml)
        rows.append({"name": name, "ml": round(n_vox * ml, 2), "ef_ml": round(ef * ml, 2),
                     "ggo_ml": round((n_vox - ef) * ml, 2), "share_of_lesion_pct": round(100.0 * n_vox / total, 1),
                     "slice": int(round(float(idx[:, 2].mean()))), "measured": vals})
    rows.sort(key=lambda r: -r["ml"])
    if specks["n"]:
        rows.append({"name": "specks", "ml": round(specks["ml"], 2), "ef_ml": round(specks["ef_ml"], 2),
                     "ggo_ml": round(specks["ggo_ml"], 2),
                     "share_of_lesion_pct": round(100.0 * specks["ml"] / (total * ml), 1), "slice": None,
                     "measured": f"{specks['n']} pieces under {MIN_PIECE_ML:g} mL each"})
    return pd.DataFrame(rows, columns=cols)


def false_lesion_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The named pieces added up by name: pieces, mL and share of the called lesion."""
    if table.empty:
        return pd.DataFrame(columns=["pieces", "ml", "share_of_lesion_pct"])
    g = table.groupby("name", sort=False)
    out = pd.DataFrame({"pieces": g.size(), "ml": g["ml"].sum().round(2),
                        "share_of_lesion_pct": g["share_of_lesion_pct"].sum().round(1)})
    return out.sort_values("ml", ascending=False)
