"""The scanner of the synthetic cohort: field of view, slices, reconstruction blur and noise.

Each patient gets their own field of view (in-plane spacing +-10 % around the profile's, at least 6 %
wider than the body) and slice thickness (0.8 or 1 x the profile's); the image is rendered on a fine
grid of thinner sub-slices (:class:`Grid`) and averaged along z (partial volume), blurred in-plane
and given correlated noise (:func:`scan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sscild.profiles import Profile
from sscild.synthetic.anatomy import Patient

__all__ = ["Grid", "make_grid", "to_scan_grid", "scan"]


@dataclass
class Grid:
    """The patient's scan grid (mm coordinates of the voxel centres) and its fine sub-slice grid."""

    x: np.ndarray  # (nx,) patient mm
    y: np.ndarray
    z: np.ndarray  # slice centres
    zf: np.ndarray  # fine (sub-slice) centres
    k: int
    spacing: tuple
    affine: np.ndarray

    @property
    def shape(self):
        return (self.x.size, self.y.size, self.z.size)

    @property
    def fine_shape(self):
        return (self.x.size, self.y.size, self.zf.size)


def make_grid(pt: Patient, prof: Profile) -> Grid:
    """The patient's grid around the profile's nominal shape and spacing (field of view, slices)."""
    nx, ny, _ = (int(v) for v in prof.phantom_shape)
    dx0, _, dz0 = (float(v) for v in prof.phantom_spacing)
    half, post, ant = pt.body_extent()
    need = max(2 * half, ant - post + 30) * 1.06 / nx  # body must fit the field of view
    dxy = float(np.clip(max(dx0 * pt.fov_factor, need), 0.9 * dx0, 1.1 * dx0))
    dz = round(dz0 * (0.8, 1.0, 1.0)[pt.thick_choice], 3)
    z_lo = -pt.margins[0] - 0.25 * dz
    z_hi = pt.H + pt.margins[1]
    short = 0.9 * prof.phantom_shape[2] * dz0 - (z_hi - z_lo)  # scan at least 90 % of the nominal length
    if short > 0:
        z_lo -= 0.5 * short
        z_hi += 0.5 * short
    nz = max(int(math.ceil((z_hi - z_lo) / dz)), 4)
    z = z_lo + (np.arange(nz) + 0.5) * dz
    k = max(1, int(round(dz / (2.0 * dxy))))
    k = min(k, 4)
    sub = (np.arange(k) + 0.5) / k - 0.5
    zf = (z[:, None] + sub[None, :] * dz).ravel()
    # body centred slightly off the FOV centre; posterior surface kept inside the field
    body_cy = 0.5 * (post + ant)
    x = (np.arange(nx) - (nx - 1) / 2) * dxy - pt.offset[0]
    y = (np.arange(ny) - (ny - 1) / 2) * dxy + body_cy - pt.offset[1]
    aff = np.diag([dxy, dxy, dz, 1.0])
    aff[:3, 3] = [x[0] + pt.offset[0], y[0] - body_cy + pt.offset[1] - 20.0, z[0] + pt.z_table]
    return Grid(x=x.astype(np.float32), y=y.astype(np.float32), z=z.astype(np.float32),
                zf=zf.astype(np.float32), k=k, spacing=(dxy, dxy, dz), affine=aff)


def to_scan_grid(mask_f: np.ndarray, g: Grid) -> np.ndarray:
    """A fine-grid mask on the scan grid (a voxel is in when most of its sub-slices are)."""
    nx, ny, nz = g.shape
    if g.k > 1:
        return mask_f.reshape(nx, ny, nz, g.k).mean(axis=3) >= 0.5
    return mask_f


def scan(img_f, g: Grid, pt: Patient, rng, body_f):
    """Reconstruction blur, slice averaging (partial volume along z), correlated noise; int16 HU."""
    nx, ny, nz = g.shape
    s = pt.psf_mm / g.spacing[0]
    img = ndi.gaussian_filter(img_f, (s, s, 0.0), mode="nearest")
    if g.k > 1:
        img = img.reshape(nx, ny, nz, g.k).mean(axis=3, dtype=np.float32)
        body = body_f.reshape(nx, ny, nz, g.k).mean(axis=3) >= 0.5
    else:
        body = body_f
    noise = rng.standard_normal((nx, ny, nz), dtype=np.float32)
    noise = ndi.gaussian_filter(noise, (0.65, 0.65, 0.0), mode="wrap")
    noise *= pt.noise_sd / (float(noise.std()) + 1e-6)
    noise[~body] *= 0.12
    img += noise
    np.clip(np.rint(img), -1024, 3071, out=img)
    return img.astype(np.int16)
