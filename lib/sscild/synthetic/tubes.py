"""Tubes for the synthetic chest: vessels, airways and mediastinal tubes drawn on a grid.

A tube is a capsule whose radius varies linearly from its start to its end. Thick tubes are drawn
analytically as occupancy with a soft edge (:func:`render_tubes`); thin ones are deposited as partial
volume (:func:`splat_tubes`), as a scanner would see them.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Tubes", "render_tubes", "splat_tubes"]


class Tubes:
    """Accumulates tubes (start, end, start radius, end radius) and stacks them into arrays."""

    def __init__(self):
        self.parts = ([], [], [], [])

    def add(self, p0, p1, r0, r1):
        p0, p1 = np.atleast_2d(np.asarray(p0, float)), np.atleast_2d(np.asarray(p1, float))
        r0 = np.broadcast_to(np.asarray(r0, float), (len(p0),))
        r1 = np.broadcast_to(np.asarray(r1, float), (len(p0),))
        for lst, v in zip(self.parts, (p0, p1, r0, r1)):
            lst.append(v)

    def arrays(self):
        if not self.parts[0]:
            return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0)
        return tuple(np.concatenate(lst, axis=0) for lst in self.parts)



def render_tubes(occ, xs, ys, zs, p0, p1, r0, r1, ramp):
    """Max-composite analytic tubes (capsules with linearly varying radius) into ``occ``.

    ``xs``, ``ys``, ``zs`` are the ascending mm coordinates of ``occ``'s axes.
    """
    for a, b, ra, rb in zip(p0, p1, r0, r1):
        rmax = max(ra, rb) + ramp
        lo = np.minimum(a, b) - rmax
        hi = np.maximum(a, b) + rmax
        i0, i1 = np.searchsorted(xs, lo[0]), np.searchsorted(xs, hi[0], "right")
        j0, j1 = np.searchsorted(ys, lo[1]), np.searchsorted(ys, hi[1], "right")
        k0, k1 = np.searchsorted(zs, lo[2]), np.searchsorted(zs, hi[2], "right")
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        X = (xs[i0:i1] - a[0])[:, None, None]
        Y = (ys[j0:j1] - a[1])[None, :, None]
        Z = (zs[k0:k1] - a[2])[None, None, :]
        v = b - a
        L2 = float(v @ v) + 1e-9
        t = np.clip((X * v[0] + Y * v[1] + Z * v[2]) / L2, 0.0, 1.0)
        dx = X - t * v[0]
        dy = Y - t * v[1]
        dz = Z - t * v[2]
        d = np.sqrt(dx * dx + dy * dy + dz * dz)
        r = ra + (rb - ra) * t
        o = np.clip((r - d) / ramp + 0.5, 0.0, 1.0)
        sub = occ[i0:i1, j0:j1, k0:k1]
        np.maximum(sub, o, out=sub)


def splat_tubes(shape, origin, spacing, p0, p1, r0, r1, step):
    """Partial-volume occupancy of thin tubes: points along each tube deposited trilinearly.

    Each point carries the tube volume it stands for, so the sum of the field equals the tube
    volume in voxels; the later reconstruction blur spreads it like a real scanner would.
    """
    spacing = np.asarray(spacing, float)
    seg = p1 - p0
    L = np.linalg.norm(seg, axis=1)
    m = np.maximum(np.ceil(L / step).astype(int), 1)
    idx = np.repeat(np.arange(len(L)), m)
    cum = np.cumsum(m) - m
    frac = (np.arange(idx.size) - cum[idx] + 0.5) / m[idx]
    pts = p0[idx] + seg[idx] * frac[:, None]
    rr = r0[idx] + (r1 - r0)[idx] * frac
    vol = math.pi * rr * rr * (L[idx] / m[idx]) / float(np.prod(spacing))
    f = (pts - np.asarray(origin)) / spacing
    i0 = np.floor(f).astype(np.intp)
    w = f - i0
    out = np.zeros(int(np.prod(shape)), np.float64)
    for cx in (0, 1):
        for cy in (0, 1):
            for cz in (0, 1):
                ii = i0 + np.array([cx, cy, cz])
                ok = np.all((ii >= 0) & (ii < np.asarray(shape)), axis=1)
                ww = (np.where(cx, w[:, 0], 1 - w[:, 0]) * np.where(cy, w[:, 1], 1 - w[:, 1])
                      * np.where(cz, w[:, 2], 1 - w[:, 2]) * vol)
                flat = np.ravel_multi_index(ii[ok].T, shape)
                out += np.bincount(flat, weights=ww[ok], minlength=out.size)
    return out.reshape(shape).astype(np.float32)
