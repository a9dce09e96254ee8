"""Segmentation metrics: Dice, surface Dice, volumes, and agreement (ICC, Bland–Altman).

Label maps hold 0 background, 1 normal lung, 2 EF, 3 GGO (:data:`sscild.LABELS`), arrays are
(x, y[, z]) with a voxel spacing in millimetres. Every overlap metric is computed per *region*, a
set of labels merged into one binary mask (:data:`REGIONS`); "lesion" is EF ∪ GGO, the study's
"total lesion".

Reporting follows nnU-Net and *Metrics Reloaded* (Maier-Hein et al., 2024): one row per case,
Dice and normalised surface Dice (NSD) per region, volumes of both maps, and a summary over cases
that states how many cases each number rests on and how many were excluded.

Policies (decided here, once)
-----------------------------
**Empty reference.** A region absent from the reference has no Dice that means anything: both
empty would score 1 and any false positive 0, and either would pull the cohort mean about
according to how many such cases happen to exist. With the default policy ``empty="nan"``:

===========================  ======================  ==========================================
reference                    prediction              Dice / NSD
===========================  ======================  ==========================================
empty                        empty                   NaN (excluded, counted)
empty                        not empty               NaN (excluded, counted); the predicted
                                                     volume is reported as ``fp_ml_<region>``
not empty                    empty                   0.0
not empty                    not empty               the metric
===========================  ======================  ==========================================

This is MONAI's ``ignore_empty=True``. Two other conventions can be asked for by name:
``"nnunet"`` (both empty -> NaN, reference empty and prediction not -> 0.0) and ``"one"`` (both
empty -> 1.0, reference empty and prediction not -> 0.0; MONAI ``ignore_empty=False``). The table
is implemented in one function, :func:`empty_score`, used by Dice and NSD alike.

**NSD tolerance.** Surface Dice counts the share of both boundaries lying within ``tolerance_mm``
of the other (Nikolov et al., 2021). Unless a tolerance is given, it is 1.5 times the largest
*in-plane* voxel spacing (``DEFAULT_TOLERANCE_FACTOR``): a boundary off by one in-plane voxel,
straight or diagonal (1 or 1.41 voxels), is tolerated, one off by two is not. On thick-slice CT
the tolerance is smaller than the slice spacing, so a boundary off by a whole slice counts as
wrong. The value used is stored per case as ``nsd_tolerance_mm``; for a cohort whose spacing
varies between cases, pass one fixed ``tolerance_mm`` so every case is judged alike. Boundaries
are surface elements weighted by their area (the DeepMind ``surface-distance`` definition, MONAI
``use_subvoxels=True``), so anisotropic voxels do not over-weight the faces across thick slices;
``subvoxels=False`` counts boundary voxels instead (MONAI's default).

**Confidence intervals.** :func:`summarize` gives the 95 % bias-corrected and accelerated (BCa)
bootstrap interval of the mean over cases (``scipy.stats.bootstrap``, 2000 resamples, seeded), a
method that copes with the skewed, bounded distributions Dice values have.

**ICC.** :func:`icc` is ICC(2,1) of Shrout & Fleiss (1979), which McGraw & Wong (1996) call
ICC(A,1): two-way random effects, absolute agreement, single measures, with the F-based 95 %
interval of McGraw & Wong.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 4), np.uint8); ref[1:7, 1:7] = 1; ref[2:4, 2:4, 1:3] = 3
    >>> pred = ref.copy(); pred[2:4, 2:3, 1:3] = 1
    >>> row = case_metrics(pred, ref, (1.0, 1.0, 2.0))
    >>> round(row["dice_ggo"], 3), row["dice_ef"] != row["dice_ef"]   # EF absent: NaN
    (0.667, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_surface_dice
from scipy import stats

__all__ = [
    "REGIONS",
    "PCT_REGIONS",
    "EMPTY_POLICIES",
    "DEFAULT_TOLERANCE_FACTOR",
    "CI_METHOD",
    "ICC_FORM",
    "REFERENCES",
    "region_mask",
    "empty_score",
    "default_tolerance_mm",
    "dice",
    "surface_dice",
    "volumes_ml",
    "case_metrics",
    "SegmentationMetrics",
    "summarize",
    "icc",
    "bland_altman",
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

EMPTY_POLICIES = ("nan", "nnunet", "one")
"""Names accepted by the ``empty`` argument; see the module docstring."""

DEFAULT_TOLERANCE_FACTOR = 1.5
"""Default NSD tolerance = this factor x the largest in-plane spacing (mm)."""

CI_METHOD = "95% BCa bootstrap of the mean over cases (scipy.stats.bootstrap)"
"""How :func:`summarize` computes ``ci_low``/``ci_high``."""

ICC_FORM = "ICC(2,1) Shrout & Fleiss = ICC(A,1) McGraw & Wong: two-way random, absolute agreement, single measures"
"""The ICC form :func:`icc` returns (also stored under its ``"form"`` key)."""

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
"""Short citations for the methods above, for the book to print."""


# --------------------------------------------------------------------------------------------
# input checks and helpers
# --------------------------------------------------------------------------------------------


def _where(case_id) -> str:
    return f"case {case_id!r}: " if case_id is not None else ""


def _check_spacing(spacing, ndim: int, case_id=None) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(
            f"{_where(case_id)}spacing must be a sequence of {ndim} positive numbers in mm, got {spacing!r}; "
            "pass the voxel size, e.g. from nibabel's header.get_zooms()."
        ) from None
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"{_where(case_id)}spacing {spacing!r} does not fit an array with {ndim} dimensions: give {ndim} "
            "positive voxel sizes in mm, in the array's axis order (x, y[, z])."
        )
    return sp


def _check_pair(pred, ref, case_id=None, what="mask") -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
    ref = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref)
    if pred.shape != ref.shape:
        raise ValueError(
            f"{_where(case_id)}prediction {what} has shape {pred.shape} but the reference has {ref.shape}; "
            "resample the prediction onto the reference grid first (same shape and geometry)."
        )
    if pred.ndim not in (2, 3):
        raise ValueError(
            f"{_where(case_id)}{what}s must be 2D (x, y) or 3D (x, y, z) arrays, got {pred.ndim} dimensions "
            f"(shape {pred.shape}); drop channel/batch axes first."
        )
    return pred, ref


def _as_label(label, case_id=None, name="label map") -> np.ndarray:
    lab = np.asarray(label)
    if lab.size and (lab.min() < 0 or lab.max() > 3):
        raise ValueError(
            f"{_where(case_id)}{name} holds values {lab.min()}..{lab.max()}, outside 0..3 "
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


def _crop_pair(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop two boolean arrays to the bounding box of ``a | b``, ``margin`` voxels wider.

    Where the widened box passes the array's edge the arrays are padded with False, so a
    structure touching the edge still has a closed boundary (as MONAI's own cropping does).
    """
    union = a | b
    slices, pads = [], []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo, hi = int(idx[0]) - margin, int(idx[-1]) + 1 + margin
        slices.append(slice(max(lo, 0), min(hi, union.shape[axis])))
        pads.append((max(-lo, 0), max(hi - union.shape[axis], 0)))
    a, b = a[tuple(slices)], b[tuple(slices)]
    if any(p != (0, 0) for p in pads):
        a, b = np.pad(a, pads), np.pad(b, pads)
    return a, b


def empty_score(pred_any: bool, ref_any: bool, empty: str = "nan") -> float | None:
    """The score an overlap metric takes when a mask is empty, or None when both are not.

    This is the single place the empty-mask policy lives (table in the module docstring).

    Example:
        >>> empty_score(True, False), empty_score(False, True), empty_score(True, True)
        (nan, 0.0, None)
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty={empty!r} is not a known policy; choose one of {', '.join(EMPTY_POLICIES)}.")
    if ref_any:
        return None if pred_any else 0.0
    if empty == "nan":
        return float("nan")
    if not pred_any:
        return 1.0 if empty == "one" else float("nan")
    return 0.0


def default_tolerance_mm(spacing: Sequence[float]) -> float:
    """Default NSD tolerance: 1.5 x the largest in-plane (x, y) spacing, in mm.

    Example:
        >>> default_tolerance_mm((0.7, 0.8, 5.0))
        1.2000000000000002
    """
    sp = [float(s) for s in spacing]
    return DEFAULT_TOLERANCE_FACTOR * max(sp[:2])


# --------------------------------------------------------------------------------------------
# overlap metrics
# --------------------------------------------------------------------------------------------


def dice(pred_mask, ref_mask, *, empty: str = "nan") -> float:
    """Dice similarity coefficient 2|P ∩ R| / (|P| + |R|) of two binary masks (MONAI ``compute_dice``).

    Args:
        pred_mask: predicted mask, 2D or 3D; non-zero is foreground.
        ref_mask: reference mask, same shape.
        empty: empty-mask policy (``"nan"``, ``"nnunet"`` or ``"one"``); see the module docstring.

    Returns:
        The Dice coefficient, NaN where the policy excludes the case.

    Example:
        >>> dice(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]))
        0.5
    """
    pred, ref = _check_pair(pred_mask, ref_mask)
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    special = empty_score(bool(pred.any()), bool(ref.any()), empty)
    if special is not None:
        return special
    pred, ref = _crop_pair(pred, ref, margin=0)
    t = lambda m: torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8))[None, None]  # noqa: E731
    return float(compute_dice(t(pred), t(ref), include_background=True, ignore_empty=True)[0, 0])


def surface_dice(
    pred_mask,
    ref_mask,
    spacing: Sequence[float],
    tolerance_mm: float,
    *,
    empty: str = "nan",
    subvoxels: bool = True,
) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI ``compute_surface_dice``).

    The share of the two boundaries (predicted and reference) that lies within ``tolerance_mm``
    of the other one, distances measured in mm with the voxel ``spacing``. Both masks are first
    cropped to the bounding box of their union (plus one voxel), so large scans with small
    structures stay cheap.

    Args:
        pred_mask: predicted mask, 2D (x, y) or 3D (x, y, z); non-zero is foreground.
        ref_mask: reference mask, same shape.
        spacing: voxel size in mm, one value per axis.
        tolerance_mm: accepted boundary deviation in mm (>= 0).
        empty: empty-mask policy; see the module docstring.
        subvoxels: weight boundary elements by surface area (True, Nikolov et al.) or count
            boundary voxels (False).

    Returns:
        NSD in [0, 1], NaN where the policy excludes the case.

    Example:
        >>> ref = np.zeros((10, 10), bool); ref[3:7, 3:7] = True
        >>> surface_dice(np.roll(ref, 1, axis=0), ref, (2.0, 1.0), 2.0)
        1.0
    """
    pred, ref = _check_pair(pred_mask, ref_mask)
    sp = _check_spacing(spacing, pred.ndim)
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}.")
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    special = empty_score(bool(pred.any()), bool(ref.any()), empty)
    if special is not None:
        return special
    pred, ref = _crop_pair(pred, ref, margin=1)
    t = lambda m: torch.from_numpy(np.ascontiguousarray(m))[None, None]  # noqa: E731
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated argument internally; nothing for a user to fix
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        nsd = compute_surface_dice(
            t(pred), t(ref), [tol], include_background=True, spacing=list(sp), use_subvoxels=bool(subvoxels)
        )
    return float(nsd[0, 0])


# --------------------------------------------------------------------------------------------
# volumes and one case
# --------------------------------------------------------------------------------------------


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
    sp = _check_spacing(spacing, lab.ndim)
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
        subvoxels: NSD boundary weighting (see :func:`surface_dice`).
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
    p, r = _check_pair(pred, ref, case_id, what="label map")
    p = _as_label(p, case_id, "prediction")
    r = _as_label(r, case_id, "reference")
    sp = _check_spacing(spacing, p.ndim, case_id)
    regions = list(REGIONS) if regions is None else list(regions)
    nsd_regions = set(regions if nsd_regions is None else nsd_regions)
    for name in [*regions, *nsd_regions]:
        if name not in REGIONS:
            raise ValueError(f"{_where(case_id)}unknown region {name!r}; choose from {', '.join(REGIONS)}.")
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


class SegmentationMetrics:
    """Accumulate per-case metrics, MONAI style: call per case, then :meth:`aggregate`.

    Args:
        tolerance_mm: fixed NSD tolerance for every case (None: each case's default).
        regions: regions to report (default all of :data:`REGIONS`).
        nsd_regions: regions to compute NSD for (default ``regions``).
        empty: empty-mask policy (module docstring).
        subvoxels: NSD boundary weighting.

    Example:
        >>> acc = SegmentationMetrics()
        >>> lab = np.zeros((6, 6), np.uint8); lab[1:5, 1:5] = 1; lab[2:4, 2:4] = 3
        >>> _ = acc(lab, lab, (1.0, 1.0), case_id="c1", fold=0)
        >>> row = acc.aggregate().iloc[0]
        >>> row["case_id"], int(row["fold"]), float(row["dice_ggo"])
        ('c1', 0, 1.0)
    """

    def __init__(
        self,
        *,
        tolerance_mm: float | None = None,
        regions: Iterable[str] | None = None,
        nsd_regions: Iterable[str] | None = None,
        empty: str = "nan",
        subvoxels: bool = True,
    ):
        if tolerance_mm is not None and not (math.isfinite(float(tolerance_mm)) and float(tolerance_mm) >= 0):
            raise ValueError(f"tolerance_mm must be None or a finite number >= 0 (mm), got {tolerance_mm!r}.")
        self.regions = list(REGIONS) if regions is None else list(regions)
        self.nsd_regions = self.regions if nsd_regions is None else list(nsd_regions)
        for name in [*self.regions, *self.nsd_regions]:
            if name not in REGIONS:
                raise ValueError(f"Unknown region {name!r}; choose from {', '.join(REGIONS)}.")
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"empty={empty!r} is not a known policy; choose one of {', '.join(EMPTY_POLICIES)}.")
        self.tolerance_mm = None if tolerance_mm is None else float(tolerance_mm)
        self.empty = empty
        self.subvoxels = bool(subvoxels)
        self._rows: list[dict] = []

    def __call__(self, pred, ref, spacing, *, case_id=None, fold=None, **extra) -> dict:
        """Compute one case's metrics, store the row and return it; ``extra`` adds columns."""
        row = case_metrics(
            pred,
            ref,
            spacing,
            tolerance_mm=self.tolerance_mm,
            regions=self.regions,
            nsd_regions=self.nsd_regions,
            empty=self.empty,
            subvoxels=self.subvoxels,
            case_id=case_id,
        )
        row = {"case_id": case_id, "fold": fold, **extra, **row}
        self._rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self._rows)

    def aggregate(self) -> pd.DataFrame:
        """All rows so far, one per case, as a DataFrame (empty if none)."""
        return pd.DataFrame(self._rows)

    def reset(self) -> None:
        """Forget every stored row."""
        self._rows = []


# --------------------------------------------------------------------------------------------
# summaries and agreement
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
        df: one row per case (e.g. :meth:`SegmentationMetrics.aggregate`).
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


def _paired(a, b, name_a="a", name_b="b") -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{name_a} and {name_b} must pair case by case; got {x.size} and {y.size} values.")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def icc(a, b, *more, alpha: float = 0.05) -> dict:
    """Intraclass correlation ICC(2,1) = ICC(A,1) with its (1 - alpha) F-based interval.

    Two-way random effects, absolute agreement, single measures (Shrout & Fleiss 1979 case 2;
    McGraw & Wong 1996 ICC(A,1)), from the two-way ANOVA without replication of ``n`` cases x
    ``k`` raters (methods)::

        ICC = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)

    with the McGraw & Wong interval (their Table 7, Satterthwaite degrees of freedom). Cases
    with a NaN in any rater are dropped.

    Args:
        a, b, *more: one value per case for each rater/method (e.g. predicted and reference
            lesion volumes), in the same case order.
        alpha: 1 - confidence level.

    Returns:
        ``{"icc", "ci_low", "ci_high", "n", "k", "F", "df1", "df2", "p", "form"}`` where F is the
        case-effect F test (H0: ICC = 0).

    Example:
        >>> round(icc([1, 2, 3, 4], [1.1, 2.1, 2.9, 4.2])["icc"], 3)
        0.995
    """
    cols = [np.asarray(v, dtype=float).ravel() for v in (a, b, *more)]
    if len({c.size for c in cols}) != 1:
        raise ValueError(f"every rater needs one value per case; got lengths {[c.size for c in cols]}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    y = np.column_stack(cols)
    y = y[~np.isnan(y).any(axis=1)]
    n, k = y.shape
    nan_out = {
        "icc": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "n": n,
        "k": k,
        "F": float("nan"),
        "df1": n - 1,
        "df2": (n - 1) * (k - 1),
        "p": float("nan"),
        "form": ICC_FORM,
    }
    if n < 2:
        return nan_out
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))  # clip round-off below zero
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom <= 0:
        return nan_out
    value = (msr - mse) / denom
    df1, df2 = n - 1, (n - 1) * (k - 1)
    f_rows = msr / mse if mse > 0 else float("inf")
    p = float(stats.f.sf(f_rows, df1, df2)) if math.isfinite(f_rows) else 0.0
    lo = hi = float("nan")
    if value >= 1:  # no error and no rater offset at all
        lo = hi = 1.0
    else:
        # McGraw & Wong (1996), Table 7, ICC(A,1); v: Satterthwaite degrees of freedom
        aa = k * value / (n * (1 - value))
        bb = 1 + k * value * (n - 1) / (n * (1 - value))
        v_den = (aa * msc) ** 2 / (k - 1) + (bb * mse) ** 2 / ((n - 1) * (k - 1))
        if v_den > 0:
            v = (aa * msc + bb * mse) ** 2 / v_den
            f_lo = stats.f.ppf(1 - alpha / 2, n - 1, v)
            f_hi = stats.f.ppf(1 - alpha / 2, v, n - 1)
            c = k * msc + (k * n - k - n) * mse
            lo = float(n * (msr - f_lo * mse) / (f_lo * c + n * msr))
            hi = float(n * (f_hi * msr - mse) / (c + n * f_hi * msr))
    return nan_out | {"icc": float(value), "ci_low": lo, "ci_high": hi, "F": float(f_rows), "p": p}


def bland_altman(pred, ref, *, percent: bool = False, alpha: float = 0.05) -> dict:
    """Bland–Altman agreement of paired measurements (e.g. predicted vs reference volume).

    Differences are ``pred - ref``; with ``percent=True`` they are ``100 (pred - ref) / mean``
    where ``mean = (pred + ref) / 2`` (pairs with a zero mean are dropped). Limits of agreement
    are ``bias ± 1.96 sd`` (sd with ddof=1). Pairs with a NaN are dropped.

    Args:
        pred: values of the method under test, one per case.
        ref: reference values, same cases and order.
        percent: express differences in percent of the pair mean.
        alpha: for the t interval of the bias (``bias_ci_low``, ``bias_ci_high``).

    Returns:
        ``{"bias", "sd", "loa_low", "loa_high", "bias_ci_low", "bias_ci_high", "loa_low_ci_low",
        "loa_low_ci_high", "loa_high_ci_low", "loa_high_ci_high", "n", "unit"}`` (``unit`` is
        ``"%"`` or ``"same as input"``). The limits' intervals use the approximate standard error
        ``sqrt(3 sd² / n)`` of Bland & Altman (1986) with a t quantile. These fixed limits assume the
        difference does not depend on the size of the measurement; where it does (proportional
        bias) use :func:`sscild.evaluation.stats.bland_altman_regression`.

    Example:
        >>> ba = bland_altman([2, 4, 6], [1, 3, 8])
        >>> ba["bias"], ba["sd"]
        (0.0, 1.7320508075688772)
    """
    x, y = _paired(pred, ref, "pred", "ref")
    diff = x - y
    if percent:
        mean = (x + y) / 2
        keep = mean != 0
        diff = 100.0 * diff[keep] / mean[keep]
    n = int(diff.size)
    bias = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    tq = float(stats.t.ppf(1 - alpha / 2, n - 1)) if n > 1 else float("nan")
    half = tq * sd / math.sqrt(n) if n > 1 else float("nan")
    # Bland & Altman (1986): the standard error of a limit of agreement is about sqrt(3 sd^2 / n)
    loa_half = tq * math.sqrt(3.0 * sd * sd / n) if n > 1 else float("nan")
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": lo,
        "loa_high": hi,
        "bias_ci_low": bias - half,
        "bias_ci_high": bias + half,
        "loa_low_ci_low": lo - loa_half,
        "loa_low_ci_high": lo + loa_half,
        "loa_high_ci_low": hi - loa_half,
        "loa_high_ci_high": hi + loa_half,
        "n": n,
        "unit": "%" if percent else "same as input",
    }


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
    p, r = _check_pair(np.asarray(pred), np.asarray(ref), what="label map")
    p = p.astype(np.int64, copy=False).ravel()
    r = r.astype(np.int64, copy=False).ravel()
    for name, a in (("pred", p), ("ref", r)):
        if a.size and (a.min() < 0 or a.max() >= n_labels):
            raise ValueError(f"{name} holds labels outside 0..{n_labels - 1} (min {a.min()}, max {a.max()}).")
    return np.bincount(r * n_labels + p, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
