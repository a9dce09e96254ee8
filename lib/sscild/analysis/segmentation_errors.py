"""Where and how the network errs: which label the voxels received, the worst patients, error zones.

Numbers behind the Segmentation chapter's error analysis, from the per-case table of
:func:`sscild.analysis.segmentation.evaluate_oof` (its voxel counts ``vox_ref<i>_pred<j>``) and
the label maps:

* :func:`confusion_table`, :func:`label_swaps`: where each reference label's voxels went, pooled
  and per patient.
* :func:`worst_cases`, :func:`error_location`: the patients with the lowest Dice, what went wrong
  and where (craniocaudal zone, medial or lateral).
* :func:`label_attenuation`, :func:`overlap_coefficient`: how far EF and GGO overlap in Hounsfield
  units, so how much any density rule can tell them apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sscild.data.cohort import Cohort, read_case
from sscild.data.orientation import to_canonical

__all__ = [
    "LABEL_NAMES",
    "confusion_matrices",
    "confusion_table",
    "label_swaps",
    "worst_cases",
    "error_location",
    "label_attenuation",
    "overlap_coefficient",
]

LABEL_NAMES = ("background", "normal lung", "EF", "GGO")
"""Label 0..3 as the confusion tables name them."""


def confusion_matrices(df: pd.DataFrame) -> np.ndarray | None:
    """The per-case voxel counts as (cases, 4, 4) matrices, reference label by predicted label; None
    when the table has no voxel counts."""
    cols = [f"vox_ref{i}_pred{j}" for i in range(4) for j in range(4)]
    if not all(c in df.columns for c in cols):
        return None
    return df[cols].to_numpy(dtype=float).reshape(len(df), 4, 4)


def confusion_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where each reference label's voxels went: rows reference normal lung, EF, GGO; columns the
    predicted label; entries percent of that reference label's voxels, pooled over patients.

    The EF row's GGO column is the share of reference fibrosis called ground glass, and the GGO row's
    EF column the reverse. Empty table when the per-case table has no voxel counts.
    """
    conf = confusion_matrices(df)
    if conf is None:
        return pd.DataFrame()
    pooled = conf.sum(axis=0)[1:, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = 100.0 * pooled / pooled.sum(axis=1, keepdims=True)
    t = pd.DataFrame(share, index=[f"reference {n}" for n in LABEL_NAMES[1:]],
                     columns=[f"predicted {n}" for n in LABEL_NAMES])
    t["reference voxels"] = pooled.sum(axis=1).astype(np.int64)
    return t


def label_swaps(df: pd.DataFrame) -> dict[str, dict] | None:
    """Per patient: the share (%) of reference EF predicted GGO, of reference GGO predicted EF, and of
    each predicted normal.

    Returns:
        ``{swap: {"shares": array (%, one per patient with that reference label), "without": number of
        patients without it}}`` for ``reference EF predicted GGO``, ``reference GGO predicted EF``,
        ``reference EF predicted normal`` and ``reference GGO predicted normal``; None when the
        per-case table has no voxel counts.
    """
    conf = confusion_matrices(df)
    if conf is None:
        return None
    out = {}
    for (src, dst), name in (((2, 3), "reference EF predicted GGO"), ((3, 2), "reference GGO predicted EF"),
                             ((2, 1), "reference EF predicted normal"), ((3, 1), "reference GGO predicted normal")):
        tot = conf[:, src, :].sum(axis=1)
        keep = tot > 0
        out[name] = {"shares": 100.0 * conf[keep, src, dst] / tot[keep], "without": int((~keep).sum())}
    return out


def worst_cases(df: pd.DataFrame, n: int = 3, metric: str = "dice_lesion") -> pd.DataFrame:
    """The ``n`` patients with the lowest ``metric``, with what went wrong: reference and predicted
    extent, false-positive and missed lesion volume, and EF/GGO swaps (share of reference EF called
    GGO and of reference GGO called EF)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of patients, got {n!r}")
    d = df.dropna(subset=[metric]).sort_values([metric, "case_id"]).head(n)
    conf = confusion_matrices(d)
    rows = []
    for k, (_, r) in enumerate(d.iterrows()):
        row = {"patient": r["case_id"], "fold": int(r["fold"]), "lesion Dice": r[metric],
               "reference lesion, % of lung": r.get("pct_ref_lesion", np.nan),
               "predicted lesion, % of lung": r.get("pct_pred_lesion", np.nan)}
        if conf is not None:
            c = conf[k]
            vox_ml = (r["vol_ref_lung_ml"] / c[1:, :].sum()) if c[1:, :].sum() else np.nan
            les_ref = c[2:, :].sum()
            row["lesion called elsewhere (missed), mL"] = (c[2:, :2].sum()) * vox_ml
            row["lesion where reference has none (false positive), mL"] = c[:2, 2:].sum() * vox_ml
            row["EF called GGO, % of reference EF"] = 100.0 * c[2, 3] / c[2].sum() if c[2].sum() else np.nan
            row["GGO called EF, % of reference GGO"] = 100.0 * c[3, 2] / c[3].sum() if c[3].sum() else np.nan
            row["_les_ref"] = les_ref
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.drop(columns=[c for c in out.columns if c.startswith("_")]).set_index("patient")


def error_location(ref: np.ndarray, pred: np.ndarray, affine: np.ndarray) -> dict:
    """Where a patient's lesion errors lie: craniocaudal zone and medial or lateral.

    The maps are reoriented to RAS (:func:`sscild.data.orientation.to_canonical`). The reference
    lung's extent along z is cut into upper, middle and lower thirds; across, a voxel is *medial*
    when it lies in the inner third between the lungs' midline and their lateral edge (where the
    heart, the mediastinum and the hila are), else *lateral*.

    Returns:
        ``{"false_positive": {...}, "missed": {...}}``, each with ``voxels`` and the percent of them
        in ``upper``, ``middle``, ``lower`` and ``medial`` (NaN when there are none).

    Example:
        >>> ref = np.zeros((9, 3, 6), np.uint8); ref[1:8, :, :] = 1
        >>> pred = ref.copy(); pred[4, :, 0:2] = 2          # lesion drawn in the medial lower lung
        >>> loc = error_location(ref, pred, np.eye(4))
        >>> loc["false_positive"]["lower"], loc["false_positive"]["medial"]
        (100.0, 100.0)
    """
    r, _ = to_canonical(np.asarray(ref), affine)
    q, _ = to_canonical(np.asarray(pred), affine)
    lung = r > 0
    if not lung.any():
        lung = q > 0
    out = {}
    if not lung.any():
        nan = float("nan")
        return {k: {"voxels": 0, "upper": nan, "middle": nan, "lower": nan, "medial": nan}
                for k in ("false_positive", "missed")}
    xs, _, zs = np.nonzero(lung)
    z0, z1 = zs.min(), zs.max()
    x_mid = (xs.min() + xs.max()) / 2.0
    half = max((xs.max() - xs.min()) / 2.0, 1.0)
    for name, mask in (("false_positive", (q >= 2) & (r < 2)), ("missed", (r >= 2) & (q < 2))):
        x, _, z = np.nonzero(mask)
        n = int(x.size)
        if n == 0:
            out[name] = {"voxels": 0, "upper": float("nan"), "middle": float("nan"), "lower": float("nan"),
                         "medial": float("nan")}
            continue
        t = (z - z0) / max(z1 - z0, 1)                  # 0 = lung base (RAS: z grows upwards), 1 = apex
        out[name] = {"voxels": n,
                     "upper": float(100.0 * (t > 2 / 3).mean()),
                     "middle": float(100.0 * ((t >= 1 / 3) & (t <= 2 / 3)).mean()),
                     "lower": float(100.0 * (t < 1 / 3).mean()),
                     "medial": float(100.0 * (np.abs(x - x_mid) / half < 1 / 3).mean())}
    return out


def label_attenuation(cohort: Cohort, case_ids, *, lo: float = -1100.0, hi: float = 200.0, bin_hu: float = 10.0
                      ) -> pd.DataFrame:
    """Histograms of the CT attenuation of reference EF and GGO voxels, pooled over ``case_ids``.

    Shows a design decision behind the numbers: how far EF and GGO overlap in Hounsfield units, and
    so how much any density rule (the HU baseline) can tell them apart.

    Args:
        cohort: the cohort (images and reference labels are read).
        case_ids: the patients to pool.
        lo, hi, bin_hu: histogram range and bin width in HU (values outside fall in the end bins).

    Returns:
        One row per bin: ``hu`` (bin centre), ``ef`` and ``ggo`` (voxel counts).
    """
    if not (hi > lo) or bin_hu <= 0:
        raise ValueError(f"need lo < hi and bin_hu > 0, got lo={lo}, hi={hi}, bin_hu={bin_hu}")
    edges = np.arange(lo, hi + bin_hu, bin_hu)
    counts = {2: np.zeros(len(edges) - 1), 3: np.zeros(len(edges) - 1)}
    for cid in case_ids:
        image, ref = read_case(cohort, cid)
        if ref is None:
            continue
        hu = np.clip(np.asarray(image.array, dtype=np.float32), lo, hi - 1e-3)
        lab = np.asarray(ref)
        for k in (2, 3):
            counts[k] += np.histogram(hu[lab == k], bins=edges)[0]
    return pd.DataFrame({"hu": (edges[:-1] + edges[1:]) / 2, "ef": counts[2], "ggo": counts[3]})


def overlap_coefficient(a, b) -> float:
    """Overlap of two histograms on the same bins: the sum over bins of the smaller of the two
    normalised frequencies (1 = identical distributions, 0 = disjoint). NaN if either is empty.

    Example:
        >>> overlap_coefficient([1, 1, 0], [0, 1, 1])
        0.5
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in length: {a.shape} vs {b.shape}")
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())
