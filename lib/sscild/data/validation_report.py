"""The validation report of a cohort folder: every problem found, each with the case, file and fix.

:func:`sscild.data.validate.validate_cohort` returns a :class:`ValidationReport`. Each
:class:`Problem` names the case, the file, the problem and the fix, and has a severity: ``"error"``
(the case cannot be used; a folder-level error such as a missing ``dataset.json`` makes every case
unusable) or ``"warning"`` (reported; the case is still used, e.g. one missing lung-function value).
:data:`PROBLEM_KINDS` lists every kind. Problems of unlabelled scans are reported under
``unlabelled/<id>`` (:data:`UNLABELLED_DIR`) and never make a labelled case unusable.

Example:
    >>> report = ValidationReport(root=Path("cohort"), cases=["case_000", "case_001"])
    >>> report.add("case_001", "labelsTr/case_001.nii.gz", "no_lung", "the label map has no lung voxels.",
    ...            "check the label file.")
    >>> report.ok, report.bad_cases, report.usable_cases
    (False, ['case_001'], ['case_000'])
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["Problem", "ValidationReport", "validation_record", "PROBLEM_KINDS", "UNLABELLED_DIR", "CONTROLS_DIR"]

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
    # clinical table (warnings: no case becomes unusable for segmentation; but every kind except a
    # blank value changes what the lung-function analysis uses, and stops `sscild validate` / make
    # unless clinical gaps are allowed: sscild.data.clinical_table.CLINICAL_GAPS)
    "clinical_missing": "no clinical.csv (warning; a clinical gap)",
    "clinical_unreadable": "clinical.csv cannot be read or has no case_id column (warning; a clinical gap)",
    "clinical_missing_row": "a case has no clinical row (warning; a clinical gap)",
    "clinical_without_image": "a clinical row whose case has no image (warning; a clinical gap)",
    "clinical_no_case_id": "a clinical row without a case_id (warning; a clinical gap: the row is not used)",
    "clinical_duplicate_row": "several clinical rows for one case (warning; a clinical gap: none is used)",
    "clinical_missing_value": "a known clinical value is blank (warning)",
    "clinical_non_numeric": "a clinical value that should be a number is not (warning; a clinical gap: set aside)",
    "clinical_implausible": "a clinical value outside its plausible range (warning; a clinical gap: set aside)",
    # unlabelled scans (unlabelledTr/, optional)
    "unlabelled_empty": "unlabelledTr/ exists but holds no scan (error)",
    "unlabelled_label_file": "a label file or a subfolder inside unlabelledTr/ (error)",
    "unlabelled_duplicate": "an unlabelled scan has the same voxels as a labelled case's image (error)",
    # controls (controlsTs/, optional): patients without lung disease, scored for false lesions
    "controls_empty": "controlsTs/ exists but holds no scan (error)",
    "controls_label_file": "a label file or a subfolder inside controlsTs/ (error)",
    "controls_duplicate": "a control scan has the same voxels as a labelled case's or another scan's image (error)",
}
"""Every problem kind :func:`~sscild.data.validate.validate_cohort` reports, with its usual severity."""

UNLABELLED_DIR = "unlabelled"
"""Report key of unlabelled-scan problems (``unlabelled/<id>``, or ``unlabelled`` for the folder)."""
CONTROLS_DIR = "controls"
"""Report key of control-scan problems (``controls/<id>``, or ``controls`` for the folder)."""


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

    def reason(self) -> str:
        """The problem in a few words: ``kind (file): message``."""
        where = f" ({self.file})" if self.file else ""
        return f"{self.kind}{where}: {self.message}"

    def __str__(self) -> str:
        where = " | ".join(x for x in (self.case_id or "cohort", self.file) if x)
        return f"[{self.severity}] {where} | {self.kind}: {self.message} Fix: {self.fix}"


@dataclass
class ValidationReport:
    """Everything :func:`~sscild.data.validate.validate_cohort` found.

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
            elif key == CONTROLS_DIR or key.startswith(CONTROLS_DIR + "/"):
                title = ("Controls" if key == CONTROLS_DIR else f"Control {key.split('/', 1)[1]}") \
                    + " (scored for false lesions only; no labelled case affected)"
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

    @classmethod
    def from_dict(cls, record: dict) -> "ValidationReport":
        """The report again from what :meth:`to_dict` (or ``validation.json``) holds."""
        return cls(root=Path(record["root"]), cases=list(record.get("cases", [])),
                   problems=[Problem(**p) for p in record.get("problems", [])])


def validation_record(report: ValidationReport, *, label_map: dict | None = None) -> dict:
    """What ``validation.json`` holds: the report, the exclusion policy and every exclusion.

    Args:
        report: the cohort's :class:`ValidationReport`.
        label_map: the label map validation used (recorded as given).

    Returns:
        ``report.to_dict()`` plus ``policy``, ``label_map``, ``included`` and ``excluded`` (a list of
        ``{"case_id", "reasons": [...], "fix": [...]}``).
    """
    out = report.to_dict()
    out["policy"] = ("strict: a case with at least one validation error is excluded from every later step; "
                     "warnings are reported and the case is kept")
    out["label_map"] = dict(label_map) if label_map else None
    out["included"] = list(report.usable_cases)
    folder = report.folder_errors
    out["excluded"] = [
        {"case_id": c,
         "reasons": [p.reason() for p in [q for q in report.errors if q.case_id == c] + list(folder)],
         "fix": list(dict.fromkeys(p.fix for p in [q for q in report.errors if q.case_id == c] + list(folder)))}
        for c in report.bad_cases]
    return out
