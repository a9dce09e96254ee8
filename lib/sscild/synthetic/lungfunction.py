"""The synthetic patients' population and their planted lung function.

Each synthetic patient's disease severity (total lesion share of the lung, the share of it that is
established fibrosis) and demographics (age, sex, height) are drawn here, and their lung function
(FVC, FEV1, FEV1/FVC, DLCO) is generated from the true EF and GGO extents by the planted model
:data:`CLINICAL_MODEL` (its equations are written out in :mod:`sscild.synthetic.phantom`). The
relationships are put there on purpose: they are not findings.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta as _beta_dist

__all__ = ["CLINICAL_MODEL", "case_seeds", "population_draw", "clinical_from_extent", "simulate_population"]

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
    "fev1_fvc": {"equation": "(83 - 0.20*(age - 40) + 0.10*EF + e_R) / 100  (a ratio, as in clinical.csv)",
                 "intercept": 83.0,
                 "age": -0.20, "age_ref": 40.0, "ef": 0.10, "noise_sd": 4.5},
    "fev1_pct": {"equation": "FVC%pred * 100*(FEV1/FVC) / (83 - 0.20*(age - 40)) + e_FEV1",
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


def case_seeds(seed: int, case_index: int) -> list[np.random.Generator]:
    """The eight independent random streams of one case: population, anatomy, trees, disease, rendering,
    scanner noise, lung-function noise and variety, in that order."""
    ss = np.random.SeedSequence(entropy=[int(seed), 0x55C11D, int(case_index)])
    return [np.random.default_rng(s) for s in ss.spawn(8)]


def population_draw(rng: np.random.Generator, case_index: int, seed: int) -> dict:
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
        >>> df = simulate_population(200, seed=1)
        >>> float(round(df[["lesion_pct", "fvc_pct"]].corr("spearman").iloc[0, 1], 1))
        -0.6
    """
    import pandas as pd

    if n < 1:
        raise ValueError(f"simulate_population: n must be >= 1, got {n}.")
    rows = []
    for i in range(n):
        rngs = case_seeds(seed, i)
        p = population_draw(rngs[0], i, seed)
        ef = 100 * p["lesion_frac"] * p["ef_share"]
        ggo = 100 * p["lesion_frac"] - ef
        rows.append(dict(lesion_pct=ef + ggo, ef_pct=ef, ggo_pct=ggo, age=p["age"], sex=p["sex"],
                         height_cm=p["height_cm"], **clinical_from_extent(ef, ggo, p["age"], rngs[6])))
    return pd.DataFrame(rows)
