"""Running the folds elsewhere: one Slurm job array per run (``make train LAUNCHER=slurm``).

slurm       the command line mk/slurm.mk calls: submit the folds that are not done, wait, report
submit      the whole step: which folds, the script, submitting, waiting, recording jobs.json
sbatch      the batch script: sbatch options, the script text, the status file each task writes
queue       Slurm's side: job states, errors, scontrol output, durations, sbatch/scontrol/scancel
wait        waiting for the array's tasks; the message that names a failed fold
jobs        the run's record of its arrays (slurm/jobs.json) and its table for the book
"""
