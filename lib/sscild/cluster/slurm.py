"""Training the cross-validation folds as one Slurm job array (``make train LAUNCHER=slurm``).

Make calls :func:`main` once for all folds (``mk/slurm.mk``). It

1. asks make which folds are not done (``make -q <run>/fold_<k>/training.ipynb LAUNCHER=local``), so
   a re-run resubmits only those;
2. writes a batch script ``<run>/slurm/array-<job id>.sbatch`` (one array task per fold; each task
   runs that fold's *local* make target, so a fold trains exactly as it does without Slurm) and
   submits it with ``sbatch --parsable``;
3. waits for the array, polling ``scontrol show job`` (which works without Slurm accounting) and the
   per-task status files ``<run>/slurm/fold_<k>.status`` that each task's script writes when its make
   finishes; a task that left the queue without a status file is judged failed;
   Without ``SLURM_MEM`` a task asks for memory from the measured peak of a fold of the profile, where
   a paper-scale dry run recorded one (:func:`sscild.cluster.sbatch.measured_fold_mem`);
4. records every task (node, state, exit code, start, end, wall time) in ``<run>/slurm/jobs.json``
   and stops at the first failed, cancelled or timed-out task with a message naming the fold, its
   state, its exit code and its log ``<run>/slurm/fold_<k>.log`` (the other tasks are cancelled).

Example::

    python -m sscild.cluster.slurm train --repo . --run-dir results/synthetic-cpu/cpu --folds "0 1 2" \\
        --job-name sscild-synthetic-cpu-cpu --make-var PROFILE=cpu --time 02:00:00 --gres gpu:1

The pieces: :mod:`sscild.cluster.sbatch` (options, script, status files), :mod:`sscild.cluster.queue`
(states, ``scontrol``, the Slurm commands), :mod:`sscild.cluster.wait` (waiting, failure messages),
:mod:`sscild.cluster.submit` (the whole step) and :mod:`sscild.cluster.jobs` (``jobs.json``). This
module is the command line that ``mk/slurm.mk`` calls.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from sscild.cluster.queue import SlurmError, parse_duration
from sscild.cluster.sbatch import SlurmOptions, measured_fold_mem
from sscild.cluster.submit import submit_folds

__all__ = ["main"]


def _parse_folds(text: str) -> list[int]:
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"folds {text!r}: give fold numbers separated by spaces, e.g. \"0 1 2\"")
    return sorted({int(p) for p in parts})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.cluster.slurm", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="submit the folds that are not done as one job array and wait for it")
    t.add_argument("--repo", type=Path, required=True)
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--folds", required=True, help='candidate folds, e.g. "0 1 2 3"')
    t.add_argument("--job-name", required=True)
    t.add_argument("--make", default="make")
    t.add_argument("--make-var", action="append", default=[], metavar="NAME=VALUE")
    for name in ("partition", "time", "cpus", "mem", "gres", "account", "extra"):
        t.add_argument(f"--{name}", default="")
    t.add_argument("--poll", default="15", help="seconds between polls (SLURM_POLL)")
    t.add_argument("--max-wait", default="2-00:00:00", help="give up after this long (SLURM_MAX_WAIT)")
    args = ap.parse_args(argv)
    if not args.mem.strip():
        profile = next((v.split("=", 1)[1] for v in args.make_var if v.startswith("PROFILE=")), "")
        measured = measured_fold_mem(profile, args.repo / "benchmarks" / "paper_scale_cpu.json")
        if measured:
            args.mem = measured[0]
            print(f"SLURM_MEM not given: each fold task asks for --mem={measured[0]}, {measured[1]}.", flush=True)
    try:
        options = SlurmOptions.from_strings(partition=args.partition, time=args.time, cpus=args.cpus, mem=args.mem,
                                            gres=args.gres, account=args.account, extra=args.extra)
        folds = _parse_folds(args.folds)
        poll, max_wait = parse_duration(args.poll), parse_duration(args.max_wait)
        if poll <= 0 or max_wait <= 0:
            raise ValueError(f"SLURM_POLL={args.poll!r} and SLURM_MAX_WAIT={args.max_wait!r} must be > 0")
        submit_folds(run_dir=args.run_dir, folds=folds, repo=args.repo, job_name=args.job_name,
                     make_vars=args.make_var, options=options, make=args.make, poll=poll, max_wait=max_wait,
                     echo=lambda s: print(s, flush=True))
    except (SlurmError, ValueError) as exc:
        print(f"\n{exc}\n", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _sigterm_as_interrupt(signum, frame):  # make (or a scheduler) stopping us: cancel the array on the way out
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    sys.exit(main())
