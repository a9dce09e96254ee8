"""Healthy lung stays healthy: the fold ensemble on patients without lung disease.

A cohort may hold scans of patients without lung disease in ``controlsTs/`` (the built-in synthetic
cohort has them: the same phantom, no EF or GGO). They are not part of the cross-validation and no
fold was trained on them, so every fold model may label them; :func:`score_controls` runs the whole
ensemble on each, exactly as ``sscild segment`` would on a new scan
(:func:`sscild.model.inference.segment_volume`: flip averaging as the profile says, bfloat16 on a CPU
that computes it natively, as ``sscild segment`` does, float32 elsewhere), and
records per control the lung and what the models called lesion in it. Every EF or GGO voxel there is
a false lesion.

Files (``<run>/controls/``): ``<id>.nii.gz`` (labels on the scan's grid), ``<id>_uncertainty.nii.gz``
(the ensemble's uncertainty, percent), ``controls.csv`` (one row per control) and ``manifest.json`` (per control: the SHA-256 of its scan file and of each model), so a
control is scored again only when its scan or a model changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sscild.data.image import load_volume
from sscild.data.nifti_writer import save_volume
from sscild.data.prepare import validated_scans
from sscild.evaluation.metrics import volumes_ml
from sscild.model.inference import UNCERTAIN_PCT, segment_volume
from sscild.model.loading import file_sha256, find_models, load_ensemble
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.progress import Heartbeat

__all__ = ["CONTROL_COLUMNS", "control_scans", "score_controls", "control_maps"]

CONTROL_COLUMNS = ["control", "lung_ml", "ef_ml", "ggo_ml", "lesion_ml", "ef_pct", "ggo_pct", "lesion_pct",
                   "lesion_uncertain_pct", "largest_lesion_ml"]
"""Columns of ``controls.csv``: volumes in mL, shares in percent of the lung, the share of the called
lesion that is uncertain (:data:`~sscild.model.inference.UNCERTAIN_PCT`), the largest connected false lesion."""


def control_scans(run: RunPaths) -> dict[str, Path]:
    """The run's cohort's controls (``controlsTs/``) that validation found no error in (``{}`` when none)."""
    return validated_scans(run, "controls")


def _largest_ml(mask: np.ndarray, ml: float) -> float:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    return float(np.bincount(lab.ravel())[1:].max()) * ml if n else 0.0


def _row(cid: str, label: np.ndarray, unc: np.ndarray, spacing) -> dict:
    v = volumes_ml(label, spacing)
    lung = v.get("lung", 0.0)
    pct = lambda k: round(100.0 * v.get(k, 0.0) / lung, 3) if lung > 0 else float("nan")  # noqa: E731
    les = label >= 2
    return {"control": cid, "lung_ml": round(lung, 1), "ef_ml": round(v.get("ef", 0.0), 2),
            "ggo_ml": round(v.get("ggo", 0.0), 2), "lesion_ml": round(v.get("lesion", 0.0), 2),
            "ef_pct": pct("ef"), "ggo_pct": pct("ggo"), "lesion_pct": pct("lesion"),
            "lesion_uncertain_pct": round(100.0 * float((unc[les] >= UNCERTAIN_PCT).mean()), 1) if les.any() else None,
            "largest_lesion_ml": round(_largest_ml(les, float(np.prod(spacing)) / 1000.0), 2)}


def score_controls(run: RunPaths, *, device=None, progress: bool = True) -> pd.DataFrame:
    """Label every control with the run's fold ensemble; returns (and writes) ``controls.csv``'s table.

    An empty table (with :data:`CONTROL_COLUMNS`) when the cohort has no controls. Controls whose scan
    and models are unchanged since the last call are read back, not scored again.
    """
    scans = control_scans(run)
    out = run.root / "controls"
    if not scans:
        return pd.DataFrame(columns=CONTROL_COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    models = find_models(run.root)
    digests = [file_sha256(p) for p in models]
    man_path = out / "manifest.json"
    manifest = read_json(man_path) if man_path.exists() else {}
    old = {}
    if (out / "controls.csv").exists():
        old = {r["control"]: r for r in pd.read_csv(out / "controls.csv").to_dict(orient="records")}
    ens, rows = None, []
    beat = Heartbeat("controls", total=len(scans), unit="scan", every=20.0)
    for k, (cid, path) in enumerate(sorted(scans.items()), 1):
        key = {"scan": file_sha256(path), "models": digests}
        if (manifest.get(cid) == key and cid in old and (out / f"{cid}.nii.gz").exists()
                and (out / f"{cid}_uncertainty.nii.gz").exists()):
            rows.append(old[cid])
        else:
            ens = ens or load_ensemble(run.root, device)
            vol = load_volume(path)
            res = segment_volume(vol, ens.nets, ens.profile, device=device, uncertainty=True,
                                 case_id=cid)
            save_volume(out / f"{cid}.nii.gz", res.label, vol.affine, dtype=np.uint8)
            save_volume(out / f"{cid}_uncertainty.nii.gz", res.uncertainty, vol.affine, dtype=np.uint8)
            rows.append(_row(cid, res.label, res.uncertainty, tuple(float(s) for s in vol.spacing)))
            manifest[cid] = key
            write_json(man_path, manifest)
        beat.update(k)
    table = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    with atomic_path(out / "controls.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def control_maps(run: RunPaths, control: str):
    """The scan, labels and uncertainty of one scored control: ``(Volume, label, uncertainty)``."""
    scans = control_scans(run)
    if control not in scans:
        raise KeyError(f"{control!r} is not a control of this run (controls: {', '.join(sorted(scans)) or 'none'})")
    out = run.root / "controls"
    vol = load_volume(scans[control])
    label = np.asarray(load_volume(out / f"{control}.nii.gz").array, np.uint8)
    unc = np.asarray(load_volume(out / f"{control}_uncertainty.nii.gz").array, np.uint8)
    return vol, label, unc
