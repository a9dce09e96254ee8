"""The published study's numbers, quoted (not computed) so chapters can set this run beside them.

Source: the SSc-ILD HRCT dataset and deep-learning segmentation study (Reumatismo; SICCS dataset):
40 patients, 8-fold patient-wise cross-validation.
"""

PAPER = {
    "n_patients": 40,
    "num_folds": 8,
    "dice": {"total_lesion": 0.78, "ef": 0.70, "ggo": 0.73},
    "spearman_rho": {"fev1_pct": -0.64, "fev1_fvc": -0.73},
    "spearman_p": "< 0.001",
}

EXTENT_THRESHOLD_PCT = 20.0
"""Goh et al. 2008: limited (<= 20 % of lung) vs extensive (> 20 %) disease."""
