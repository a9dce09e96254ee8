"""Segment a new chest CT with the fold ensemble; write the label map, viewer files, zones and reports.

What ``sscild segment`` does for one scan (:func:`segment_scan`): read the scan and refuse what is not a
3D chest CT in Hounsfield units (:func:`check_ct`); load the fold models (:mod:`sscild.model.loading`);
preprocess, predict with the ensemble and post-process on the network's grid
(:mod:`sscild.model.inference`); map the labels back onto the input's voxel grid; then write the
label map, volumes and extent stage, zones (:mod:`sscild.clinic.zones`), viewer files
(:mod:`sscild.clinic.viewer`), the overlay PNG (:mod:`sscild.clinic.figures`) and the HTML page
(:mod:`sscild.clinic.scanreport`). How the scan was acquired (:func:`acquisition_info`) is kept for
a later follow-up comparison.

For example ``segment_scan("chest.nrrd", "out/", models="results/synthetic-cpu/cpu")`` returns the
report, whose ``["summary"]["extent_stage"]`` is ``"limited"`` or ``"extensive"``.
"""

from __future__ import annotations

import csv
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pydicom
import torch

from sscild.clinic.figures import scan_montage
from sscild.clinic.qc import Flag, NoLungsError, check_lungs_found, quality_control, uncertainty_summary
from sscild.clinic.scanreport import scan_report_html
from sscild.clinic.viewer import write_dicom_seg, write_itksnap_labels, write_slicer_seg
from sscild.clinic.densitometry import DENSITY_RULES, zone_densitometry
from sscild.clinic.dicom_sr import write_dicom_sr
from sscild.clinic.zones import ZONE_RULES, zone_extent, zone_map
from sscild.data.image import Volume, pick_series as _pick_series, load_volume
from sscild.data.series import header_text
from sscild.data.nifti_writer import save_volume
from sscild.errors import InputError
from sscild.evaluation.metrics import volumes_ml
from sscild.model.device import select_device, set_threads
from sscild.model.inference import POSTPROCESS_RULE, UNCERTAIN_PCT, VolumePrediction, segment_volume, uses_cpu_bf16
from sscild.model.loading import Ensemble, find_models, load_ensemble
from sscild.paper import EXTENT_THRESHOLD_PCT
from sscild.paths import atomic_path, write_json

__all__ = ["CT_MIN_AIR_HU", "check_ct", "scan_stem", "acquisition_info", "segment_scan"]

CT_MIN_AIR_HU = -500.0
"""A CT in Hounsfield units has air (outside the body, in the lungs) well below this value."""


def check_ct(vol: Volume, path: str | Path) -> None:
    """Refuse what is not a 3D chest CT in Hounsfield units (with a message that says why).

    Raises:
        InputError: a single slice or too few slices, NaN/inf voxels, or intensities that are not HU
            (no air below :data:`CT_MIN_AIR_HU`, e.g. MR or an 8-bit export).

    Example:
        >>> ct = np.full((64, 64, 40), -1000, np.int16); ct[16:48, 16:48] = 40
        >>> check_ct(Volume(ct, np.eye(4)), "chest.nii.gz")          # a CT in HU passes silently
        >>> try:
        ...     check_ct(Volume(np.full((64, 64, 40), 500, np.int16), np.eye(4)), "mr.nii.gz")
        ... except InputError as exc:
        ...     print(str(exc)[:42])
        mr.nii.gz: intensities range 500..500, whi
    """
    arr = vol.array
    shape = tuple(int(n) for n in arr.shape)
    if arr.ndim != 3 or 1 in shape:
        raise InputError(f"{path}: this is a single 2D image (shape {shape}), not a CT volume. `sscild segment` "
                         "needs a 3D chest CT: a NIfTI/NRRD/MHA volume or a folder holding a whole DICOM series.")
    if min(shape) < 8:
        raise InputError(f"{path}: only {min(shape)} voxels along one axis (shape {shape}); a chest CT volume "
                         "has many axial slices. Give the whole series, not a few slices.")
    sample = np.asarray(arr[::4, ::4, ::2])
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise InputError(f"{path}: the image contains NaN or infinite values; re-export the scan.")
    lo, hi = float(sample.min()), float(sample.max())
    if lo > CT_MIN_AIR_HU or hi - lo < 500:
        raise InputError(f"{path}: intensities range {lo:.0f}..{hi:.0f}, which is not CT in Hounsfield units "
                         "(air should be near -1000 HU). If this is CT stored without its rescale slope/intercept, "
                         "re-export it in HU; MR and other modalities are not supported.")


def scan_stem(scan: Path) -> str:
    """The scan's file name without its image extension; every output file name starts with it.

    Example:
        >>> scan_stem(Path("/data/chest.nii.gz")), scan_stem(Path("/data/series"))
        ('chest', 'series')
    """
    name = scan.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "scan"
    return name or "scan"


def acquisition_info(scan: str | Path, vol: Volume, series_uid: str | None = None) -> dict:
    """What a follow-up comparison needs to know about how a scan was acquired.

    For a DICOM series: PatientID, slice thickness, reconstruction kernel, study date, manufacturer
    and SeriesInstanceUID from the header of its first slice; for other formats only the slice
    spacing is known (``None`` for the rest). ``series_uid``: the series read from a DICOM folder
    (:func:`sscild.data.image.pick_series`).

    Returns:
        dict with ``format``, ``patient_id``, ``slice_thickness_mm`` (with ``slice_thickness_from``),
        ``kernel``, ``study_date``, ``manufacturer``, ``series_uid``, ``series_files`` (DICOM only).
    """
    scan = Path(scan)
    info = {"format": "dicom" if scan.is_dir() or scan.suffix.lower() in (".dcm", ".dicom", ".ima") else "volume",
            "patient_id": None, "slice_thickness_mm": round(float(vol.spacing[2]), 4),
            "slice_thickness_from": "voxel spacing", "kernel": None, "study_date": None, "manufacturer": None,
            "series_uid": None, "series_files": None}
    if info["format"] != "dicom":
        return info
    if scan.is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # load_volume already said which series it read
            files = list(_pick_series(scan, series_uid).files)
    else:
        files = [str(scan)]
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception:  # already read once by load_volume; a header we cannot parse adds nothing
        return info

    def get(tag):
        return header_text(ds, tag)

    thick = get("SliceThickness")
    if thick:
        info["slice_thickness_mm"], info["slice_thickness_from"] = round(float(thick), 4), "DICOM SliceThickness"
    info.update(patient_id=get("PatientID"), kernel=get("ConvolutionKernel"), study_date=get("StudyDate"),
                manufacturer=get("Manufacturer"), series_uid=get("SeriesInstanceUID"), series_files=files)
    return info


@dataclass
class _Prediction:
    """The labels and uncertainty on the input's grid (and the network's), and how they were computed."""

    volume: VolumePrediction
    grid: dict
    tta: bool
    device: torch.device
    bf16: bool
    threads: int
    times: tuple[float, float, float, float]   # perf_counter after loading, preprocessing, prediction, restoring

    @property
    def label(self) -> np.ndarray:
        return self.volume.label

    @property
    def uncertainty(self) -> np.ndarray:
        return self.volume.uncertainty


def _check_paths(scan: Path, out: Path) -> None:
    if not scan.exists():
        raise InputError(f"{scan}: no such file or folder. Fix: check the path of the scan.")
    if scan.is_dir() and (out.resolve() == scan.resolve() or scan.resolve() in out.resolve().parents):
        raise InputError(f"--out {out} lies inside the DICOM folder being read ({scan}); inputs are never written "
                         "to. Choose another output folder.")


def _predict_scan(vol: Volume, scan: Path, ens: Ensemble, *, tta: bool | None, postprocess: bool, device,
                  cpu_bf16: bool | None, progress: bool) -> _Prediction:
    """Preprocess, predict with the ensemble (labels and uncertainty), post-process, map back to the input's grid."""
    profile = ens.profile
    threads = set_threads()
    tta = bool(profile.tta_flips) if tta is None else bool(tta)
    t_load = time.perf_counter()
    device = select_device(device)
    bf16 = uses_cpu_bf16(device, cpu_bf16)
    res = segment_volume(vol, ens.nets, profile, tta=tta, postprocess=postprocess, device=device, cpu_bf16=bf16,
                         uncertainty=True, progress=progress, case_id=scan.name)
    t_post = time.perf_counter()
    # preprocessing, prediction and restoring run inside segment_volume; its record splits the time
    t_pre, t_pred = t_load + res.seconds["preprocess"], t_load + res.seconds["preprocess"] + res.seconds["predict"]
    return _Prediction(volume=res, grid={"shape": list(res.pre.image.shape), "spacing_mm": list(res.pre.spacing)},
                       tta=tta, device=device, bf16=bf16, threads=threads, times=(t_load, t_pre, t_pred, t_post))


def _output_paths(scan: Path, out: Path, stem: str, acq: dict, *, montage: bool, extras: bool) -> dict[str, Path]:
    """The files :func:`segment_scan` writes, by role; none may be the scan itself."""
    outputs = {"labels": out / f"{stem}_labels.nii.gz", "uncertainty": out / f"{stem}_uncertainty.nii.gz",
               "report": out / f"{stem}_report.json", "table": out / f"{stem}_report.csv"}
    if montage:
        outputs["overlay"] = out / f"{stem}_overlay.png"
    if extras:
        outputs.update(zones=out / f"{stem}_zones.csv", densitometry=out / f"{stem}_densitometry.csv",
                       html=out / f"{stem}_report.html",
                       slicer=out / f"{stem}_labels.seg.nrrd", itksnap=out / f"{stem}_labels.itksnap.txt")
        if acq["format"] == "dicom" and scan.is_dir():
            outputs.update(dicom_seg=out / f"{stem}_seg.dcm", dicom_sr=out / f"{stem}_sr.dcm")
    if any(p.resolve() == scan.resolve() for p in outputs.values()):
        raise InputError(f"{scan}: an output would overwrite the scan itself; choose another --out folder.")
    return outputs


def _extent_summary(scan: Path, label: np.ndarray, spacing: tuple) -> tuple[dict, dict, float, str, dict]:
    """Volumes (mL), percent of lung per class, the lesion share and its extent stage, and the summary dict."""
    vols = volumes_ml(label, spacing)
    lung = vols.get("lung", 0.0)
    pct = {k: (100.0 * v / lung if lung > 0 else float("nan")) for k, v in vols.items() if k != "lung"}
    lesion_pct = pct.get("lesion", float("nan"))
    # Goh et al. 2008, as sscild.evaluation.staging.extent_stage (not imported: it loads statsmodels, seconds of
    # start-up)
    stage = ("undetermined" if not np.isfinite(lesion_pct)
             else "extensive" if lesion_pct > EXTENT_THRESHOLD_PCT else "limited")
    summary = {
        "scan": str(scan),
        "lung_volume_ml": round(lung, 1),
        "volumes_ml": {k: round(v, 1) for k, v in vols.items()},
        "percent_of_lung": {k: round(v, 2) for k, v in pct.items()},
        "extent_stage": stage,
        "extent_rule": f"Goh et al. 2008: limited <= {EXTENT_THRESHOLD_PCT:g} % of lung, extensive above",
    }
    return vols, pct, lesion_pct, stage, summary


def _report(summary: dict, outputs: dict, vol: Volume, spacing: tuple, acq: dict, ens: Ensemble,
            pred: _Prediction, *, postprocess: bool, t0: float) -> dict:
    """The report dict (``<stem>_report.json``) before zones and the output timings are added."""
    t_load, t_pre, t_pred, t_post = pred.times
    return {
        "summary": summary,
        "outputs": {k: str(p) for k, p in outputs.items()},
        "labels": {"0": "background", "1": "normal lung", "2": "established fibrosis (EF)",
                   "3": "ground-glass opacity (GGO)"},
        "input_shape": list(vol.shape),
        "input_spacing_mm": list(spacing),
        "acquisition": {k: v for k, v in acq.items() if k != "series_files"},
        "network_grid": pred.grid,
        "models": [str(p_) for p_ in ens.paths],
        "model_files": ens.identity or [],
        "training_cohort": ens.training_cohort,
        "models_choice": ens.choice,
        "profile": ens.profile.name,
        "ensemble": (f"mean softmax of {len(ens.nets)} fold model(s)"
                     + (" and their left-right flips" if pred.tta else "")),
        "postprocess": POSTPROCESS_RULE if postprocess else "none",
        "lesion_threshold": ens.profile.lesion_threshold,
        "precision": "float16 autocast (CUDA)" if pred.device.type == "cuda" else
                     "bfloat16 autocast (native on this CPU)" if pred.bf16 else "float32",
        "threads": pred.threads,
        "seconds": {"read_scan_and_models": round(t_load - t0, 2), "preprocess": round(t_pre - t_load, 2),
                    "predict": round(t_pred - t_pre, 2), "postprocess_and_restore": round(t_post - t_pred, 2)},
        "warning": _warning(ens.training_cohort),
    }


def _warning(cohort: dict) -> str:
    """The report's research-use warning, naming the training cohort (first when it was synthetic)."""
    base = "Research software, not a medical device."
    name = cohort.get("name") or "an unrecorded cohort"
    if cohort.get("synthetic"):
        return (f"These models were trained on a SYNTHETIC cohort ({name}): generated phantoms, never a real "
                f"patient's disease. The numbers show that the pipeline runs; they are not measurements of "
                f"disease. {base}")
    if cohort.get("synthetic") is None:
        return (f"{base} The model files do not record whether their training cohort ({name}) was real or "
                "synthetic; a synthetic-cohort model has never seen real disease.")
    return f"{base} Models trained on the cohort {name}."


def _refusal(lung_ml: float, scan: Path, refuse: bool) -> str | None:
    """Raise :class:`NoLungsError` for a scan without plausible lungs; with ``refuse=False`` return its words."""
    try:
        check_lungs_found(lung_ml, scan)
    except NoLungsError as exc:
        if refuse:
            raise
        return str(exc)
    return None


def _add_quality(report: dict, pred: _Prediction, vol: Volume, ens: Ensemble, acq: dict,
                 refusal: str | None = None) -> None:
    """The uncertainty summary and the quality-control measures and flags (with an overridden refusal
    first), into ``report``."""
    t = time.perf_counter()
    unc = uncertainty_summary(pred.label, pred.uncertainty)
    report["uncertainty"] = {
        "map": report["outputs"]["uncertainty"],
        "rule": (f"per voxel, the entropy of the ensemble's mean softmax divided by ln 4, in percent (0: every model "
                 f"sure of one class; 100: all four classes equally likely); a voxel at or above {UNCERTAIN_PCT} % "
                 "(as unsure as an even split between two classes) is counted as uncertain"),
        "per_class": unc}
    report["quality_control"] = quality_control(pred.volume, vol.affine, lung_ml=report["summary"]["lung_volume_ml"],
                                                profile=ens.profile, slice_mm=acq["slice_thickness_mm"],
                                                uncertainty=unc)
    if refusal is not None:
        report["quality_control"]["flags"].insert(0, Flag(
            "no_lungs", "refuse (overridden with --force)", refusal.replace("; no result was written", ""),
            "The numbers below are not measurements of a lung; they were written only because --force was given.",
            ["every result"]).to_dict())
    report["summary"]["flags"] = [f["code"] for f in report["quality_control"]["flags"]]
    report["summary"]["uncertain_pct_of_lesion"] = unc["lesion"]["uncertain_pct"]
    report["seconds"]["quality_control"] = round(time.perf_counter() - t, 2)


def _write_table(path: Path, vols: dict, pct: dict, stage: str) -> None:
    """``<stem>_report.csv``: volume and percent of lung per region, then the extent stage."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["region", "volume_ml", "percent_of_lung"])
            for k, v in vols.items():
                w.writerow([k, f"{v:.1f}", "" if k == "lung" else f"{pct[k]:.2f}"])
            w.writerow(["extent_stage", stage, ""])


def _dicom_seg_refusal(acq: dict) -> str | None:
    """Why no DICOM Segmentation can be written for this series (``None`` when it can)."""
    try:
        ds = pydicom.dcmread(acq["series_files"][0], stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a reason to refuse, said in words
        return f"the series' first header could not be read again ({type(exc).__name__})"
    missing = [k for k in ("FrameOfReferenceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        return (f"the series has no {', '.join(missing)} (some anonymisers remove them); a DICOM Segmentation must "
                "reference them to overlay on its CT. Every other output was written; the .seg.nrrd and the NIfTI "
                "label map overlay in 3D Slicer and ITK-SNAP")
    return None


def _records(table) -> dict:
    """A zone table as ``{zone: {column: value}}`` with NaN as None (for JSON)."""
    return {z: {k: (None if not np.isfinite(v) else round(float(v), 3)) for k, v in row.items()}
            for z, row in table.iterrows()}


def _write_zones_and_viewer_files(report: dict, outputs: dict, label: np.ndarray, vol: Volume, acq: dict,
                                  ens: Ensemble):
    """Zones and densitometry CSVs (also into ``report``), the 3D Slicer and ITK-SNAP files, and for a DICOM
    series the DICOM Segmentation and SR (:func:`_write_dicom_objects`); returns the zones."""
    t_zone = time.perf_counter()
    zmap = zone_map(label, vol.affine)
    zones = zone_extent(label, vol.affine, zmap=zmap)
    with atomic_path(outputs["zones"], suffix=".csv") as tmp:
        zones.round(3).to_csv(tmp)
    report["zones"] = {"rules": ZONE_RULES, "sides_by": zones.attrs.get("sides_by"), "table": _records(zones)}
    report["seconds"]["zones"] = round(time.perf_counter() - t_zone, 2)
    t_dens = time.perf_counter()
    density = zone_densitometry(zmap, vol.array, vol.affine)
    with atomic_path(outputs["densitometry"], suffix=".csv") as tmp:
        density.round(3).to_csv(tmp)
    report["densitometry"] = {"rules": DENSITY_RULES, "table": _records(density)}
    report["seconds"]["densitometry"] = round(time.perf_counter() - t_dens, 2)
    t_view = time.perf_counter()
    write_slicer_seg(outputs["slicer"], label, vol.affine)
    write_itksnap_labels(outputs["itksnap"])
    if "dicom_seg" in outputs:
        _write_dicom_objects(report, outputs, label, vol, acq, ens)
    report["seconds"]["viewer_files"] = round(time.perf_counter() - t_view, 2)
    return zones


def _not_written(report: dict, outputs: dict, key: str, why: str) -> None:
    report.setdefault("not_written", {})[key] = why
    report["outputs"].pop(key, None)
    outputs.pop(key, None)


def _write_dicom_objects(report: dict, outputs: dict, label: np.ndarray, vol: Volume, acq: dict, ens: Ensemble) -> None:
    """The DICOM Segmentation and the DICOM SR of the volumes, for a DICOM series input. Either that the series
    cannot carry (no Frame of Reference UID, slices unevenly spaced, ...) is not written; the report's
    ``not_written`` says why, and every other output is."""
    why = _dicom_seg_refusal(acq)
    if why is None:
        try:
            write_dicom_seg(outputs["dicom_seg"], label, vol.affine, acq["series_files"], models=ens.identity)
        except InputError as exc:
            why = str(exc)
    if why is not None:
        _not_written(report, outputs, "dicom_seg", why)
    s = report["summary"]
    try:
        write_dicom_sr(outputs["dicom_sr"], series_files=acq["series_files"], seg_path=outputs.get("dicom_seg"),
                       volumes_ml=s["volumes_ml"], percent_of_lung=s["percent_of_lung"], stage=s["extent_stage"],
                       models=ens.identity)
    except InputError as exc:
        _not_written(report, outputs, "dicom_sr", str(exc))


def _write_overlay(path: Path, vol: Volume, label: np.ndarray, title: str, uncertainty=None) -> bytes:
    """The overlay montage PNG (with the uncertainty row when given); returns its bytes (the HTML page embeds them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # matplotlib layout notes; nothing to act on
        fig = scan_montage(vol.array, label, vol.affine, title=title, uncertainty=uncertainty)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        png = path.read_bytes()
    plt.close(fig)
    return png


def _write_pictures(report: dict, outputs: dict, vol: Volume, pred: _Prediction, zones, *, title: str) -> None:
    """The overlay montage and the HTML page (each when asked for in ``outputs``)."""
    png = None
    if "overlay" in outputs:
        png = _write_overlay(outputs["overlay"], vol, pred.label, title=title, uncertainty=pred.uncertainty)
    if "html" in outputs:
        with atomic_path(outputs["html"], suffix=".html") as tmp:
            Path(tmp).write_text(scan_report_html(report, zones=zones, overlay_png=png), encoding="utf-8")


def segment_scan(scan: str | Path, out: str | Path, *, models=None, ensemble: Ensemble | None = None,
                 tta: bool | None = None, postprocess: bool = True, device=None, cpu_bf16: bool | None = None,
                 progress: bool = True, montage: bool = True, extras: bool = True, refuse: bool = True,
                 series_uid: str | None = None) -> dict:
    """Segment a new chest CT with the fold ensemble; write label map, viewer files, zones and reports.

    Outputs in ``out`` (``<stem>`` is the scan's file name without its extension, :func:`scan_stem`):

    * ``<stem>_labels.nii.gz``: uint8 labels (0 background, 1 normal, 2 EF, 3 GGO) with the input's
      shape and affine;
    * ``<stem>_uncertainty.nii.gz``: uint8 uncertainty of every voxel, in percent
      (:mod:`sscild.model.inference`), on the same grid: load it over the scan as a colour layer;
    * ``<stem>_report.json`` and ``<stem>_report.csv``: volumes (mL), percent of lung per class, the
      extent stage (Goh et al. 2008: limited <= 20 % of lung, extensive > 20 %), the model files
      (path, SHA-256, fold) and the cohort they were trained on (``training_cohort``: name, synthetic),
      the uncertainty per class and the quality-control flags (:mod:`sscild.clinic.qc`);
    * ``<stem>_overlay.png``: axial and coronal slices with the labels, radiological orientation;
    * with ``extras`` (the default): ``<stem>_zones.csv`` (extent per lung zone, :mod:`sscild.clinic.zones`),
      ``<stem>_densitometry.csv`` (lung attenuation per zone, :mod:`sscild.clinic.densitometry`),
      ``<stem>_report.html`` (:mod:`sscild.clinic.scanreport`), ``<stem>_labels.seg.nrrd`` (3D Slicer),
      ``<stem>_labels.itksnap.txt`` (ITK-SNAP), and for a DICOM series ``<stem>_seg.dcm`` (DICOM
      Segmentation, :mod:`sscild.clinic.viewer`) and ``<stem>_sr.dcm`` (DICOM SR of the volumes).

    Args:
        scan: a NIfTI / NRRD / MHA file or a folder holding one DICOM series.
        out: output folder (created); must not be the DICOM folder being read.
        models: run folder with ``fold_*/model_final.pt`` (default:
            :func:`sscild.model.loading.choose_default_models`).
        ensemble: an already loaded :class:`~sscild.model.loading.Ensemble` (a batch loads it once);
            overrides ``models``.
        tta: left-right flip test-time augmentation; ``None``: as the models' profile says
            (``tta_flips``; on for ``cpu`` and ``paper``).
        postprocess: :func:`sscild.model.inference.keep_largest_lung_components`.
        device: torch device.
        cpu_bf16: bfloat16 inference on CPU (:func:`sscild.model.inference.predict_preprocessed`); ``None``:
            where the CPU supports it natively. The choice is recorded in the report (``"precision"``).
        progress, montage, extras: a tqdm bar over slices; the overlay PNG; the ``extras`` files above.
        series_uid: the SeriesInstanceUID to read from a DICOM folder (:func:`sscild.data.series.pick_series`).
        refuse: refuse a scan without plausible lungs (:func:`sscild.clinic.qc.check_lungs_found`); with
            ``False`` (``--force``) every output is written anyway and the refusal becomes a flag of the
            report.

    Returns:
        The report dict (``report["summary"]`` holds volumes, % of lung and extent stage).

    Raises:
        InputError: missing or unreadable scan, a 2D image, not CT in HU, missing or unusable models,
            models of other labels than the study's.
        NoLungsError: no plausible lungs found (:func:`sscild.clinic.qc.check_lungs_found`); nothing is
            written.
    """
    t0 = time.perf_counter()
    scan, out = Path(scan), Path(out)
    _check_paths(scan, out)
    if ensemble is None and models is not None:
        find_models(models)  # a wrong --models is reported before the scan is read
    vol = load_volume(scan, series_uid=series_uid)
    check_ct(vol, scan)
    ens = ensemble if ensemble is not None else load_ensemble(models, device)
    pred = _predict_scan(vol, scan, ens, tta=tta, postprocess=postprocess, device=device, cpu_bf16=cpu_bf16,
                         progress=progress)
    label, t_post = pred.label, pred.times[3]
    spacing = tuple(float(s) for s in vol.spacing)
    vols, pct, lesion_pct, stage, summary = _extent_summary(scan, label, spacing)
    refusal = _refusal(vols.get("lung", 0.0), scan, refuse)  # raised before anything is written
    acq = acquisition_info(scan, vol, series_uid)
    out.mkdir(parents=True, exist_ok=True)
    outputs = _output_paths(scan, out, scan_stem(scan), acq, montage=montage, extras=extras)
    save_volume(outputs["labels"], label, vol.affine, dtype=np.uint8)
    save_volume(outputs["uncertainty"], pred.uncertainty, vol.affine, dtype=np.uint8)
    report = _report(summary, outputs, vol, spacing, acq, ens, pred, postprocess=postprocess, t0=t0)
    _add_quality(report, pred, vol, ens, acq, refusal)
    _write_table(outputs["table"], vols, pct, stage)
    zones = _write_zones_and_viewer_files(report, outputs, label, vol, acq, ens) if extras else None
    _write_pictures(report, outputs, vol, pred, zones, title=f"{scan.name}: lesion {lesion_pct:.1f} % of lung ({stage})")
    report["seconds"]["write_outputs"] = round(time.perf_counter() - t_post, 2)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    write_json(outputs["report"], report)
    return report
