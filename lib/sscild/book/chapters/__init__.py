"""One module per chapter: what the chapter's notebook shows, read from the run's files and the records.

A chapter notebook imports its module here, :mod:`sscild.book.report` and at most one more sscild
module (``tests/test_layering.py``); the analyses' numbers are formatted for the page here.

abstract         the Abstract: claims ledger, methods of the paper against the re-run, the run in one paragraph
data             the Data chapter: the data stage's records read back, Table 1, voxel grids, validation problems, folds, phantom
training         the Model & training chapter: recipe, learning curves, plateau check, fold costs, pretraining (read only)
segmentation     the Segmentation chapter: out-of-fold prediction and scoring, controls, zones (written once for
                 the Clinical chapter); score tables, agreement, baseline comparison, worst-patient sentences
clinical         the Clinical chapter: inputs, correlation grid, staging, zonal correlations; tables and sentences
reproducibility  the Reproducibility chapter: software, settings, step times, recorded benchmarks, paper-scale run, input checksums
external         the external-check appendix: the check on COVID-SemiSeg slices, recorded screens, GPU record, cost
external_records the external-check appendix's recorded screens and end-to-end runs, as tables and sentences
real_ct          the real-CT appendix: lung check, named false lesions, broken and changed copies, recorded screens
"""
