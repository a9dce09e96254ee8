"""The analyses behind the book's chapters, on a run's results folder: numbers and records, no text.

data                  the Data chapter: exclusions, cohort quartiles, example cases and slices, folds
phantomcheck          the synthetic phantom's lung against real chest CT (attenuation, same measurement)
segmentation          the Segmentation chapter: out-of-fold scores of the network and the HU baseline
segmentation_summary  scores summarised over patients and folds, agreement of extents (segmentation_summary.json)
segmentation_errors   where the network errs: label confusion, worst patients, error zones, EF/GGO attenuation
clinical_inputs       the cohort's clinical.csv as the chapters read it (the data parser's values and gaps)
clinical              the Clinical chapter: lesion volumes against lung function, staging, endpoints
realcheck             the trained models on real CT without labels (lung field against the classical mask)
perturb               controlled changes of a real CT: lung density, emphysema, resolution, kernel, slices
robustness            the lung field on changed copies of real scans; broken copies the command must catch
false_lesions         each piece of lesion called on a lung without ILD, named by where it lies
arms                  recorded comparisons of training arms on the same held-out patients (paired intervals)

The tables and sentences the chapters show are built from these by :mod:`sscild.book.chapters`.
"""
