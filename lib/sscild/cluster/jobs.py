"""The run's record of its fold arrays, ``<run>/slurm/jobs.json`` (every array: when, which folds,
the script, the sbatch command, each task's node, state, exit code and times), and its table for the book."""

from __future__ import annotations

import os
from pathlib import Path

from sscild.paths import RunPaths, read_json

__all__ = ["jobs_path", "load_jobs", "jobs_table"]


def jobs_path(slurm_dir: Path) -> Path:
    """Where the run's arrays are recorded: ``<run>/slurm/jobs.json``."""
    return slurm_dir / "jobs.json"


def load_jobs(slurm_dir: Path) -> dict:
    """The recorded arrays (``{"arrays": [...]}``); an empty record when the file is absent or unreadable."""
    p = jobs_path(slurm_dir)
    if p.exists():
        try:
            data = read_json(p)
            if isinstance(data, dict) and isinstance(data.get("arrays"), list):
                return data
        except (OSError, ValueError):
            pass
    return {"arrays": []}


def jobs_table(run: RunPaths | str | os.PathLike):
    """One row per array task of the run's Slurm submissions (``slurm/jobs.json``), or ``None``.

    Columns: ``array_job_id``, ``submitted``, ``fold``, ``task_job_id``, ``node``, ``state``,
    ``exit_code``, ``start``, ``end``, ``wall_seconds``, ``log`` (relative to the run folder).

    Example:
        >>> table = jobs_table(RunPaths.for_run("data/synthetic-cpu", "cpu"))
        >>> table is None or list(table.columns[:3]) == ["array_job_id", "submitted", "fold"]
        True
    """
    import pandas as pd

    root = run.root if isinstance(run, RunPaths) else Path(run)
    path = root / "slurm" / "jobs.json"
    if not path.exists():
        return None
    try:
        jobs = read_json(path)
    except (OSError, ValueError):
        return None
    rows = []
    for arr in jobs.get("arrays", []):
        tasks = arr.get("tasks") or {str(k): {"fold": k, "state": "SUBMITTED"} for k in arr.get("folds", [])}
        for key, t in sorted(tasks.items(), key=lambda kv: int(kv[0])):
            log = t.get("log")
            if log:
                try:
                    log = str(Path(log).resolve().relative_to(root.resolve()))
                except ValueError:
                    pass
            rows.append({"array_job_id": arr.get("array_job_id"), "submitted": arr.get("submitted"),
                         "fold": int(t.get("fold", key)), "task_job_id": t.get("task_job_id"), "node": t.get("node"),
                         "state": t.get("state"), "exit_code": t.get("exit_code"), "start": t.get("start"),
                         "end": t.get("end"), "wall_seconds": t.get("wall_seconds"), "log": log})
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["array_job_id", "submitted", "fold", "task_job_id", "node", "state",
                                       "exit_code", "start", "end", "wall_seconds", "log"])
