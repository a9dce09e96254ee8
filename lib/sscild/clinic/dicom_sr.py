"""The volumes of a segmented scan as a DICOM Structured Report (TID 1500 Measurement Report).

``sscild segment`` writes ``<stem>_sr.dcm`` for a DICOM series: a Comprehensive 3D SR (highdicom) in the
series' study, so a PACS, OHIF or 3D Slicer lists the numbers beside the CT and its DICOM Segmentation
(:func:`sscild.clinic.viewer.write_dicom_seg`). One measurement group per region, each with its Volume
(SCT 118565006, in mL):

* normal lung, established fibrosis, ground-glass opacity: a volumetric ROI group (TID 1411) that
  references its segment of the DICOM Segmentation, coded as the segment is
  (:data:`sscild.clinic.viewer.SEGMENT_CODES`); without a Segmentation, an image-level group (TID 1501);
* the whole lung (Lung, SCT 39607008) and the lesion (EF and GGO together; Lesion, SCT 52988006): image-level
  groups (TID 1501), as no single segment is either.

EF, GGO and the lesion (and normal lung, when given) also carry their percent of the lung volume (unit
``%``), and the lesion group the extent stage (Goh et al. 2008) as a qualitative evaluation. DICOM's
tables have no code for either (its percent-of-volume codes name one finding, e.g. calcification), so
both use this package's own coding scheme ``99SSCILD`` (private, declared in the file's Coding Scheme
Identification Sequence; the code meanings say what they are to any reader). Every group
names the algorithm (TID 4019: "sscild fold ensemble", the package version and the fold models' hashes,
:func:`sscild.clinic.viewer.algorithm_parameters`). The report is marked complete, preliminary and
unverified: research software, not a medical device. Patient and study attributes come from the series
(empty where it lacks them); every image of the series (and the Segmentation) is listed as evidence, without
an image library (TID 1600, which highdicom adds only when asked): one entry per slice made a 300-slice SR
26 times larger (1.2 MB) and took 13 s. The series number is the source's + 101
(:func:`sscild.clinic.viewer.derived_series_number`), next to the Segmentation's + 100.

Usage::

    write_dicom_sr("out/chest_sr.dcm", series_files=files, seg_path="out/chest_seg.dcm",
                   volumes_ml=summary["volumes_ml"], percent_of_lung=summary["percent_of_lung"],
                   stage=summary["extent_stage"], models=ensemble.identity)
"""

from __future__ import annotations

import math
from pathlib import Path

from sscild import __version__
from sscild.clinic.viewer import (LUNG, SEGMENT_CODES, algorithm_parameters, coded, derived_series_number,
                                  read_series_headers)
from sscild.errors import InputError
from sscild.palette import LABEL_NAMES
from sscild.paper import EXTENT_THRESHOLD_PCT
from sscild.paths import atomic_path

__all__ = ["LOCAL_SCHEME", "REGIONS", "VOLUME", "PERCENT_OF_LUNG", "EXTENT_STAGE", "STAGES", "write_dicom_sr"]

LOCAL_SCHEME = "99SSCILD"
"""Coding scheme designator of this package's own codes (DICOM: a private scheme's designator starts with 99)."""

VOLUME = ("118565006", "SCT", "Volume")
PERCENT_OF_LUNG = ("PCT_OF_LUNG", LOCAL_SCHEME, "Percent of lung volume")
EXTENT_STAGE = ("EXTENT_STAGE", LOCAL_SCHEME, "Extent stage (Goh et al. 2008)")
STAGES = {
    "limited": ("LIMITED", LOCAL_SCHEME, f"Limited (lesion <= {EXTENT_THRESHOLD_PCT:g} % of lung)"),
    "extensive": ("EXTENSIVE", LOCAL_SCHEME, f"Extensive (lesion > {EXTENT_THRESHOLD_PCT:g} % of lung)"),
    "undetermined": ("UNDETERMINED", LOCAL_SCHEME, "Undetermined (no lung volume)"),
}
"""The extent stages ``sscild segment`` reports, as codes of the qualitative evaluation :data:`EXTENT_STAGE`."""

_ML = ("ml", "UCUM", "milliliter")
_PERCENT = ("%", "UCUM", "Percent")
_PROCEDURE = ("24627-2", "LN", "CT Chest")

REGIONS = {
    "lung": {"name": "whole lung", "segment": None, "category": ("91723000", "SCT", "Anatomical Structure"),
             "type": LUNG, "site": None},
    **{key: {"name": LABEL_NAMES[n], "segment": n, "category": SEGMENT_CODES[n]["category"],
             "type": SEGMENT_CODES[n]["type"], "site": SEGMENT_CODES[n]["anatomic_region"]}
       for key, n in (("normal", 1), ("ef", 2), ("ggo", 3))},
    "lesion": {"name": "lesion (established fibrosis and ground-glass opacity)", "segment": None,
               "category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
               "type": ("52988006", "SCT", "Lesion"), "site": LUNG},
}
"""The measurement groups, in the report's order: keys of ``volumes_ml``, the tracking identifier's text,
the segment of the DICOM Segmentation (``None``: an image-level group), finding category, type and site."""

_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _check_numbers(volumes_ml: dict, percent_of_lung: dict, stage: str) -> None:
    missing = [k for k in REGIONS if k not in volumes_ml] + [k for k in ("ef", "ggo", "lesion")
                                                              if k not in percent_of_lung]
    unknown = [k for k in list(volumes_ml) + list(percent_of_lung) if k not in REGIONS]
    if missing or unknown or "lung" in percent_of_lung:
        raise ValueError(f"volumes_ml needs {list(REGIONS)}, percent_of_lung ef, ggo, lesion (and may have normal); "
                         f"missing {missing}, unknown {unknown}")
    if not all(math.isfinite(float(v)) for v in volumes_ml.values()):
        raise ValueError(f"volumes must be numbers, got {volumes_ml}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")


def _sources(series_files) -> list:
    """The series' headers; refused (InputError) when a UID the SR must reference is missing."""
    files = list(series_files)
    if not files:
        raise InputError("no DICOM files were given for the SR's source series.")
    sources = read_series_headers(files)
    for f, ds in zip(files, sources):
        missing = [k for k in _SOURCE_UIDS if not str(ds.get(k, "") or "").strip()]
        if missing:
            raise InputError(f"{f}: no {', '.join(missing)} (some anonymisers remove them); a DICOM SR must reference "
                             "its images by them, so it is not written.")
    return sources


def _segmentation(seg_path: str | Path, source):
    """The DICOM Segmentation's header, checked to be of the source's study and series."""
    import pydicom

    try:
        seg = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused in words
        raise InputError(f"{seg_path}: not readable as DICOM ({type(exc).__name__}); the SR is not written.") from exc
    series = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if seg.get("Modality") != "SEG" or seg.get("StudyInstanceUID") != source.StudyInstanceUID \
            or source.SeriesInstanceUID not in series:
        raise InputError(f"{seg_path}: not a DICOM Segmentation of this series (study {source.StudyInstanceUID}, "
                         f"series {source.SeriesInstanceUID}); the SR is not written.")
    return seg


def _group(key: str, volumes_ml: dict, percent_of_lung: dict, stage: str, algorithm, seg, source):
    """One measurement group (TID 1411 referencing the segment, or TID 1501) of :data:`REGIONS`."""
    import highdicom as hd

    region = REGIONS[key]
    measurements = [hd.sr.Measurement(name=coded(VOLUME), value=float(volumes_ml[key]), unit=coded(_ML))]
    pct = percent_of_lung.get(key)
    if pct is not None and math.isfinite(float(pct)):  # no lung measured: the percent is not a number, left out
        measurements.append(hd.sr.Measurement(name=coded(PERCENT_OF_LUNG), value=float(pct), unit=coded(_PERCENT)))
    kwargs = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=region["name"]),
        finding_category=coded(region["category"]), finding_type=coded(region["type"]),
        finding_sites=[hd.sr.FindingSite(coded(region["site"]))] if region["site"] else None,
        algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=([hd.sr.QualitativeEvaluation(coded(EXTENT_STAGE), coded(STAGES[stage]))]
                                 if key == "lesion" else None))
    if seg is None or region["segment"] is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**kwargs)
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=region["segment"],
        source_series=hd.sr.SourceSeriesForSegmentation(source.SeriesInstanceUID))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **kwargs)


def write_dicom_sr(path: str | Path, *, series_files, seg_path: str | Path | None, volumes_ml: dict,
                   percent_of_lung: dict, stage: str, models: list[dict] | None = None,
                   series_number: int | None = None) -> Path:
    """Write the volumes, percents of lung and extent stage as a DICOM SR (TID 1500) of a CT series.

    Args:
        path: output ``.dcm`` file, written atomically.
        series_files: the CT series' files, sorted as the volume's slices (the SR's evidence).
        seg_path: the DICOM Segmentation written for this series (its segments are referenced), or ``None``.
        volumes_ml: mL per region: ``lung``, ``normal``, ``ef``, ``ggo``, ``lesion``.
        percent_of_lung: percent of the lung volume: ``ef``, ``ggo``, ``lesion`` (and optionally ``normal``);
            a value that is not finite (no lung) is left out.
        stage: ``"limited"``, ``"extensive"`` or ``"undetermined"`` (:data:`STAGES`).
        models: the fold models, as for :func:`sscild.clinic.viewer.write_dicom_seg`; ``None``: only the version.
        series_number: the SR's series number; ``None``: :func:`sscild.clinic.viewer.derived_series_number`
            (the source's + 101).

    Returns:
        ``path``.

    Raises:
        InputError: the series lacks a UID an SR must reference, or ``seg_path`` is not a Segmentation of it.
        ValueError: a region or the stage missing or unknown, a volume that is not a number.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import CodedConcept

    _check_numbers(volumes_ml, percent_of_lung, stage)
    sources = _sources(series_files)
    seg = None if seg_path is None else _segmentation(seg_path, sources[0])
    params = algorithm_parameters(models)
    algorithm = hd.sr.AlgorithmIdentification(name="sscild fold ensemble", version=__version__,
                                              parameters=[f"{k}={v}" for k, v in params.items()] or None,
                                              family=CodedConcept("123110", "DCM", "Artificial Intelligence"))
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="sscild", manufacturer_name="sscild",
                                                       model_name="sscild segment")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device)),
        procedure_reported=coded(_PROCEDURE),
        imaging_measurements=[_group(k, volumes_ml, percent_of_lung, stage, algorithm, seg, sources[0])
                              for k in REGIONS])
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources + ([seg] if seg is not None else []), content=report[0], series_instance_uid=hd.UID(),
        series_number=derived_series_number(sources[0], "sr") if series_number is None else int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sscild", is_complete=True,
        series_description="sscild lung volumes", manufacturer_model_name="sscild segment",
        software_versions=__version__, device_serial_number="0",
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME, name="sscild local codes",
            responsible_organization="sscild (SSc-ILD HRCT lesion-segmentation re-run)")])
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        sr.save_as(str(tmp))
    return path
