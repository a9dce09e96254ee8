"""The data stage, run once by make before any chapter or fold: validation, the cache, the folds.

Make calls it through the command line, in two steps, and the Data chapter only reads what they wrote:

1. :func:`validate_stage` (``sscild validate --record``): every problem of the cohort folder, written
   as ``validation.json`` (the report, the exclusion policy and each exclusion). Unlabelled scans
   and controls that pass it are what pretraining and the control check read.
2. :func:`prepare_stage` (``sscild prepare``): the usable cases preprocessed into the cache
   (:func:`sscild.data.cache.build_cache`), their table written as ``cases.csv`` (voxel grids before
   and after, reference volumes and extents, whether each entry was reused), and the patient-wise
   folds, stratified by reference lesion extent, written as ``splits.json``.

:func:`read_validation` and :func:`read_cases` give the chapters these records back;
:func:`validated_scans` the unlabelled scans and controls that passed validation.

Example::

    run = RunPaths.for_run("data/synthetic-cpu", "cpu")
    report = validate_stage("data/synthetic-cpu", run.validation)
    cases = prepare_stage("data/synthetic-cpu", run, get_profile("cpu"), progress=False)
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sscild.data.cache import build_cache
from sscild.data.cohort import load_cohort
from sscild.data.folds import make_splits, write_splits
from sscild.data.validate import validate_cohort
from sscild.data.validation_report import CONTROLS_DIR, UNLABELLED_DIR, ValidationReport, validation_record
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.profiles import Profile, require_profile

__all__ = ["validate_stage", "prepare_stage", "read_validation", "read_cases", "validated_scans"]


def validate_stage(data_dir: str | os.PathLike, record: str | os.PathLike, *,
                   label_map: dict | None = None) -> ValidationReport:
    """Validate the cohort folder and write the record (a run's ``validation.json``); returns the report."""
    report = validate_cohort(data_dir, label_map=label_map)
    write_json(record, validation_record(report, label_map=label_map))
    return report


def read_validation(run: RunPaths) -> tuple[ValidationReport, dict | None]:
    """The validation report and label map that :func:`validate_stage` recorded for this run."""
    if not run.validation.exists():
        raise FileNotFoundError(f"{run.validation} is missing: the cohort has not been validated for this run "
                                "(`make data`, or `sscild validate DATA --record <run>/validation.json`).")
    record = read_json(run.validation)
    return ValidationReport.from_dict(record), record.get("label_map")


def prepare_stage(data_dir: str | os.PathLike, run: RunPaths, profile: Profile, *,
                  progress: bool = True) -> pd.DataFrame:
    """Preprocess the usable cases into the cache and write ``cases.csv`` and ``splits.json``.

    Reads the exclusions and label map from the run's ``validation.json`` (:func:`validate_stage` first).

    Returns:
        the preprocessing table, one row per usable case (:func:`sscild.data.cache.build_cache`).

    Raises:
        ValueError: no usable case, or the validation was of another cohort folder.
    """
    prof = require_profile(profile)
    report, label_map = read_validation(run)
    if Path(report.root).resolve() != Path(data_dir).resolve():
        raise ValueError(f"{run.validation} is the validation of {report.root}, not of {data_dir}: validate this "
                         "cohort first (`make data`).")
    if not report.usable_cases:
        raise ValueError(f"No usable case in {data_dir}:\n{report.format()}\nFix the problems listed above and re-run.")
    cohort = load_cohort(data_dir, label_map=label_map, exclude=report.bad_cases)
    cases = build_cache(cohort, run, prof, progress=progress)
    with atomic_path(run.cases, suffix=".csv") as tmp:
        cases.to_csv(tmp, index=False)
    strata = dict(zip(cases["case_id"], cases["lesion_pct"].fillna(0.0)))
    write_splits(run.splits, make_splits(sorted(cases["case_id"]), strata=strata, k=prof.num_folds, seed=prof.seed))
    return cases


def read_cases(run: RunPaths) -> pd.DataFrame:
    """The preprocessing table :func:`prepare_stage` wrote (one row per usable case)."""
    if not run.cases.exists():
        raise FileNotFoundError(f"{run.cases} is missing: the cohort has not been prepared for this run "
                                "(`make data`, or `sscild prepare DATA --profile P`).")
    return pd.read_csv(run.cases, dtype={"case_id": str}, float_precision="round_trip")


_EXTRA_SCANS = {"unlabelled": ("unlabelledTr", UNLABELLED_DIR), "controls": ("controlsTs", CONTROLS_DIR)}


def validated_scans(run: RunPaths, kind: str) -> dict[str, Path]:
    """The run's cohort's unlabelled scans (``kind="unlabelled"``, ``unlabelledTr/``) or controls
    (``"controls"``, ``controlsTs/``) that validation found no error in, read from ``validation.json``
    (id -> file); ``{}`` when it is absent or the cohort has none."""
    folder, key = _EXTRA_SCANS[kind]
    if not run.validation.exists():
        return {}
    rec = read_json(run.validation)
    root = Path(rec.get("root", ""))
    if not (root / folder).is_dir():
        return {}
    bad = {str(q["case_id"]).split("/", 1)[1] for q in rec.get("problems", [])
           if q.get("severity") == "error" and str(q.get("case_id") or "").startswith(key + "/")}
    found = getattr(load_cohort(root, label_map=rec.get("label_map")), kind)
    return {u: f for u, f in found.items() if u not in bad}
