"""The benchmark's slice folders: reading and checking labelled and unlabelled image folders.

Written for the COVID-SemiSeg benchmark (Fan et al., 2020): axial slices already windowed to 8 bits,
labelled 0 background, 1 ground-glass opacity (GGO), 2 consolidation.

**Folder layout** (one per split)::

    DIR/images/<id>.jpg|.jpeg|.png     8-bit greyscale slice (already windowed; no HU, no spacing)
    DIR/labels/<id>.png                same size; 0 background, 1 GGO, 2 consolidation

**Array convention.** A slice is an (x, y) array: x runs along the file's columns (left to right),
y along its rows (top to bottom), i.e. the transpose of what an image reader returns. Predicted
masks are written back as PNG files in the file's own orientation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscild.errors import InputError
from sscild.paths import repo_root

__all__ = [
    "CLASS_NAMES",
    "LABEL_VALUES",
    "IMAGE_SUFFIXES",
    "HOW_TO_GET_DATA",
    "SliceImage",
    "natural_key",
    "read_label",
    "read_slice_folder",
    "read_unlabelled_folder",
    "check_no_overlap",
    "default_train_dir",
    "default_unlabelled_dir",
]

CLASS_NAMES = ("ggo", "consolidation")
"""Foreground classes, in label order (label 1, label 2)."""

LABEL_VALUES = {0: "background", 1: "ggo", 2: "consolidation"}
"""The label values a mask may hold."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Image file endings read from ``images/`` (labels are always ``.png``)."""


HOW_TO_GET_DATA = (
    "Obtain the COVID-SemiSeg benchmark (Fan et al. 2020, Inf-Net; derived from the MedSeg "
    "'COVID-19 CT segmentation dataset'): its training part has 50 axial CT slices with ground-glass "
    "and consolidation masks, its test part 48. Lay each part out as DIR/images/<id>.jpg and "
    "DIR/labels/<id>.png (0 background, 1 ground glass, 2 consolidation), then run "
    "`make external EXTERNAL_TRAIN=DIR` (add `EXTERNAL_TEST=DIR2` to score the test part)."
)
"""What the chapter prints when the training folder is absent."""


@dataclass(frozen=True)
class SliceImage:
    """One 2D slice of an image folder.

    Attributes:
        slice_id: file stem (``images/<id>.jpg`` -> ``<id>``).
        image: uint8 (x, y) grey levels (the transpose of the file's rows x columns).
        label: uint8 (x, y) label map (0, 1, 2), or ``None`` for an unlabelled folder.
        image_path, label_path: the files read.
    """

    slice_id: str
    image: np.ndarray
    label: np.ndarray | None
    image_path: Path
    label_path: Path | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.image.shape)

    def digest(self) -> str:
        """SHA-1 of the image's grey levels (finds the same slice under two names)."""
        return hashlib.sha1(np.ascontiguousarray(self.image).tobytes() + str(self.image.shape).encode()).hexdigest()


def natural_key(s: str):
    """Sort key for slice ids: numeric ids in numeric order (2 before 10), then the others by name."""
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im).astype(np.float64)
            return np.clip(np.rint(a / max(float(a.max()), 1.0) * 255.0), 0, 255).astype(np.uint8).T
        if im.mode not in ("L", "P"):
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8).T


def read_label(path: Path) -> np.ndarray:
    """A label map file as an int64 (x, y) array; ``ValueError`` for a colour or non-integer image."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        a = np.asarray(im)
    if a.ndim == 3:
        if a.shape[2] in (2, 4):  # drop alpha
            a = a[..., :-1]
        if not all(np.array_equal(a[..., 0], a[..., c]) for c in range(1, a.shape[2])):
            raise ValueError("is a colour image; a label map must be one channel of integer values 0, 1, 2")
        a = a[..., 0]
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise ValueError(f"holds {a.dtype} values; a label map must hold integers 0, 1, 2")
    return a.astype(np.int64).T


def read_slice_folder(folder: str | Path, *, require_labels: bool = True,
                      what: str = "image folder") -> dict[str, SliceImage]:
    """Read and validate ``folder/images`` and ``folder/labels``; every problem is reported at once.

    Args:
        folder: the split's folder (holding ``images/`` and, when labelled, ``labels/``).
        require_labels: every image must have a label of the same size with values 0, 1, 2.
        what: how messages name the folder (e.g. "training folder").

    Returns:
        Slice id -> :class:`SliceImage`, in natural id order (2 before 10).

    Raises:
        InputError: the folder or its ``images/`` is missing or empty, or (all listed together) an
            unreadable file, an image without a label, a label without an image, two images with
            one id, a label whose size differs from its image, or label values other than 0, 1, 2.

    Usage: ``slices = read_slice_folder("covid-semiseg/train")``; then ``slices["0"].image`` and
    ``slices["0"].label`` have the same shape.
    """
    folder = Path(folder).expanduser()
    lab_dir = folder / "labels"
    images, labels = _list_folder(folder, require_labels=require_labels, what=what)
    problems: list[str] = []
    out: dict[str, SliceImage] = {}
    for sid in sorted(images, key=natural_key):
        s = _read_one_slice(sid, images[sid], labels.get(sid), lab_dir, require_labels=require_labels,
                            problems=problems)
        if s is not None:
            out[sid] = s
    orphans = sorted(set(labels) - set(images), key=natural_key)
    if orphans:
        problems.append(f"labels without an image: {', '.join(labels[s].name for s in orphans[:10])}"
                        f"{' ...' if len(orphans) > 10 else ''} in {lab_dir}; add the images or remove the labels.")
    if problems:
        raise InputError(f"{what} {folder}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return out


def _list_folder(folder: Path, *, require_labels: bool, what: str) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """The image files by id (a list: two files may share an id) and the label files by id; an
    ``InputError`` when the folder, its ``images/`` (or, when required, ``labels/``) is missing or empty."""
    img_dir, lab_dir = folder / "images", folder / "labels"
    if not folder.is_dir():
        raise InputError(f"{what} {folder} does not exist. {HOW_TO_GET_DATA}")
    if not img_dir.is_dir():
        raise InputError(f"{what} {folder} has no images/ subfolder: put the slices in {img_dir}/<id>.jpg "
                         f"(and their masks in {lab_dir}/<id>.png).")
    images: dict[str, list[Path]] = {}
    for p in sorted(img_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            images.setdefault(p.stem, []).append(p)
    if not images:
        raise InputError(f"{what} {folder}: {img_dir} holds no {'/'.join(IMAGE_SUFFIXES)} files; put the slices "
                         "there as <id>.jpg or <id>.png.")
    labels: dict[str, Path] = {}
    if lab_dir.is_dir():
        labels = {p.stem: p for p in sorted(lab_dir.iterdir())
                  if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")}
    elif require_labels:
        raise InputError(f"{what} {folder} has no labels/ subfolder: put each slice's mask in {lab_dir}/<id>.png "
                         "(0 background, 1 ground glass, 2 consolidation).")
    return images, labels


def _read_one_slice(sid: str, paths: list[Path], lpath: Path | None, lab_dir: Path, *, require_labels: bool,
                    problems: list[str]) -> SliceImage | None:
    """Slice ``sid`` from its image file(s) and label file, or ``None`` with what is wrong added to ``problems``."""
    if len(paths) > 1:
        problems.append(f"slice {sid}: several images with this id ({', '.join(p.name for p in paths)}); "
                        "keep one and remove or rename the others.")
        return None
    ipath = paths[0]
    try:
        img = _read_grey(ipath)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with the file
        problems.append(f"slice {sid}: {ipath} cannot be read as an image ({type(e).__name__}: {e}); "
                        "replace it with a valid 8-bit greyscale JPEG or PNG.")
        return None
    lab = None
    if lpath is None:
        if require_labels:
            problems.append(f"slice {sid}: label {lab_dir / (sid + '.png')} is missing for image {ipath.name}; "
                            "add the mask or remove the image.")
            return None
    else:
        try:
            raw = read_label(lpath)
        except Exception as e:  # noqa: BLE001
            why = e if isinstance(e, ValueError) else f"cannot be read ({e})"
            problems.append(f"slice {sid}: label {lpath} {why}; "
                            "save it as a single-channel PNG of 0/1/2.")
            return None
        if raw.shape != img.shape:
            problems.append(f"slice {sid}: label {lpath.name} is {raw.shape[0]}x{raw.shape[1]} (width x height) "
                            f"but image {ipath.name} is {img.shape[0]}x{img.shape[1]}; the mask must have the "
                            "image's size.")
            return None
        bad = sorted(set(np.unique(raw).tolist()) - set(LABEL_VALUES))
        if bad:
            problems.append(f"slice {sid}: label {lpath} holds values {bad[:8]} besides 0/1/2 "
                            f"(allowed: {LABEL_VALUES}); remap it (e.g. 255 -> 1 for a binary mask, or "
                            "re-export without anti-aliasing).")
            return None
        lab = raw.astype(np.uint8)
    return SliceImage(sid, img, lab, ipath, lpath)


def read_unlabelled_folder(folder: str | Path, *, what: str = "unlabelled folder") -> dict[str, SliceImage]:
    """Read ``folder/images/<id>.jpg|png``: slices without labels, for semi-supervised training only.

    Raises:
        InputError: the folder or its ``images/`` is missing or empty, a file cannot be read (every
            one named), or the folder holds labels (a ``labels/`` folder with files): labelled
            slices belong in the training folder, where they are cross-validated.

    Usage: ``read_unlabelled_folder("covid-semiseg/unlabelled")``; every slice's ``label`` is ``None``.
    """
    folder = Path(folder).expanduser()
    lab_dir = folder / "labels"
    if lab_dir.is_dir():
        files = sorted(f for f in lab_dir.iterdir() if not f.name.startswith("."))
        if files:
            raise InputError(f"{what} {folder}: holds labels ({', '.join(str(f) for f in files[:5])}"
                             f"{' ...' if len(files) > 5 else ''}); an unlabelled folder has only images/. Move "
                             "labelled slices with their masks into the training folder, or remove "
                             f"{lab_dir}.")
    if not folder.is_dir():
        raise InputError(f"{what} {folder} does not exist: give a folder with images/<id>.jpg (or .png), or "
                         "leave it out to train on the labelled slices only.")
    return read_slice_folder(folder, require_labels=False, what=what)


def check_no_overlap(unlabelled: Mapping[str, SliceImage], labelled: Mapping[str, Mapping[str, SliceImage]]) -> None:
    """Refuse unlabelled slices whose pixels equal a labelled (training or test) slice's.

    Args:
        unlabelled: the unlabelled slices.
        labelled: part name (e.g. ``"training"``, ``"test"``) -> its slices.

    Raises:
        InputError: naming every pair of files with the same content (SHA-1 of the grey levels,
            :meth:`SliceImage.digest`): a held-out slice among the unlabelled ones would teach the
            network the slice it is scored on.

    Example:
        >>> a = SliceImage("a", np.zeros((4, 4), np.uint8), None, Path("u/a.jpg"), None)
        >>> b = SliceImage("7", np.zeros((4, 4), np.uint8), None, Path("t/7.jpg"), None)
        >>> check_no_overlap({"a": a}, {"test": {"7": b}})
        Traceback (most recent call last):
        ...
        sscild.errors.InputError: 1 unlabelled slice(s) are identical to labelled ones: u/a.jpg = t/7.jpg (test part); ...
    """
    seen: dict[str, tuple[str, SliceImage]] = {}
    for part, slices in labelled.items():
        for s in slices.values():
            seen.setdefault(s.digest(), (part, s))
    dup = [(u, seen[u.digest()]) for u in unlabelled.values() if u.digest() in seen]
    if dup:
        pairs = "; ".join(f"{u.image_path} = {s.image_path} ({part} part)" for u, (part, s) in dup[:10])
        raise InputError(f"{len(dup)} unlabelled slice(s) are identical to labelled ones: {pairs}"
                         f"{' ...' if len(dup) > 10 else ''}; remove them from the unlabelled folder (a labelled "
                         "slice must never be seen again without its label, least of all a held-out one).")


def default_train_dir() -> Path | None:
    """``../shared/data/covid-semiseg/train`` beside the checkout when it exists, else ``None``."""
    p = (repo_root().parent / "shared" / "data" / "covid-semiseg" / "train").resolve()
    return p if p.is_dir() else None


def default_unlabelled_dir() -> Path | None:
    """``../shared/data/covid-semiseg/unlabelled`` beside the checkout when it exists, else ``None``."""
    p = (repo_root().parent / "shared" / "data" / "covid-semiseg" / "unlabelled").resolve()
    return p if (p / "images").is_dir() else None
