"""The cohort folder: discovery, validation (every problem at once) and the clinical table.

A cohort folder is the nnU-Net v2 raw layout plus a clinical table (see ``DESIGN.md``)::

    <cohort>/dataset.json                    labels, channel_names, file_ending, numTraining, synthetic
    <cohort>/imagesTr/<case>_0000<ending>    CT in Hounsfield units
    <cohort>/labelsTr/<case><ending>         integer labels
    <cohort>/clinical.csv                    case_id, age, sex, ..., fvc_pct, fev1_pct, fev1_fvc, dlco_pct
    <cohort>/unlabelledTr/<id>_0000<ending>  optional: CT in HU without labels, for semi-supervised
                                             training only (never scored, never in the clinical table)

**Label roles.** The study uses four roles: background 0, normal lung 1, established fibrosis (EF) 2
and ground-glass opacity (GGO) 3 (``sscild.LABELS``). ``dataset.json`` ``"labels"`` maps *names* to
the integer values in the label files; names are matched to roles automatically when they are a role
or an obvious synonym (``lung``/``normal_lung`` -> normal, ``fibrosis``/``established_fibrosis`` ->
ef, ``ground_glass``/``ground-glass`` -> ggo). Any other scheme is mapped with ``label_map`` (the
command line's ``--label-map``), e.g. for a dataset that labels EF's components separately::

    {"reticulation": "ef", "honeycombing": "ef", "traction_bronchiectasis": "ef", "consolidation": "ggo"}

A name with no role is an error whose message says how to map it.

**Validation** (:func:`validate_cohort`) reads each case's headers first, then its voxels, one case at
a time (a 512x512x600 int16 case needs well under 1 GiB), never writes anything, and collects every
problem before returning a :class:`ValidationReport`. Each :class:`Problem` names the case, the file,
the problem and the fix, and has a severity: ``"error"`` (the case cannot be used; a folder-level
error such as a missing ``dataset.json`` makes every case unusable) or ``"warning"`` (reported; the
case is still used, e.g. one missing lung-function value). :data:`PROBLEM_KINDS` lists every kind.

**Unlabelled scans** (``unlabelledTr/``) are checked like the labelled images (readable, finite,
Hounsfield units), and besides: the folder must hold at least one scan when it exists, it must not
hold label files (``<id><ending>`` without the channel suffix, or subfolders such as ``labelsTr``),
and no unlabelled scan may have the same voxels as a labelled case's image (that case would be seen
again, unlabelled, by the training of the folds that hold it out). Their problems are reported under
``unlabelled/<id>`` and never make a labelled case unusable; any of them makes ``report.ok`` false.

Example:
    >>> from sscild.data.cohort import validate_cohort, load_cohort, read_case
    >>> report = validate_cohort("data/synthetic")  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
    >>> cohort = load_cohort("data/synthetic", exclude=report.bad_cases)  # doctest: +SKIP
    >>> ct, roles = read_case(cohort, cohort.cases[0].case_id)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sscild import LABELS
from sscild.errors import CohortError, InputError
from sscild.data.io import NIFTI_SUFFIXES, SITK_SUFFIXES, Volume, load_header, load_volume

__all__ = [
    "CaseFiles",
    "Cohort",
    "Problem",
    "ValidationReport",
    "CLINICAL_COLUMNS",
    "PROBLEM_KINDS",
    "ROLE_SYNONYMS",
    "load_cohort",
    "read_case",
    "validate_cohort",
    "resolve_label_map",
    "label_map_from_env",
    "LABEL_MAP_ENV",
    "UNLABELLED_DIR",
]

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

CLINICAL_COLUMNS: dict[str, tuple[str, tuple, str]] = {
    "age": ("years", (5, 110), "age at the CT scan"),
    "sex": ("F/M", ("F", "M"), "sex (F or M)"),
    "height_cm": ("cm", (50, 250), "body height"),
    "weight_kg": ("kg", (20, 300), "body weight"),
    "fvc_pct": ("% predicted", (10, 200), "forced vital capacity"),
    "fev1_pct": ("% predicted", (10, 200), "forced expiratory volume in 1 s"),
    "fev1_fvc": ("ratio", (0.2, 1.2), "FEV1/FVC as a ratio (0.75, not 75 %)"),
    "dlco_pct": ("% predicted", (10, 200), "diffusing capacity for carbon monoxide"),
    "tlc_pct": ("% predicted", (10, 200), "total lung capacity"),
}
"""Known clinical columns: name -> (unit, plausible range or allowed values, description).

Only ``case_id`` is required in ``clinical.csv``; these columns are optional but validated when
present. Other columns are kept (numeric when their values are numbers); any column whose name says
it is a volume (``*volume*``, ``*_ml``, ``*_cm3``, ``*_l``) must not be negative.
"""

ROLE_SYNONYMS: dict[str, str] = {
    "background": "background", "bg": "background",
    "normal": "normal", "lung": "normal", "normal_lung": "normal", "healthy_lung": "normal",
    "ef": "ef", "fibrosis": "ef", "established_fibrosis": "ef",
    "ggo": "ggo", "ground_glass": "ggo", "groundglass": "ggo", "ground_glass_opacity": "ggo",
}
"""Label names (lower case, ``-``/spaces as ``_``) that map to a study role without a ``label_map``."""

PROBLEM_KINDS: dict[str, str] = {
    # folder level
    "missing_folder": "the cohort folder, imagesTr or labelsTr does not exist (error)",
    "missing_dataset_json": "no dataset.json (error: every case unusable)",
    "malformed_dataset_json": "dataset.json is not valid JSON or not an object (error)",
    "dataset_json_field": "a dataset.json field is missing or has the wrong type",
    "label_role": "a dataset.json label name has no study role, or roles clash (error)",
    "label_map_unused": "a --label-map name matches no dataset.json label (warning)",
    "num_training": "dataset.json numTraining differs from the number of cases (warning)",
    "bad_filename": "a file in imagesTr/labelsTr does not follow the naming scheme (warning)",
    "channel": "dataset.json channel 0 is not CT (warning)",
    # per case
    "missing_image": "a label without its image (error)",
    "missing_label": "an image without its label (error)",
    "duplicate_case_id": "case ids differing only by letter case, or an undeclared second channel (error)",
    "unreadable": "unreadable, truncated or corrupt file (error)",
    "shape_mismatch": "image and label shapes differ (error)",
    "spacing_mismatch": "image and label voxel spacings differ (error)",
    "affine_mismatch": "image and label orientation or origin differ (error)",
    "non_finite": "NaN or infinite intensities (error)",
    "not_hu": "intensities are not Hounsfield units (error)",
    "label_values": "label values not declared in dataset.json, or not integers (error)",
    "no_lung": "the label map has no lung voxels (error)",
    # clinical table
    "clinical_missing": "no clinical.csv (warning)",
    "clinical_unreadable": "clinical.csv cannot be read or has no case_id column (warning)",
    "clinical_missing_row": "a case has no clinical row (warning)",
    "clinical_without_image": "a clinical row whose case has no image (warning)",
    "clinical_duplicate_row": "several clinical rows for one case (warning; none is used)",
    "clinical_missing_value": "a known clinical value is blank (warning)",
    "clinical_non_numeric": "a clinical value that should be a number is not (warning; set to missing)",
    "clinical_implausible": "a clinical value outside its plausible range (warning; set to missing)",
    # unlabelled scans (unlabelledTr/, optional)
    "unlabelled_empty": "unlabelledTr/ exists but holds no scan (error)",
    "unlabelled_label_file": "a label file or a subfolder inside unlabelledTr/ (error)",
    "unlabelled_duplicate": "an unlabelled scan has the same voxels as a labelled case's image (error)",
}
"""Every problem kind :func:`validate_cohort` reports, with its usual severity."""

UNLABELLED_DIR = "unlabelled"
"""Report key of unlabelled-scan problems (``unlabelled/<id>``, or ``unlabelled`` for the folder)."""

_ROLE_VALUE = dict(LABELS)
_LUNG_ROLES = (LABELS["normal"], LABELS["ef"], LABELS["ggo"])
_MISSING = {"", "na", "n/a", "nan", "none", "null", "-", "?"}
_SEX = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}
_PFT_PCT = re.compile(r"^(fvc|fev1|dlco|tlc|kco|vc|rv|frc)_?(pct|pct_pred|pred|pctpred|percent)$")
_VOLUME = re.compile(r"(volume|_ml$|_cm3$|_l$|_cc$)")
_SPACING_RTOL = 1e-3
_DIRECTION_ATOL = 1e-3
_ORIGIN_ATOL_MM = 1e-2


def _norm(name) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One problem found in a cohort folder.

    Attributes:
        case_id: the case, or ``None`` for a folder-level problem.
        file: the file, relative to the cohort folder (``None`` when no single file is at fault).
        kind: a short slug from :data:`PROBLEM_KINDS`.
        message: what is wrong.
        fix: what to do about it.
        severity: ``"error"`` (the case, or with ``case_id=None`` every case, is unusable) or
            ``"warning"`` (reported; the case stays usable).
    """

    case_id: str | None
    file: str | None
    kind: str
    message: str
    fix: str
    severity: str = "error"

    def __post_init__(self):
        if self.severity not in ("error", "warning"):
            raise ValueError(f"severity must be 'error' or 'warning', got {self.severity!r}")

    def __str__(self) -> str:
        where = " | ".join(x for x in (self.case_id or "cohort", self.file) if x)
        return f"[{self.severity}] {where} | {self.kind}: {self.message} Fix: {self.fix}"


@dataclass
class ValidationReport:
    """Everything :func:`validate_cohort` found.

    Attributes:
        root: the cohort folder.
        cases: every case id found (from images or labels), sorted.
        problems: every problem, in the order found.
    """

    root: Path
    cases: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, case_id, file, kind, message, fix, severity="error") -> None:
        self.problems.append(Problem(case_id, file, kind, message, fix, severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def folder_errors(self) -> list[Problem]:
        return [p for p in self.errors if p.case_id is None]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    @property
    def bad_cases(self) -> list[str]:
        """Sorted ids of unusable cases (all of them when there is a folder-level error)."""
        if self.folder_errors:
            return sorted(self.cases)
        known = set(self.cases)
        return sorted({p.case_id for p in self.errors if p.case_id in known})

    @property
    def usable_cases(self) -> list[str]:
        bad = set(self.bad_cases)
        return [c for c in sorted(self.cases) if c not in bad]

    def format(self) -> str:
        """A human report: a summary line, then every problem grouped by case, each with its fix."""
        n, bad = len(self.cases), self.bad_cases
        head = (f"Cohort {self.root}: {n} case(s), {len(self.usable_cases)} usable, {len(bad)} unusable; "
                f"{len(self.errors)} error(s), {len(self.warnings)} warning(s).")
        if not self.problems:
            return head + "\nNo problems found."
        lines = [head]
        if bad:
            lines.append("Unusable cases: " + ", ".join(bad))
        groups: dict[str | None, list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[p.case_id].append(p)
        order = ([None] if None in groups else []) + sorted(k for k in groups if k is not None)
        bad_set = set(bad)
        for key in order:
            if key is None:
                title = "Cohort folder (affects every case)" if self.folder_errors else "Cohort folder"
            elif key == UNLABELLED_DIR or key.startswith(UNLABELLED_DIR + "/"):
                title = ("Unlabelled scans" if key == UNLABELLED_DIR else f"Unlabelled scan {key.split('/', 1)[1]}") \
                    + " (training only; no labelled case affected)"
            else:
                status = "unusable" if key in bad_set else ("usable" if key in self.cases else "no image")
                title = f"Case {key} ({status})"
            lines.append("")
            lines.append(title + ":")
            for p in sorted(groups[key], key=lambda q: (q.severity != "error", q.file or "")):
                lines.append(f"  {p.severity.upper():7s} {p.kind} in {p.file or '(no single file)'}")
                lines.append(f"          problem: {p.message}")
                lines.append(f"          fix: {p.fix}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: severity, case_id, file, kind, message, fix."""
        cols = ["severity", "case_id", "file", "kind", "message", "fix"]
        return pd.DataFrame([{c: getattr(p, c) for c in cols} for p in self.problems], columns=cols)

    def to_dict(self) -> dict:
        """A JSON-able summary (what ``validation.json`` holds)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "n_cases": len(self.cases),
            "cases": list(self.cases),
            "bad_cases": self.bad_cases,
            "usable_cases": self.usable_cases,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "problems": [asdict(p) for p in self.problems],
        }


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
    """

    root: Path
    name: str
    dataset: dict
    cases: list[CaseFiles]
    clinical: pd.DataFrame
    synthetic: bool
    label_map: dict[int, int]
    unlabelled: dict[str, Path] = field(default_factory=dict)

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
# dataset.json and label roles
# --------------------------------------------------------------------------------------------


def _role_of(name) -> str | None:
    return ROLE_SYNONYMS.get(_norm(name))


LABEL_MAP_ENV = "SSCILD_LABEL_MAP"
"""Environment variable holding a label map (JSON text or a JSON file); make sets it from ``LABEL_MAP=``."""


def label_map_from_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """The label map given in the environment variable ``SSCILD_LABEL_MAP`` (JSON text, or the path of a JSON file), or None.

    Raises:
        ValueError: the value is neither valid JSON nor a readable JSON file, or not an object.

    Example:
        >>> label_map_from_env({"SSCILD_LABEL_MAP": '{"honeycombing": "ef"}'})
        {'honeycombing': 'ef'}
    """
    env = os.environ if environ is None else environ
    raw = (env.get(LABEL_MAP_ENV) or "").strip()
    if not raw:
        return None
    source = f"environment variable {LABEL_MAP_ENV}"
    if not raw.startswith("{"):
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ValueError(f"{source} is {raw!r}: neither a JSON object nor an existing file. Fix: set it to "
                             'JSON such as {"honeycombing": "ef"} or to the path of a file holding it.')
        source, raw = str(path), path.read_text()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc}). Fix: write the label map as a JSON object, "
                         'e.g. {"honeycombing": "ef", "consolidation": "ggo"}.') from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: the label map must be a JSON object (name -> role), got "
                         f"{type(value).__name__}.")
    return value


def resolve_label_map(labels: dict, label_map: dict | None = None) -> tuple[dict[int, int], list[Problem]]:
    """Map a ``dataset.json`` ``labels`` dictionary to the study's roles.

    Args:
        labels: name -> integer value, as in ``dataset.json``.
        label_map: optional name -> role (``"background"``, ``"normal"``, ``"ef"``, ``"ggo"`` or a
            synonym, or the role's value 0..3) for names that are not roles already.

    Returns:
        ``(value -> role value, problems)``; problems are folder-level (``case_id=None``).

    Example:
        >>> resolve_label_map({"background": 0, "lung": 1, "honeycombing": 2},
        ...                   {"honeycombing": "ef"})[0]
        {0: 0, 1: 1, 2: 2}
    """
    problems: list[Problem] = []
    label_map = dict(label_map or {})

    def bad(message, fix, severity="error"):
        problems.append(Problem(None, "dataset.json", "label_role", message, fix, severity))

    overrides: dict[str, int] = {}
    for key, role in label_map.items():
        if isinstance(role, (int, np.integer)) and not isinstance(role, bool) and int(role) in _ROLE_VALUE.values():
            overrides[_norm(key)] = int(role)
        elif isinstance(role, str) and _role_of(role) is not None:
            overrides[_norm(key)] = _ROLE_VALUE[_role_of(role)]
        else:
            bad(f"--label-map gives {key!r} the role {role!r}, which is not a study role.",
                "map each name to one of: background, normal, ef, ggo (e.g. "
                '{"honeycombing": "ef", "consolidation": "ggo"}).')
    names = {_norm(n) for n in labels}
    for key in overrides:
        if key not in names:
            problems.append(Problem(None, "dataset.json", "label_map_unused",
                                    f"--label-map names {key!r}, but dataset.json has no such label "
                                    f"(labels: {', '.join(map(str, labels))}).",
                                    "check the spelling against dataset.json \"labels\".", "warning"))
    mapping: dict[int, int] = {}
    unmapped = []
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            else:
                bad(f"label {name!r} has value {value!r}; this package needs one integer per label "
                    "(region-based labels are not supported).",
                    "give each label name a single integer value in dataset.json \"labels\".")
                continue
        value = int(value)
        if value < 0:
            bad(f"label {name!r} has the negative value {value}.",
                "use non-negative integers for label values (0 background).")
            continue
        role = overrides.get(_norm(name))
        if role is None and _role_of(name) is not None:
            role = _ROLE_VALUE[_role_of(name)]
        if role is None:
            unmapped.append(name)
            continue
        if value in mapping and mapping[value] != role:
            bad(f"label value {value} is given two different roles (via {name!r}).",
                "give each label value one name in dataset.json, or map both names to the same role.")
            continue
        mapping[value] = role
    if unmapped:
        example = json.dumps({n: "ef" for n in unmapped[:2]})
        bad(f"label name(s) {', '.join(map(repr, unmapped))} have no study role (the roles are "
            "background, normal, ef, ggo).",
            f"map them with --label-map (CLI) or label_map= (Python), e.g. --label-map '{example}'; "
            "each name goes to background, normal, ef or ggo.")
    if labels and _ROLE_VALUE["background"] not in mapping.values():
        bad("no label has the background role.",
            'name the background label "background" (value 0) in dataset.json, or map it with --label-map.')
    return mapping, problems


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
    elif _norm(channels.get("0", channels.get(0, ""))) != "ct":
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
class _Layout:
    file_ending: str
    n_channels: int
    images: dict[str, dict[str, Path]]  # case -> channel ("0000") -> file
    labels: dict[str, Path]
    unlabelled: dict[str, Path] = field(default_factory=dict)  # id -> unlabelledTr/<id>_0000<ending>
    unlabelled_present: bool = False


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


def _discover(root: Path, dataset: dict | None, report: ValidationReport | None) -> _Layout:
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
    unl_dir = root / "unlabelledTr"
    unlabelled: dict[str, Path] = {}
    for f in _visible_files(unl_dir):
        m = pattern.match(f.name)
        if f.is_dir():
            note(UNLABELLED_DIR, f"unlabelledTr/{f.name}", "unlabelled_label_file",
                 f"unlabelledTr/{f.name} is a folder; unlabelledTr holds only CT files, no labels or subfolders.",
                 "move labelled scans (image and label) into imagesTr/labelsTr, and other files out of "
                 "unlabelledTr.")
        elif m and m["ch"] == "0000":
            unlabelled[m["case"]] = f
        elif f.name.endswith(ending) and not m:
            note(f"{UNLABELLED_DIR}/{f.name[: -len(ending)]}", f"unlabelledTr/{f.name}", "unlabelled_label_file",
                 f"unlabelledTr/{f.name} is named like a label file (<case>{ending}, no _0000 channel suffix).",
                 f"if it is a label, the scan is labelled: put the image in imagesTr and this file in labelsTr; "
                 f"if it is a CT, rename it to {f.name[: -len(ending)]}_0000{ending}.")
        else:
            note(UNLABELLED_DIR, f"unlabelledTr/{f.name}", "bad_filename",
                 f"unlabelledTr/{f.name} does not follow <id>_0000{ending}; it is ignored.",
                 f"rename it to <id>_0000{ending} or move it out of unlabelledTr.", severity="warning")
    if unl_dir.is_dir() and not unlabelled:
        note(UNLABELLED_DIR, "unlabelledTr", "unlabelled_empty",
             f"{unl_dir} exists but holds no unlabelled scan (<id>_0000{ending}).",
             "put unlabelled CT there as <id>_0000" + ending + ", or remove the empty folder.")
    return _Layout(ending, n_channels, dict(images), labels, unlabelled, unl_dir.is_dir())


def _check_structure(root: Path, label_map, report: ValidationReport):
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


# --------------------------------------------------------------------------------------------
# Clinical table
# --------------------------------------------------------------------------------------------


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in _MISSING


def _to_float(v) -> float | None:
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x


def _read_clinical(root: Path, case_ids: list[str], report: ValidationReport) -> pd.DataFrame:
    """Read and check clinical.csv; return it indexed by case_id over ``case_ids`` (flagged values NaN)."""
    path = root / "clinical.csv"
    empty = pd.DataFrame(index=pd.Index(case_ids, name="case_id"))
    if not path.is_file():
        report.add(None, "clinical.csv", "clinical_missing",
                   "the cohort has no clinical.csv; the lung-function analysis cannot run.",
                   "add clinical.csv with a case_id column (and age, sex, fvc_pct, fev1_pct, fev1_fvc, "
                   "dlco_pct where known).", "warning")
        return empty
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        report.add(None, "clinical.csv", "clinical_unreadable",
                   f"clinical.csv cannot be read as CSV ({type(exc).__name__}: {exc}).",
                   "save it as comma-separated text with one header row.", "warning")
        return empty
    raw.columns = [str(c).strip() for c in raw.columns]
    if "case_id" not in raw.columns:
        report.add(None, "clinical.csv", "clinical_unreadable",
                   f"clinical.csv has no case_id column (columns: {', '.join(raw.columns)}).",
                   "name the column that holds the case ids (as in imagesTr) case_id.", "warning")
        return empty
    raw["case_id"] = raw["case_id"].str.strip()
    known = set(case_ids)
    counts = raw["case_id"].value_counts()
    for cid in sorted(counts[counts > 1].index):
        report.add(cid, "clinical.csv", "clinical_duplicate_row",
                   f"clinical.csv has {counts[cid]} rows for case {cid}; none of them is used.",
                   "keep exactly one row per case.", "warning")
    raw = raw[raw["case_id"].map(counts) == 1]
    for cid in sorted(set(raw["case_id"]) - known):
        if cid:
            report.add(cid, "clinical.csv", "clinical_without_image",
                       f"clinical.csv has a row for {cid}, but there is no image for that case.",
                       f"add imagesTr/{cid}_0000 (and its label), or fix the case id / remove the row.", "warning")
    dup = set(counts[counts > 1].index)
    for cid in case_ids:
        if cid not in set(raw["case_id"]) and cid not in dup:
            report.add(cid, "clinical.csv", "clinical_missing_row",
                       f"case {cid} has no row in clinical.csv; it is left out of the lung-function analysis.",
                       f"add a row with case_id {cid} and its clinical values.", "warning")
    raw = raw.set_index("case_id")
    out = {}
    for col in raw.columns:
        values = raw[col]
        key = _norm(col)
        spec = CLINICAL_COLUMNS.get(key)
        if key == "sex" or (spec and spec[0] == "F/M"):
            parsed = {}
            for cid, v in values.items():
                if _is_missing(v):
                    continue
                s = _SEX.get(str(v).strip().lower())
                if s is None and cid in known:
                    report.add(cid, "clinical.csv", "clinical_non_numeric",
                               f"{col} is {v!r} for case {cid}; expected F or M.",
                               "write F or M (or leave it blank if unknown).", "warning")
                parsed[cid] = s
            out[col] = pd.Series(parsed, dtype=object)
            continue
        nums = {cid: _to_float(v) for cid, v in values.items() if not _is_missing(v)}
        numeric_col = spec is not None or (nums and sum(x is not None for x in nums.values()) >= 0.5 * len(nums))
        if not numeric_col:
            out[col] = values.where(~values.map(_is_missing), None)
            continue
        if spec is not None:
            lo, hi = spec[1]
            unit = spec[0]
        elif _PFT_PCT.match(key):
            lo, hi, unit = 10, 200, "% predicted"
        elif _VOLUME.search(key):
            lo, hi, unit = 0, math.inf, "volume"
        else:
            lo, hi, unit = -math.inf, math.inf, ""
        parsed = {}
        for cid, x in nums.items():
            v = values[cid]
            if x is None or not math.isfinite(x):
                if cid in known:
                    report.add(cid, "clinical.csv", "clinical_non_numeric",
                               f"{col} is {v!r} for case {cid}; expected a number{f' ({unit})' if unit else ''}.",
                               "write a plain number (decimal point, no units), or leave it blank if unknown.",
                               "warning")
                continue
            if not lo <= x <= hi:
                if cid in known:
                    what = "negative volume" if unit == "volume" else f"outside the plausible range {lo:g}..{hi:g}"
                    fix = ("give FEV1/FVC as a ratio (e.g. 0.75), not a percent" if key == "fev1_fvc" else
                           "give % predicted (e.g. 85), not litres or a fraction" if unit == "% predicted" else
                           "check the value and its unit")
                    report.add(cid, "clinical.csv", "clinical_implausible",
                               f"{col} = {v} for case {cid} is {what} ({unit}); it is treated as missing.",
                               fix + ".", "warning")
                continue
            parsed[cid] = x
        out[col] = pd.Series(parsed, dtype=float)
        if spec is not None:
            for cid in case_ids:
                if cid in values.index and _is_missing(values[cid]):
                    report.add(cid, "clinical.csv", "clinical_missing_value",
                               f"{col} is blank for case {cid}; the case is left out of analyses of {col}.",
                               f"fill in {col} ({spec[0]}) if it is known.", "warning")
    frame = pd.DataFrame(out, index=pd.Index(case_ids, name="case_id")) if out else empty
    frame.index.name = "case_id"
    return frame


# --------------------------------------------------------------------------------------------
# Per-case checks
# --------------------------------------------------------------------------------------------


def _why(exc: InputError) -> str:
    why = getattr(exc, "reason", None)
    return f"cannot be read ({why}); it is unreadable, truncated or corrupt" if why else str(exc)


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


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


def _label_counts(array: np.ndarray) -> tuple[dict[int, int] | None, str | None]:
    """Value -> voxel count of an integer label array, or (None, why) when it is not integer."""
    flat = array.ravel(order="K")
    if np.issubdtype(flat.dtype, np.integer) or flat.dtype == bool:
        if flat.size == 0:
            return {}, None
        lo, hi = int(flat.min()), int(flat.max())
        if lo >= 0 and hi <= 65535:
            counts = np.bincount(flat, minlength=hi + 1)
            return {int(v): int(c) for v, c in enumerate(counts) if c}, None
        values, counts = np.unique(flat, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}, None
    if not np.all(np.isfinite(flat)):
        return None, "it holds NaN or infinite values"
    values, counts = np.unique(flat, return_counts=True)
    if not np.array_equal(values, np.rint(values)):
        frac = values[values != np.rint(values)]
        return None, f"it holds non-integer values (e.g. {', '.join(f'{v:g}' for v in frac[:3])})"
    return {int(v): int(c) for v, c in zip(values, counts)}, None


def _voxel_digest(array: np.ndarray) -> str:
    """SHA-1 of a volume's voxels (values, shape and type): the same scan under two names."""
    import hashlib

    a = np.ascontiguousarray(array)
    return hashlib.sha1(a.tobytes() + str(a.shape).encode() + a.dtype.str.encode()).hexdigest()


def _check_unlabelled(root: Path, uid: str, image: Path, digests: dict[str, str], report: ValidationReport) -> None:
    """One unlabelled scan: readable, finite, Hounsfield units, not a labelled case's image."""
    key, rel = f"{UNLABELLED_DIR}/{uid}", _rel(root, image)
    fix_read = "re-export or re-copy this file from the source, or remove it from unlabelledTr."
    try:
        load_header(image)
        img = load_volume(image).array
    except InputError as exc:
        report.add(key, rel, "unreadable", f"the unlabelled scan {_why(exc)}.", fix_read)
        return
    same = digests.get(_voxel_digest(img))
    if same is not None:
        report.add(key, rel, "unlabelled_duplicate",
                   f"{rel} has the same voxels as the labelled image {same}: the case would be seen again, "
                   "without its label, by the training of the folds that hold it out.",
                   f"remove {rel} from unlabelledTr (the labelled copy {same} stays).")
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


def _check_case(root: Path, case: str, image: Path, label: Path | None, roles: dict[int, int],
                declared: set[int], report: ValidationReport, digests: dict[str, str] | None = None) -> None:
    img_file = _rel(root, image)
    lab_file = _rel(root, label) if label is not None else None
    try:
        ih = load_header(image)
    except InputError as exc:
        report.add(case, img_file, "unreadable", f"the image {_why(exc)}.",
                   "re-export or re-copy this file from the source and check the copy is complete.")
        ih = None
    lh = None
    if label is not None:
        try:
            lh = load_header(label)
        except InputError as exc:
            report.add(case, lab_file, "unreadable", f"the label {_why(exc)}.",
                       "re-export or re-copy this file from the source and check the copy is complete.")
    aligned = ih is not None and lh is not None and _compare_geometry(case, img_file, lab_file, ih, lh, report)

    # Label voxels first (small), so the image check can use the lung mask.
    roles_arr = None
    if lh is not None:
        try:
            lab = load_volume(label).array
        except InputError as exc:
            report.add(case, lab_file, "unreadable", f"the label's voxels: {_why(exc)}.",
                       "re-export or re-copy this file from the source and check the copy is complete.")
            lab = None
        if lab is not None:
            counts, why = _label_counts(lab)
            if counts is None:
                report.add(case, lab_file, "label_values", f"the label map is not an integer map: {why}.",
                           "export the label map with integer values (nearest-neighbour, no interpolation).")
            else:
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
                    roles_arr = lut[lab] if np.issubdtype(lab.dtype, np.integer) else lut[np.rint(lab).astype(np.intp)]
            del lab

    if ih is None:
        return
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


def _check_duplicates(layout: _Layout, report: ValidationReport) -> None:
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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def validate_cohort(root: str | os.PathLike, *, label_map: dict | None = None) -> ValidationReport:
    """Check a cohort folder and report every problem at once. Nothing is written.

    Args:
        root: the cohort folder.
        label_map: label name -> study role for ``dataset.json`` names that are not roles already
            (see the module docstring).

    Returns:
        A :class:`ValidationReport` (``report.ok``, ``report.bad_cases``, ``print(report.format())``).

    Example:
        >>> report = validate_cohort("data/siccs", label_map={"honeycombing": "ef"})  # doctest: +SKIP
        >>> report.ok, report.bad_cases  # doctest: +SKIP
        (False, ['case_017'])
    """
    root = Path(root)
    report = ValidationReport(root=root)
    if label_map is None:
        label_map = label_map_from_env()
    dataset, roles, layout = _check_structure(root, label_map, report)
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
        _check_unlabelled(root, uid, path, digests, report)
    _read_clinical(root, sorted(layout.images), report)
    return report


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

    Example:
        >>> cohort = load_cohort("data/synthetic")  # doctest: +SKIP
        >>> len(cohort.cases), cohort.synthetic  # doctest: +SKIP
        (40, True)
    """
    root = Path(root)
    report = ValidationReport(root=root)
    if label_map is None:
        label_map = label_map_from_env()
    dataset, roles, layout = _check_structure(root, label_map, report)
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
    clinical = _read_clinical(root, [c.case_id for c in cases], ValidationReport(root=root))
    return Cohort(root=root, name=str(dataset.get("name") or root.name), dataset=dataset, cases=cases,
                  clinical=clinical, synthetic=bool(dataset.get("synthetic", False) is True), label_map=roles,
                  unlabelled=dict(sorted(layout.unlabelled.items())))


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

    Example:
        >>> ct, roles = read_case(cohort, "case_000")  # doctest: +SKIP
        >>> ct.spacing, roles.max()  # doctest: +SKIP
        ((1.4, 1.4, 6.0), 3)
    """
    files = cohort.case(case_id)
    image = load_volume(files.image)
    if files.label is None:
        return image, None
    lab = load_volume(files.label).array
    rel = _rel(cohort.root, files.label)
    if lab.shape != image.shape:
        raise CohortError(f"case {case_id}: {rel} has shape {lab.shape}, the image {image.shape}. "
                          "Fix: export the label on the image's grid (run `sscild validate` for all problems).")
    counts, why = _label_counts(lab)
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
