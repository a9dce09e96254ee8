"""Writing volumes as NIfTI, atomically and with deterministic bytes.

:func:`save_volume` writes the qform and sform of the affine, millimetre units and an empty
description; the gzip header of a ``.nii.gz`` carries no time stamp and no file name, so the same
array and affine give byte-identical files. The file appears only when complete (written to a
temporary name, then renamed).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> a = save_volume(folder / "a.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    >>> b = save_volume(folder / "b.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    >>> a.read_bytes() == b.read_bytes()
    True
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from sscild.data.image import NIFTI_SUFFIXES
from sscild.paths import atomic_path

__all__ = ["save_volume"]

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

    Example::

        save_volume("labels.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))  # PosixPath('labels.nii.gz')
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
