"""The fold array's batch script: its sbatch options (make variables ``SLURM_*``), the script itself
(one array task per fold, each running that fold's local make target), and the status file each
task writes when its make finishes."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["SlurmOptions", "render_script", "read_status", "measured_fold_mem", "MEM_HEADROOM"]


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


# --------------------------------------------------------------------------------------------------
# the batch script and the status files
# --------------------------------------------------------------------------------------------------
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


MEM_HEADROOM = 1.5
"""A fold task asks for this many times the measured peak of a fold (:func:`measured_fold_mem`)."""


def measured_fold_mem(profile: str, record: str | os.PathLike) -> tuple[str, str] | None:
    """``--mem`` for a fold of ``profile`` from a recorded dry run of that profile, and why; else ``None``.

    The record is ``benchmarks/paper_scale_cpu.json`` (``scripts/paper_scale_dry_run.py``): its training
    stage's largest process is one fold at full size (resident memory, which includes the memory-mapped
    cache pages). The request is :data:`MEM_HEADROOM` times that, in whole GiB, at least 4G.

    >>> import json, tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    >>> _ = f.write(json.dumps({"profile": "paper", "commit": "abc1234", "stages": {"train": {"peak_process_gib": 5.5}}}))
    >>> f.close()
    >>> measured_fold_mem("paper", f.name)[0], measured_fold_mem("cpu", f.name)
    ('9G', None)
    """
    import math

    try:
        rec = json.loads(Path(record).read_text())
        peak = float(rec["stages"]["train"]["peak_process_gib"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rec.get("profile") != profile or peak <= 0:
        return None
    gib = max(4, math.ceil(MEM_HEADROOM * peak))
    return f"{gib}G", (f"{MEM_HEADROOM:g} x the {peak:g} GiB a {profile}-profile fold used at full size "
                       f"({Path(record).name}, commit {str(rec.get('commit', '?'))[:10]})")


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
