"""The trained models on real CT without labels: does the network find the lungs?

The scans are labelled exactly as ``sscild segment`` labels them (:func:`sscild.model.inference.segment_volume`,
with its post-processing and its precision: bfloat16 on a CPU that computes it natively).

Models trained on the synthetic cohort are offered for real scans (``sscild segment``), so the study
checks them on real chest CT itself. Real scans here have no lesion labels, but their lungs can be
found without any training by the classical rule of :func:`sscild.data.lungmask.lung_mask_by_threshold`
(threshold at -400 HU inside the body, trachea and main bronchi removed, the one or two largest
components, holes filled). The check compares the network's lung field (every non-background label
of the fold ensemble, after the usual post-processing) with that mask:

* **lung Dice** per scan (target: 0.95 or more; lower means lung left out, e.g. emphysema, or
  non-lung called lung, e.g. the scanner table);
* the voxels each side misses (``missed_ml``: in the classical lung, not in the network's;
  ``extra_ml``: the reverse), and the mean HU of the missed lung (low values point to emphysema);
* the **lesion share**: EF and GGO as percent of the network's lung. These scans are not SSc
  patients, so a high share is a false positive until a reader says otherwise;
* what ``sscild segment`` would say about trusting the answer: the share of the called lesion that
  is uncertain and the quality-control flags (:mod:`sscild.clinic.qc`).

Example: ``rows, views = real_lung_check(["chest-ct-1.nrrd"], "results/synthetic-cpu/cpu")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sscild.clinic.qc import quality_control, uncertainty_summary
from sscild.data.image import load_volume
from sscild.data.lungmask import lung_mask_by_threshold
from sscild.model.inference import segment_volume
from sscild.model.loading import load_ensemble
from sscild.progress import Heartbeat

__all__ = ["VOLUME_SUFFIXES", "list_volumes", "check_volume", "real_lung_check"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Files taken as CT volumes (DICOM series are read by ``sscild segment``; this check takes volumes)."""


def list_volumes(folder: str | Path) -> list[Path]:
    """The CT volume files directly inside ``folder`` (sorted), by :data:`VOLUME_SUFFIXES`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of CT volumes. Give a folder holding .nrrd, .nii.gz "
                                "or .mha chest CT files.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def check_volume(path: str | Path, nets, profile, *, tta: bool | None = None) -> tuple[dict, dict]:
    """One scan: the network's labels and the classical lung, compared.

    Returns:
        ``(row, view)``: the row of the result table and, for figures, ``hu``, ``label`` (network,
        input grid), ``classical`` (bool), ``spacing``, ``affine``, ``uncertainty`` and ``qc`` (the
        quality-control measures and flags).
    """
    path = Path(path)
    vol = load_volume(path)
    hu = np.asarray(vol.array)
    res = segment_volume(vol, nets, profile, tta=tta, uncertainty=True, case_id=path.name)
    lab = res.label
    spacing = tuple(float(v) for v in vol.spacing)
    classical = lung_mask_by_threshold(hu, spacing)
    net_lung = lab > 0
    ml = float(np.prod(spacing)) / 1000.0
    missed = classical & ~net_lung
    extra = net_lung & ~classical
    n_lung = max(int(net_lung.sum()), 1)
    row = {
        "scan": path.name,
        "shape": "x".join(str(v) for v in hu.shape),
        "spacing_mm": "x".join(f"{v:.2f}" for v in spacing),
        "lung_dice": round(_dice(net_lung, classical), 4),
        "classical_lung_ml": round(int(classical.sum()) * ml, 1),
        "network_lung_ml": round(int(net_lung.sum()) * ml, 1),
        "missed_ml": round(int(missed.sum()) * ml, 1),
        "extra_ml": round(int(extra.sum()) * ml, 1),
        "missed_mean_hu": round(float(hu[missed].mean()), 1) if missed.any() else None,
        "lesion_pct_of_lung": round(100.0 * int((lab >= 2).sum()) / n_lung, 2),
        "ef_pct_of_lung": round(100.0 * int((lab == 2).sum()) / n_lung, 2),
        "ggo_pct_of_lung": round(100.0 * int((lab == 3).sum()) / n_lung, 2),
        "classical_low_attenuation_pct": round(100.0 * int((classical & (hu < -950)).sum())
                                               / max(int(classical.sum()), 1), 2),
    }
    unc = uncertainty_summary(lab, res.uncertainty)
    qc = quality_control(res, vol.affine, lung_ml=int(net_lung.sum()) * ml, profile=profile, slice_mm=spacing[2],
                         uncertainty=unc)
    row["uncertain_pct_of_lesion"] = unc["lesion"]["uncertain_pct"]
    row["qc_flags"] = ", ".join(f["code"] for f in qc["flags"]) or "none"
    return row, {"hu": hu, "label": lab, "classical": classical, "spacing": spacing,
                 "affine": np.asarray(vol.affine, dtype=float), "uncertainty": res.uncertainty, "qc": qc}


def real_lung_check(scans, models, *, tta: bool | None = None, device=None) -> tuple[pd.DataFrame, dict]:
    """Run :func:`check_volume` on each scan with the fold ensemble of ``models`` (a run folder).

    Args:
        scans: CT volume files, or one folder of them (:func:`list_volumes`).
        models: what :func:`sscild.model.loading.find_models` accepts (e.g. ``results/<cohort>/<profile>``).
        tta: average the flipped slices too; ``None``: as the models' profile says, like ``sscild segment``.

    Returns:
        ``(table, views)``: one row per scan and ``{scan name: view}`` for the overlays.
    """
    if isinstance(scans, (str, Path)) and Path(scans).is_dir():
        scans = list_volumes(scans)
    scans = [Path(s) for s in scans]
    if not scans:
        raise ValueError("real_lung_check: no CT volumes given")
    ens = load_ensemble(models, device)
    nets, profile = ens.nets, ens.profile
    rows, views = [], {}
    beat = Heartbeat("real-CT lung check", total=len(scans), unit="scan", every=1.0)
    for k, scan in enumerate(scans, 1):
        row, view = check_volume(scan, nets, profile, tta=tta)
        row["models"] = len(nets)
        rows.append(row)
        views[scan.name] = view
        beat.update(k)
    return pd.DataFrame(rows), views
