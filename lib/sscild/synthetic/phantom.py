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
patients with :func:`~sscild.synthetic.lungfunction.simulate_population`). About 10 % of DLCO and
5 % of spirometry values are missing. The constants are exposed as
:data:`sscild.synthetic.lungfunction.CLINICAL_MODEL`.

This module assembles one patient (:func:`generate_case`) from the parts: population and lung function
(:mod:`~sscild.synthetic.lungfunction`), anatomy (:mod:`~sscild.synthetic.anatomy`), disease and reference
labels (:mod:`~sscild.synthetic.disease`), vascular and airway trees (:mod:`~sscild.synthetic.trees`), the
rendered CT (:mod:`~sscild.synthetic.render`, :mod:`~sscild.synthetic.body`) and the scanner
(:mod:`~sscild.synthetic.scanner`); :mod:`sscild.synthetic.writer` writes a cohort folder of them.

Example:
    >>> from sscild.synthetic.phantom import generate_case
    >>> from sscild.profiles import get_profile
    >>> case = generate_case(0, profile=get_profile("smoke"))
    >>> case.image.dtype, sorted(set(case.label.ravel().tolist()))
    (dtype('int16'), [0, 1, 2, 3])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sscild.profiles import PROFILES, Profile, require_profile
from sscild.synthetic.anatomy import Patient
from sscild.synthetic.disease import LABEL_EF, LABEL_GGO, disease_fields, reference_labels
from sscild.synthetic.lungfunction import case_seeds, clinical_from_extent, population_draw
from sscild.synthetic.render import render
from sscild.synthetic.scanner import make_grid, scan, to_scan_grid
from sscild.synthetic.trees import build_trees
from sscild.synthetic.variety import Variety, draw_variety

__all__ = ["PHANTOM_VERSION", "PhantomCase", "generate_case"]

PHANTOM_VERSION = "2.0"
"""Version of the generator; part of every cohort's settings (a change regenerates nothing silently)."""


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


def _check_case_args(case_index, seed):
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 0:
        raise ValueError(f"case_index must be a non-negative integer, got {case_index!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def generate_case(case_index: int, *, profile: Profile = PROFILES["cpu"], seed: int = 0,
                  variety: Variety | None = None, lesion_scale: float = 1.0, healthy: bool = False) -> PhantomCase:
    """Generate one synthetic SSc-ILD patient (image, reference labels, lung function, truth).

    The patient (anatomy, disease, lung function) depends only on ``seed`` and ``case_index``; the
    profile sets the scanner grid around its nominal shape and spacing.

    Args:
        case_index: 0, 1, 2, ... (the case id is ``case_{index:03d}``).
        profile: the resolved :class:`~sscild.profiles.Profile` (names are refused: :func:`~sscild.profiles.require_profile`).
        seed: cohort seed.
        variety: the variety knobs (:class:`~sscild.synthetic.variety.Variety`; default: its defaults).
        lesion_scale: multiplies the patient's drawn lesion fraction (capped at 0.9 of the lung); the
            anatomy, scanner and disease pattern stay those of the same patient, so two values give
            the same patient at two disease levels (a follow-up with a known change). Default 1.
        healthy: a control without lung disease: the same patient (anatomy, emphysema, scanner) with no
            EF or GGO at all and no fibrotic volume loss; its reference labels are normal lung only.

    Returns:
        :class:`PhantomCase`; ``masks`` holds the emphysema and oesophageal-air masks on the scan grid.

    Example:
        >>> from sscild.profiles import get_profile
        >>> case = generate_case(3, profile=get_profile("smoke"), seed=0)
        >>> case.case_id
        'case_003'
    """
    _check_case_args(case_index, seed)
    prof = require_profile(profile)
    rngs = case_seeds(seed, case_index)
    pop = population_draw(rngs[0], case_index, seed)
    if float(lesion_scale) != 1.0:
        if not float(lesion_scale) > 0:
            raise ValueError(f"lesion_scale must be > 0, got {lesion_scale!r}.")
        pop = {**pop, "lesion_frac": min(0.9, pop["lesion_frac"] * float(lesion_scale))}
    if healthy:
        pop = {**pop, "lesion_frac": 0.0}
    variety = Variety() if variety is None else variety
    if not isinstance(variety, Variety):
        raise ValueError(f"variety must be a sscild.synthetic.variety.Variety, got {type(variety).__name__}")
    var = draw_variety(rngs[7], variety)
    pt = Patient(rngs[1], pop, var, variety)
    g = make_grid(pt, prof)
    dis = disease_fields(pt, rngs[3])
    trees = build_trees(pt, rngs[2])
    img_f, lung_f, body_f, extras = render(pt, g, dis, trees, rngs[4])
    image = scan(img_f, g, pt, rngs[5], body_f)
    del img_f, body_f
    label = reference_labels(g, dis, lung_f)
    masks = {k: to_scan_grid(m, g) for k, m in extras.items()}
    del extras
    vox_ml = float(np.prod(g.spacing)) / 1000.0
    n_lung = int((label > 0).sum())
    n_ef = int((label == LABEL_EF).sum())
    n_ggo = int((label == LABEL_GGO).sum())
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
