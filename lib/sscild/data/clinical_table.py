"""The clinical table of a cohort folder (``clinical.csv``): the one parser every reader uses.

:func:`parse_clinical` reads the table once, with one set of rules, and returns the values and the
problems (:class:`ClinicalTable`). The cohort validator (:func:`read_clinical`), the chapters
(:func:`sscild.analysis.clinical.load_clinical`) and the DICOM import (:func:`read_cells`) all go
through this module, so a value means the same everywhere.

**The rules, decided once.**

* Only ``case_id`` is required; the known columns (:data:`CLINICAL_COLUMNS`) are optional and
  checked when present; other columns are kept (numeric when at least half their values are
  numbers). Column names match after :func:`sscild.data.names.normalise_name`.
* Blank, ``NA``, ``n/a``, ``nan``, ``none``, ``null``, ``-``, ``?``, ``.`` and ``missing`` are missing
  values (any letter case).
* ``sex``: ``F``/``female``/``woman``/``w`` or ``M``/``male``/``man`` in any letter case.
* A number must lie in its column's plausible range: ``fev1_fvc`` is a **ratio** (0.2 to 1.2); a
  value given in percent (75) is outside it and set aside, never silently divided by 100. Columns
  named like a lung-function percent of predicted (``kco_pct``, ``vc_pred``, ...) take 10 to 200;
  a column whose name says it is a volume must not be negative.
* A case with several rows keeps none of them; a row without a case id is not used.

**Clinical gaps.** A problem that changes what the study uses -- a value set aside (not a number,
implausible), a row not used (duplicate, no case id, no image for it), a case without a row, no
usable table -- is a *clinical gap* (:data:`CLINICAL_GAPS`). It does not make a case unusable for
segmentation (it is a warning in the validation report), but ``sscild validate`` exits with
:data:`EXIT_CLINICAL_VALUES` or :data:`EXIT_CLINICAL_ROWS` and ``make all`` stops on it, naming
case and fix, unless the user allows gaps (``--allow-clinical-gaps``, ``make ALLOW_CLINICAL_GAPS=1``);
the Data chapter then lists every value set aside. A blank value is not a gap: it is missing, and
says so.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "clinical.csv").write_text("case_id,age,fvc_pct,fev1_fvc\\nc1,61,85,0.8\\nc2,58,850,75\\n")
    >>> table = parse_clinical(root / "clinical.csv", ["c1", "c2"])
    >>> table.frame["fvc_pct"].tolist(), table.frame["fev1_fvc"].tolist()
    ([85.0, nan], [0.8, nan])
    >>> [p.kind for p in table.gaps]
    ['clinical_implausible', 'clinical_implausible']
    >>> table.exit_code()
    3
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sscild.data.names import normalise_name
from sscild.data.validation_report import Problem, ValidationReport

__all__ = ["CLINICAL_COLUMNS", "CLINICAL_VALUE_GAPS", "CLINICAL_ROW_GAPS", "CLINICAL_GAPS", "EXIT_CLINICAL_VALUES",
           "EXIT_CLINICAL_ROWS", "ClinicalTable", "parse_clinical", "set_aside_table", "exit_code_of", "read_clinical", "read_cells"]

CLINICAL_VALUE_GAPS = ("clinical_non_numeric", "clinical_implausible")
"""Problem kinds by which a value is set aside (read as missing)."""
CLINICAL_ROW_GAPS = ("clinical_missing", "clinical_unreadable", "clinical_duplicate_row", "clinical_no_case_id",
                     "clinical_without_image", "clinical_missing_row")
"""Problem kinds by which a row, a case or the whole table is left out."""
CLINICAL_GAPS = CLINICAL_VALUE_GAPS + CLINICAL_ROW_GAPS
"""Every problem kind that changes what the lung-function analysis uses."""
EXIT_CLINICAL_VALUES = 3
"""Exit status of ``sscild validate`` when clinical values were set aside (and no row problem)."""
EXIT_CLINICAL_ROWS = 4
"""Exit status of ``sscild validate`` when clinical rows, cases or the table are left out."""

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

_MISSING = {"", "na", "n/a", "nan", "none", "null", "-", "?", ".", "missing"}
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
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
        raw = read_cells(path)
    except ValueError as exc:
        cause = exc.__cause__
        report.add(None, "clinical.csv", "clinical_unreadable",
                   f"clinical.csv cannot be read as CSV ({type(cause).__name__}: {cause}).",
                   "save it as comma-separated text with one header row.", "warning")
        return None
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
    no_id = raw.index[raw["case_id"] == ""].tolist()
    if no_id:
        report.add(None, "clinical.csv", "clinical_no_case_id",
                   f"clinical.csv row(s) {', '.join(str(i + 2) for i in no_id)} (line numbers) have no case_id; "
                   "they are not used.", "fill in the case_id (as in imagesTr) or remove the row(s).", "warning")
        raw = raw[raw["case_id"] != ""]
    counts = raw["case_id"].value_counts()
    for cid in sorted(counts[counts > 1].index):
        report.add(cid, "clinical.csv", "clinical_duplicate_row",
                   f"clinical.csv has {counts[cid]} rows for case {cid}; none of them is used.",
                   "keep exactly one row per case.", "warning")
    raw = raw[raw["case_id"].map(counts) == 1]
    for cid in sorted(set(raw["case_id"]) - known):
        if cid:  # always: rows without a case id were removed above
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


def _parse_frame(raw: pd.DataFrame, case_ids: list[str], report: ValidationReport) -> pd.DataFrame:
    """The checked rows as values, indexed by case_id over ``case_ids``."""
    known = set(case_ids)
    raw = raw.set_index("case_id")
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
    frame = pd.DataFrame(out, index=pd.Index(case_ids, name="case_id")) if out else \
        pd.DataFrame(index=pd.Index(case_ids, name="case_id"))
    frame.index.name = "case_id"
    return frame


@dataclass
class ClinicalTable:
    """A parsed ``clinical.csv``: the values (``frame``, indexed by ``case_id``; set-aside and blank
    values NaN) and every problem found (:class:`~sscild.data.validation_report.Problem`, all warnings)."""

    frame: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)

    @property
    def gaps(self) -> list[Problem]:
        """The problems that change what the study uses (:data:`CLINICAL_GAPS`)."""
        return [p for p in self.problems if p.kind in CLINICAL_GAPS]

    def set_aside(self) -> pd.DataFrame:
        """One row per clinical gap (:func:`set_aside_table`)."""
        return set_aside_table(self.problems)

    def exit_code(self) -> int:
        """0 without gaps; :data:`EXIT_CLINICAL_ROWS` when a row, case or the table is left out,
        else :data:`EXIT_CLINICAL_VALUES` when values were set aside."""
        return exit_code_of(self.problems)


def set_aside_table(problems) -> pd.DataFrame:
    """The clinical gaps among ``problems``, one row each: ``case_id`` (``(table)`` for the whole
    table), ``kind``, ``what`` (the value, row or table and why) and ``fix``."""
    rows = [{"case_id": p.case_id or "(table)", "kind": p.kind, "what": p.message, "fix": p.fix}
            for p in problems if p.kind in CLINICAL_GAPS]
    return pd.DataFrame(rows, columns=["case_id", "kind", "what", "fix"])


def exit_code_of(problems) -> int:
    """The clinical exit status of a list of problems (see :meth:`ClinicalTable.exit_code`)."""
    kinds = {p.kind for p in problems}
    if kinds & set(CLINICAL_ROW_GAPS):
        return EXIT_CLINICAL_ROWS
    if kinds & set(CLINICAL_VALUE_GAPS):
        return EXIT_CLINICAL_VALUES
    return 0


def parse_clinical(path: str | Path, case_ids: list[str] | None = None) -> ClinicalTable:
    """Parse ``clinical.csv`` at ``path`` with the rules of this module.

    Args:
        path: the table (usually ``<cohort>/clinical.csv``).
        case_ids: the cohort's cases; the frame has one row per case, and rows of other ids and
            cases without a row are clinical gaps. ``None``: the table's own ids (no such check).
    """
    path = Path(path)
    report = ValidationReport(root=path.parent)
    raw = _read_table(path, report)
    if raw is None:
        return ClinicalTable(pd.DataFrame(index=pd.Index(list(case_ids or []), name="case_id")), report.problems)
    if case_ids is None:
        counts = raw["case_id"].value_counts()
        case_ids = sorted(c for c in counts.index if c and counts[c] == 1)
    raw = _check_rows(raw, list(case_ids), report)
    return ClinicalTable(_parse_frame(raw, list(case_ids), report), report.problems)


def read_clinical(root: Path, case_ids: list[str], report: ValidationReport) -> pd.DataFrame:
    """:func:`parse_clinical` of ``root/clinical.csv`` for the validator: its problems are added to
    ``report``; returns the values indexed by case_id over ``case_ids``."""
    table = parse_clinical(Path(root) / "clinical.csv", case_ids)
    report.problems.extend(table.problems)
    return table.frame


def read_cells(path: str | Path) -> pd.DataFrame:
    """The table's cells as text, column names stripped (what the DICOM import copies into a new
    cohort, which is then validated with :func:`parse_clinical`).

    Raises:
        ValueError: the file cannot be read as CSV.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise ValueError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc}). Fix: save the clinical "
                         "table as comma-separated text with a header row.") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw
