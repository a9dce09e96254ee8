"""What real chests have that a tidy phantom lacks: the variety knobs of the synthetic cohort.

A network trained only on lungs of one density learns "lung is about -850 HU" and fails on the first
real patient: emphysema and bullae (-950 HU and below) are left out of the lung, a poorly inspired,
dense base is taken for disease, an air-filled oesophagus or the foam of the scanner table is taken
for lung. Each of those is drawn here, per patient, with its own knob in :class:`Variety`; a knob at
zero removes the feature. Every draw comes from its own random stream, so a knob changes nothing
but its feature.

* **Inspiration** (``inspiration``, ``density_span_hu``): the parenchyma's base attenuation runs from
  about -830 HU (shallow breath) to -930 HU (deep breath) before vessels and partial volume, the lung
  is shorter at shallow inspiration, and the antero-posterior (gravity-dependent) density gradient of
  a supine scan is steeper (``gravity_hu``, up to about 85 HU across the lung).
* **Emphysema** (``emphysema_prob``, ``emphysema_max_pct``, ``paraseptal_share``): centrilobular
  (clusters of 2-10 mm lucencies without walls, upper-zone predominant) or paraseptal (a subpleural
  row of larger lucencies with thin walls), from none to severe; and **bullae** (``bullae_prob``:
  thin-walled air spaces of 1.5-4.5 cm, apical and subpleural). Emphysematous lung is lung: it
  carries the *normal* label and is drawn only where the reference labels no lesion.
* **Look-alikes outside the lung**: a dilated, air-filled oesophagus with a fluid level
  (``oesophagus_prob``; oesophageal dilatation is common in systemic sclerosis), pericardial
  effusion (``effusion_prob``), visible oblique fissures (``fissure_prob``), a wider spread of body
  habitus (``habitus_sd``, ``fat_max_mm``). The trachea and main bronchi, outside air, breast tissue
  and the scanner table with its foam mattress (about -920 HU) are part of the anatomy already.

Example:
    >>> Variety.none().emphysema_prob, Variety().emphysema_prob > 0
    (0.0, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Variety", "draw_variety", "render_emphysema", "render_fissures", "render_oesophagus_lumen"]

EMPHYSEMA_HU = (-995.0, -965.0)
"""Attenuation of emphysematous spaces (uniform range per patient)."""


@dataclass(frozen=True)
class Variety:
    """Per-cohort knobs of the variety real chests have (all draws are per patient)."""

    inspiration: tuple[float, float] = (0.0, 1.0)
    """Range of the inspiration level (0 shallow .. 1 deep) drawn per patient."""
    density_span_hu: float = 100.0
    """Base parenchymal attenuation falls by this much from the shallowest to the deepest breath."""
    gravity_hu: tuple[float, float] = (25.0, 60.0)
    """Range of the posterior-minus-anterior density difference (scaled up at shallow inspiration)."""
    emphysema_prob: float = 0.4
    """Share of patients with emphysema."""
    emphysema_max_pct: float = 25.0
    """Most severe emphysema, in percent of the lung volume (severity is drawn between 0.5 % and this)."""
    paraseptal_share: float = 0.35
    """Share of the emphysematous patients whose emphysema is paraseptal rather than centrilobular."""
    bullae_prob: float = 0.2
    """Share of patients with one to three bullae."""
    oesophagus_prob: float = 0.35
    """Share of patients with a dilated, air-filled oesophagus."""
    effusion_prob: float = 0.15
    """Share of patients with a pericardial effusion (4-15 mm)."""
    fissure_prob: float = 0.7
    """Probability that an oblique fissure is visible, per lung."""
    habitus_sd: float = 0.08
    """Relative standard deviation of body size around the size predicted by height."""
    fat_max_mm: float = 45.0
    """Thickest subcutaneous fat layer."""

    @classmethod
    def none(cls) -> "Variety":
        """No emphysema, bullae, oesophageal air, effusion or fissures; one inspiration level (0.5)."""
        return cls(inspiration=(0.5, 0.5), density_span_hu=0.0, emphysema_prob=0.0, bullae_prob=0.0,
                   oesophagus_prob=0.0, effusion_prob=0.0, fissure_prob=0.0)

    def __post_init__(self):
        lo, hi = self.inspiration
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"Variety.inspiration must be (low, high) within [0, 1], got {self.inspiration!r}")
        for name in ("emphysema_prob", "paraseptal_share", "bullae_prob", "oesophagus_prob", "effusion_prob",
                     "fissure_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"Variety.{name} must be a probability in [0, 1], got {v!r}")
        if not 0.0 <= self.emphysema_max_pct <= 60.0:
            raise ValueError(f"Variety.emphysema_max_pct must be within [0, 60], got {self.emphysema_max_pct!r}")
        if self.density_span_hu < 0 or self.habitus_sd < 0 or self.fat_max_mm < 4:
            raise ValueError("Variety.density_span_hu and habitus_sd must be >= 0 and fat_max_mm >= 4")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def with_overrides(self, **kw) -> "Variety":
        return replace(self, **kw)


def draw_variety(rng: np.random.Generator, v: Variety) -> dict:
    """One patient's variety features (the generator's truth records them)."""
    u = rng.random(12)
    has_emph = u[0] < v.emphysema_prob
    sev = 0.0
    if has_emph:
        sev = 0.5 + (v.emphysema_max_pct - 0.5) * float(rng.beta(1.1, 2.6))
    kind = "paraseptal" if (has_emph and u[1] < v.paraseptal_share) else ("centrilobular" if has_emph else "none")
    n_bullae = int(rng.integers(1, 4)) if u[2] < v.bullae_prob else 0
    dil = u[3] < v.oesophagus_prob
    eff = u[4] < v.effusion_prob
    return {
        "inspiration": float(v.inspiration[0] + (v.inspiration[1] - v.inspiration[0]) * u[5]),
        "gravity_hu": float(v.gravity_hu[0] + (v.gravity_hu[1] - v.gravity_hu[0]) * u[6]),
        "emphysema_target_pct": float(sev),
        "emphysema_kind": kind,
        "bullae": n_bullae,
        "oesophagus_lumen_mm": float(rng.uniform(6.0, 14.0)) if dil else 0.0,
        "oesophagus_fluid": float(rng.uniform(0.0, 0.5)) if dil else 0.0,
        "effusion_mm": float(rng.uniform(4.0, 15.0)) if eff else 0.0,
        "fissures": [bool(u[7] < v.fissure_prob), bool(u[8] < v.fissure_prob)],
        "fissure_level": [float(rng.uniform(0.34, 0.46)), float(rng.uniform(0.34, 0.46))],
        "emphysema_hu": float(rng.uniform(*EMPHYSEMA_HU)),
        "stream": int(rng.integers(2**62)),
    }


def render_emphysema(img_b, lung_b, free_b, xb, yb, zb, spacing, *, draw: dict, height_mm: float,
                     dsub_fn) -> np.ndarray:
    """Emphysema and bullae drawn into ``img_b`` (in place) where ``free_b`` (lung without lesion).

    Args:
        img_b: HU of the lung bounding box (float32, modified in place).
        lung_b: the lung inside the box; ``free_b``: the part of it eligible for emphysema.
        xb, yb, zb: the box's mm coordinates; ``spacing``: its voxel size (mm).
        draw: from :func:`draw_variety`.
        height_mm: lung height (z from 0 at the lowest point to the apex).
        dsub_fn: ``dsub_fn()`` returns the distance to the pleura (mm) on the box (computed on demand).

    Returns:
        the emphysema / bulla mask on the box (bool).
    """
    mask = np.zeros(lung_b.shape, bool)
    sev = draw["emphysema_target_pct"] / 100.0
    if sev <= 0 and not draw["bullae"]:
        return mask
    rng = np.random.default_rng(draw["stream"])
    t = np.clip(zb / height_mm, 0.0, 1.0)[None, None, :].astype(np.float32)
    hu_e = np.float32(draw["emphysema_hu"])
    n_lung = max(int(lung_b.sum()), 1)
    dsub = None
    if sev > 0:
        para = draw["emphysema_kind"] == "paraseptal"
        scale_mm = 3.2 if para else 1.8
        sig = [scale_mm / s for s in spacing]
        field = ndi.gaussian_filter(rng.standard_normal(lung_b.shape).astype(np.float32), sig, mode="reflect")
        field /= float(field.std()) + 1e-6
        score = field + 1.6 * t                       # upper-zone predominance
        cand = free_b.copy()
        if para:
            dsub = dsub_fn()
            cand &= dsub < 9.0
            score += 0.8 * np.exp(-dsub / 4.0)
        n_c = int(cand.sum())
        if n_c:
            share = min(0.9, sev * n_lung / n_c)
            thr = float(np.quantile(score[cand], 1.0 - share))
            soft = np.clip((score - thr) / 0.3, 0.0, 1.0) * cand
            img_b += (hu_e - img_b) * soft
            mask |= soft >= 0.5
            if para:   # thin walls between the subpleural spaces
                wall = cand & (score > thr - 0.2) & (score <= thr)
                img_b[wall] += np.float32(110.0)
        del field, score
    for _ in range(int(draw["bullae"])):
        if dsub is None:
            dsub = dsub_fn()
        cand = free_b & (dsub < 10.0) & (t > 0.55)
        idx = np.flatnonzero(cand)
        if not idx.size:
            break
        c = np.unravel_index(idx[rng.integers(idx.size)], cand.shape)
        r = float(rng.uniform(7.5, 22.0))
        d = np.sqrt((xb[:, None, None] - xb[c[0]]) ** 2 + (yb[None, :, None] - yb[c[1]]) ** 2
                    + (zb[None, None, :] - zb[c[2]]) ** 2)
        inside = (d < r) & lung_b
        shell = (d >= r) & (d < r + 1.3) & lung_b
        img_b[inside] = np.float32(-1000.0)
        img_b[shell] = np.maximum(img_b[shell], np.float32(-450.0))
        mask |= inside
    return mask


def render_fissures(img_b, lung_b, xb, yb, zb, *, draw: dict, height_mm: float, depth_mm: float) -> None:
    """Oblique (major) fissures as thin, partial-volume sheets in each lung where visible (in place).

    The sheet runs from about 0.75 of the lung height posteriorly down to the front of the base; its
    level varies per patient and side.
    """
    if not any(draw["fissures"]):
        return
    slope = 0.36 * height_mm / depth_mm                      # rises posteriorly
    Y = yb[None, :, None]
    Z = zb[None, None, :]
    norm = math.sqrt(1.0 + slope * slope)
    for side, (visible, level) in enumerate(zip(draw["fissures"], draw["fissure_level"])):
        if not visible:
            continue
        half = (xb > 0) if side == 0 else (xb < 0)
        d = np.abs(Z - (level * height_mm - slope * Y)) / norm     # mm from the sheet
        occ = np.clip(1.0 - d / 0.9, 0.0, 1.0).astype(np.float32)
        occ = occ * half[:, None, None] * lung_b
        img_b += (np.float32(-350.0) - img_b) * (0.55 * occ)


def render_oesophagus_lumen(img, lumen_occ, y, *, y_center: float, radius: float, fluid: float) -> np.ndarray:
    """Air (with a dependent fluid level) inside a dilated oesophagus; returns the air mask (in place)."""
    level = y_center - radius + 2.0 * radius * fluid       # supine: fluid lies posteriorly (low y)
    is_air = (y[None, :, None] > level)
    air = np.broadcast_to(np.where(is_air, np.float32(-1000.0), np.float32(12.0)), img.shape)
    m = lumen_occ > 0
    occ = lumen_occ[m]
    img[m] = img[m] * (1 - occ) + air[m] * occ
    return (lumen_occ >= 0.5) & np.broadcast_to(is_air, img.shape)
