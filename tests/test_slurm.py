"""Folds as one Slurm job array: status parsing and waiting (with a fake Slurm), the batch script, and
real runs on a private one-node cluster (tests/slurm_cluster.py): a dummy array, then the smoke
profile's folds through `make train LAUNCHER=slurm`, compared with a local run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from slurm_cluster import LocalCluster, ensure_packages, missing_reason
from sscild.paths import RunPaths
from sscild.cluster.jobs import jobs_table
from sscild.cluster.queue import (SlurmCommands, SlurmError, SlurmTaskFailed, expand_task_ids, parse_duration,
                                  parse_scontrol)
from sscild.cluster.sbatch import SlurmOptions, read_status, render_script
from sscild.cluster.submit import submit_folds
from sscild.cluster.wait import wait_for_array

# --------------------------------------------------------------------------------------------------
# a fake Slurm: scontrol answers follow a script, one frame per poll
# --------------------------------------------------------------------------------------------------


def rec(task, state, *, job=None, exit_code="0:0", node="n1", array=50, runtime="00:00:05", reason="None"):
    """One `scontrol show job -o` line for array task(s) `task` (e.g. 1 or "0-1")."""
    job = job if job is not None else (array if isinstance(task, str) else array + 1 + int(task))
    nodes = "" if state == "PENDING" else node
    return (f"JobId={job} ArrayJobId={array} ArrayTaskId={task} JobName=sscild-c-p UserId=u(1) JobState={state} "
            f"Reason={reason} ExitCode={exit_code} RunTime={runtime} StartTime=2026-01-01T10:00:00 "
            f"EndTime=Unknown NodeList={nodes} BatchHost={nodes or '(null)'} Command=/a path/with spaces.sbatch "
            f"WorkDir=/w")


class FakeSlurm(SlurmCommands):
    """`frames[i]` is what the i-th `scontrol show job` prints (a list of records; None: no answer;
    "gone": invalid job id); the last frame repeats. `hooks[n]` runs before the n-th poll is answered."""

    def __init__(self, frames, hooks=None, job_id="50"):
        self.frames, self.hooks, self.job_id = frames, hooks or {}, job_id
        self.calls: list[list[str]] = []
        self.polls = 0
        super().__init__(run=self._run)

    def _run(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "sbatch":
            return subprocess.CompletedProcess(argv, 0, f"{self.job_id}\n", "")
        if argv[0] == "scancel":
            return subprocess.CompletedProcess(argv, 0, "", "")
        if self.polls in self.hooks:
            self.hooks[self.polls]()
        i = min(self.polls, len(self.frames) - 1)
        self.polls += 1
        frame = self.frames[i]
        if frame is None:
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Unable to contact slurm controller")
        if frame == "gone":
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")
        return subprocess.CompletedProcess(argv, 0, "\n".join(frame) + "\n", "")

    @property
    def cancelled(self):
        return [c for c in self.calls if c[0] == "scancel"]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def write_status(slurm_dir: Path, fold: int, *, exit_code=0, array=50, sig="", start=1000, end=1030):
    slurm_dir.mkdir(parents=True, exist_ok=True)
    (slurm_dir / f"fold_{fold}.status").write_text(json.dumps(
        {"fold": fold, "array_job_id": str(array), "job_id": str(array + 1 + fold), "node": "n7",
         "exit_code": exit_code, "signal": sig, "start": start, "end": end}))


def wait(fake, tmp_path, folds=(0, 1), **kw):
    clock = Clock()
    kw.setdefault("poll", 1.0)
    kw.setdefault("vanish_grace", 5.0)
    return wait_for_array(fake, "50", folds, slurm_dir=tmp_path / "slurm", job_name="sscild-c-p", clock=clock,
                          sleep=clock.sleep, echo=lambda s: None, **kw)


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------
def test_parse_scontrol_keeps_values_with_spaces_and_odd_keys():
    line = ("JobId=51 ArrayJobId=50 ArrayTaskId=0 JobState=RUNNING ReqB:S:C:T=0:0:*:* CPUs/Task=2 "
            "Command=/a path/with spaces.sbatch WorkDir=/w")
    (r,) = parse_scontrol(line + "\n\n")
    assert r["JobId"] == "51" and r["JobState"] == "RUNNING"
    assert r["Command"] == "/a path/with spaces.sbatch"
    assert r["ReqB:S:C:T"] == "0:0:*:*" and r["CPUs/Task"] == "2" and r["WorkDir"] == "/w"
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") == []


def test_expand_task_ids():
    assert expand_task_ids("0-3") == [0, 1, 2, 3]
    assert expand_task_ids("1,4-8:3%2") == [1, 4, 7]
    assert expand_task_ids("7") == [7]
    assert expand_task_ids("N/A") == []
    with pytest.raises(ValueError):
        expand_task_ids("a-b")


def test_parse_duration():
    assert parse_duration("3600") == 3600
    assert parse_duration("01:30") == 90
    assert parse_duration("02:00:00") == 7200
    assert parse_duration("2-00:00:00") == 2 * 86400
    assert parse_duration("1-06") == 86400 + 6 * 3600
    with pytest.raises(ValueError, match="duration"):
        parse_duration("two hours")


def test_options_are_validated_with_the_make_variable_named():
    assert SlurmOptions(partition="gpu", time="1-00:00:00", cpus=4, mem="16G", gres="gpu:a100:1",
                        account="lab").directives() == [
        "--partition=gpu", "--account=lab", "--time=1-00:00:00", "--cpus-per-task=4", "--mem=16G", "--gres=gpu:a100:1"]
    with pytest.raises(ValueError, match="SLURM_TIME"):
        SlurmOptions(time="2h")
    with pytest.raises(ValueError, match="SLURM_MEM"):
        SlurmOptions(mem="lots")
    with pytest.raises(ValueError, match="SLURM_CPUS"):
        SlurmOptions.from_strings(cpus="two")
    with pytest.raises(ValueError, match="SLURM_EXTRA.*--array"):
        SlurmOptions.from_strings(extra="--qos=short --array=0-3")
    assert SlurmOptions.from_strings(extra="--qos=short  --constraint='a100|h100'").extra == (
        "--qos=short", "--constraint=a100|h100")


# --------------------------------------------------------------------------------------------------
# the batch script
# --------------------------------------------------------------------------------------------------
def test_script_has_array_logs_name_and_options(tmp_path):
    text = render_script(repo=tmp_path, slurm_dir=tmp_path / "res" / "slurm", folds=[5, 2, 2], job_name="sscild-c-p",
                         make_vars=["PROFILE=smoke", "DATA=/d/c"], options=SlurmOptions(time="10", gres="gpu:1"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sb = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert "#SBATCH --array=2,5" in sb
    assert "#SBATCH --job-name=sscild-c-p" in sb
    assert f"#SBATCH --output={tmp_path / 'res' / 'slurm'}/fold_%a.log" in sb
    assert "#SBATCH --time=10" in sb and "#SBATCH --gres=gpu:1" in sb
    assert any('"fold-$fold" LAUNCHER=local PROFILE=smoke DATA=/d/c' in ln for ln in lines)
    with pytest.raises(ValueError, match="NAME=value"):
        render_script(repo=tmp_path, slurm_dir=tmp_path, folds=[0], job_name="j", make_vars=["-j8"])
    with pytest.raises(ValueError, match="no folds"):
        render_script(repo=tmp_path, slurm_dir=tmp_path, folds=[], job_name="j")


@pytest.mark.parametrize("code", [0, 3])
def test_script_runs_the_fold_target_and_records_its_exit_status(tmp_path, code):
    """Run the generated script as Slurm would run task 1 (with a stand-in for make)."""
    fake_make = tmp_path / "fake-make"
    fake_make.write_text(f"#!/bin/bash\necho \"make $*\"\necho threads=$SSCILD_THREADS flags=${{MAKEFLAGS:-none}}\n"
                         f"exit {code}\n")
    fake_make.chmod(0o755)
    slurm_dir = tmp_path / "slurm"
    slurm_dir.mkdir()
    script = tmp_path / "array.sbatch"
    script.write_text(render_script(repo=tmp_path, slurm_dir=slurm_dir, folds=[0, 1], job_name="j",
                                    make_vars=["PROFILE=smoke"], make=str(fake_make)))
    env = {k: v for k, v in os.environ.items() if k != "SSCILD_THREADS"}
    env.update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="77", SLURM_JOB_ID="79", SLURMD_NODENAME="node9",
               SLURM_CPUS_PER_TASK="3", MAKEFLAGS=" -j4 --jobserver-auth=3,4 -- LAUNCHER=slurm")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == code
    assert f"make -C {tmp_path} fold-1 LAUNCHER=local PROFILE=smoke" in proc.stdout
    assert "threads=3 flags=none" in proc.stdout  # task CPUs become threads; the caller's make flags are dropped
    st = read_status(slurm_dir, 1, "77")
    assert st["exit_code"] == code and st["node"] == "node9" and st["job_id"] == "79" and st["fold"] == 1
    assert st["end"] >= st["start"]
    assert read_status(slurm_dir, 1, "76") is None  # another array's file is not this one's


# --------------------------------------------------------------------------------------------------
# waiting, with a fake Slurm
# --------------------------------------------------------------------------------------------------
def test_wait_returns_when_all_tasks_completed(tmp_path):
    fake = FakeSlurm([
        [rec("0-1", "PENDING")],
        [rec(0, "RUNNING"), rec(1, "RUNNING", job=50)],
        [rec(0, "COMPLETED", runtime="00:01:05"), rec(1, "COMPLETED", job=50, runtime="00:00:30")],
    ])
    seen = []
    res = wait(fake, tmp_path, on_change=lambda r: seen.append({k: t.state for k, t in r.items()}))
    assert {k: r.state for k, r in res.items()} == {0: "COMPLETED", 1: "COMPLETED"}
    assert res[0].task_job_id == "51" and res[1].task_job_id == "50"
    assert res[0].wall_seconds == 65 and res[0].node == "n1" and res[0].exit_code == "0:0"
    assert seen[0] == {0: "PENDING", 1: "PENDING"} and seen[-1] == {0: "COMPLETED", 1: "COMPLETED"}
    assert not fake.cancelled


def test_failed_task_stops_the_wait_names_fold_state_code_log_and_cancels_the_rest(tmp_path):
    log = tmp_path / "slurm" / "fold_1.log"
    log.parent.mkdir(parents=True)
    log.write_text("training...\nValueError: planted problem in fold 1\n")
    fake = FakeSlurm([
        [rec(0, "RUNNING"), rec(1, "RUNNING")],
        [rec(0, "RUNNING"), rec(1, "FAILED", exit_code="2:0", reason="NonZeroExitCode")],
        [rec(0, "CANCELLED", exit_code="0:15"), rec(1, "FAILED", exit_code="2:0")],
    ])
    results = {}
    with pytest.raises(SlurmTaskFailed) as err:
        wait(fake, tmp_path, on_change=results.update)
    msg = str(err.value)
    assert "fold 1 FAILED, exit code 2:0" in msg
    assert f"log: {log}" in msg and "planted problem in fold 1" in msg
    assert "cancelled (folds 0)" in msg
    assert fake.cancelled == [["scancel", "50"]]
    assert results[0].state == "CANCELLED" and results[1].state == "FAILED"


@pytest.mark.parametrize("state,hint", [("TIMEOUT", "SLURM_TIME"), ("OUT_OF_MEMORY", "SLURM_MEM")])
def test_timeout_and_memory_failures_say_which_variable_to_raise(tmp_path, state, hint):
    fake = FakeSlurm([[rec(0, state, exit_code="0:15")]])
    with pytest.raises(SlurmTaskFailed, match=hint) as err:
        wait(fake, tmp_path, folds=[0])
    assert f"fold 0 {state}" in str(err.value)


def test_failed_status_file_stops_the_wait_before_slurm_reports_it(tmp_path):
    fake = FakeSlurm([[rec(0, "COMPLETING")]], hooks={0: lambda: write_status(tmp_path / "slurm", 0, exit_code=2)})
    with pytest.raises(SlurmTaskFailed, match="fold 0 FAILED, exit code 2:0"):
        wait(fake, tmp_path, folds=[0])


def test_tasks_slurm_forgot_are_judged_from_their_status_files(tmp_path):
    """No accounting: once Slurm purges the job, the status files are all there is."""
    write_status(tmp_path / "slurm", 0, exit_code=0, start=100, end=160)
    write_status(tmp_path / "slurm", 1, exit_code=0, array=49)  # left by an earlier array: ignored
    fake = FakeSlurm(["gone"], hooks={3: lambda: write_status(tmp_path / "slurm", 1, exit_code=0)})
    res = wait(fake, tmp_path)
    assert res[0].state == res[1].state == "COMPLETED"
    assert res[0].wall_seconds == 60 and res[0].node == "n7"
    assert fake.polls == 4  # fold 1 waited for its own status file


def test_task_that_vanished_without_status_file_fails_after_the_grace_period(tmp_path):
    write_status(tmp_path / "slurm", 0, exit_code=0)
    fake = FakeSlurm([[rec(1, "RUNNING")], "gone"])
    with pytest.raises(SlurmTaskFailed) as err:
        wait(fake, tmp_path, vanish_grace=5.0)
    msg = str(err.value)
    assert "fold 1 VANISHED" in msg and "status file" in msg and "fold_1.log" in msg
    assert fake.polls >= 6  # it waited out the grace period


def test_controller_not_answering_is_retried_not_judged(tmp_path):
    fake = FakeSlurm([None] * 20 + [[rec(0, "COMPLETED")]])
    res = wait(fake, tmp_path, folds=[0], vanish_grace=2.0)
    assert res[0].state == "COMPLETED"


def test_wait_is_bounded_and_cancels_the_array(tmp_path):
    fake = FakeSlurm([[rec("0-1", "PENDING", reason="Priority")]])
    with pytest.raises(SlurmError, match="SLURM_MAX_WAIT=30 s.*fold 0 PENDING \\(Priority\\)") as err:
        wait(fake, tmp_path, max_wait=30.0)
    assert not isinstance(err.value, SlurmTaskFailed)
    assert fake.cancelled == [["scancel", "50"]]


# --------------------------------------------------------------------------------------------------
# submitting: only folds that are not done; jobs.json; the table for the book
# --------------------------------------------------------------------------------------------------
def fake_submit(tmp_path, fake, folds=(0, 1, 2), done=(1,)):
    """Submit with a fake Slurm; a fold is done when it is in `done` or its notebook exists."""
    run_dir = tmp_path / "results" / "cohort" / "smoke"
    return run_dir, submit_folds(run_dir=run_dir, folds=folds, repo=tmp_path, job_name="sscild-cohort-smoke",
                                 make_vars=["PROFILE=smoke"], options=SlurmOptions(time="5", extra=("--qos=x",)),
                                 needs_run=lambda nb: int(nb.parent.name.split("_")[1]) not in done and not nb.exists(),
                                 slurm=fake, poll=0.01, echo=lambda s: None)


def train(run_dir, *folds):
    """What a finished task leaves: the fold's notebook."""
    def hook():
        for k in folds:
            (run_dir / f"fold_{k}").mkdir(parents=True, exist_ok=True)
            (run_dir / f"fold_{k}" / "training.ipynb").write_text("{}")
    return hook


def test_submit_sends_only_folds_not_done_and_records_jobs_json(tmp_path):
    run_dir = tmp_path / "results" / "cohort" / "smoke"
    fake = FakeSlurm([[rec(0, "COMPLETED"), rec(2, "COMPLETED", node="n2", runtime="1-00:00:01")]],
                     hooks={0: train(run_dir, 0, 2)})
    _, res = fake_submit(tmp_path, fake)
    assert sorted(res) == [0, 2]
    sbatch = [c for c in fake.calls if c[0] == "sbatch"]
    assert len(sbatch) == 1 and sbatch[0][:3] == ["sbatch", "--parsable", "--qos=x"]
    script = run_dir / "slurm" / "array-50.sbatch"  # renamed after its job id once submitted
    assert Path(sbatch[0][-1]).parent == script.parent and "#SBATCH --array=0,2" in script.read_text()
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    (arr,) = jobs["arrays"]
    assert arr["array_job_id"] == "50" and arr["folds"] == [0, 2] and arr["outcome"] == "completed"
    assert arr["tasks"]["2"]["node"] == "n2" and arr["tasks"]["2"]["wall_seconds"] == 86401
    table = jobs_table(RunPaths(results=tmp_path / "results", cohort="cohort", profile="smoke"))
    assert list(table["fold"]) == [0, 2] and list(table["state"]) == ["COMPLETED", "COMPLETED"]
    assert list(table["log"]) == ["slurm/fold_0.log", "slurm/fold_2.log"]


def test_nothing_is_submitted_when_every_fold_is_done(tmp_path):
    fake = FakeSlurm([[]])
    _, res = fake_submit(tmp_path, fake, done=(0, 1, 2))
    assert res == {} and fake.calls == []
    assert jobs_table(tmp_path / "results" / "cohort" / "smoke") is None


def test_a_still_running_earlier_array_is_not_doubled(tmp_path):
    slurm_dir = tmp_path / "results" / "cohort" / "smoke" / "slurm"
    slurm_dir.mkdir(parents=True)
    (slurm_dir / "jobs.json").write_text(json.dumps({"arrays": [{"array_job_id": "40", "folds": [0, 2],
                                                                 "outcome": "interrupted", "tasks": {}}]}))
    fake = FakeSlurm([[rec(2, "RUNNING", array=40)]])
    with pytest.raises(SlurmError, match="array job 40 .* still running folds \\[2\\].*scancel 40"):
        fake_submit(tmp_path, fake)
    assert not [c for c in fake.calls if c[0] == "sbatch"]


def test_completed_tasks_whose_notebooks_are_missing_fail_the_step(tmp_path):
    """E.g. a results folder the compute nodes do not share: Slurm says COMPLETED, nothing arrived."""
    fake = FakeSlurm([[rec(0, "COMPLETED"), rec(2, "COMPLETED")]])
    with pytest.raises(SlurmError, match="cannot be found here.*filesystem that the compute nodes share"):
        fake_submit(tmp_path, fake)


def test_failed_submission_is_recorded_as_failed(tmp_path):
    fake = FakeSlurm([[rec(0, "COMPLETED"), rec(2, "FAILED", exit_code="1:0")]])
    with pytest.raises(SlurmTaskFailed, match="fold 2 FAILED"):
        fake_submit(tmp_path, fake)
    arr = json.loads((tmp_path / "results" / "cohort" / "smoke" / "slurm" / "jobs.json").read_text())["arrays"][0]
    assert arr["outcome"] == "failed" and arr["tasks"]["2"]["state"] == "FAILED"


# --------------------------------------------------------------------------------------------------
# a real one-node cluster
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_packages(tmp_path_factory.mktemp("apt") / "apt.log")
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    c = LocalCluster(tmp_path_factory.mktemp("slurm-cluster"), cpus=2, memory_mb=2048)
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    try:
        yield c
    finally:
        c.stop()


DUMMY_MAKEFILE = """\
RES := $(RESULTS)/$(notdir $(DATA))/$(PROFILE)
.SECONDARY:
fold-%: $(RES)/fold_%/training.ipynb ;
$(RES)/fold_%/training.ipynb:
\t@echo "training fold $* with LAUNCHER=$(LAUNCHER)"
\t@if [ "$*" = "$(FAIL_FOLD)" ]; then echo "planted failure in fold $*" >&2; exit 3; fi
\tsleep $(SLEEP)
\tmkdir -p $(@D) && touch $@
"""


def run_dummy(cluster, tmp_path, *, fail_fold="", sleep=1):
    """`python -m sscild.cluster.slurm train` on a stand-in Makefile whose fold targets sleep (or fail)."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "Makefile").write_text(DUMMY_MAKEFILE)
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "sscild.cluster.slurm", "train", "--repo", str(repo),
            "--run-dir", str(results / "cohort" / "smoke"), "--folds", "0 1", "--job-name", "sscild-cohort-smoke",
            "--make-var", "PROFILE=smoke", "--make-var", "DATA=/nowhere/cohort", "--make-var", f"RESULTS={results}",
            "--make-var", f"FAIL_FOLD={fail_fold}", "--make-var", f"SLEEP={sleep}", "--cpus", "1", "--time", "5",
            "--poll", "1"]
    return subprocess.run(argv, capture_output=True, text=True, env=cluster.env, timeout=180)


def test_dummy_array_completes_and_records_every_task(cluster, tmp_path):
    proc = run_dummy(cluster, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "results" / "cohort" / "smoke"
    for k in (0, 1):
        assert (run_dir / f"fold_{k}" / "training.ipynb").exists()
        log = (run_dir / "slurm" / f"fold_{k}.log").read_text()
        assert f"training fold {k} with LAUNCHER=local" in log
    table = jobs_table(run_dir)
    assert list(table["fold"]) == [0, 1] and set(table["state"]) == {"COMPLETED"}
    assert set(table["node"]) == {"localhost"} and set(table["exit_code"]) == {"0:0"}
    assert (table["wall_seconds"] >= 1).all()
    again = run_dummy(cluster, tmp_path)  # re-run: both folds are done, nothing is submitted
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert len(json.loads((run_dir / "slurm" / "jobs.json").read_text())["arrays"]) == 1


def test_dummy_array_with_a_failing_fold_stops_and_cancels_the_other(cluster, tmp_path):
    proc = run_dummy(cluster, tmp_path, fail_fold="1", sleep=120)  # fold 0 would run 2 minutes
    run_dir = tmp_path / "results" / "cohort" / "smoke"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fold 1 FAILED, exit code 2:0" in proc.stderr  # make's own exit status (its recipe exited 3)
    assert f"log: {run_dir / 'slurm' / 'fold_1.log'}" in proc.stderr
    assert "planted failure in fold 1" in proc.stderr  # the log's tail is shown
    assert "cancelled (folds 0)" in proc.stderr
    arr = json.loads((run_dir / "slurm" / "jobs.json").read_text())["arrays"][-1]
    assert arr["outcome"] == "failed"
    assert arr["tasks"]["1"]["state"] == "FAILED" and arr["tasks"]["0"]["state"] == "CANCELLED"
    assert not (run_dir / "fold_0" / "training.ipynb").exists()  # the run stopped without waiting for fold 0


# --------------------------------------------------------------------------------------------------
# the smoke profile's folds through make, compared with a local run
# --------------------------------------------------------------------------------------------------
def make(cluster, *args, work: Path, results: str, extra=(), timeout=600):
    env = cluster.env
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    argv = ["make", "-C", str(REPO), *args, "PROFILE=smoke", f"RESULTS={work / results}",
            f"DATA_ROOT={work / 'data'}", f"BOOK_OUT={work / 'book'}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def _state_dict(path):
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    return sd


@pytest.mark.slow
def test_smoke_folds_on_slurm_equal_a_local_run_and_a_failing_fold_stops_make(cluster, tmp_path):
    work = tmp_path
    local = make(cluster, "-j2", "train", "LAUNCHER=local", "THREADS=1", work=work, results="local")
    if local.returncode != 0:
        pytest.fail(f"the local smoke run failed (not a Slurm problem):\n{local.stdout[-3000:]}\n{local.stderr[-3000:]}")
    run_l = work / "local" / "synthetic-smoke" / "smoke"
    run_s = work / "slurm" / "synthetic-smoke" / "smoke"
    # both runs train from the same data step (cache, splits): copy it, with its times, rather than redo it
    shutil.copytree(run_l, run_s, ignore=shutil.ignore_patterns("fold_*", "runlog.json"))
    slurm = make(cluster, "train", "LAUNCHER=slurm", "SLURM_CPUS=1", "SLURM_TIME=10", "SLURM_POLL=1", work=work,
                 results="slurm")
    assert slurm.returncode == 0, slurm.stdout[-4000:] + slurm.stderr[-4000:]
    assert slurm.stdout.count("submitted array job") == 1  # one array for both folds
    assert "sscild.cli prepare" not in slurm.stdout  # the copied data stage is up to date
    import torch

    for k in (0, 1):
        a, b = _state_dict(run_l / f"fold_{k}" / "model_final.pt"), _state_dict(run_s / f"fold_{k}" / "model_final.pt")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"fold {k}: {name} differs between the local and the Slurm run"
        assert (run_s / "slurm" / f"fold_{k}.log").exists()
    table = jobs_table(run_s)
    assert list(table["fold"]) == [0, 1] and set(table["state"]) == {"COMPLETED"}
    again = make(cluster, "train", "LAUNCHER=slurm", "SLURM_POLL=1", work=work, results="slurm")
    assert again.returncode == 0 and "submitted array job" not in again.stdout

    # plant a failure in fold 1: its folder is a file, so the fold's notebook cannot be written
    shutil.rmtree(run_s / "fold_1")
    (run_s / "fold_1").write_text("not a folder")
    failed = make(cluster, "train", "LAUNCHER=slurm", "SLURM_CPUS=1", "SLURM_POLL=1", work=work, results="slurm",
                  timeout=120)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0, out[-4000:]
    assert "fold 1 FAILED" in out and "exit code 2:0" in out, out[-4000:]
    assert f"log: {run_s / 'slurm' / 'fold_1.log'}" in out
    assert (run_s / "fold_0" / "training.ipynb").exists()  # the finished fold is kept
    arr = json.loads((run_s / "slurm" / "jobs.json").read_text())["arrays"][-1]
    assert arr["folds"] == [1] and arr["outcome"] == "failed"  # only the fold that was not done was resubmitted


def test_each_task_gets_the_runs_seed_and_token_steps(tmp_path):
    """A Slurm task trains with the SEED and STEPS make was given, not the profile's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSCILD_SEED", "SSCILD_STEPS")}
    out = subprocess.run(["make", "-n", "LAUNCHER=slurm", "PROFILE=smoke", "SEED=2", "STEPS=3",
                          f"RESULTS={tmp_path / 'r'}", f"DATA_ROOT={tmp_path / 'd'}", "train"],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "--make-var SEED=2" in out.stdout and "--make-var STEPS=3" in out.stdout
    plain = subprocess.run(["make", "-n", "LAUNCHER=slurm", "PROFILE=smoke", f"RESULTS={tmp_path / 'r'}",
                            f"DATA_ROOT={tmp_path / 'd'}", "train"], cwd=REPO, capture_output=True, text=True, env=env)
    assert "SEED=" not in plain.stdout and "STEPS=" not in plain.stdout
