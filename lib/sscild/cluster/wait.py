"""Waiting for a fold array: each task's state from ``scontrol`` and its status file, stopping at the
first task that fails (the others are cancelled) with a message naming the fold, its state, exit
code and log."""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sscild.cluster.queue import (ACTIVE_STATES, FAILED_STATES, SUCCESS_STATES, SlurmCommands, SlurmError,
                                  SlurmTaskFailed, parse_duration, records_by_task, state_of)
from sscild.cluster.sbatch import read_status

__all__ = ["TaskResult", "failure_message", "wait_for_array"]

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
        self.state = state_of(rec)
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
        _update_tasks(results, folds, records, array_job_id, slurm_dir, missing_since=missing_since, now=now,
                      vanish_grace=vanish_grace)
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
                _cancel_unfinished(slurm, array_job_id, results, unfinished, slurm_dir, sleep=sleep,
                                   on_change=on_change)
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
            _cancel_unfinished(slurm, array_job_id, results, unfinished, slurm_dir, sleep=sleep, on_change=on_change)
            raise SlurmError(f"Slurm: array job {array_job_id} did not finish within SLURM_MAX_WAIT={max_wait:.0f} s "
                             f"({states}); it was cancelled. Raise SLURM_MAX_WAIT, or check the queue "
                             f"(`squeue -j {array_job_id} -r`), then run make again. Logs: {slurm_dir}/fold_<k>.log")
        sleep(poll)


def _update_tasks(results: dict[int, TaskResult], folds: Sequence[int], records: list[dict] | None,
                  array_job_id: str, slurm_dir: Path, *, missing_since: dict[int, float], now: float,
                  vanish_grace: float) -> None:
    """One poll's news for each unfinished task: its Slurm record (``records``: ``None`` when Slurm did
    not answer) and its status file; a task missing from an answer for ``vanish_grace`` s is ``VANISHED``."""
    by_task = records_by_task(records or [], array_job_id)
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


def _cancel_unfinished(slurm: SlurmCommands, array_job_id: str, results: dict[int, TaskResult],
                       unfinished: Sequence[int], slurm_dir: Path, *, sleep: Callable[[float], None],
                       on_change: Callable[[dict[int, TaskResult]], None] | None) -> None:
    """Cancel the array, record its unfinished tasks' final states and report the change."""
    slurm.cancel(array_job_id)
    _settle(slurm, array_job_id, results, unfinished, slurm_dir, sleep=sleep)
    if on_change:
        on_change(results)


def _settle(slurm: SlurmCommands, array_job_id: str, results: dict[int, TaskResult], folds: Sequence[int],
            slurm_dir: Path, *, sleep: Callable[[float], None], tries: int = 5) -> None:
    """After scancel: record the cancelled tasks' final states (briefly; CANCELLED when Slurm is slow)."""
    for _ in range(tries):
        by_task = records_by_task(slurm.show_job(array_job_id) or [], array_job_id)
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
