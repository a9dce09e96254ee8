"""Preprocessing: orientation, resampling, body crop and HU normalisation of one scan.

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

The preprocessed cases of a cohort are kept in a cache (:mod:`sscild.data.cache`).

Example:
    >>> import numpy as np
    >>> from sscild.data.image import Volume
    >>> hu = np.full((60, 50, 8), -1000, np.int16); hu[10:50, 8:42] = 40   # a body block in air
    >>> from sscild.profiles import get_profile
    >>> pre = preprocess_volume(Volume(hu, np.diag([0.7, 0.7, 5.0, 1.0])), profile=get_profile("cpu"))
    >>> pre.image.shape, pre.spacing
    ((32, 32, 8), (1.4, 1.4, 5.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage as ndi

from sscild import LABELS
from sscild.profiles import require_profile

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
    lo, hi = (float(v) for v in require_profile(profile).hu_clip)
    if not hi > lo:
        raise ValueError(f"profile hu_clip must be (low, high) with low < high, got {(lo, hi)}")
    return lo, hi


def normalise_hu(hu, profile) -> np.ndarray:
    """Clip HU to ``profile.hu_clip`` and map the window linearly onto [-1, 1].

    The map is fixed (not fitted per scan) because CT values are calibrated: -1024 HU is air and
    0 HU water in every scan, and lesion density is what the network must read.

    Args:
        hu: array of Hounsfield units.
        profile: the resolved :class:`~sscild.profiles.Profile`.

    Returns:
        float32 array, same shape, values in [-1, 1].

    Example:
        >>> from sscild.profiles import get_profile
        >>> normalise_hu(np.array([-2000.0, -1024.0, 600.0]), get_profile("cpu")).tolist()
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
        >>> from sscild.profiles import get_profile
        >>> denormalise(np.array([-1.0, 1.0]), get_profile("cpu")).tolist()
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
        >>> ct = np.full((60, 50, 8), -1000, np.int16); ct[10:50, 8:42] = 40   # a body block in air
        >>> body_bbox(ct, (0.7, 0.7, 5.0))
        ((2, 0, 0), (58, 50, 8), True)
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


def _checked_inputs(image, label, prof, case_id: str):
    """The image's array and affine, the label array and the target spacing, checked (ValueError naming the fix)."""
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
    return array, affine, label, target


# long: one linear pipeline (reorient, resample, crop, normalise) whose steps share the geometry it records
def preprocess_volume(image, label=None, *, profile, case_id: str = "scan") -> Preprocessed:
    """Reorient, resample, crop to the body and normalise one CT scan (and its label).

    Args:
        image: a :class:`sscild.data.image.Volume` (``array`` (x, y, z) in HU, ``affine`` voxel -> RAS mm).
        label: optional integer label array on the image's grid (values 0..255).
        profile: the resolved :class:`~sscild.profiles.Profile`; uses ``target_spacing`` and
            ``hu_clip``.
        case_id: used in error messages and stored in the result.

    Returns:
        :class:`Preprocessed`. Peak memory is about the input plus one float32 output volume.

    Raises:
        ValueError: the image is not 3D, the affine is not 4x4 or singular, or the label's shape
            differs from the image's.

    Example:
        >>> from sscild.data.image import Volume
        >>> hu = np.full((60, 50, 8), -1000, np.int16); hu[10:50, 8:42] = 40
        >>> vol, lab = Volume(hu, np.diag([0.7, 0.7, 5.0, 1.0])), (hu > 0).astype(np.uint8)
        >>> from sscild.profiles import get_profile
        >>> pre = preprocess_volume(vol, lab, profile=get_profile("cpu"), case_id="case_001")
        >>> pre.image.shape, pre.label.shape
        ((32, 32, 8), (32, 32, 8))
    """
    prof = require_profile(profile)
    lo_hu, hi_hu = _window(prof)
    array, affine, label, target = _checked_inputs(image, label, prof, case_id)

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
        >>> from sscild.data.image import Volume
        >>> hu = np.full((60, 50, 8), -1000, np.int16); hu[10:50, 8:42] = 40
        >>> lab = (hu > 0).astype(np.uint8)
        >>> from sscild.profiles import get_profile
        >>> pre = preprocess_volume(Volume(hu, np.diag([0.7, 0.7, 5.0, 1.0])), lab, profile=get_profile("cpu"))
        >>> back = restore_label(pre.label, pre.info)
        >>> back.shape, bool((back == lab).all())
        ((60, 50, 8), True)
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
