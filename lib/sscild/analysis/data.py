"""The Data chapter's computations: validation outcome, cohort numbers, example cases, folds.

Everything the chapter reports is computed here from the cohort folder, the validation report, the
preprocessing table of :func:`sscild.data.cache.build_cache` and the splits, as numbers and
records; the tables and sentences the page shows are built from them by
:mod:`sscild.book.chapters.data`.

* :func:`exclusions`: which cases validation leaves out and why.
* :func:`quartiles`, :func:`read_clinical`: median and quartiles of a variable with the number of
  patients who have it and who miss it; the clinical table as the cohort table reads it.
* :func:`pick_examples`, :func:`pick_slice`, :func:`example_case`: mild, moderate and severe cases
  and the slices that show them.
* :func:`fold_table`, :func:`fold_composition`: what each cross-validation fold holds out.
* :func:`key_numbers`: cases found, used and excluded, and the lesion extent.

Example:
    >>> import pandas as pd
    >>> quartiles(pd.Series([1.0, 2.0, 3.0, None]))["median"]
    2.0
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.analysis.clinical_inputs import load_clinical
from sscild.data.cohort import read_case
from sscild.data.folds import fold_of
from sscild.data.orientation import canonical_position, to_canonical

__all__ = [
    "quartiles",
    "read_clinical",
    "exclusions",
    "pick_examples",
    "pick_slice",
    "example_case",
    "fold_table",
    "fold_composition",
    "key_numbers",
]


# --------------------------------------------------------------------------------------------
# the cohort's numbers
# --------------------------------------------------------------------------------------------


def quartiles(values) -> dict:
    """Median and quartiles of one variable, with how many values are present and missing.

    Quartiles are NumPy's default (linear interpolation between order statistics). Non-numeric
    entries count as missing.

    Args:
        values: a sequence or Series, one entry per patient (``NaN``/``None`` = missing).

    Returns:
        dict ``n``, ``missing``, ``median``, ``q1``, ``q3`` (NaN when ``n == 0``).

    Example:
        >>> q = quartiles([10, 20, 30, 40, None])
        >>> q["n"], q["missing"], q["median"], q["q1"], q["q3"]
        (4, 1, 25.0, 17.5, 32.5)
    """
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    present = v.dropna()
    out = {"n": int(present.size), "missing": int(v.size - present.size)}
    if present.empty:
        out.update(median=math.nan, q1=math.nan, q3=math.nan)
        return out
    q1, med, q3 = np.percentile(present.to_numpy(), [25, 50, 75])
    out.update(median=float(med), q1=float(q1), q3=float(q3))
    return out


def read_clinical(data_dir: str | os.PathLike) -> tuple[pd.DataFrame | None, list[str]]:
    """The cohort's clinical table for the cohort table, and notes on how it was read.

    Uses :func:`sscild.analysis.clinical_inputs.load_clinical` (the Clinical chapter's reading:
    FEV1/FVC as a ratio, unusable values missing), so both chapters describe the same numbers. A
    missing or unreadable table gives ``None`` and a note instead of an error: validation has already
    reported it, and the cohort table then shows the clinical rows as missing.

    Returns:
        ``(table or None, notes)``.
    """
    try:
        table = load_clinical(data_dir)
    except FileNotFoundError:
        return None, ["there is no clinical.csv: demographics and lung function are not available"]
    except ValueError as exc:
        return None, [f"clinical.csv cannot be used ({exc})"]
    return table, list(table.attrs.get("notes", [])) + list(table.attrs.get("problems", []))


def key_numbers(report, cases: pd.DataFrame) -> dict:
    """The numbers the chapter quotes: cases found, included and excluded, and lesion extent.

    Returns:
        dict ``n_found``, ``n_included``, ``n_excluded``, ``lesion_pct_median``, ``lesion_pct_q1``,
        ``lesion_pct_q3``, ``ef_pct_median``, ``ggo_pct_median`` (percent of lung, reference labels,
        included cases).
    """
    out = {"n_found": len(report.cases), "n_included": int(len(cases)), "n_excluded": len(report.bad_cases)}
    for col in ("lesion_pct", "ef_pct", "ggo_pct"):
        s = quartiles(cases[col] if col in cases.columns else [])
        out[f"{col}_median"] = s["median"]
        if col == "lesion_pct":
            out["lesion_pct_q1"], out["lesion_pct_q3"] = s["q1"], s["q3"]
    return out


# --------------------------------------------------------------------------------------------
# validation outcome
# --------------------------------------------------------------------------------------------


def exclusions(report) -> pd.DataFrame:
    """Every excluded (unusable) case and why: one row per case.

    A case is excluded when validation found at least one error for it; a folder-level error (no
    ``dataset.json``, label names without a role, ...) excludes every case. Warnings never exclude.

    Args:
        report: a :class:`sscild.data.cohort.ValidationReport`.

    Returns:
        DataFrame with ``case_id``, ``errors`` (count), ``reasons`` and ``fix`` (``"; "``-joined),
        sorted by case id; empty (same columns) when nothing is excluded.
    """
    cols = ["case_id", "errors", "reasons", "fix"]
    folder = report.folder_errors
    rows = []
    for case in report.bad_cases:
        errs = [p for p in report.errors if p.case_id == case] + list(folder)
        rows.append({"case_id": case, "errors": len(errs),
                     "reasons": "; ".join(p.reason() for p in errs),
                     "fix": "; ".join(dict.fromkeys(p.fix for p in errs))})
    return pd.DataFrame(rows, columns=cols)




# --------------------------------------------------------------------------------------------
# example cases
# --------------------------------------------------------------------------------------------


def pick_examples(cases: pd.DataFrame, *, levels: Mapping[str, float] | None = None,
                  column: str = "lesion_pct") -> dict[str, str]:
    """Cases at given quantiles of lesion extent (default mild 10 %, moderate 50 %, severe 90 %).

    Each level takes the case whose ``column`` is closest to that quantile of the cohort, never a
    case already taken; with fewer cases than levels, the later levels are dropped.

    Returns:
        dict level -> case id, in the order of ``levels``.

    Example:
        >>> df = pd.DataFrame({"case_id": list("abcde"), "lesion_pct": [1, 5, 10, 20, 40]})
        >>> pick_examples(df)
        {'mild': 'a', 'moderate': 'c', 'severe': 'e'}
    """
    levels = dict(levels or {"mild": 0.1, "moderate": 0.5, "severe": 0.9})
    df = cases[["case_id", column]].dropna()
    if df.empty:
        return {}
    values = df[column].to_numpy(float)
    ids = df["case_id"].astype(str).to_numpy()
    taken: set[int] = set()
    out = {}
    for name, q in levels.items():
        if len(taken) == len(ids):
            break
        target = float(np.quantile(values, q))
        order = np.lexsort((ids, np.abs(values - target)))
        i = next(int(j) for j in order if int(j) not in taken)
        taken.add(i)
        out[name] = str(ids[i])
    return out


_VIEW_AXES = {"axial": (0, 1), "coronal": (0, 2)}


def pick_slice(label: np.ndarray, view: str = "axial", *, min_lung_share: float = 0.6) -> int:
    """The slice of a label map (study roles, RAS) that shows the disease best.

    Among the slices whose lung area (labels 1-3) is at least ``min_lung_share`` of the largest,
    the one with the most EF and GGO voxels; the one with the most lung when there is no lesion.
    The lung-area condition keeps the view off the thin lung bases and the posterior rim, where
    lesions gather but little lung shows.

    Args:
        label: (x, y, z) label map with values 0..3.
        view: ``"axial"`` (returns a z index) or ``"coronal"`` (returns a y index).
        min_lung_share: 0..1.

    Example:
        >>> lab = np.zeros((4, 4, 3), np.uint8); lab[:, :, 1:] = 1; lab[0, 0, 0] = 2; lab[:2, :, 2] = 3
        >>> pick_slice(lab, "axial")
        2
    """
    if view not in _VIEW_AXES:
        raise ValueError(f"pick_slice: view must be 'axial' or 'coronal', got {view!r}.")
    if not 0.0 <= float(min_lung_share) <= 1.0:
        raise ValueError(f"pick_slice: min_lung_share must be within 0..1, got {min_lung_share!r}.")
    label = np.asarray(label)
    axes = _VIEW_AXES[view]
    area = (label > 0).sum(axis=axes)
    lesion = ((label == LABELS["ef"]) | (label == LABELS["ggo"])).sum(axis=axes)
    wide = area >= float(min_lung_share) * area.max()
    score = np.where(wide, lesion if lesion.any() else area, -1)
    return int(np.argmax(score))


def example_case(cohort, case_id: str, *, min_lung_share: float = 0.6) -> dict:
    """One case for display, in RAS: HU, label roles, spacing and the slices to show.

    Among the axial slices whose lung area is at least ``min_lung_share`` of the largest, the one
    with the most lesion (EF or GGO) voxels (the most lung when there is no lesion); the coronal
    slice is chosen the same way along the anterior-posterior axis. The lung-area condition keeps
    the view off the thin lung bases and the posterior rim, where lesions gather but little lung
    shows.

    Returns:
        dict ``case_id``, ``hu``, ``label``, ``spacing``, ``axial`` (z index), ``coronal`` (y index),
        ``axial_mm`` and ``coronal_mm`` (their RAS positions, :func:`sscild.data.orientation.canonical_position`),
        ``ef_pct``, ``ggo_pct`` and ``lesion_pct`` of the whole label map.
    """
    vol, roles = read_case(cohort, case_id)
    hu, spacing = to_canonical(vol.array, vol.affine)
    if roles is None:
        raise ValueError(f"case {case_id}: has no label map, so it cannot be shown with its labels.")
    lab, _ = to_canonical(roles, vol.affine)
    lesion = (lab == LABELS["ef"]) | (lab == LABELS["ggo"])
    lung = int((lab > 0).sum())

    def pct(mask):
        return 100.0 * int(mask.sum()) / lung if lung else math.nan

    axial = pick_slice(lab, "axial", min_lung_share=min_lung_share)
    coronal = pick_slice(lab, "coronal", min_lung_share=min_lung_share)
    shape = np.asarray(vol.array).shape
    return {"case_id": str(case_id), "hu": hu, "label": lab, "spacing": spacing, "axial": axial, "coronal": coronal,
            "axial_mm": canonical_position(vol.affine, shape, 2, axial),
            "coronal_mm": canonical_position(vol.affine, shape, 1, coronal),
            "ef_pct": pct(lab == LABELS["ef"]), "ggo_pct": pct(lab == LABELS["ggo"]), "lesion_pct": pct(lesion)}


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------


def fold_table(splits: Sequence[Mapping], cases: pd.DataFrame, *, column: str = "lesion_pct") -> pd.DataFrame:
    """One row per held-out case: ``case_id``, ``fold`` (the fold that holds it out) and ``column``.

    Raises:
        ValueError: a case of the splits is not in ``cases``.
    """
    where = fold_of(list(splits))
    values = cases.assign(case_id=cases["case_id"].astype(str)).set_index("case_id")[column]
    missing = sorted(set(where) - set(values.index))
    if missing:
        raise ValueError(f"fold_table: case(s) {missing[:10]} are in the splits but not in the cases table; "
                         "rebuild the splits from the same cases (re-run the Data chapter).")
    rows = [{"case_id": c, "fold": f, column: float(values[c])} for c, f in sorted(where.items(), key=lambda t: (t[1], t[0]))]
    return pd.DataFrame(rows, columns=["case_id", "fold", column])


def fold_composition(splits: Sequence[Mapping], cases: pd.DataFrame, *, column: str = "lesion_pct") -> pd.DataFrame:
    """Per fold: patients held out, patients trained on, and the held-out lesion extent.

    Returns:
        DataFrame indexed by ``fold`` with ``held out (n)``, ``trained on (n)``, ``median``, ``q1``,
        ``q3``, ``min`` and ``max`` of ``column`` over the held-out patients.
    """
    ft = fold_table(splits, cases, column=column)
    rows = []
    for k, fold in enumerate(splits):
        v = ft.loc[ft["fold"] == k, column].to_numpy(float)
        q1, med, q3 = np.percentile(v, [25, 50, 75]) if v.size else (math.nan,) * 3
        rows.append({"fold": k, "held out (n)": int(v.size), "trained on (n)": len(fold["train"]),
                     "median": float(med), "q1": float(q1), "q3": float(q3),
                     "min": float(v.min()) if v.size else math.nan, "max": float(v.max()) if v.size else math.nan})
    return pd.DataFrame(rows).set_index("fold")
