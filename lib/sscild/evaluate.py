"""Out-of-fold evaluation: per-case metrics of the network and of the HU baseline, and summaries.

Every case is scored against its reference labels in its *original* voxel grid, using the prediction
of the fold model that never saw it. The HU density-mask baseline is applied inside the *reference*
lung, so its comparison with the network is about lesion, not about finding the lung.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .baseline import density_mask
from .cohort import Cohort, read_case
from .folds import fold_of, read_splits
from .io import load_volume
from .metrics import case_metrics, summarize
from .paths import RunPaths, atomic_path, write_json

__all__ = ["evaluate_oof", "summary_dict"]


def evaluate_oof(run: RunPaths, cohort: Cohort, *, progress: bool = True) -> pd.DataFrame:
    """Per-case metrics (network and baseline) for every case with a reference label and a prediction."""
    splits = read_splits(run.splits)
    folds = fold_of(splits)
    rows = []
    ids = [c.case_id for c in cohort.cases if c.case_id in folds]
    it = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="scoring", unit="case", disable=None)
    for cid in it:
        image, ref = read_case(cohort, cid)
        if ref is None:
            continue
        pred_path = run.predictions / f"{cid}.nii.gz"
        pred = load_volume(pred_path).array.astype(np.uint8)
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_path}: prediction shape {pred.shape} differs from the reference {ref.shape}")
        spacing = tuple(float(s) for s in image.spacing)
        row = {"case_id": cid, "fold": folds[cid]}
        row.update(case_metrics(pred, ref, spacing))
        base = density_mask(np.asarray(image.array), ref > 0, spacing=spacing)
        for k, v in case_metrics(base, ref, spacing).items():
            if k.startswith(("dice_", "vol_pred_", "pct_pred_", "nsd_")):
                row[f"baseline_{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    with atomic_path(run.segmentation_metrics, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


def summary_dict(df: pd.DataFrame, cohort_name: str, synthetic: bool, profile: str) -> dict:
    cols = [c for c in df.columns if c.startswith(("dice_", "nsd_", "baseline_dice_"))]
    s = summarize(df, columns=cols)
    out = {"cohort": cohort_name, "synthetic": synthetic, "profile": profile, "n_cases": int(len(df)),
           "metrics": {c: {k: (None if pd.isna(v) else float(v)) for k, v in s.loc[c].items()} for c in s.index}}
    return out
