"""Where everything derived lives, and how it is written.

Everything a run derives goes under ``<results>/<cohort>/<profile>/``::

    validation.json             the cohort validation report and exclusions (make's data stage)
    cases.csv                   the preprocessing table of the cases used (data stage)
    splits.json                 patient-wise folds (nnU-Net ``splits_final.json`` shape; data stage)
    cache/<case>.npz            preprocessed case (+ cache/<case>.json: key and geometry)
    cache/unlabelled/<id>.f16.npy  preprocessed unlabelled scan for pretraining (+ .json: its key)
    pretrained/                 the network pretrained on the unlabelled scans (make's pretraining step)
    fold_<k>/                   checkpoint_latest.pt, model_final.pt, history.csv, train_summary.json
    predictions/<case>.nii.gz   out-of-fold label maps, input geometry
    segmentation_metrics.csv    per-case metrics; segmentation_summary.json
    zone_extent.csv             EF and GGO extent per lung zone (Segmentation chapter; read by the Clinical chapter)
    clinical_correlations.csv   the correlation grid; clinical_summary.json
    run_context.json            the resolved run: profile, folders, folds, how folds shared the machine
    runlog.json                 wall time and status of each make step
    notebooks/<chapter>.ipynb   executed chapter notebooks (copied into the book)

Writes are atomic (temporary file in the same folder, then ``os.replace``), so an interrupted run
never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunPaths", "atomic_path", "write_json", "read_json", "repo_root", "results_root", "default_data_dir",
           "resolve_data_dir"]


def repo_root() -> Path:
    """The project checkout (two levels above this package), or the current folder."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "Makefile").exists() else Path.cwd()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and not thread-safe to probe


def unroot(text) -> str:
    """``text`` (a path or a string holding paths) with the repository's absolute folder removed, so
    paths inside the repository read relative to it and the book does not show the build machine's
    folders; anything else is left as it is."""
    return str(text).replace(str(repo_root().resolve()) + "/", "")


def results_root(results: str | os.PathLike | None = None) -> Path:
    """The results folder: ``results`` when given, else ``SSCILD_RESULTS``, else ``<repo>/results``
    (the one place that reads ``SSCILD_RESULTS``)."""
    if results not in (None, ""):
        return Path(results).expanduser().resolve()
    return Path(os.environ.get("SSCILD_RESULTS", repo_root() / "results")).resolve()


def default_data_dir(profile: str) -> Path:
    """The built-in synthetic cohort of ``profile``: ``<repo>/data/synthetic-<profile>``
    (``SSCILD_DATA_ROOT`` overrides the ``data`` folder)."""
    root = Path(os.environ.get("SSCILD_DATA_ROOT", repo_root() / "data"))
    return (root / f"synthetic-{profile}").resolve()


def resolve_data_dir(data_dir, profile: str) -> Path:
    """``data_dir`` as an absolute path; ``None`` or ``""`` means the built-in synthetic cohort."""
    if data_dir in (None, ""):
        return default_data_dir(profile)
    return Path(data_dir).expanduser().resolve()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` defaults to the target's own suffixes so writers that infer the format from the
    file name (nibabel, SimpleITK, numpy) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = _UMASK
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; numpy scalars and paths are converted."""

    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=default, allow_nan=True) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class RunPaths:
    """The results folder of one (cohort, profile) run."""

    results: Path
    cohort: str
    profile: str

    @classmethod
    def for_run(cls, data_dir: str | os.PathLike, profile: str, results: str | os.PathLike | None = None) -> "RunPaths":
        """Results of cohort folder ``data_dir`` under ``results`` (default ``<repo>/results``)."""
        cohort = Path(data_dir).resolve().name
        return cls(results=results_root(results), cohort=cohort, profile=str(profile))

    @property
    def root(self) -> Path:
        return self.results / self.cohort / self.profile

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def cases(self) -> Path:
        """The preprocessing table of the cases used (``sscild prepare``): one row per case."""
        return self.root / "cases.csv"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{int(fold)}"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def segmentation_metrics(self) -> Path:
        return self.root / "segmentation_metrics.csv"

    @property
    def segmentation_summary(self) -> Path:
        return self.root / "segmentation_summary.json"

    @property
    def clinical_correlations(self) -> Path:
        return self.root / "clinical_correlations.csv"

    @property
    def clinical_summary(self) -> Path:
        return self.root / "clinical_summary.json"

    @property
    def runlog(self) -> Path:
        return self.root / "runlog.json"

    @property
    def figures(self) -> Path:
        """``figures/<cohort>/<profile>/`` beside the results folder (``<repo>/figures`` by default)."""
        return self.results.parent / "figures" / self.cohort / self.profile
