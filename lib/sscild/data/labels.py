"""Label maps: which study role each label value of a cohort has.

The study uses four roles: background 0, normal lung 1, established fibrosis (EF) 2 and
ground-glass opacity (GGO) 3 (``sscild.LABELS``). ``dataset.json`` ``"labels"`` maps *names* to the
integer values in the label files; names are matched to roles automatically when they are a role or
an obvious synonym (:data:`ROLE_SYNONYMS`: ``lung``/``normal_lung`` -> normal,
``fibrosis``/``established_fibrosis`` -> ef, ``ground_glass``/``ground-glass`` -> ggo). Any other
scheme is mapped with ``label_map`` (the command line's ``--label-map``, or the environment variable
``SSCILD_LABEL_MAP``), e.g. for a dataset that labels EF's components separately::

    {"reticulation": "ef", "honeycombing": "ef", "traction_bronchiectasis": "ef", "consolidation": "ggo"}

A name with no role is an error whose message says how to map it (:func:`resolve_label_map`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sscild import LABELS
from sscild.data.names import normalise_name
from sscild.data.validation_report import Problem

__all__ = ["ROLE_SYNONYMS", "LABEL_MAP_ENV", "label_map_from_env", "resolve_label_map", "label_counts"]

ROLE_SYNONYMS: dict[str, str] = {
    "background": "background", "bg": "background",
    "normal": "normal", "lung": "normal", "normal_lung": "normal", "healthy_lung": "normal",
    "ef": "ef", "fibrosis": "ef", "established_fibrosis": "ef",
    "ggo": "ggo", "ground_glass": "ggo", "groundglass": "ggo", "ground_glass_opacity": "ggo",
}
"""Label names (lower case, ``-``/spaces as ``_``) that map to a study role without a ``label_map``."""

_ROLE_VALUE = dict(LABELS)


def _role_of(name) -> str | None:
    return ROLE_SYNONYMS.get(normalise_name(name))


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
            overrides[normalise_name(key)] = int(role)
        elif isinstance(role, str) and _role_of(role) is not None:
            overrides[normalise_name(key)] = _ROLE_VALUE[_role_of(role)]
        else:
            bad(f"--label-map gives {key!r} the role {role!r}, which is not a study role.",
                "map each name to one of: background, normal, ef, ggo (e.g. "
                '{"honeycombing": "ef", "consolidation": "ggo"}).')
    names = {normalise_name(n) for n in labels}
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
        role = overrides.get(normalise_name(name))
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


def label_counts(array: np.ndarray) -> tuple[dict[int, int] | None, str | None]:
    """Value -> voxel count of an integer label array, or (None, why) when it is not integer.

    Example:
        >>> label_counts(np.array([0, 0, 1, 3], np.uint8))
        ({0: 2, 1: 1, 3: 1}, None)
        >>> label_counts(np.array([0.0, 0.5]))
        (None, 'it holds non-integer values (e.g. 0.5)')
    """
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
