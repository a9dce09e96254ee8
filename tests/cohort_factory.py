"""Tiny synthetic inputs for the tests: a valid cohort folder and DICOM CT series.

``make_tiny_cohort(path, n=4)`` writes a cohort in the layout of DESIGN.md: small volumes whose
intensities look like CT in Hounsfield units (air -1000, soft tissue +40, lung about -850, EF about
-300, GGO about -600) with labels 0..3, a ``dataset.json`` and a plausible ``clinical.csv``.
``make_dicom_series(folder, hu)`` writes one CT series with pydicom, with stored values and a
RescaleIntercept so that reading it must apply the rescale to get the HU back.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["make_tiny_cohort", "make_case_arrays", "make_dicom_series", "hash_tree", "IDENTITY",
           "TINY_SHAPE", "TINY_SPACING"]

TINY_SHAPE = (24, 20, 6)
TINY_SPACING = (1.5, 1.5, 4.0)

IDENTITY = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN123456",
    "PatientBirthDate": "19600101",
    "AccessionNumber": "ACC987",
    "InstitutionName": "General Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyDate": "20190314",
    "SeriesDate": "20190314",
    "StudyTime": "101112",
    "StudyID": "STUDY4242",
    "SeriesDescription": "CHEST HRCT SECRETDESC",
}
"""Distinctive identifying header values; none of them may appear in an imported cohort."""


def make_case_arrays(shape=TINY_SHAPE, *, seed: int = 0, lesions: bool = True):
    """One case: (int16 HU image, uint8 label 0..3) of ``shape`` (x, y, z)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    image = np.full(shape, -1000.0)
    label = np.zeros(shape, np.uint8)
    body = (x / 0.95) ** 2 + (y / 0.9) ** 2 <= 1
    image[body] = 40.0
    for cx in (-0.45, 0.45):
        lung = ((x - cx) / 0.35) ** 2 + (y / 0.6) ** 2 <= 1
        image[lung] = -850.0
        label[lung] = 1
    if lesions:
        ef = label.astype(bool) & (y < -0.3) & (x < 0)
        ggo = label.astype(bool) & (y < -0.3) & (x > 0)
        image[ef], label[ef] = -300.0, 2
        image[ggo], label[ggo] = -600.0, 3
    image += rng.normal(0, 15, shape)
    return np.rint(np.clip(image, -1024, None)).astype(np.int16), label


def _affine(spacing):
    return np.diag([*spacing, 1.0])


def _save(path, array, affine, dtype):
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_tiny_cohort(path, n: int = 4, *, shape=TINY_SHAPE, spacing=TINY_SPACING, seed: int = 0,
                     labels: dict | None = None, clinical: bool = True, synthetic: bool = True,
                     prefix: str = "case") -> Path:
    """Write a small valid cohort folder with ``n`` cases (``case_000`` ...) and return its path.

    ``labels`` replaces dataset.json's label dictionary (the label files keep values 0..3).
    """
    root = Path(path)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = _affine(spacing)
    ids = [f"{prefix}_{i:03d}" for i in range(n)]
    for i, case in enumerate(ids):
        image, label = make_case_arrays(shape, seed=seed + i)
        _save(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine, np.int16)
        _save(root / "labelsTr" / f"{case}.nii.gz", label, affine, np.uint8)
    dataset = {
        "name": root.name,
        "channel_names": {"0": "CT"},
        "labels": labels if labels is not None else {"background": 0, "normal": 1, "ef": 2, "ggo": 3},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "synthetic": synthetic,
        "licence": "test data",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    if clinical:
        rng = np.random.default_rng(seed)
        with open(root / "clinical.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case_id", "age", "sex", "height_cm", "fvc_pct", "fev1_pct", "fev1_fvc", "dlco_pct"])
            for i, case in enumerate(ids):
                fvc = round(float(rng.uniform(60, 100)), 1)
                w.writerow([case, 40 + i, "F" if i % 2 == 0 else "M", 160 + i, fvc,
                            round(fvc * 0.95, 1), round(float(rng.uniform(0.7, 0.9)), 3),
                            round(float(rng.uniform(40, 90)), 1)])
    return root


def make_dicom_series(folder, hu: np.ndarray, *, spacing=(0.8, 0.7, 2.5), origin_lps=(-100.0, -120.0, -50.0),
                      identity: dict | None = None, intercept: float = -1024.0, slope: float = 1.0,
                      series_uid: str | None = None, reverse_names: bool = True, prefix: str = "IM") -> list[Path]:
    """Write ``hu`` (x, y, z) as an axial CT series (one file per z) and return the file paths.

    Stored values are ``(hu - intercept) / slope`` as uint16. Rows run along y, columns along x, and
    slice k sits at ``origin_lps + k * spacing[2]`` along z. With ``reverse_names`` the file names run
    in the opposite order to the slice positions, so a reader must sort by position.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    identity = IDENTITY if identity is None else identity
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    nx, ny, nz = hu.shape
    paths = []
    for k in range(nz):
        stored = np.rint((hu[:, :, k].astype(float) - intercept) / slope)
        assert stored.min() >= 0 and stored.max() < 65536
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        for tag, value in identity.items():
            setattr(ds, tag, value)
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2]]
        ds.SliceLocation = origin_lps[2] + k * spacing[2]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (along y), column spacing (along x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.PixelData = stored.T.astype("<u2").tobytes()  # (rows=y, columns=x)
        index = nz - 1 - k if reverse_names else k
        path = folder / f"{prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def hash_tree(root) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), to prove inputs are untouched."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def prepare_run(data, results, *, profile: str = "smoke", cohort: str = "cohort", folds: int = 2,
                iterations: int | None = None):
    """The run of cohort folder ``data`` under ``results``: its cache and ``folds``-fold splits (seed 0);
    with ``iterations``, every fold trained that many steps. Returns ``(run, loaded cohort)``."""
    from sscild.data.cache import build_cache
    from sscild.data.cohort import load_cohort
    from sscild.data.folds import make_splits, write_splits
    from sscild.model.train import train_fold
    from sscild.paths import RunPaths
    from sscild.profiles import get_profile

    run = RunPaths(results=results, cohort=cohort, profile=profile)
    loaded = load_cohort(data)
    build_cache(loaded, run, get_profile(profile), progress=False)
    write_splits(run.splits, make_splits([c.case_id for c in loaded.cases], k=folds, seed=0))
    for k in range(folds if iterations else 0):
        train_fold(run, get_profile(profile), k, iterations=iterations, progress=False)
    return run, loaded
