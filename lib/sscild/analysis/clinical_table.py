"""The cohort's clinical table (``clinical.csv``) as numbers, read by the rules of the validator.

Both the Data chapter (the cohort table) and the Clinical chapter (the correlations) read the table
through :func:`load_clinical`, so they describe the same numbers: identifiers stripped, lung
function, age and height as floats, sex as ``"F"``/``"M"``, FEV1/FVC as a ratio; unusable values
become missing and are listed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sscild.analysis.clinical import OUTCOMES
from sscild.data.clinical_table import CLINICAL_COLUMNS

__all__ = ["load_clinical"]

_NUMERIC = ("age", "height_cm", *OUTCOMES)
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_NA = {"", "na", "n/a", "nan", "none", "null", "-", "?", ".", "missing"}


def _read_clinical_csv(path: Path, strict: bool) -> pd.DataFrame:
    """``clinical.csv`` as numbers; unusable values become NaN and are listed in ``attrs["problems"]``
    (or, with ``strict``, raised together in one ValueError)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise ValueError(
            f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc}). Fix: save the clinical table "
            "as comma-separated text with a header row."
        ) from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if "case_id" not in raw.columns:
        raise ValueError(
            f"{path}: no 'case_id' column (columns: {', '.join(raw.columns)}). Fix: name the column that "
            "holds the case identifiers (as in imagesTr/<case_id>_0000) 'case_id'."
        )
    raw["case_id"] = raw["case_id"].str.strip()
    problems, notes = [], []
    empty = raw.index[raw["case_id"] == ""].tolist()
    if empty:
        problems.append(f"row(s) {[i + 2 for i in empty]} have no case_id and are not used")
    raw = raw.loc[raw["case_id"] != ""]
    counts = raw["case_id"].value_counts()
    dup = sorted(counts.index[counts > 1])
    if dup:
        problems.append(f"case(s) {', '.join(dup)} have several rows; none of them is used")
    table = raw.loc[~raw["case_id"].isin(dup)].set_index("case_id")
    for col in _NUMERIC:
        if col not in table.columns:
            continue
        text = table[col].str.strip()
        missing = text.str.lower().isin(_NA)
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = values.isna() & ~missing
        if bad.any():
            cases = ", ".join(f"{c}={v!r}" for c, v in list(text[bad].items())[:8])
            problems.append(f"{col} is not a number for case(s) {cases}")
        if col == "fev1_fvc":
            pct = values > 1.5
            if pct.any():
                notes.append(f"FEV1/FVC given in percent for {int(pct.sum())} case(s); divided by 100 to a ratio")
                values = values.where(~pct, values / 100.0)
        lo, hi = CLINICAL_COLUMNS[col][1]
        out = values.notna() & ((values < lo) | (values > hi))
        if out.any():
            cases = ", ".join(f"{c}={v:g}" for c, v in list(values[out].items())[:8])
            problems.append(f"{col} outside the plausible range {lo:g}..{hi:g} "
                            f"({CLINICAL_COLUMNS[col][0]}) for case(s) {cases}")
            values = values.where(~out)
        table[col] = values.where(~bad).astype(float)
    if "sex" in table.columns:
        text = table["sex"].str.strip()
        missing = text.str.lower().isin(_NA)
        coded = text.str.lower().map(_SEX)
        bad = coded.isna() & ~missing
        if bad.any():
            cases = ", ".join(f"{c}={v!r}" for c, v in list(text[bad].items())[:8])
            problems.append(f"sex is neither F nor M for case(s) {cases}")
        table["sex"] = coded.where(~missing)
    if problems and strict:
        raise ValueError(f"{path}: " + "; ".join(problems) + ". Fix these rows of the clinical table and re-run.")
    table.index.name = "case_id"
    table.attrs["problems"] = [f"{p}: treated as missing" for p in problems]
    table.attrs["notes"] = notes
    return table


def load_clinical(data_dir: str | os.PathLike, *, strict: bool = False) -> pd.DataFrame:
    """The cohort's clinical table, indexed by ``case_id``, lung-function columns as numbers.

    Reads ``<data_dir>/clinical.csv`` with the rules of the cohort validator
    (:data:`sscild.data.cohort.CLINICAL_COLUMNS`): identifiers stripped of spaces; ``age``, ``height_cm``
    and the lung-function columns as floats, with empty, ``NA``, ``n/a``, ``-`` and similar as
    missing; ``sex`` as ``"F"``/``"M"`` (``female``/``male``, any case). FEV1/FVC is returned as a
    ratio: values above 1.5 are read as percent and divided by 100 (``attrs["notes"]`` says so).
    A value that is not a number, outside its plausible range, or an unknown sex code is set to
    missing; several rows for one case leave that case out. Each such problem is listed in
    ``attrs["problems"]`` (the Data chapter's validation reports the same ones); with ``strict``
    they are raised together instead. Other columns are kept as text. The folder is only read.

    Args:
        data_dir: the cohort folder.
        strict: raise on any problem instead of setting the value to missing.

    Returns:
        DataFrame indexed by ``case_id``.

    Raises:
        FileNotFoundError: no ``clinical.csv`` in the folder.
        ValueError: unreadable table or no ``case_id`` column; with ``strict``, every problem at once.
    """
    path = Path(data_dir) / "clinical.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no clinical table. The Clinical chapter needs <cohort>/clinical.csv with columns "
            "case_id, age, sex, height_cm, fvc_pct, fev1_pct, fev1_fvc, dlco_pct (missing values left empty)."
        )
    return _read_clinical_csv(path, strict)
