"""Reading CT volumes and label maps with their geometry: NIfTI, NRRD, MetaImage, DICOM series.

Every volume in this package is a :class:`Volume`: an ``(x, y, z)`` array in the nibabel voxel order
plus a 4x4 affine that maps voxel indices to RAS+ millimetres (the NIfTI / nibabel convention).

* NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, as stored (no reorientation).
* NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM are read with SimpleITK,
  whose physical space is LPS; the affine is converted to RAS by flipping the first two world axes.
* A folder is read as one DICOM series. If it holds several series (a scout, a second
  reconstruction, ...), the one with the most slices is read (on a tie, the lung-kernel
  reconstruction) and a warning names the choice; ``series_uid`` picks one (:func:`pick_series`).
  SimpleITK (GDCM) applies each slice's RescaleSlope / RescaleIntercept, so DICOM CT comes out in
  Hounsfield units.

Writing is :mod:`sscild.data.nifti_writer` (:func:`~sscild.data.nifti_writer.save_volume`); turning
DICOM series into a cohort folder is :mod:`sscild.data.dicom`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from sscild.data.image import load_volume
    >>> from sscild.data.nifti_writer import save_volume
    >>> path = save_volume(Path(tempfile.mkdtemp()) / "ct.nii.gz", np.full((4, 4, 2), -1000, np.int16),
    ...                    np.diag([0.5, 0.5, 5.0, 1]))
    >>> load_volume(path).spacing
    (0.5, 0.5, 5.0)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscild.data.series import DicomSeries, find_dicom_series, pick_series
from sscild.errors import InputError

__all__ = [
    "Volume",
    "VolumeHeader",
    "DicomSeries",
    "load_volume",
    "load_header",
    "load_with_sitk",
    "volume_format",
    "check_exists",
    "find_dicom_series",
    "pick_series",
    "read_series",
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "DICOM_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# LPS (ITK, DICOM) <-> RAS (NIfTI, nibabel): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

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


def check_exists(path: Path) -> None:
    """Raise :class:`~sscild.errors.InputError` (naming the path and the fix) when ``path`` does not exist."""
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


def load_with_sitk(path: Path, dtype=None) -> Volume:
    """Read any single file SimpleITK reads (also NIfTI: the tests compare it with nibabel)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    return _from_sitk(image, path, dtype)


def _check_series(series: DicomSeries, path: Path) -> None:
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


def read_series(series: DicomSeries, path: Path, dtype) -> Volume:
    """Read one series as a :class:`Volume` in HU, after checking no slice is missing or unreadable.

    ``path`` is the name used in error messages (the folder the caller was given).
    """
    import SimpleITK as sitk

    _check_series(series, path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    return _from_sitk(image, path, dtype)


def _load_dicom(path: Path, dtype, series_uid: str | None = None) -> Volume:
    if path.is_dir():
        return read_series(pick_series(path, series_uid), path, dtype)
    return load_with_sitk(path, dtype)


def load_volume(path: str | os.PathLike, *, dtype=None, series_uid: str | None = None) -> Volume:
    """Read a CT scan or label map with its geometry.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
            (``.mha``, ``.mhd``) file, a single DICOM file, or a folder holding DICOM series
            (with several, :func:`pick_series` chooses and a ``UserWarning`` says which).
        series_uid: for a DICOM folder, the SeriesInstanceUID to read (:func:`pick_series`).
        dtype: cast the voxels to this numpy dtype. Default: the stored type; a NIfTI with a
            scale slope / intercept comes back as float32; DICOM as the rescaled (HU) type.

    Returns:
        A :class:`Volume` with an ``(x, y, z)`` array and a voxel -> RAS mm affine.

    Raises:
        InputError: the path does not exist, has an unsupported type, or cannot be read
            (unreadable, truncated, corrupt); the message names the file and the fix.

    Example::

        ct = load_volume("scan.nrrd")
        ct.spacing  # (0.5703125, 0.5703125, 5.0)
    """
    path = Path(path)
    check_exists(path)
    kind = volume_format(path)
    if kind == "nifti":
        return _load_nifti(path, dtype)
    if kind == "sitk":
        return load_with_sitk(path, dtype)
    if kind == "dicom":
        return _load_dicom(path, dtype, series_uid)
    raise _unsupported(path)


def load_header(path: str | os.PathLike) -> VolumeHeader:
    """Read only a file's geometry and data type (cheap: voxels are not read).

    Args:
        path: a NIfTI, NRRD, MetaImage or DICOM file (a DICOM folder is read in full).

    Raises:
        InputError: as :func:`load_volume`.

    Example::

        load_header("ct.nii.gz").shape  # (512, 512, 300)
    """
    path = Path(path)
    check_exists(path)
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
