"""Two or more training arms scored on the same held-out patients: a recorded comparison of recipes.

A record (e.g. ``benchmarks/study_pretrain_cv.csv``, written by ``scripts/record_arms.py``) holds one
row per arm and patient: ``arm``, ``case_id``, ``fold`` and the out-of-fold metrics of
:func:`sscild.analysis.segmentation.evaluate_oof` (``dice_lesion``, ``dice_ef``, ...). The first arm is
the control. :func:`arms_table` gives each arm's mean with its 95 % BCa interval and the paired
difference from the control with its interval (resampling patients, so a patient's two scores stay
together).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sscild.evaluation.metrics import summarize

__all__ = ["ARM_METRICS", "read_arms", "arms_table"]

ARM_METRICS = ("dice_lesion", "dice_ef", "dice_ggo", "nsd_lesion")
"""The metrics a recorded arm comparison keeps."""

_LABELS = {"dice_lesion": "Dice lesion", "dice_ef": "Dice EF", "dice_ggo": "Dice GGO", "nsd_lesion": "NSD lesion",
           "dice_normal": "Dice normal"}


def read_arms(path: str | Path) -> pd.DataFrame:
    """Read a record; every arm must hold the same patients (a ValueError names the arm that does not)."""
    df = pd.read_csv(path, dtype={"case_id": str})
    missing = {"arm", "case_id"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not an arm record (columns {sorted(missing)} missing)")
    arms = list(dict.fromkeys(df["arm"]))
    ref = sorted(df.loc[df["arm"] == arms[0], "case_id"])
    for a in arms[1:]:
        if sorted(df.loc[df["arm"] == a, "case_id"]) != ref:
            raise ValueError(f"{path}: arm {a!r} was scored on other patients than {arms[0]!r}")
    return df


def arms_table(df: pd.DataFrame, *, metrics: Sequence[str] = ("dice_lesion", "dice_ef", "dice_ggo"),
               n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per arm: mean [95 % BCa CI] of each metric, and the paired difference from the first
    arm (the control) [95 % BCa CI].

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = pd.DataFrame({"arm": "control", "case_id": list("abcdefgh"), "dice_lesion": rng.uniform(.6, .8, 8)})
    >>> b = a.assign(arm="treated", dice_lesion=a["dice_lesion"] + 0.05)
    >>> t = arms_table(pd.concat([a, b]), metrics=["dice_lesion"], n_boot=200)
    >>> t.loc["treated", "Dice lesion, change from control [95% CI]"]
    '+0.050 [+0.050, +0.050]'
    """
    arms = list(dict.fromkeys(df["arm"]))
    ctrl = df[df["arm"] == arms[0]].set_index("case_id")
    rows = []
    for a in arms:
        d = df[df["arm"] == a].set_index("case_id").loc[ctrl.index]
        s = summarize(d.reset_index(), columns=list(metrics), n_boot=n_boot, seed=seed).set_index("metric")
        row = {"arm": a, "patients": len(d)}
        for m in metrics:
            row[f"{_LABELS.get(m, m)} [95% CI]"] = f"{s.loc[m, 'mean']:.3f} [{s.loc[m, 'ci_low']:.3f}, {s.loc[m, 'ci_high']:.3f}]"
        if a != arms[0]:
            g = summarize((d[list(metrics)] - ctrl[list(metrics)]).reset_index(drop=True), columns=list(metrics),
                          n_boot=n_boot, seed=seed).set_index("metric")
        for m in metrics:
            row[f"{_LABELS.get(m, m)}, change from {arms[0]} [95% CI]"] = (
                "" if a == arms[0] else
                f"{g.loc[m, 'mean']:+.3f} [{g.loc[m, 'ci_low']:+.3f}, {g.loc[m, 'ci_high']:+.3f}]")
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")
