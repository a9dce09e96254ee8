"""The synthetic lungs' vascular and airway trees.

Two space-filling vascular trees per lung (arteries from the hilum, veins towards the left atrium)
are grown by recursive splitting of random points that fill the lung (the volume-filling branching
idea of Tawhai et al., 2000); radii follow a Murray-type law (r ~ n^(1/2.9) for n supplied
territories), so vessels taper from about 6 mm radius at the hilum to 0.3 mm at the periphery.
Bronchi with walls run beside the arteries; inside established fibrosis they become traction
bronchiectasis (:func:`airway_segments`). The trachea and main bronchi join them at the carina.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscild.synthetic.anatomy import Patient
from sscild.synthetic.disease import COARSE_MM, Disease
from sscild.synthetic.fields import sample_points
from sscild.synthetic.tubes import Tubes

__all__ = ["Trees", "build_trees", "airway_segments"]

_TREE = dict(r_leaf=0.28, gamma=2.9, frac=0.55, r_max=6.5, density_per_ml=2.0)
"""Vascular tree settings: leaf radius (mm), Murray-type exponent, branch length as a share of the
distance to the centre of its territory, largest intrapulmonary radius, territories per ml of lung."""


def _grow_tree(root_start, root_end, root_r, points, rng, r_leaf, gamma=2.85, frac=0.55, r_max=6.5):
    """Volume-filling binary tree from ``root_end`` into ``points`` (N x 3, mm), one level at a time.

    Each group of points gets a branch from its start towards the group's centre of mass (``frac`` of the
    way); the group is then split across its principal axis, unequally (30-50 %), and the halves grow
    from the branch's end. Groups of one or two points end in leaf branches to the points.

    Returns:
        p0 (M x 3), p1 (M x 3), radius (M,), nsub (M,), parent (M,), depth (M,); parents come first.
    """
    points = np.asarray(points, float)
    N = len(points)
    P0 = [np.asarray(root_start, float)[None]]
    P1 = [np.asarray(root_end, float)[None]]
    R = [np.array([root_r], float)]
    NS = [np.array([N])]
    PAR = [np.array([-1])]
    DEP = [np.array([0])]
    nseg = 1
    grp = np.zeros(N, np.intp)
    pid = np.arange(N)
    starts = np.asarray(root_end, float)[None]
    parents = np.array([0])
    pdirs = (np.asarray(root_end, float) - np.asarray(root_start, float))[None]
    depth = 1
    while pid.size:
        G = len(starts)
        counts = np.bincount(grp, minlength=G)
        leaf = counts[grp] <= 2
        if leaf.any():
            g = grp[leaf]
            P0.append(starts[g]); P1.append(points[pid[leaf]]); R.append(np.full(g.size, r_leaf))
            NS.append(np.ones(g.size, int)); PAR.append(parents[g]); DEP.append(np.full(g.size, depth))
            nseg += g.size
        inner = counts > 2
        if not inner.any():
            break
        remap = np.cumsum(inner) - 1
        keep = ~leaf
        pid, grp = pid[keep], remap[grp[keep]]
        starts, parents, pdirs, counts = starts[inner], parents[inner], pdirs[inner], counts[inner]
        G = len(starts)
        Q = points[pid]
        c = np.column_stack([np.bincount(grp, Q[:, a], G) for a in range(3)]) / counts[:, None]
        v = c - starts
        L = np.linalg.norm(v, axis=1)
        bad = L < 1e-6
        v[bad] = pdirs[bad]
        L = np.where(bad, 1.0, L)
        d = v / np.linalg.norm(v, axis=1, keepdims=True)
        ell = frac * L * rng.uniform(0.85, 1.15, G)
        ends = starts + d * ell[:, None]
        ids = nseg + np.arange(G)
        P0.append(starts); P1.append(ends); R.append(np.minimum(r_leaf * counts ** (1.0 / gamma), r_max))
        NS.append(counts); PAR.append(parents); DEP.append(np.full(G, depth))
        nseg += G
        # split across the principal axis of the spread perpendicular to the branch
        D = Q - c[grp]
        D -= (D * d[grp]).sum(1, keepdims=True) * d[grp]
        cov = np.empty((G, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                cov[:, a, b] = cov[:, b, a] = np.bincount(grp, D[:, a] * D[:, b], G)
        cov += np.eye(3) * 1e-9
        ax = np.linalg.eigh(cov)[1][:, :, -1]
        sproj = (D * ax[grp]).sum(1)
        order = np.lexsort((sproj, grp))
        first = np.cumsum(counts) - counts
        rank = np.empty(pid.size, np.intp)
        rank[order] = np.arange(pid.size) - first[grp[order]]
        cut = np.clip(np.rint(counts * rng.uniform(0.3, 0.5, G)).astype(int), 1, counts - 1)
        grp = 2 * grp + (rank >= cut[grp])
        starts = np.repeat(ends, 2, axis=0)
        parents = np.repeat(ids, 2)
        pdirs = np.repeat(d, 2, axis=0)
        depth += 1
    return (np.concatenate(P0), np.concatenate(P1), np.concatenate(R), np.concatenate(NS),
            np.concatenate(PAR), np.concatenate(DEP))


def _sample_lung_points(pt: Patient, side, n, rng):
    half = pt.A0
    out = []
    got = 0
    while got < n:
        m = max(4 * n, 2000)
        q = np.column_stack([side * rng.uniform(0, half, m), rng.uniform(-pt.B0, pt.B0, m), rng.uniform(-5, pt.H, m)])
        ok = pt.lung_side(q[:, 0], q[:, 1], q[:, 2], side)
        q = q[ok]
        out.append(q)
        got += len(q)
    return np.concatenate(out)[:n]


@dataclass
class Trees:
    """One patient's trees as tubes (p0, p1, r0, r1), with each lung's arterial tree for its bronchi."""

    vessels: tuple  # (p0, p1, r0, r1)
    airway_outer: tuple  # trachea and main bronchi
    airway_lumen: tuple
    art: list  # per lung: the arterial tree with its bronchi (bronchiectasis is decided later)
    lung_ml: float


def build_trees(pt: Patient, rng: np.random.Generator) -> Trees:
    """Arterial and venous trees of both lungs, the bronchi beside the arteries, trachea, main bronchi."""
    m = 60000
    q = np.column_stack([rng.uniform(-pt.A0, pt.A0, m), rng.uniform(-pt.B0, pt.B0, m), rng.uniform(-5, pt.H, m)])
    lung_ml = float(pt.lung(q[:, 0], q[:, 1], q[:, 2]).mean() * (2 * pt.A0) * (2 * pt.B0) * (pt.H + 5) / 1000.0)
    vessels, aw_outer, aw_lumen = Tubes(), Tubes(), Tubes()
    art_info = []
    r_leaf = _TREE["r_leaf"]
    kw = dict(gamma=_TREE["gamma"], frac=_TREE["frac"], r_max=_TREE["r_max"])
    # pulmonary trunk (mediastinum) and left atrium: roots of the arterial and venous trees
    hc, hr = pt.heart_c, pt.heart_r
    ptrunk_top = np.array([-10.0, pt.yc + 0.12 * pt.B0, pt.z_car - 18.0])
    ptrunk_bot = np.array([hc[0] + 5, hc[1] + 0.3 * hr[1], hc[2] + 0.45 * hr[2]])
    vessels.add(ptrunk_bot, ptrunk_top, 13.0, 12.0)
    la = np.array([hc[0] + 12, hc[1] - 0.55 * hr[1], hc[2] + 0.25 * hr[2]])
    carina = np.array([0.0, pt.y_trach, pt.z_car])
    for side in (1, -1):
        npts = int(np.clip(lung_ml * (0.53 if side > 0 else 0.47) * _TREE["density_per_ml"], 500, 6000))
        w_h = float(pt.med_halfwidth(pt.yc - 0.05 * pt.B0, pt.z_hil))
        hil_a = np.array([side * (w_h + 4.0), pt.yc - 0.02 * pt.B0, pt.z_hil + (4.0 if side > 0 else 10.0)])
        hil_v = np.array([side * (w_h - 2.0), pt.yc + 0.10 * pt.B0, pt.z_hil - 28.0])
        pts = _sample_lung_points(pt, side, npts, rng)
        ap0, ap1, ar, _, apar, adep = _grow_tree(ptrunk_top, hil_a, 9.5 if side > 0 else 9.0, pts, rng, r_leaf, **kw)
        pts_v = _sample_lung_points(pt, side, npts, rng)
        vp0, vp1, vr, _, vpar, _ = _grow_tree(la, hil_v, 8.0, pts_v, rng, r_leaf, **kw)
        for p0, p1, r, par in ((ap0, ap1, ar, apar), (vp0, vp1, vr, vpar)):
            r0 = np.minimum(np.where(par >= 0, r[np.maximum(par, 0)], r), r * 1.25)  # taper within a branch
            vessels.add(p0, p1, r0, r)
        # bronchi beside the arteries: a side offset carried down the tree, level by level
        d0 = ap1[0] - ap0[0]
        ref = np.array([0.0, -1.0, 0.3])
        o = ref - d0 * (ref @ d0) / (d0 @ d0)
        off_root = o / np.linalg.norm(o)
        dirs = ap1 - ap0
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-9
        off = np.zeros_like(ap1)
        start_off = np.zeros_like(ap1)
        for lev in range(int(adep.max()) + 1):
            sel = np.nonzero(adep == lev)[0]
            base = np.where((apar[sel] < 0)[:, None], off_root[None], off[np.maximum(apar[sel], 0)])
            start_off[sel] = base
            oo = base - dirs[sel] * (base * dirs[sel]).sum(1, keepdims=True)
            nrm = np.linalg.norm(oo, axis=1, keepdims=True)
            off[sel] = np.where(nrm > 1e-6, oo / np.maximum(nrm, 1e-9), base)
        lum = 0.8 * ar
        wall = 0.25 + 0.15 * lum
        sep = ar + lum + wall + 0.4
        parent = np.maximum(apar, 0)
        art_info.append(dict(
            p0=ap0 + start_off * np.where(apar >= 0, sep[parent], sep)[:, None], p1=ap1 + off * sep[:, None],
            r=ar, keep=(lum >= 1.25) & (apar >= 0), lum=lum, wall=wall, parent=apar,
            lum0=np.where(apar >= 0, lum[parent], lum), wall0=np.where(apar >= 0, wall[parent], wall)))
        # main bronchus from the carina to the first bronchus of the tree
        root_aw = hil_a + off_root * sep[0]
        lum_main = pt.r_trach * (0.78 if side > 0 else 0.7)
        aw_outer.add(carina, root_aw, lum_main + 1.8, lum_main + 1.6)
        aw_lumen.add(carina, root_aw, lum_main, lum_main * 0.9)
    top = np.array([0.0, pt.y_trach, pt.H + 80.0])
    aw_outer.add(top, carina, pt.r_trach + 2.2, pt.r_trach + 2.2)
    aw_lumen.add(top, carina, pt.r_trach, pt.r_trach)
    return Trees(vessels=vessels.arrays(), airway_outer=aw_outer.arrays(), airway_lumen=aw_lumen.arrays(),
                 art=art_info, lung_ml=lung_ml)



def airway_segments(trees: Trees, dis: Disease, rng: np.random.Generator):
    """Bronchi of the tree: normal ones beside the arteries, and traction bronchiectasis in fibrosis.

    Inside established fibrosis, bronchi are drawn further out into the periphery, dilated (a
    per-patient factor of 1.6-2.6) and irregular (radius varying 0.75-1.3x along them), with thick walls.
    """
    outer, lumen = Tubes(), Tubes()
    dil = float(rng.uniform(1.6, 2.6))
    for info in trees.art:
        mef = sample_points(dis.m_ef, dis.c0, COARSE_MM, 0.5 * (info["p0"] + info["p1"]))
        tb = (mef > 0.45) & (info["r"] >= 0.42) & (info["parent"] >= 0)
        norm = info["keep"] & ~tb
        outer.add(info["p0"][norm], info["p1"][norm], (info["lum0"] + info["wall0"])[norm],
                  (info["lum"] + info["wall"])[norm])
        lumen.add(info["p0"][norm], info["p1"][norm], info["lum0"][norm], info["lum"][norm])
        n = int(tb.sum())
        if n:
            irr = rng.uniform(0.75, 1.3, (n, 2))
            lum = np.maximum(info["lum"][tb], 0.9) * dil
            l0, l1 = lum * irr[:, 0], lum * irr[:, 1]
            outer.add(info["p0"][tb], info["p1"][tb], l0 + 0.5 + 0.3 * l0, l1 + 0.5 + 0.3 * l1)
            lumen.add(info["p0"][tb], info["p1"][tb], l0, l1)
    return outer.arrays(), lumen.arrays(), dil
