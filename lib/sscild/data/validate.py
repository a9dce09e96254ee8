"""Validation of a cohort folder: every problem at once, each with its fix.

:func:`validate_cohort` reads each case's headers first, then its voxels, one case at a time (a
512x512x600 int16 case needs well under 1 GiB), never writes anything, and collects every problem
before returning a :class:`~sscild.data.validation_report.ValidationReport` (the problem kinds are
:data:`~sscild.data.validation_report.PROBLEM_KINDS`).

**Unlabelled scans** (``unlabelledTr/``) are checked like the labelled images (readable, finite,
Hounsfield units), and besides: the folder must hold at least one scan when it exists, it must not
hold label files (``<id><ending>`` without the channel suffix, or subfolders such as ``labelsTr``),
and no unlabelled scan may have the same voxels as a labelled case's image (that case would be seen
again, unlabelled, by the training of the folds that hold it out). Their problems are reported under
``unlabelled/<id>`` and never make a labelled case unusable; any of them makes ``report.ok`` false.

**Controls** (``controlsTs/``: patients without lung disease, scored for false lesions) are checked
the same way, under ``controls/<id>``; a control may repeat no labelled, unlabelled or other control
scan.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from sscild import LABELS
from sscild.data.clinical_table import read_clinical
from sscild.data.cohort import CohortLayout, check_structure, relative_name
from sscild.data.image import load_header, load_volume
from sscild.data.labels import label_counts, label_map_from_env
from sscild.data.validation_report import CONTROLS_DIR, UNLABELLED_DIR, ValidationReport
from sscild.errors import InputError

__all__ = ["validate_cohort"]

_LUNG_ROLES = (LABELS["normal"], LABELS["ef"], LABELS["ggo"])
_SPACING_RTOL = 1e-3
_DIRECTION_ATOL = 1e-3
_ORIGIN_ATOL_MM = 1e-2


def _why(exc: InputError) -> str:
    why = getattr(exc, "reason", None)
    return f"cannot be read ({why}); it is unreadable, truncated or corrupt" if why else str(exc)


def _directions(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, float)[:3, :3]
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def _compare_geometry(case, img_file, lab_file, ih, lh, report) -> bool:
    """Report image/label geometry mismatches; True when voxels can be compared one to one."""
    aligned = True
    if ih.shape != lh.shape:
        report.add(case, lab_file, "shape_mismatch",
                   f"label shape {lh.shape} differs from image shape {ih.shape} ({img_file}).",
                   "export the label on the image's voxel grid (same size); do not crop or resample one alone.")
        aligned = False
    if not np.allclose(ih.spacing, lh.spacing, rtol=_SPACING_RTOL, atol=1e-4):
        report.add(case, lab_file, "spacing_mismatch",
                   f"label spacing {tuple(round(s, 4) for s in lh.spacing)} mm differs from image spacing "
                   f"{tuple(round(s, 4) for s in ih.spacing)} mm ({img_file}).",
                   "export the label with the image's spacing (resample the label with nearest neighbour, "
                   "or copy the image's header onto it if only the header is wrong).")
        aligned = False
    if not (np.allclose(_directions(ih.affine), _directions(lh.affine), atol=_DIRECTION_ATOL)
            and np.allclose(ih.affine[:3, 3], lh.affine[:3, 3], atol=_ORIGIN_ATOL_MM)):
        report.add(case, lab_file, "affine_mismatch",
                   f"label orientation/origin differ from the image's ({img_file}): image affine "
                   f"{np.round(ih.affine[:3], 3).tolist()}, label affine {np.round(lh.affine[:3], 3).tolist()}.",
                   "export the label in the image's orientation and origin (e.g. save it with the image's "
                   "affine/header); a flipped or shifted label does not overlay the CT.")
        aligned = False
    return aligned


def _voxel_digest(array: np.ndarray) -> str:
    """SHA-1 of a volume's voxels (values, shape and type): the same scan under two names."""
    import hashlib

    a = np.ascontiguousarray(array)
    return hashlib.sha1(a.tobytes() + str(a.shape).encode() + a.dtype.str.encode()).hexdigest()


def _check_image_only(root: Path, key_dir: str, uid: str, image: Path, digests: dict[str, str],
                      report: ValidationReport) -> None:
    """One scan of ``unlabelledTr/`` or ``controlsTs/``: readable, finite, HU, not a labelled case's image."""
    key, rel = f"{key_dir}/{uid}", relative_name(root, image)
    folder = Path(rel).parts[0] if Path(rel).parts else key_dir
    what = "unlabelled scan" if key_dir == UNLABELLED_DIR else "control scan"
    fix_read = f"re-export or re-copy this file from the source, or remove it from {folder}."
    try:
        load_header(image)
        img = load_volume(image).array
    except InputError as exc:
        report.add(key, rel, "unreadable", f"the {what} {_why(exc)}.", fix_read)
        return
    digest = _voxel_digest(img)
    same = digests.get(digest)
    if key_dir == UNLABELLED_DIR and same is not None and not same.startswith("imagesTr"):
        same = None  # two identical unlabelled scans are harmless
    if same is not None:
        why = ("the case would be seen again, without its label, by the training of the folds that hold it out"
               if key_dir == UNLABELLED_DIR else
               "a patient with lung disease, or one the models saw, would be counted as a control")
        report.add(key, rel, f"{key_dir}_duplicate", f"{rel} has the same voxels as {same}: {why}.",
                   f"remove {rel} from {folder} (the copy {same} stays).")
    digests.setdefault(digest, rel)  # a control may not repeat an unlabelled scan either
    vals = img
    if np.issubdtype(img.dtype, np.floating):
        finite = np.isfinite(img)
        if not finite.all():
            report.add(key, rel, "non_finite", f"{int(finite.size - np.count_nonzero(finite))} voxel(s) are NaN or "
                       "infinite.", "re-export the scan; replace missing voxels by air (-1000 HU).")
            if not finite.any():
                return
            vals = img[finite]
    lo, hi = float(vals.min()), float(vals.max())
    if lo >= 0:
        report.add(key, rel, "not_hu",
                   f"intensities range {lo:g}..{hi:g}; in Hounsfield units air is about -1000, so this looks "
                   "like raw stored values without the rescale.",
                   "convert to Hounsfield units (HU = stored value x RescaleSlope + RescaleIntercept) and "
                   "re-export.")


def _read_header(case: str, rel: str, path: Path, what: str, report: ValidationReport):
    """The file's header, or None when it cannot be read (reported)."""
    try:
        return load_header(path)
    except InputError as exc:
        report.add(case, rel, "unreadable", f"the {what} {_why(exc)}.",
                   "re-export or re-copy this file from the source and check the copy is complete.")
        return None


def _label_roles(case: str, lab_file: str, label: Path, roles: dict[int, int], declared: set[int], aligned: bool,
                 report: ValidationReport) -> np.ndarray | None:
    """Check a label map's values; its voxels as study roles when they overlay the image, else None."""
    try:
        lab = load_volume(label).array
    except InputError as exc:
        report.add(case, lab_file, "unreadable", f"the label's voxels: {_why(exc)}.",
                   "re-export or re-copy this file from the source and check the copy is complete.")
        return None
    counts, why = label_counts(lab)
    if counts is None:
        report.add(case, lab_file, "label_values", f"the label map is not an integer map: {why}.",
                   "export the label map with integer values (nearest-neighbour, no interpolation).")
        return None
    extra = sorted(set(counts) - declared)
    if extra:
        report.add(case, lab_file, "label_values",
                   f"label value(s) {', '.join(f'{v} ({counts[v]} voxels)' for v in extra)} are not "
                   f"declared in dataset.json labels (declared: {sorted(declared)}).",
                   "add the value(s) to dataset.json \"labels\" (and give them a role with "
                   "--label-map), or fix the label file.")
    lung = sum(c for v, c in counts.items() if roles.get(v) in _LUNG_ROLES)
    if lung == 0:
        report.add(case, lab_file, "no_lung",
                   "the label map has no lung voxels (no normal, EF or GGO label).",
                   "check this is the right label file for the case, that lung is labelled "
                   "(normal 1, EF 2, GGO 3), and that dataset.json labels name the lung classes.")
    elif aligned and not extra and min(counts) >= 0:
        lut = np.zeros(max(counts) + 1, np.uint8)
        for v, r in roles.items():
            if 0 <= v < lut.size:
                lut[v] = r
        return lut[lab] if np.issubdtype(lab.dtype, np.integer) else lut[np.rint(lab).astype(np.intp)]
    return None


def _check_image(case: str, img_file: str, image: Path, roles_arr: np.ndarray | None, report: ValidationReport,
                 digests: dict[str, str] | None) -> None:
    """The image's voxels: readable, finite, Hounsfield units (aerated lung below -500 HU where labelled)."""
    try:
        img = load_volume(image).array
    except InputError as exc:
        report.add(case, img_file, "unreadable", f"the image's voxels: {_why(exc)}.",
                   "re-export or re-copy this file from the source and check the copy is complete.")
        return
    if digests is not None:
        digests[_voxel_digest(img)] = img_file
    finite = None
    if np.issubdtype(img.dtype, np.floating):
        finite = np.isfinite(img)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            report.add(case, img_file, "non_finite",
                       f"{n_bad} voxel(s) are NaN or infinite.",
                       "re-export the image; replace missing voxels by air (-1000 HU) or the scanner's padding "
                       "value if the gaps are outside the body.")
        if n_bad == finite.size:
            return
        if n_bad == 0:
            finite = None
    vals = img if finite is None else img[finite]
    lo, hi = float(vals.min()), float(vals.max())
    del vals
    fix_hu = ("convert to Hounsfield units: HU = stored value x RescaleSlope + RescaleIntercept (for most CT "
              "the intercept is -1024); re-export from DICOM with the rescale applied.")
    if lo >= 0:
        report.add(case, img_file, "not_hu",
                   f"intensities range {lo:g}..{hi:g}; in Hounsfield units air is about -1000, so this looks "
                   "like raw stored values without the rescale.", fix_hu)
        return
    if roles_arr is not None:
        lung = roles_arr == LABELS["normal"]
        if finite is not None:
            lung &= finite
        if lung.any():
            med = float(np.median(img[lung]))
            if med >= -500:
                report.add(case, img_file, "not_hu",
                           f"voxels labelled normal lung have median {med:g}; aerated lung is below -500 HU "
                           f"(image range {lo:g}..{hi:g}).",
                           fix_hu + " If the image is in HU, the label does not overlay it (flipped or "
                           "another case's label).")


def _check_case(root: Path, case: str, image: Path, label: Path | None, roles: dict[int, int],
                declared: set[int], report: ValidationReport, digests: dict[str, str] | None = None) -> None:
    img_file = relative_name(root, image)
    lab_file = relative_name(root, label) if label is not None else None
    ih = _read_header(case, img_file, image, "image", report)
    lh = _read_header(case, lab_file, label, "label", report) if label is not None else None
    aligned = ih is not None and lh is not None and _compare_geometry(case, img_file, lab_file, ih, lh, report)
    # Label voxels first (small), so the image check can use the lung mask.
    roles_arr = _label_roles(case, lab_file, label, roles, declared, aligned, report) if lh is not None else None
    if ih is not None:
        _check_image(case, img_file, image, roles_arr, report, digests)


def _check_duplicates(layout: CohortLayout, report: ValidationReport) -> None:
    by_lower: dict[str, set[str]] = defaultdict(set)
    for cid in set(layout.images) | set(layout.labels):
        by_lower[cid.lower()].add(cid)
    for ids in by_lower.values():
        if len(ids) > 1:
            for cid in sorted(ids):
                others = ", ".join(sorted(ids - {cid}))
                report.add(cid, None, "duplicate_case_id",
                           f"case ids {cid} and {others} differ only by letter case (they collide on "
                           "Windows/macOS file systems and are probably the same patient).",
                           "rename or remove one so every case id is unique regardless of case.")
    for cid, chans in layout.images.items():
        extra = sorted(ch for ch in chans if int(ch) >= layout.n_channels)
        if extra:
            files = ", ".join(f"imagesTr/{chans[ch].name}" for ch in sorted(chans))
            report.add(cid, f"imagesTr/{chans[extra[0]].name}", "duplicate_case_id",
                       f"case {cid} has image files {files}, but dataset.json declares "
                       f"{layout.n_channels} channel(s): two images for one case.",
                       f"keep one CT per case as {cid}_0000{layout.file_ending}; give a second scan of the "
                       "patient its own case id.")


def validate_cohort(root: str | os.PathLike, *, label_map: dict | None = None) -> ValidationReport:
    """Check a cohort folder and report every problem at once. Nothing is written.

    Args:
        root: the cohort folder.
        label_map: label name -> study role for ``dataset.json`` names that are not roles already
            (see :mod:`sscild.data.labels`).

    Returns:
        A :class:`~sscild.data.validation_report.ValidationReport` (``report.ok``,
        ``report.bad_cases``, ``print(report.format())``).

    Example::

        report = validate_cohort("data/siccs", label_map={"honeycombing": "ef"})
        report.ok, report.bad_cases  # (False, ['case_017'])
    """
    root = Path(root)
    report = ValidationReport(root=root)
    if label_map is None:
        label_map = label_map_from_env()
    dataset, roles, layout = check_structure(root, label_map, report)
    if layout is None:
        return report
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    labels = labels if isinstance(labels, dict) and labels else dict(LABELS)
    declared = set()
    for v in labels.values():
        try:
            declared.add(int(v))
        except (TypeError, ValueError):
            pass
    report.cases = sorted(set(layout.images) | set(layout.labels))
    if isinstance(dataset, dict) and "numTraining" in dataset:
        n = dataset["numTraining"]
        if not isinstance(n, int) or n != len(layout.images):
            report.add(None, "dataset.json", "num_training",
                       f"numTraining is {n!r} but imagesTr holds {len(layout.images)} case(s).",
                       f'set "numTraining": {len(layout.images)} (or add the missing cases).', "warning")
    _check_duplicates(layout, report)
    digests: dict[str, str] = {}
    for case in report.cases:
        chans = layout.images.get(case, {})
        label = layout.labels.get(case)
        image = chans.get("0000")
        if image is None:
            where = f"labelsTr/{label.name}" if label is not None else None
            report.add(case, where, "missing_image",
                       f"imagesTr has no {case}_0000{layout.file_ending}"
                       + (" (there is a label for this case)." if label is not None else "."),
                       f"add the CT as imagesTr/{case}_0000{layout.file_ending}, or remove the label if the "
                       "case is not part of the cohort.")
        for ch in range(1, layout.n_channels):
            if chans and f"{ch:04d}" not in chans:
                report.add(case, None, "missing_image",
                           f"imagesTr has no {case}_{ch:04d}{layout.file_ending} for channel {ch}.",
                           "add it, or declare only the channels every case has in dataset.json channel_names.")
        if label is None and image is not None:
            report.add(case, f"imagesTr/{image.name}", "missing_label",
                       f"labelsTr has no {case}{layout.file_ending} for this image.",
                       f"add the label map as labelsTr/{case}{layout.file_ending}, or exclude the case.")
        if image is not None:
            _check_case(root, case, image, label, roles, declared, report, digests)
    for uid, path in sorted(layout.unlabelled.items()):
        _check_image_only(root, UNLABELLED_DIR, uid, path, digests, report)
    for uid, path in sorted(layout.controls.items()):
        _check_image_only(root, CONTROLS_DIR, uid, path, digests, report)
    read_clinical(root, sorted(layout.images), report)
    return report
