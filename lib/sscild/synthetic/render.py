"""The synthetic patient's noiseless, unblurred CT on the fine grid, layer by layer.

:func:`render` paints the body (:mod:`sscild.synthetic.body`), the mediastinal tubes, the lungs with
their parenchyma, fibrosis texture, emphysema and fissures, an air-filled oesophagus, the vessels,
the airways (with traction bronchiectasis), the bones and the scanner table, in that order: each
layer's random draws come from the rendering stream in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscild.synthetic.anatomy import Patient, mediastinal_tubes, oesophagus_axis
from sscild.synthetic.body import TISSUE_HU, abdomen, bones, chest_wall, heart, table
from sscild.synthetic.disease import COARSE_MM, Disease, fibrosis_texture
from sscild.synthetic.fields import bbox, upsample
from sscild.synthetic.scanner import Grid
from sscild.synthetic.trees import Trees, airway_segments
from sscild.synthetic.tubes import render_tubes, splat_tubes
from sscild.synthetic.variety import render_emphysema, render_fissures, render_oesophagus_lumen

__all__ = ["render"]


def render(pt: Patient, g: Grid, dis: Disease, trees: Trees, rng: np.random.Generator):
    """The noiseless, unblurred CT on the fine grid; returns (hu, lung mask, body mask, extras).

    ``extras`` holds the emphysema and oesophageal-air masks on the fine grid.
    """
    img, torso = chest_wall(pt, g, rng)
    img, zdia = abdomen(pt, g, img, torso.cavity)
    heart(pt, g, img, torso.cavity, zdia)
    # great vessels and oesophagus (soft tissue tubes)
    soft = np.zeros(g.fine_shape, np.float32)
    render_tubes(soft, g.x, g.y, g.zf, *mediastinal_tubes(pt), ramp=g.spacing[0])
    box = _LungBox.around(pt, g)
    lung_f, emphysema = _lungs(pt, g, dis, img, torso.rho, soft, box, rng)
    # soft-tissue tubes over the mediastinum
    m = soft > 0
    img[m] += (TISSUE_HU["blood"] - img[m]) * soft[m]
    del soft
    extras = {"emphysema": emphysema, "oesophagus_air": _oesophagus_air(pt, g, img)}
    _vessels(g, trees, img, torso.cavity, box)
    dis.params["bronchiectasis_dilation"] = _airways(g, trees, dis, img, rng)
    bones(pt, g, img, torso)
    table(pt, g, img, torso.y_flat)
    return img, lung_f, torso.body, extras


@dataclass
class _LungBox:
    """The fine-grid box around both lungs: index slices and the mm coordinates along them."""

    sl: tuple
    xb: np.ndarray
    yb: np.ndarray
    zb: np.ndarray

    @classmethod
    def around(cls, pt: Patient, g: Grid) -> _LungBox:
        i0, i1 = bbox(g.x, -pt.A0 - 2, pt.A0 + 2)
        j0, j1 = bbox(g.y, -pt.B0 - 2, pt.B0 + 2)
        k0, k1 = bbox(g.zf, -14.0, pt.H + 2)
        return cls(sl=(slice(i0, i1), slice(j0, j1), slice(k0, k1)), xb=g.x[i0:i1], yb=g.y[j0:j1], zb=g.zf[k0:k1])

    @property
    def shape(self) -> tuple:
        return tuple(s.stop - s.start for s in self.sl)


def _lungs(pt: Patient, g: Grid, dis: Disease, img, rho, soft, box: _LungBox, rng: np.random.Generator):
    """Parenchyma with fibrosis texture, emphysema and bullae, visible fissures (in place).

    Returns the lung mask and the emphysema mask on the fine grid.
    """
    dxy = g.spacing[0]
    dzf = g.spacing[2] / g.k
    H = pt.H
    xb, yb, zb = box.xb, box.yb, box.zb
    Xb, Yb, Zb = xb[:, None, None], yb[None, :, None], zb[None, None, :]
    rho_b = rho[box.sl]
    lung_b = pt.lung_side(Xb, Yb, Zb, 1, rho_b) | pt.lung_side(Xb, Yb, Zb, -1, rho_b)
    lung_b &= soft[box.sl] < 0.3
    hu_b = upsample(dis.hu_smooth, dis.c0, COARSE_MM, xb, yb, zb)
    mef_b = upsample(dis.m_ef, dis.c0, COARSE_MM, xb, yb, zb)
    fibrosis_texture(pt, dis, hu_b, mef_b, lung_b, xb, yb, zb, dxy, rng)
    img_b = img[box.sl]
    img_b[lung_b] = hu_b[lung_b]
    del hu_b, mef_b, rho_b
    # emphysema and bullae (only where the reference labels no lesion), visible fissures
    free_b = lung_b & (upsample(dis.a_les, dis.c0, COARSE_MM, xb, yb, zb) < 0.3)
    emph_b = render_emphysema(img_b, lung_b, free_b, xb, yb, zb, (dxy, dxy, dzf), draw=pt.var, height_mm=H,
                              dsub_fn=lambda: pt.subpleural_distance(Xb, Yb, Zb))
    del free_b
    render_fissures(img_b, lung_b, xb, yb, zb, draw=pt.var, height_mm=H, depth_mm=pt.B0)
    emphysema = np.zeros(g.fine_shape, bool)
    emphysema[box.sl] = emph_b
    del emph_b
    lung_f = np.zeros(g.fine_shape, bool)
    lung_f[box.sl] = lung_b
    return lung_f, emphysema


def _oesophagus_air(pt: Patient, g: Grid, img) -> np.ndarray:
    """A dilated oesophagus holding air over a dependent fluid level (in place); returns its air mask."""
    lum = pt.var["oesophagus_lumen_mm"]
    if not lum > 0:
        return np.zeros(g.fine_shape, bool)
    o0, o1, _ = oesophagus_axis(pt)
    occ = np.zeros(g.fine_shape, np.float32)
    render_tubes(occ, g.x, g.y, g.zf, o0[None], o1[None], np.array([lum]), np.array([lum]), ramp=g.spacing[0])
    return render_oesophagus_lumen(img, occ, g.y, y_center=0.5 * (o0[1] + o1[1]), radius=lum,
                                   fluid=pt.var["oesophagus_fluid"])


def _vessels(g: Grid, trees: Trees, img, cavity, box: _LungBox) -> None:
    """Vessels as blood over air and fat: thick ones analytic, thin ones as partial-volume deposits (in place)."""
    x, y, zf = g.x, g.y, g.zf
    dxy = g.spacing[0]
    dzf = g.spacing[2] / g.k
    vp0, vp1, vr0, vr1 = trees.vessels
    big = np.maximum(vr0, vr1) >= 0.9 * dxy
    vocc = np.zeros(g.fine_shape, np.float32)
    render_tubes(vocc, x, y, zf, vp0[big], vp1[big], vr0[big], vr1[big], ramp=dxy)
    small = splat_tubes(box.shape, (box.xb[0], box.yb[0], box.zb[0]), (dxy, dxy, dzf),
                        vp0[~big], vp1[~big], vr0[~big], vr1[~big], step=0.5 * min(dxy, dzf))
    vb = vocc[box.sl]
    vb += small
    np.minimum(vb, 1.0, out=vb)
    del small
    m = (vocc > 0) & (img < 0) & cavity
    img[m] += (TISSUE_HU["blood"] - img[m]) * vocc[m]


def _airways(g: Grid, trees: Trees, dis: Disease, img, rng: np.random.Generator) -> float:
    """Airway walls and lumina (in place); returns the patient's bronchiectasis dilation factor.

    Trachea and main bronchi anywhere; bronchi of the tree only in lung and mediastinal fat. Walls and
    lumina are unions over all tubes, so one airway's lumen is never filled by another's wall.
    """
    x, y, zf = g.x, g.y, g.zf
    dxy = g.spacing[0]
    aw_o, aw_l, dil = airway_segments(trees, dis, rng)
    oo = np.zeros(g.fine_shape, np.float32)
    ol = np.zeros(g.fine_shape, np.float32)
    render_tubes(oo, x, y, zf, *aw_o, ramp=dxy)
    render_tubes(ol, x, y, zf, *aw_l, ramp=dxy)
    soft_tissue = img >= -50
    oo[soft_tissue] = 0
    ol[soft_tissue] = 0
    del soft_tissue
    render_tubes(oo, x, y, zf, *trees.airway_outer, ramp=dxy)
    render_tubes(ol, x, y, zf, *trees.airway_lumen, ramp=dxy)
    m = oo > 0
    o_m = oo[m]
    l_m = np.minimum(ol[m], o_m)
    img[m] = img[m] * (1 - o_m) + TISSUE_HU["airway_wall"] * (o_m - l_m) + TISSUE_HU["air"] * l_m
    return dil
