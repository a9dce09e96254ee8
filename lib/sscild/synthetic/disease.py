"""The synthetic patients' disease (SSc-ILD, mostly NSIP pattern) and its reference labels.

The extent and layout of the disease are drawn on a coarse millimetre grid (:data:`COARSE_MM`),
independent of the profile: a smooth propensity field with lower-zone, subpleural and dependent
predominance plus random patchiness, optional subpleural sparing, thresholded at the patient's total
extent; established fibrosis (EF) takes its most basal-subpleural part and ground glass (GGO) the
rest (:func:`disease_fields`). Inside EF the parenchyma is given texture: a reticular net, honeycomb
cysts (:func:`fibrosis_texture`). Reference labels are drawn the way readers draw them, as smooth
regions with a few millimetres of boundary uncertainty (:func:`reference_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import expit

from sscild.synthetic.anatomy import Patient
from sscild.synthetic.fields import random_field, sample_points, upsample
from sscild.synthetic.scanner import Grid

__all__ = ["LABEL_NORMAL", "LABEL_EF", "LABEL_GGO", "COARSE_MM", "Disease", "disease_fields", "fibrosis_texture",
           "reference_labels"]

LABEL_NORMAL, LABEL_EF, LABEL_GGO = 1, 2, 3
"""Reference label values (0 is background)."""

COARSE_MM = 4.0
"""Spacing (mm) of the coarse grid the disease is laid out on (independent of the profile)."""


@dataclass
class Disease:
    """One patient's disease on the coarse grid (origin ``c0``): EF share, smooth parenchymal HU,
    the reference-label fields, honeycombing probability, and the generating parameters."""

    c0: tuple
    m_ef: np.ndarray
    hu_smooth: np.ndarray
    a_les: np.ndarray
    a_ef: np.ndarray
    params: dict
    hc_prob: np.ndarray


def disease_fields(pt: Patient, rng: np.random.Generator) -> Disease:
    """Draw the patient's disease: propensity, lesion and EF fields, parenchymal HU, label fields."""
    L = pt.pop["lesion_frac"]
    e = pt.pop["ef_share"]
    cx = np.arange(-pt.A0 - 12, pt.A0 + 12 + COARSE_MM, COARSE_MM, dtype=np.float32)
    cy = np.arange(-pt.B0 - 12, pt.B0 + 12 + COARSE_MM, COARSE_MM, dtype=np.float32)
    cz = np.arange(-16, pt.H + 12 + COARSE_MM, COARSE_MM, dtype=np.float32)
    X, Y, Z = cx[:, None, None], cy[None, :, None], cz[None, None, :]
    rho = pt.cavity_rho(X, Y, Z)
    lung = pt.lung_side(X, Y, Z, 1, rho) | pt.lung_side(X, Y, Z, -1, rho)
    dsub = pt.subpleural_distance(X, Y, Z, rho)
    t = np.clip(Z / pt.H, 0, 1)
    post = 0.5 * (1 - np.clip((Y - pt.yc) / pt.B0, -1, 1))  # 1 posterior .. 0 anterior
    shape = lung.shape
    R1 = random_field(rng, shape, 14 / COARSE_MM)
    R2 = random_field(rng, shape, 10 / COARSE_MM)
    R3 = random_field(rng, shape, 12 / COARSE_MM)
    R4 = random_field(rng, shape, 10 / COARSE_MM)
    R5 = random_field(rng, shape, 6 / COARSE_MM)
    R6 = random_field(rng, shape, 10 / COARSE_MM)
    wz, ws, ls = rng.uniform(0.7, 1.2), rng.uniform(0.5, 1.0), rng.uniform(10, 22)
    wp, wn = rng.uniform(0.15, 0.45), rng.uniform(0.22, 0.4)
    spare = rng.uniform(0.25, 0.5) if rng.random() < 0.3 else 0.0
    P = wz * (1 - t) ** 1.6 + ws * np.exp(-dsub / ls) + wp * post + wn * R1 - spare * np.exp(-dsub / 3.5)
    Pl = P[lung]
    theta = float(np.quantile(Pl, 1 - L))
    tau = 0.035 * float(np.quantile(Pl, 0.99) - np.quantile(Pl, 0.01))
    m_les = expit((P - theta) / tau).astype(np.float32)
    if L <= 0:  # a control: the same draws, no disease
        m_les[:] = 0.0
    Q = P + rng.uniform(0.4, 0.8) * np.exp(-dsub / 9.0) + 0.3 * (1 - t) + 0.22 * R2
    les = lung & (P > theta)
    if les.sum() > 5:
        theta_e = float(np.quantile(Q[les], 1 - e))
    else:
        theta_e = float(Q[lung].max()) + 1
    m_ef = (expit((Q - theta_e) / tau) * m_les).astype(np.float32)
    m_ggo = np.clip(m_les - m_ef, 0, 1)
    a_ggo = rng.uniform(170, 420)
    hu = (pt.base_hu + pt.gravity_hu * post + 10 * (1 - t) + pt.hu_var * R6
          + a_ggo * m_ggo * np.clip(0.8 + 0.25 * R5, 0.4, 1.3)).astype(np.float32)
    # reference-label fields: smooth, with a few millimetres of reader uncertainty
    unc = rng.uniform(0.06, 0.12)
    a_les = ndi.gaussian_filter(m_les, 0.8) + unc * R3
    a_ef = ndi.gaussian_filter(m_ef, 0.8) + unc * R4
    if L <= 0:  # no reader draws a lesion on a control
        a_les[:] = 0.0
        a_ef[:] = 0.0
    hc_w = rng.uniform(0.0, 1.0) * min(1.0, 2.5 * L * e + 0.15)
    hc_prob = np.clip(hc_w * 1.6 * np.exp(-dsub / 7.0) * np.clip((m_ef - 0.3) / 0.5, 0, 1), 0, 0.95).astype(np.float32)
    params = dict(target_lesion_pct=100 * L, target_ef_share=e, ggo_delta_hu=float(a_ggo), zone_weight=float(wz),
                  subpleural_weight=float(ws), subpleural_scale_mm=float(ls), dependent_weight=float(wp),
                  patchiness=float(wn), subpleural_sparing=float(spare), honeycomb_weight=float(hc_w),
                  reader_uncertainty=float(unc))
    return Disease(c0=(float(cx[0]), float(cy[0]), float(cz[0])), m_ef=m_ef, hu_smooth=hu,
                   a_les=a_les.astype(np.float32),
                   a_ef=a_ef.astype(np.float32), params=params, hc_prob=hc_prob)


def fibrosis_texture(pt, dis, hu_b, mef_b, lung_b, xb, yb, zb, dxy, rng):
    """Reticulation, honeycomb cysts: a jittered Voronoi foam inside established fibrosis (in place)."""
    ef = lung_b & (mef_b > 0.02)
    cell = float(rng.uniform(5.0, 7.5))
    wall_hu = float(rng.uniform(-260, -120))
    haze = float(rng.uniform(20, 110))
    dis.params.update(reticular_cell_mm=cell, fibrosis_haze_hu=haze, reticular_wall_hu=wall_hu)
    if not ef.any():
        return
    # seeds on a jittered lattice over the fibrotic region (in mm, independent of the grid)
    reg = dis.m_ef > 0.02
    ii = np.nonzero(reg)
    lo = np.array([ii[a].min() for a in range(3)]) * COARSE_MM + np.asarray(dis.c0) - 2 * cell
    hi = np.array([ii[a].max() for a in range(3)]) * COARSE_MM + np.asarray(dis.c0) + 2 * cell
    axes = [np.arange(lo[a], hi[a], cell) for a in range(3)]
    S = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    S = S + rng.uniform(-0.38, 0.38, S.shape) * cell
    keep = sample_points(dis.m_ef, dis.c0, COARSE_MM, S) > 0.005
    S = S[keep]
    if len(S) < 3:
        return
    cyst = rng.random(len(S)) < sample_points(dis.hc_prob, dis.c0, COARSE_MM, S)
    idx = np.nonzero(ef)
    P = np.column_stack([xb[idx[0]], yb[idx[1]], zb[idx[2]]])
    d, nn = cKDTree(S).query(P, k=2)
    s1, s2 = S[nn[:, 0]], S[nn[:, 1]]
    sep = np.linalg.norm(s2 - s1, axis=1) + 1e-6
    dw = (d[:, 1] ** 2 - d[:, 0] ** 2) / (2 * sep)  # distance to the cell wall (bisector)
    c = cyst[nn[:, 0]]
    half = np.where(c, rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.45))
    ramp = max(0.5 * dxy, 0.35)
    wocc = np.clip((half - dw) / ramp + 0.5, 0, 1)
    base = hu_b[idx]
    interior = np.where(c, -965.0, base + haze)
    tex = interior * (1 - wocc) + np.where(c, wall_hu + 60.0, wall_hu) * wocc
    mm = mef_b[idx]
    # EF's mean attenuation is tied to this patient's GGO (texture, not intensity, tells them apart):
    # shift the reticular cell interiors so that the fibrotic core averages GGO's level +- 40 HU
    core = mm > 0.6
    if core.sum() > 20:
        target = float(base[core].mean()) + 0.55 * dis.params["ggo_delta_hu"] + float(rng.normal(0, 40))
        w_int = (1 - wocc) * ~c
        share = float(w_int[core].mean())
        if share > 0.05:
            shift = (target - float(tex[core].mean())) / share
            shift = float(np.clip(shift, -150.0, 250.0))
            tex = tex + shift * w_int
            dis.params["fibrosis_interior_shift_hu"] = shift
    hu_b[idx] = (base * (1 - mm) + tex * mm).astype(np.float32)


def reference_labels(g: Grid, dis: Disease, lung_f):
    """The reference label map on the scan grid from the fine-grid lung mask and the label fields."""
    nx, ny, nz = g.shape
    if g.k > 1:
        lung = lung_f.reshape(nx, ny, nz, g.k).mean(axis=3) >= 0.5
    else:
        lung = lung_f
    label = np.zeros(g.shape, np.uint8)
    if not lung.any():
        return label
    ii = [np.nonzero(lung.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in ii)
    xs, ys, zs = g.x[sl[0]], g.y[sl[1]], g.z[sl[2]]
    a_les = upsample(dis.a_les, dis.c0, COARSE_MM, xs, ys, zs)
    a_ef = upsample(dis.a_ef, dis.c0, COARSE_MM, xs, ys, zs)
    lb = lung[sl]
    sub = np.where(lb, LABEL_NORMAL, 0).astype(np.uint8)
    sub[lb & (a_les > 0.5)] = LABEL_GGO
    sub[lb & (a_ef > 0.5)] = LABEL_EF
    label[sl] = sub
    return label
