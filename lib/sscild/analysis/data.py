"""The Data chapter's computations: validation outcome, cohort table (Table 1), folds, phantom check.

Everything the chapter shows is computed here from the cohort folder, the validation report, the
preprocessing table of :func:`sscild.data.cache.build_cache` and the splits; the notebook only
narrates and displays.

* :func:`exclusions`, :func:`problem_summary`, :func:`problem_rows`, :func:`validation_record`: what
  validation found, which cases are left out and why (``validation.json``).
* :func:`label_map_example`, :func:`label_map_from_env`: mapping another annotation scheme onto the
  study's roles.
* :func:`read_clinical`, :func:`summarise`, :func:`table_one`, :func:`geometry_table`: a paper-style
  cohort table, continuous values as median [interquartile range] with the number of patients who
  have the value and the number missing.
* :func:`pick_examples`, :func:`pick_slice`, :func:`example_case`: mild, moderate and severe cases
  and the slices that show them.
* :func:`fold_table`, :func:`fold_composition`: what each cross-validation fold holds out.
* :func:`clinical_model_table`, :func:`population_table`: the synthetic generator's planted model.
* :func:`real_ct_files`, :func:`load_real_ct`, :func:`canonical`, :func:`resample_inplane`,
  :func:`parenchyma_comparison`: the phantom's lung against real chest CT.
* :func:`key_numbers`: the values the book glues into its text.

Example:
    >>> import pandas as pd
    >>> summarise(pd.Series([1.0, 2.0, 3.0, None]))["summary"]
    '2.0 [1.5, 2.5]'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.data.labels import LABEL_MAP_ENV, label_map_from_env

__all__ = [
    "PFT_COLUMNS",
    "LABEL_MAP_ENV",
    "summarise",
    "read_clinical",
    "table_one",
    "geometry_table",
    "exclusions",
    "problem_summary",
    "problem_rows",
    "validation_record",
    "label_map_example",
    "label_map_from_env",
    "pick_examples",
    "pick_slice",
    "example_case",
    "fold_table",
    "fold_composition",
    "clinical_model_table",
    "population_table",
    "real_ct_files",
    "canonical",
    "resample_inplane",
    "load_real_ct",
    "parenchyma_comparison",
    "key_numbers",
]

PFT_COLUMNS: dict[str, tuple[str, str, int]] = {
    "fvc_pct": ("FVC", "% predicted", 1),
    "fev1_pct": ("FEV1", "% predicted", 1),
    "fev1_fvc": ("FEV1/FVC", "ratio", 2),
    "dlco_pct": ("DLCO", "% predicted", 1),
}
"""Lung-function columns of ``clinical.csv``: column -> (name, unit, decimals shown)."""

"""Environment variable holding a label map for the chapter: JSON text or the path of a JSON file."""

_VOLUME_ROWS = (
    ("lung_ml", "Lung volume (mL)", 0),
    ("ef_ml", "EF volume (mL)", 0),
    ("ggo_ml", "GGO volume (mL)", 0),
    ("lesion_ml", "Total lesion, EF + GGO (mL)", 0),
    ("ef_pct", "EF (% of lung)", 1),
    ("ggo_pct", "GGO (% of lung)", 1),
    ("lesion_pct", "Total lesion, EF + GGO (% of lung)", 1),
)

_TABLE_COLUMNS = ["summary", "n", "missing", "median", "q1", "q3"]


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------


def summarise(values, *, decimals: int = 1) -> dict:
    """Median and quartiles of one variable, with how many values are present and missing.

    Quartiles are NumPy's default (linear interpolation between order statistics). Non-numeric
    entries count as missing.

    Args:
        values: a sequence or Series, one entry per patient (``NaN``/``None`` = missing).
        decimals: decimals of the ``summary`` text.

    Returns:
        dict ``n``, ``missing``, ``median``, ``q1``, ``q3`` (NaN when ``n == 0``) and ``summary``
        (``"median [q1, q3]"``, or ``"not available"``).

    Example:
        >>> summarise([10, 20, 30, 40])["summary"]
        '25.0 [17.5, 32.5]'
    """
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    present = v.dropna()
    out = {"n": int(present.size), "missing": int(v.size - present.size)}
    if present.empty:
        out.update(median=math.nan, q1=math.nan, q3=math.nan, summary="not available")
        return out
    q1, med, q3 = np.percentile(present.to_numpy(), [25, 50, 75])
    out.update(median=float(med), q1=float(q1), q3=float(q3),
               summary=f"{med:.{decimals}f} [{q1:.{decimals}f}, {q3:.{decimals}f}]")
    return out


def _count_row(n: int, missing: int, summary: str) -> dict:
    return {"summary": summary, "n": int(n), "missing": int(missing), "median": math.nan, "q1": math.nan,
            "q3": math.nan}


def _column(frame: pd.DataFrame | None, column: str, index: pd.Index) -> pd.Series:
    if frame is None or column not in frame.columns:
        return pd.Series([math.nan] * len(index), index=index, dtype=object)
    return frame[column].reindex(index)


def _categories(values: pd.Series) -> tuple[str, int]:
    present = values.dropna()
    if present.empty:
        return "not available", 0
    counts = present.value_counts()
    parts = [f"{k}: {v} ({100 * v / present.size:.0f} %)" for k, v in counts.items()]
    return "; ".join(parts), int(present.size)


def read_clinical(data_dir: str | os.PathLike) -> tuple[pd.DataFrame | None, list[str]]:
    """The cohort's clinical table for the cohort table, and notes on how it was read.

    Uses :func:`sscild.analysis.clinical.load_clinical` (the Clinical chapter's reading: FEV1/FVC as a ratio,
    unusable values missing), so both chapters describe the same numbers. A missing or unreadable
    table gives ``None`` and a note instead of an error: validation has already reported it, and the
    cohort table then shows the clinical rows as missing.

    Returns:
        ``(table or None, notes)``.
    """
    from sscild.analysis.clinical import load_clinical

    try:
        table = load_clinical(data_dir)
    except FileNotFoundError:
        return None, ["there is no clinical.csv: demographics and lung function are not available"]
    except ValueError as exc:
        return None, [f"clinical.csv cannot be used ({exc})"]
    return table, list(table.attrs.get("notes", [])) + list(table.attrs.get("problems", []))


def table_one(cases: pd.DataFrame, clinical: pd.DataFrame | None = None) -> pd.DataFrame:
    """The cohort table: patients, scanner geometry, reference lesion burden and lung function.

    Args:
        cases: one row per included case, as returned by :func:`sscild.data.cache.build_cache`
            (``case_id``, ``orig_n{x,y,z}``, ``orig_sp{x,y,z}``, ``lung_ml``, ``ef_ml``, ``ggo_ml``,
            ``lesion_ml``, ``ef_pct``, ``ggo_pct``, ``lesion_pct``).
        clinical: the clinical table indexed by ``case_id`` (e.g. :func:`sscild.analysis.clinical.load_clinical`),
            with ``age``, ``sex`` (F/M) and the :data:`PFT_COLUMNS` where known; FEV1/FVC as a ratio.
            A case without a row, a column that is absent, or ``None`` all count as missing.

    Returns:
        DataFrame indexed by (``group``, ``characteristic``) with ``summary`` (median [IQR], or
        counts with percentages for categories), ``n`` (patients with a value), ``missing`` and the
        numbers ``median``, ``q1``, ``q3`` (NaN for categories).

    Raises:
        ValueError: ``cases`` has no ``case_id`` column or repeats a case.

    Example:
        >>> t = table_one(cases, load_clinical(data_dir))   # doctest: +SKIP
        >>> t.loc[("Lung function", "FVC (% predicted)"), "missing"]   # doctest: +SKIP
        2
    """
    if "case_id" not in cases.columns:
        raise ValueError("table_one: `cases` needs a case_id column (the table build_cache returns).")
    ids = cases["case_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"table_one: case(s) {sorted(set(ids[ids.duplicated()]))} appear twice in `cases`.")
    index = pd.Index(ids, name="case_id")
    per_case = cases.assign(case_id=ids).set_index("case_id")
    if clinical is not None:
        clinical = clinical.copy()
        clinical.index = clinical.index.astype(str)
    rows: dict[tuple[str, str], dict] = {}
    n = len(index)
    rows[("Patients", "Patients (n)")] = _count_row(n, 0, str(n))
    sex = _column(clinical, "sex", index).map(lambda s: s if s in ("F", "M") else None)
    present = sex.dropna()
    if present.empty:
        rows[("Patients", "Female, n (%)")] = _count_row(0, n, "not available")
    else:
        k = int((present == "F").sum())
        rows[("Patients", "Female, n (%)")] = _count_row(present.size, n - present.size,
                                                         f"{k} ({100 * k / present.size:.0f} %)")
    rows[("Patients", "Age (years)")] = summarise(_column(clinical, "age", index), decimals=0)

    geo = "Scanner geometry"
    spx = pd.to_numeric(_column(per_case, "orig_spx", index), errors="coerce")
    spy = pd.to_numeric(_column(per_case, "orig_spy", index), errors="coerce")
    rows[(geo, "In-plane pixel spacing (mm)")] = summarise((spx + spy) / 2, decimals=2)
    rows[(geo, "Slice spacing (mm)")] = summarise(_column(per_case, "orig_spz", index), decimals=2)
    nx, ny = _column(per_case, "orig_nx", index), _column(per_case, "orig_ny", index)
    matrix = pd.Series([f"{int(a)} x {int(b)}" if pd.notna(a) and pd.notna(b) else None for a, b in zip(nx, ny)],
                       index=index, dtype=object)
    text, k = _categories(matrix)
    rows[(geo, "In-plane matrix (voxels)")] = _count_row(k, n - k, text)
    rows[(geo, "Slices (n)")] = summarise(_column(per_case, "orig_nz", index), decimals=0)

    vol = "Lung and lesions (reference labels)"
    for col, name, nd in _VOLUME_ROWS:
        rows[(vol, name)] = summarise(_column(per_case, col, index), decimals=nd)

    for col, (name, unit, nd) in PFT_COLUMNS.items():
        rows[("Lung function", f"{name} ({unit})")] = summarise(_column(clinical, col, index), decimals=nd)

    out = pd.DataFrame.from_dict(rows, orient="index")[_TABLE_COLUMNS]
    out.index = pd.MultiIndex.from_tuples(out.index, names=["group", "characteristic"])
    out["n"] = out["n"].astype(int)
    out["missing"] = out["missing"].astype(int)
    return out


def geometry_table(cases: pd.DataFrame) -> pd.DataFrame:
    """Voxel grids before and after preprocessing: median [min, max] over the cases.

    Args:
        cases: the table from :func:`sscild.data.cache.build_cache` (``orig_*`` and ``pre_*``
            shapes and spacings).

    Returns:
        DataFrame indexed by quantity (pixel spacing, slice spacing, matrix x / y, slices) with
        columns ``as acquired`` and ``preprocessed``.

    Example:
        >>> geometry_table(cases)   # doctest: +SKIP
    """
    def fmt(v, nd):
        v = pd.to_numeric(v, errors="coerce").dropna()
        if v.empty:
            return "not available"
        med, lo, hi = np.median(v), v.min(), v.max()
        return f"{med:.{nd}f}" if lo == hi else f"{med:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"

    rows = {}
    for name, col, nd in (("pixel spacing x (mm)", "spx", 2), ("pixel spacing y (mm)", "spy", 2),
                          ("slice spacing (mm)", "spz", 2), ("matrix x (voxels)", "nx", 0),
                          ("matrix y (voxels)", "ny", 0), ("slices (n)", "nz", 0)):
        rows[name] = {"as acquired": fmt(cases.get(f"orig_{col}", pd.Series(dtype=float)), nd),
                      "preprocessed": fmt(cases.get(f"pre_{col}", pd.Series(dtype=float)), nd)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("median [min, max]")


# --------------------------------------------------------------------------------------------
# validation outcome
# --------------------------------------------------------------------------------------------


def _reason(p) -> str:
    where = f" ({p.file})" if p.file else ""
    return f"{p.kind}{where}: {p.message}"


def exclusions(report) -> pd.DataFrame:
    """Every excluded (unusable) case and why: one row per case.

    A case is excluded when validation found at least one error for it; a folder-level error (no
    ``dataset.json``, label names without a role, ...) excludes every case. Warnings never exclude.

    Args:
        report: a :class:`sscild.data.validation_report.ValidationReport`.

    Returns:
        DataFrame with ``case_id``, ``errors`` (count), ``reasons`` and ``fix`` (``"; "``-joined),
        sorted by case id; empty (same columns) when nothing is excluded.

    Example:
        >>> exclusions(validate_cohort(root))   # doctest: +SKIP
    """
    cols = ["case_id", "errors", "reasons", "fix"]
    folder = report.folder_errors
    rows = []
    for case in report.bad_cases:
        errs = [p for p in report.errors if p.case_id == case] + list(folder)
        rows.append({"case_id": case, "errors": len(errs),
                     "reasons": "; ".join(_reason(p) for p in errs),
                     "fix": "; ".join(dict.fromkeys(p.fix for p in errs))})
    return pd.DataFrame(rows, columns=cols)


def problem_summary(report) -> pd.DataFrame:
    """Problems counted by severity and kind, with the kind's description and the cases concerned.

    Returns:
        DataFrame indexed by (``severity``, ``kind``) with ``problems``, ``cases`` (ids, or
        ``"cohort"`` for folder-level problems) and ``what``; empty when there is no problem.
    """
    from sscild.data.validation_report import PROBLEM_KINDS

    cols = ["problems", "cases", "what"]
    if not report.problems:
        return pd.DataFrame(columns=cols, index=pd.MultiIndex.from_tuples([], names=["severity", "kind"]))
    rows: dict[tuple[str, str], dict] = {}
    for p in sorted(report.problems, key=lambda q: (q.severity != "error", q.kind)):
        r = rows.setdefault((p.severity, p.kind), {"problems": 0, "cases": [], "what": PROBLEM_KINDS.get(p.kind, "")})
        r["problems"] += 1
        who = p.case_id or "cohort"
        if who not in r["cases"]:
            r["cases"].append(who)
    for r in rows.values():
        ids = r["cases"]
        r["cases"] = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    out = pd.DataFrame.from_dict(rows, orient="index")[cols]
    out.index = pd.MultiIndex.from_tuples(out.index, names=["severity", "kind"])
    return out


def problem_rows(report, *, limit: int = 30) -> tuple[pd.DataFrame, int]:
    """The problems themselves, errors first, at most ``limit`` rows.

    Returns:
        ``(table, n_not_shown)``: the table has ``severity``, ``case_id``, ``file``, ``kind``,
        ``message`` and ``fix``; ``n_not_shown`` counts the rows left out (all are in
        ``validation.json``).
    """
    frame = report.to_frame()
    if frame.empty:
        return frame, 0
    frame = frame.assign(_o=(frame["severity"] != "error").astype(int)).sort_values(
        ["_o", "case_id", "kind"], na_position="first", kind="stable").drop(columns="_o")
    frame["case_id"] = frame["case_id"].fillna("(cohort)")
    frame["file"] = frame["file"].fillna("")
    return frame.head(limit).reset_index(drop=True), max(0, len(frame) - limit)


def validation_record(report, *, label_map: dict | None = None) -> dict:
    """What ``validation.json`` holds: the report, the exclusion policy and every exclusion.

    Args:
        report: a :class:`sscild.data.validation_report.ValidationReport`.
        label_map: the label map validation used (recorded as given).

    Returns:
        ``report.to_dict()`` plus ``policy``, ``label_map``, ``included`` and ``excluded`` (a list of
        ``{"case_id", "reasons": [...], "fix": [...]}``).
    """
    out = report.to_dict()
    out["policy"] = ("strict: a case with at least one validation error is excluded from every later step; "
                     "warnings are reported and the case is kept")
    out["label_map"] = dict(label_map) if label_map else None
    out["included"] = list(report.usable_cases)
    folder = report.folder_errors
    out["excluded"] = [
        {"case_id": c,
         "reasons": [_reason(p) for p in [q for q in report.errors if q.case_id == c] + list(folder)],
         "fix": list(dict.fromkeys(p.fix for p in [q for q in report.errors if q.case_id == c] + list(folder)))}
        for c in report.bad_cases]
    return out


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------

_EXAMPLE_LABELS = {"background": 0, "lung": 1, "reticulation": 2, "honeycombing": 3,
                   "traction_bronchiectasis": 4, "ground_glass": 5, "consolidation": 6}
_EXAMPLE_MAP = {"reticulation": "ef", "honeycombing": "ef", "traction_bronchiectasis": "ef",
                "consolidation": "ggo"}


def label_map_example(labels: Mapping[str, int] | None = None, label_map: Mapping | None = None) -> pd.DataFrame:
    """How :func:`sscild.data.labels.resolve_label_map` maps a ``dataset.json`` label scheme to the roles.

    The default example is a scheme that draws EF's components separately and has a consolidation
    class, mapped with ``{"reticulation": "ef", "honeycombing": "ef", "traction_bronchiectasis": "ef",
    "consolidation": "ggo"}``.

    Returns:
        DataFrame with ``label name``, ``value in the files``, ``given role by`` (``label map`` or
        ``its name``) and ``study role`` (name and value).

    Raises:
        ValueError: the scheme cannot be mapped (the message lists every problem and its fix).

    Example:
        >>> label_map_example()["study role"].tolist()[:3]
        ['background (0)', 'normal (1)', 'ef (2)']
    """
    from sscild.data.labels import resolve_label_map
    from sscild.data.names import normalise_name as _norm

    labels = dict(_EXAMPLE_LABELS if labels is None else labels)
    label_map = dict(_EXAMPLE_MAP if label_map is None and labels == _EXAMPLE_LABELS else (label_map or {}))
    mapping, problems = resolve_label_map(labels, label_map)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ValueError("label map example cannot be resolved: "
                         + " ".join(f"{p.message} Fix: {p.fix}" for p in errors))
    role_name = {v: k for k, v in LABELS.items()}
    mapped = {_norm(k) for k in label_map}
    rows = []
    for name, value in labels.items():
        role = mapping[int(value)]
        rows.append({"label name": name, "value in the files": int(value),
                     "given role by": "label map" if _norm(name) in mapped else "its name",
                     "study role": f"{role_name[role]} ({role})"})
    return pd.DataFrame(rows)




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


def canonical(volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A :class:`sscild.data.image.Volume`'s array in the closest canonical RAS orientation, and its spacing.

    Only axis permutations and flips (nibabel orientations); no interpolation.
    """
    from nibabel import orientations as nio

    affine = np.asarray(volume.affine, float)
    ornt = nio.io_orientation(affine)
    arr = nio.apply_orientation(np.asarray(volume.array), ornt)
    can = affine @ nio.inv_ornt_aff(ornt, np.asarray(volume.array).shape)
    spacing = tuple(float(v) for v in np.sqrt((can[:3, :3] ** 2).sum(axis=0)))
    return arr, spacing


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
        ``ef_pct``, ``ggo_pct`` and ``lesion_pct`` of the whole label map.
    """
    from sscild.data.cohort import read_case
    from sscild.data.image import Volume

    vol, roles = read_case(cohort, case_id)
    hu, spacing = canonical(vol)
    if roles is None:
        raise ValueError(f"case {case_id}: has no label map, so it cannot be shown with its labels.")
    lab, _ = canonical(Volume(roles, vol.affine))
    lesion = (lab == LABELS["ef"]) | (lab == LABELS["ggo"])
    lung = int((lab > 0).sum())

    def pct(mask):
        return 100.0 * int(mask.sum()) / lung if lung else math.nan

    return {"case_id": str(case_id), "hu": hu, "label": lab, "spacing": spacing,
            "axial": pick_slice(lab, "axial", min_lung_share=min_lung_share),
            "coronal": pick_slice(lab, "coronal", min_lung_share=min_lung_share),
            "ef_pct": pct(lab == LABELS["ef"]), "ggo_pct": pct(lab == LABELS["ggo"]), "lesion_pct": pct(lesion)}


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------


def fold_table(splits: Sequence[Mapping], cases: pd.DataFrame, *, column: str = "lesion_pct") -> pd.DataFrame:
    """One row per held-out case: ``case_id``, ``fold`` (the fold that holds it out) and ``column``.

    Raises:
        ValueError: a case of the splits is not in ``cases``.
    """
    from sscild.data.folds import fold_of

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


# --------------------------------------------------------------------------------------------
# the synthetic cohort's planted model
# --------------------------------------------------------------------------------------------

_PFT_NAMES = {k: f"{v[0]} ({'percent' if k == 'fev1_fvc' else v[1]})" for k, v in PFT_COLUMNS.items()}


def clinical_model_table(model: Mapping) -> pd.DataFrame:
    """The planted lung-function model (``sscild.synthetic.phantom.CLINICAL_MODEL``) as a table.

    Returns:
        DataFrame indexed by lung-function name with ``planted equation``, ``noise SD``,
        ``clipped to`` and ``missing (share)`` (blank where the model says nothing).
    """
    clip = model.get("clip", {}) or {}
    missing = model.get("missing", {}) or {}
    rows = {}
    for key, spec in model.items():
        if not (isinstance(spec, Mapping) and "equation" in spec):
            continue
        miss = missing.get(key)
        if miss is None and key.startswith("fev1"):
            miss = next((v for k, v in missing.items() if "spirometry" in k or k.startswith("fev1")), None)
        lo_hi = clip.get(key)
        rows[_PFT_NAMES.get(key, key)] = {
            "planted equation": spec["equation"],
            "noise SD": spec.get("noise_sd", ""),
            "clipped to": f"{lo_hi[0]:g} to {lo_hi[1]:g}" if lo_hi else "",
            "missing (share)": f"{100 * miss:.0f} %" if isinstance(miss, (int, float)) else "",
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("lung function")


def population_table(model: Mapping) -> pd.DataFrame:
    """The generator's population settings (``CLINICAL_MODEL["population"]``) and other scalars."""
    pop = dict(model.get("population", {}) or {})
    for key, value in model.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            pop[key] = value
    return pd.DataFrame({"rule": {k.replace("_", " "): str(v) for k, v in pop.items()}}).rename_axis("setting")


# --------------------------------------------------------------------------------------------
# phantom against real CT
# --------------------------------------------------------------------------------------------


def real_ct_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """The real chest CT samples ``chest-ct-*.nrrd`` (default ``../shared/data/real-ct`` beside the
    checkout); an empty list when the folder is absent."""
    from sscild.paths import repo_root

    folder = Path(folder) if folder is not None else repo_root().parent / "shared" / "data" / "real-ct"
    return sorted(folder.glob("chest-ct-*.nrrd")) if folder.is_dir() else []


def resample_inplane(hu: np.ndarray, spacing, pixel_mm: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample a volume in-plane to square pixels of ``pixel_mm`` (slices unchanged).

    Downsampling first smooths with a Gaussian matched to the size ratio (so each new pixel averages
    the area it covers, like a coarser detector), then interpolates linearly. A volume already at
    ``pixel_mm`` (within 2 %) is returned as it is.

    Returns:
        ``(hu, spacing)``: int16 HU and the new (x, y, z) spacing.
    """
    from scipy import ndimage as ndi

    sx, sy, sz = (float(v) for v in spacing)
    fx, fy = sx / pixel_mm, sy / pixel_mm
    if abs(fx - 1) < 0.02 and abs(fy - 1) < 0.02:
        return np.asarray(hu), (sx, sy, sz)
    x = np.asarray(hu, np.float32)
    sigma = tuple(0.42 / f if f < 1 else 0.0 for f in (fx, fy)) + (0.0,)
    if any(sigma):
        x = ndi.gaussian_filter(x, sigma)
    x = ndi.zoom(x, (fx, fy, 1.0), order=1, grid_mode=False)
    return np.rint(x).astype(np.int16), (float(pixel_mm), float(pixel_mm), sz)


def load_real_ct(path: str | os.PathLike, *, pixel_mm: float | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real CT scan in RAS order, resampled in-plane to ``pixel_mm`` when its pixels are finer.

    Returns:
        ``(hu, spacing)``.

    Example:
        >>> hu, sp = load_real_ct(real_ct_files()[0], pixel_mm=1.4)   # doctest: +SKIP
    """
    from sscild.data.image import load_volume

    hu, sp = canonical(load_volume(path))
    if pixel_mm is not None and min(sp[:2]) < float(pixel_mm) * 0.98:
        hu, sp = resample_inplane(hu, sp, float(pixel_mm))
    return hu, sp


def parenchyma_comparison(scans: Sequence[tuple[str, str, np.ndarray, Sequence[float]]], *,
                          pixel_mm: float | None = None) -> pd.DataFrame:
    """Lung attenuation of several scans, measured the same way on each.

    Each scan's lungs are found by thresholding (:func:`sscild.synthetic.phantom.lung_mask_by_threshold`, no
    labels needed) and summarised by :func:`sscild.synthetic.phantom.parenchyma_stats`. With ``pixel_mm``,
    scans with finer pixels are first resampled in-plane to it (:func:`resample_inplane`), so that
    partial volume, which decides how many voxels of small vessels exceed -500 HU, is alike.

    Args:
        scans: ``(name, kind, hu, spacing)`` per scan, ``hu`` (x, y, z) in RAS order.
        pixel_mm: common in-plane pixel size, or ``None`` to measure each at its own.

    Returns:
        DataFrame indexed by ``scan`` with ``kind``, ``pixel (mm)``, ``slice (mm)``, ``lung (mL)``,
        ``median HU``, ``IQR HU`` and ``voxels above -500 HU (%)``.
    """
    from sscild.data.lungmask import lung_mask_by_threshold, parenchyma_stats

    rows = []
    for name, kind, hu, sp in scans:
        sp = tuple(float(v) for v in sp)
        if pixel_mm is not None and min(sp[:2]) < pixel_mm * 0.98:
            hu, sp = resample_inplane(hu, sp, pixel_mm)
        mask = lung_mask_by_threshold(hu, sp)
        st = parenchyma_stats(hu, mask)
        rows.append({"scan": name, "kind": kind, "pixel (mm)": f"{sp[0]:.2f}", "slice (mm)": f"{sp[2]:.2f}",
                     "lung (mL)": st["n_voxels"] * float(np.prod(sp)) / 1000.0, "median HU": st["median_hu"],
                     "IQR HU": st["iqr_hu"], "voxels above -500 HU (%)": 100.0 * st["vessel_fraction"]})
    return pd.DataFrame(rows).set_index("scan")


# --------------------------------------------------------------------------------------------
# glued numbers
# --------------------------------------------------------------------------------------------


def key_numbers(report, cases: pd.DataFrame) -> dict:
    """The numbers the book quotes: cases found, included and excluded, and lesion extent.

    Returns:
        dict ``n_found``, ``n_included``, ``n_excluded``, ``lesion_pct_median``, ``lesion_pct_q1``,
        ``lesion_pct_q3``, ``ef_pct_median``, ``ggo_pct_median`` (percent of lung, reference labels,
        included cases).
    """
    out = {"n_found": len(report.cases), "n_included": int(len(cases)), "n_excluded": len(report.bad_cases)}
    for col in ("lesion_pct", "ef_pct", "ggo_pct"):
        s = summarise(cases[col] if col in cases.columns else [])
        out[f"{col}_median"] = s["median"]
        if col == "lesion_pct":
            out["lesion_pct_q1"], out["lesion_pct_q3"] = s["q1"], s["q3"]
    return out
