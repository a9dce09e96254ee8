"""How the disease changed: a baseline scan against a follow-up (``sscild compare``).

Each scan is segmented with the fold ensemble (or the outputs of an earlier ``sscild segment`` are
reused: give its output folder). The change of extent is reported per class (EF, GGO, total
lesion) and zone (:mod:`sscild.clinic.zones`) in **percentage points** of the zone's lung (follow-up %
minus baseline %) and in **mL**.

**Threshold.** The minimal clinically important difference (MCID) published for quantitative CT
extent of lung fibrosis is 3.4-6.4 % of the lung (:data:`MCID_PP`). It was derived in idiopathic
pulmonary fibrosis (IPF), not in SSc-ILD, and for whole-lung extent; it is therefore applied to the
whole-lung rows only, and a change is reported as *beyond the MCID range* (> 6.4 pp), *within the
MCID range* (3.4-6.4 pp) or *below it*.

**Comparability** (warnings with the numbers, :func:`comparability_warnings`): a different patient
(DICOM PatientID), a different slice thickness (partial-volume averaging changes how much
faint GGO is seen), a different reconstruction kernel (sharper kernels add noise that reads as
texture), and a different inspiration: a follow-up lung volume outside :data:`LUNG_VOLUME_RATIO`
(0.9-1.1) of the baseline's. Expiration raises lung attenuation and can mimic GGO; the relative
extents then move without any change of disease. Information a file does not carry (a NIfTI has
no PatientID or kernel) is reported as not checkable, not as comparable.

Usage::

    result = compare_scans("visit1/", "visit2/", "change/")
    [w for w in result["warnings"]]
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.errors import InputError
from sscild.paths import atomic_path, write_json

__all__ = ["MCID_PP", "MCID_STATEMENT", "LUNG_VOLUME_RATIO", "SLICE_THICKNESS_TOLERANCE_MM", "ScanResult",
           "load_result", "change_table", "comparability_warnings", "mcid_verdict", "compare_results", "compare_scans"]

MCID_PP = (3.4, 6.4)
"""MCID range of quantitative CT extent (percentage points of lung), derived in IPF."""

MCID_STATEMENT = (
    "Threshold: the minimal clinically important difference (MCID) published for quantitative CT extent of lung "
    f"fibrosis is {MCID_PP[0]}-{MCID_PP[1]} % of the lung. It was derived in idiopathic pulmonary fibrosis (IPF), "
    "not in SSc-ILD, and for whole-lung extent: it is applied to the whole-lung rows only, as a guide.")

LUNG_VOLUME_RATIO = (0.9, 1.1)
"""Follow-up / baseline lung volume outside this range: the inspiration differs (a warning)."""

SLICE_THICKNESS_TOLERANCE_MM = 0.1
"""Slice thicknesses differing by more than this are reported."""

_CLASSES = (("ef", "EF"), ("ggo", "GGO"), ("lesion", "lesion (EF + GGO)"))


@dataclass
class ScanResult:
    """One segmented scan: label map, geometry, acquisition, summary and zone table."""

    name: str
    label: np.ndarray
    affine: np.ndarray
    acquisition: dict
    summary: dict
    zones: pd.DataFrame
    overlay: Path | None = None
    report: dict = field(default_factory=dict)


def load_result(folder: str | Path) -> ScanResult:
    """Read the outputs ``sscild segment`` wrote into ``folder`` (one scan).

    Raises:
        InputError: no ``*_report.json`` or its label map is missing.
    """
    from sscild.data.image import load_volume
    from sscild.clinic.zones import zone_extent

    folder = Path(folder)
    reports = sorted(folder.glob("*_report.json"))
    if len(reports) != 1:
        raise InputError(f"{folder}: expected the outputs of one `sscild segment` run (one *_report.json), found "
                         f"{len(reports)}. Give a scan, or the output folder of one segmented scan.")
    report = json.loads(reports[0].read_text())
    labels = Path(report.get("outputs", {}).get("labels", ""))
    if not labels.is_file():
        labels = folder / labels.name
    if not labels.is_file():
        raise InputError(f"{reports[0]}: its label map {labels.name} is missing from {folder}; segment the scan again.")
    vol = load_volume(labels)
    label = np.asarray(vol.array, dtype=np.uint8)
    zt = report.get("zones", {}).get("table")
    zones = (pd.DataFrame.from_dict(zt, orient="index").astype(float) if zt else zone_extent(label, vol.affine))
    zones.index.name = "zone"
    overlay = folder / Path(report.get("outputs", {}).get("overlay", "")).name if report.get("outputs", {}).get("overlay") else None
    return ScanResult(name=Path(report["summary"]["scan"]).name, label=label, affine=vol.affine,
                      acquisition=report.get("acquisition", {}), summary=report["summary"], zones=zones,
                      overlay=overlay if overlay is not None and overlay.is_file() else None, report=report)


def mcid_verdict(change_pp: float) -> str:
    """Where an absolute change of whole-lung extent lies against :data:`MCID_PP`."""
    if change_pp is None or not math.isfinite(change_pp):
        return "undetermined"
    a = abs(change_pp)
    if a > MCID_PP[1]:
        return "beyond the MCID range"
    if a >= MCID_PP[0]:
        return "within the MCID range"
    return "below the MCID range"


def change_table(base: pd.DataFrame, follow: pd.DataFrame) -> pd.DataFrame:
    """Change per zone and class between two :func:`sscild.clinic.zones.zone_extent` tables.

    Returns:
        One row per (zone, class): ``baseline_pct``, ``followup_pct``, ``change_pp`` (percentage points
        of the zone's lung), ``baseline_ml``, ``followup_ml``, ``change_ml``, and ``mcid`` (whole lung only).

    Example:
        >>> z = pd.DataFrame({"lung_ml": [100.0], "ef_ml": [5.0], "ggo_ml": [5.0], "lesion_ml": [10.0],
        ...                   "ef_pct": [5.0], "ggo_pct": [5.0], "lesion_pct": [10.0]}, index=["whole lung"])
        >>> f = z.assign(ef_ml=12.0, ef_pct=12.0, lesion_ml=17.0, lesion_pct=17.0)
        >>> change_table(z, f)[["zone", "class", "change_pp", "change_ml", "mcid"]].values.tolist()[0]
        ['whole lung', 'EF', 7.0, 7.0, 'beyond the MCID range']
    """
    rows = []
    for zone in base.index:
        if zone not in follow.index:
            continue
        for key, name in _CLASSES:
            b_pct, f_pct = float(base.loc[zone, f"{key}_pct"]), float(follow.loc[zone, f"{key}_pct"])
            b_ml, f_ml = float(base.loc[zone, f"{key}_ml"]), float(follow.loc[zone, f"{key}_ml"])
            d = f_pct - b_pct
            rows.append({"zone": zone, "class": name, "baseline_pct": b_pct, "followup_pct": f_pct, "change_pp": d,
                         "baseline_ml": b_ml, "followup_ml": f_ml, "change_ml": f_ml - b_ml,
                         "mcid": mcid_verdict(d) if zone == "whole lung" else ""})
    return pd.DataFrame(rows)


def comparability_warnings(base: ScanResult, follow: ScanResult) -> tuple[list[str], list[str]]:
    """Reasons the two scans may not be comparable, with numbers, and what could not be checked.

    Returns:
        ``(warnings, not_checked)``.
    """
    warn, unknown = [], []
    a, b = base.acquisition or {}, follow.acquisition or {}
    pa, pb = a.get("patient_id"), b.get("patient_id")
    if pa and pb:
        if pa != pb:
            warn.append(f"Different patients: PatientID {pa!r} (baseline) and {pb!r} (follow-up). A change between "
                        "two people is meaningless; check that these are the right scans.")
    else:
        unknown.append("patient (PatientID is only in DICOM headers)")
    ta, tb = a.get("slice_thickness_mm"), b.get("slice_thickness_mm")
    if ta is not None and tb is not None:
        if abs(float(ta) - float(tb)) > SLICE_THICKNESS_TOLERANCE_MM:
            warn.append(f"Different slice thickness: {float(ta):g} mm (baseline, {a.get('slice_thickness_from')}) and "
                        f"{float(tb):g} mm (follow-up, {b.get('slice_thickness_from')}). Partial-volume averaging "
                        "differs, which changes how much faint GGO and fine reticulation is seen.")
    ka, kb = a.get("kernel"), b.get("kernel")
    if ka and kb:
        if str(ka).strip().upper() != str(kb).strip().upper():
            warn.append(f"Different reconstruction kernels: {ka!r} (baseline) and {kb!r} (follow-up). Sharper kernels "
                        "add noise that can read as texture; extents are best compared on the same kernel.")
    else:
        unknown.append("reconstruction kernel (only in DICOM headers)")
    la, lb = float(base.summary.get("lung_volume_ml") or 0), float(follow.summary.get("lung_volume_ml") or 0)
    if la > 0 and lb > 0:
        ratio = lb / la
        if not LUNG_VOLUME_RATIO[0] <= ratio <= LUNG_VOLUME_RATIO[1]:
            warn.append(f"Different inspiration: lung volume {la / 1000:.2f} L (baseline) and {lb / 1000:.2f} L "
                        f"(follow-up), ratio {ratio:.2f}, outside {LUNG_VOLUME_RATIO[0]}-{LUNG_VOLUME_RATIO[1]}. A lung "
                        "scanned at lower volume is denser and can look like more GGO; extents in % of lung shift too.")
    else:
        unknown.append("inspiration (a scan has no segmented lung)")
    return warn, unknown


def _side(r: ScanResult) -> dict:
    a = r.acquisition or {}
    return {"name": r.name, "scan": r.summary.get("scan"), "patient_id": a.get("patient_id"),
            "study_date": a.get("study_date"), "slice_thickness_mm": a.get("slice_thickness_mm"),
            "kernel": a.get("kernel"), "lung_volume_ml": r.summary.get("lung_volume_ml"),
            "lesion_pct": r.summary.get("percent_of_lung", {}).get("lesion"), "stage": r.summary.get("extent_stage")}


def compare_results(base: ScanResult, follow: ScanResult) -> dict:
    """The comparison of two segmented scans (no files written).

    Returns:
        dict with ``baseline``, ``followup`` (scan descriptions), ``change`` (records of
        :func:`change_table`), ``warnings``, ``not_checked``, ``mcid`` and ``lung_volume_ratio``.
    """
    table = change_table(base.zones, follow.zones)
    warn, unknown = comparability_warnings(base, follow)
    la, lb = base.summary.get("lung_volume_ml"), follow.summary.get("lung_volume_ml")
    ratio = (float(lb) / float(la)) if la and lb else None

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {"baseline": _side(base), "followup": _side(follow),
            "change": [{k: clean(v) for k, v in row.items()} for row in table.to_dict(orient="records")],
            "warnings": warn, "not_checked": unknown,
            "mcid": {"range_pp": list(MCID_PP), "statement": MCID_STATEMENT},
            "lung_volume_ratio": None if ratio is None else round(ratio, 3)}


def _resolve(path: Path, out: Path, role: str, seg_kwargs: dict) -> ScanResult:
    from sscild.clinic.segment import segment_scan

    path = Path(path)
    if path.is_dir() and any(path.glob("*_report.json")):
        return load_result(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Give the {role} scan (NIfTI / NRRD / MHA / DICOM series "
                         "folder) or the output folder of `sscild segment` for it.")
    segment_scan(path, out / role, **seg_kwargs)
    return load_result(out / role)


def compare_scans(baseline: str | Path, followup: str | Path, out: str | Path, *, models=None, ensemble=None,
                  tta: bool | None = None, progress: bool = True, refuse: bool = True, device=None) -> dict:
    """Segment (or reuse) two scans of one patient and report the change; writes JSON, CSV and HTML.

    Args:
        baseline: the earlier scan, or the output folder of ``sscild segment`` for it.
        followup: the later scan, or its ``sscild segment`` output folder.
        out: output folder: ``compare.json``, ``compare.csv``, ``compare.html``, and ``baseline/`` and
            ``followup/`` with the segmentations made here.
        models, ensemble, tta, progress, refuse, device: as :func:`sscild.clinic.segment.segment_scan`.

    Returns:
        The comparison dict (:func:`compare_results`) with ``outputs``.
    """
    from sscild.model.loading import load_ensemble
    from sscild.clinic.scanreport import comparison_report_html

    out = Path(out)
    todo = [p for p in (Path(baseline), Path(followup)) if not (p.is_dir() and any(p.glob("*_report.json")))]
    if todo and ensemble is None:
        ensemble = load_ensemble(models, device)
    kw = dict(ensemble=ensemble, tta=tta, progress=progress, refuse=refuse, device=device)
    base = _resolve(Path(baseline), out, "baseline", kw)
    follow = _resolve(Path(followup), out, "followup", kw)
    result = compare_results(base, follow)
    outputs = {"json": out / "compare.json", "csv": out / "compare.csv", "html": out / "compare.html"}
    result["outputs"] = {k: str(v) for k, v in outputs.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(outputs["json"], result)
    with atomic_path(outputs["csv"], suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(result["change"][0]) if result["change"] else ["zone"])
            w.writeheader()
            for row in result["change"]:
                w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    pngs = tuple(r.overlay.read_bytes() if r.overlay else None for r in (base, follow))
    with atomic_path(outputs["html"], suffix=".html") as tmp:
        Path(tmp).write_text(comparison_report_html(result, overlays=pngs), encoding="utf-8")
    return result
