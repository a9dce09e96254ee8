"""Out-of-fold evaluation: per-case metrics of the network and of the HU baseline.

Every case is scored against its reference labels in its *original* voxel grid, using the prediction
of the fold model that never saw it (:func:`sscild.model.predict.predict_oof`). Policies, decided here:

* **Network metrics** (:func:`sscild.evaluation.metrics.case_metrics`): Dice for normal lung, EF, GGO, total
  lesion (EF ∪ GGO) and lung; normalised surface Dice (NSD) for EF, GGO and lesion only
  (:data:`NETWORK_NSD_REGIONS`): the NSD of the large normal-lung and lung regions costs most of the
  time and says little (their boundary is the pleura, which any method finds); volumes in mL and
  percent of the map's own lung. Empty reference regions give NaN and are counted as excluded
  (the metrics module's ``empty="nan"`` policy).
* **NSD tolerance** (:func:`nsd_tolerance_mm`): one value for every case of the cohort, 1.5 times
  the coarser of (a) the network's in-plane spacing (the profile's target spacing) and (b) the
  largest native in-plane spacing among the cases, so a boundary one voxel off (straight or
  diagonal) on either grid is tolerated and every case is judged alike.
* **Baseline** (:func:`sscild.evaluation.baseline.density_mask`): lung voxels between -600 and -250 HU (the
  MESA high-attenuation area) inside the *reference* lung are lesion: its total-lesion Dice and lesion
  volume. Density alone has no published rule for EF versus GGO, so for an EF and GGO comparator the
  band is split at one HU cut per fold, the cut that maximises mean EF and GGO Dice on that fold's
  *training* patients (:func:`sscild.evaluation.baseline.fit_ef_cut`); held-out patients are scored with it.
  This is the best a single density cut can do, fitted without leakage. No NSD for the baseline.
* **Volume agreement** (:func:`sscild.analysis.segmentation_summary.agreement`): predicted against
  reference lesion, EF and GGO extent in **percent of lung** (each map's own lung volume), the
  quantity extent staging uses; in mL a large lung and a large lesion go together, which would
  inflate the ICC with lung size. ICC(2,1)
  (two-way random effects, absolute agreement, single measures; Shrout & Fleiss 1979) with its
  F-based 95 % CI, and Bland–Altman bias and 95 % limits of agreement (bias ± 1.96 SD) in
  percentage points.
* **Summaries** (:func:`sscild.evaluation.metrics.summarize`): mean ± SD, median [IQR] and the 95 % BCa
  bootstrap CI of the mean over cases (2000 resamples, seeded), overall and per fold.

Cost, measured on 2 CPU cores for a ``cpu``-profile case (256 x 256 x 55) with a prediction close to
the reference: about 0.8 s per case (Dice and volumes 0.3 s, NSD of EF, GGO and lesion 0.4 s, the
baseline 0.1 s); two threads score 40 cases in about 20 s. The NSD costs grow with the predicted
regions: an untrained network that paints a third of the scan as lesion costs seconds per case.

* **Zones** (:func:`cohort_zones`): the EF and GGO extent per lung zone of every out-of-fold
  prediction and its reference (:func:`sscild.clinic.zones.cohort_zone_extent`, about 10 s on the
  smoke cohort), computed once and written to ``zone_extent.csv`` in the run folder; the Clinical
  chapter reads them back (:func:`read_cohort_zones`).

Summaries over cases and the agreement of volumes are :mod:`sscild.analysis.segmentation_summary`;
where and how the network errs is :mod:`sscild.analysis.segmentation_errors`; the tables and
sentences of the chapter are built from them by :mod:`sscild.book.chapters.segmentation`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from sscild.clinic.zones import cohort_zone_extent
from sscild.data.cohort import Cohort, read_case
from sscild.data.folds import fold_of, read_splits
from sscild.data.image import load_header, load_volume
from sscild.evaluation.baseline import band_histograms, density_mask, fit_ef_cut, split_dice
from sscild.evaluation.metrics import DEFAULT_TOLERANCE_FACTOR, case_metrics, confusion_counts
from sscild.paths import RunPaths, atomic_path, read_json
from sscild.profiles import PROFILES, get_profile, require_profile

__all__ = [
    "NETWORK_REGIONS",
    "NETWORK_NSD_REGIONS",
    "AGREEMENT_REGIONS",
    "nsd_tolerance_mm",
    "slice_spacing_mm",
    "oof_settings",
    "evaluate_oof",
    "extreme_cases",
    "load_case_maps",
    "ZONE_EXTENT_FILE",
    "cohort_zones",
    "read_cohort_zones",
]

NETWORK_REGIONS = ("normal", "ef", "ggo", "lesion", "lung")
"""Regions scored for the network (Dice, volumes)."""

NETWORK_NSD_REGIONS = ("ef", "ggo", "lesion")
"""Regions whose surface Dice is computed for the network (see the module docstring)."""

AGREEMENT_REGIONS = ("lesion", "ef", "ggo")
"""Regions whose predicted and reference extent are compared by ICC and Bland–Altman."""


def nsd_tolerance_mm(cohort: Cohort, profile=None) -> float:
    """The one NSD tolerance (mm) used for every case of ``cohort`` (module docstring).

    Args:
        cohort: the cohort; only file headers are read.
        profile: the profile whose ``target_spacing`` gives the network's in-plane spacing;
            ``None`` uses the native spacings alone.

    Example: ``nsd_tolerance_mm(cohort, get_profile("cpu"))`` is 2.1 mm on the synthetic ``cpu`` cohort.
    """
    inplane = [max(load_header(c.image).spacing[:2]) for c in cohort.cases]
    if profile is not None:
        target = [t for t in require_profile(profile).target_spacing[:2] if t is not None]
        inplane += [float(t) for t in target]
    if not inplane:
        raise ValueError(f"cohort {cohort.root} has no cases: nothing to derive an NSD tolerance from.")
    return round(DEFAULT_TOLERANCE_FACTOR * max(inplane), 4)


def slice_spacing_mm(cohort: Cohort) -> tuple[float, float]:
    """Smallest and largest slice spacing (mm, third axis) of the cohort's scans (headers only).

    The NSD tolerance (:func:`nsd_tolerance_mm`) is set from the in-plane spacing; the book states
    it beside this range, since a boundary one slice off lies further than the tolerance whenever
    the slices are further apart than it.
    """
    z = [float(load_header(c.image).spacing[2]) for c in cohort.cases]
    if not z:
        raise ValueError(f"cohort {cohort.root} has no cases: no slice spacing to report.")
    return min(z), max(z)


def oof_settings(run: RunPaths) -> dict:
    """TTA and post-processing recorded in ``predictions/manifest.json`` (``"mixed"`` if they differ)."""
    path = run.predictions / "manifest.json"
    if not path.exists():
        return {"tta": None, "postprocess": None}
    cases = read_json(path).get("cases", {})
    out = {}
    for key in ("tta", "postprocess"):
        values = {e.get(key) for e in cases.values()}
        out[key] = values.pop() if len(values) == 1 else "mixed"
    return out


def _score_case(run: RunPaths, cohort: Cohort, cid: str, fold: int, tolerance_mm: float, nsd_regions,
                baseline: bool) -> dict | None:
    image, ref = read_case(cohort, cid)
    if ref is None:
        return None
    pred_path = run.predictions / f"{cid}.nii.gz"
    if not pred_path.exists():
        raise FileNotFoundError(f"case {cid}: {pred_path} is missing; predict the held-out cases first "
                                "(sscild.model.predict.predict_oof, the Segmentation chapter).")
    pred_vol = load_volume(pred_path)
    if pred_vol.shape != ref.shape or not np.allclose(pred_vol.affine, image.affine, atol=1e-3):
        raise ValueError(f"case {cid}: {pred_path} has shape {pred_vol.shape} / affine differing from the "
                         f"reference ({ref.shape}); delete it and predict again.")
    pred = np.asarray(pred_vol.array, dtype=np.uint8)
    spacing = tuple(float(s) for s in image.spacing)
    row = {"case_id": cid, "fold": fold}
    row.update(case_metrics(pred, ref, spacing, tolerance_mm=tolerance_mm, regions=NETWORK_REGIONS,
                            nsd_regions=nsd_regions, case_id=cid))
    conf = confusion_counts(np.clip(pred, 0, 3), np.clip(np.asarray(ref), 0, 3), n_labels=4)
    for i in range(4):
        for j in range(4):
            row[f"vox_ref{i}_pred{j}"] = int(conf[i, j])
    if baseline:
        base = density_mask(np.asarray(image.array), ref > 0)
        b = case_metrics(base, ref, spacing, regions=("lesion",), nsd_regions=(), case_id=cid)
        for k in ("dice_lesion", "vol_pred_lesion_ml", "pct_pred_lesion", "fp_ml_lesion"):
            row[f"baseline_{k}"] = b[k]
        row["_band_hist"] = band_histograms(np.asarray(image.array), ref)
    return row


def _baseline_split(rows: list[dict], splits) -> None:
    """Add ``baseline_dice_ef``, ``baseline_dice_ggo`` and ``baseline_ef_cut_hu`` to each held-out row.

    The EF/GGO cut of fold k is fitted on that fold's training cases only
    (:func:`sscild.evaluation.baseline.fit_ef_cut`); the held-out cases are scored with it.
    """
    hists = {r["case_id"]: r.pop("_band_hist") for r in rows if "_band_hist" in r}
    if not hists:
        return
    cuts = {}
    for k, fold in enumerate(splits):
        train = [hists[c] for c in fold["train"] if c in hists]
        try:
            cuts[k] = fit_ef_cut(train) if train else None
        except ValueError:
            cuts[k] = None
    for r in rows:
        h = hists.get(r["case_id"])
        cut = cuts.get(int(r["fold"]))
        if h is None or cut is None:
            r.update(baseline_dice_ef=float("nan"), baseline_dice_ggo=float("nan"), baseline_ef_cut_hu=float("nan"))
            continue
        d_ef, d_ggo = split_dice(h, cut)
        r.update(baseline_dice_ef=d_ef, baseline_dice_ggo=d_ggo, baseline_ef_cut_hu=cut)


def evaluate_oof(run: RunPaths, cohort: Cohort, *, tolerance_mm: float | None = None,
                 nsd_regions=NETWORK_NSD_REGIONS, baseline: bool = True, workers: int | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Per-case metrics of the network and of the HU baseline; writes ``run.segmentation_metrics``.

    Cases are scored in a pool of threads (the surface-distance and Dice kernels release the GIL);
    the rows come back in cohort order, so the table does not depend on the number of workers.

    Args:
        run: the run folder; ``splits.json`` and ``predictions/<case>.nii.gz`` must exist.
        cohort: the cohort whose reference labels are scored against.
        tolerance_mm: NSD tolerance; ``None``: :func:`nsd_tolerance_mm` of the cohort and the run's profile.
        nsd_regions: network regions that get a surface Dice.
        baseline: also score the HU density mask (columns ``baseline_*``).
        workers: threads (default: the number of CPU cores, at most 4).
        progress: tqdm bar.

    Returns:
        One row per labelled, held-out case: ``case_id``, ``fold``, the network's
        :func:`~sscild.evaluation.metrics.case_metrics` columns and ``baseline_dice_lesion``,
        ``baseline_vol_pred_lesion_ml``, ``baseline_pct_pred_lesion``, ``baseline_fp_ml_lesion``.

    Raises:
        FileNotFoundError: a prediction is missing (run :func:`sscild.model.predict.predict_oof`).
        ValueError: a prediction's grid differs from its reference's.
    """
    splits = read_splits(run.splits)
    folds = fold_of(splits)
    if tolerance_mm is None:
        tolerance_mm = nsd_tolerance_mm(cohort, get_profile(run.profile) if run.profile in PROFILES else None)
    ids = [c.case_id for c in cohort.cases if c.case_id in folds]
    workers = max(1, int(workers or min(4, os.cpu_count() or 1)))

    def score(cid):
        return _score_case(run, cohort, cid, folds[cid], tolerance_mm, tuple(nsd_regions), baseline)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(score, ids)
        if progress:
            from tqdm.auto import tqdm  # lazy: only with a progress bar

            it = tqdm(it, total=len(ids), desc="scoring", unit="case", disable=None)
        rows = [r for r in it if r is not None]
    if baseline:
        _baseline_split(rows, splits)
    df = pd.DataFrame(rows)
    with atomic_path(run.segmentation_metrics, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


def extreme_cases(df: pd.DataFrame, metric: str = "dice_lesion") -> dict[str, str]:
    """Case ids of the best, the median and the worst case by ``metric`` (NaN cases skipped)."""
    d = df[["case_id", metric]].dropna().sort_values([metric, "case_id"], ascending=[False, True])
    if d.empty:
        return {}
    ids = d["case_id"].tolist()
    return {"best": ids[0], "median": ids[(len(ids) - 1) // 2], "worst": ids[-1]}


def load_case_maps(run: RunPaths, cohort: Cohort, case_id: str):
    """``(image Volume, reference labels, predicted labels)`` of one case, original grid."""
    image, ref = read_case(cohort, case_id)
    pred = np.asarray(load_volume(run.predictions / f"{case_id}.nii.gz").array, dtype=np.uint8)
    return image, ref, pred


ZONE_EXTENT_FILE = "zone_extent.csv"
"""The run folder's table of zone extents, written by :func:`cohort_zones`."""


def cohort_zones(run: RunPaths, cohort: Cohort) -> pd.DataFrame:
    """Zone extents of every out-of-fold prediction and its reference label map; writes ``zone_extent.csv``.

    The table of :func:`sscild.clinic.zones.cohort_zone_extent` (``case_id``, ``source``, ``zone`` and
    the zone's volumes and percentages), written atomically to the run folder so that the Clinical
    chapter reads it (:func:`read_cohort_zones`) instead of computing it again.
    """
    zones = cohort_zone_extent(run, cohort)
    with atomic_path(run.root / ZONE_EXTENT_FILE, suffix=".csv") as tmp:
        zones.to_csv(tmp, index=False)
    return zones


def read_cohort_zones(run: RunPaths) -> pd.DataFrame:
    """The zone extents :func:`cohort_zones` wrote, every number as computed (floats read back exactly).

    Raises:
        FileNotFoundError: the file is missing; run the Segmentation chapter first, which writes it.
    """
    path = run.root / ZONE_EXTENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no zone extents. Run the Segmentation chapter first (`make evaluate`): "
                                "it computes them from the out-of-fold predictions and writes this file.")
    return pd.read_csv(path, dtype={"case_id": str, "source": str, "zone": str}, float_precision="round_trip")
