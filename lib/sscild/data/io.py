"""Reading and writing CT volumes and label maps, with their geometry.

Every volume in this package is a :class:`Volume`: an ``(x, y, z)`` array in the nibabel voxel order
plus a 4x4 affine that maps voxel indices to RAS+ millimetres (the NIfTI / nibabel convention).

* NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, as stored (no reorientation).
* NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM are read with SimpleITK,
  whose physical space is LPS; the affine is converted to RAS by flipping the first two world axes.
* A folder is read as one DICOM series. If it holds several series (a scout, a second
  reconstruction, ...), the one with the most slices is read and a warning names the choice.
  SimpleITK (GDCM) applies each slice's RescaleSlope / RescaleIntercept, so DICOM CT comes out in
  Hounsfield units.

NIfTI output (:func:`save_volume`) is written atomically and deterministically: the gzip header
carries no time stamp and no file name, so the same array and affine give byte-identical files.

:func:`import_dicom` turns a folder of DICOM series (one sub-folder per patient) into a cohort
folder in the layout of ``DESIGN.md`` without copying any identifying header value.

Example:
    >>> import numpy as np
    >>> from sscild.data.io import save_volume, load_volume
    >>> path = save_volume("/tmp/ct.nii.gz", np.full((4, 4, 2), -1000, np.int16), np.diag([0.5, 0.5, 5.0, 1]))
    >>> load_volume(path).spacing
    (0.5, 0.5, 5.0)
"""

from __future__ import annotations

import csv
import gzip
import io as _io
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscild import LABELS
from sscild.errors import InputError
from sscild.paths import atomic_path, write_json

__all__ = [
    "Volume",
    "VolumeHeader",
    "load_volume",
    "load_header",
    "save_volume",
    "import_dicom",
    "volume_format",
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "DICOM_SUFFIXES",
    "IDENTIFYING_DICOM_TAGS",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# LPS (ITK, DICOM) <-> RAS (NIfTI, nibabel): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

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


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A 3D array in ``(x, y, z)`` voxel order and its voxel -> RAS millimetre affine.

    Args:
        array: the voxel values, shape ``(x, y, z)``.
        affine: 4x4 matrix mapping voxel indices ``(i, j, k, 1)`` to RAS+ millimetres.

    Example:
        >>> v = Volume(np.zeros((2, 3, 4), np.int16), np.diag([0.5, 0.5, 2.0, 1.0]))
        >>> v.shape, v.spacing
        ((2, 3, 4), (0.5, 0.5, 2.0))
    """

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self):
        self.array = np.asanyarray(self.array)
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D (x, y, z), got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(x, y, z)``."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along the array axes (column norms of the affine)."""
        return _spacing(self.affine)


@dataclass(frozen=True)
class VolumeHeader:
    """What a file says about its volume without reading the voxels.

    Attributes:
        shape: ``(x, y, z)``.
        affine: 4x4 voxel -> RAS mm.
        dtype: numpy dtype of the stored values (before any NIfTI scaling).
        scaled: whether the file asks for a slope / intercept on the stored values.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: np.dtype
    scaled: bool = False

    @property
    def spacing(self) -> tuple[float, float, float]:
        return _spacing(self.affine)


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def volume_format(path: str | os.PathLike) -> str:
    """The reader a path needs: ``"nifti"``, ``"sitk"`` (NRRD / MetaImage), ``"dicom"`` or ``"unknown"``.

    A folder is a DICOM series; a file is recognised by its suffix (case-insensitive).
    """
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(SITK_SUFFIXES):
        return "sitk"
    if name.endswith(DICOM_SUFFIXES) or "." not in name:
        return "dicom"
    return "unknown"


def _unreadable(path: Path, exc: BaseException | str) -> InputError:
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip()
    why = why.strip().splitlines()[0] if why.strip() else "unknown error"
    err = InputError(
        f"{path}: cannot be read ({why}). The file is unreadable, truncated or corrupt. "
        "Fix: re-export or re-copy it from the original source, and check the copy finished "
        "(compare its size or checksum with the original)."
    )
    err.reason = why  # the bare cause, for reports that add their own fix
    return err


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Fix: check the path (and its spelling).")


def _unsupported(path: Path) -> InputError:
    return InputError(
        f"{path}: unsupported file type. Fix: give a NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
        "MetaImage (.mha, .mhd) file, a DICOM file, or a folder holding one DICOM series."
    )


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    elif array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(
            f"{path}: expected one 3D volume, got an array of shape {tuple(array.shape)}. "
            "Fix: give a single 3D scan (split multi-volume files first)."
        )
    return array


def _cast(array: np.ndarray, dtype) -> np.ndarray:
    if dtype is None or array.dtype == np.dtype(dtype):
        return array
    return array.astype(dtype)


def _nifti_scaled(img) -> bool:
    # nibabel moves scl_slope / scl_inter from the loaded header into the array proxy
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    return not (float(slope) == 1.0 and float(inter) == 0.0)


def _load_nifti(path: Path, dtype) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if dtype is None and _nifti_scaled(img):
            dtype = np.float32  # scaled integers -> float32, not nibabel's float64 (half the memory)
        if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating):
            array = img.get_fdata(dtype=np.dtype(dtype), caching="unchanged")
        else:
            array = _cast(np.asanyarray(img.dataobj), dtype)
    except InputError:
        raise
    except Exception as exc:  # truncated gzip, bad header, short data ... (nibabel raises many types)
        raise _unreadable(path, exc) from exc
    return Volume(_as_3d(array, path), img.affine)


def _sitk_affine(image) -> np.ndarray:
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return affine


def _from_sitk(image, path: Path, dtype) -> Volume:
    import SimpleITK as sitk

    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected one scalar 3D volume, got a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel. Fix: give a single 3D scan."
        )
    affine = _sitk_affine(image)
    # SimpleITK arrays are (z, y, x); the transpose is a no-copy (x, y, z) view.
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(_cast(array, dtype), affine)


def _load_sitk(path: Path, dtype=None) -> Volume:
    """Read any single file SimpleITK reads (also NIfTI: the tests compare it with nibabel)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    return _from_sitk(image, path, dtype)


@dataclass(frozen=True)
class _Series:
    folder: Path
    files: tuple[str, ...]


def _find_dicom_series(folder: Path) -> list[_Series]:
    """Every DICOM series under ``folder`` (recursively), as sorted file lists."""
    import SimpleITK as sitk

    found: list[_Series] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if not any(not f.startswith(".") for f in filenames):
            continue
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, sid)
            if files:
                found.append(_Series(Path(dirpath), tuple(files)))
    return found


def _pick_series(folder: Path) -> _Series:
    series = _find_dicom_series(folder)
    if not series:
        raise InputError(
            f"{folder}: no DICOM series found in this folder. Fix: point to the folder that holds "
            "the series' .dcm files (or give a NIfTI / NRRD / MHA file)."
        )
    # Most slices wins; ties go to the first in sorted folder order (deterministic).
    best = max(series, key=lambda s: len(s.files))
    if len(series) > 1:
        def describe(s: _Series) -> str:
            return f"{len(s.files)} slice(s) starting {Path(s.files[0]).relative_to(folder)}"

        others = [describe(s) for s in series if s is not best]
        shown = "; ".join(others[:3]) + (f"; and {len(others) - 3} more" if len(others) > 3 else "")
        warnings.warn(
            f"{folder}: holds {len(series)} DICOM series; reading the one with the most slices "
            f"({describe(best)}) and ignoring the others ({shown}). To read another series, give a "
            "folder that holds only that series.",
            UserWarning,
            stacklevel=3,
        )
    return best


def _check_series(series: _Series, path: Path) -> None:
    """Check a series before reading it.

    Raises InputError when a file of the same series was left out because it cannot be parsed
    (GDCM silently drops truncated files, which would give a volume with a slice missing), and
    warns when slice positions are unevenly spaced (missing or duplicated slices).
    """
    import pydicom

    uid, positions, normal = None, [], None
    for f in series.files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"])
        except Exception as exc:
            raise _unreadable(Path(f), exc) from exc
        uid = uid or ds.get("SeriesInstanceUID")
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is not None and iop is not None:
            if normal is None:
                iop = np.asarray(iop, dtype=float)
                normal = np.cross(iop[:3], iop[3:])
            positions.append(float(np.asarray(ipp, dtype=float) @ normal))
    members = set(map(os.path.abspath, series.files))
    for other in sorted(series.folder.iterdir()):
        if not other.is_file() or other.name.startswith(".") or os.path.abspath(other) in members:
            continue
        try:
            ds = pydicom.dcmread(other, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            if other.name.lower().endswith(DICOM_SUFFIXES):
                warnings.warn(f"{other}: not readable as DICOM; ignored. If it is a slice of the scan, "
                              "re-copy it from the original source.", UserWarning, stacklevel=4)
            continue
        if uid is not None and ds.get("SeriesInstanceUID") == uid:
            raise _unreadable(other, "a slice of this series whose pixel data cannot be read; the series "
                                     "would have a slice missing")
    if len(positions) == len(series.files) >= 3:
        gaps = np.diff(np.sort(positions))
        if gaps.min() <= 1e-3 or gaps.max() - gaps.min() > 0.05 * np.median(gaps):
            warnings.warn(
                f"{path}: slice positions are unevenly spaced (gaps {gaps.min():.3g}..{gaps.max():.3g} mm); "
                "slices may be missing or duplicated, and the volume assumes even spacing. "
                "Fix: re-export the complete series.",
                UserWarning,
                stacklevel=4,
            )


def _read_series(series: _Series, path: Path, dtype) -> Volume:
    import SimpleITK as sitk

    _check_series(series, path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    return _from_sitk(image, path, dtype)


def _load_dicom(path: Path, dtype) -> Volume:
    if path.is_dir():
        return _read_series(_pick_series(path), path, dtype)
    return _load_sitk(path, dtype)


def load_volume(path: str | os.PathLike, *, dtype=None) -> Volume:
    """Read a CT scan or label map with its geometry.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
            (``.mha``, ``.mhd``) file, a single DICOM file, or a folder holding one DICOM series
            (with several, the series with the most slices is read and a ``UserWarning`` says so).
        dtype: cast the voxels to this numpy dtype. Default: the stored type; a NIfTI with a
            scale slope / intercept comes back as float32; DICOM as the rescaled (HU) type.

    Returns:
        A :class:`Volume` with an ``(x, y, z)`` array and a voxel -> RAS mm affine.

    Raises:
        InputError: the path does not exist, has an unsupported type, or cannot be read
            (unreadable, truncated, corrupt); the message names the file and the fix.

    Example:
        >>> ct = load_volume("scan.nrrd")  # doctest: +SKIP
        >>> ct.spacing  # doctest: +SKIP
        (0.5703125, 0.5703125, 5.0)
    """
    path = Path(path)
    _check_exists(path)
    kind = volume_format(path)
    if kind == "nifti":
        return _load_nifti(path, dtype)
    if kind == "sitk":
        return _load_sitk(path, dtype)
    if kind == "dicom":
        return _load_dicom(path, dtype)
    raise _unsupported(path)


def load_header(path: str | os.PathLike) -> VolumeHeader:
    """Read only a file's geometry and data type (cheap: voxels are not read).

    Args:
        path: a NIfTI, NRRD, MetaImage or DICOM file (a DICOM folder is read in full).

    Raises:
        InputError: as :func:`load_volume`.

    Example:
        >>> load_header("ct.nii.gz").shape  # doctest: +SKIP
        (512, 512, 300)
    """
    path = Path(path)
    _check_exists(path)
    kind = volume_format(path)
    if kind == "nifti":
        import nibabel as nib

        try:
            img = nib.load(str(path))
            shape = tuple(int(n) for n in img.shape)
            dtype = img.get_data_dtype()
            scaled = _nifti_scaled(img)
            affine = img.affine
        except Exception as exc:
            raise _unreadable(path, exc) from exc
    elif kind == "sitk" or (kind == "dicom" and path.is_file()):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise _unreadable(path, exc) from exc
        shape = tuple(int(n) for n in reader.GetSize())
        spacing = np.asarray(reader.GetSpacing(), dtype=float)
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(len(shape), len(shape))
        origin = np.asarray(reader.GetOrigin(), dtype=float)
        if len(shape) == 2:
            shape, spacing = shape + (1,), np.append(spacing, 1.0)
            direction = np.pad(direction, (0, 1)); direction[2, 2] = 1.0  # noqa: E702
            origin = np.append(origin, 0.0)
        affine = np.eye(4)
        if len(shape) == 3:
            affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
            affine[:3, 3] = _LPS_TO_RAS @ origin
        dtype = sitk.GetArrayViewFromImage(sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())).dtype \
            if reader.GetNumberOfComponents() == 1 else np.dtype(object)
        scaled = False
    elif kind == "dicom":
        vol = load_volume(path)
        return VolumeHeader(vol.shape, vol.affine, vol.array.dtype, False)
    else:
        raise _unsupported(path)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"{path}: expected one 3D volume, got shape {shape}. Fix: give a single 3D scan."
        )
    return VolumeHeader(shape, np.asarray(affine, dtype=float), np.dtype(dtype), scaled)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_NIFTI_OK = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.float32, np.float64)}


def _nifti_dtype(array: np.ndarray, dtype) -> np.dtype:
    if dtype is not None:
        dt = np.dtype(dtype)
    elif array.dtype == bool:
        dt = np.dtype(np.uint8)
    elif array.dtype in (np.dtype(np.int64), np.dtype(np.uint64)):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        dt = next((np.dtype(t) for t in (np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max),
                  None)
        if dt is None:
            raise ValueError(f"values {lo}..{hi} do not fit in int32; pass dtype= explicitly")
    elif array.dtype == np.float16:
        dt = np.dtype(np.float32)
    else:
        dt = array.dtype
    if dt not in _NIFTI_OK:
        raise ValueError(f"dtype {dt} cannot be stored in NIfTI here; use one of "
                         f"{sorted(str(t) for t in _NIFTI_OK)}")
    if np.issubdtype(dt, np.integer) and array.size and not np.issubdtype(array.dtype, np.bool_):
        info = np.iinfo(dt)
        lo, hi = array.min(), array.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"values {lo}..{hi} do not fit in {dt}; choose a wider dtype")
    return dt


def save_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, dtype=None,
                compresslevel: int = 1) -> Path:
    """Write an ``(x, y, z)`` array as NIfTI, atomically and with deterministic bytes.

    The qform and sform both hold ``affine`` (code 1, scanner), units are millimetres, the
    description is empty, and a ``.nii.gz`` gzip stream has no time stamp and no file name, so
    writing the same array and affine twice gives byte-identical files.

    Args:
        path: target file, ending in ``.nii.gz`` or ``.nii``. Parent folders are created.
        array: 3D array ``(x, y, z)``.
        affine: 4x4 voxel -> RAS mm.
        dtype: stored type (default: the array's; bool -> uint8, int64 -> int16/int32 when the
            values fit). Integer targets are range-checked.
        compresslevel: gzip level 1-9 (1, nibabel's default, is fast and nearly as small).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: wrong suffix, non-3D array, non-4x4 affine, or values that do not fit ``dtype``.

    Example:
        >>> save_volume("/tmp/lab.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))  # doctest: +SKIP
        PosixPath('/tmp/lab.nii.gz')
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: save_volume writes NIfTI; the name must end in .nii.gz or .nii")
    if not 1 <= int(compresslevel) <= 9:
        raise ValueError(f"compresslevel must be 1..9, got {compresslevel}")
    array = np.asanyarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (x, y, z), got shape {array.shape}")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    dt = _nifti_dtype(array, dtype)
    img = nib.Nifti1Image(array.astype(dt, copy=False), affine)
    img.set_data_dtype(dt)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b""
    img.header["aux_file"] = b""
    img.header["db_name"] = b""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            if name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=int(compresslevel)) as gz:
                    img.to_stream(gz)
            else:
                img.to_stream(raw)
    return path


# --------------------------------------------------------------------------------------------
# DICOM import
# --------------------------------------------------------------------------------------------

_IDENTIFYING_COLUMN = re.compile(
    r"(^|_)(name|names|surname|initials|mrn|patient|patient_id|pid|subject|dob|birth|birthdate|"
    r"date|time|datetime|accession|institution|hospital|site|physician|doctor|referring|"
    r"address|street|city|zip|postcode|postal|phone|telephone|email|ssn|insurance|uid|"
    r"study_id|series_description|study_description|description|comments?|notes?)(_|$)"
)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def _is_identifying_column(name: str) -> bool:
    n = _normalise(name)
    return n.endswith("_id") or n == "id" or bool(_IDENTIFYING_COLUMN.search(n))


def _identifying_values(series: _Series) -> set[str]:
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


def _find_label(labels: Path, patient: str) -> Path | None:
    for ext in NIFTI_SUFFIXES + SITK_SUFFIXES:
        for cand in (labels / f"{patient}{ext}", labels / f"{patient}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


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


def _label_array(array: np.ndarray, file: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(f"{file}: label file holds non-integer values. Fix: export the label map "
                             "with integer labels (nearest-neighbour, no interpolation).")
        array = rounded
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise InputError(f"{file}: label values {lo}..{hi}; expected small non-negative integers "
                         "(0 background, 1 normal lung, 2 EF, 3 GGO). Fix: re-export the label map.")
    return array.astype(np.uint8)


def _read_clinical_for_import(clinical: Path, patients: list[str], secrets: set[str]):
    import pandas as pd

    try:
        table = pd.read_csv(clinical, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{clinical}: cannot be read as CSV ({type(exc).__name__}: {exc}). "
                         "Fix: save the clinical table as comma-separated text with a header row.") from exc
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


def import_dicom(src: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                 clinical: str | os.PathLike | None = None) -> Path:
    """Turn DICOM series (one sub-folder per patient) into a pseudonymised cohort folder.

    Patients get case ids ``case_000``, ``case_001``, ... in sorted folder order. The cohort holds
    ``dataset.json`` (``"synthetic": false``), ``imagesTr/<case>_0000.nii.gz`` (HU),
    ``labelsTr/<case>.nii.gz`` for every patient whose label file ``<labels>/<folder><ext>`` exists
    (``ext``: any format :func:`load_volume` reads), and ``clinical.csv`` (``case_id`` plus the
    clinical table's columns without identifying ones). No DICOM header value is copied.

    The key from case id to patient folder is written *outside* the cohort, next to it, as
    ``<out>_import_key.csv``: keep it private (a warning on the ``sscild.data.io`` logger says where).

    Args:
        src: folder with one sub-folder per patient, each holding that patient's CT series
            (if a sub-folder holds several series, the one with the most slices is used).
        out: the cohort folder to create; it must not exist or be empty.
        labels: optional folder of label files named after the patient folders.
        clinical: optional CSV with one row per patient; the column whose values are the patient
            folder names is used to match rows and is not copied. Columns whose names look
            identifying (name, MRN, dates, ...) or whose values repeat a DICOM header value are dropped.

    Returns:
        The cohort folder.

    Raises:
        InputError: ``out`` is not empty or lies inside ``src``; no patient folders; a series,
            label or clinical table cannot be used. All per-patient problems are listed at once.

    Example:
        >>> import_dicom("dicom/", "data/mycohort", labels="masks/")  # doctest: +SKIP
        PosixPath('data/mycohort')
    """
    src, out = Path(src), Path(out)
    _check_exists(src)
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
        _check_exists(clinical)

    patients = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not patients:
        raise InputError(f"{src}: no patient sub-folders. Fix: put each patient's DICOM series in its "
                         "own sub-folder of this folder.")
    cases = {p: f"case_{i:03d}" for i, p in enumerate(patients)}

    # Find every series first, so problems are reported together before anything is written.
    problems, chosen, secrets = [], {}, set()
    for p in patients:
        try:
            series = _pick_series(src / p)
        except InputError as exc:
            problems.append(str(exc))
            continue
        chosen[p] = series
        secrets |= _identifying_values(series)
    if problems:
        raise InputError(f"DICOM import from {src} found {len(problems)} problem(s):\n- " + "\n- ".join(problems))

    clinical_rows, kept_cols = {}, []
    if clinical is not None:
        kept_cols, dropped, clinical_rows, unmatched = _read_clinical_for_import(clinical, patients, secrets)
        if dropped:
            logger.warning("clinical columns not copied (identifying): %s", ", ".join(map(str, dropped)))
        if unmatched:
            logger.warning("%d clinical row(s) match no patient folder and were not copied", unmatched)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        n_labels = 0
        key_rows = []
        for p in patients:
            case = cases[p]
            vol = _read_series(chosen[p], src / p, None)
            image = _hu_array(vol.array)
            save_volume(staging / "imagesTr" / f"{case}_0000.nii.gz", image, vol.affine)
            label_file = _find_label(labels, p) if labels is not None else None
            if label_file is not None:
                lab = load_volume(label_file)
                if lab.shape != vol.shape:
                    problems.append(f"{label_file}: label shape {lab.shape} differs from the image's "
                                    f"{vol.shape} (patient folder {p}). Fix: export the label on the CT's grid.")
                    continue
                if not np.allclose(lab.affine, vol.affine, atol=1e-2):
                    problems.append(f"{label_file}: label geometry (spacing / orientation / origin) differs "
                                    f"from the image's (patient folder {p}). Fix: export the label on the "
                                    "CT's grid, in the same orientation.")
                    continue
                try:
                    lab_arr = _label_array(lab.array, label_file)
                except InputError as exc:
                    problems.append(str(exc))
                    continue
                save_volume(staging / "labelsTr" / f"{case}.nii.gz", lab_arr, vol.affine, dtype=np.uint8)
                n_labels += 1
            key_rows.append({"case_id": case, "patient_folder": p,
                             "series_folder": str(chosen[p].folder.relative_to(src / p)),
                             "n_slices": len(chosen[p].files), "label_file": label_file.name if label_file else ""})
            del vol, image
        if problems:
            raise InputError(f"DICOM import from {src} found {len(problems)} problem(s):\n- " + "\n- ".join(problems))
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
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.warning(
        "imported %d patient(s) (%d with labels) into %s. The key from case ids to patient folders is "
        "%s, OUTSIDE the cohort: keep it private and do not share it with the cohort.",
        len(patients), n_labels, out, key,
    )
    return out
