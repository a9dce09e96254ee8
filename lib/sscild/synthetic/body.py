"""The synthetic body outside the lungs on the fine grid: chest wall, abdomen, heart, bones, table.

Air outside the body (-1000 HU); skin, subcutaneous fat (about -100 HU), breast tissue and chest-wall
muscle (about +45 HU) with scapular and shoulder muscle; mediastinal fat filling the rib cage; under
the diaphragm a muscle band, then liver, stomach (sometimes with air) and spleen; the heart in its
pericardial fat (with an optional effusion); spine, twelve pairs of ribs sloping down anteriorly,
costal cartilage, sternum and scapulae; the scanner table with its foam mattress. Attenuations are
in :data:`TISSUE_HU`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscild.synthetic.anatomy import Patient, smoothstep
from sscild.synthetic.fields import bbox
from sscild.synthetic.scanner import Grid

__all__ = ["TISSUE_HU", "Torso", "chest_wall", "abdomen", "heart", "bones", "table"]

TISSUE_HU = dict(air=-1000.0, fat=-100.0, muscle=45.0, skin=30.0, blood=40.0, med_fat=-85.0, liver=58.0,
                 spleen=46.0, stomach=30.0, cortical=800.0, marrow=260.0, cartilage=140.0, disc=85.0,
                 airway_wall=-20.0, table=250.0, foam=-920.0, csf=15.0, fluid=12.0)
"""Attenuation (HU) of the tissues and materials outside the lung parenchyma."""


@dataclass
class Torso:
    """The body's shape on the fine grid, shared by the layers drawn into it."""

    rho: np.ndarray  # rib-cage superellipse radius (< 1 inside the cavity)
    dout: np.ndarray  # signed distance from the inner chest wall, mm (negative inside)
    phi: np.ndarray  # (nx, ny) angle about the body axis: 0 posterior midline, +-pi anterior midline
    body: np.ndarray  # inside the body
    cavity: np.ndarray  # inside the rib cage
    y_flat: float  # the flattened posterior body surface (the patient lies on it)


def chest_wall(pt: Patient, g: Grid, rng: np.random.Generator):
    """Air, skin, subcutaneous fat, breast tissue, chest-wall muscle and mediastinal fat; returns (HU, Torso).

    Draws the breast texture's own random stream from ``rng`` (its first draw in the rendering).
    """
    x, y, zf = g.x, g.y, g.zf
    H = pt.H
    X2, Y2 = x[:, None], y[None, :]
    r2 = np.sqrt(X2 ** 2 + (Y2 - pt.yc) ** 2)
    phi = np.arctan2(X2, -(Y2 - pt.yc))  # 0 posterior midline, +-pi anterior midline
    aphi = np.abs(phi)
    cphi = np.cos(phi)
    wpost = np.clip(cphi, 0, 1) ** 2
    want = np.clip(-cphi, 0, 1) ** 2
    a, b = pt.cavity_ab(zf)
    xp = (np.abs(x)[:, None, None] / a[None, None, :]) ** pt.p
    yp = (np.abs(y - pt.yc)[None, :, None] / b[None, None, :]) ** pt.p
    rho = (xp + yp) ** np.float32(1.0 / pt.p)
    rho = rho.astype(np.float32)
    dout = (r2[:, :, None] * (1.0 - 1.0 / np.maximum(rho, 1e-3))).astype(np.float32)
    # chest wall thicknesses
    zt = zf / H
    muscle2d = (pt.muscle_lat + (pt.muscle_post - pt.muscle_lat) * wpost
                + (pt.muscle_ant - pt.muscle_lat) * want).astype(np.float32)
    scap2d = (16.0 * np.exp(-((aphi - 0.33 * np.pi) / 0.22) ** 2)).astype(np.float32)
    scap_z = smoothstep((zt - 0.45) / 0.15).astype(np.float32)
    fat2d = (pt.fat * (1 - 0.45 * wpost)).astype(np.float32)
    bre2d = (30.0 * pt.breast * np.exp(-((aphi - 0.78 * np.pi) / 0.3) ** 2)).astype(np.float32)
    bre_z = np.exp(-((zf - 0.40 * H) / 55.0) ** 2).astype(np.float32)
    lat2d = np.clip(1 - wpost - want, 0, 1).astype(np.float32)
    shoulder_z = (40.0 * smoothstep((zt - 0.72) / 0.28)).astype(np.float32)
    muscle = (muscle2d[:, :, None] + scap2d[:, :, None] * scap_z[None, None, :]
              + lat2d[:, :, None] * shoulder_z[None, None, :])
    outer = muscle + (fat2d[:, :, None] + bre2d[:, :, None] * bre_z[None, None, :])
    _, y_flat, _ = pt.body_extent()
    body = (dout < outer) & (Y2 > y_flat)[:, :, None]
    brng = np.random.default_rng(rng.integers(0, 2 ** 63))  # breast texture: its own stream
    img = np.full(g.fine_shape, TISSUE_HU["air"], np.float32)
    img[body] = TISSUE_HU["fat"]
    img[body & (dout > outer - 2.0)] = TISSUE_HU["skin"]
    # glandular breast tissue strands
    if pt.breast > 0:
        gl = body & (dout > muscle + fat2d[:, :, None] + 2) & (bre2d[:, :, None] * bre_z[None, None, :] > 8)
        if gl.any():
            gl_idx = np.nonzero(gl)
            img[gl_idx] = np.where(brng.random(gl_idx[0].size) < 0.35, 10.0, TISSUE_HU["fat"])
    img[body & (dout < muscle) & (dout >= 0)] = TISSUE_HU["muscle"]
    del outer
    cavity = rho < 1.0
    img[cavity] = TISSUE_HU["med_fat"]
    return img, Torso(rho=rho, dout=dout, phi=phi, body=body, cavity=cavity, y_flat=y_flat)


def abdomen(pt: Patient, g: Grid, img, cavity):
    """Under the diaphragm: muscle band, then liver (right), stomach and spleen (left); returns (HU, top).

    ``top`` is the (nx, ny) height of the abdominal organs' upper surface; the returned HU array is new.
    """
    x, y, zf = g.x, g.y, g.zf
    X2, Y2 = x[:, None], y[None, :]
    zdia = pt.abdomen_top(X2 + 0 * Y2, Y2 + 0 * X2).astype(np.float32)
    Z = zf[None, None, :]
    below = cavity & (Z < zdia[:, :, None])
    img[below] = TISSUE_HU["muscle"]
    left_organ = np.where(Y2 > 0.05 * pt.B0, TISSUE_HU["stomach"], TISSUE_HU["spleen"])
    organ2d = np.where(X2 - 0.5 * (Y2 - pt.ydd) > -0.15 * pt.A0, TISSUE_HU["liver"], left_organ).astype(np.float32)
    deep = cavity & (Z < zdia[:, :, None] - 4.0)
    img = np.where(deep, organ2d[:, :, None], img)
    if pt.stomach_air:
        st_c = np.array([-0.45 * pt.A0, 0.25 * pt.B0, pt.zd_left - 22.0])
        st = (((X2 - st_c[0]) / 38.0) ** 2 + ((Y2 - st_c[1]) / 28.0) ** 2)[:, :, None] + ((Z - st_c[2]) / 16.0) ** 2 < 1
        st &= deep & (Z > st_c[2] - 2.0)
        img[st] = TISSUE_HU["air"]
    return img, zdia


def heart(pt: Patient, g: Grid, img, cavity, zdia) -> None:
    """The heart with pericardial fat (and fluid, with an effusion) above the diaphragm (in place)."""
    x, y, zf = g.x, g.y, g.zf
    hm = 6 + pt.effusion_mm
    hi0, hi1 = bbox(x, pt.heart_c[0] - pt.heart_r.max() - hm, pt.heart_c[0] + pt.heart_r.max() + hm)
    hj0, hj1 = bbox(y, pt.heart_c[1] - pt.heart_r.max() - hm, pt.heart_c[1] + pt.heart_r.max() + hm)
    hk0, hk1 = bbox(zf, pt.heart_c[2] - pt.heart_r[2] - hm, pt.heart_c[2] + pt.heart_r[2] + hm)
    hx, hy, hz = x[hi0:hi1, None, None], y[None, hj0:hj1, None], zf[None, None, hk0:hk1]
    sub = img[hi0:hi1, hj0:hj1, hk0:hk1]
    above = hz > zdia[hi0:hi1, hj0:hj1, None] - 3.0
    sub[pt.in_heart(hx, hy, hz, 3.0) & cavity[hi0:hi1, hj0:hj1, hk0:hk1] & above] = TISSUE_HU["med_fat"]
    if pt.effusion_mm > 0:  # pericardial fluid around the heart, inside the fat
        sub[pt.in_heart(hx, hy, hz, pt.effusion_mm) & cavity[hi0:hi1, hj0:hj1, hk0:hk1] & above] = TISSUE_HU["fluid"]
    sub[pt.in_heart(hx, hy, hz, 0.0) & above] = TISSUE_HU["blood"]



def bones(pt: Patient, g: Grid, img, torso: Torso) -> None:
    """Ribs with costal cartilage, sternum, scapulae and the spine (in place)."""
    body, dout, phi = torso.body, torso.dout, torso.phi
    x, y, zf = g.x, g.y, g.zf
    H = pt.H
    band = body & (dout > -1.0) & (dout < 22.0)
    ix, iy, iz = np.nonzero(band)
    ph = np.abs(phi[ix, iy])
    zv = zf[iz]
    dv = dout[ix, iy, iz]
    pitch = (H + 55.0) / 11.0
    z0 = H + 10.0

    def drop(k, p):
        return (58.0 + 5.0 * k) * (p / np.pi) ** 1.1

    k = np.clip(np.round((z0 - zv - drop(5, ph)) / pitch), 0, 11)
    k = np.clip(np.round((z0 - zv - drop(k, ph)) / pitch), 0, 11)
    zk = z0 - k * pitch - drop(k, ph)
    hr = 4.5 + 0.2 * k
    e = ((dv - 4.5) / 2.8) ** 2 + ((zv - zk) / hr) ** 2
    bone_end = np.where(k <= 6, 0.72, np.where(k <= 9, 0.66, 0.48)) * np.pi
    cart_end = np.where(k <= 6, 0.93, np.where(k <= 9, 0.85, 0.48)) * np.pi
    inr = (e < 1) & (ph > 0.12 * np.pi)
    rib = inr & (ph < bone_end)
    cart = inr & (ph >= bone_end) & (ph < cart_end)
    val = np.full(ix.size, np.nan, np.float32)
    val[cart] = TISSUE_HU["cartilage"]
    val[rib] = np.where(e[rib] > 0.4, TISSUE_HU["cortical"], TISSUE_HU["marrow"])
    # sternum
    xv = x[ix]
    w_st = np.where(zv > 0.78 * H, 24.0, 13.0)
    st = (np.abs(xv) < w_st) & (dv > 1.5) & (dv < 11.0) & (ph > 0.9 * np.pi) & (zv > 0.32 * H) & (zv < 0.86 * H)
    val[st] = np.where((dv[st] < 3.0) | (dv[st] > 9.5), TISSUE_HU["cortical"] * 0.8, TISSUE_HU["marrow"] + 60)
    # scapulae
    sc = (dv > 10.0) & (dv < 14.5) & (ph > 0.2 * np.pi) & (ph < 0.47 * np.pi) & (zv > 0.52 * H) & (zv < H + 30)
    val[sc] = 520.0
    ok = ~np.isnan(val)
    img[ix[ok], iy[ok], iz[ok]] = val[ok]
    del band
    # spine
    i0, i1 = bbox(x, -45, 45)
    j0, j1 = bbox(y, pt.ysp - pt.rv - 50, pt.ysp + pt.rv + 2)
    X = x[i0:i1, None, None]
    Y = y[None, j0:j1, None]
    Z = zf[None, None, :]
    sub = img[i0:i1, j0:j1, :]
    bsub = body[i0:i1, j0:j1, :]
    rr = np.sqrt(X ** 2 + (Y - pt.ysp) ** 2)
    disc = ((Z / pt.disc_pitch + pt.disc_phase) % 1.0) < 0.17
    vb = (rr < pt.rv) & bsub
    sub[vb & disc] = TISSUE_HU["disc"]
    sub[vb & ~disc & (rr >= pt.rv - 1.6)] = TISSUE_HU["cortical"]
    sub[vb & ~disc & (rr < pt.rv - 1.6)] = TISSUE_HU["marrow"]
    ycan = pt.ysp - pt.rv - 9.0
    rc = np.sqrt(X ** 2 + (Y - ycan) ** 2)
    arch = (rc > 8.0) & (rc < 13.0) & (Y < ycan + 3.0)
    spin = (np.abs(X) < 3.5) & (Y < ycan - 11.0) & (Y > ycan - 34.0)
    trans = (np.abs(X) > 11.0) & (np.abs(X) < 32.0) & (np.abs(Y - ycan - 2.0) < 4.5)
    post = (arch | spin | trans) & ~disc & bsub
    sub[post] = 600.0
    sub[(rc <= 8.0) & bsub] = TISSUE_HU["csf"]


def table(pt: Patient, g: Grid, img, y_flat: float) -> None:
    """The scanner table under the patient: a shell around a foam mattress (in place)."""
    x, y = g.x, g.y
    X2, Y2 = x[:, None], y[None, :]
    half_fov = 0.5 * (x[-1] - x[0])
    yt = y_flat - pt.table_gap - 0.0012 * X2 ** 2
    inx = np.abs(X2) < half_fov - 8
    shell = inx & (((Y2 <= yt) & (Y2 > yt - 3.0)) | ((Y2 <= yt - 32) & (Y2 > yt - 35.0)))
    foam = inx & (Y2 <= yt - 3.0) & (Y2 > yt - 32.0)
    img[foam] = TISSUE_HU["foam"]
    img[shell] = TISSUE_HU["table"]
