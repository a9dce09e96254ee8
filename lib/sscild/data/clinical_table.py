"""The clinical table of a cohort folder (``clinical.csv``), read and checked.

Only ``case_id`` is required; the known columns (:data:`CLINICAL_COLUMNS`) are optional but checked
when present, other columns are kept (numeric when their values are numbers). Problems are
warnings in the validation report (:class:`~sscild.data.validation_report.ValidationReport`): a
value that is not a number where one is expected, or outside its plausible range, is reported and
treated as missing (NaN), and so are all rows of a case that has several.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sscild.data.validation_report import ValidationReport
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "clinical.csv").write_text("case_id,age,fvc_pct\\nc1,61,85\\nc2,58,850\\n")
    >>> report = ValidationReport(root=root)
    >>> read_clinical(root, ["c1", "c2"], report)["fvc_pct"].tolist()
    [85.0, nan]
    >>> [p.kind for p in report.problems]
    ['clinical_implausible']
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from sscild.data.names import normalise_name
from sscild.data.validation_report import ValidationReport

__all__ = ["CLINICAL_COLUMNS", "read_clinical"]

CLINICAL_COLUMNS: dict[str, tuple[str, tuple, str]] = {
    "age": ("years", (5, 110), "age at the CT scan"),
    "sex": ("F/M", ("F", "M"), "sex (F or M)"),
    "height_cm": ("cm", (50, 250), "body height"),
    "weight_kg": ("kg", (20, 300), "body weight"),
    "fvc_pct": ("% predicted", (10, 200), "forced vital capacity"),
    "fev1_pct": ("% predicted", (10, 200), "forced expiratory volume in 1 s"),
    "fev1_fvc": ("ratio", (0.2, 1.2), "FEV1/FVC as a ratio (0.75, not 75 %)"),
    "dlco_pct": ("% predicted", (10, 200), "diffusing capacity for carbon monoxide"),
    "tlc_pct": ("% predicted", (10, 200), "total lung capacity"),
}
"""Known clinical columns: name -> (unit, plausible range or allowed values, description).

Only ``case_id`` is required in ``clinical.csv``; these columns are optional but validated when
present. Other columns are kept (numeric when their values are numbers); any column whose name says
it is a volume (``*volume*``, ``*_ml``, ``*_cm3``, ``*_l``) must not be negative.
"""

_MISSING = {"", "na", "n/a", "nan", "none", "null", "-", "?"}
_SEX = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}
_PFT_PCT = re.compile(r"^(fvc|fev1|dlco|tlc|kco|vc|rv|frc)_?(pct|pct_pred|pred|pctpred|percent)$")
_VOLUME = re.compile(r"(volume|_ml$|_cm3$|_l$|_cc$)")


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in _MISSING


def _to_float(v) -> float | None:
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x


def _read_table(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """clinical.csv as text cells with stripped column names and case ids, or None (reported) when unusable."""
    if not path.is_file():
        report.add(None, "clinical.csv", "clinical_missing",
                   "the cohort has no clinical.csv; the lung-function analysis cannot run.",
                   "add clinical.csv with a case_id column (and age, sex, fvc_pct, fev1_pct, fev1_fvc, "
                   "dlco_pct where known).", "warning")
        return None
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        report.add(None, "clinical.csv", "clinical_unreadable",
                   f"clinical.csv cannot be read as CSV ({type(exc).__name__}: {exc}).",
                   "save it as comma-separated text with one header row.", "warning")
        return None
    raw.columns = [str(c).strip() for c in raw.columns]
    if "case_id" not in raw.columns:
        report.add(None, "clinical.csv", "clinical_unreadable",
                   f"clinical.csv has no case_id column (columns: {', '.join(raw.columns)}).",
                   "name the column that holds the case ids (as in imagesTr) case_id.", "warning")
        return None
    raw["case_id"] = raw["case_id"].str.strip()
    return raw


def _check_rows(raw: pd.DataFrame, case_ids: list[str], report: ValidationReport) -> pd.DataFrame:
    """Report duplicated, unknown and missing rows; returns the rows of cases that have exactly one."""
    known = set(case_ids)
    counts = raw["case_id"].value_counts()
    for cid in sorted(counts[counts > 1].index):
        report.add(cid, "clinical.csv", "clinical_duplicate_row",
                   f"clinical.csv has {counts[cid]} rows for case {cid}; none of them is used.",
                   "keep exactly one row per case.", "warning")
    raw = raw[raw["case_id"].map(counts) == 1]
    for cid in sorted(set(raw["case_id"]) - known):
        if cid:
            report.add(cid, "clinical.csv", "clinical_without_image",
                       f"clinical.csv has a row for {cid}, but there is no image for that case.",
                       f"add imagesTr/{cid}_0000 (and its label), or fix the case id / remove the row.", "warning")
    dup = set(counts[counts > 1].index)
    for cid in case_ids:
        if cid not in set(raw["case_id"]) and cid not in dup:
            report.add(cid, "clinical.csv", "clinical_missing_row",
                       f"case {cid} has no row in clinical.csv; it is left out of the lung-function analysis.",
                       f"add a row with case_id {cid} and its clinical values.", "warning")
    return raw


def _parse_sex(col: str, values: pd.Series, known: set[str], report: ValidationReport) -> pd.Series:
    parsed = {}
    for cid, v in values.items():
        if _is_missing(v):
            continue
        s = _SEX.get(str(v).strip().lower())
        if s is None and cid in known:
            report.add(cid, "clinical.csv", "clinical_non_numeric",
                       f"{col} is {v!r} for case {cid}; expected F or M.",
                       "write F or M (or leave it blank if unknown).", "warning")
        parsed[cid] = s
    return pd.Series(parsed, dtype=object)


def _plausible_range(key: str, spec) -> tuple[float, float, str]:
    """(low, high, unit) a numeric column's values must lie in."""
    if spec is not None:
        lo, hi = spec[1]
        unit = spec[0]
    elif _PFT_PCT.match(key):
        lo, hi, unit = 10, 200, "% predicted"
    elif _VOLUME.search(key):
        lo, hi, unit = 0, math.inf, "volume"
    else:
        lo, hi, unit = -math.inf, math.inf, ""
    return lo, hi, unit


def _parse_numbers(col: str, key: str, spec, values: pd.Series, nums: dict, known: set[str],
                   report: ValidationReport) -> pd.Series:
    """The numbers of a numeric column; values that are not numbers or implausible are reported and left out."""
    lo, hi, unit = _plausible_range(key, spec)
    parsed = {}
    for cid, x in nums.items():
        v = values[cid]
        if x is None or not math.isfinite(x):
            if cid in known:
                report.add(cid, "clinical.csv", "clinical_non_numeric",
                           f"{col} is {v!r} for case {cid}; expected a number{f' ({unit})' if unit else ''}.",
                           "write a plain number (decimal point, no units), or leave it blank if unknown.",
                           "warning")
            continue
        if not lo <= x <= hi:
            if cid in known:
                what = "negative volume" if unit == "volume" else f"outside the plausible range {lo:g}..{hi:g}"
                fix = ("give FEV1/FVC as a ratio (e.g. 0.75), not a percent" if key == "fev1_fvc" else
                       "give % predicted (e.g. 85), not litres or a fraction" if unit == "% predicted" else
                       "check the value and its unit")
                report.add(cid, "clinical.csv", "clinical_implausible",
                           f"{col} = {v} for case {cid} is {what} ({unit}); it is treated as missing.",
                           fix + ".", "warning")
            continue
        parsed[cid] = x
    return pd.Series(parsed, dtype=float)


def read_clinical(root: Path, case_ids: list[str], report: ValidationReport) -> pd.DataFrame:
    """Read and check clinical.csv; return it indexed by case_id over ``case_ids`` (flagged values NaN).

    Every problem is added to ``report`` as a warning; a missing or unusable table gives a frame
    without columns.
    """
    empty = pd.DataFrame(index=pd.Index(case_ids, name="case_id"))
    raw = _read_table(root / "clinical.csv", report)
    if raw is None:
        return empty
    known = set(case_ids)
    raw = _check_rows(raw, case_ids, report).set_index("case_id")
    out = {}
    for col in raw.columns:
        values = raw[col]
        key = normalise_name(col)
        spec = CLINICAL_COLUMNS.get(key)
        if key == "sex" or (spec and spec[0] == "F/M"):
            out[col] = _parse_sex(col, values, known, report)
            continue
        nums = {cid: _to_float(v) for cid, v in values.items() if not _is_missing(v)}
        numeric_col = spec is not None or (nums and sum(x is not None for x in nums.values()) >= 0.5 * len(nums))
        if not numeric_col:
            out[col] = values.where(~values.map(_is_missing), None)
            continue
        out[col] = _parse_numbers(col, key, spec, values, nums, known, report)
        if spec is not None:
            for cid in case_ids:
                if cid in values.index and _is_missing(values[cid]):
                    report.add(cid, "clinical.csv", "clinical_missing_value",
                               f"{col} is blank for case {cid}; the case is left out of analyses of {col}.",
                               f"fill in {col} ({spec[0]}) if it is known.", "warning")
    frame = pd.DataFrame(out, index=pd.Index(case_ids, name="case_id")) if out else empty
    frame.index.name = "case_id"
    return frame
