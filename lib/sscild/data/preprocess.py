"""Preprocessing: orientation, resampling, body crop, HU normalisation, and the per-case cache.

Every scan, whether a training case or a new scan given to ``sscild segment``, goes through the same
four steps (:func:`preprocess_volume`):

1. **Reorient** to the closest canonical RAS orientation (``nibabel.orientations``). This only
   permutes and flips array axes (no interpolation); an oblique rotation stays in the affine.
2. **Resample** to ``profile.target_spacing`` on the axes where it is not ``None``. The image is
   interpolated linearly (trilinear, no overshoot, so HU stay inside the scan's range and no
   float64 spline copy of the whole volume is needed); the label is taken nearest-neighbour. An axis
   whose target is ``None`` (the slice axis of the 2D profiles) is kept exactly as acquired.
   The resampled grid keeps the centre of the field of view and has exactly the target spacing.
3. **Crop** to the body's bounding box, found from the image alone (HU > -500 with the lungs
   filled in, largest connected component on a ~4 mm copy, plus a 5 mm margin), never from the label, because a new scan has
   none. The in-plane size is then padded with air to a multiple of 16 so 2D U-Nets accept whole
   slices.
4. **Normalise** with a *fixed* affine map: HU are clipped to ``profile.hu_clip`` and mapped
   linearly onto [-1, 1] (air -1024 HU -> -1 with the default window). CT is quantitative: the
   same tissue has the same HU in every calibrated scanner, so a fixed map keeps that meaning,
   whereas a per-scan z-score would shift a fibrotic lung's values relative to a normal one's.

:func:`preprocess_volume` records in ``Preprocessed.info`` everything needed to map a label map of
the preprocessed grid back onto the original voxel grid (:func:`restore_label`).

The cache (``<results>/<cohort>/<profile>/cache/``) holds ``<case>.npz`` (``image`` float32 and
``label`` uint8) and ``<case>.json`` (cache key, geometry, label statistics). Both are written
atomically, the JSON last, so a case counts as cached only when both are complete. The key is the
SHA-256 of the input files' bytes plus the preprocessing settings: changing a scan, a label or a
setting rebuilds exactly the cases concerned.

Example:
    >>> from sscild.data.image import load_volume                                # doctest: +SKIP
    >>> pre = preprocess_volume(load_volume("scan.nii.gz"), profile="cpu")  # doctest: +SKIP
    >>> pre.image.shape, pre.spacing          # doctest: +SKIP
    ((224, 192, 48), (1.4, 1.4, 6.0))
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from nibabel import orientations as nio
from scipy import ndimage as ndi

from sscild import LABELS
from sscild.paths import RunPaths, atomic_path, read_json, write_json
from sscild.profiles import get_profile

__all__ = [
    "PREPROCESS_VERSION",
    "AIR_HU",
    "BODY_HU",
    "BODY_MARGIN_MM",
    "BODY_STEP_MM",
    "PAD_MULTIPLE",
    "IMAGE_ORDER",
    "Preprocessed",
    "preprocess_volume",
    "restore_label",
    "body_bbox",
    "normalise_hu",
    "denormalise",
    "preprocess_settings",
    "cache_key",
    "build_cache",
    "load_cached",
    "is_cached",
]

PREPROCESS_VERSION = "1"
"""Bump when the preprocessing changes in a way the settings below do not capture: invalidates caches."""

AIR_HU = -1024.0
"""Value used for padding (before normalisation)."""

BODY_HU = -500.0
"""Voxels above this HU count as body (soft tissue, bone, and the lung walls; not air)."""

BODY_MARGIN_MM = 5.0
"""Margin added around the body's bounding box."""

BODY_STEP_MM = 4.0
"""Approximate voxel size of the downsampled copy the body mask is computed on."""

PAD_MULTIPLE = 16
"""In-plane size of the preprocessed volume is a multiple of this (4 poolings of a U-Net)."""

IMAGE_ORDER = 1
"""Interpolation order for images (1 = linear). Labels always use nearest neighbour."""

_SPACING_RTOL = 1e-3
"""An axis whose spacing is within 0.1 % of the target is kept as it is (no interpolation)."""

_CHUNK = 1 << 20


@dataclass
class Preprocessed:
    """One preprocessed case.

    Attributes:
        case_id: the case's identifier.
        image: float32 (x, y, z), RAS, normalised to [-1, 1] (see :func:`normalise_hu`).
        label: uint8 (x, y, z) on the same grid, or ``None`` for an unlabelled scan.
        spacing: (x, y, z) voxel size in mm after resampling.
        info: the geometry record :func:`restore_label` needs (JSON-serialisable): ``original_shape``,
            ``original_affine``, ``ornt`` (nibabel orientation to canonical RAS), ``canonical_shape``,
            ``canonical_affine``, ``zoom``/``offset`` (resampled index -> canonical index),
            ``resampled_shape``, ``crop_lo``/``crop_hi`` (box in the resampled grid), ``pad_lo``,
            ``shape`` and ``affine`` (of the preprocessed array), ``body_found``, ``hu_clip``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    info: dict = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel -> RAS mm affine of the preprocessed arrays."""
        return np.asarray(self.info["affine"], dtype=float)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)


# --------------------------------------------------------------------------------------------
# normalisation


def _window(profile) -> tuple[float, float]:
    lo, hi = (float(v) for v in get_profile(profile).hu_clip)
    if not hi > lo:
        raise ValueError(f"profile hu_clip must be (low, high) with low < high, got {(lo, hi)}")
    return lo, hi


def normalise_hu(hu, profile) -> np.ndarray:
    """Clip HU to ``profile.hu_clip`` and map the window linearly onto [-1, 1].

    The map is fixed (not fitted per scan) because CT values are calibrated: -1024 HU is air and
    0 HU water in every scan, and lesion density is what the network must read.

    Args:
        hu: array of Hounsfield units.
        profile: profile name or :class:`~sscild.profiles.Profile`.

    Returns:
        float32 array, same shape, values in [-1, 1].

    Example:
        >>> normalise_hu(np.array([-2000.0, -1024.0, 600.0]), "cpu").tolist()
        [-1.0, -1.0, 1.0]
    """
    lo, hi = _window(profile)
    x = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    x -= np.float32(lo)
    x *= np.float32(2.0 / (hi - lo))
    x -= np.float32(1.0)
    return x


def _normalise_inplace(x: np.ndarray, lo: float, hi: float) -> None:
    np.clip(x, lo, hi, out=x)
    x -= np.float32(lo)
    x *= np.float32(2.0 / (hi - lo))
    x -= np.float32(1.0)


def denormalise(x, profile) -> np.ndarray:
    """Inverse of :func:`normalise_hu` on [-1, 1]: normalised values back to HU (float32).

    Example:
        >>> denormalise(np.array([-1.0, 1.0]), "cpu").tolist()
        [-1024.0, 600.0]
    """
    lo, hi = _window(profile)
    x = np.asarray(x, dtype=np.float32)
    return ((x + np.float32(1.0)) * np.float32((hi - lo) / 2.0) + np.float32(lo)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# geometry helpers


def _spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def _resample_axis(n: int, spacing: float, target: float | None) -> tuple[int, float, float]:
    """Resampled size, zoom (canonical voxels per new voxel) and offset of one axis.

    New index ``i`` sits at canonical index ``zoom * i + offset``; the field-of-view centre is kept.
    """
    if target is None or abs(spacing - float(target)) <= _SPACING_RTOL * float(target):
        return int(n), 1.0, 0.0
    target = float(target)
    if not target > 0:
        raise ValueError(f"target spacing must be positive mm or None, got {target}")
    n_new = max(1, int(round(n * spacing / target)))
    zoom = target / spacing
    offset = (n - 1) / 2.0 - zoom * (n_new - 1) / 2.0
    return n_new, zoom, offset


def body_bbox(array: np.ndarray, spacing, *, threshold: float = BODY_HU, margin_mm: float = BODY_MARGIN_MM,
              step_mm: float = BODY_STEP_MM) -> tuple[tuple[int, int, int], tuple[int, int, int], bool]:
    """Bounding box of the body in a CT volume, from the image alone.

    On a copy reduced to blocks of about ``step_mm`` in-plane (a block is "body" when any of its
    voxels is above ``threshold`` HU) and every few millimetres along z: fill each slice's holes (the
    lungs), open in-plane to cut thin bridges (table, blanket, cables), keep the largest 6-connected
    component, widen its box by ``margin_mm`` and clip it to the volume.

    Args:
        array: (x, y, z) HU volume (any dtype; views are fine, it is read slice by slice).
        spacing: (x, y, z) voxel size in mm.

    Returns:
        ``(lo, hi, found)``: inclusive-exclusive voxel box and whether a body was found (when it
        was not, the box is the whole volume).

    Example:
        >>> lo, hi, found = body_bbox(ct, (0.7, 0.7, 5.0))     # doctest: +SKIP
    """
    shape = np.asarray(array.shape[:3])
    spacing = np.asarray(spacing, dtype=float)
    step = np.maximum(1, np.floor(step_mm / spacing)).astype(int)
    bx, by = (int(math.ceil(n / s)) for n, s in zip(shape[:2], step[:2]))
    zs = range(0, int(shape[2]), int(step[2]))
    small = np.zeros((bx, by, len(zs)), dtype=bool)
    for j, z in enumerate(zs):
        sl = np.zeros((bx * step[0], by * step[1]), dtype=bool)
        sl[: shape[0], : shape[1]] = np.asarray(array[:, :, z]) > threshold
        small[:, :, j] = sl.reshape(bx, step[0], by, step[1]).any(axis=(1, 3))
        small[:, :, j] = ndi.binary_fill_holes(small[:, :, j])
    if small.any():
        small = ndi.binary_opening(small, structure=np.ones((3, 3, 1), bool))
    if small.any():
        comp, _ = ndi.label(small)
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        where = np.nonzero(comp == int(np.argmax(sizes)))
        margin = np.ceil(margin_mm / spacing).astype(int)
        lo = np.array([w.min() for w in where]) * step - margin
        hi = (np.array([w.max() for w in where]) + 1) * step + margin
        lo = np.clip(lo, 0, shape - 1)
        hi = np.clip(hi, lo + 1, shape)
        return tuple(int(v) for v in lo), tuple(int(v) for v in hi), True
    return (0, 0, 0), tuple(int(v) for v in shape), False


def _nearest_index(zoom: float, offset: float, start: int, count: int, n_src: int) -> np.ndarray:
    """Nearest source index of new indices ``start .. start+count-1`` (clipped to the source)."""
    coord = zoom * (start + np.arange(count, dtype=float)) + offset
    return np.clip(np.floor(coord + 0.5).astype(np.int64), 0, n_src - 1)


# --------------------------------------------------------------------------------------------
# preprocessing


def preprocess_volume(image, label=None, *, profile, case_id: str = "scan") -> Preprocessed:
    """Reorient, resample, crop to the body and normalise one CT scan (and its label).

    Args:
        image: a :class:`sscild.data.image.Volume` (``array`` (x, y, z) in HU, ``affine`` voxel -> RAS mm).
        label: optional integer label array on the image's grid (values 0..255).
        profile: profile name or :class:`~sscild.profiles.Profile`; uses ``target_spacing`` and
            ``hu_clip``.
        case_id: used in error messages and stored in the result.

    Returns:
        :class:`Preprocessed`. Peak memory is about the input plus one float32 output volume.

    Raises:
        ValueError: the image is not 3D, the affine is not 4x4 or singular, or the label's shape
            differs from the image's.

    Example:
        >>> pre = preprocess_volume(vol, lab, profile="cpu", case_id="case_001")  # doctest: +SKIP
        >>> restore_label(pre.label, pre.info).shape == vol.shape                # doctest: +SKIP
        True
    """
    prof = get_profile(profile)
    lo_hu, hi_hu = _window(prof)
    array = np.asarray(image.array)
    affine = np.asarray(image.affine, dtype=float)
    if array.ndim != 3:
        raise ValueError(f"case {case_id}: the image must be a 3D (x, y, z) volume, got shape {array.shape}; "
                         "split multi-channel or 4D series before preprocessing.")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"case {case_id}: the image affine must be a finite, invertible 4x4 voxel->RAS matrix; "
                         f"got {affine.tolist()}. Check the file's header (qform/sform or DICOM geometry).")
    if label is not None:
        label = np.asarray(label)
        if label.shape != array.shape:
            raise ValueError(f"case {case_id}: label shape {label.shape} differs from image shape {array.shape}; "
                             "the label must be drawn on the image's own voxel grid.")
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"case {case_id}: label values must be integers 0..255, found "
                             f"{label.min()}..{label.max()}; map them to {LABELS} first.")
    target = tuple(prof.target_spacing)
    if len(target) != 3:
        raise ValueError(f"profile {prof.name}: target_spacing must have 3 entries (x, y, z), got {target}")

    # 1) closest canonical RAS: axis permutation and flips only (views, no copy)
    ornt = nio.io_orientation(affine)
    can = nio.apply_orientation(array, ornt)
    can_affine = affine @ nio.inv_ornt_aff(ornt, array.shape)
    can_spacing = _spacing_of(can_affine)
    can_shape = can.shape

    # 2) resampled grid (geometry only; interpolation happens on the cropped box below)
    axes = [_resample_axis(n, s, t) for n, s, t in zip(can_shape, can_spacing, target)]
    res_shape = np.array([a[0] for a in axes])
    zoom = np.array([a[1] for a in axes])
    offset = np.array([a[2] for a in axes])
    # exactly the target on resampled axes (no float noise), the scan's own spacing elsewhere
    spacing = np.array([float(t) if z != 1.0 else s for t, z, s in zip(target, zoom, can_spacing)])

    # 3) body box found on the canonical image, mapped onto the resampled grid
    blo, bhi, found = body_bbox(can, can_spacing)
    blo, bhi = np.array(blo, float), np.array(bhi, float)
    crop_lo = np.clip(np.floor((blo - offset) / zoom + 1e-6).astype(int), 0, res_shape - 1)
    crop_hi = np.clip(np.ceil((bhi - 1 - offset) / zoom - 1e-6).astype(int) + 1, crop_lo + 1, res_shape)
    box = crop_hi - crop_lo
    out_shape = box.copy()
    out_shape[:2] = np.ceil(box[:2] / PAD_MULTIPLE).astype(int) * PAD_MULTIPLE
    pad_lo = (out_shape - box) // 2
    inner = tuple(slice(int(p), int(p + b)) for p, b in zip(pad_lo, box))

    # 4) interpolate only the box, straight into the padded output, then normalise in place
    air = float(normalise_hu(np.float32(AIR_HU), prof))
    out = np.full(tuple(int(v) for v in out_shape), air, dtype=np.float32)
    view = out[inner]
    if np.all(zoom == 1.0):
        view[...] = can[tuple(slice(int(a), int(b)) for a, b in zip(crop_lo, crop_hi))]
    else:
        ndi.affine_transform(can, zoom, offset=zoom * crop_lo + offset, output_shape=tuple(int(v) for v in box),
                             output=view, order=IMAGE_ORDER, mode="nearest", prefilter=False)
    _normalise_inplace(view, lo_hu, hi_hu)

    lab_out = None
    if label is not None:
        can_lab = nio.apply_orientation(label, ornt)
        idx = [_nearest_index(z, o, int(c), int(b), int(n)) for z, o, c, b, n in
               zip(zoom, offset, crop_lo, box, can_shape)]
        lab_out = np.zeros(out.shape, dtype=np.uint8)
        lab_out[inner] = can_lab[np.ix_(*idx)]

    # preprocessed index p -> canonical index zoom * (p - pad_lo + crop_lo) + offset
    step = np.eye(4)
    step[:3, :3] = np.diag(zoom)
    step[:3, 3] = zoom * (crop_lo - pad_lo) + offset
    pre_affine = can_affine @ step

    info = {
        "case_id": str(case_id),
        "version": PREPROCESS_VERSION,
        "original_shape": [int(v) for v in array.shape],
        "original_affine": affine.tolist(),
        "original_axcodes": list(nio.aff2axcodes(affine)),
        "ornt": ornt.tolist(),
        "canonical_shape": [int(v) for v in can_shape],
        "canonical_affine": can_affine.tolist(),
        "canonical_spacing": [float(v) for v in can_spacing],
        "zoom": [float(v) for v in zoom],
        "offset": [float(v) for v in offset],
        "resampled_shape": [int(v) for v in res_shape],
        "body_found": bool(found),
        "crop_lo": [int(v) for v in crop_lo],
        "crop_hi": [int(v) for v in crop_hi],
        "pad_lo": [int(v) for v in pad_lo],
        "shape": [int(v) for v in out.shape],
        "spacing": [float(v) for v in spacing],
        "affine": pre_affine.tolist(),
        "hu_clip": [lo_hu, hi_hu],
    }
    return Preprocessed(case_id=str(case_id), image=out, label=lab_out,
                        spacing=tuple(float(v) for v in spacing), info=info)


def restore_label(label_pre: np.ndarray, info: dict) -> np.ndarray:
    """Map a label map of the preprocessed grid back onto the original scan's voxel grid.

    Un-pads and un-crops (voxels outside the body box become 0), resamples nearest-neighbour to the
    canonical grid and undoes the reorientation. The result has the original shape and overlays on
    the original image with the original affine (``info["original_affine"]``).

    Args:
        label_pre: (x, y, z) array on the preprocessed grid (any dtype; integer labels expected).
        info: ``Preprocessed.info`` (or the ``info`` stored in the cache JSON).

    Returns:
        Array of ``info["original_shape"]``, same dtype as ``label_pre``.

    Example:
        >>> pre = preprocess_volume(vol, lab, profile="cpu")                 # doctest: +SKIP
        >>> back = restore_label(pre.label, pre.info)                        # doctest: +SKIP
    """
    label_pre = np.asarray(label_pre)
    shape = tuple(info["shape"])
    if label_pre.shape != shape:
        raise ValueError(f"case {info.get('case_id', '?')}: label map has shape {label_pre.shape} but the "
                         f"preprocessed grid is {shape}; pass the map predicted on that case's preprocessed image.")
    pad_lo = np.array(info["pad_lo"])
    crop_lo, crop_hi = np.array(info["crop_lo"]), np.array(info["crop_hi"])
    box = crop_hi - crop_lo
    inner = label_pre[tuple(slice(int(p), int(p + b)) for p, b in zip(pad_lo, box))]
    idx, valid = [], []
    for zoom, offset, lo, b, n in zip(info["zoom"], info["offset"], crop_lo, box, info["canonical_shape"]):
        i = np.floor((np.arange(n, dtype=float) - offset) / zoom + 0.5).astype(np.int64) - int(lo)
        valid.append((i >= 0) & (i < b))
        idx.append(np.clip(i, 0, int(b) - 1))
    can = inner[np.ix_(*idx)]
    for axis, v in enumerate(valid):
        if not v.all():
            sl = [slice(None)] * 3
            sl[axis] = ~v
            can[tuple(sl)] = 0
    ornt = np.asarray(info["ornt"], dtype=float)
    back = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), ornt)
    out = nio.apply_orientation(can, back)
    if out.shape != tuple(info["original_shape"]):  # pragma: no cover - guards the geometry record
        raise RuntimeError(f"restore_label produced {out.shape}, expected {tuple(info['original_shape'])}")
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# cache


def preprocess_settings(profile) -> dict:
    """The settings that determine a cached case (part of :func:`cache_key`)."""
    prof = get_profile(profile)
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
        profile: profile name or :class:`~sscild.profiles.Profile`.
        extra: anything else JSON-serialisable that changes the result (e.g. a cohort label map).

    Example:
        >>> cache_key("imagesTr/c1_0000.nii.gz", "labelsTr/c1.nii.gz", "cpu")   # doctest: +SKIP
        '3f1c...'
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


def _read_case(cohort, case_id: str):
    from sscild.data.cohort import read_case  # on use: preprocessing a lone scan needs no cohort module

    return read_case(cohort, case_id)


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
        profile: profile name or :class:`~sscild.profiles.Profile`.
        cases: optional subset of case ids (default: all cases of the cohort).
        progress: show a tqdm progress bar.

    Returns:
        One row per case (cohort order): ``case_id``, ``reused``, original and preprocessed shapes and
        spacings, ``body_found``, per-class voxel counts ``n_<class>`` and volumes (mL) on the original
        grid, ``lung_ml``, ``lesion_ml``, and ``ef_pct``/``ggo_pct``/``lesion_pct`` of the lung.

    Example:
        >>> table = build_cache(load_cohort("data/synthetic"), run, "cpu")   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    prof = get_profile(profile)
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
        vol, lab = _read_case(cohort, case.case_id)
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

    Example:
        >>> pre = load_cached(run, "case_001")                     # doctest: +SKIP
        >>> pre.image.dtype, pre.label.dtype                       # doctest: +SKIP
        (dtype('float32'), dtype('uint8'))
    """
    npz_path, meta_path = _paths(run, str(case_id))
    if not (npz_path.exists() and meta_path.exists()):
        raise FileNotFoundError(f"case {case_id}: no complete cache entry in {run.cache} "
                                f"({npz_path.name} and {meta_path.name} are needed); "
                                "build it with sscild.data.preprocess.build_cache (the Data chapter, `make data`).")
    meta = read_json(meta_path)
    image = _npz_member(npz_path, "image", mmap)
    if image is None:
        raise ValueError(f"case {case_id}: {npz_path} has no image array; delete it and rebuild the cache.")
    label = _npz_member(npz_path, "label", mmap)
    return Preprocessed(case_id=str(case_id), image=image, label=label,
                        spacing=tuple(float(v) for v in meta["spacing"]), info=meta["info"])
