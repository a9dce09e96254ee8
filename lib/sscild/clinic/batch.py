"""Many scans at once: ``sscild segment FOLDER`` over a folder of scans or DICOM series.

A folder is a **batch** when it holds scan files (NIfTI, NRRD, MetaImage), sub-folders (each one
scan: a DICOM series), or DICOM files of more than one series; a folder whose files form one DICOM
series is a single scan, as before. The models are loaded once. Each scan's outputs go to
``OUT/<scan name>/`` (nnU-Net's ``_0000`` channel suffix dropped); ``OUT/batch.csv`` has one row per
scan (status ``ok`` or ``failed`` with the reason, volumes, % of lung, stage, lower-zone and
peripheral extent, whole-lung densitometry, quality-control flags, and the warnings the scan raised).
The table is rewritten after every scan; ``resume=True`` (``sscild segment --resume``) keeps the
finished rows of an interrupted batch and segments the rest. A scan that cannot be segmented is
reported and does not stop the others.

Usage::

    rows = segment_batch(discover_scans("scans/"), "out/")
    rows = segment_batch(discover_scans("scans/"), "out/", resume=True)   # after an interruption
"""

from __future__ import annotations

import csv
import re
import time
import warnings
from pathlib import Path

from sscild.errors import InputError
from sscild.paths import atomic_path

__all__ = ["VOLUME_SUFFIXES", "is_batch_folder", "discover_scans", "segment_batch", "BATCH_COLUMNS"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

BATCH_COLUMNS = ["scan", "status", "error", "outputs", "lung_ml", "normal_ml", "ef_ml", "ggo_ml", "lesion_ml",
                 "normal_pct", "ef_pct", "ggo_pct", "lesion_pct", "extent_stage", "ef_pct_lower", "ggo_pct_lower",
                 "lesion_pct_lower", "ef_pct_peripheral", "ggo_pct_peripheral", "lesion_pct_peripheral",
                 "uncertain_pct_of_lesion", "qc_flags", "mean_lung_hu", "haa_pct", "laa950_pct", "series_uid",
                 "warnings", "seconds"]
"""Columns of ``batch.csv``."""


def _is_volume(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")


def _dicom_series(folder: Path):
    from sscild.data.image import find_dicom_series as _find_dicom_series

    return [s for s in _find_dicom_series(folder) if s.folder == folder]


def is_batch_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a batch (see the module docstring) rather than one DICOM series."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(_is_volume(p) for p in entries) or any(p.is_dir() for p in entries):
        return True
    return len(_dicom_series(folder)) > 1


def discover_scans(folder: str | Path) -> list[Path]:
    """The scans of a batch folder, sorted: volume files, sub-folders, and single-file DICOM series.

    A series of several files that shares its folder with other series cannot be read on its own;
    such a folder is listed as one item so that its error says what to do.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder.")
    items = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if _is_volume(p) or p.is_dir():
            items.append(p)
    series = _dicom_series(folder)
    if len(series) > 1:
        for s in series:
            if len(s.files) == 1:
                items.append(Path(s.files[0]))
        if any(len(s.files) > 1 for s in series):
            items.append(folder)
    return sorted(set(items))


_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


def _name(item: Path, used: set) -> str:
    """The output folder name of a scan: its stem without nnU-Net's channel suffix (``case_007_0000`` ->
    ``case_007``), made unique within the batch."""
    from sscild.clinic.segment import scan_stem

    base = _CHANNEL_SUFFIX.sub("", scan_stem(item)) or scan_stem(item)
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def _row(item: Path, report: dict, out: Path, seconds: float) -> dict:
    s = report["summary"]
    pct, vol = s["percent_of_lung"], s["volumes_ml"]
    table = report.get("zones", {}).get("table", {})
    row = {"scan": str(item), "status": "ok", "error": "", "outputs": str(out), "lung_ml": s["lung_volume_ml"],
           "extent_stage": s["extent_stage"], "seconds": round(seconds, 2),
           "uncertain_pct_of_lesion": s.get("uncertain_pct_of_lesion"), "qc_flags": " ".join(s.get("flags", []))}
    for k in ("normal", "ef", "ggo", "lesion"):
        row[f"{k}_ml"] = vol.get(k)
        row[f"{k}_pct"] = pct.get(k)
    for zone in ("lower", "peripheral"):
        for k in ("ef", "ggo", "lesion"):
            row[f"{k}_pct_{zone}"] = table.get(zone, {}).get(f"{k}_pct")
    whole = report.get("densitometry", {}).get("table", {}).get("whole lung", {})
    row.update(mean_lung_hu=whole.get("mean_hu"), haa_pct=whole.get("haa_pct"), laa950_pct=whole.get("laa950_pct"),
               series_uid=report.get("acquisition", {}).get("series_uid"))
    return row


def _read_done(table: Path) -> dict[str, dict]:
    """Rows of an earlier ``batch.csv`` whose scan was segmented (status ``ok``), by scan path."""
    if not table.exists():
        return {}
    with open(table, newline="") as fh:
        return {r["scan"]: r for r in csv.DictReader(fh) if r.get("status") == "ok"}


def _finished(row: dict) -> bool:
    """Whether an earlier row's outputs are still there (its report JSON, the last file a scan writes)."""
    folder = Path(row.get("outputs") or "")
    return folder.is_dir() and any(folder.glob("*_report.json"))


class _Table:
    """``batch.csv`` rewritten (atomically) after every scan, so an interrupted batch keeps its rows."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, suffix=".csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=BATCH_COLUMNS, extrasaction="ignore")
                w.writeheader()
                for r in self.rows:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in BATCH_COLUMNS})


def _warning_text(caught) -> str:
    """The warnings a scan raised, one line each, joined with `` | `` (duplicates once)."""
    seen = []
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.append(text)
    return " | ".join(seen)


def segment_batch(items, out: str | Path, *, models=None, ensemble=None, tta: bool | None = None,
                  progress: bool = True, resume: bool = False, **kwargs) -> list[dict]:
    """Segment every scan in ``items``; one row per scan in ``out/batch.csv``, failures included.

    The table is rewritten after each scan, so it is complete up to the scan being worked on when a
    batch is interrupted. Warnings a scan raises (several series in a folder, unevenly spaced slices,
    ...) go into its row's ``warnings`` column instead of the terminal.

    Args:
        items: scan paths (:func:`discover_scans`).
        out: output folder; each scan writes to ``out/<scan name>/`` (the file name without its
            extension and without nnU-Net's ``_0000`` channel suffix).
        models, ensemble, tta: as :func:`sscild.clinic.segment.segment_scan` (models are loaded once).
        progress: a tqdm bar over the scans.
        resume: keep the rows of an earlier ``out/batch.csv`` whose scan was segmented and whose report
            is still there, and segment only the others (failed scans are tried again). Without
            ``resume``, an existing ``batch.csv`` is an error rather than overwritten.
        **kwargs: passed on to :func:`sscild.clinic.segment.segment_scan`.

    Returns:
        The rows (dicts with :data:`BATCH_COLUMNS`).

    Raises:
        InputError: the models cannot be loaded (nothing could be segmented), or ``out/batch.csv``
            exists and ``resume`` is not set.
    """
    from sscild.clinic.segment import segment_scan
    from sscild.model.loading import load_ensemble

    items = [Path(p) for p in items]
    out = Path(out)
    table_path = out / "batch.csv"
    if table_path.exists() and not resume:
        raise InputError(f"{table_path} exists: a batch already wrote to {out}. Fix: add --resume to segment only "
                         "the scans not yet done (the table keeps the finished ones), or choose another --out.")
    done = {k: r for k, r in _read_done(table_path).items() if _finished(r)} if resume else {}
    if ensemble is None and len(done) < len(items):
        ensemble = load_ensemble(models)
    table, used = _Table(table_path), set()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="scans", unit="scan", disable=None)
    for item in items:
        name = _name(item, used)
        if bar is not None:
            bar.set_postfix_str(name[:30], refresh=False)
        if str(item) in done:
            table.add({**done[str(item)], "resumed": True})
            if bar is not None:
                bar.update(1)
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                report = segment_scan(item, out / name, ensemble=ensemble, tta=tta, progress=False, **kwargs)
                row = _row(item, report, out / name, time.perf_counter() - t0)
            except Exception as exc:  # one bad scan must not stop the others; its reason goes into the table
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if not isinstance(exc, InputError):
                    msg = f"{type(exc).__name__}: {msg}"
                row = {"scan": str(item), "status": "failed", "error": msg, "outputs": "",
                       "seconds": round(time.perf_counter() - t0, 2)}
        row["warnings"] = _warning_text(w for w in caught if issubclass(w.category, UserWarning)
                                        and "tight_layout" not in str(w.message))
        table.add(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return table.rows
