"""sscild: an executable re-run of an SSc-ILD HRCT lesion-segmentation study.

Modules flow one way (top depends only on those above it)::

    profiles, paths, paper        settings, results layout, the published numbers
    io                            CT / label reading and writing with geometry
    cohort                        cohort folder: discovery, validation, clinical table
    phantom                       the synthetic SSc-ILD cohort generator
    preprocess                    orientation, resampling, HU normalisation, cropping, cache
    folds                         patient-wise stratified K-fold -> splits.json
    model                         network factory (MONAI)
    train                         one fold's training loop, checkpoints, resume
    metrics, baseline             Dice / surface Dice / volumes / agreement; HU density baseline
    stats                         correlations, multiplicity, staging
    zones                         EF / GGO extent per lung zone (sides, thirds, peripheral band)
    viewer                        Slicer .seg.nrrd, ITK-SNAP labels, DICOM Segmentation
    scanreport                    the self-contained HTML page per scan and per comparison
    predict                       out-of-fold and ensemble inference; which models segment uses
    batch, compare                segment a folder of scans; change between two scans
    plots, report                 figures and notebook helpers
    cli                           the ``sscild`` command
"""

__version__ = "0.1.0"

LABELS = {"background": 0, "normal": 1, "ef": 2, "ggo": 3}
"""The study's label roles and their integer values in every label map this package writes."""

CLASS_NAMES = {1: "normal lung", 2: "established fibrosis (EF)", 3: "ground-glass opacity (GGO)"}
