"""The whole Slurm step of ``make train LAUNCHER=slurm``: which folds are not done, the batch script,
submitting it, waiting for the array, and recording it in ``<run>/slurm/jobs.json``."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from sscild.cluster.jobs import jobs_path, load_jobs
from sscild.cluster.queue import (ACTIVE_STATES, SlurmCommands, SlurmError, SlurmTaskFailed, clean_env,
                                  records_by_task, state_of)
from sscild.cluster.sbatch import SlurmOptions, render_script
from sscild.cluster.wait import TaskResult, wait_for_array
from sscild.paths import atomic_path, write_json

__all__ = ["make_query", "submit_folds"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _active_earlier_array(slurm: SlurmCommands, jobs: dict) -> tuple[str, list[int]] | None:
    """An array of this run from an earlier make that Slurm still runs (to avoid training a fold twice)."""
    for arr in reversed(jobs["arrays"][-5:]):
        if arr.get("outcome") == "completed":
            continue
        job = str(arr.get("array_job_id", ""))
        if not job:
            continue
        by_task = records_by_task(slurm.show_job(job) or [], job)
        active = sorted(t for t, rec in by_task.items() if state_of(rec) in ACTIVE_STATES)
        if active:
            return job, active
    return None


def make_query(*, repo: Path, make: str, make_vars: Sequence[str], env: dict | None = None
               ) -> Callable[[Path], bool]:
    """A function ``target -> bool``: does make (LAUNCHER=local) consider ``target`` out of date?"""
    env = clean_env(env)

    def needs(target: Path) -> bool:
        proc = subprocess.run([make, "-C", str(repo), "-q", str(target), "LAUNCHER=local", *make_vars],
                              capture_output=True, text=True, env=env)
        if proc.returncode == 2:
            raise SlurmError(f"`make -q {target}` failed while choosing the folds to submit:\n{proc.stderr.strip()}")
        return proc.returncode != 0

    return needs


def submit_folds(*, run_dir: str | os.PathLike, folds: Sequence[int], repo: str | os.PathLike, job_name: str,
                 make_vars: Sequence[str] = (), options: SlurmOptions | None = None, make: str = "make",
                 needs_run: Callable[[Path], bool] | None = None, slurm: SlurmCommands | None = None,
                 poll: float = 15.0, max_wait: float = 2 * 86400.0, vanish_grace: float | None = None,
                 echo: Callable[[str], None] = print) -> dict[int, TaskResult]:
    """Submit one array for the folds of ``folds`` that are not done, wait, and record ``jobs.json``.

    Args:
        run_dir: the run's results folder ``<results>/<cohort>/<profile>``.
        folds: candidate folds; those whose ``fold_<k>/training.ipynb`` is up to date are skipped.
        repo: the project checkout.
        job_name: Slurm job name.
        make_vars: ``NAME=value`` for each task's make (and for the up-to-date check).
        options: sbatch options.
        make: make command.
        needs_run: ``target -> bool`` (default: ask make with ``make -q``).
        slurm: the Slurm commands (tests pass a fake).
        poll, max_wait, vanish_grace: see :func:`wait_for_array` (grace default: max(60, 3 * poll)).

    Returns:
        Results by fold (empty when every fold was already done).

    Raises:
        SlurmTaskFailed: a task did not complete (message names fold, state, exit code and log).
        SlurmError: submission failed, an earlier array of this run still runs, or the wait timed out.
    """
    run_dir, repo = Path(run_dir).resolve(), Path(repo).resolve()
    slurm_dir = run_dir / "slurm"
    slurm = slurm or SlurmCommands()
    options = options or SlurmOptions()
    needs_run = needs_run or make_query(repo=repo, make=make, make_vars=make_vars)
    target = lambda k: run_dir / f"fold_{k}" / "training.ipynb"  # noqa: E731
    candidates = sorted({int(k) for k in folds})
    todo = [k for k in candidates if needs_run(target(k))]
    if not todo:
        echo(f"slurm: folds {candidates} are done; nothing to submit")
        return {}
    slurm_dir.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(slurm_dir)
    active = _active_earlier_array(slurm, jobs)
    if active:
        job, tasks = active
        raise SlurmError(f"Slurm array job {job} of this run ({run_dir}) is still running folds {tasks}. Wait for it "
                         f"to finish (`squeue -j {job} -r`) or cancel it (`scancel {job}`), then run make again.")
    for k in todo:
        (slurm_dir / f"fold_{k}.status").unlink(missing_ok=True)
    job_id, script, sbatch_argv = _write_and_submit(slurm, slurm_dir, repo=repo, folds=todo, job_name=job_name,
                                                    make_vars=make_vars, options=options, make=make)
    echo(f"slurm: submitted array job {job_id} ({job_name}), folds {todo}; logs {slurm_dir}/fold_<k>.log")
    entry = {"array_job_id": job_id, "job_name": job_name, "submitted": _now(), "folds": todo,
             "script": str(script), "sbatch": sbatch_argv,
             "options": options.directives(), "outcome": "submitted", "tasks": {}}
    jobs["arrays"].append(entry)
    write_json(jobs_path(slurm_dir), jobs)

    def record(results: dict[int, TaskResult], outcome: str | None = None) -> None:
        entry["tasks"] = {str(k): r.to_dict() for k, r in sorted(results.items())}
        if outcome:
            entry["outcome"], entry["finished"] = outcome, _now()
        write_json(jobs_path(slurm_dir), jobs)

    grace = vanish_grace if vanish_grace is not None else max(60.0, 3 * poll)
    results = _wait_recording(slurm, job_id, todo, slurm_dir=slurm_dir, job_name=job_name, poll=poll,
                              max_wait=max_wait, vanish_grace=grace, record=record, echo=echo)
    not_made = [k for k in todo if not target(k).exists()]
    if not_made:
        record(results, "failed")
        raise SlurmError(
            f"Slurm reports folds {not_made} COMPLETED, but {', '.join(str(target(k)) for k in not_made)} "
            f"cannot be found here. The results folder must be on a filesystem that the compute nodes share with "
            f"this machine; see the logs {slurm_dir}/fold_<k>.log.")
    record(results, "completed")
    walls = [r.wall_seconds for r in results.values() if r.wall_seconds is not None]
    echo(f"slurm: array {job_id} completed, folds {todo}" + (f" (longest task {max(walls):.0f} s)" if walls else ""))
    return results


def _write_and_submit(slurm: SlurmCommands, slurm_dir: Path, *, repo: Path, folds: Sequence[int], job_name: str,
                      make_vars: Sequence[str], options: SlurmOptions, make: str) -> tuple[str, Path, list[str]]:
    """Write the array's batch script, submit it, and keep it as ``array-<job id>.sbatch``.

    Returns (the array's job id, the script kept, the sbatch command line as run)."""
    script = slurm_dir / f"array-{job_name}.sbatch"
    with atomic_path(script, suffix=".sbatch") as tmp:
        tmp.write_text(render_script(repo=repo, slurm_dir=slurm_dir, folds=folds, job_name=job_name,
                                     make_vars=make_vars, options=options, make=make))
    job_id = slurm.sbatch(script, options.extra)
    sbatch_argv = ["sbatch", "--parsable", *options.extra, str(script)]
    kept = slurm_dir / f"array-{job_id}.sbatch"  # Slurm holds its own copy now: keep each array's script
    try:
        os.replace(script, kept)
        script = kept
    except OSError:
        pass
    return job_id, script, sbatch_argv


def _wait_recording(slurm: SlurmCommands, job_id: str, folds: Sequence[int], *, slurm_dir: Path, job_name: str,
                    poll: float, max_wait: float, vanish_grace: float,
                    record: Callable[..., None], echo: Callable[[str], None]) -> dict[int, TaskResult]:
    """:func:`sscild.cluster.wait.wait_for_array`, recording the tasks at every change and the outcome
    (``failed``, ``timed out``, ``interrupted``: the array is cancelled) when the wait stops early."""
    holder: dict[int, TaskResult] = {}

    def on_change(results):
        holder.update(results)
        record(results)

    try:
        return wait_for_array(slurm, job_id, folds, slurm_dir=slurm_dir, job_name=job_name, poll=poll,
                              max_wait=max_wait, vanish_grace=vanish_grace, on_change=on_change, echo=echo)
    except SlurmTaskFailed:
        record(holder, "failed")
        raise
    except SlurmError:
        record(holder, "timed out")
        raise
    except KeyboardInterrupt:
        slurm.cancel(job_id)
        record(holder, "interrupted")
        echo(f"slurm: interrupted; cancelled array job {job_id}")
        raise
