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
4. records every task (node, state, exit code, start, end, wall time) in ``<run>/slurm/jobs.json``
   and stops at the first failed, cancelled or timed-out task with a message naming the fold, its
   state, its exit code and its log ``<run>/slurm/fold_<k>.log`` (the other tasks are cancelled).

Example::

    python -m sscild.cluster.slurm train --repo . --run-dir results/synthetic-cpu/cpu --folds "0 1 2" \\
        --job-name sscild-synthetic-cpu-cpu --make-var PROFILE=cpu --time 02:00:00 --gres gpu:1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sscild.errors import SscildError
from sscild.paths import RunPaths, atomic_path, read_json, write_json

__all__ = [
    "SlurmOptions", "SlurmError", "SlurmTaskFailed", "SlurmCommands", "TaskResult",
    "parse_scontrol", "expand_task_ids", "parse_duration", "render_script", "read_status",
    "wait_for_array", "submit_folds", "make_query", "failure_message", "jobs_table", "main",
    "ACTIVE_STATES", "SUCCESS_STATES", "FAILED_STATES",
]

SUCCESS_STATES = frozenset({"COMPLETED"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                           "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "VANISHED"})
"""Terminal states that stop the run (``VANISHED``: the task left the queue without a status file)."""
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB"})

_HINTS = {
    "TIMEOUT": "the task reached its time limit: raise SLURM_TIME (training resumes from the fold's last checkpoint)",
    "OUT_OF_MEMORY": "the task ran out of memory: raise SLURM_MEM",
    "CANCELLED": "the task was cancelled (scancel, or an administrator)",
    "NODE_FAIL": "its node failed: re-run make to resubmit the fold",
    "PREEMPTED": "it was preempted by a higher-priority job: re-run make to resubmit the fold",
    "BOOT_FAIL": "its node failed to boot: re-run make to resubmit the fold",
    "VANISHED": ("it left the Slurm queue without writing its status file, so its script never finished: it was "
                 "killed before it ran, or the results folder is not on a filesystem the compute nodes share"),
}


class SlurmError(SscildError):
    """The array could not be submitted or waited for (bad option, sbatch/scontrol error, wait too long)."""


class SlurmTaskFailed(SlurmError):
    """A fold's array task ended in a state other than COMPLETED."""


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------
_TIME_RE = re.compile(r"^(?:\d+-\d+(?::\d+){0,2}|\d+(?::\d+){0,2}|UNLIMITED|INFINITE)$", re.I)
_MEM_RE = re.compile(r"^\d+[KMGT]?$", re.I)
_NAME_RE = re.compile(r"^[\w.,+-]+$")
_GRES_RE = re.compile(r"^[\w.,:/+-]+$")
_FORBIDDEN_EXTRA = ("-a", "--array", "--wrap", "-o", "--output", "--parsable", "-J", "--job-name")


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """The sbatch options of the array (make variables ``SLURM_*``); empty means the cluster's default.

    Args:
        partition: ``--partition`` (SLURM_PARTITION), e.g. ``gpu``.
        time: ``--time`` per task (SLURM_TIME), Slurm's format, e.g. ``02:00:00`` or ``1-00:00:00``.
        cpus: ``--cpus-per-task`` (SLURM_CPUS); also the task's training threads.
        mem: ``--mem`` per task (SLURM_MEM), e.g. ``16G``.
        gres: ``--gres`` (SLURM_GRES), e.g. ``gpu:1``.
        account: ``--account`` (SLURM_ACCOUNT).
        extra: further sbatch flags, given on the sbatch command line (SLURM_EXTRA), e.g.
            ``("--qos=short", "--constraint=a100")``.

    Example:
        >>> SlurmOptions(time="01:00:00", gres="gpu:1").directives()
        ['--time=01:00:00', '--gres=gpu:1']
    """

    partition: str = ""
    time: str = ""
    cpus: int | None = None
    mem: str = ""
    gres: str = ""
    account: str = ""
    extra: tuple[str, ...] = ()

    def __post_init__(self):
        def bad(var, value, fix):
            raise ValueError(f"{var}={value!r} is not a valid Slurm option: {fix}")

        if self.partition and not _NAME_RE.match(self.partition):
            bad("SLURM_PARTITION", self.partition, "give a partition name (or comma-separated names)")
        if self.account and not _NAME_RE.match(self.account):
            bad("SLURM_ACCOUNT", self.account, "give an account name")
        if self.time and not _TIME_RE.match(self.time):
            bad("SLURM_TIME", self.time, "use minutes, HH:MM:SS or D-HH:MM:SS, e.g. 02:00:00")
        if self.cpus is not None and (not isinstance(self.cpus, int) or self.cpus < 1):
            bad("SLURM_CPUS", self.cpus, "give a whole number of CPUs per task, >= 1")
        if self.mem and not _MEM_RE.match(self.mem):
            bad("SLURM_MEM", self.mem, "give a size such as 16G or 8000M")
        if self.gres and not _GRES_RE.match(self.gres):
            bad("SLURM_GRES", self.gres, "give a generic resource such as gpu:1 or gpu:a100:1")
        extra = tuple(self.extra)
        for flag in extra:
            name = flag.split("=", 1)[0]
            if name in _FORBIDDEN_EXTRA:
                bad("SLURM_EXTRA", flag, f"{name} is set by sscild itself (one array task per fold, logs under "
                                         "results/.../slurm/); remove it")
        object.__setattr__(self, "extra", extra)

    @classmethod
    def from_strings(cls, *, partition="", time="", cpus="", mem="", gres="", account="", extra="") -> "SlurmOptions":
        """Build from make's strings (empty = unset; ``extra`` is split like a shell command line)."""
        cpus = str(cpus or "").strip()
        if cpus and not cpus.isdigit():
            raise ValueError(f"SLURM_CPUS={cpus!r} is not a valid Slurm option: give a whole number >= 1")
        return cls(partition=partition.strip(), time=time.strip(), cpus=int(cpus) if cpus else None,
                   mem=mem.strip(), gres=gres.strip(), account=account.strip(), extra=tuple(shlex.split(extra or "")))

    def directives(self) -> list[str]:
        """The options as ``--name=value`` strings for ``#SBATCH`` lines (``extra`` excluded)."""
        out = []
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--time", self.time),
                            ("--cpus-per-task", self.cpus), ("--mem", self.mem), ("--gres", self.gres)):
            if value not in ("", None):
                out.append(f"{flag}={value}")
        return out


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


def _state_of(rec: dict) -> str:
    return (rec.get("JobState") or "UNKNOWN").split()[0].upper()


def _records_by_task(records: Iterable[dict], array_job_id: str) -> dict[int, dict]:
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
def _clean_env(env: dict | None = None) -> dict:
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
            env = _clean_env(self.env)

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


# --------------------------------------------------------------------------------------------------
# the batch script and the status files
# --------------------------------------------------------------------------------------------------
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def render_script(*, repo: str | os.PathLike, slurm_dir: str | os.PathLike, folds: Sequence[int], job_name: str,
                  make_vars: Sequence[str] = (), options: SlurmOptions | None = None, make: str = "make") -> str:
    """The array's batch script: one task per fold, each running ``make fold-<k> LAUNCHER=local ...``.

    Args:
        repo: the project checkout (make runs there, ``make -C repo``).
        slurm_dir: where logs and status files go (``<run>/slurm``).
        folds: the folds to train; task id = fold number.
        job_name: Slurm job name, e.g. ``sscild-synthetic-cpu-cpu``.
        make_vars: ``NAME=value`` assignments passed to each task's make (PROFILE, DATA, RESULTS...).
        options: sbatch options written as ``#SBATCH`` lines.
        make: the make command on the compute nodes.

    Example:
        >>> "#SBATCH --array=0,3" in render_script(repo="/r", slurm_dir="/r/s", folds=[3, 0], job_name="j")
        True
    """
    folds = sorted({int(k) for k in folds})
    if not folds:
        raise ValueError("no folds to submit")
    if any(k < 0 for k in folds):
        raise ValueError(f"fold numbers must be >= 0, got {folds}")
    if not _NAME_RE.match(job_name):
        raise ValueError(f"job name {job_name!r} must be letters, digits, '.', '_', '-' only")
    for v in make_vars:
        if not _VAR_RE.match(v):
            raise ValueError(f"make variable {v!r} is not NAME=value")
    options = options or SlurmOptions()
    repo, slurm_dir = Path(repo).resolve(), Path(slurm_dir).resolve()
    q = shlex.quote
    make_cmd = " ".join([q(make), "-C", q(str(repo)), '"fold-$fold"', "LAUNCHER=local", *(q(v) for v in make_vars)])
    directives = [f"--job-name={job_name}", f"--array={','.join(map(str, folds))}",
                  f"--output={slurm_dir}/fold_%a.log", "--open-mode=append", f"--chdir={repo}", "--export=ALL",
                  *options.directives()]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), f"""\
# Written by sscild.cluster.slurm for `make train LAUNCHER=slurm`: one array task per cross-validation fold
# (task id = fold). Each task runs that fold's local make target, so a fold trains exactly as it does
# without Slurm, and records its exit status in {slurm_dir}/fold_<k>.status.
set -u
fold=${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array, one task per fold}}
status={q(str(slurm_dir))}/fold_${{fold}}.status
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES GNUMAKEFLAGS
if [ -z "${{SSCILD_THREADS:-}}" ] && [ -n "${{SLURM_CPUS_PER_TASK:-}}" ]; then
  export SSCILD_THREADS="$SLURM_CPUS_PER_TASK"   # training threads = the CPUs Slurm gave the task
fi
node="${{SLURMD_NODENAME:-$(hostname)}}"
start=$(date +%s)
echo "=== sscild fold $fold: array job ${{SLURM_ARRAY_JOB_ID:-?}} task $fold (job ${{SLURM_JOB_ID:-?}}) on $node, $(date -Is)"
sig=""
child=""
trap 'sig=TERM; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
trap 'sig=INT; [ -n "$child" ] && kill -INT "$child" 2>/dev/null' INT
{make_cmd} &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
end=$(date +%s)
printf '{{"fold": %d, "array_job_id": "%s", "job_id": "%s", "node": "%s", "exit_code": %d, "signal": "%s", "start": %d, "end": %d}}\\n' \\
  "$fold" "${{SLURM_ARRAY_JOB_ID:-}}" "${{SLURM_JOB_ID:-}}" "$node" "$rc" "$sig" "$start" "$end" > "$status.tmp.$$" \\
  && mv -f "$status.tmp.$$" "$status"
echo "=== sscild fold $fold: exit code $rc${{sig:+ (signal $sig)}} after $((end - start)) s, $(date -Is)"
exit "$rc"
"""]
    return "\n".join(lines)


def read_status(slurm_dir: str | os.PathLike, fold: int, array_job_id: str | None = None) -> dict | None:
    """The status file a task's script wrote (``fold_<k>.status``), or ``None``.

    With ``array_job_id``, a file left by another (earlier) array is ignored.
    """
    path = Path(slurm_dir) / f"fold_{int(fold)}.status"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if array_job_id is not None and str(st.get("array_job_id")) != str(array_job_id):
        return None
    return st


# --------------------------------------------------------------------------------------------------
# waiting
# --------------------------------------------------------------------------------------------------
def _iso(epoch) -> str | None:
    if epoch in (None, "", 0):
        return None
    return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).isoformat(timespec="seconds")


def _runtime_seconds(text: str | None) -> float | None:
    if not text or text in ("Unknown", "N/A", "INVALID"):
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None


@dataclass
class TaskResult:
    """One fold's array task as last seen."""

    fold: int
    state: str = "PENDING"
    exit_code: str | None = None
    node: str | None = None
    task_job_id: str | None = None
    start: str | None = None
    end: str | None = None
    wall_seconds: float | None = None
    reason: str | None = None
    log: str | None = None
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.state in SUCCESS_STATES

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("fold", "state", "exit_code", "node", "task_job_id", "start", "end",
                                              "wall_seconds", "reason", "log")}

    def update_from_record(self, rec: dict) -> None:
        self.state = _state_of(rec)
        if "-" not in rec.get("ArrayTaskId", "") and "," not in rec.get("ArrayTaskId", ""):
            self.task_job_id = rec.get("JobId")
        node = rec.get("BatchHost") or rec.get("NodeList")
        if node and node not in ("(null)", "None assigned"):
            self.node = node
        self.exit_code = rec.get("ExitCode") or self.exit_code
        self.reason = rec.get("Reason") if rec.get("Reason") not in (None, "None") else None
        for attr, key in (("start", "StartTime"), ("end", "EndTime")):
            if rec.get(key) and rec[key] not in ("Unknown", "None", "N/A"):
                setattr(self, attr, rec[key])
        if self.state not in ("PENDING",):
            self.wall_seconds = _runtime_seconds(rec.get("RunTime"))
        self.final = self.state in SUCCESS_STATES or self.state in FAILED_STATES

    def update_from_status(self, st: dict, *, final: bool) -> None:
        """Fill in from the task's status file; with ``final``, also take its exit code as the outcome."""
        self.node = st.get("node") or self.node
        self.task_job_id = self.task_job_id or (str(st.get("job_id")) or None)
        self.start, self.end = _iso(st.get("start")) or self.start, _iso(st.get("end")) or self.end
        if st.get("start") and st.get("end"):
            self.wall_seconds = float(int(st["end"]) - int(st["start"]))
        if final:
            rc = int(st.get("exit_code", 1))
            sig = st.get("signal") or ""
            self.exit_code = f"{rc}:0"
            self.state = "COMPLETED" if rc == 0 and not sig else ("CANCELLED" if sig else "FAILED")
            self.reason = f"signal {sig}" if sig else ("NonZeroExitCode" if rc else None)
            self.final = True


def _log_tail(path: str | None, lines: int = 12) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + ln for ln in text[-lines:])


def failure_message(task: TaskResult, *, array_job_id: str, job_name: str, cancelled: Sequence[int] = ()) -> str:
    """The message that stops make: fold, state, exit code, node, log path, the log's last lines, the fix."""
    where = f"array job {array_job_id} task {task.fold}"
    if task.task_job_id and task.task_job_id != str(array_job_id):
        where += f" (job {task.task_job_id})"
    if task.node:
        where += f" on {task.node}"
    msg = [f"Slurm: fold {task.fold} {task.state}, exit code {task.exit_code or 'unknown'} ({where}, job name {job_name})."]
    if task.state in _HINTS:
        msg.append(f"  why: {_HINTS[task.state]}.")
    elif task.reason and task.reason not in ("None", "NonZeroExitCode"):
        msg.append(f"  reason given by Slurm: {task.reason}")
    msg.append(f"  log: {task.log}")
    tail = _log_tail(task.log)
    if tail:
        msg.append("  last lines of the log:\n" + tail)
    if cancelled:
        msg.append(f"  The array's other unfinished tasks were cancelled (folds {', '.join(map(str, cancelled))}).")
    msg.append("Fix the cause, then run the same make command again: only folds that are not done are resubmitted.")
    return "\n".join(msg)


def wait_for_array(slurm: SlurmCommands, array_job_id: str, folds: Sequence[int], *, slurm_dir: str | os.PathLike,
                   job_name: str = "", poll: float = 15.0, max_wait: float = 2 * 86400.0, vanish_grace: float = 60.0,
                   on_change: Callable[[dict[int, TaskResult]], None] | None = None,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                   echo: Callable[[str], None] = print) -> dict[int, TaskResult]:
    """Wait until every fold's task of ``array_job_id`` has finished; return their results.

    Polls ``scontrol show job`` every ``poll`` seconds. A task Slurm no longer knows is judged from its
    status file; without one for ``vanish_grace`` seconds it is ``VANISHED``. At the first task that
    ends in a state other than COMPLETED, the array's other unfinished tasks are cancelled and
    :class:`SlurmTaskFailed` is raised; after ``max_wait`` seconds the array is cancelled and
    :class:`SlurmError` raised. ``on_change`` is called with the results whenever a state changes.
    """
    if poll <= 0 or max_wait <= 0 or vanish_grace < 0:
        raise ValueError("poll and max_wait must be > 0 and vanish_grace >= 0")
    slurm_dir = Path(slurm_dir)
    folds = sorted({int(k) for k in folds})
    results = {k: TaskResult(fold=k, log=str(slurm_dir / f"fold_{k}.log")) for k in folds}
    t0 = clock()
    missing_since: dict[int, float] = {}
    last_seen: tuple | None = None
    no_answer_since: float | None = None
    while True:
        now = clock()
        records = slurm.show_job(array_job_id)
        if records is None:
            if no_answer_since is None:
                no_answer_since = now
                echo(f"slurm: scontrol did not answer about job {array_job_id}; retrying every {poll:g} s")
        else:
            no_answer_since = None
        by_task = _records_by_task(records or [], array_job_id)
        for k in folds:
            task = results[k]
            if task.final:
                continue
            rec = by_task.get(k)
            st = read_status(slurm_dir, k, array_job_id)
            if rec is not None:
                missing_since.pop(k, None)
                task.update_from_record(rec)
                if st is not None:
                    task.update_from_status(st, final=False)
                    if task.state in ACTIVE_STATES and (int(st.get("exit_code", 0)) != 0 or st.get("signal")):
                        task.update_from_status(st, final=True)  # its script has failed; don't wait for cleanup
            elif st is not None:
                task.update_from_status(st, final=True)
            elif records is not None:
                first = missing_since.setdefault(k, now)
                if now - first >= vanish_grace:
                    task.state, task.final, task.exit_code = "VANISHED", True, task.exit_code or "unknown"
        seen = tuple((k, results[k].state, results[k].final) for k in folds)
        if seen != last_seen:
            last_seen = seen
            counts: dict[str, list[int]] = {}
            for k in folds:
                counts.setdefault(results[k].state, []).append(k)
            echo(f"slurm: array {array_job_id}: " + "; ".join(f"{s.lower()} {v}" for s, v in sorted(counts.items())))
            if on_change:
                on_change(results)
        failed = [results[k] for k in folds if results[k].final and not results[k].ok]
        if failed:
            unfinished = [k for k in folds if not results[k].final]
            if unfinished:
                slurm.cancel(array_job_id)
                _settle(slurm, array_job_id, results, unfinished, slurm_dir, sleep=sleep)
                if on_change:
                    on_change(results)
            first = failed[0]
            raise SlurmTaskFailed(failure_message(first, array_job_id=array_job_id, job_name=job_name,
                                                  cancelled=unfinished) +
                                  ("" if len(failed) == 1 else
                                   f"\n(also not completed: folds {', '.join(str(t.fold) for t in failed[1:])}; "
                                   f"see their logs in {slurm_dir})"))
        if all(results[k].final for k in folds):
            return results
        if now - t0 >= max_wait:
            unfinished = [k for k in folds if not results[k].final]
            states = ", ".join(f"fold {k} {results[k].state}" + (f" ({results[k].reason})" if results[k].reason else "")
                               for k in unfinished)
            slurm.cancel(array_job_id)
            _settle(slurm, array_job_id, results, unfinished, slurm_dir, sleep=sleep)
            if on_change:
                on_change(results)
            raise SlurmError(f"Slurm: array job {array_job_id} did not finish within SLURM_MAX_WAIT={max_wait:.0f} s "
                             f"({states}); it was cancelled. Raise SLURM_MAX_WAIT, or check the queue "
                             f"(`squeue -j {array_job_id} -r`), then run make again. Logs: {slurm_dir}/fold_<k>.log")
        sleep(poll)


def _settle(slurm: SlurmCommands, array_job_id: str, results: dict[int, TaskResult], folds: Sequence[int],
            slurm_dir: Path, *, sleep: Callable[[float], None], tries: int = 5) -> None:
    """After scancel: record the cancelled tasks' final states (briefly; CANCELLED when Slurm is slow)."""
    for _ in range(tries):
        by_task = _records_by_task(slurm.show_job(array_job_id) or [], array_job_id)
        for k in folds:
            if k in by_task:
                results[k].update_from_record(by_task[k])
        if all(results[k].final for k in folds):
            break
        sleep(1.0)
    for k in folds:
        if not results[k].final:
            results[k].state, results[k].final = "CANCELLED", True
            results[k].reason = "cancelled by sscild"
        st = read_status(slurm_dir, k, array_job_id)
        if st is not None:
            results[k].update_from_status(st, final=False)


# --------------------------------------------------------------------------------------------------
# the whole step: which folds, script, submit, wait, record
# --------------------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jobs_path(slurm_dir: Path) -> Path:
    return slurm_dir / "jobs.json"


def _load_jobs(slurm_dir: Path) -> dict:
    p = _jobs_path(slurm_dir)
    if p.exists():
        try:
            data = read_json(p)
            if isinstance(data, dict) and isinstance(data.get("arrays"), list):
                return data
        except (OSError, ValueError):
            pass
    return {"arrays": []}


def _active_earlier_array(slurm: SlurmCommands, jobs: dict) -> tuple[str, list[int]] | None:
    """An array of this run from an earlier make that Slurm still runs (to avoid training a fold twice)."""
    for arr in reversed(jobs["arrays"][-5:]):
        if arr.get("outcome") == "completed":
            continue
        job = str(arr.get("array_job_id", ""))
        if not job:
            continue
        by_task = _records_by_task(slurm.show_job(job) or [], job)
        active = sorted(t for t, rec in by_task.items() if _state_of(rec) in ACTIVE_STATES)
        if active:
            return job, active
    return None


def make_query(*, repo: Path, make: str, make_vars: Sequence[str], env: dict | None = None
               ) -> Callable[[Path], bool]:
    """A function ``target -> bool``: does make (LAUNCHER=local) consider ``target`` out of date?"""
    env = _clean_env(env)

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
    jobs = _load_jobs(slurm_dir)
    active = _active_earlier_array(slurm, jobs)
    if active:
        job, tasks = active
        raise SlurmError(f"Slurm array job {job} of this run ({run_dir}) is still running folds {tasks}. Wait for it "
                         f"to finish (`squeue -j {job} -r`) or cancel it (`scancel {job}`), then run make again.")
    for k in todo:
        (slurm_dir / f"fold_{k}.status").unlink(missing_ok=True)
    script = slurm_dir / f"array-{job_name}.sbatch"
    with atomic_path(script, suffix=".sbatch") as tmp:
        tmp.write_text(render_script(repo=repo, slurm_dir=slurm_dir, folds=todo, job_name=job_name,
                                     make_vars=make_vars, options=options, make=make))
    job_id = slurm.sbatch(script, options.extra)
    sbatch_argv = ["sbatch", "--parsable", *options.extra, str(script)]
    kept = slurm_dir / f"array-{job_id}.sbatch"  # Slurm holds its own copy now: keep each array's script
    try:
        os.replace(script, kept)
        script = kept
    except OSError:
        pass
    echo(f"slurm: submitted array job {job_id} ({job_name}), folds {todo}; logs {slurm_dir}/fold_<k>.log")
    entry = {"array_job_id": job_id, "job_name": job_name, "submitted": _now(), "folds": todo,
             "script": str(script), "sbatch": sbatch_argv,
             "options": options.directives(), "outcome": "submitted", "tasks": {}}
    jobs["arrays"].append(entry)
    write_json(_jobs_path(slurm_dir), jobs)

    def record(results: dict[int, TaskResult], outcome: str | None = None) -> None:
        entry["tasks"] = {str(k): r.to_dict() for k, r in sorted(results.items())}
        if outcome:
            entry["outcome"], entry["finished"] = outcome, _now()
        write_json(_jobs_path(slurm_dir), jobs)

    grace = vanish_grace if vanish_grace is not None else max(60.0, 3 * poll)
    holder: dict[int, TaskResult] = {}

    def on_change(results):
        holder.update(results)
        record(results)

    try:
        results = wait_for_array(slurm, job_id, todo, slurm_dir=slurm_dir, job_name=job_name, poll=poll,
                                 max_wait=max_wait, vanish_grace=grace, on_change=on_change, echo=echo)
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


# --------------------------------------------------------------------------------------------------
# for the book
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# command line (called by mk/slurm.mk)
# --------------------------------------------------------------------------------------------------
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
