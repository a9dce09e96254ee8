"""Data: everything between files on disk and the arrays the network sees.

io          CT / label reading and writing with geometry, DICOM import
cohort      the cohort folder: discovery, validation, the clinical table
preprocess  orientation, resampling, HU normalisation, cropping, the case cache
folds       patient-wise stratified K-fold -> splits.json
lungmask    the classical (threshold + components) lung mask and parenchyma statistics
"""
