"""Scoring: how good a segmentation is and what the numbers say.

overlap     Dice and surface Dice of two binary masks, the empty-mask policy
metrics     per-case metrics of a label map (regions, volumes, NSD tolerance) and their summary over cases
agreement   agreement of two methods: ICC, Bland–Altman (fixed and regression-based), paired differences
bootstrap   patient-level bootstrap intervals and the checks of per-patient values
stats       rank correlations with lung function: Spearman, partial Spearman, the Holm-adjusted grid
staging     extent stage (Goh et al. 2008) and its agreement with the reference
baseline    the HU-density (histogram) baseline the network is compared with
"""
