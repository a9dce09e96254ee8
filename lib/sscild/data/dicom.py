"""DICOM import: a folder of DICOM series (one sub-folder per patient) -> a pseudonymised cohort folder.

:func:`import_dicom` writes a cohort folder in the layout :mod:`sscild.data.cohort` reads
(``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``clinical.csv``) without copying any identifying
header value (:data:`IDENTIFYING_DICOM_TAGS`) or identifying clinical column. Series are read with
:func:`sscild.data.image.read_series`, so they come out in Hounsfield units and a series with a
missing or unreadable slice is refused. Label files may be plain label maps or segmentations a
radiologist corrected (3D Slicer ``.seg.nrrd``, DICOM SEG), read onto the CT's grid by
:func:`sscild.data.segfiles.read_segmentation`.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from sscild import LABELS
from sscild.data.clinical_table import read_cells
from sscild.data.image import (NIFTI_SUFFIXES, SITK_SUFFIXES, DicomSeries, Volume, check_exists, pick_series,
                               read_series)
from sscild.data.names import normalise_name
from sscild.data.nifti_writer import save_volume
from sscild.data.segfiles import check_label_map, read_segmentation
from sscild.errors import InputError
from sscild.paths import atomic_path, write_json
from sscild.progress import Heartbeat

__all__ = ["import_dicom", "IDENTIFYING_DICOM_TAGS", "LABEL_SUFFIXES"]

logger = logging.getLogger(__name__)

IDENTIFYING_DICOM_TAGS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthTime",
    "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StationName", "StudyID", "StudyDescription",
    "SeriesDescription", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime",
    "SeriesTime", "AcquisitionTime", "ContentTime", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber",
)
"""DICOM attributes whose values :func:`import_dicom` treats as identifying (never copied)."""


_IDENTIFYING_COLUMN = re.compile(
    r"(^|_)(name|names|surname|initials|mrn|patient|patient_id|pid|subject|dob|birth|birthdate|"
    r"date|time|datetime|accession|institution|hospital|site|physician|doctor|referring|"
    r"address|street|city|zip|postcode|postal|phone|telephone|email|ssn|insurance|uid|"
    r"study_id|series_description|study_description|description|comments?|notes?)(_|$)"
)


def _is_identifying_column(name: str) -> bool:
    n = normalise_name(name)
    return n.endswith("_id") or n == "id" or bool(_IDENTIFYING_COLUMN.search(n))


def _identifying_values(series: DicomSeries) -> set[str]:
    """Identifying header strings of a series (to keep them out of everything written)."""
    import pydicom

    values: set[str] = set()
    for f in series.files[:1] + series.files[-1:]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        for tag in IDENTIFYING_DICOM_TAGS:
            v = ds.get(tag)
            if v is None:
                continue
            items = v if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]
            for item in items:
                s = str(item).strip()
                if len(s) >= 3:
                    values.add(s)
                    values.update(p for p in re.split(r"[\^ ]+", s) if len(p) >= 3)
    return values


LABEL_SUFFIXES = (".seg.nrrd", *NIFTI_SUFFIXES, *SITK_SUFFIXES, ".dcm", "_seg.dcm")
"""How a label file's name may end after the patient folder's name (any case): a 3D Slicer segmentation,
a label map, a DICOM SEG (``<patient>.dcm`` or ``<patient>_seg.dcm``)."""


def _find_label(labels: Path, patient: str, files: list[Path]) -> Path | None:
    """The label file of ``patient`` among ``files`` (the labels folder's files), or None.

    Raises:
        InputError: several files would do (e.g. the original and the corrected segmentation).
    """
    found = [f for f in files if f.name.startswith(patient) and f.name[len(patient):].lower() in LABEL_SUFFIXES]
    if len(found) > 1:
        raise InputError(f"{labels}: several label files for patient folder {patient}: "
                         f"{', '.join(sorted(f.name for f in found))}. Fix: keep only the one to import "
                         "(e.g. move the uncorrected segmentation elsewhere).")
    return found[0] if found else None


def _hu_array(array: np.ndarray) -> np.ndarray:
    """Store HU as int16 when the values are whole numbers in range, else float32."""
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < -32768 or array.max() > 32767):
            return array.astype(np.float32)
        return array.astype(np.int16, copy=False)
    rounded = np.rint(array)
    if np.array_equal(rounded, array) and rounded.min() >= -32768 and rounded.max() <= 32767:
        return rounded.astype(np.int16)
    return array.astype(np.float32, copy=False)


def _read_clinical_for_import(clinical: Path, patients: list[str], secrets: set[str]):
    """The rows of the import's clinical table that match patient folders, as text (copied as they are;
    the new cohort's values are then checked by :func:`sscild.data.clinical_table.parse_clinical`)."""
    try:
        table = read_cells(clinical)
    except ValueError as exc:
        raise InputError(str(exc)) from exc.__cause__
    wanted = set(patients)
    best, best_hits = None, 0
    for col in table.columns:
        hits = len(wanted & {str(v).strip() for v in table[col]})
        if hits > best_hits:
            best, best_hits = col, hits
    if best is None:
        raise InputError(
            f"{clinical}: no column holds the patient folder names ({', '.join(patients[:3])}"
            f"{', ...' if len(patients) > 3 else ''}). Fix: add a column (e.g. 'patient') whose "
            "values are the names of the patient folders in the DICOM source folder."
        )
    dropped = [c for c in table.columns if c != best and _is_identifying_column(c)]
    kept = [c for c in table.columns if c != best and c not in dropped]
    for c in list(kept):  # a column that repeats a header value (a name, an ID) is identifying too
        cells = {str(v).strip() for v in table[c]}
        if any(s and (s in secrets or any(len(x) >= 6 and x in s for x in secrets)) for s in cells):
            kept.remove(c)
            dropped.append(c)
    key = table[best].astype(str).str.strip()
    duplicated = sorted(set(key[key.duplicated()]) & wanted)
    if duplicated:
        raise InputError(f"{clinical}: several rows for patient folder(s) {', '.join(duplicated)} in "
                         f"column {best!r}. Fix: keep one row per patient.")
    rows = {p: table.loc[key == p, kept].iloc[0].to_dict() for p in patients if (key == p).any()}
    unmatched = int((~key.isin(wanted)).sum())
    return kept, dropped, rows, unmatched


def _check_paths(src: Path, out: Path, labels, clinical) -> tuple[Path | None, Path | None]:
    """Check the import's folders before anything is read; returns ``labels`` and ``clinical`` as paths."""
    check_exists(src)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder. Fix: give a folder with one sub-folder per patient.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not empty. Fix: choose a new output folder "
                         "(import never overwrites a cohort).")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise InputError(f"{out}: lies inside the DICOM source folder {src}. Fix: write the cohort "
                         "elsewhere (inputs are never written to).")
    labels = Path(labels) if labels is not None else None
    if labels is not None and not labels.is_dir():
        raise InputError(f"{labels}: labels folder not found. Fix: give the folder holding the label "
                         "files named after the patient folders.")
    clinical = Path(clinical) if clinical is not None else None
    if clinical is not None:
        check_exists(clinical)
    return labels, clinical


def _raise_problems(src: Path, problems: list[str]) -> None:
    if problems:
        raise InputError(f"DICOM import from {src} found {len(problems)} problem(s):\n- " + "\n- ".join(problems))


def _write_label(label_file: Path, vol: Volume, patient: str, target: Path, read_label: Callable) -> str | None:
    """A patient's label file on its CT's grid, written as uint8; the problem, or None when written."""
    try:
        lab_arr = read_label(label_file, vol)
    except InputError as exc:
        return f"{exc} (patient folder {patient})"
    save_volume(target, lab_arr, vol.affine, dtype=np.uint8)
    return None


def _write_cases(src: Path, staging: Path, patients: list[str], cases: dict[str, str],
                 chosen: dict[str, DicomSeries], labels: Path | None, read_label: Callable,
                 progress: bool) -> tuple[list[dict], int]:
    """Each patient's CT (and label) into ``staging``; returns the key rows and the number of labels."""
    from tqdm.auto import tqdm

    problems: list[str] = []
    n_labels = 0
    key_rows = []
    label_files = sorted(f for f in labels.iterdir() if f.is_file()) if labels is not None else []
    beat = Heartbeat("import-dicom", total=len(patients), unit="patient", every=30.0)
    for i, p in enumerate(tqdm(patients, desc="import-dicom", unit="patient", disable=not progress)):
        beat.update(i)
        case = cases[p]
        vol = read_series(chosen[p], src / p, None)
        image = _hu_array(vol.array)
        save_volume(staging / "imagesTr" / f"{case}_0000.nii.gz", image, vol.affine)
        try:
            label_file = _find_label(labels, p, label_files) if labels is not None else None
        except InputError as exc:
            problems.append(str(exc))
            continue
        if label_file is not None:
            problem = _write_label(label_file, vol, p, staging / "labelsTr" / f"{case}.nii.gz", read_label)
            if problem is not None:
                problems.append(problem)
                continue
            n_labels += 1
        key_rows.append({"case_id": case, "patient_folder": p,
                         "series_folder": str(chosen[p].folder.relative_to(src / p)),
                         "n_slices": len(chosen[p].files), "label_file": label_file.name if label_file else ""})
        del vol, image
    beat.update(len(patients))
    _raise_problems(src, problems)
    return key_rows, n_labels


def _write_tables(staging: Path, out: Path, patients: list[str], cases: dict[str, str], kept_cols: list,
                  clinical_rows: dict, key_rows: list[dict]) -> Path:
    """``dataset.json`` and ``clinical.csv`` into ``staging``, and the key next to ``out``; returns the key's path."""
    (staging / "labelsTr").mkdir(exist_ok=True)
    dataset = {
        "name": out.name,
        "description": "CT cohort imported from DICOM with `sscild import-dicom`; pseudonymised "
                       "case ids; no DICOM header values copied.",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(patients),
        "file_ending": ".nii.gz",
        "synthetic": False,
        "licence": "as set by the data owner",
        "source": "DICOM import",
    }
    write_json(staging / "dataset.json", dataset)
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", *kept_cols])
    for p in patients:
        row = clinical_rows.get(p, {})
        writer.writerow([cases[p], *(row.get(c, "") for c in kept_cols)])
    with atomic_path(staging / "clinical.csv", suffix=".csv") as tmp:
        tmp.write_text(buf.getvalue())
    key = out.parent / f"{out.name}_import_key.csv"
    with atomic_path(key, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(key_rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(key_rows)
    return key


def _write_cohort(src: Path, out: Path, patients: list[str], chosen: dict[str, DicomSeries], labels: Path | None,
                  kept_cols: list, clinical_rows: dict, read_label: Callable, progress: bool) -> tuple[int, Path]:
    """Write the cohort into a staging folder next to ``out``, then rename it to ``out`` (all or nothing).

    Returns the number of patients with a label and the path of the key file.
    """
    cases = {p: f"case_{i:03d}" for i, p in enumerate(patients)}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        key_rows, n_labels = _write_cases(src, staging, patients, cases, chosen, labels, read_label, progress)
        key = _write_tables(staging, out, patients, cases, kept_cols, clinical_rows, key_rows)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return n_labels, key


def import_dicom(src: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                 clinical: str | os.PathLike | None = None, label_map: Mapping | None = None,
                 segment_codes: Mapping | None = None, progress: bool = True) -> Path:
    """Turn DICOM series (one sub-folder per patient) into a pseudonymised cohort folder.

    Patients get case ids ``case_000``, ``case_001``, ... in sorted folder order. The cohort holds
    ``dataset.json`` (``"synthetic": false``), ``imagesTr/<case>_0000.nii.gz`` (HU),
    ``labelsTr/<case>.nii.gz`` for every patient with a label file ``<labels>/<folder><ext>``
    (:data:`LABEL_SUFFIXES`: a label map on the CT's grid, or a 3D Slicer / DICOM SEG segmentation, e.g. one
    ``sscild segment`` wrote and a radiologist corrected, put on the CT's grid by
    :func:`~sscild.data.segfiles.read_segmentation`), and ``clinical.csv`` (``case_id`` plus the clinical
    table's columns without identifying ones). No DICOM header value is copied.

    The key from case id to patient folder is written *outside* the cohort, next to it, as
    ``<out>_import_key.csv``: keep it private (a warning on the ``sscild.data.dicom`` logger says where).

    Args:
        src: folder with one sub-folder per patient, each holding that patient's CT series
            (if a sub-folder holds several series, the one with the most slices is used).
        out: the cohort folder to create; it must not exist or be empty.
        labels: optional folder of label files named after the patient folders (one per patient).
        clinical: optional CSV with one row per patient; the column whose values are the patient
            folder names is used to match rows and is not copied. Columns whose names look
            identifying (name, MRN, dates, ...) or whose values repeat a DICOM header value are dropped.
        label_map: optional segment name -> role (``"normal"``, ``"ef"``, ``"ggo"``, ``"background"``) for
            segments whose names are not the study's (``--label-map``).
        segment_codes: more segment codes to recognise, as ``sscild.clinic.viewer.SEGMENT_CODES`` (the CLI's).
        progress: show a progress bar over the patients.

    Returns:
        The cohort folder.

    Raises:
        InputError: ``out`` is not empty or lies inside ``src``; no patient folders; a series,
            label or clinical table cannot be used (a segment with no study label, a segmentation off
            the CT's grid, several label files for one patient). All per-patient problems are listed at once.

    Example::

        import_dicom("dicom/", "data/mycohort", labels="masks/")  # PosixPath('data/mycohort')
        import_dicom("dicom/", "data/corrected", labels="corrected/", segment_codes=SEGMENT_CODES)  # .seg.nrrd
    """
    src, out = Path(src), Path(out)
    labels, clinical = _check_paths(src, out, labels, clinical)
    check_label_map(label_map)  # a bad role is refused before anything is read
    read_label = partial(read_segmentation, label_map=label_map, codes=segment_codes)
    patients = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not patients:
        raise InputError(f"{src}: no patient sub-folders. Fix: put each patient's DICOM series in its "
                         "own sub-folder of this folder.")

    # Find every series first, so problems are reported together before anything is written.
    problems, chosen, secrets = [], {}, set()
    for p in patients:
        try:
            series = pick_series(src / p)
        except InputError as exc:
            problems.append(str(exc))
            continue
        chosen[p] = series
        secrets |= _identifying_values(series)
    _raise_problems(src, problems)

    clinical_rows, kept_cols = {}, []
    if clinical is not None:
        kept_cols, dropped, clinical_rows, unmatched = _read_clinical_for_import(clinical, patients, secrets)
        if dropped:
            logger.warning("clinical columns not copied (identifying): %s", ", ".join(map(str, dropped)))
        if unmatched:
            logger.warning("%d clinical row(s) match no patient folder and were not copied", unmatched)

    n_labels, key = _write_cohort(src, out, patients, chosen, labels, kept_cols, clinical_rows, read_label, progress)
    logger.warning(
        "imported %d patient(s) (%d with labels) into %s. The key from case ids to patient folders is "
        "%s, OUTSIDE the cohort: keep it private and do not share it with the cohort.",
        len(patients), n_labels, out, key,
    )
    return out
