"""The cohort's clinical table (``clinical.csv``) as the chapters use it.

Both the Data chapter (the cohort table) and the Clinical chapter (the correlations) read the table
through :func:`load_clinical`, which is :func:`sscild.data.clinical_table.parse_clinical`: the rules
of the cohort validator, written once (identifiers stripped, numbers and their plausible ranges,
sex as ``"F"``/``"M"``, FEV1/FVC as a ratio). Values and rows the parser sets aside are missing here
and listed in ``attrs["problems"]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sscild.data.clinical_table import parse_clinical

__all__ = ["load_clinical"]


def load_clinical(data_dir: str | os.PathLike, *, strict: bool = False,
                  case_ids: list[str] | None = None) -> pd.DataFrame:
    """The cohort's clinical table, indexed by ``case_id``, known columns as numbers (sex as F/M).

    Args:
        data_dir: the cohort folder (only read).
        strict: raise on any clinical gap (a value or row set aside) instead of listing it.
        case_ids: the cohort's cases (rows of other ids, and cases without a row, are then gaps);
            ``None``: the table's own ids.

    Returns:
        DataFrame indexed by ``case_id``; ``attrs["problems"]`` lists every clinical gap in words
        and ``attrs["notes"]`` is empty (no value is ever converted).

    Raises:
        FileNotFoundError: no ``clinical.csv`` in the folder.
        ValueError: unreadable table or no ``case_id`` column; with ``strict``, every gap at once.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "clinical.csv").write_text("case_id,sex,fev1_fvc\\nc1,female,0.7\\nc2,M,70\\n")
        >>> table = load_clinical(root)
        >>> table["sex"].tolist(), table["fev1_fvc"].tolist()
        (['F', 'M'], [0.7, nan])
        >>> len(table.attrs["problems"])
        1
    """
    path = Path(data_dir) / "clinical.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no clinical table. The Clinical chapter needs <cohort>/clinical.csv with columns "
            "case_id, age, sex, height_cm, fvc_pct, fev1_pct, fev1_fvc, dlco_pct (missing values left empty)."
        )
    parsed = parse_clinical(path, case_ids)
    unreadable = [p for p in parsed.problems if p.kind == "clinical_unreadable"]
    if unreadable:
        raise ValueError(f"{path}: {unreadable[0].message} Fix: {unreadable[0].fix}")
    gaps = parsed.gaps
    if gaps and strict:
        raise ValueError(f"{path}: " + " ".join(p.message for p in gaps) + " Fix these rows of the clinical "
                         "table and re-run.")
    table = parsed.frame
    table.attrs["problems"] = [p.message for p in gaps]
    table.attrs["notes"] = []
    return table
