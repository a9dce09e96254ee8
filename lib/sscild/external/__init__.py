"""The external check: the study's recipe trained and scored on real labelled CT slices.

slices      the benchmark's image folders: reading, checking, no slice shared between parts
grid        a slice onto the network's square grid and back (intensity, size, training rotations)
recipe      the external-check profiles, their settings (unlabelled slices in the study's words) and validation,
            the recipe as plain values
predict     prediction with test-time averaging, fold ensembles, pseudo-labels, predicted masks
scores      Dice per slice and class, and its summary with bootstrap intervals
tables      the appendix's tables: the data, results beside the published numbers, the GPU record
pretrain    self-supervised pretraining on unlabelled slices (restoring corrupted slices)
training    models trained (or reused): supervised, or teacher then student; side by side on a CPU
runs        cross-validation, training on all and testing, the whole check (summary.json)
screens     how the recipe was chosen: the recorded screens as tables, paired intervals against controls
search      the screens' variants and search_recipes, which cross-validates them (python -m sscild.external search)
__main__    the command line: python -m sscild.external run|search
"""
