"""Running the folds elsewhere.

slurm       one Slurm job array per run: submit, wait, report
"""
