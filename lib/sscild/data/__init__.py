"""Data: everything between files on disk and the arrays the network sees.

image              Volume; reading CT / label files and DICOM series with their geometry
series             the DICOM series of a folder: finding, describing, choosing one (lung kernel, --series-uid)
nifti_writer       atomic, byte-deterministic NIfTI writing (save_volume)
dicom              DICOM series (one folder per patient) -> pseudonymised cohort folder
segfiles           corrected segmentations (3D Slicer .seg.nrrd, DICOM SEG) -> the study's label map on a CT's grid
names              the normal form label and column names are matched in
cohort             the cohort folder: dataset.json, discovery of its cases, reading one case
labels             label maps: study roles of dataset.json label names, --label-map / SSCILD_LABEL_MAP
clinical_table     clinical.csv read and checked (flagged values missing)
validation_report  Problem, ValidationReport and the problem kinds
validate           validation of a cohort folder: every problem at once, each with its fix
preprocess         orientation, resampling, HU normalisation, cropping of one scan; restoring a label map
cache              the per-case cache of preprocessed cases, keyed by input bytes and settings
folds              patient-wise stratified K-fold -> splits.json
prepare            make's data stage: validation.json, the cache with cases.csv, splits.json; reading them back
lungmask           the classical (threshold + components) lung mask and parenchyma statistics
"""
