"""Fields on regular grids for the synthetic cohort: smooth random fields and their sampling.

The disease is laid out on a coarse grid in millimetres; these helpers make smooth random fields
there, interpolate a coarse field trilinearly onto the fine image grid or at scattered points, and
find the index range of a millimetre interval along an axis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["random_field", "upsample", "sample_points", "bbox"]


def _interp_axis(arr, axis, src0, ds, dst):
    n = arr.shape[axis]
    f = np.clip((np.asarray(dst, np.float64) - src0) / ds, 0, n - 1)
    i0 = np.minimum(np.floor(f).astype(np.intp), max(n - 2, 0))
    w = (f - i0).astype(np.float32)
    a0 = np.take(arr, i0, axis=axis)
    a1 = np.take(arr, np.minimum(i0 + 1, n - 1), axis=axis)
    sh = [1, 1, 1]
    sh[axis] = -1
    w = w.reshape(sh)
    a1 -= a0
    a1 *= w
    a0 += a1
    return a0


def upsample(coarse, c0, cs, xs, ys, zs):
    """Separable trilinear interpolation of a coarse grid field (origin c0, spacing cs) at xs, ys, zs."""
    out = _interp_axis(coarse, 0, c0[0], cs, xs)
    out = _interp_axis(out, 1, c0[1], cs, ys)
    return _interp_axis(out, 2, c0[2], cs, zs)


def sample_points(coarse, c0, cs, pts):
    """Trilinear samples of a coarse grid field (origin c0, spacing cs) at points (N x 3, mm)."""
    idx = ((np.asarray(pts, np.float64) - np.asarray(c0)) / cs).T
    return ndi.map_coordinates(coarse, idx, order=1, mode="nearest")


def random_field(rng, shape, sigma_vox):
    """Gaussian-smoothed white noise (periodic borders) scaled to unit standard deviation."""
    f = rng.standard_normal(shape, dtype=np.float32)
    f = ndi.gaussian_filter(f, sigma_vox, mode="wrap")
    f /= f.std() + 1e-6
    return f


def bbox(coords, lo, hi):
    """Index range [i0, i1) of the ascending ``coords`` that lie within [lo, hi]."""
    return int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi, "right"))
