"""Segmentation metrics of a label map against its reference, one row per case, and their summary over cases.

Label maps hold 0 background, 1 normal lung, 2 EF, 3 GGO (:data:`sscild.LABELS`), arrays are
(x, y[, z]) with a voxel spacing in millimetres. Every overlap metric is computed per *region*, a
set of labels merged into one binary mask (:data:`REGIONS`); "lesion" is EF ∪ GGO, the study's
"total lesion". Dice and surface Dice of one region, and the policy for a region absent from the
reference, are :mod:`sscild.evaluation.overlap`'s; agreement of volumes (ICC, Bland–Altman) is
:mod:`sscild.evaluation.agreement`'s.

Reporting follows nnU-Net and *Metrics Reloaded* (Maier-Hein et al., 2024): one row per case
(:func:`case_metrics`), Dice and normalised surface Dice (NSD) per region, volumes of both maps, and
a summary over cases (:func:`summarize`) that states how many cases each number rests on and how
many were excluded.

Policies (decided here, once)
-----------------------------
**Empty reference.** Dice and NSD of a region absent from the reference are NaN (excluded,
counted), the predicted volume is reported as ``fp_ml_<region>``; see
:mod:`sscild.evaluation.overlap` for the table and the other conventions.

**NSD tolerance.** Unless a tolerance is given, it is 1.5 times the largest
*in-plane* voxel spacing (``DEFAULT_TOLERANCE_FACTOR``): a boundary off by one in-plane voxel,
straight or diagonal (1 or 1.41 voxels), is tolerated, one off by two is not. On thick-slice CT
the tolerance is smaller than the slice spacing, so a boundary off by a whole slice counts as
wrong. The value used is stored per case as ``nsd_tolerance_mm``; for a cohort whose spacing
varies between cases, pass one fixed ``tolerance_mm`` so every case is judged alike.

**Confidence intervals.** :func:`summarize` gives the 95 % bias-corrected and accelerated (BCa)
bootstrap interval of the mean over cases (``scipy.stats.bootstrap``, 2000 resamples, seeded), a
method that copes with the skewed, bounded distributions Dice values have.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 4), np.uint8); ref[1:7, 1:7] = 1; ref[2:4, 2:4, 1:3] = 3
    >>> pred = ref.copy(); pred[2:4, 2:3, 1:3] = 1
    >>> row = case_metrics(pred, ref, (1.0, 1.0, 2.0))
    >>> round(row["dice_ggo"], 3), row["dice_ef"] != row["dice_ef"]   # EF absent: NaN
    (0.667, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sscild.evaluation.overlap import case_prefix, check_pair, check_spacing, dice, surface_dice

__all__ = [
    "REGIONS",
    "PCT_REGIONS",
    "DEFAULT_TOLERANCE_FACTOR",
    "CI_METHOD",
    "REFERENCES",
    "region_mask",
    "default_tolerance_mm",
    "volumes_ml",
    "case_metrics",
    "summarize",
    "confusion_counts",
]

REGIONS: dict[str, tuple[int, ...]] = {
    "normal": (1,),
    "ef": (2,),
    "ggo": (3,),
    "lesion": (2, 3),
    "lung": (1, 2, 3),
}
"""Region name -> the label values merged into its binary mask."""

PCT_REGIONS = ("normal", "ef", "ggo", "lesion")
"""Regions also reported as a percentage of the same map's lung volume."""

DEFAULT_TOLERANCE_FACTOR = 1.5
"""Default NSD tolerance = this factor x the largest in-plane spacing (mm)."""

CI_METHOD = "95% BCa bootstrap of the mean over cases (scipy.stats.bootstrap)"
"""How :func:`summarize` computes ``ci_low``/``ci_high``."""

REFERENCES = {
    "metrics_reloaded": "Maier-Hein L, Reinke A, Godau P, et al. Metrics reloaded: recommendations for image "
    "analysis validation. Nat Methods. 2024;21:195-212.",
    "nnunet": "Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. nnU-Net: a self-configuring method for "
    "deep learning-based biomedical image segmentation. Nat Methods. 2021;18:203-211.",
    "nsd": "Nikolov S, Blackwell S, Zverovitch A, et al. Clinically applicable segmentation of head and neck "
    "anatomy for radiotherapy: deep learning algorithm development and validation study. J Med Internet Res. "
    "2021;23(7):e26151.",
    "shrout_fleiss": "Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater reliability. "
    "Psychol Bull. 1979;86(2):420-428.",
    "mcgraw_wong": "McGraw KO, Wong SP. Forming inferences about some intraclass correlation coefficients. "
    "Psychol Methods. 1996;1(1):30-46.",
    "bland_altman": "Bland JM, Altman DG. Statistical methods for assessing agreement between two methods of "
    "clinical measurement. Lancet. 1986;1(8476):307-310.",
    "bca": "Efron B. Better bootstrap confidence intervals. J Am Stat Assoc. 1987;82(397):171-185.",
}
"""Short citations for the methods here, in ``overlap`` and in ``agreement``, for the book to print."""


# --------------------------------------------------------------------------------------------
# regions and one case
# --------------------------------------------------------------------------------------------


def _as_label(label, case_id=None, name="label map") -> np.ndarray:
    lab = np.asarray(label)
    if lab.size and (lab.min() < 0 or lab.max() > 3):
        raise ValueError(
            f"{case_prefix(case_id)}{name} holds values {lab.min()}..{lab.max()}, outside 0..3 "
            "(0 background, 1 normal lung, 2 EF, 3 GGO); map its labels onto sscild.LABELS first."
        )
    if lab.dtype != np.uint8:
        lab = lab.astype(np.uint8)
    return lab


def region_mask(label: np.ndarray, region: str) -> np.ndarray:
    """Binary mask of ``region`` (a key of :data:`REGIONS`) in a label map.

    Example:
        >>> region_mask(np.array([[0, 1], [2, 3]]), "lesion").tolist()
        [[False, False], [True, True]]
    """
    try:
        values = REGIONS[region]
    except KeyError:
        raise ValueError(f"Unknown region {region!r}; choose from {', '.join(REGIONS)}.") from None
    label = np.asarray(label)
    if values == (1, 2, 3):
        return label > 0
    if values == (2, 3):
        return label >= 2
    mask = label == values[0]
    for v in values[1:]:
        mask |= label == v
    return mask


def default_tolerance_mm(spacing: Sequence[float]) -> float:
    """Default NSD tolerance: 1.5 x the largest in-plane (x, y) spacing, in mm.

    Example:
        >>> default_tolerance_mm((0.7, 0.8, 5.0))
        1.2000000000000002
    """
    sp = [float(s) for s in spacing]
    return DEFAULT_TOLERANCE_FACTOR * max(sp[:2])


def _counts(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=4)[:4]


def _volumes_from_counts(counts: np.ndarray, voxel_ml: float) -> dict[str, float]:
    return {name: float(sum(int(counts[v]) for v in values)) * voxel_ml for name, values in REGIONS.items()}


def volumes_ml(label, spacing: Sequence[float]) -> dict[str, float]:
    """Volume of every region of :data:`REGIONS` in millilitres (voxel count x voxel volume).

    Args:
        label: label map (0 background, 1 normal lung, 2 EF, 3 GGO), 2D or 3D.
        spacing: voxel size in mm per axis (2D: an area, reported per mm of depth, rarely wanted).

    Example:
        >>> lab = np.zeros((10, 10, 10), np.uint8); lab[:5] = 1; lab[:2] = 3
        >>> volumes_ml(lab, (1.0, 1.0, 2.0))["ggo"]     # 200 voxels x 2 mm^3 = 0.4 mL
        0.4
    """
    lab = _as_label(label)
    sp = check_spacing(spacing, lab.ndim)
    return _volumes_from_counts(_counts(lab), float(np.prod(sp)) / 1000.0)


def case_metrics(
    pred,
    ref,
    spacing: Sequence[float],
    *,
    tolerance_mm: float | None = None,
    regions: Iterable[str] | None = None,
    nsd_regions: Iterable[str] | None = None,
    empty: str = "nan",
    subvoxels: bool = True,
    case_id=None,
) -> dict[str, float]:
    """All per-case metrics of a predicted label map against the reference.

    Keys (for each region of ``regions``, default all of :data:`REGIONS`):
    ``dice_<r>``, ``nsd_<r>``, ``vol_ref_<r>_ml``, ``vol_pred_<r>_ml``, ``fp_ml_<r>`` (predicted
    volume where the reference region is empty, otherwise NaN), and for normal/EF/GGO/lesion
    ``pct_ref_<r>``, ``pct_pred_<r>`` (percent of the same map's own lung volume); plus
    ``nsd_tolerance_mm``.

    Args:
        pred: predicted label map (x, y[, z]).
        ref: reference label map, same shape.
        spacing: voxel size in mm per axis.
        tolerance_mm: NSD tolerance; None -> :func:`default_tolerance_mm` of ``spacing``.
        regions: regions to report (default all).
        nsd_regions: regions to compute NSD for (default ``regions``); others get NaN. NSD of
            the whole lung on a full-size HRCT costs seconds, so callers in a hurry may skip it.
        empty: empty-mask policy (module docstring).
        subvoxels: NSD boundary weighting (see :func:`sscild.evaluation.overlap.surface_dice`).
        case_id: used in error messages only.

    Cost, measured on 2 CPU cores with lesions in both lower lobes: a 256 x 256 x 48 grid (the
    ``cpu`` profile) about 5 s with ``subvoxels=True`` and 2 s without; a 512 x 512 x 300 HRCT
    about 60 s and 20 s (peak memory a few GB), most of it the NSD of the large "lung" and
    "normal" regions, which ``nsd_regions=("ef", "ggo", "lesion")`` skips.

    Example:
        >>> lab = np.zeros((6, 6), np.uint8); lab[1:5, 1:5] = 1; lab[2:4, 2:4] = 2
        >>> m = case_metrics(lab, lab, (1.0, 1.0))
        >>> m["dice_ef"], m["pct_ref_ef"], m["nsd_tolerance_mm"]
        (1.0, 25.0, 1.5)
    """
    p, r = check_pair(pred, ref, case_id, what="label map")
    p = _as_label(p, case_id, "prediction")
    r = _as_label(r, case_id, "reference")
    sp = check_spacing(spacing, p.ndim, case_id)
    regions = list(REGIONS) if regions is None else list(regions)
    nsd_regions = set(regions if nsd_regions is None else nsd_regions)
    for name in [*regions, *nsd_regions]:
        if name not in REGIONS:
            raise ValueError(f"{case_prefix(case_id)}unknown region {name!r}; choose from {', '.join(REGIONS)}.")
    tol = default_tolerance_mm(sp) if tolerance_mm is None else float(tolerance_mm)
    voxel_ml = float(np.prod(sp)) / 1000.0
    vol_p = _volumes_from_counts(_counts(p), voxel_ml)
    vol_r = _volumes_from_counts(_counts(r), voxel_ml)

    row: dict[str, float] = {}
    for name in regions:
        pm, rm = region_mask(p, name), region_mask(r, name)
        row[f"dice_{name}"] = dice(pm, rm, empty=empty)
        row[f"nsd_{name}"] = (
            surface_dice(pm, rm, sp, tol, empty=empty, subvoxels=subvoxels) if name in nsd_regions else float("nan")
        )
    for name in regions:
        row[f"vol_ref_{name}_ml"] = vol_r[name]
        row[f"vol_pred_{name}_ml"] = vol_p[name]
    for name in regions:
        if name in PCT_REGIONS:
            row[f"pct_ref_{name}"] = 100.0 * vol_r[name] / vol_r["lung"] if vol_r["lung"] > 0 else float("nan")
            row[f"pct_pred_{name}"] = 100.0 * vol_p[name] / vol_p["lung"] if vol_p["lung"] > 0 else float("nan")
    for name in regions:
        row[f"fp_ml_{name}"] = vol_p[name] if vol_r[name] == 0 else float("nan")
    row["nsd_tolerance_mm"] = tol
    return row


def confusion_counts(pred, ref, *, n_labels: int = 4) -> np.ndarray:
    """Voxel counts of reference label (rows) against predicted label (columns).

    Args:
        pred: predicted label map (integers ``0 .. n_labels - 1``).
        ref: reference label map, same shape.
        n_labels: number of labels (4: background, normal lung, EF, GGO).

    Returns:
        An ``(n_labels, n_labels)`` int64 array; entry ``[i, j]`` counts voxels labelled ``i`` in the
        reference and ``j`` in the prediction.

    Raises:
        ValueError: shapes differ, or a label lies outside ``0 .. n_labels - 1``.

    Example:
        >>> confusion_counts(np.array([[0, 2, 3, 3]]), np.array([[0, 2, 2, 3]]), n_labels=4)[2:, 2:].tolist()
        [[1, 1], [0, 1]]
    """
    if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)) or n_labels < 2:
        raise ValueError(f"n_labels must be an integer >= 2, got {n_labels!r}")
    p, r = check_pair(np.asarray(pred), np.asarray(ref), what="label map")
    p = p.astype(np.int64, copy=False).ravel()
    r = r.astype(np.int64, copy=False).ravel()
    for name, a in (("pred", p), ("ref", r)):
        if a.size and (a.min() < 0 or a.max() >= n_labels):
            raise ValueError(f"{name} holds labels outside 0..{n_labels - 1} (min {a.min()}, max {a.max()}).")
    return np.bincount(r * n_labels + p, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


# --------------------------------------------------------------------------------------------
# summary over cases
# --------------------------------------------------------------------------------------------

_NOT_METRICS = {"case_id", "fold", "nsd_tolerance_mm"}


def _describe(values: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    x = values[~np.isnan(values)]
    n = x.size
    out = {"n": n, "n_excluded": int(values.size - n)}
    if n == 0:
        return out | dict.fromkeys(["mean", "sd", "median", "q1", "q3", "ci_low", "ci_high"], float("nan"))
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    out |= {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if n > 1 else float("nan"),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
    }
    if n < 2:
        lo = hi = float("nan")
    elif np.all(x == x[0]):
        lo = hi = float(x[0])  # every resample has the same mean
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.bootstrap(
                (x,),
                np.mean,
                n_resamples=int(n_boot),
                confidence_level=0.95,
                method="BCa",
                vectorized=True,
                random_state=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out | {"ci_low": lo, "ci_high": hi}


def summarize(
    df: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    by: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Describe per-case metric columns over cases, overall and per group.

    For each column: ``n`` (cases with a value), ``n_excluded`` (NaN, e.g. empty reference),
    ``mean``, ``sd`` (ddof=1), ``median``, ``q1``, ``q3`` (numpy's linear percentiles) and the
    95 % BCa bootstrap interval of the mean (``ci_low``, ``ci_high``; see :data:`CI_METHOD`),
    seeded with ``seed`` afresh for every column and group so each row is reproducible alone.
    Fewer than two values give a NaN interval; identical values a zero-width one.

    Args:
        df: one row per case (e.g. :func:`case_metrics` rows with ``case_id`` and ``fold`` columns).
        columns: columns to describe; default every numeric column except ``case_id``,
            ``fold``, ``nsd_tolerance_mm`` and ``by``.
        by: optional grouping column (e.g. ``"fold"``); rows for each group follow the overall
            rows, whose group value is ``"all"``.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap.

    Returns:
        A DataFrame with columns ``[by,] metric, n, n_excluded, mean, sd, median, q1, q3,
        ci_low, ci_high``; ``attrs["ci_method"]`` states the interval.

    Example:
        >>> s = summarize(pd.DataFrame({"dice_ef": [0.5, 0.7, np.nan]}))
        >>> r = s.iloc[0]
        >>> r["metric"], int(r["n"]), int(r["n_excluded"]), round(float(r["mean"]), 3)
        ('dice_ef', 2, 1, 0.6)
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"summarize needs a pandas DataFrame of per-case rows, got {type(df).__name__}.")
    if int(n_boot) < 100:
        raise ValueError(f"n_boot={n_boot!r} is too few resamples for a 95% interval; use at least 100 (default 2000).")
    if by is not None and by not in df.columns:
        raise ValueError(f"by={by!r} is not a column of the table (columns: {', '.join(map(str, df.columns))}).")
    if columns is None:
        skip = _NOT_METRICS | ({by} if by else set())
        columns = [
            c
            for c in df.columns
            if c not in skip and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        ]
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the table (columns: {', '.join(map(str, df.columns))}).")
    groups: list[tuple[object, pd.DataFrame]] = [("all", df)]
    if by is not None:
        groups += [(key, part) for key, part in df.groupby(by, sort=True, dropna=False)]
    rows = []
    for key, part in groups:
        for col in columns:
            values = pd.to_numeric(part[col], errors="coerce").to_numpy(dtype=float)
            row = {by: key} if by is not None else {}
            rows.append(row | {"metric": col} | _describe(values, n_boot, seed))
    out = pd.DataFrame(rows)
    out.attrs["ci_method"] = f"{CI_METHOD}, {int(n_boot)} resamples, seed {seed}"
    return out
