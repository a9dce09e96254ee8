"""The external check: the study's recipe trained and scored on real labelled CT slices.

benchmark   reading the benchmark folders, cross-validation, test, recipes, tables
"""
