"""Scoring: how good a segmentation is and what the numbers say.

metrics     Dice, surface Dice, volumes, agreement
stats       correlations, multiplicity, staging, bootstrap intervals
baseline    the HU-density (histogram) baseline the network is compared with
"""
