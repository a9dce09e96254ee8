"""Does the network find the same lungs when the scan changes? The real-CT robustness check.

Real chests differ from the training cohort in ways the study can imitate on a real scan
(:mod:`sscild.analysis.perturb`): a darker or denser lung (inspiration, emphysema), a blurrier or
noisier reconstruction, thicker slices. For each real scan and each change in :func:`family`, the
fold ensemble labels the changed scan (the same path as ``sscild segment``:
:func:`sscild.model.inference.segment_volume`) and the check reports

* ``lung_change_pct``: the network's lung volume against its lung on the unchanged scan (aim: within
  +-5 %);
* ``lung_dice``: the network's lung against the classical lung of the *unchanged* scan
  (:func:`sscild.data.lungmask.lung_mask_by_threshold`; none of these changes moves the lung's
  border, so that mask stays the reference; aim: 0.95 or more);
* ``lesion_pct``: EF and GGO as percent of the network's lung (the scans are not of SSc patients);
* the same lung measures of the network *alone* (``network_lung_*``: before the lung completion of
  :mod:`sscild.model.inference` added the air-filled lung it left out), which show how much the
  network itself depends on the lung looking like the training cohort's.

Example: ``table, views = robustness_check(["chest-ct-1.nrrd"], "results/synthetic-cpu/cpu")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.analysis import perturb
from sscild.data.image import Volume, load_volume
from sscild.data.lungmask import lung_mask_by_threshold
from sscild.model.inference import segment_volume
from sscild.model.loading import load_ensemble
from sscild.progress import Heartbeat

__all__ = ["Change", "family", "apply_change", "robustness_check", "trust_checks", "LUNG_CHANGE_AIM_PCT",
           "LUNG_DICE_AIM"]

LUNG_CHANGE_AIM_PCT = 5.0
"""The network's lung volume should stay within this many percent of its volume on the unchanged scan."""

LUNG_DICE_AIM = 0.95
"""Lung Dice against the classical lung of the unchanged scan should reach this."""


@dataclass(frozen=True)
class Change:
    """One change of a scan: a name for tables, the :mod:`~sscild.analysis.perturb` function, its settings."""

    name: str
    group: str
    kind: str
    params: dict = field(default_factory=dict)


def family(spacing=None) -> list[Change]:
    """The changes the check applies to a scan (``spacing``: the scan's voxel size in mm, which decides
    which resolutions and slice thicknesses are degradations of it).

    Lung density -100 to +60 HU; emphysema of four patterns; pixels of 1.5, 2.5 and 4 mm; a sharp kernel
    at two noise levels; slices twice (and, for slices of 2.5 mm or less, four times) as thick.
    """
    sp = (0.7, 0.7, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    out = [Change("unchanged", "reference", "none")]
    out += [Change(f"lung {d:+d} HU", "lung density", "shift", {"delta_hu": d}) for d in (-100, -70, -40, 40, 60)]
    out += [Change("panlobular emphysema 20 %", "emphysema", "emphysema", {"kind": "panlobular", "fraction": 0.2}),
            Change("panlobular emphysema 40 %", "emphysema", "emphysema", {"kind": "panlobular", "fraction": 0.4}),
            Change("centrilobular emphysema 20 %", "emphysema", "emphysema",
                   {"kind": "centrilobular", "fraction": 0.2}),
            Change("paraseptal emphysema 10 %", "emphysema", "emphysema", {"kind": "paraseptal", "fraction": 0.1}),
            Change("bullae 8 %", "emphysema", "emphysema", {"kind": "bullae", "fraction": 0.08})]
    out += [Change(f"pixels {mm:g} mm", "resolution", "pixels", {"pixel_mm": mm})
            for mm in (1.5, 2.5, 4.0) if mm > 1.2 * max(sp[0], sp[1])]
    out += [Change(f"sharp kernel, noise {n} HU", "kernel", "kernel", {"noise_hu": n}) for n in (40, 80)]
    out += [Change(f"slices x{f} ({f * sp[2]:g} mm)", "slice thickness", "slices", {"factor": f})
            for f in ((2, 4) if sp[2] <= 2.5 else (2,))]
    return out


def apply_change(hu: np.ndarray, lung: np.ndarray, spacing, change: Change, *, seed: int = 0) -> np.ndarray:
    """``hu`` (float32 HU) with ``change`` applied; ``lung`` is the classical lung of the unchanged scan."""
    k, p = change.kind, change.params
    if k == "none":
        return np.asarray(hu, np.float32)
    if k == "shift":
        return perturb.shift_lung_hu(hu, lung, p["delta_hu"])
    if k == "emphysema":
        return perturb.add_emphysema(hu, lung, spacing, kind=p["kind"], fraction=p["fraction"], seed=seed)
    if k == "pixels":
        return perturb.degrade_inplane(hu, spacing, p["pixel_mm"])
    if k == "kernel":
        return perturb.sharp_kernel(hu, spacing, noise_hu=p["noise_hu"], seed=seed)
    if k == "slices":
        return perturb.thicker_slices(hu, p["factor"])
    raise ValueError(f"unknown change kind {k!r}")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def _row(scan: str, change: Change, label: np.ndarray, added: np.ndarray, classical: np.ndarray, ml: float,
         ref: dict | None, hu: np.ndarray) -> dict:
    lung = label > 0
    own = lung & ~added                  # the network's lung before the completion added the rule's lung
    n_lung = max(int(lung.sum()), 1)
    lung_ml, own_ml = int(lung.sum()) * ml, int(own.sum()) * ml
    return {
        "scan": scan, "change": change.name, "group": change.group,
        "lung_ml": round(lung_ml, 1),
        "lung_change_pct": round(100.0 * (lung_ml / ref["lung_ml"] - 1.0), 2) if ref else 0.0,
        "lung_dice": round(_dice(lung, classical), 4),
        "network_lung_change_pct": round(100.0 * (own_ml / ref["network_lung_ml"] - 1.0), 2) if ref else 0.0,
        "network_lung_dice": round(_dice(own, classical), 4),
        "network_lung_ml": round(own_ml, 1),
        "missed_ml": round(int((classical & ~lung).sum()) * ml, 1),
        "extra_ml": round(int((lung & ~classical).sum()) * ml, 1),
        "lesion_pct": round(100.0 * int((label >= 2).sum()) / n_lung, 2),
        "ef_pct": round(100.0 * int((label == 2).sum()) / n_lung, 2),
        "ggo_pct": round(100.0 * int((label == 3).sum()) / n_lung, 2),
        "lung_median_hu": round(float(np.median(hu[classical])), 1) if classical.any() else None,
        "low_attenuation_pct": round(100.0 * int((classical & (hu < -950)).sum()) / max(int(classical.sum()), 1), 2),
    }


def robustness_check(scans, models, *, changes=None, tta: bool | None = None, device=None, keep_views=("worst",),
                     progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Apply every change of :func:`family` to each scan and compare the network's lungs (module docstring).

    Args:
        scans: CT volume files.
        models: a run folder with fold models (what :func:`sscild.model.loading.find_models` accepts).
        changes: the changes to apply (default :func:`family` of each scan's spacing).
        tta: left-right flip averaging; ``None``: as the models' profile says, like ``sscild segment``.
        keep_views: which label maps to keep for figures: ``"worst"`` (each scan's unchanged view and the
            change with the lowest lung Dice) or ``"all"``.

    Returns:
        ``(table, views)``: one row per scan and change; ``views[(scan, change)]`` with ``hu``, ``label``,
        ``classical`` and ``affine`` for the kept ones.
    """
    ens = load_ensemble(models, device)
    rows, views = [], {}
    scans = [Path(s) for s in scans]
    for scan in scans:
        vol = load_volume(scan)
        hu0 = np.asarray(vol.array, np.float32)
        spacing = tuple(float(s) for s in vol.spacing)
        classical = lung_mask_by_threshold(hu0, spacing)
        ml = float(np.prod(spacing)) / 1000.0
        todo = family(spacing) if changes is None else list(changes)
        beat = Heartbeat(f"robustness {scan.name}", total=len(todo), unit="change", every=30.0) if progress else None
        ref, kept = None, {}
        for i, change in enumerate(todo, 1):
            hu = apply_change(hu0, classical, spacing, change)
            res = segment_volume(Volume(hu, vol.affine), ens.nets, ens.profile, tta=tta, device=device)
            label = res.label
            row = _row(scan.name, change, label, res.lung_added, classical, ml, ref, hu)
            if change.kind == "none":
                ref = row
            rows.append(row)
            view = {"hu": hu, "label": label, "classical": classical, "affine": np.asarray(vol.affine, float)}
            if keep_views == "all" or change.kind == "none":
                views[(scan.name, change.name)] = view
            elif "worst" in keep_views and (not kept or row["lung_dice"] < kept["dice"]):
                kept = {"dice": row["lung_dice"], "key": (scan.name, change.name), "view": view}
            if beat is not None:
                beat.update(i)
        if kept:
            views[kept["key"]] = kept["view"]
    return pd.DataFrame(rows), views


def trust_checks(scans, models, *, tta: bool | None = None, device=None) -> pd.DataFrame:
    """Does the command know when not to answer? Two broken copies of each real scan, as ``sscild segment`` sees them.

    * the lungs filled with soft tissue (:func:`~sscild.analysis.perturb.fill_lungs`): must be refused
      (:func:`sscild.clinic.qc.check_lungs_found`, exit status 5);
    * the slices stored head-feet reversed with the header unchanged
      (:func:`~sscild.analysis.perturb.reverse_slices`): must be flagged (``orientation``).

    Returns:
        One row per scan and copy: ``scan``, ``copy``, ``lung_ml``, ``outcome`` (``refused``, ``flagged``
        or ``answered``) and ``said`` (the refusal or the flags' words).
    """
    from sscild.clinic.qc import NoLungsError, check_lungs_found, quality_control, uncertainty_summary

    ens = load_ensemble(models, device)
    rows = []
    for scan in [Path(s) for s in scans]:
        vol = load_volume(scan)
        hu0 = np.asarray(vol.array, np.float32)
        spacing = tuple(float(s) for s in vol.spacing)
        classical = lung_mask_by_threshold(hu0, spacing)
        for name, hu in (("lungs filled with soft tissue", perturb.fill_lungs(hu0, classical)),
                         ("slices reversed, header unchanged", perturb.reverse_slices(hu0))):
            res = segment_volume(Volume(hu, vol.affine), ens.nets, ens.profile, tta=tta, device=device,
                                 uncertainty=True)
            lung_ml = int((res.label > 0).sum()) * float(np.prod(spacing)) / 1000.0
            row = {"scan": scan.name, "copy": name, "lung_ml": round(lung_ml, 1)}
            try:
                check_lungs_found(lung_ml, scan.name)
            except NoLungsError as exc:
                rows.append({**row, "outcome": f"refused (exit status {exc.exit_code})", "said": str(exc)})
                continue
            qc = quality_control(res, vol.affine, lung_ml=lung_ml, profile=ens.profile, slice_mm=spacing[2],
                                 uncertainty=uncertainty_summary(res.label, res.uncertainty))
            said = " ".join(f"[{f['code']}] {f['seen']} {f['means']}" for f in qc["flags"])
            rows.append({**row, "outcome": "flagged: " + ", ".join(f["code"] for f in qc["flags"]) if qc["flags"]
                         else "answered without a flag", "said": said})
    return pd.DataFrame(rows)
