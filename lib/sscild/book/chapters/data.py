"""The Data chapter: what make's data stage wrote, read back, and the chapter's tables and figures.

The chapter runs no stage itself: validation, the cache and the folds are make's data stage
(:mod:`sscild.data.prepare`), and :func:`read_stage` reads their records. The numbers come from
:mod:`sscild.analysis.data`; this module formats them for the page.

* :func:`read_stage`, :func:`builtin_changes`, :func:`unlabelled_sentence`: the run's validated and
  preprocessed cohort, whether the built-in cohort is still the current generator's, the unlabelled scans.

* :func:`summarise`, :func:`table_one`, :func:`geometry_table`: a paper-style cohort table,
  continuous values as median [interquartile range] with the number of patients who have the value
  and the number missing; the voxel grids before and after preprocessing.
* :func:`problem_summary`, :func:`problem_rows`: what validation found.
* :func:`label_map_example`: mapping another annotation scheme onto the study's roles.
* :func:`clinical_model_table`, :func:`population_table`: the synthetic generator's planted model
  (:func:`planted_model`, passed in).
* :func:`example_gallery`, :func:`fold_sections`, :func:`phantom_vs_real`, :func:`variety_sections`:
  the chapter's figures (example patients, folds, the phantom beside real CT, the cohort's variety).

Example:
    >>> summarise([1.0, 2.0, 3.0, None])["summary"]
    '2.0 [1.5, 2.5]'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.analysis.data import (example_case, exclusions, fold_composition, fold_table, key_numbers, pick_examples,
                                  quartiles, read_clinical)
from sscild.analysis.phantomcheck import load_real_ct, parenchyma_comparison, real_ct_files
from sscild.book.plots import window_text
from sscild.book.plots.data import case_gallery, extent_distribution, fold_plot
from sscild.book.plots.phantom import phantom_vs_real as plot_phantom_vs_real
from sscild.book.plots.variety import lung_hu_histograms, pick_variety_examples, variety_gallery, variety_table
from sscild.data.clinical_table import set_aside_table
from sscild.data.cohort import Cohort, load_cohort, read_case
from sscild.data.folds import read_splits
from sscild.data.labels import resolve_label_map
from sscild.data.lungmask import lung_mask_by_threshold
from sscild.data.names import normalise_name
from sscild.data.orientation import to_canonical
from sscild.data.prepare import read_cases, read_validation
from sscild.data.validation_report import PROBLEM_KINDS, ValidationReport
from sscild.model.selftrain import semi_mode, unlabelled_scans
from sscild.paths import RunPaths, read_json
from sscild.profiles import Profile
from sscild.synthetic.lungfunction import CLINICAL_MODEL
from sscild.synthetic.writer import settings_changes

__all__ = [
    "DataStage",
    "read_stage",
    "builtin_changes",
    "unlabelled_sentence",
    "planted_model",
    "example_gallery",
    "fold_sections",
    "phantom_vs_real",
    "variety_sections",
    "exclusions",
    "key_numbers",
    "extent_distribution",
    "real_ct_files",
    "window_text",
    "PFT_COLUMNS",
    "summarise",
    "table_one",
    "geometry_table",
    "problem_summary",
    "problem_rows",
    "label_map_example",
    "clinical_model_table",
    "population_table",
]

PFT_COLUMNS: dict[str, tuple[str, str, int]] = {
    "fvc_pct": ("FVC", "% predicted", 1),
    "fev1_pct": ("FEV1", "% predicted", 1),
    "fev1_fvc": ("FEV1/FVC", "ratio", 2),
    "dlco_pct": ("DLCO", "% predicted", 1),
}
"""Lung-function columns of ``clinical.csv``: column -> (name, unit, decimals shown)."""

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
    """:func:`sscild.analysis.data.quartiles` of one variable with its text for the table.

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
    out = quartiles(values)
    if out["n"] == 0:
        out["summary"] = "not available"
        return out
    med, q1, q3 = out["median"], out["q1"], out["q3"]
    out["summary"] = f"{med:.{decimals}f} [{q1:.{decimals}f}, {q3:.{decimals}f}]"
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


def table_one(cases: pd.DataFrame, clinical: pd.DataFrame | None = None) -> pd.DataFrame:
    """The cohort table: patients, scanner geometry, reference lesion burden and lung function.

    Args:
        cases: one row per included case, as returned by :func:`sscild.data.cache.build_cache`
            (``case_id``, ``orig_n{x,y,z}``, ``orig_sp{x,y,z}``, ``lung_ml``, ``ef_ml``, ``ggo_ml``,
            ``lesion_ml``, ``ef_pct``, ``ggo_pct``, ``lesion_pct``).
        clinical: the clinical table indexed by ``case_id``
            (:func:`sscild.analysis.clinical_inputs.load_clinical`), with ``age``, ``sex`` (F/M) and the
            :data:`PFT_COLUMNS` where known; FEV1/FVC as a ratio. A case without a row, a column
            that is absent, or ``None`` all count as missing.

    Returns:
        DataFrame indexed by (``group``, ``characteristic``) with ``summary`` (median [IQR], or
        counts with percentages for categories), ``n`` (patients with a value), ``missing`` and the
        numbers ``median``, ``q1``, ``q3`` (NaN for categories).

    Raises:
        ValueError: ``cases`` has no ``case_id`` column or repeats a case.
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


def clinical_gaps(report) -> pd.DataFrame:
    """Every clinical value and row the clinical parser set aside, one row each (``case_id``, ``kind``,
    ``what``, ``fix``): :func:`sscild.data.clinical_table.set_aside_table` of the validation report."""
    return set_aside_table(report.problems)


def problem_summary(report) -> pd.DataFrame:
    """Problems counted by severity and kind, with the kind's description and the cases concerned.

    Returns:
        DataFrame indexed by (``severity``, ``kind``) with ``problems``, ``cases`` (ids, or
        ``"cohort"`` for folder-level problems) and ``what``; empty when there is no problem.
    """
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
    labels = dict(_EXAMPLE_LABELS if labels is None else labels)
    label_map = dict(_EXAMPLE_MAP if label_map is None and labels == _EXAMPLE_LABELS else (label_map or {}))
    mapping, problems = resolve_label_map(labels, label_map)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ValueError("label map example cannot be resolved: "
                         + " ".join(f"{p.message} Fix: {p.fix}" for p in errors))
    role_name = {v: k for k, v in LABELS.items()}
    mapped = {normalise_name(k) for k in label_map}
    rows = []
    for name, value in labels.items():
        role = mapping[int(value)]
        rows.append({"label name": name, "value in the files": int(value),
                     "given role by": "label map" if normalise_name(name) in mapped else "its name",
                     "study role": f"{role_name[role]} ({role})"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the synthetic cohort's planted model
# --------------------------------------------------------------------------------------------

_PFT_NAMES = {k: f"{v[0]} ({'percent' if k == 'fev1_fvc' else v[1]})" for k, v in PFT_COLUMNS.items()}


def clinical_model_table(model: Mapping) -> pd.DataFrame:
    """The planted lung-function model (``sscild.synthetic.lungfunction.CLINICAL_MODEL``) as a table.

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
# the chapter's sections, from what the data stage wrote
# --------------------------------------------------------------------------------------------


@dataclass
class DataStage:
    """What make's data stage wrote for this run, read back: the validation report and label map
    (``validation.json``), the cohort without its excluded cases, the preprocessing table
    (``cases.csv``), the folds (``splits.json``) and the clinical table as the cohort table reads it."""

    report: ValidationReport
    label_map: dict | None
    cohort: Cohort
    cases: pd.DataFrame
    splits: list
    clinical: pd.DataFrame | None
    clinical_notes: list[str]


def read_stage(run: RunPaths, data_dir) -> DataStage:
    """The data stage's records of ``run`` (``make data`` writes them; see :mod:`sscild.data.prepare`)."""
    report, label_map = read_validation(run)
    cases = read_cases(run)
    clinical, notes = read_clinical(data_dir)
    return DataStage(report=report, label_map=label_map,
                     cohort=load_cohort(data_dir, label_map=label_map, exclude=report.bad_cases), cases=cases,
                     splits=read_splits(run.splits, list(cases["case_id"])), clinical=clinical, clinical_notes=notes)


def builtin_changes(run: RunPaths, data_dir, profile: Profile) -> list[str]:
    """How the built-in cohort's generator settings differ from the profile's now (``[]`` when they
    agree or the cohort is not the built-in one, as the run context make wrote says)."""
    ctx = run.root / "run_context.json"
    builtin = ctx.exists() and read_json(ctx).get("builtin_cohort") is True
    return settings_changes(data_dir, profile) if builtin else []


def unlabelled_sentence(run: RunPaths, profile: Profile, synthetic: bool) -> str:
    """What the run does with the cohort's validated unlabelled scans, in one sentence."""
    unlabelled, mode = unlabelled_scans(run), semi_mode(profile)
    if not unlabelled:
        return "This cohort has no unlabelled scans."
    return (f"{len(unlabelled)} unlabelled scans passed validation"
            + (" (synthetic patients other than the labelled ones)" if synthetic else "")
            + {"pretrain": f"; the network will be pretrained on them for {profile.pretrain_steps} iterations.",
               "self-training": "; each fold's supervised model will pseudo-label them (self-training).",
               "off": f"; the profile's `semi_supervised` is `{profile.semi_supervised}` with {profile.pretrain_steps} "
                      "pretraining iterations, so they are not used."}[mode])


def planted_model() -> dict:
    """The synthetic generator's planted lung-function model (``CLINICAL_MODEL``)."""
    return CLINICAL_MODEL


def example_gallery(stage: DataStage):
    """Mild, moderate and severe example patients (10th, 50th, 90th percentile of lesion extent)."""
    return case_gallery({level: example_case(stage.cohort, cid) for level, cid in pick_examples(stage.cases).items()})


def fold_sections(stage: DataStage) -> tuple[pd.DataFrame, object]:
    """The folds' composition table and the figure of each fold's held-out patients by lesion extent."""
    return fold_composition(stage.splits, stage.cases), fold_plot(fold_table(stage.splits, stage.cases))


def phantom_vs_real(stage: DataStage, real_files) -> tuple[object, pd.DataFrame, float]:
    """The least-diseased synthetic patient beside the first real CT, and the lung attenuation of two
    synthetic patients (least and median disease) and every real scan, measured alike.

    Returns ``(figure, table, pixel size in mm the real scans were resampled to)``."""
    picks = pick_examples(stage.cases, levels={"least disease": 0.0, "median disease": 0.5})
    vols = {level: read_case(stage.cohort, cid)[0] for level, cid in picks.items()}
    synth = [(f"{cid} (synthetic, {level})", "synthetic", *to_canonical(vols[level].array, vols[level].affine))
             for level, cid in picks.items()]
    pixel = synth[0][3][0]
    real = [(f.stem, "real", *load_real_ct(f, pixel_mm=pixel)) for f in real_files]
    fig = plot_phantom_vs_real(synth[0][2], synth[0][3], real[0][2], real[0][3])
    return fig, parenchyma_comparison(synth + real), pixel


def variety_sections(data_dir, real_files) -> dict | None:
    """The synthetic cohort's variety features: the count table, one patient per feature, and the
    normal-lung attenuation of synthetic patients beside the real scans' lungs (``None`` when the
    cohort has no ``phantom_truth.csv`` or was made without the variety features)."""
    truth_file = Path(data_dir) / "phantom_truth.csv"
    if not truth_file.exists():
        return None
    truth = pd.read_csv(truth_file)
    if "emphysema_kind" not in truth:
        return {}
    real_lungs = []
    for f in real_files:
        hu_r, sp_r = load_real_ct(f, pixel_mm=float(truth["pixel_mm"].median()))
        real_lungs.append((f.stem, hu_r, lung_mask_by_threshold(hu_r, sp_r)))
    return {"table": variety_table(truth), "gallery": variety_gallery(data_dir, pick_variety_examples(truth)),
            "histograms": lung_hu_histograms(data_dir, list(truth["case_id"][:16]), real_lungs)}
