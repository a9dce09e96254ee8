"""The cohort folder: discovery of its cases (no voxels read), and reading one case.

A cohort folder is the nnU-Net v2 raw layout plus a clinical table (see ``DESIGN.md``)::

    <cohort>/dataset.json                    labels, channel_names, file_ending, numTraining, synthetic
    <cohort>/imagesTr/<case>_0000<ending>    CT in Hounsfield units
    <cohort>/labelsTr/<case><ending>         integer labels
    <cohort>/clinical.csv                    case_id, age, sex, ..., fvc_pct, fev1_pct, fev1_fvc, dlco_pct
    <cohort>/unlabelledTr/<id>_0000<ending>  optional: CT in HU without labels, for semi-supervised
                                             training only (never scored, never in the clinical table)
    <cohort>/controlsTs/<id>_0000<ending>    optional: CT in HU of patients without lung disease, never
                                             trained on; every lesion the models call there is false

The label names of ``dataset.json`` are given study roles by :mod:`sscild.data.labels`; the clinical
table is read by :mod:`sscild.data.clinical_table`. :func:`load_cohort` refuses only a folder that
cannot be used at all; :func:`sscild.data.validate.validate_cohort` checks every case and reports every
problem at once. The usual sequence::

    report = validate_cohort("data/synthetic")
    print(report.format())
    cohort = load_cohort("data/synthetic", exclude=report.bad_cases)
    ct, roles = read_case(cohort, cohort.cases[0].case_id)
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.data.clinical_table import read_clinical
from sscild.data.image import NIFTI_SUFFIXES, SITK_SUFFIXES, Volume, load_volume
from sscild.data.labels import label_counts, label_map_from_env, resolve_label_map
from sscild.data.names import normalise_name
from sscild.data.validation_report import CONTROLS_DIR, UNLABELLED_DIR, Problem, ValidationReport
from sscild.errors import CohortError

__all__ = [
    "CaseFiles",
    "Cohort",
    "CohortLayout",
    "load_cohort",
    "read_case",
    "check_structure",
    "relative_name",
    "UNLABELLED_FOLDER",
    "CONTROLS_FOLDER",
]

UNLABELLED_FOLDER = "unlabelledTr"
"""Folder of CT scans without labels (semi-supervised training only)."""
CONTROLS_FOLDER = "controlsTs"
"""Folder of CT scans of patients without lung disease (scored for false lesions, never trained on)."""


@dataclass
class CaseFiles:
    """The files of one case: its CT image and (if present) its label map."""

    case_id: str
    image: Path
    label: Path | None = None


@dataclass
class Cohort:
    """A cohort folder, discovered.

    Attributes:
        root: the folder.
        name: ``dataset.json`` ``name`` (or the folder name).
        dataset: the parsed ``dataset.json``.
        cases: one :class:`CaseFiles` per case with an image, sorted by case id.
        clinical: the clinical table indexed by ``case_id`` (one row per case, in ``cases`` order);
            numeric columns are numbers, and values validation flags (non-numeric, implausible,
            duplicated rows) are missing (NaN), so they never enter an analysis.
        synthetic: ``dataset.json`` ``synthetic``.
        label_map: label-file value -> study role value (0..3).
        unlabelled: id -> CT file of each scan in ``unlabelledTr/`` (empty when there is none);
            for semi-supervised training only.
        controls: id -> CT file of each scan in ``controlsTs/``: patients without lung disease, never
            trained on, scored with the fold ensemble for false lesions (empty when there is none).
    """

    root: Path
    name: str
    dataset: dict
    cases: list[CaseFiles]
    clinical: pd.DataFrame
    synthetic: bool
    label_map: dict[int, int]
    unlabelled: dict[str, Path] = field(default_factory=dict)
    controls: dict[str, Path] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> CaseFiles:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise CohortError(f"{self.root}: no case {case_id!r} in this cohort (cases: "
                          f"{', '.join(self.case_ids[:5])}{', ...' if len(self.cases) > 5 else ''}). "
                          "Fix: use one of the cohort's case ids (or check it was not excluded).")


# --------------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------------


def _read_dataset(root: Path, report: ValidationReport) -> dict | None:
    path = root / "dataset.json"
    if not path.is_file():
        report.add(None, "dataset.json", "missing_dataset_json", "the cohort folder has no dataset.json.",
                   'write dataset.json with "labels" {"background": 0, "normal": 1, "ef": 2, "ggo": 3}, '
                   '"channel_names" {"0": "CT"}, "file_ending" ".nii.gz", "numTraining" and "synthetic" '
                   "(see DESIGN.md, cohort folder).")
        return None
    try:
        dataset = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add(None, "dataset.json", "malformed_dataset_json", f"dataset.json is not valid JSON ({exc}).",
                   "fix the syntax (a JSON checker shows the line), e.g. a missing comma or quote.")
        return None
    if not isinstance(dataset, dict):
        report.add(None, "dataset.json", "malformed_dataset_json",
                   f"dataset.json holds a {type(dataset).__name__}, not an object.",
                   "make dataset.json one JSON object with labels, channel_names, file_ending, numTraining.")
        return None
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        report.add(None, "dataset.json", "dataset_json_field", 'dataset.json has no "labels" object.',
                   'add "labels": {"background": 0, "normal": 1, "ef": 2, "ggo": 3} (names -> values).')
    ending = dataset.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        report.add(None, "dataset.json", "dataset_json_field",
                   f'dataset.json "file_ending" is {ending!r}, not a file suffix such as ".nii.gz".',
                   'set "file_ending" to the suffix of the image files, e.g. ".nii.gz".')
    channels = dataset.get("channel_names")
    if not isinstance(channels, dict) or not channels:
        report.add(None, "dataset.json", "dataset_json_field", 'dataset.json has no "channel_names".',
                   'add "channel_names": {"0": "CT"}.', "warning")
    elif normalise_name(channels.get("0", channels.get(0, ""))) != "ct":
        report.add(None, "dataset.json", "channel",
                   f"channel 0 is {channels.get('0', channels.get(0))!r}, not CT; it is read as CT in HU.",
                   'check the images are CT and set "channel_names": {"0": "CT"}.', "warning")
    if "synthetic" in dataset and not isinstance(dataset["synthetic"], bool):
        report.add(None, "dataset.json", "dataset_json_field",
                   f'"synthetic" is {dataset["synthetic"]!r}, not true/false.',
                   'set "synthetic": false for real scans (true only for generated data).', "warning")
    return dataset


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass
class CohortLayout:
    """The files of a cohort folder, by case, as named (nothing is read)."""

    file_ending: str
    n_channels: int
    images: dict[str, dict[str, Path]]  # case -> channel ("0000") -> file
    labels: dict[str, Path]
    unlabelled: dict[str, Path] = field(default_factory=dict)  # id -> unlabelledTr/<id>_0000<ending>
    unlabelled_present: bool = False
    controls: dict[str, Path] = field(default_factory=dict)  # id -> controlsTs/<id>_0000<ending>


def _guess_ending(folder: Path) -> str:
    counts = Counter()
    if folder.is_dir():
        for f in folder.iterdir():
            name = f.name.lower()
            for ext in NIFTI_SUFFIXES + SITK_SUFFIXES:
                if name.endswith(ext):
                    counts[ext] += 1
                    break
    return counts.most_common(1)[0][0] if counts else ".nii.gz"


def _visible_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if not f.name.startswith(".")) if folder.is_dir() else []


def _discover(root: Path, dataset: dict | None, report: ValidationReport | None) -> CohortLayout:
    ending = (dataset or {}).get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        ending = _guess_ending(root / "imagesTr")
    channels = (dataset or {}).get("channel_names")
    n_channels = len(channels) if isinstance(channels, dict) and channels else 1
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")

    def note(*args, **kw):
        if report is not None:
            report.add(*args, **kw)

    images: dict[str, dict[str, Path]] = defaultdict(dict)
    for f in _visible_files(root / "imagesTr"):
        m = pattern.match(f.name)
        if f.is_dir() or not m:
            note(None, f"imagesTr/{f.name}", "bad_filename",
                 f"imagesTr/{f.name} does not follow <case>_0000{ending}; it is ignored.",
                 f"rename it to <case>_0000{ending} (channel 0000 = CT) or move it out of imagesTr.",
                 severity="warning")
            continue
        images[m["case"]][m["ch"]] = f
    labels: dict[str, Path] = {}
    for f in _visible_files(root / "labelsTr"):
        if f.is_dir() or not f.name.endswith(ending) or len(f.name) == len(ending):
            note(None, f"labelsTr/{f.name}", "bad_filename",
                 f"labelsTr/{f.name} does not follow <case>{ending}; it is ignored.",
                 f"rename it to <case>{ending} (the image's case id, without _0000) or move it out of labelsTr.",
                 severity="warning")
            continue
        labels[f.name[: -len(ending)]] = f
    unlabelled = _image_only_folder(root, UNLABELLED_FOLDER, UNLABELLED_DIR, pattern, ending, note)
    controls = _image_only_folder(root, CONTROLS_FOLDER, CONTROLS_DIR, pattern, ending, note)
    return CohortLayout(ending, n_channels, dict(images), labels, unlabelled, (root / UNLABELLED_FOLDER).is_dir(),
                        controls)


def _image_only_folder(root: Path, folder: str, key: str, pattern, ending: str, note) -> dict[str, Path]:
    """The scans of a folder that holds CT images only (``unlabelledTr/``, ``controlsTs/``): id -> file.

    A subfolder or a file named like a label is an error (a label would be lost there); a file that
    does not follow ``<id>_0000<ending>`` is ignored with a warning; an existing but empty folder is
    an error.
    """
    what = {UNLABELLED_DIR: "unlabelled", CONTROLS_DIR: "control"}[key]
    where = {UNLABELLED_DIR: "imagesTr/labelsTr", CONTROLS_DIR: "imagesTr/labelsTr (as a labelled case)"}[key]
    found: dict[str, Path] = {}
    for f in _visible_files(root / folder):
        m = pattern.match(f.name)
        if f.is_dir():
            note(key, f"{folder}/{f.name}", f"{key}_label_file",
                 f"{folder}/{f.name} is a folder; {folder} holds only CT files, no labels or subfolders.",
                 f"move labelled scans (image and label) into {where}, and other files out of {folder}.")
        elif m and m["ch"] == "0000":
            found[m["case"]] = f
        elif f.name.endswith(ending) and not m:
            note(f"{key}/{f.name[: -len(ending)]}", f"{folder}/{f.name}", f"{key}_label_file",
                 f"{folder}/{f.name} is named like a label file (<case>{ending}, no _0000 channel suffix).",
                 f"if it is a label, the scan is labelled: put the image and this file in {where}; "
                 f"if it is a CT, rename it to {f.name[: -len(ending)]}_0000{ending}.")
        else:
            note(key, f"{folder}/{f.name}", "bad_filename",
                 f"{folder}/{f.name} does not follow <id>_0000{ending}; it is ignored.",
                 f"rename it to <id>_0000{ending} or move it out of {folder}.", severity="warning")
    if (root / folder).is_dir() and not found:
        note(key, folder, f"{key}_empty", f"{root / folder} exists but holds no {what} scan (<id>_0000{ending}).",
             f"put {what} CT there as <id>_0000{ending}, or remove the empty folder.")
    return found


def check_structure(root: Path, label_map, report: ValidationReport):
    """Folder-level checks shared by validation and loading. Returns (dataset, roles, layout)."""
    if not root.is_dir():
        report.add(None, None, "missing_folder", f"{root} is not a folder.",
                   "check the path to the cohort folder (it holds dataset.json, imagesTr, labelsTr).")
        return None, {}, None
    dataset = _read_dataset(root, report)
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    labels = labels if isinstance(labels, dict) and labels else dict(LABELS)
    roles, problems = resolve_label_map(labels, label_map)
    report.problems.extend(problems)
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            report.add(None, sub, "missing_folder", f"the cohort folder has no {sub}/ folder.",
                       f"put the {'CT images (<case>_0000.nii.gz)' if sub == 'imagesTr' else 'label maps (<case>.nii.gz)'}"
                       f" in {root / sub}.")
    layout = _discover(root, dataset, report)
    return dataset, roles, layout


def relative_name(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` as text (for messages), or the whole path when it lies elsewhere."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_cohort(root: str | os.PathLike, *, label_map: dict | None = None, exclude=()) -> Cohort:
    """Discover a cohort folder (cheap: no voxels are read).

    Args:
        root: the cohort folder.
        label_map: label name -> study role for names that are not roles already.
        exclude: case ids to leave out (e.g. ``validate_cohort(root).bad_cases``).

    Returns:
        A :class:`Cohort` whose ``cases`` are the cases with an image (``label`` is ``None`` when a
        case has no label file), sorted by case id.

    Raises:
        CohortError: the folder cannot be used at all (no folder, no/malformed dataset.json, label
            names without a role, no imagesTr, no cases, or ``exclude`` names unknown cases). The
            message lists every such problem; run ``sscild validate`` for a full report.

    Example::

        cohort = load_cohort("data/synthetic")
        len(cohort.cases), cohort.synthetic  # (40, True)
    """
    root = Path(root)
    report = ValidationReport(root=root)
    if label_map is None:
        label_map = label_map_from_env()
    dataset, roles, layout = check_structure(root, label_map, report)
    fatal = [p for p in report.folder_errors if not (p.kind == "missing_folder" and p.file == "labelsTr")]
    if layout is not None and not layout.images and not fatal:
        fatal.append(Problem(None, "imagesTr", "missing_image", f"{root / 'imagesTr'} holds no images.",
                             "put the CT images there as <case>_0000.nii.gz."))
    known = set(layout.images) | set(layout.labels) if layout is not None else set()
    unknown = sorted(set(exclude) - known)
    if unknown and layout is not None:
        fatal.append(Problem(None, None, "exclude", f"exclude names unknown case(s): {', '.join(unknown)}.",
                             "use case ids of this cohort (as in imagesTr)."))
    if fatal:
        raise CohortError(
            f"{root}: cannot be used as a cohort folder:\n"
            + "\n".join(f"- {p.file or root.name}: {p.message} Fix: {p.fix}" for p in fatal)
            + f"\nRun `sscild validate {root}` for a full report."
        )
    excluded = set(exclude)
    cases = [CaseFiles(cid, chans["0000"], layout.labels.get(cid))
             for cid, chans in sorted(layout.images.items()) if "0000" in chans and cid not in excluded]
    clinical = read_clinical(root, [c.case_id for c in cases], ValidationReport(root=root))
    return Cohort(root=root, name=str(dataset.get("name") or root.name), dataset=dataset, cases=cases,
                  clinical=clinical, synthetic=bool(dataset.get("synthetic", False) is True), label_map=roles,
                  unlabelled=dict(sorted(layout.unlabelled.items())), controls=dict(sorted(layout.controls.items())))


def read_case(cohort: Cohort, case_id: str) -> tuple[Volume, np.ndarray | None]:
    """Load one case: the CT (HU, file's own dtype) and its label map in study roles 0..3 (uint8).

    Args:
        cohort: from :func:`load_cohort`.
        case_id: a case of the cohort.

    Returns:
        ``(image, roles)``; ``roles`` is ``None`` when the case has no label file.

    Raises:
        CohortError: unknown case, label on another grid, or label values without a role.
        InputError: a file cannot be read.

    Example::

        ct, roles = read_case(cohort, "case_000")
        ct.spacing, roles.max()  # ((1.4, 1.4, 6.0), 3)
    """
    files = cohort.case(case_id)
    image = load_volume(files.image)
    if files.label is None:
        return image, None
    lab = load_volume(files.label).array
    rel = relative_name(cohort.root, files.label)
    if lab.shape != image.shape:
        raise CohortError(f"case {case_id}: {rel} has shape {lab.shape}, the image {image.shape}. "
                          "Fix: export the label on the image's grid (run `sscild validate` for all problems).")
    counts, why = label_counts(lab)
    if counts is None:
        raise CohortError(f"case {case_id}: {rel}: {why}. Fix: export integer labels.")
    unmapped = sorted(set(counts) - set(cohort.label_map))
    if unmapped:
        raise CohortError(f"case {case_id}: {rel} holds label value(s) {unmapped} that dataset.json does not "
                          "declare or that have no role. Fix: declare them in dataset.json labels and map them "
                          "with label_map / --label-map.")
    lut = np.zeros(max(max(counts, default=0), max(cohort.label_map, default=0)) + 1, np.uint8)
    for v, r in cohort.label_map.items():
        if v >= 0:
            lut[v] = r
    idx = lab if np.issubdtype(lab.dtype, np.integer) else np.rint(lab).astype(np.intp)
    return image, lut[idx]
