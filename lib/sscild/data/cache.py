"""The per-case cache of preprocessed cases, rebuilt exactly where an input or a setting changed.

The cache (``<results>/<cohort>/<profile>/cache/``) holds ``<case>.npz`` (``image`` float32 and
``label`` uint8, the output of :func:`sscild.data.preprocess.preprocess_volume`) and ``<case>.json``
(cache key, geometry, label statistics). Both are written atomically, the JSON last, so a case counts
as cached only when both are complete. The key (:func:`cache_key`) is the SHA-256 of the input
files' bytes plus the preprocessing settings: changing a scan, a label or a setting rebuilds exactly
the cases concerned.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.data.cohort import read_case
from sscild.data.preprocess import (BODY_HU, BODY_MARGIN_MM, BODY_STEP_MM, IMAGE_ORDER, PAD_MULTIPLE,
                                    PREPROCESS_VERSION, Preprocessed, preprocess_volume)
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.profiles import require_profile

__all__ = ["preprocess_settings", "cache_key", "build_cache", "load_cached", "is_cached"]

_CHUNK = 1 << 20


def preprocess_settings(profile) -> dict:
    """The settings that determine a cached case (part of :func:`cache_key`)."""
    prof = require_profile(profile)
    return {
        "version": PREPROCESS_VERSION,
        "target_spacing": [None if t is None else float(t) for t in prof.target_spacing],
        "hu_clip": [float(v) for v in prof.hu_clip],
        "image_order": IMAGE_ORDER,
        "body_hu": BODY_HU,
        "body_margin_mm": BODY_MARGIN_MM,
        "body_step_mm": BODY_STEP_MM,
        "pad_multiple": PAD_MULTIPLE,
    }


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def cache_key(image_path, label_path, profile, *, extra=None) -> str:
    """SHA-256 over the input files' bytes and the preprocessing settings.

    Args:
        image_path: the scan file.
        label_path: the label file, or ``None``.
        profile: the resolved :class:`~sscild.profiles.Profile`.
        extra: anything else JSON-serialisable that changes the result (e.g. a cohort label map).

    Example:
        >>> import tempfile
        >>> scan = Path(tempfile.mkdtemp()) / "scan.nii.gz"
        >>> _ = scan.write_bytes(b"not really a scan")
        >>> from sscild.profiles import get_profile
        >>> key = cache_key(scan, None, get_profile("cpu"))
        >>> len(key), key == cache_key(scan, None, get_profile("cpu")), key == cache_key(scan, None, get_profile("smoke"))
        (64, True, False)
    """
    h = hashlib.sha256()
    for tag, path in (("image", image_path), ("label", label_path)):
        h.update(f"\0{tag}\0".encode())
        if path is None:
            h.update(b"none")
        else:
            _hash_file(h, Path(path))
    settings = {"settings": preprocess_settings(profile), "extra": extra}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _paths(run: RunPaths, case_id: str) -> tuple[Path, Path]:
    return run.cache / f"{case_id}.npz", run.cache / f"{case_id}.json"


def _label_stats(label, affine) -> dict:
    """Per-class voxel counts and volumes on the ORIGINAL grid (exact reference volumes)."""
    names = {v: k for k, v in LABELS.items()}
    if label is None:
        return {"counts": None, "voxel_ml": float(abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0)}
    counts = np.bincount(np.asarray(label).ravel().astype(np.int64), minlength=len(LABELS))
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])) / 1000.0)
    lung = int(counts[1:4].sum())
    stats = {"counts": {names.get(i, str(i)): int(c) for i, c in enumerate(counts)}, "voxel_ml": voxel_ml,
             "lung_ml": lung * voxel_ml}
    for name in ("normal", "ef", "ggo"):
        stats[f"{name}_ml"] = int(counts[LABELS[name]]) * voxel_ml
    stats["lesion_ml"] = stats["ef_ml"] + stats["ggo_ml"]
    for name in ("ef", "ggo", "lesion"):
        stats[f"{name}_pct"] = 100.0 * stats[f"{name}_ml"] / stats["lung_ml"] if lung else float("nan")
    return stats


def _row(meta: dict, reused: bool) -> dict:
    info = meta["info"]
    row = {"case_id": meta["case_id"], "reused": reused}
    for name, key in (("orig", "original_shape"), ("pre", "shape")):
        for ax, v in zip("xyz", info[key]):
            row[f"{name}_n{ax}"] = v
    for name, key in (("orig", "canonical_spacing"), ("pre", "spacing")):
        for ax, v in zip("xyz", info[key]):
            row[f"{name}_sp{ax}"] = v
    row["body_found"] = info["body_found"]
    stats = meta.get("stats", {})
    counts = stats.get("counts") or {}
    for name in LABELS:
        row[f"n_{name}"] = counts.get(name, np.nan)
    for col in ("lung_ml", "normal_ml", "ef_ml", "ggo_ml", "lesion_ml", "ef_pct", "ggo_pct", "lesion_pct"):
        row[col] = stats.get(col, np.nan)
    return row


def is_cached(run: RunPaths, case_id: str, key: str) -> bool:
    """Whether ``run.cache`` holds a complete entry of ``case_id`` built with ``key``."""
    npz, meta = _paths(run, case_id)
    if not (meta.exists() and npz.exists()):
        return False
    try:
        return read_json(meta).get("key") == key
    except (OSError, ValueError):
        return False


def build_cache(cohort, run: RunPaths, profile, *, cases=None, progress: bool = True) -> pd.DataFrame:
    """Preprocess every case of a cohort into ``run.cache``, reusing entries whose key still matches.

    For each case: when ``<case>.json`` holds the current :func:`cache_key` and ``<case>.npz`` exists,
    nothing is read; otherwise the case is read (:func:`sscild.data.cohort.read_case`), preprocessed and
    written (``.npz`` first, then ``.json``, both atomically). Entries of cases no longer in the cohort
    are left in place but not returned.

    Args:
        cohort: a :class:`sscild.data.cohort.Cohort`.
        run: the run's :class:`~sscild.paths.RunPaths`.
        profile: the resolved :class:`~sscild.profiles.Profile`.
        cases: optional subset of case ids (default: all cases of the cohort).
        progress: show a tqdm progress bar.

    Returns:
        One row per case (cohort order): ``case_id``, ``reused``, original and preprocessed shapes and
        spacings, ``body_found``, per-class voxel counts ``n_<class>`` and volumes (mL) on the original
        grid, ``lung_ml``, ``lesion_ml``, and ``ef_pct``/``ggo_pct``/``lesion_pct`` of the lung.

    Example::

        table = build_cache(load_cohort("data/synthetic"), RunPaths.for_run("data/synthetic", "cpu"), get_profile("cpu"))
    """
    from tqdm.auto import tqdm

    prof = require_profile(profile)
    all_cases = list(cohort.cases)
    if cases is not None:
        wanted = [str(c) for c in cases]
        known = {c.case_id for c in all_cases}
        missing = [c for c in wanted if c not in known]
        if missing:
            raise ValueError(f"cases not in cohort {getattr(cohort, 'root', '?')}: {missing}; "
                             f"choose among its {len(known)} case ids (see the cohort's imagesTr/).")
        keep = set(wanted)
        all_cases = [c for c in all_cases if c.case_id in keep]
    extra = getattr(cohort, "label_map", None)
    rows = []
    for case in tqdm(all_cases, desc=f"preprocess ({prof.name})", unit="case", disable=not progress):
        key = cache_key(case.image, case.label, prof, extra=extra)
        npz_path, meta_path = _paths(run, case.case_id)
        if is_cached(run, case.case_id, key):
            rows.append(_row(read_json(meta_path), reused=True))
            continue
        vol, lab = read_case(cohort, case.case_id)
        pre = preprocess_volume(vol, lab, profile=prof, case_id=case.case_id)
        stats = _label_stats(lab, vol.affine)
        del vol, lab
        arrays = {"image": pre.image}
        if pre.label is not None:
            arrays["label"] = pre.label
        if meta_path.exists():  # a stale entry must not look valid while the npz is replaced
            meta_path.unlink()
        with atomic_path(npz_path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        meta = {"case_id": case.case_id, "key": key, "settings": preprocess_settings(prof),
                "image": str(case.image), "label": None if case.label is None else str(case.label),
                "spacing": list(pre.spacing), "shape": list(pre.image.shape),
                "has_label": pre.label is not None, "stats": stats, "info": pre.info}
        write_json(meta_path, meta)
        rows.append(_row(meta, reused=False))
        del pre, arrays
    return pd.DataFrame(rows)


def _npz_member(path: Path, name: str, mmap: bool) -> np.ndarray | None:
    """One array of an uncompressed ``.npz``, memory-mapped in place when possible."""
    with zipfile.ZipFile(path) as zf:
        try:
            zinfo = zf.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if not mmap or zinfo.compress_type != zipfile.ZIP_STORED:
            with zf.open(zinfo) as f:
                return np.lib.format.read_array(f)
    with open(path, "rb") as f:
        f.seek(zinfo.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt cache file (bad zip entry {name}); delete it and rebuild the cache.")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(zinfo.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        start = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=start)


def load_cached(run: RunPaths, case_id: str, *, mmap: bool = True) -> Preprocessed:
    """Load one cached case written by :func:`build_cache`.

    Args:
        run: the run's :class:`~sscild.paths.RunPaths`.
        case_id: the case.
        mmap: memory-map the arrays read-only (default) so many cases can be opened without
            loading them; ``False`` reads them into memory.

    Raises:
        FileNotFoundError: the case is not (completely) cached.

    Example::

        pre = load_cached(run, "case_001")
        pre.image.dtype, pre.label.dtype  # (dtype('float32'), dtype('uint8'))
    """
    npz_path, meta_path = _paths(run, str(case_id))
    if not (npz_path.exists() and meta_path.exists()):
        raise FileNotFoundError(f"case {case_id}: no complete cache entry in {run.cache} "
                                f"({npz_path.name} and {meta_path.name} are needed); "
                                "build it with sscild.data.cache.build_cache (the Data chapter, `make data`).")
    meta = read_json(meta_path)
    image = _npz_member(npz_path, "image", mmap)
    if image is None:
        raise ValueError(f"case {case_id}: {npz_path} has no image array; delete it and rebuild the cache.")
    label = _npz_member(npz_path, "label", mmap)
    return Preprocessed(case_id=str(case_id), image=image, label=label,
                        spacing=tuple(float(v) for v in meta["spacing"]), info=meta["info"])
