"""sscild: an executable re-run of an SSc-ILD HRCT lesion-segmentation study.

The package is laid out by pipeline stage. Subpackages flow one way: each imports only from
those listed above it (``tests/test_layering.py`` enforces it)::

    (top level)   errors, profiles, paths, context, progress, paper, palette, machine, numfmt
                  error type, run profiles, results layout and atomic writes, the run context
                  (profile, cohort, folders, folds, how folds share the machine), terminal progress,
                  the published numbers, the label colours, the processor and device in words, numbers
                  as every page, report and message writes them
    data          image I/O, the cohort folder and its validation, preprocessing, folds, lung mask
    synthetic     the synthetic SSc-ILD cohort generator
    model         network, augmentation, training loop, inference
    evaluation    metrics, statistics, the HU-density baseline
    clinic        scan segmentation, zones, viewer files, scan reports, batch, follow-up comparison
    analysis      the computations behind the chapters (data, segmentation, clinical, real CT)
    external      the recipe on real labelled CT slices (appendix)
    cluster       the folds as a Slurm job array
    book          chapter runner, book build and checks, notebook helpers, provenance, figures,
                  the chapters' tables and sentences
    cli           the ``sscild`` command

Each subpackage's docstring lists its modules.
"""

__version__ = "0.1.0"

LABELS = {"background": 0, "normal": 1, "ef": 2, "ggo": 3}
"""The study's label roles and their integer values in every label map this package writes."""

CLASS_NAMES = {1: "normal lung", 2: "established fibrosis (EF)", 3: "ground-glass opacity (GGO)"}
