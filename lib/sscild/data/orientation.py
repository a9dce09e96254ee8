"""Arrays in the closest canonical RAS orientation, for measuring and drawing.

Only axis permutations and flips (``nibabel.orientations``), never interpolation, so a label map
keeps its values and an image its voxels. The book's figures draw every scan this way, and the
analyses that speak of up, down, left and right (the slice that shows the disease, where errors lie)
measure on it.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

__all__ = ["to_canonical", "canonical_position"]


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient an (x, y, z) array to the closest canonical RAS orientation (no interpolation).

    A :class:`sscild.data.image.Volume` ``vol`` is reoriented by ``to_canonical(vol.array, vol.affine)``.

    Returns:
        ``(array view, spacing of the canonical axes in mm)``.

    Example:
        >>> a, sp = to_canonical(np.zeros((2, 3, 4)), np.diag([-1.0, 2.0, 3.0, 1.0]))
        >>> a.shape, sp
        ((2, 3, 4), (1.0, 2.0, 3.0))
    """
    affine = np.asarray(affine, dtype=float)
    ornt = nio.io_orientation(affine)
    can = nio.apply_orientation(np.asarray(array), ornt)
    can_aff = affine @ nio.inv_ornt_aff(ornt, np.asarray(array).shape)
    spacing = tuple(float(s) for s in np.sqrt((can_aff[:3, :3] ** 2).sum(axis=0)))
    return can, spacing


def canonical_position(affine: np.ndarray, shape, axis: int, index: int) -> float:
    """The RAS millimetre coordinate (along ``axis``: 0 right-left, 1 anterior-posterior, 2 superior-inferior) of
    slice ``index`` of the array :func:`to_canonical` makes of an array of ``shape`` with ``affine``.

    Example:
        >>> canonical_position(np.diag([-1.0, 2.0, 3.0, 1.0]), (2, 3, 4), 2, 1)
        3.0
    """
    affine = np.asarray(affine, dtype=float)
    ornt = nio.io_orientation(affine)
    can_aff = affine @ nio.inv_ornt_aff(ornt, tuple(shape))
    point = np.zeros(4)
    point[3] = 1.0
    point[axis] = index
    return float((can_aff @ point)[axis])
