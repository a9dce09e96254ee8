"""The run context: what one run of the study is, resolved once.

A run is (profile, cohort folder, results folder). From those three everything else follows: the
results folder of the run (:class:`sscild.paths.RunPaths`), the number of folds (the profile's), and
how the folds are trained on this machine (how many at once, with how many threads each). Make asks
this module for them (``python -m sscild.context make ...``) instead of restating them, and the data
step writes the resolved context as ``run_context.json`` into the run's results folder.

**How folds share the machine** (:func:`fold_parallelism`). Training a small 2D network on a CPU
does not use several cores well: on 2 cores, one fold on 2 threads made 11.5 steps/s, while two
folds side by side on 1 thread each made 8.0 + 7.7 = 15.6 steps/s together
(``scripts/bench_train.py``, measured side by side on one machine). On a CPU, folds are therefore
trained one thread each, as many at once as there are cores (at most the number of folds). One
thread per fold also makes a fold's weights independent of the machine's core count (a fold's
floating-point sums depend on how many threads share them). With a GPU, folds run one at a time on
it. ``FOLD_JOBS`` and ``THREADS`` (make) override the choice.

Only the standard library is imported here, so make can call it before the environment exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sscild.paths import RunPaths, default_data_dir, resolve_data_dir, write_json
from sscild.profiles import Profile, get_profile

__all__ = ["RunContext", "resolve", "fold_parallelism", "count_cpus", "count_gpus", "main"]


@dataclass(frozen=True)
class RunContext:
    """One run, resolved: the profile, the cohort and results folders, and how its folds run."""

    profile: Profile
    data_dir: Path
    run: RunPaths
    fold_jobs: int
    """Folds trained at the same time on this machine."""
    fold_threads: int
    """Threads of each fold's training process."""

    @property
    def num_folds(self) -> int:
        return self.profile.num_folds

    @property
    def builtin_cohort(self) -> bool:
        """True when the cohort is the profile's built-in synthetic one (make generates it)."""
        return self.data_dir == default_data_dir(self.profile.name)

    def to_dict(self) -> dict:
        return {
            "profile": self.profile.name,
            "data_dir": str(self.data_dir),
            "cohort": self.run.cohort,
            "builtin_cohort": self.builtin_cohort,
            "results": str(self.run.results),
            "run_dir": str(self.run.root),
            "num_folds": self.num_folds,
            "fold_jobs": self.fold_jobs,
            "fold_threads": self.fold_threads,
            "profile_settings": asdict(self.profile),
        }

    def write(self) -> Path:
        """Write ``run_context.json`` into the run's results folder; returns its path."""
        return write_json(self.run.root / "run_context.json", self.to_dict())


def count_cpus() -> int:
    """CPU cores this process may use (the affinity mask, e.g. a Slurm or container limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def count_gpus() -> int:
    """CUDA devices visible to this process, found without importing torch (``nvidia-smi -L``,
    restricted by ``CUDA_VISIBLE_DEVICES``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def fold_parallelism(num_folds: int, cpus: int, gpus: int, *, jobs: int | None = None,
                     threads: int | None = None) -> tuple[int, int]:
    """``(folds at once, threads per fold)`` for training ``num_folds`` folds on this machine.

    With a GPU: one fold at a time, all cores for it. On a CPU: one thread per fold, ``cpus`` folds
    at once (at most ``num_folds``). ``jobs`` / ``threads`` override either choice; the other is then
    fitted to the cores.

    >>> fold_parallelism(8, cpus=2, gpus=0)
    (2, 1)
    >>> fold_parallelism(8, cpus=32, gpus=0)
    (8, 1)
    >>> fold_parallelism(8, cpus=16, gpus=1)
    (1, 16)
    >>> fold_parallelism(8, cpus=2, gpus=0, jobs=1)
    (1, 2)
    """
    cpus, num_folds = max(1, int(cpus)), max(1, int(num_folds))
    if jobs is not None and int(jobs) < 1:
        raise ValueError(f"FOLD_JOBS must be at least 1, got {jobs!r}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"THREADS must be at least 1, got {threads!r}")
    if jobs is None and threads is None:
        if gpus > 0:
            return 1, cpus
        return min(num_folds, cpus), 1
    if jobs is None:
        return (1 if gpus > 0 else max(1, min(num_folds, cpus // int(threads)))), int(threads)
    jobs = min(int(jobs), num_folds)
    return jobs, int(threads) if threads is not None else max(1, cpus // jobs)


def resolve(profile: str | Profile, data_dir=None, results=None, *, cpus: int | None = None,
            gpus: int | None = None, jobs: int | None = None, threads: int | None = None) -> RunContext:
    """Resolve a run: ``profile`` by name, the cohort folder (default: the profile's synthetic
    cohort), the results folder (default ``SSCILD_RESULTS`` or ``<repo>/results``), and how folds run
    on this machine (``cpus`` / ``gpus`` default to what it has)."""
    p = get_profile(profile)
    data = resolve_data_dir(data_dir, p.name)
    run = RunPaths.for_run(data, p.name, results)
    fj, ft = fold_parallelism(p.num_folds, count_cpus() if cpus is None else cpus,
                              count_gpus() if gpus is None else gpus, jobs=jobs, threads=threads)
    return RunContext(profile=p, data_dir=data, run=run, fold_jobs=fj, fold_threads=ft)


def _make_vars(ctx: RunContext) -> list[str]:
    def q(path) -> str:
        s = str(path)
        if any(c.isspace() for c in s):
            raise ValueError(f"make cannot handle a folder name with spaces: {s!r}; move or link it to a path without")
        return s

    return [f"DATA={q(ctx.data_dir)}", f"BUILTIN_COHORT={int(ctx.builtin_cohort)}",
            f"NUM_FOLDS={ctx.num_folds}", f"RES={q(ctx.run.root)}", f"COHORT={q(ctx.run.cohort)}",
            f"FOLD_JOBS={ctx.fold_jobs}", f"FOLD_THREADS={ctx.fold_threads}",
            f"SSCILD_RESULTS={q(ctx.run.results)}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.context", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("make", "print the run's make variables (NAME=value, one per line)"),
                           ("show", "print the resolved run context as JSON"),
                           ("write", "write it as run_context.json into the run's results folder")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--profile", required=True)
        s.add_argument("--data", default=None, help="cohort folder (default: the profile's synthetic cohort)")
        s.add_argument("--results", default=None)
        s.add_argument("--jobs", default=None, help="folds at once (default: chosen for this machine)")
        s.add_argument("--threads", default=None, help="threads per fold (default: chosen for this machine)")
    args = ap.parse_args(argv)
    opt = (lambda v: int(v) if v not in (None, "", "auto") else None)
    try:
        ctx = resolve(args.profile, args.data or None, args.results or None, jobs=opt(args.jobs),
                      threads=opt(args.threads))
        if args.cmd == "make":
            print("\n".join(_make_vars(ctx)))
        elif args.cmd == "write":
            print(f"run context: {ctx.write()}")
        else:
            import json

            print(json.dumps(ctx.to_dict(), indent=2))
    except ValueError as e:
        print(f"sscild.context: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
