"""The analyses behind the book's chapters, on a run's results folder.

data          the Data chapter: cohort tables, the synthetic generator's choices
segmentation  the Segmentation chapter: out-of-fold scores, baseline, agreement with the reference
clinical      the Clinical chapter: lesion volumes against lung function
realcheck     the trained models on real CT without labels (lung field against the classical mask)
"""
