"""Slurm's side of a fold array: job states, the errors, reading ``scontrol`` output and Slurm's
durations, and the commands that talk to Slurm (``sbatch``, ``scontrol``, ``scancel``)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sscild.errors import SscildError

__all__ = [
    "SUCCESS_STATES", "FAILED_STATES", "ACTIVE_STATES", "SlurmError", "SlurmTaskFailed",
    "parse_duration", "parse_scontrol", "expand_task_ids", "state_of", "records_by_task", "clean_env",
    "SlurmCommands",
]

SUCCESS_STATES = frozenset({"COMPLETED"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                           "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "VANISHED"})
"""Terminal states that stop the run (``VANISHED``: the task left the queue without a status file)."""
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB"})


class SlurmError(SscildError):
    """The array could not be submitted or waited for (bad option, sbatch/scontrol error, wait too long)."""


class SlurmTaskFailed(SlurmError):
    """A fold's array task ended in a state other than COMPLETED."""


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: a number of seconds, or Slurm's ``[D-]HH:MM:SS`` / ``MM:SS`` form.

    Example:
        >>> parse_duration("1-02:00:00"), parse_duration("90"), parse_duration("05:30")
        (93600.0, 90.0, 330.0)
    """
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?:\.\d*)?)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ValueError(f"{s!r} is not a duration: give seconds (e.g. 3600) or [D-]HH:MM:SS (e.g. 2-00:00:00)")
    days = int(m.group(1) or 0)
    parts = [p for p in m.group(2, 3, 4) if p is not None]
    if len(parts) == 1:
        secs = float(parts[0]) if not m.group(1) else float(parts[0]) * 3600
    elif len(parts) == 2:
        secs = int(float(parts[0])) * 60 + int(parts[1])
    else:
        secs = int(float(parts[0])) * 3600 + int(parts[1]) * 60 + int(parts[2])
    return days * 86400.0 + float(secs)


# --------------------------------------------------------------------------------------------------
# scontrol output
# --------------------------------------------------------------------------------------------------
_KEY_RE = re.compile(r"^[A-Za-z][\w:/]*=")


def parse_scontrol(text: str) -> list[dict]:
    """Job records from ``scontrol show job -o`` (one record a line, ``Key=Value`` fields).

    A value containing spaces (e.g. a ``Command`` path) is kept whole: a token that does not start
    with ``Key=`` continues the previous value.

    Example:
        >>> parse_scontrol("JobId=7 ArrayJobId=6 ArrayTaskId=1 JobState=FAILED ExitCode=2:0")[0]["JobState"]
        'FAILED'
    """
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        rec: dict[str, str] = {}
        key = None
        for tok in line.split(" "):
            if _KEY_RE.match(tok):
                key, value = tok.split("=", 1)
                rec[key] = value
            elif key is not None:
                rec[key] += " " + tok
        if "JobId" in rec:
            records.append(rec)
    return records


def expand_task_ids(spec: str) -> list[int]:
    """Task ids of an array specification such as ``0-3,5,8-12:2%4`` (throttle ignored).

    Example:
        >>> expand_task_ids("0-2,5,8-12:2%4")
        [0, 1, 2, 5, 8, 10, 12]
    """
    spec = (spec or "").split("%", 1)[0].strip()
    if not spec or spec in ("N/A", "(null)"):
        return []
    ids: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            raise ValueError(f"not an array task specification: {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        ids.extend(range(lo, hi + 1, step))
    return sorted(set(ids))


def state_of(rec: dict) -> str:
    """A job record's state, upper case, without its reason (``"CANCELLED by 0"`` -> ``"CANCELLED"``)."""
    return (rec.get("JobState") or "UNKNOWN").split()[0].upper()


def records_by_task(records: Iterable[dict], array_job_id: str) -> dict[int, dict]:
    """The records of ``array_job_id`` by array task id (a pending range record stands for each of its tasks)."""
    out: dict[int, dict] = {}
    for rec in records:
        if str(rec.get("ArrayJobId", rec.get("JobId"))) != str(array_job_id):
            continue
        for t in expand_task_ids(rec.get("ArrayTaskId", "")):
            # a task split off from the pending meta record wins over the meta record's range
            if t not in out or "-" in out[t].get("ArrayTaskId", "") or "," in out[t].get("ArrayTaskId", ""):
                out[t] = rec
    return out


# --------------------------------------------------------------------------------------------------
# talking to Slurm
# --------------------------------------------------------------------------------------------------
def clean_env(env: dict | None = None) -> dict:
    """The environment without the calling make's flags (jobserver descriptors, LAUNCHER=slurm...)."""
    env = dict(os.environ if env is None else env)
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS"):
        env.pop(var, None)
    return env


@dataclass
class SlurmCommands:
    """Runs the Slurm commands; tests replace :attr:`run` with a fake.

    ``run(argv) -> subprocess.CompletedProcess`` (text output).
    """

    run: Callable[[Sequence[str]], subprocess.CompletedProcess] | None = None
    env: dict | None = None

    def __post_init__(self):
        if self.run is None:
            env = clean_env(self.env)

            def _run(argv):
                try:
                    return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=120)
                except FileNotFoundError:
                    raise SlurmError(f"`{argv[0]}` was not found: LAUNCHER=slurm needs the Slurm client commands "
                                     "(sbatch, scontrol, scancel) on PATH. Run make on a cluster login node, or "
                                     "use LAUNCHER=local.") from None
                except subprocess.TimeoutExpired:
                    return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out after 120 s")

            self.run = _run

    def sbatch(self, script: Path, extra: Sequence[str] = ()) -> str:
        proc = self.run(["sbatch", "--parsable", *extra, str(script)])
        if proc.returncode != 0:
            raise SlurmError(f"sbatch refused the fold array {script}:\n  {proc.stderr.strip() or proc.stdout.strip()}\n"
                             "Check the SLURM_* make variables (partition, account, time, gres) against your "
                             "cluster's limits (`sinfo`, `sacctmgr show assoc user=$USER`).")
        job_id = proc.stdout.strip().splitlines()[-1].split(";")[0].strip() if proc.stdout.strip() else ""
        if not job_id.isdigit():
            raise SlurmError(f"sbatch did not print a job id for {script} (output: {proc.stdout!r}).")
        return job_id

    def show_job(self, job_id: str) -> list[dict] | None:
        """The job's records; ``[]`` when Slurm no longer knows it; ``None`` when Slurm did not answer."""
        proc = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        if proc.returncode == 0:
            return parse_scontrol(proc.stdout)
        if "invalid job id" in (proc.stderr + proc.stdout).lower():
            return []
        return None

    def cancel(self, job_id: str) -> None:
        self.run(["scancel", str(job_id)])
