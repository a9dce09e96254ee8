"""The built-in synthetic SSc-ILD HRCT cohort: a digital chest phantom with planted lung function.

The default cohort of the whole study is synthetic, so this module decides whether the book's default
numbers mean anything. Each synthetic patient is built in millimetres (patient coordinates: x to the
patient's right, y anterior, z superior, z = 0 at the lowest point of the lungs) and then sampled on
the voxel grid of a run profile:

* **Anatomy.** Air outside the body (-1000 HU); skin, subcutaneous fat (about -100 HU) and chest-wall
  muscle (about +45 HU); spine (vertebral bodies, discs, posterior elements), twelve pairs of ribs
  sloping down anteriorly, costal cartilage, sternum and scapulae (bone, several hundred HU);
  mediastinal fat, heart, aorta, superior vena cava, oesophagus; trachea and main bronchi (air with a
  wall); liver, spleen and stomach under the diaphragm; the scanner table. Two lungs: superellipse
  cross-sections inside the rib cage, narrow apical domes, domed diaphragm (right higher than left)
  with deep posterolateral costophrenic recesses, the heart indenting the left lung, the spine and
  the descending aorta indenting them posteriorly.
* **Lung.** Parenchyma around -850 HU that depends on the inspiration level, denser in the dependent
  (posterior) lung, with smooth regional variation. Two space-filling vascular trees per lung
  (arteries from the hilum, veins towards the left atrium) grown by recursive splitting of random
  points that fill the lung (the volume-filling branching idea of Tawhai et al., 2000); radii follow
  a Murray-type law (r ~ n^(1/2.9) for n supplied territories) so vessels taper from about 6 mm
  radius at the hilum to 0.3 mm at the periphery; thin vessels are deposited as partial volume.
  Bronchi with walls run beside the arteries down to lumina of about 1.3 mm radius.
* **Disease (SSc-ILD, mostly NSIP pattern).** A smooth propensity field with lower-zone, subpleural and
  dependent predominance plus random patchiness (independent on the two sides, so the disease is
  bilateral and roughly but not exactly symmetric), optional immediate subpleural sparing, and a
  per-patient total extent from near-normal to about 50 % of the lung. Established fibrosis (EF)
  occupies the most basal-subpleural part of the affected lung and is surrounded by ground glass
  (GGO): mixed areas arise naturally. GGO is a hazy rise of attenuation (to about -700 ... -400 HU)
  with soft borders through which vessels stay visible. EF is rendered as texture: a reticular net
  (walls of a jittered Voronoi foam, cells of 5-7.5 mm), honeycombing (clustered subpleural air cysts
  with walls of about 1 mm) and traction bronchiectasis (dilated, irregular airways inside fibrosis); fibrosis
  also shrinks the lungs. EF's mean attenuation overlaps GGO's, so texture, not intensity, separates
  them.
* **Reference labels** are drawn the way readers draw them: smooth regions around the pattern with a
  few millimetres of boundary uncertainty, not a voxel-wise threshold. 0 background, 1 normal lung,
  2 EF, 3 GGO; labels 1-3 together are the lung (vessels inside the lung included).
* **Scanner.** Per-patient field of view (in-plane spacing +-10 % around the profile's, at least
  6 % wider than the body), slice thickness 0.8 or 1 x the profile's (scan length at least 90 % of the
  nominal one) with partial-volume averaging of thinner sub-slices along z, Gaussian reconstruction
  blur (sigma 0.45-0.8 mm) and correlated noise (standard deviation 15-60 HU, median about 30).

Anatomy and the extent and layout of disease are drawn from the seed and the case index only (not
from the profile), so a case is the same patient in every profile; the true extents, and with them the
lung function, are measured on the profile's grid and differ slightly between profiles.

Lung function is generated from each patient's true extents (from the reference labels) and
demographics by the planted model below; it is synthetic and its relationships are put there on
purpose. All quantities in percent of the lung volume (``EF``, ``GGO``) or percent predicted::

    FVC%pred   = 98  - 0.90*EF - 0.40*GGO + e_FVC                       e_FVC  ~ N(0, 9.5)
    DLCO%pred  = 92  - 1.10*EF - 0.55*GGO + 0.45*e_FVC + e_DLCO         e_DLCO ~ N(0, 12)
    FEV1/FVC   = 83  - 0.20*(age - 40) + 0.10*EF + e_R       (percent)  e_R    ~ N(0, 4.5)
    FEV1%pred  = FVC%pred * (FEV1/FVC) / (83 - 0.20*(age - 40)) + e_FEV1  e_FEV1 ~ N(0, 3)

Fibrosis restricts: FVC and DLCO fall with extent (EF weighted more than GGO, DLCO the most
sensitive), FEV1 falls with FVC, FEV1/FVC is preserved or rises a little with fibrosis (traction on
the airways, higher elastic recoil) and falls with age. The noise is set so that the population
Spearman correlation of total extent with FVC %pred is about -0.6 (checked on 5000 simulated
patients with :func:`simulate_population`). About 10 % of DLCO and 5 % of spirometry values are
missing. The constants are exposed as :data:`CLINICAL_MODEL`.

Example:
    >>> from sscild.synthetic.phantom import generate_case
    >>> case = generate_case(0, profile="smoke")
    >>> case.image.dtype, sorted(set(case.label.ravel().tolist()))  # doctest: +SKIP
    (dtype('int16'), [0, 1, 2, 3])
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import expit
from scipy.stats import beta as _beta_dist

from sscild.data.lungmask import lung_mask_by_threshold, parenchyma_stats  # noqa: F401  (public here too)
from sscild.paths import atomic_path, read_json, write_json
from sscild.synthetic.variety import Variety, draw_variety, render_emphysema, render_fissures, render_oesophagus_lumen
from sscild.profiles import Profile, get_profile

__all__ = [
    "PHANTOM_VERSION",
    "CLINICAL_MODEL",
    "CLINICAL_COLUMNS",
    "PhantomCase",
    "generate_case",
    "generate_cohort",
    "simulate_population",
    "clinical_from_extent",
    "lung_mask_by_threshold",
    "parenchyma_stats",
]

PHANTOM_VERSION = "2.0"
"""Version of the generator; part of every cohort's settings (a change regenerates nothing silently)."""

CLINICAL_COLUMNS = ("case_id", "age", "sex", "height_cm", "fvc_pct", "fev1_pct", "fev1_fvc", "dlco_pct")
"""Columns of ``clinical.csv``: age in years, sex F/M, height in cm, FVC / FEV1 / DLCO in percent of
predicted, FEV1/FVC as a ratio (0-1, the cohort format's unit; the model below computes it in percent)."""

CLINICAL_MODEL: dict = {
    "description": (
        "Planted synthetic lung-function model: values are generated from the true EF and GGO "
        "extents (percent of lung, from the reference labels) and demographics; these relationships "
        "are put there on purpose and are not findings."
    ),
    "fvc_pct": {"equation": "98 - 0.90*EF - 0.40*GGO + e_FVC", "intercept": 98.0, "ef": -0.90,
                "ggo": -0.40, "noise_sd": 9.5},
    "dlco_pct": {"equation": "92 - 1.10*EF - 0.55*GGO + 0.45*e_FVC + e_DLCO", "intercept": 92.0,
                 "ef": -1.10, "ggo": -0.55, "fvc_noise_share": 0.45, "noise_sd": 12.0},
    "fev1_fvc": {"equation": "83 - 0.20*(age - 40) + 0.10*EF + e_R  (percent)", "intercept": 83.0,
                 "age": -0.20, "age_ref": 40.0, "ef": 0.10, "noise_sd": 4.5},
    "fev1_pct": {"equation": "FVC%pred * (FEV1/FVC) / (83 - 0.20*(age - 40)) + e_FEV1",
                 "noise_sd": 3.0},
    "missing": {"dlco_pct": 0.10, "spirometry_fev1": 0.05},
    "clip": {"fvc_pct": [25.0, 140.0], "fev1_pct": [20.0, 150.0], "fev1_fvc": [50.0, 99.0],
             "dlco_pct": [15.0, 140.0]},
    "population": {
        "lesion_pct": "1 + 49 * Beta(1.2, 2.0) quantile of a golden-ratio sequence over case index",
        "ef_share_of_lesion": "clip(0.22 + 0.6*lesion_fraction + N(0, 0.1), 0.1, 0.85)",
        "age": "N(52, 12) clipped to 22-78 years", "sex": "85 % female",
        "height_cm": "F: N(161, 6.5); M: N(174, 7)",
    },
    "target_spearman_extent_fvc": -0.6,
}
"""The planted lung-function model (equations, coefficients, noise, missingness)."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_LABEL_NORMAL, _LABEL_EF, _LABEL_GGO = 1, 2, 3


# =============================================================================================
# public data class
# =============================================================================================
@dataclass
class PhantomCase:
    """One synthetic patient.

    Attributes:
        case_id: ``case_000`` style identifier.
        image: CT in Hounsfield units, int16, (x, y, z) RAS.
        label: uint8 label map, 0 background, 1 normal lung, 2 EF, 3 GGO.
        affine: 4x4 voxel -> RAS millimetre matrix (nibabel convention).
        clinical: age, sex, height_cm, fvc_pct, fev1_pct, fev1_fvc, dlco_pct (``None`` = missing).
        truth: true extents (percent of lung, millilitres) and the patient's generating parameters.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    clinical: dict
    truth: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


# =============================================================================================
# random draws: population, demographics, clinical model
# =============================================================================================
def _case_seeds(seed: int, case_index: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence(entropy=[int(seed), 0x55C11D, int(case_index)])
    return [np.random.default_rng(s) for s in ss.spawn(8)]


def _population_draw(rng: np.random.Generator, case_index: int, seed: int) -> dict:
    """Severity and demographics of one patient (independent of the profile)."""
    u0 = np.random.default_rng([int(seed), 0xE57]).random()
    u = (u0 + (case_index + 1) * _GOLDEN) % 1.0
    lesion_frac = 0.01 + 0.49 * float(_beta_dist.ppf(u, 1.2, 2.0))
    ef_share = float(np.clip(0.22 + 0.6 * lesion_frac + rng.normal(0, 0.1), 0.1, 0.85))
    sex = "F" if rng.random() < 0.85 else "M"
    age = float(np.clip(rng.normal(52, 12), 22, 78))
    height = float(rng.normal(161, 6.5) if sex == "F" else rng.normal(174, 7))
    # missingness: low-discrepancy sequences, so about 10 % / 5 % for any cohort size
    v0 = np.random.default_rng([int(seed), 0xD1C0]).random(2)
    miss_dlco = ((v0[0] + case_index * 0.7548776662466927) % 1.0) < CLINICAL_MODEL["missing"]["dlco_pct"]
    miss_fev1 = ((v0[1] + case_index * 0.5698402909980532) % 1.0) < CLINICAL_MODEL["missing"]["spirometry_fev1"]
    return dict(lesion_frac=lesion_frac, ef_share=ef_share, sex=sex, age=round(age), height_cm=round(height, 1),
                miss_dlco=bool(miss_dlco), miss_fev1=bool(miss_fev1))


def clinical_from_extent(ef_pct, ggo_pct, age, rng: np.random.Generator) -> dict:
    """Lung function from true extents by the planted model (:data:`CLINICAL_MODEL`).

    Args:
        ef_pct, ggo_pct: true EF / GGO extent in percent of lung (scalars or arrays).
        age: years (scalar or array).
        rng: numpy generator for the noise terms.

    Returns:
        dict with ``fvc_pct``, ``fev1_pct``, ``fev1_fvc`` (percent) and ``dlco_pct`` (unrounded).

    Example:
        >>> import numpy as np
        >>> out = clinical_from_extent(10.0, 20.0, 50, np.random.default_rng(0))
        >>> 25 <= out["fvc_pct"] <= 140
        True
    """
    m = CLINICAL_MODEL
    ef = np.asarray(ef_pct, float)
    ggo = np.asarray(ggo_pct, float)
    age = np.asarray(age, float)
    shape = np.broadcast(ef, ggo, age).shape
    e_fvc = rng.normal(0, m["fvc_pct"]["noise_sd"], shape)
    e_dlco = rng.normal(0, m["dlco_pct"]["noise_sd"], shape)
    e_r = rng.normal(0, m["fev1_fvc"]["noise_sd"], shape)
    e_fev1 = rng.normal(0, m["fev1_pct"]["noise_sd"], shape)
    f, d, r = m["fvc_pct"], m["dlco_pct"], m["fev1_fvc"]
    fvc = f["intercept"] + f["ef"] * ef + f["ggo"] * ggo + e_fvc
    dlco = d["intercept"] + d["ef"] * ef + d["ggo"] * ggo + d["fvc_noise_share"] * e_fvc + e_dlco
    ratio_pred = r["intercept"] + r["age"] * (age - r["age_ref"])
    ratio = ratio_pred + r["ef"] * ef + e_r
    c = m["clip"]
    fvc = np.clip(fvc, *c["fvc_pct"])
    ratio = np.clip(ratio, *c["fev1_fvc"])
    fev1 = np.clip(fvc * ratio / ratio_pred + e_fev1, *c["fev1_pct"])
    dlco = np.clip(dlco, *c["dlco_pct"])
    out = dict(fvc_pct=fvc, fev1_pct=fev1, fev1_fvc=ratio, dlco_pct=dlco)
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}


def simulate_population(n: int = 5000, *, seed: int = 0):
    """Draw ``n`` synthetic patients' extents, demographics and lung function (no images).

    The extents are the generator's targets (the images realise them to within a few percent), so this
    shows the population the planted model implies, e.g. its Spearman correlations.

    Returns:
        pandas.DataFrame with ``lesion_pct``, ``ef_pct``, ``ggo_pct``, ``age``, ``sex`` and the lung
        function columns.

    Example:
        >>> df = simulate_population(2000, seed=1)
        >>> round(df[["lesion_pct", "fvc_pct"]].corr("spearman").iloc[0, 1], 1)  # doctest: +SKIP
        -0.6
    """
    import pandas as pd

    if n < 1:
        raise ValueError(f"simulate_population: n must be >= 1, got {n}.")
    rows = []
    for i in range(n):
        rngs = _case_seeds(seed, i)
        p = _population_draw(rngs[0], i, seed)
        ef = 100 * p["lesion_frac"] * p["ef_share"]
        ggo = 100 * p["lesion_frac"] - ef
        rows.append(dict(lesion_pct=ef + ggo, ef_pct=ef, ggo_pct=ggo, age=p["age"], sex=p["sex"],
                         height_cm=p["height_cm"], **clinical_from_extent(ef, ggo, p["age"], rngs[6])))
    return pd.DataFrame(rows)


# =============================================================================================
# the patient: anatomy in millimetres
# =============================================================================================
def _smoothstep(a):
    a = np.clip(a, 0.0, 1.0)
    return a * a * (3 - 2 * a)


class _Patient:
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
        w_c = self.w_low + (self.w_up - self.w_low) * _smoothstep((t - 0.40) / 0.25)
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


# =============================================================================================
# grid
# =============================================================================================
@dataclass
class _Grid:
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


def _make_grid(pt: _Patient, prof: Profile) -> _Grid:
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
    return _Grid(x=x.astype(np.float32), y=y.astype(np.float32), z=z.astype(np.float32),
                 zf=zf.astype(np.float32), k=k, spacing=(dxy, dxy, dz), affine=aff)


def _axes(g: _Grid, zs):
    return g.x[:, None, None], g.y[None, :, None], np.asarray(zs, np.float32)[None, None, :]


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


def _upsample(coarse, c0, cs, xs, ys, zs):
    """Separable trilinear interpolation of a coarse grid field (origin c0, spacing cs) at xs, ys, zs."""
    out = _interp_axis(coarse, 0, c0[0], cs, xs)
    out = _interp_axis(out, 1, c0[1], cs, ys)
    return _interp_axis(out, 2, c0[2], cs, zs)


def _sample_points(coarse, c0, cs, pts):
    idx = ((np.asarray(pts, np.float64) - np.asarray(c0)) / cs).T
    return ndi.map_coordinates(coarse, idx, order=1, mode="nearest")


# =============================================================================================
# vascular and airway trees
# =============================================================================================
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


def _sample_lung_points(pt: _Patient, side, n, rng):
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


class _Tubes:
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


@dataclass
class _Trees:
    vessels: tuple  # (p0, p1, r0, r1)
    airway_outer: tuple  # trachea and main bronchi
    airway_lumen: tuple
    art: list  # per lung: the arterial tree with its bronchi (bronchiectasis is decided later)
    lung_ml: float


def _build_trees(pt: _Patient, rng: np.random.Generator) -> _Trees:
    """Arterial and venous trees of both lungs, the bronchi beside the arteries, trachea, main bronchi."""
    m = 60000
    q = np.column_stack([rng.uniform(-pt.A0, pt.A0, m), rng.uniform(-pt.B0, pt.B0, m), rng.uniform(-5, pt.H, m)])
    lung_ml = float(pt.lung(q[:, 0], q[:, 1], q[:, 2]).mean() * (2 * pt.A0) * (2 * pt.B0) * (pt.H + 5) / 1000.0)
    vessels, aw_outer, aw_lumen = _Tubes(), _Tubes(), _Tubes()
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
    return _Trees(vessels=vessels.arrays(), airway_outer=aw_outer.arrays(), airway_lumen=aw_lumen.arrays(),
                  art=art_info, lung_ml=lung_ml)


# =============================================================================================
# rendering helpers
# =============================================================================================
def _render_tubes(occ, xs, ys, zs, p0, p1, r0, r1, ramp):
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


def _splat_tubes(shape, origin, spacing, p0, p1, r0, r1, step):
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


def _random_field(rng, shape, sigma_vox):
    f = rng.standard_normal(shape, dtype=np.float32)
    f = ndi.gaussian_filter(f, sigma_vox, mode="wrap")
    f /= f.std() + 1e-6
    return f


def _bbox(coords, lo, hi):
    return int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi, "right"))


# =============================================================================================
# disease fields (coarse 4 mm grid, independent of the profile)
# =============================================================================================
_CS = 4.0


@dataclass
class _Disease:
    c0: tuple
    m_ef: np.ndarray
    hu_smooth: np.ndarray
    a_les: np.ndarray
    a_ef: np.ndarray
    params: dict
    hc_prob: np.ndarray


def _disease_fields(pt: _Patient, rng: np.random.Generator) -> _Disease:
    L = pt.pop["lesion_frac"]
    e = pt.pop["ef_share"]
    cx = np.arange(-pt.A0 - 12, pt.A0 + 12 + _CS, _CS, dtype=np.float32)
    cy = np.arange(-pt.B0 - 12, pt.B0 + 12 + _CS, _CS, dtype=np.float32)
    cz = np.arange(-16, pt.H + 12 + _CS, _CS, dtype=np.float32)
    X, Y, Z = cx[:, None, None], cy[None, :, None], cz[None, None, :]
    rho = pt.cavity_rho(X, Y, Z)
    lung = pt.lung_side(X, Y, Z, 1, rho) | pt.lung_side(X, Y, Z, -1, rho)
    dsub = pt.subpleural_distance(X, Y, Z, rho)
    t = np.clip(Z / pt.H, 0, 1)
    post = 0.5 * (1 - np.clip((Y - pt.yc) / pt.B0, -1, 1))  # 1 posterior .. 0 anterior
    shape = lung.shape
    R1 = _random_field(rng, shape, 14 / _CS)
    R2 = _random_field(rng, shape, 10 / _CS)
    R3 = _random_field(rng, shape, 12 / _CS)
    R4 = _random_field(rng, shape, 10 / _CS)
    R5 = _random_field(rng, shape, 6 / _CS)
    R6 = _random_field(rng, shape, 10 / _CS)
    wz, ws, ls = rng.uniform(0.7, 1.2), rng.uniform(0.5, 1.0), rng.uniform(10, 22)
    wp, wn = rng.uniform(0.15, 0.45), rng.uniform(0.22, 0.4)
    spare = rng.uniform(0.25, 0.5) if rng.random() < 0.3 else 0.0
    P = wz * (1 - t) ** 1.6 + ws * np.exp(-dsub / ls) + wp * post + wn * R1 - spare * np.exp(-dsub / 3.5)
    Pl = P[lung]
    theta = float(np.quantile(Pl, 1 - L))
    tau = 0.035 * float(np.quantile(Pl, 0.99) - np.quantile(Pl, 0.01))
    m_les = expit((P - theta) / tau).astype(np.float32)
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
    hc_w = rng.uniform(0.0, 1.0) * min(1.0, 2.5 * L * e + 0.15)
    hc_prob = np.clip(hc_w * 1.6 * np.exp(-dsub / 7.0) * np.clip((m_ef - 0.3) / 0.5, 0, 1), 0, 0.95).astype(np.float32)
    params = dict(target_lesion_pct=100 * L, target_ef_share=e, ggo_delta_hu=float(a_ggo), zone_weight=float(wz),
                  subpleural_weight=float(ws), subpleural_scale_mm=float(ls), dependent_weight=float(wp),
                  patchiness=float(wn), subpleural_sparing=float(spare), honeycomb_weight=float(hc_w),
                  reader_uncertainty=float(unc))
    return _Disease(c0=(float(cx[0]), float(cy[0]), float(cz[0])), m_ef=m_ef, hu_smooth=hu,
                    a_les=a_les.astype(np.float32),
                    a_ef=a_ef.astype(np.float32), params=params, hc_prob=hc_prob)


# =============================================================================================
# the case
# =============================================================================================
_HU = dict(air=-1000.0, fat=-100.0, muscle=45.0, skin=30.0, blood=40.0, med_fat=-85.0, liver=58.0, spleen=46.0,
           stomach=30.0, cortical=800.0, marrow=260.0, cartilage=140.0, disc=85.0, airway_wall=-20.0, table=250.0,
           foam=-920.0, csf=15.0, fluid=12.0)


def _check_case_args(case_index, seed):
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 0:
        raise ValueError(f"case_index must be a non-negative integer, got {case_index!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def generate_case(case_index: int, *, profile: str | Profile = "cpu", seed: int = 0,
                  variety: Variety | None = None, lesion_scale: float = 1.0) -> PhantomCase:
    """Generate one synthetic SSc-ILD patient (image, reference labels, lung function, truth).

    The patient (anatomy, disease, lung function) depends only on ``seed`` and ``case_index``; the
    profile sets the scanner grid around its nominal shape and spacing.

    Args:
        case_index: 0, 1, 2, ... (the case id is ``case_{index:03d}``).
        profile: run profile name or :class:`~sscild.profiles.Profile`.
        seed: cohort seed.
        variety: the variety knobs (:class:`~sscild.synthetic.variety.Variety`; default: its defaults).
        lesion_scale: multiplies the patient's drawn lesion fraction (capped at 0.9 of the lung); the
            anatomy, scanner and disease pattern stay those of the same patient, so two values give
            the same patient at two disease levels (a follow-up with a known change). Default 1.

    Returns:
        :class:`PhantomCase`; ``masks`` holds the emphysema and oesophageal-air masks on the scan grid.

    Example:
        >>> case = generate_case(3, profile="smoke", seed=0)
        >>> case.case_id
        'case_003'
    """
    _check_case_args(case_index, seed)
    prof = get_profile(profile)
    rngs = _case_seeds(seed, case_index)
    pop = _population_draw(rngs[0], case_index, seed)
    if float(lesion_scale) != 1.0:
        if not float(lesion_scale) > 0:
            raise ValueError(f"lesion_scale must be > 0, got {lesion_scale!r}.")
        pop = {**pop, "lesion_frac": min(0.9, pop["lesion_frac"] * float(lesion_scale))}
    variety = Variety() if variety is None else variety
    if not isinstance(variety, Variety):
        raise ValueError(f"variety must be a sscild.synthetic.variety.Variety, got {type(variety).__name__}")
    var = draw_variety(rngs[7], variety)
    pt = _Patient(rngs[1], pop, var, variety)
    g = _make_grid(pt, prof)
    dis = _disease_fields(pt, rngs[3])
    trees = _build_trees(pt, rngs[2])
    img_f, lung_f, body_f, extras = _render(pt, g, dis, trees, rngs[4])
    image = _scan(img_f, g, pt, rngs[5], body_f)
    del img_f, body_f
    label = _labels(g, dis, lung_f)
    masks = {k: _to_scan_grid(m, g) for k, m in extras.items()}
    del extras
    vox_ml = float(np.prod(g.spacing)) / 1000.0
    n_lung = int((label > 0).sum())
    n_ef = int((label == _LABEL_EF).sum())
    n_ggo = int((label == _LABEL_GGO).sum())
    ef_pct = 100.0 * n_ef / max(n_lung, 1)
    ggo_pct = 100.0 * n_ggo / max(n_lung, 1)
    clin_raw = clinical_from_extent(ef_pct, ggo_pct, pop["age"], rngs[6])
    clinical = dict(age=int(pop["age"]), sex=pop["sex"], height_cm=pop["height_cm"],
                    fvc_pct=round(clin_raw["fvc_pct"], 1), fev1_pct=round(clin_raw["fev1_pct"], 1),
                    fev1_fvc=round(clin_raw["fev1_fvc"] / 100.0, 3), dlco_pct=round(clin_raw["dlco_pct"], 1))
    if pop["miss_dlco"]:
        clinical["dlco_pct"] = None
    if pop["miss_fev1"]:
        clinical["fev1_pct"] = None
        clinical["fev1_fvc"] = None
    truth = dict(
        ef_pct=ef_pct, ggo_pct=ggo_pct, lesion_pct=ef_pct + ggo_pct, lung_ml=n_lung * vox_ml,
        ef_ml=n_ef * vox_ml, ggo_ml=n_ggo * vox_ml, **dis.params,
        lung_height_mm=pt.H, inspiration=pt.inspiration, parenchyma_hu=pt.base_hu, gravity_gradient_hu=pt.gravity_hu,
        emphysema_pct=100.0 * int((masks["emphysema"] & (label > 0)).sum()) / max(n_lung, 1),
        emphysema_kind=var["emphysema_kind"], bullae=var["bullae"],
        oesophagus_lumen_mm=var["oesophagus_lumen_mm"], pericardial_effusion_mm=var["effusion_mm"],
        fissures_visible=int(sum(var["fissures"])),
        noise_sd_hu=pt.noise_sd, blur_sigma_mm=pt.psf_mm, slice_thickness_mm=g.spacing[2],
        pixel_mm=g.spacing[0], fov_mm=g.spacing[0] * g.shape[0], shape=list(g.shape),
        clinical_complete={k: float(v) for k, v in clin_raw.items()},
    )
    return PhantomCase(case_id=f"case_{case_index:03d}", image=image, label=label, affine=g.affine,
                       clinical=clinical, truth=truth, masks=masks)


def _to_scan_grid(mask_f: np.ndarray, g: _Grid) -> np.ndarray:
    """A fine-grid mask on the scan grid (a voxel is in when most of its sub-slices are)."""
    nx, ny, nz = g.shape
    if g.k > 1:
        return mask_f.reshape(nx, ny, nz, g.k).mean(axis=3) >= 0.5
    return mask_f


def _airway_segments(trees: _Trees, dis: _Disease, rng: np.random.Generator):
    """Bronchi of the tree: normal ones beside the arteries, and traction bronchiectasis in fibrosis.

    Inside established fibrosis, bronchi are drawn further out into the periphery, dilated (a
    per-patient factor of 1.6-2.6) and irregular (radius varying 0.75-1.3x along them), with thick walls.
    """
    outer, lumen = _Tubes(), _Tubes()
    dil = float(rng.uniform(1.6, 2.6))
    for info in trees.art:
        mef = _sample_points(dis.m_ef, dis.c0, _CS, 0.5 * (info["p0"] + info["p1"]))
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


def _render(pt: _Patient, g: _Grid, dis: _Disease, trees: _Trees, rng: np.random.Generator):
    """The noiseless, unblurred CT on the fine grid; returns (hu, lung mask, body mask)."""
    x, y, zf = g.x, g.y, g.zf
    dxy = g.spacing[0]
    dzf = g.spacing[2] / g.k
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
    scap_z = _smoothstep((zt - 0.45) / 0.15).astype(np.float32)
    fat2d = (pt.fat * (1 - 0.45 * wpost)).astype(np.float32)
    bre2d = (30.0 * pt.breast * np.exp(-((aphi - 0.78 * np.pi) / 0.3) ** 2)).astype(np.float32)
    bre_z = np.exp(-((zf - 0.40 * H) / 55.0) ** 2).astype(np.float32)
    lat2d = np.clip(1 - wpost - want, 0, 1).astype(np.float32)
    shoulder_z = (40.0 * _smoothstep((zt - 0.72) / 0.28)).astype(np.float32)
    muscle = (muscle2d[:, :, None] + scap2d[:, :, None] * scap_z[None, None, :]
              + lat2d[:, :, None] * shoulder_z[None, None, :])
    outer = muscle + (fat2d[:, :, None] + bre2d[:, :, None] * bre_z[None, None, :])
    _, y_flat, _ = pt.body_extent()
    body = (dout < outer) & (Y2 > y_flat)[:, :, None]
    brng = np.random.default_rng(rng.integers(0, 2 ** 63))  # breast texture: its own stream
    img = np.full(g.fine_shape, _HU["air"], np.float32)
    img[body] = _HU["fat"]
    img[body & (dout > outer - 2.0)] = _HU["skin"]
    # glandular breast tissue strands
    if pt.breast > 0:
        gl = body & (dout > muscle + fat2d[:, :, None] + 2) & (bre2d[:, :, None] * bre_z[None, None, :] > 8)
        if gl.any():
            gl_idx = np.nonzero(gl)
            img[gl_idx] = np.where(brng.random(gl_idx[0].size) < 0.35, 10.0, _HU["fat"])
    img[body & (dout < muscle) & (dout >= 0)] = _HU["muscle"]
    del outer
    cavity = rho < 1.0
    img[cavity] = _HU["med_fat"]
    # under the diaphragm: muscle band, then liver (right), stomach and spleen (left)
    zdia = pt.abdomen_top(X2 + 0 * Y2, Y2 + 0 * X2).astype(np.float32)
    Z = zf[None, None, :]
    below = cavity & (Z < zdia[:, :, None])
    img[below] = _HU["muscle"]
    left_organ = np.where(Y2 > 0.05 * pt.B0, _HU["stomach"], _HU["spleen"])
    organ2d = np.where(X2 - 0.5 * (Y2 - pt.ydd) > -0.15 * pt.A0, _HU["liver"], left_organ).astype(np.float32)
    deep = cavity & (Z < zdia[:, :, None] - 4.0)
    img = np.where(deep, organ2d[:, :, None], img)
    if pt.stomach_air:
        st_c = np.array([-0.45 * pt.A0, 0.25 * pt.B0, pt.zd_left - 22.0])
        st = (((X2 - st_c[0]) / 38.0) ** 2 + ((Y2 - st_c[1]) / 28.0) ** 2)[:, :, None] + ((Z - st_c[2]) / 16.0) ** 2 < 1
        st &= deep & (Z > st_c[2] - 2.0)
        img[st] = _HU["air"]
    del below, deep
    # heart with pericardial fat
    hm = 6 + pt.effusion_mm
    hi0, hi1 = _bbox(x, pt.heart_c[0] - pt.heart_r.max() - hm, pt.heart_c[0] + pt.heart_r.max() + hm)
    hj0, hj1 = _bbox(y, pt.heart_c[1] - pt.heart_r.max() - hm, pt.heart_c[1] + pt.heart_r.max() + hm)
    hk0, hk1 = _bbox(zf, pt.heart_c[2] - pt.heart_r[2] - hm, pt.heart_c[2] + pt.heart_r[2] + hm)
    hx, hy, hz = x[hi0:hi1, None, None], y[None, hj0:hj1, None], zf[None, None, hk0:hk1]
    sub = img[hi0:hi1, hj0:hj1, hk0:hk1]
    above = hz > zdia[hi0:hi1, hj0:hj1, None] - 3.0
    sub[pt.in_heart(hx, hy, hz, 3.0) & cavity[hi0:hi1, hj0:hj1, hk0:hk1] & above] = _HU["med_fat"]
    if pt.effusion_mm > 0:  # pericardial fluid around the heart, inside the fat
        sub[pt.in_heart(hx, hy, hz, pt.effusion_mm) & cavity[hi0:hi1, hj0:hj1, hk0:hk1] & above] = _HU["fluid"]
    sub[pt.in_heart(hx, hy, hz, 0.0) & above] = _HU["blood"]
    # great vessels and oesophagus (soft tissue tubes)
    tubes = _mediastinal_tubes(pt)
    soft = np.zeros(g.fine_shape, np.float32)
    _render_tubes(soft, x, y, zf, *tubes, ramp=dxy)
    # lungs
    i0, i1 = _bbox(x, -pt.A0 - 2, pt.A0 + 2)
    j0, j1 = _bbox(y, -pt.B0 - 2, pt.B0 + 2)
    k0, k1 = _bbox(zf, -14.0, H + 2)
    xb, yb, zb = x[i0:i1], y[j0:j1], zf[k0:k1]
    Xb, Yb, Zb = xb[:, None, None], yb[None, :, None], zb[None, None, :]
    rho_b = rho[i0:i1, j0:j1, k0:k1]
    lung_b = pt.lung_side(Xb, Yb, Zb, 1, rho_b) | pt.lung_side(Xb, Yb, Zb, -1, rho_b)
    lung_b &= soft[i0:i1, j0:j1, k0:k1] < 0.3
    hu_b = _upsample(dis.hu_smooth, dis.c0, _CS, xb, yb, zb)
    mef_b = _upsample(dis.m_ef, dis.c0, _CS, xb, yb, zb)
    _fibrosis_texture(pt, dis, hu_b, mef_b, lung_b, xb, yb, zb, dxy, rng)
    img_b = img[i0:i1, j0:j1, k0:k1]
    img_b[lung_b] = hu_b[lung_b]
    del hu_b, mef_b, rho_b
    # emphysema and bullae (only where the reference labels no lesion), visible fissures
    free_b = lung_b & (_upsample(dis.a_les, dis.c0, _CS, xb, yb, zb) < 0.3)
    emph_b = render_emphysema(img_b, lung_b, free_b, xb, yb, zb, (dxy, dxy, dzf), draw=pt.var, height_mm=H,
                              dsub_fn=lambda: pt.subpleural_distance(Xb, Yb, Zb))
    del free_b
    render_fissures(img_b, lung_b, xb, yb, zb, draw=pt.var, height_mm=H, depth_mm=pt.B0)
    extras = {"emphysema": np.zeros(g.fine_shape, bool), "oesophagus_air": np.zeros(g.fine_shape, bool)}
    extras["emphysema"][i0:i1, j0:j1, k0:k1] = emph_b
    del emph_b
    lung_f = np.zeros(g.fine_shape, bool)
    lung_f[i0:i1, j0:j1, k0:k1] = lung_b
    # soft-tissue tubes over the mediastinum
    m = soft > 0
    img[m] += (_HU["blood"] - img[m]) * soft[m]
    del soft
    lum = pt.var["oesophagus_lumen_mm"]
    if lum > 0:  # a dilated oesophagus holding air over a dependent fluid level
        o0, o1, _ = _oesophagus_axis(pt)
        occ = np.zeros(g.fine_shape, np.float32)
        _render_tubes(occ, x, y, zf, o0[None], o1[None], np.array([lum]), np.array([lum]), ramp=dxy)
        extras["oesophagus_air"] = render_oesophagus_lumen(img, occ, y, y_center=0.5 * (o0[1] + o1[1]), radius=lum,
                                                           fluid=pt.var["oesophagus_fluid"])
        del occ
    # vessels: thick ones analytic, thin ones as partial-volume deposits
    vp0, vp1, vr0, vr1 = trees.vessels
    big = np.maximum(vr0, vr1) >= 0.9 * dxy
    vocc = np.zeros(g.fine_shape, np.float32)
    _render_tubes(vocc, x, y, zf, vp0[big], vp1[big], vr0[big], vr1[big], ramp=dxy)
    small = _splat_tubes((i1 - i0, j1 - j0, k1 - k0), (xb[0], yb[0], zb[0]), (dxy, dxy, dzf),
                         vp0[~big], vp1[~big], vr0[~big], vr1[~big], step=0.5 * min(dxy, dzf))
    vb = vocc[i0:i1, j0:j1, k0:k1]
    vb += small
    np.minimum(vb, 1.0, out=vb)
    del small
    m = (vocc > 0) & (img < 0) & cavity
    img[m] += (_HU["blood"] - img[m]) * vocc[m]
    del vocc
    # airways: trachea and main bronchi anywhere; bronchi of the tree only in lung and mediastinal fat.
    # Walls and lumina are unions over all tubes, so one airway's lumen is never filled by another's wall.
    aw_o, aw_l, dil = _airway_segments(trees, dis, rng)
    oo = np.zeros(g.fine_shape, np.float32)
    ol = np.zeros(g.fine_shape, np.float32)
    _render_tubes(oo, x, y, zf, *aw_o, ramp=dxy)
    _render_tubes(ol, x, y, zf, *aw_l, ramp=dxy)
    soft_tissue = img >= -50
    oo[soft_tissue] = 0
    ol[soft_tissue] = 0
    del soft_tissue
    _render_tubes(oo, x, y, zf, *trees.airway_outer, ramp=dxy)
    _render_tubes(ol, x, y, zf, *trees.airway_lumen, ramp=dxy)
    m = oo > 0
    o_m = oo[m]
    l_m = np.minimum(ol[m], o_m)
    img[m] = img[m] * (1 - o_m) + _HU["airway_wall"] * (o_m - l_m) + _HU["air"] * l_m
    del oo, ol
    dis.params["bronchiectasis_dilation"] = dil
    # bones
    _bones(pt, g, img, body, dout, phi, cavity)
    # scanner table
    half_fov = 0.5 * (x[-1] - x[0])
    yt = y_flat - pt.table_gap - 0.0012 * X2 ** 2
    inx = np.abs(X2) < half_fov - 8
    shell = inx & (((Y2 <= yt) & (Y2 > yt - 3.0)) | ((Y2 <= yt - 32) & (Y2 > yt - 35.0)))
    foam = inx & (Y2 <= yt - 3.0) & (Y2 > yt - 32.0)
    img[foam] = _HU["foam"]
    img[shell] = _HU["table"]
    return img, lung_f, body, extras


def _mediastinal_tubes(pt: _Patient):
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
    o0, o1, r_oes = _oesophagus_axis(pt)
    segs.append((o0, o1, r_oes, r_oes))
    p0 = np.array([s[0] for s in segs]); p1 = np.array([s[1] for s in segs])
    return p0, p1, np.array([s[2] for s in segs]), np.array([s[3] for s in segs])


def _oesophagus_axis(pt: _Patient):
    """The oesophagus: centre line (two points, mm) and outer radius (wider when dilated)."""
    r = max(7.0, pt.var["oesophagus_lumen_mm"] + 3.0)
    oes_y = pt.ysp + pt.rv + r  # its wall rests on the front of the spine
    return np.array([-4.0, oes_y, pt.H + 60]), np.array([-10.0, oes_y + 4, -30.0]), r


def _fibrosis_texture(pt, dis, hu_b, mef_b, lung_b, xb, yb, zb, dxy, rng):
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
    lo = np.array([ii[a].min() for a in range(3)]) * _CS + np.asarray(dis.c0) - 2 * cell
    hi = np.array([ii[a].max() for a in range(3)]) * _CS + np.asarray(dis.c0) + 2 * cell
    axes = [np.arange(lo[a], hi[a], cell) for a in range(3)]
    S = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    S = S + rng.uniform(-0.38, 0.38, S.shape) * cell
    keep = _sample_points(dis.m_ef, dis.c0, _CS, S) > 0.005
    S = S[keep]
    if len(S) < 3:
        return
    cyst = rng.random(len(S)) < _sample_points(dis.hc_prob, dis.c0, _CS, S)
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


def _bones(pt: _Patient, g: _Grid, img, body, dout, phi, cavity):
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
    val[cart] = _HU["cartilage"]
    val[rib] = np.where(e[rib] > 0.4, _HU["cortical"], _HU["marrow"])
    # sternum
    xv = x[ix]
    w_st = np.where(zv > 0.78 * H, 24.0, 13.0)
    st = (np.abs(xv) < w_st) & (dv > 1.5) & (dv < 11.0) & (ph > 0.9 * np.pi) & (zv > 0.32 * H) & (zv < 0.86 * H)
    val[st] = np.where((dv[st] < 3.0) | (dv[st] > 9.5), _HU["cortical"] * 0.8, _HU["marrow"] + 60)
    # scapulae
    sc = (dv > 10.0) & (dv < 14.5) & (ph > 0.2 * np.pi) & (ph < 0.47 * np.pi) & (zv > 0.52 * H) & (zv < H + 30)
    val[sc] = 520.0
    ok = ~np.isnan(val)
    img[ix[ok], iy[ok], iz[ok]] = val[ok]
    del band
    # spine
    i0, i1 = _bbox(x, -45, 45)
    j0, j1 = _bbox(y, pt.ysp - pt.rv - 50, pt.ysp + pt.rv + 2)
    X = x[i0:i1, None, None]
    Y = y[None, j0:j1, None]
    Z = zf[None, None, :]
    sub = img[i0:i1, j0:j1, :]
    bsub = body[i0:i1, j0:j1, :]
    rr = np.sqrt(X ** 2 + (Y - pt.ysp) ** 2)
    disc = ((Z / pt.disc_pitch + pt.disc_phase) % 1.0) < 0.17
    vb = (rr < pt.rv) & bsub
    sub[vb & disc] = _HU["disc"]
    sub[vb & ~disc & (rr >= pt.rv - 1.6)] = _HU["cortical"]
    sub[vb & ~disc & (rr < pt.rv - 1.6)] = _HU["marrow"]
    ycan = pt.ysp - pt.rv - 9.0
    rc = np.sqrt(X ** 2 + (Y - ycan) ** 2)
    arch = (rc > 8.0) & (rc < 13.0) & (Y < ycan + 3.0)
    spin = (np.abs(X) < 3.5) & (Y < ycan - 11.0) & (Y > ycan - 34.0)
    trans = (np.abs(X) > 11.0) & (np.abs(X) < 32.0) & (np.abs(Y - ycan - 2.0) < 4.5)
    post = (arch | spin | trans) & ~disc & bsub
    sub[post] = 600.0
    sub[(rc <= 8.0) & bsub] = _HU["csf"]


def _scan(img_f, g: _Grid, pt: _Patient, rng, body_f):
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


def _labels(g: _Grid, dis: _Disease, lung_f):
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
    a_les = _upsample(dis.a_les, dis.c0, _CS, xs, ys, zs)
    a_ef = _upsample(dis.a_ef, dis.c0, _CS, xs, ys, zs)
    lb = lung[sl]
    sub = np.where(lb, _LABEL_NORMAL, 0).astype(np.uint8)
    sub[lb & (a_les > 0.5)] = _LABEL_GGO
    sub[lb & (a_ef > 0.5)] = _LABEL_EF
    label[sl] = sub
    return label


# =============================================================================================
# the cohort folder
# =============================================================================================
_LICENCE = ("CC0-1.0: synthetic images, labels and lung function generated by the sscild phantom; "
            "no patient data")


def _nifti_bytes(arr, affine) -> bytes:
    """A deterministic .nii.gz: nibabel header and data, gzip with mtime 0 and no file name."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    if arr.dtype == np.int16:
        img.header["descrip"] = b"sscild phantom CT (HU)"
    else:
        img.header["descrip"] = b"sscild phantom labels"
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=4, mtime=0) as fh:
        fh.write(raw)
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _settings(prof: Profile, n: int, seed: int, variety: Variety) -> dict:
    return {"version": PHANTOM_VERSION, "seed": int(seed), "profile": prof.name, "n": int(n),
            "nominal_shape": [int(v) for v in prof.phantom_shape],
            "nominal_spacing_mm": [float(v) for v in prof.phantom_spacing], "variety": variety.to_dict()}


def _case_job(args):
    """Generate and write one case; returns its clinical row and truth (runs in worker processes)."""
    i, prof, seed, out, variety = args
    case = generate_case(i, profile=prof, seed=seed, variety=variety)
    out = Path(out)
    _write_bytes(out / "imagesTr" / f"{case.case_id}_0000.nii.gz", _nifti_bytes(case.image, case.affine))
    _write_bytes(out / "labelsTr" / f"{case.case_id}.nii.gz", _nifti_bytes(case.label, case.affine))
    return case.case_id, case.clinical, {k: v for k, v in case.truth.items() if k != "clinical_complete"}


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e6 else repr(v)
    return str(v)


def _write_csv(path: Path, columns, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buf.getvalue())


def _default_workers(prof: Profile, n: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(np.prod(prof.phantom_shape)) < 1_000_000 or n < 4:
        return 1  # process start-up would cost more than it saves
    per_case_gb = 2.8 * np.prod(prof.phantom_shape) / (512 * 512 * 240)
    mem_cap = 8
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        mem_cap = max(1, int(0.6 * mem_gb // max(per_case_gb, 0.3)))
    except (ValueError, OSError, AttributeError):
        pass
    return int(max(1, min(cpus, n, 8, mem_cap)))


def generate_cohort(out_dir, *, profile: str | Profile = "cpu", n: int | None = None, seed: int = 0,
                    progress: bool = True, workers: int | None = None, variety: Variety | None = None) -> Path:
    """Write a synthetic SSc-ILD cohort folder (nnU-Net v2 raw layout plus ``clinical.csv``).

    Layout: ``dataset.json`` (written last: it marks the cohort complete), ``imagesTr/case_000_0000.nii.gz``
    (int16 HU), ``labelsTr/case_000.nii.gz`` (uint8: 0 background, 1 normal lung, 2 EF, 3 GGO),
    ``clinical.csv`` (see :data:`CLINICAL_COLUMNS`) and ``phantom_truth.csv`` (true extents and
    generating parameters per case). Same settings give byte-identical files. The settings are also
    written first to ``.phantom_settings.json``, so an interrupted run can be completed by running
    the same call again.

    Args:
        out_dir: the cohort folder (created; must be empty, absent, or this same phantom).
        profile: run profile (name or :class:`~sscild.profiles.Profile`); ``n`` defaults to its
            ``phantom_n``.
        n: number of patients.
        seed: cohort seed.
        progress: show a tqdm bar (one step per case).
        workers: processes (default: one per core for cpu- and paper-sized cases, one for tiny ones);
            the files do not depend on it.
        variety: the variety knobs (:class:`~sscild.synthetic.variety.Variety`; default: its defaults).

    Returns:
        the folder's path.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds something else (another cohort, another
            phantom's settings, foreign files).

    Example:
        >>> generate_cohort("data/phantom-smoke", profile="smoke", progress=False)  # doctest: +SKIP
        PosixPath('data/phantom-smoke')
    """
    prof = get_profile(profile)
    if n is None:
        n = prof.phantom_n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"generate_cohort: n must be a positive integer, got {n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"generate_cohort: seed must be a non-negative integer, got {seed!r}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"generate_cohort: workers must be a positive integer or None, got {workers!r}.")
    out = Path(out_dir)
    variety = Variety() if variety is None else variety
    settings = _settings(prof, n, seed, variety)
    marker = out / ".phantom_settings.json"
    ids = [f"case_{i:03d}" for i in range(n)]
    expected = {f"imagesTr/{c}_0000.nii.gz" for c in ids} | {f"labelsTr/{c}.nii.gz" for c in ids}
    if out.exists() and not out.is_dir():
        raise ValueError(f"generate_cohort: {out} exists and is not a folder. Choose another output folder.")
    if out.exists() and any(out.iterdir()):
        ds = out / "dataset.json"
        found = None
        if ds.exists():
            try:
                found = read_json(ds).get("phantom")
            except (ValueError, OSError, AttributeError):
                found = None
        elif marker.exists():
            try:
                found = read_json(marker)
            except (ValueError, OSError):
                found = None
        if found is None:
            raise ValueError(
                f"generate_cohort: {out} is not empty and is not a synthetic phantom cohort (no phantom "
                f"settings in dataset.json or {marker.name}). Refusing to write into it: choose an empty "
                "or new folder.")
        if found != settings:
            raise ValueError(
                f"generate_cohort: {out} holds a phantom cohort made with other settings ({found}); "
                f"requested {settings}. Refusing to overwrite it: choose another folder, or delete this "
                "one to regenerate.")
        present = {str(p.relative_to(out)) for p in out.glob("*Tr/*.nii.gz")}
        if ds.exists() and expected <= present and (out / "clinical.csv").exists():
            return out  # complete, same settings: nothing to do
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)
    if workers is None:
        workers = _default_workers(prof, n)
    jobs = [(i, prof, int(seed), str(out), variety) for i in range(n)]
    results = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"phantom ({prof.name})", unit="case")
    try:
        if workers > 1:
            import multiprocessing as mp
            import warnings
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
                    futs = [ex.submit(_case_job, j) for j in jobs]
                    for f in as_completed(futs):
                        cid, clin, truth = f.result()
                        results[cid] = (clin, truth)
                        if bar is not None:
                            bar.update(1)
            except BrokenProcessPool:
                # e.g. a __main__ that worker processes cannot import (code piped to python)
                warnings.warn("generate_cohort: worker processes failed to start; generating the remaining "
                              "cases in this process (the files are the same).", RuntimeWarning, stacklevel=2)
        for j in jobs:
            if f"case_{j[0]:03d}" in results:
                continue
            cid, clin, truth = _case_job(j)
            results[cid] = (clin, truth)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rows = [dict(case_id=c, **results[c][0]) for c in ids]
    _write_csv(out / "clinical.csv", CLINICAL_COLUMNS, rows)
    tcols = ["case_id", "ef_pct", "ggo_pct", "lesion_pct", "lung_ml", "ef_ml", "ggo_ml"]
    extra = sorted({k for c in ids for k in results[c][1]} - set(tcols) - {"shape"})
    trows = []
    for c in ids:
        t = dict(results[c][1])
        t["case_id"] = c
        trows.append(t)
    _write_csv(out / "phantom_truth.csv", tcols + extra, trows)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "normal": 1, "ef": 2, "ggo": 3},
        "numTraining": int(n),
        "file_ending": ".nii.gz",
        "name": f"sscild-phantom-{prof.name}",
        "description": ("Synthetic SSc-ILD HRCT cohort (digital chest phantom, NSIP-like disease) with "
                        "planted lung-function values; see sscild.synthetic.phantom for the model."),
        "synthetic": True,
        "licence": _LICENCE,
        "source": f"sscild synthetic SSc-ILD phantom v{PHANTOM_VERSION}, seed {int(seed)}, profile {prof.name}",
        "clinical_table": "clinical.csv",
        "phantom": settings,
    }
    write_json(out / "dataset.json", dataset)
    return out
