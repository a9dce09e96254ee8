"""The synthetic patient's anatomy in millimetres: rib cage, lungs, diaphragm, heart, mediastinum.

Patient coordinates: x to the patient's right, y anterior, z superior, z = 0 at the lowest point of
the lungs. :class:`Patient` draws one patient's body (size, chest wall, diaphragm domes, mediastinum,
spine, heart, great vessels, parenchymal density, scanner settings) from its random stream; its
geometry methods broadcast over millimetre coordinates, so the same body can be sampled on any grid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

from sscild.synthetic.variety import Variety

__all__ = ["Patient", "smoothstep", "mediastinal_tubes", "oesophagus_axis"]


def smoothstep(a):
    """0 below 0, 1 above 1, and a smooth cubic step in between."""
    a = np.clip(a, 0.0, 1.0)
    return a * a * (3 - 2 * a)


class Patient:
    """Anatomy of one synthetic patient; all geometry functions broadcast over mm coordinates."""

    def __init__(self, rng: np.random.Generator, pop: dict, var: dict, variety: Variety):
        self.pop = pop
        self.var = var
        sex, height = pop["sex"], pop["height_cm"]
        size = (height / 165.0) * rng.normal(1.0, variety.habitus_sd)
        ef_frac = pop["lesion_frac"] * pop["ef_share"]
        rng.uniform(0.0, 1.0)  # (the stream's former inspiration draw: kept so later draws stay put)
        self.inspiration = var["inspiration"]  # 0 shallow .. 1 deep
        vol_loss = 1.0 - 0.55 * ef_frac  # fibrosis shrinks the lung
        self.H = float(228 * size * (0.88 + 0.18 * self.inspiration) * vol_loss)  # lung height, mm
        male = sex == "M"
        self.A0 = float((123 + 12 * male) * size * rng.normal(1.0, 0.04) * (1 - 0.15 * ef_frac))
        self.B0 = float((84 + 8 * male) * size * rng.normal(1.0, 0.06) * (1 - 0.10 * ef_frac))
        self.p = float(rng.uniform(2.2, 2.7))  # superellipse exponent (boxiness)
        self.yc = 0.0
        # chest wall
        self.fat = float(np.clip(rng.gamma(3.5, 4.0) * (0.8 if male else 1.1) * variety.fat_max_mm / 32.0,
                                 4, variety.fat_max_mm))
        self.muscle_lat = float(rng.uniform(8, 14) * (1.2 if male else 1.0))
        self.muscle_post = float(rng.uniform(34, 48) * (1.15 if male else 1.0))
        self.muscle_ant = float(rng.uniform(9, 15) * (1.3 if male else 1.0))
        self.breast = float(rng.uniform(0.6, 1.2) if not male else 0.0)
        # diaphragm (right dome higher)
        self.zd_right = float(self.H * rng.uniform(0.27, 0.34) * (1.1 - 0.2 * self.inspiration)
                              + 0.25 * self.H * (1 - vol_loss))
        self.zd_left = float(self.zd_right - rng.uniform(8, 22))
        self.xdd = 0.36 * self.A0
        self.ydd = 0.08 * self.B0
        # apex domes
        self.xa = 0.50 * self.A0
        self.ya = -0.12 * self.B0
        self.ka = 0.30 * self.H / (0.40 * self.A0) ** 2
        # mediastinum
        self.w_ant = float(rng.uniform(4, 9))
        self.w_low = float(rng.uniform(15, 21))
        self.w_up = float(rng.uniform(21, 27))
        self.z_car = float(self.H * rng.uniform(0.58, 0.64))
        self.z_hil = self.z_car - 0.07 * self.H
        # spine
        self.rv = float(rng.uniform(15, 19) * size)
        self.ysp = float(-self.B0 + 0.75 * self.rv)
        self.disc_pitch = float(rng.uniform(24, 28) * size)
        self.disc_phase = float(rng.uniform(0, 1))
        # heart (ellipsoid rotated about z)
        hs = rng.normal(1.0, 0.07) * size
        self.heart_r = np.array([62.0, 44.0, 50.0]) * hs
        self.heart_c = np.array([-22.0 * size + rng.normal(0, 4), 0.27 * self.B0 + rng.normal(0, 3),
                                 self.zd_left + 0.55 * self.heart_r[2]])
        self.heart_rot = math.radians(rng.uniform(-40, -25))
        # aorta, SVC, oesophagus, trachea
        self.r_aorta = float(rng.uniform(11, 14) * size)
        self.x_dao = float(-(self.rv * 0.6 + self.r_aorta * 0.9))
        self.y_dao = float(self.ysp + 0.75 * self.rv)
        self.r_trach = float(rng.uniform(7.5, 10.0) * size)
        self.y_trach = float(self.ysp + self.rv + self.r_trach + 10)
        # lung parenchyma
        self.base_hu = float(-880 - variety.density_span_hu * (self.inspiration - 0.5) + rng.normal(0, 6))
        rng.uniform(20, 45)  # (former gravity draw, kept for the stream)
        self.gravity_hu = float(var["gravity_hu"] * (1.4 - 0.6 * self.inspiration))
        self.effusion_mm = float(var["effusion_mm"])
        self.hu_var = float(rng.uniform(6, 14))
        # scanner
        self.noise_sd = float(15 + 45 * rng.beta(1.3, 2.2))
        self.psf_mm = float(rng.uniform(0.45, 0.8))
        self.thick_choice = int(rng.integers(0, 3))
        self.fov_factor = float(rng.uniform(0.9, 1.1))
        self.offset = rng.normal(0, 6, 2)
        self.z_table = float(rng.uniform(-420, -300))
        self.margins = rng.uniform(8, 22, 2)
        self.stomach_air = bool(rng.random() < 0.6)
        self.table_gap = float(rng.uniform(3, 12))

    # ---- cavity and walls -------------------------------------------------------------------
    def cavity_ab(self, z):
        t = np.asarray(z, np.float32) / self.H
        up = np.clip((t - 0.25) / 0.75, 0.0, 1.0) ** 1.5
        low = np.clip(-t / 0.5, 0, 1)
        a = self.A0 * (1 - 0.42 * up) * (1 - 0.05 * low)
        b = self.B0 * (1 - 0.25 * up) * (1 - 0.04 * low)
        return a, b

    def cavity_rho(self, x, y, z):
        """Superellipse radius: < 1 inside the rib cage; also returns radial distance helpers."""
        a, b = self.cavity_ab(z)
        xn = np.abs(x) / a
        yn = np.abs(y - self.yc) / b
        rho = (xn ** self.p + yn ** self.p) ** (1.0 / self.p)
        return rho

    def wall_distance(self, x, y, z, rho=None):
        """Signed distance in mm from the inner chest wall (negative inside the cavity), approximate."""
        if rho is None:
            rho = self.cavity_rho(x, y, z)
        r = np.sqrt(x * x + (y - self.yc) ** 2)
        return r * (1.0 - 1.0 / np.maximum(rho, 1e-3))

    def med_halfwidth(self, y, z):
        t = np.asarray(z, np.float32) / self.H
        w_c = self.w_low + (self.w_up - self.w_low) * smoothstep((t - 0.40) / 0.25)
        ant = expit((y - (self.yc + 0.30 * self.B0)) / 7.0)
        w = self.w_ant + (w_c - self.w_ant) * (1 - ant)
        post = expit((self.ysp + 0.2 * self.rv - y) / 5.0)
        w = w * (1 - post) + 6.0 * post
        hil = 9.0 * np.exp(-((z - self.z_hil) / 28.0) ** 2 - ((y - (self.yc - 0.05 * self.B0)) / 24.0) ** 2)
        return w + hil

    def diaphragm_z(self, xs, y, side):
        zd = self.zd_right if side > 0 else self.zd_left
        ky = np.where(y < self.ydd, 1.3, 1.05)
        r2 = ((xs - self.xdd) ** 2 + (ky * (y - self.ydd)) ** 2) / (0.68 * self.A0) ** 2
        return zd * (1.0 - r2 ** 1.3)  # flat-topped dome, steep towards the recesses

    def abdomen_top(self, x, y):
        """Height of the upper surface of the abdominal organs: both domes and the central tendon."""
        k = 0.12
        zr = self.diaphragm_z(x, y, 1)
        zl = self.diaphragm_z(-x, y, -1)
        zc = np.full_like(zr, min(self.zd_left, self.zd_right) - 22.0)
        m = np.maximum(np.maximum(zr, zl), zc)
        return m + np.log(np.exp(k * (zr - m)) + np.exp(k * (zl - m)) + np.exp(k * (zc - m))) / k

    def in_heart(self, x, y, z, margin=0.0):
        c = self.heart_r + margin
        dx, dy = x - self.heart_c[0], y - self.heart_c[1]
        cr, sr = math.cos(self.heart_rot), math.sin(self.heart_rot)
        u = cr * dx - sr * dy
        v = sr * dx + cr * dy
        return (u / c[0]) ** 2 + (v / c[1]) ** 2 + ((z - self.heart_c[2]) / c[2]) ** 2 < 1.0

    def lung_side(self, x, y, z, side, rho=None):
        """Boolean: inside the lung on ``side`` (+1 right, -1 left)."""
        xs = side * x
        if rho is None:
            rho = self.cavity_rho(x, y, z)
        m = rho < 1.0
        m &= xs > self.med_halfwidth(y, z)
        m &= z < self.H - self.ka * ((xs - self.xa) ** 2 + (0.9 * (y - self.ya)) ** 2)
        m &= z > self.diaphragm_z(xs, y, side)
        m &= ~self.in_heart(x, y, z, margin=3.0 + self.effusion_mm)
        m &= (x * x + (y - self.ysp) ** 2) > (self.rv + 5.0) ** 2
        if side < 0:
            m &= ((x - self.x_dao) ** 2 + (y - self.y_dao) ** 2) > (self.r_aorta + 4.0) ** 2
        return m

    def lung(self, x, y, z):
        rho = self.cavity_rho(x, y, z)
        return self.lung_side(x, y, z, 1, rho) | self.lung_side(x, y, z, -1, rho)

    def subpleural_distance(self, x, y, z, rho=None):
        """Distance (mm, >= 0) to the costal or diaphragmatic pleura, approximately."""
        d_wall = -self.wall_distance(x, y, z, rho)
        side = np.where(x >= 0, 1, -1)
        zd = np.where(side > 0, self.diaphragm_z(np.abs(x), y, 1), self.diaphragm_z(np.abs(x), y, -1))
        d_dia = (z - zd) * 0.8
        return np.maximum(np.minimum(d_wall, d_dia), 0.0)

    def body_extent(self):
        """Half-width (x) and the posterior/anterior body surface (y) at the widest level."""
        half = self.A0 + self.muscle_lat + self.fat + 6
        post = self.yc - self.B0 - self.muscle_post - self.fat * 0.6
        ant = self.yc + self.B0 + self.muscle_ant + self.fat + 40 * self.breast
        return half, post, ant




def mediastinal_tubes(pt: Patient):
    """Aorta, superior vena cava, supra-aortic branches and oesophagus as tubes (p0, p1, r0, r1 in mm)."""
    H = pt.H
    ht = pt.heart_c[2] + 0.6 * pt.heart_r[2]
    ra = pt.r_aorta
    segs = []
    asc0 = np.array([6.0, pt.heart_c[1] + 0.1 * pt.B0, ht - 15])
    asc1 = np.array([6.0, pt.yc + 0.22 * pt.B0, 0.70 * H])
    arch = np.array([-8.0, pt.yc + 0.02 * pt.B0, 0.745 * H])
    dtop = np.array([pt.x_dao, pt.y_dao, 0.68 * H])
    dbot = np.array([pt.x_dao + 6, pt.y_dao + 4, -20.0])
    segs += [(asc0, asc1, ra * 1.15, ra * 1.1), (asc1, arch, ra * 1.1, ra), (arch, dtop, ra, ra),
             (dtop, dbot, ra, ra * 0.95)]
    svc0 = np.array([pt.w_up - 9.0, pt.yc + 0.2 * pt.B0, H + 40])
    svc1 = np.array([pt.w_low - 6.0, pt.yc + 0.18 * pt.B0, ht - 10])
    segs.append((svc0, svc1, 8.5, 9.5))
    # supra-aortic branches up to the neck
    segs.append((arch, np.array([-12.0, pt.yc + 0.05 * pt.B0, H + 60]), 5.0, 5.0))
    segs.append((arch + [10, 6, 0], np.array([14.0, pt.yc + 0.12 * pt.B0, H + 60]), 6.0, 5.0))
    o0, o1, r_oes = oesophagus_axis(pt)
    segs.append((o0, o1, r_oes, r_oes))
    p0 = np.array([s[0] for s in segs]); p1 = np.array([s[1] for s in segs])
    return p0, p1, np.array([s[2] for s in segs]), np.array([s[3] for s in segs])


def oesophagus_axis(pt: Patient):
    """The oesophagus: centre line (two points, mm) and outer radius (wider when dilated)."""
    r = max(7.0, pt.var["oesophagus_lumen_mm"] + 3.0)
    oes_y = pt.ysp + pt.rv + r  # its wall rests on the front of the spine
    return np.array([-4.0, oes_y, pt.H + 60]), np.array([-10.0, oes_y + 4, -30.0]), r
