"""Segmentations coming back from a radiologist: 3D Slicer ``.seg.nrrd``, DICOM SEG, or a plain label map.

:func:`read_segmentation` turns a segmentation file into the study's label map (0 background,
1 normal lung, 2 EF, 3 GGO; ``sscild.LABELS``) on a reference CT's grid, so a segmentation that
``sscild segment`` wrote and a radiologist corrected can go back into a cohort
(``sscild import-dicom --labels``):

* **3D Slicer** ``.seg.nrrd`` (any NRRD with ``Segment<i>_*`` fields): cropped or not, one layer or
  several (a 4D NRRD with a leading layer axis, as Slicer writes when segments overlap); each
  segment is ``Segment<i>_Layer`` == ``Segment<i>_LabelValue`` (a Slicer 4.10 file without them: one
  binary layer per segment). Its voxels are placed by the file's own geometry (``space origin`` /
  ``space directions``; ``Segmentation_ReferenceImageExtentOffset`` is then implied).
* **DICOM SEG** (SOP class Segmentation Storage; BINARY, FRACTIONAL or LABELMAP): every frame is
  placed by its own ``ImagePositionPatient`` / orientation / pixel spacing (frames without any
  segment may be missing).
* **anything else**: a label map read by :func:`sscild.data.image.load_volume`, which must have the
  CT's shape and geometry (its values are taken as they are).

A segmentation's grid must be the CT's up to axis order, flips and cropping: every voxel must land
within :data:`GRID_TOLERANCE` voxel of a CT voxel, otherwise the file is refused (no resampling).

Segments are given a label by, in this order: the user's ``label_map`` (segment name -> role, as
``--label-map``); the segment's **name** (:func:`segment_names`: the roles of
:data:`sscild.data.labels.ROLE_SYNONYMS`, the study's class names, plus ``reticulation`` and
``honeycombing`` -> EF); its **coded type** (DICOM SEG ``SegmentedPropertyTypeCodeSequence``,
Slicer ``TerminologyEntry`` tag: :data:`STANDARD_CODES` plus the ``codes`` given, e.g.
``sscild.clinic.viewer.SEGMENT_CODES``; a code's meaning is tried as a name). A name and a code
naming different labels, or a segment neither recognises, are refused with the accepted names. The
``sscild:label=<k>`` tag ``sscild segment`` writes is not trusted: a radiologist who renamed a segment
changed its meaning.

Overlaps: a lesion (EF or GGO) drawn over normal lung wins (Slicer users often keep the whole lung
in one segment and paint lesions in another layer); EF and GGO overlapping is refused with the
number of voxels, as neither is the obvious answer.

Usage::

    ct = load_volume("dicom/anon_a")
    label = read_segmentation("corrected/anon_a.seg.nrrd", ct, codes=SEGMENT_CODES)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscild import CLASS_NAMES, LABELS
from sscild.data.image import Volume, load_volume
from sscild.data.labels import ROLE_SYNONYMS
from sscild.data.names import normalise_name
from sscild.errors import InputError
from sscild.palette import LABEL_NAMES

__all__ = ["read_segmentation", "segmentation_kind", "segment_names", "check_label_map", "Segment",
           "STANDARD_CODES", "EXTRA_SEGMENT_NAMES", "GRID_TOLERANCE"]

EXTRA_SEGMENT_NAMES = {"reticulation": "ef", "honeycombing": "ef", "ground_glass_opacities": "ggo"}
"""Segment names accepted besides :data:`~sscild.data.labels.ROLE_SYNONYMS` (normalised form)."""

STANDARD_CODES = {("SCT", "39607008"): LABELS["normal"], ("SCT", "17621005"): LABELS["normal"],
                  ("SCT", "112674009"): LABELS["ef"], ("RADLEX", "RID28531"): LABELS["ggo"],
                  ("DCM", "112120"): LABELS["ggo"]}
"""(coding scheme, code value) of a segmented property type -> label, accepted without ``codes``:
SNOMED CT Lung and Normal (the normal lung of ``sscild segment`` since it codes parenchyma, not the organ),
SNOMED CT Fibrosis, RadLex and DICOM ground-glass opacity."""

GRID_TOLERANCE = 0.1
"""How far (in CT voxels) a segmentation voxel may lie from a CT voxel centre before the grids count as different."""

_SCHEMES = {"SRT": "SCT", "SNM3": "SCT", "SNOMED": "SCT", "SNOMEDCT": "SCT"}
_KNOWN_SCHEMES = {"SCT", "SRT", "SNM3", "RADLEX", "DCM", "FMA", "UMLS", "LN", "NCIT", "99SSCILD"}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (the same matrix both ways)
_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # Segmentation, Label Map Seg.
_FIX_GRID = ("Fix: keep the segmentation on the CT's grid (3D Slicer: Segment Editor > Specify geometry: "
             "the CT as source, oversampling 1, before editing; or export it as a label map of the CT).")


@dataclass(frozen=True)
class Segment:
    """One segment as a file declares it.

    Attributes:
        name: its name (Slicer ``Segment<i>_Name``, DICOM ``SegmentLabel``).
        code: ``(scheme, value, meaning)`` of its segmented property type, or None.
    """

    name: str
    code: tuple[str, str, str] | None = None


# --------------------------------------------------------------------------------------------
# Segment -> label
# --------------------------------------------------------------------------------------------


def segment_names() -> dict[str, int]:
    """Accepted segment names (normalised, :func:`~sscild.data.names.normalise_name`) -> label value.

    Example:
        >>> segment_names()["ground_glass_opacity"], segment_names()["honeycombing"]
        (3, 2)
    """
    names = {n: LABELS[r] for n, r in {**ROLE_SYNONYMS, **EXTRA_SEGMENT_NAMES}.items()}
    for table in (LABEL_NAMES, CLASS_NAMES):
        names.update({normalise_name(n): v for v, n in table.items()})
    return names


def _accepted() -> str:
    by_label: dict[int, list[str]] = {}
    for name, value in segment_names().items():
        by_label.setdefault(value, []).append(name.replace("_", " "))
    return "; ".join(f"{v}: {', '.join(sorted(ns))}" for v, ns in sorted(by_label.items()))


def check_label_map(label_map: Mapping | None) -> dict[str, int]:
    """A user's segment name -> role map (``--label-map``) as normalised name -> label value.

    Roles are those of ``--label-map`` (``background``, ``normal``, ``ef``, ``ggo``, a synonym, or 0..3);
    ``background`` drops a segment.

    Raises:
        InputError: a role is not a study role.

    Example:
        >>> check_label_map({"Consolidation": "ggo", "scratch": "background"})
        {'consolidation': 3, 'scratch': 0}
    """
    out = {}
    for key, role in (label_map or {}).items():
        if isinstance(role, (int, np.integer)) and not isinstance(role, bool) and int(role) in LABELS.values():
            out[normalise_name(key)] = int(role)
        elif isinstance(role, str) and ROLE_SYNONYMS.get(normalise_name(role)) is not None:
            out[normalise_name(key)] = LABELS[ROLE_SYNONYMS[normalise_name(role)]]
        else:
            raise InputError(f"--label-map gives segment {key!r} the role {role!r}, which is not a study role. "
                             "Fix: map each name to one of background, normal, ef, ggo (e.g. "
                             '{"consolidation": "ggo"}).')
    return out


def _code_key(code) -> tuple[str, str] | None:
    """(scheme, value) of a code given as an object (``.scheme_designator``, ``.value``) or a tuple.

    A tuple may be ``(value, scheme, meaning)`` (as :mod:`sscild.clinic.viewer`) or
    ``(scheme, value, meaning)`` (as a Slicer terminology entry).
    """
    if hasattr(code, "scheme_designator") and hasattr(code, "value"):
        scheme, value = str(code.scheme_designator), str(code.value)
    elif isinstance(code, (tuple, list)) and len(code) >= 2:
        a, b = str(code[0]).strip(), str(code[1]).strip()
        scheme, value = (a, b) if a.upper() in _KNOWN_SCHEMES and b.upper() not in _KNOWN_SCHEMES else (b, a)
    else:
        return None
    return _norm_code(scheme, value)


def _norm_code(scheme: str, value: str) -> tuple[str, str] | None:
    """(scheme, value) in one form: upper-case scheme, the old SNOMED designators as ``SCT``."""
    scheme = str(scheme).strip().upper().replace(" ", "")
    return (_SCHEMES.get(scheme, scheme), str(value).strip()) if str(value).strip() else None


def _code_table(codes: Mapping | None) -> dict[tuple[str, str], int]:
    """:data:`STANDARD_CODES` plus ``codes`` (label or name -> ``{"type": code, ...}`` or a code);
    a code given two different labels is dropped (it cannot decide)."""
    table: dict[tuple[str, str], int] = dict(STANDARD_CODES)
    clash = set()
    for key, entry in (codes or {}).items():
        label = int(key) if isinstance(key, (int, np.integer)) else segment_names().get(normalise_name(key))
        code = entry.get("type") if isinstance(entry, Mapping) else entry
        ck = _code_key(code)
        if label is None or ck is None:
            continue
        if table.get(ck, label) != label:
            clash.add(ck)
        table[ck] = label
    return {k: v for k, v in table.items() if k not in clash}


def _label_of(segment: Segment, user: dict[str, int], codes: dict, path: Path) -> int:
    name = normalise_name(segment.name)
    if name in user:
        return user[name]
    by_name = segment_names().get(name)
    by_code = None
    if segment.code is not None:
        by_code = codes.get(_norm_code(*segment.code[:2]))
        if by_code is None and segment.code[2]:
            by_code = segment_names().get(normalise_name(segment.code[2]))
    if by_name is not None and by_code is not None and by_name != by_code:
        raise InputError(
            f"{path}: segment {segment.name!r} is named as label {by_name} but coded as "
            f"{segment.code[2] or segment.code[1]!r} (label {by_code}). Fix: rename the segment or set its "
            f"terminology so they agree, or map the name with --label-map '{{\"{segment.name}\": \"ef\"}}'.")
    if by_name is not None or by_code is not None:
        return by_name if by_name is not None else by_code
    raise InputError(
        f"{path}: segment {segment.name!r} is not one of the study's labels (accepted names - {_accepted()}; "
        "or a coded type Lung / Fibrosis / ground-glass opacity). Fix: rename the segment, or map it with "
        f"--label-map '{{\"{segment.name}\": \"ggo\"}}' (\"background\" drops it).")


# --------------------------------------------------------------------------------------------
# Placing a block of voxels on the reference grid
# --------------------------------------------------------------------------------------------


def _placement(shape, affine: np.ndarray, reference: Volume, path: Path):
    """How an array on ``affine`` (voxel -> RAS) sits in the reference grid: (axes, flips, starts).

    Raises:
        InputError: the grids differ by more than axis order, flips and a whole-voxel shift.
    """
    m = np.linalg.solve(reference.affine, np.asarray(affine, float))  # source index -> reference index
    r = np.rint(m[:3, :3])
    perm = np.abs(r)
    if not (np.array_equal(perm.sum(axis=0), np.ones(3)) and np.array_equal(perm.sum(axis=1), np.ones(3))):
        raise InputError(f"{path}: its voxel grid (spacing {np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist()}"
                         f" mm) is not the CT's (spacing {np.round(reference.spacing, 4).tolist()} mm, same "
                         f"orientation). {_FIX_GRID}")
    t = np.rint(m[:3, 3])
    corners = np.array(np.meshgrid(*[[0, max(int(n) - 1, 0)] for n in shape], indexing="ij")).reshape(3, -1)
    err = np.abs((m[:3, :3] - r) @ corners + (m[:3, 3] - t)[:, None]).max()
    if err > GRID_TOLERANCE:
        raise InputError(f"{path}: its voxels lie up to {err:.2f} voxel off the CT's voxel centres (tolerance "
                         f"{GRID_TOLERANCE}); the segmentation is not on the CT's grid. {_FIX_GRID}")
    axes = [int(np.argmax(perm[a])) for a in range(3)]
    flips = [bool(r[a, axes[a]] < 0) for a in range(3)]
    starts = [int(t[a]) - (int(shape[axes[a]]) - 1 if flips[a] else 0) for a in range(3)]
    return axes, flips, starts


def _put(flags: np.ndarray, mask: np.ndarray, placement, bit: int, path: Path, what: str) -> None:
    """OR ``bit`` into ``flags`` (reference grid) where ``mask`` (source grid) is set."""
    axes, flips, starts = placement
    block = np.transpose(mask, axes)
    block = block[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    lo = [max(0, -s) for s in starts]
    hi = [min(n, flags.shape[a] - s) for a, (n, s) in enumerate(zip(block.shape, starts))]
    inside = block[tuple(slice(a, max(a, b)) for a, b in zip(lo, hi))]
    outside = int(np.count_nonzero(block)) - int(np.count_nonzero(inside))
    if outside:
        raise InputError(f"{path}: {outside} voxel(s) of segment {what!r} lie outside the CT's volume. {_FIX_GRID}")
    if inside.size:
        target = tuple(slice(s + a, s + b) for s, a, b in zip(starts, lo, hi))
        flags[target] |= (inside.astype(bool) * np.uint8(1 << bit)).astype(np.uint8)


def _resolve_flags(flags: np.ndarray, path: Path) -> np.ndarray:
    """Flags (bit k-1 set: segment of label k there) -> labels; a lesion wins over normal lung."""
    ef, ggo = 1 << (LABELS["ef"] - 1), 1 << (LABELS["ggo"] - 1)
    both = int(np.count_nonzero((flags & ef).astype(bool) & (flags & ggo).astype(bool)))
    if both:
        raise InputError(f"{path}: {both} voxel(s) belong to both an established-fibrosis and a ground-glass "
                         "segment. Fix: give each voxel one lesion class (3D Slicer: Segment Editor > Logical "
                         "operators > Subtract one segment from the other) and save again.")
    lut = np.zeros(256, np.uint8)
    for k in (LABELS["normal"], LABELS["ggo"], LABELS["ef"]):  # later wins: lesion over normal lung
        lut[[v for v in range(256) if v & (1 << (k - 1))]] = k
    return lut[flags]


# --------------------------------------------------------------------------------------------
# 3D Slicer .seg.nrrd
# --------------------------------------------------------------------------------------------


def _slicer_segments(header: Mapping, path: Path) -> list[tuple[Segment, int, int]]:
    """``(segment, layer, label value)`` of every ``Segment<i>_*`` of a Slicer header."""
    out = []
    i = 0
    while any(k.startswith(f"Segment{i}_") for k in header):
        name = str(header.get(f"Segment{i}_Name", header.get(f"Segment{i}_ID", f"Segment_{i}")))
        code = None
        for tag in str(header.get(f"Segment{i}_Tags", "")).split("|"):
            key, _, value = tag.partition(":")
            parts = value.split("~") if key == "TerminologyEntry" else []  # context~category~type~modifier~...
            triple = parts[2].split("^") if len(parts) > 2 else []  # scheme^value^meaning
            if len(triple) >= 2 and triple[1].strip():
                code = (triple[0], triple[1], triple[2] if len(triple) > 2 else "")
        try:  # Slicer 4.10 wrote one binary layer per segment, without layer and label value fields
            layer = int(header.get(f"Segment{i}_Layer", i if f"Segment{i}_LabelValue" not in header else 0))
            value = int(header.get(f"Segment{i}_LabelValue", 1))
        except ValueError as exc:
            raise InputError(f"{path}: Segment{i}_Layer / _LabelValue is not a whole number ({exc}). "
                             "Fix: save the segmentation again from 3D Slicer.") from None
        out.append((Segment(name, code), layer, value))
        i += 1
    return out


def _slicer_affine(header: Mapping, spatial: list[int], path: Path) -> np.ndarray:
    """Voxel (spatial axes, in order) -> RAS of a NRRD header."""
    space = str(header.get("space", "")).lower()
    dirs = header.get("space directions")
    origin = header.get("space origin")
    if dirs is None or origin is None or space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras"):
        raise InputError(f"{path}: no usable geometry (space {space or 'missing'}, space directions / origin). "
                         "Fix: save the segmentation from 3D Slicer (a .seg.nrrd has LPS geometry).")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(dirs, float)[spatial].T
    affine[:3, 3] = np.asarray(origin, float)
    return _LPS @ affine if space in ("left-posterior-superior", "lps") else affine


def _read_slicer(path: Path, reference: Volume, label_of) -> np.ndarray:
    import nrrd

    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not readable as NRRD ({exc}). Fix: save it again from 3D Slicer.") from exc
    dirs = header.get("space directions")
    if data.ndim == 3:
        data, spatial = data[None], [0, 1, 2]
    elif data.ndim == 4 and dirs is not None:
        lists = [a for a in range(4) if not np.all(np.isfinite(np.asarray(dirs[a], float)))]
        if len(lists) != 1:
            raise InputError(f"{path}: a 4D segmentation needs one layer axis (space direction 'none'). "
                             "Fix: save the segmentation from 3D Slicer.")
        data = np.moveaxis(data, lists[0], 0)
        spatial = [a for a in range(4) if a != lists[0]]
    else:
        raise InputError(f"{path}: a segmentation of {data.ndim} dimensions; expected 3 (one layer) or 4 "
                         "(layers first). Fix: save the segmentation from 3D Slicer.")
    placement = _placement(data.shape[1:], _slicer_affine(header, spatial, path), reference, path)
    flags = np.zeros(reference.shape, np.uint8)
    for segment, layer, value in _slicer_segments(header, path):
        label = label_of(segment)
        if not 0 <= layer < data.shape[0]:
            raise InputError(f"{path}: segment {segment.name!r} is in layer {layer}, but the file has "
                             f"{data.shape[0]}. Fix: save the segmentation again from 3D Slicer.")
        if label:
            _put(flags, data[layer] == value, placement, label - 1, path, segment.name)
    return _resolve_flags(flags, path)


# --------------------------------------------------------------------------------------------
# DICOM SEG
# --------------------------------------------------------------------------------------------


def _frame_item(seg, frame: int, sequence: str):
    """The item of a functional group for one frame (per-frame first, then shared), or None."""
    per_frame, shared = seg.get("PerFrameFunctionalGroupsSequence"), seg.get("SharedFunctionalGroupsSequence")
    groups = ([per_frame[frame]] if per_frame is not None and frame < len(per_frame) else []) + \
        ([shared[0]] if shared else [])
    for group in groups:
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _frame_affine(seg, frame: int, reference: Volume, path: Path) -> np.ndarray:
    """Voxel (column, row, 0) of one frame -> RAS; the third axis is one reference voxel along the normal."""
    pos, ori, meas = (_frame_item(seg, frame, s) for s in
                      ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
    if pos is None or ori is None or meas is None:
        raise InputError(f"{path}: frame {frame + 1} has no position, orientation or pixel spacing. "
                         "Fix: export the DICOM SEG with its plane geometry (any current DICOM SEG writer does).")
    iop = np.asarray(ori.ImageOrientationPatient, float)
    row_sp, col_sp = (float(v) for v in meas.PixelSpacing)
    normal = np.cross(iop[:3], iop[3:])
    step = np.abs(np.linalg.solve(_LPS[:3, :3] @ reference.affine[:3, :3], normal)).max()
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3] * col_sp, iop[3:] * row_sp, normal / max(step, 1e-9)
    lps[:3, 3] = np.asarray(pos.ImagePositionPatient, float)
    return _LPS @ lps


def _seg_segments(seg, path: Path) -> dict[int, Segment]:
    out = {}
    for item in seg.SegmentSequence:
        code = None
        if "SegmentedPropertyTypeCodeSequence" in item and len(item.SegmentedPropertyTypeCodeSequence):
            c = item.SegmentedPropertyTypeCodeSequence[0]
            code = (str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeValue", "")), str(c.get("CodeMeaning", "")))
        out[int(item.SegmentNumber)] = Segment(str(item.get("SegmentLabel", f"segment {item.SegmentNumber}")), code)
    return out


def _read_dicom_seg(path: Path, reference: Volume, label_of) -> np.ndarray:
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
        frames = np.asarray(seg.pixel_array)
    except Exception as exc:
        raise InputError(f"{path}: not readable as a DICOM Segmentation ({exc}). Fix: export it again.") from exc
    frames = frames[None] if frames.ndim == 2 else frames
    segments = _seg_segments(seg, path)
    labels = {n: label_of(s) for n, s in segments.items()}
    kind = str(seg.get("SegmentationType", "BINARY")).upper()
    threshold = float(seg.get("MaximumFractionalValue", 255)) / 2 if kind == "FRACTIONAL" else 0
    flags = np.zeros(reference.shape, np.uint8)
    for f in range(frames.shape[0]):
        frame = frames[f].T[:, :, None]  # (rows, columns) -> (x = column, y = row, 1)
        placement = _placement(frame.shape, _frame_affine(seg, f, reference, path), reference, path)
        if kind == "LABELMAP":
            parts = [(n, frame == n) for n in np.unique(frame) if n]
        else:
            ident = _frame_item(seg, f, "SegmentIdentificationSequence")
            parts = [(int(ident.ReferencedSegmentNumber), frame > threshold)] if ident is not None else []
        for number, mask in parts:
            if int(number) not in labels:
                raise InputError(f"{path}: frame {f + 1} refers to segment {int(number)}, which the file does not "
                                 "describe. Fix: export the DICOM SEG again.")
            if labels[int(number)]:
                _put(flags, mask, placement, labels[int(number)] - 1, path, segments[int(number)].name)
    return _resolve_flags(flags, path)


# --------------------------------------------------------------------------------------------
# Plain label maps and the entry point
# --------------------------------------------------------------------------------------------


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


def _read_plain(path: Path, reference: Volume) -> np.ndarray:
    lab = load_volume(path)
    if lab.shape != reference.shape:
        raise InputError(f"{path}: label shape {lab.shape} differs from the image's {reference.shape}. "
                         "Fix: export the label on the CT's grid.")
    if not np.allclose(lab.affine, reference.affine, atol=1e-2):
        raise InputError(f"{path}: label geometry (spacing / orientation / origin) differs from the image's. "
                         "Fix: export the label on the CT's grid, in the same orientation.")
    return _label_array(lab.array, path)


def segmentation_kind(path: str | os.PathLike) -> str:
    """``"slicer"`` (an NRRD with ``Segment<i>_`` fields), ``"dicom-seg"`` or ``"label"`` (anything else).

    Example:
        >>> segmentation_kind("no/such/file.nii.gz")
        'label'
    """
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        return "label"
    if name.endswith((".nrrd", ".nhdr")):
        import nrrd

        try:
            header = nrrd.read_header(str(path))
        except Exception:
            return "label"
        return "slicer" if any(k.startswith("Segment0_") for k in header) else "label"
    if not name.endswith((".nii", ".nii.gz", ".mha", ".mhd")):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
        except Exception:
            return "label"
        if str(ds.get("SOPClassUID", "")) in _SEG_SOP_CLASSES or str(ds.get("Modality", "")) == "SEG":
            return "dicom-seg"
    return "label"


def read_segmentation(path: str | os.PathLike, reference: Volume, *, label_map: Mapping | None = None,
                      codes: Mapping | None = None) -> np.ndarray:
    """A segmentation file as the study's label map on a CT's grid.

    Args:
        path: a 3D Slicer ``.seg.nrrd``, a DICOM SEG file, or a label map :func:`~sscild.data.image.load_volume` reads.
        reference: the CT (its ``.shape`` and ``.affine``, voxel -> RAS) the labels must lie on.
        label_map: optional segment name -> role (``"normal"``, ``"ef"``, ``"ggo"``, ``"background"`` or 0..3),
            checked before the names and codes.
        codes: more segment codes, label -> ``{"type": (value, scheme, meaning), ...}`` as
            ``sscild.clinic.viewer.SEGMENT_CODES`` (added to :data:`STANDARD_CODES`).

    Returns:
        uint8 array of ``reference.shape``: 0 background, 1 normal lung, 2 EF, 3 GGO (a plain label map's
        values as they are).

    Raises:
        InputError: unreadable file; a segment with no study label (the message lists the accepted
            names); a grid that is not the CT's; EF and GGO overlapping; voxels outside the CT.

    Usage::

        label = read_segmentation("anon_a.seg.nrrd", load_volume("dicom/anon_a"), label_map={"consolidation": "ggo"})
    """
    path = Path(path)
    kind = segmentation_kind(path)
    if kind == "label":
        return _read_plain(path, reference)
    user, table = check_label_map(label_map), _code_table(codes)

    def label_of(segment: Segment) -> int:
        return _label_of(segment, user, table, path)

    if kind == "slicer":
        return _read_slicer(path, reference, label_of)
    return _read_dicom_seg(path, reference, label_of)
