"""DICOM series in a folder: finding them, describing them, choosing the one to read.

A folder may hold several series of one patient: a scout, a soft-tissue and a lung-kernel
reconstruction of one acquisition, a contrast phase. :func:`pick_series` reads the one asked for
(``series_uid``) or the best candidate (most slices, then the lung kernel, then thinner slices) and
says which with a ``UserWarning``; :func:`list_series` lists them all (``sscild segment --list-series``).
Reading a chosen series into a volume is :func:`sscild.data.image.read_series`.

Usage::

    series = pick_series(Path("dicom/patient1"))                       # warns when it had to choose
    rows = list_series("dicom/patient1")                                # uid, slices, kernel, chosen
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from sscild.errors import InputError

__all__ = ["DicomSeries", "find_dicom_series", "series_info", "header_text", "is_lung_reconstruction", "pick_series", "list_series",
           "LUNG_KERNEL_WORDS"]


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: the folder that holds it and its files in GDCM's slice order."""

    folder: Path
    files: tuple[str, ...]


def find_dicom_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series under ``folder`` (recursively), as sorted file lists."""
    import SimpleITK as sitk

    found: list[DicomSeries] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if not any(not f.startswith(".") for f in filenames):
            continue
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, sid)
            if files:
                found.append(DicomSeries(Path(dirpath), tuple(files)))
    return found


LUNG_KERNEL_WORDS = ("lung", "lunge", "poumon", "polmone", "pulmo", "sharp", "detail", "bone", "boneplus", "hrct")
"""Words in a series' kernel or description that mark a lung (sharp) reconstruction."""

_SHARP_KERNEL = re.compile(r"^(?:[BIQH]r?|FC|Y[A-D]|L)\s*([0-9]{2})", re.IGNORECASE)
"""Numbered kernels of the main vendors: Siemens B/Br/I/Q/H/Hr (B70f, Br64, I70f, Qr59, Hr60), Canon FC
(FC51, FC86), Philips Y-family (YA, YB, ...: lung and sharp reconstructions) and L; a number of 50 or more is sharp."""


def series_info(series: DicomSeries) -> dict:
    """What the first header of a series says about it (for choosing and listing series).

    Returns:
        dict with ``series_uid``, ``slices``, ``description``, ``kernel``, ``slice_thickness_mm``,
        ``modality``, ``image_type``, ``series_number``, ``lung_kernel`` (:func:`is_lung_reconstruction`)
        and ``folder``.
    """
    import pydicom

    info = {"series_uid": None, "slices": len(series.files), "description": None, "kernel": None,
            "slice_thickness_mm": None, "modality": None, "image_type": None, "series_number": None,
            "folder": str(series.folder)}
    try:
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True, specific_tags=[
            "SeriesInstanceUID", "SeriesDescription", "ConvolutionKernel", "SliceThickness", "Modality",
            "ImageType", "SeriesNumber"])
    except Exception:  # listed anyway; reading it later says what is wrong
        info["lung_kernel"] = False
        return info

    def text(tag):
        return header_text(ds, tag)

    info.update(series_uid=text("SeriesInstanceUID"), description=text("SeriesDescription"),
                kernel=text("ConvolutionKernel"), modality=text("Modality"), image_type=text("ImageType"),
                series_number=text("SeriesNumber"))
    try:
        info["slice_thickness_mm"] = float(ds.SliceThickness) if ds.get("SliceThickness") not in (None, "") else None
    except (TypeError, ValueError):
        pass
    info["lung_kernel"] = is_lung_reconstruction(info["kernel"], info["description"])
    return info


def header_text(ds, tag: str) -> str | None:
    """A DICOM header value as text (``None`` when absent or empty; several values joined with a backslash)."""
    import pydicom

    v = ds.get(tag)
    if v is None or v == "":
        return None
    return "\\".join(map(str, v)) if isinstance(v, pydicom.multival.MultiValue) else str(v)


def is_lung_reconstruction(kernel: str | None, description: str | None = None) -> bool:
    """Whether a series' kernel or description marks a lung (sharp) reconstruction.

    Example:
        >>> [is_lung_reconstruction(k) for k in ("B70f", "Br64", "B30f", "FC51", "FC03", "LUNG", "STANDARD")]
        [True, True, False, True, False, True, False]
        >>> is_lung_reconstruction("B31f", "Thorax 1.0 Lunge")
        True
    """
    for value in (kernel, description):
        if not value:
            continue
        words = re.split(r"[^a-z0-9]+", value.lower())
        if any(w in LUNG_KERNEL_WORDS for w in words):
            return True
    if kernel:
        for part in kernel.replace("\\", " ").split():
            m = _SHARP_KERNEL.match(part)
            if m and int(m.group(1)) >= 50:
                return True
            if part.upper() in ("YA", "YB", "YC", "YD", "L", "LUNG"):
                return True
    return False


def _describe(s: DicomSeries, folder: Path, info: dict | None = None) -> str:
    info = info or {}
    bits = [f"{len(s.files)} slice(s)"]
    if info.get("kernel"):
        bits.append(f"kernel {info['kernel']}")
    if info.get("description"):
        bits.append(repr(info["description"]))
    if info.get("series_uid"):
        bits.append(f"UID {info['series_uid']}")
    else:
        bits.append(f"starting {Path(s.files[0]).relative_to(folder)}")
    return ", ".join(bits)


def pick_series(folder: Path, series_uid: str | None = None) -> DicomSeries:
    """The series of ``folder`` to read: the one asked for, or the best candidate.

    Without ``series_uid``: the series with the most slices; among series with as many slices (a
    lung-kernel and a soft-tissue reconstruction of one acquisition), the lung reconstruction
    (:func:`is_lung_reconstruction`), then the thinner slices, then the first in folder order. A
    ``UserWarning`` names the choice and the others.

    Args:
        folder: a folder with one or more DICOM series (searched recursively).
        series_uid: the SeriesInstanceUID to read (a unique prefix or suffix of it is enough).

    Raises:
        InputError: ``folder`` holds no DICOM series, or none (or more than one) matches ``series_uid``.
    """
    series = find_dicom_series(folder)
    if not series:
        raise InputError(
            f"{folder}: no DICOM series found in this folder. Fix: point to the folder that holds "
            "the series' .dcm files (or give a NIfTI / NRRD / MHA file)."
        )
    infos = [series_info(s) if (len(series) > 1 or series_uid) else {} for s in series]
    if series_uid:
        want = series_uid.strip()
        hits = [i for i, inf in enumerate(infos) if inf.get("series_uid") == want]
        if not hits:
            hits = [i for i, inf in enumerate(infos)
                    if inf.get("series_uid") and (inf["series_uid"].startswith(want) or inf["series_uid"].endswith(want))]
        if len(hits) != 1:
            listed = "; ".join(_describe(s, folder, inf) for s, inf in zip(series, infos))
            what = "matches no series" if not hits else f"matches {len(hits)} series"
            raise InputError(f"{folder}: --series-uid {want} {what}. The folder holds: {listed}. "
                             "Fix: give a whole SeriesInstanceUID from this list (`sscild segment --list-series FOLDER`).")
        return series[hits[0]]

    def rank(i: int):
        inf = infos[i]
        thick = inf.get("slice_thickness_mm")
        return (len(series[i].files), bool(inf.get("lung_kernel")), -(thick if thick else 1e9), -i)

    best_i = max(range(len(series)), key=rank)
    best = series[best_i]
    if len(series) > 1:
        ties = [i for i in range(len(series)) if len(series[i].files) == len(best.files) and i != best_i]
        why = "the most slices"
        if ties:
            why += (", and a lung reconstruction" if infos[best_i].get("lung_kernel") and
                    not all(infos[i].get("lung_kernel") for i in ties) else ", and the first of those tied")
        others = [_describe(s, folder, inf) for i, (s, inf) in enumerate(zip(series, infos)) if i != best_i]
        shown = "; ".join(others[:3]) + (f"; and {len(others) - 3} more" if len(others) > 3 else "")
        warnings.warn(
            f"{folder}: holds {len(series)} DICOM series; reading the one with {why} "
            f"({_describe(best, folder, infos[best_i])}) and ignoring the others ({shown}). To read another "
            "series, give its --series-uid (list them with `sscild segment --list-series FOLDER`).",
            UserWarning,
            stacklevel=3,
        )
    return best


def list_series(folder: str | os.PathLike) -> list[dict]:
    """Every DICOM series under ``folder`` with :func:`series_info`, and which one would be read (``"chosen"``).

    Raises:
        InputError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder. --list-series lists the DICOM series inside a folder.")
    series = find_dicom_series(folder)
    rows = [series_info(s) for s in series]
    if series:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            chosen = pick_series(folder)
        for s, row in zip(series, rows):
            row["chosen"] = s == chosen
    return rows
