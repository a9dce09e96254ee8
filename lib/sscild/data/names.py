"""Matching names written by people: label names, clinical column names, channel names.

A name is compared in one normal form (:func:`normalise_name`): lower case, every run of characters
other than letters and digits as one ``_``, no ``_`` at either end. ``"Ground-glass"``,
``"ground glass"`` and ``"GROUND_GLASS "`` are then the same name.
"""

from __future__ import annotations

import re

__all__ = ["normalise_name"]


def normalise_name(name) -> str:
    """The normal form of a name (any object; its ``str``) for matching.

    Example:
        >>> normalise_name(" FEV1 / FVC (%)"), normalise_name("Ground-glass")
        ('fev1_fvc', 'ground_glass')
    """
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
