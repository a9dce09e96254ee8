"""Overlap of two binary masks: Dice and normalised surface Dice (NSD), with one empty-mask policy.

Masks are (x, y[, z]) arrays, non-zero is foreground, with a voxel spacing in millimetres for NSD.
MONAI computes both metrics; both masks are first cropped to the bounding box of their union, so
large scans with small structures stay cheap.

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

**Surface Dice** counts the share of both boundaries lying within ``tolerance_mm`` of the other
(Nikolov et al., 2021). Boundaries are surface elements weighted by their area (the DeepMind
``surface-distance`` definition, MONAI ``use_subvoxels=True``), so anisotropic voxels do not
over-weight the faces across thick slices; ``subvoxels=False`` counts boundary voxels instead
(MONAI's default). The default tolerance of a case is :func:`sscild.evaluation.metrics.default_tolerance_mm`.

Example:
    >>> import numpy as np
    >>> dice(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]))
    0.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

__all__ = ["EMPTY_POLICIES", "case_prefix", "check_spacing", "check_pair", "empty_score", "dice", "surface_dice"]

# MONAI 1.5+ passes its own deprecated argument (get_mask_edges' always_return_as_numpy) inside
# compute_surface_dice: nothing for a user to fix. Filtered once for the process, not per call: a
# catch_warnings() block is not thread-safe, and cases are scored in threads
# (sscild.analysis.segmentation), where one thread leaving the block let another's warning through.
warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)

EMPTY_POLICIES = ("nan", "nnunet", "one")
"""Names accepted by the ``empty`` argument; see the module docstring."""


def case_prefix(case_id) -> str:
    """``"case 'c7': "`` to start an error message about a case, or ``""`` without a case id."""
    return f"case {case_id!r}: " if case_id is not None else ""


def check_spacing(spacing, ndim: int, case_id=None) -> tuple[float, ...]:
    """The voxel spacing as ``ndim`` positive floats in mm, or a ValueError that says what to pass."""
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(
            f"{case_prefix(case_id)}spacing must be a sequence of {ndim} positive numbers in mm, got {spacing!r}; "
            "pass the voxel size, e.g. from nibabel's header.get_zooms()."
        ) from None
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"{case_prefix(case_id)}spacing {spacing!r} does not fit an array with {ndim} dimensions: give {ndim} "
            "positive voxel sizes in mm, in the array's axis order (x, y[, z])."
        )
    return sp


def check_pair(pred, ref, case_id=None, what="mask") -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference as numpy arrays of one shape, 2D or 3D, or a ValueError that says why not."""
    pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
    ref = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref)
    if pred.shape != ref.shape:
        raise ValueError(
            f"{case_prefix(case_id)}prediction {what} has shape {pred.shape} but the reference has {ref.shape}; "
            "resample the prediction onto the reference grid first (same shape and geometry)."
        )
    if pred.ndim not in (2, 3):
        raise ValueError(
            f"{case_prefix(case_id)}{what}s must be 2D (x, y) or 3D (x, y, z) arrays, got {pred.ndim} dimensions "
            f"(shape {pred.shape}); drop channel/batch axes first."
        )
    return pred, ref


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
    pred, ref = check_pair(pred_mask, ref_mask)
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
    pred, ref = check_pair(pred_mask, ref_mask)
    sp = check_spacing(spacing, pred.ndim)
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}.")
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    special = empty_score(bool(pred.any()), bool(ref.any()), empty)
    if special is not None:
        return special
    pred, ref = _crop_pair(pred, ref, margin=1)
    t = lambda m: torch.from_numpy(np.ascontiguousarray(m))[None, None]  # noqa: E731
    nsd = compute_surface_dice(
        t(pred), t(ref), [tol], include_background=True, spacing=list(sp), use_subvoxels=bool(subvoxels)
    )
    return float(nsd[0, 0])
