"""Unlabelled scans in the study's pipeline: a cohort with unlabelledTr/ pretrains once per run (the
default) or trains teacher and student per fold (self-training)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from cohort_factory import prepare_run
from sscild.model import train as train_mod
from sscild.model.network import build_network
from sscild.model.pretrain import cohort_pretrained_state
from sscild.model.selftrain import semi_mode, unlabelled_scans
from sscild.data.validate import validate_cohort
from sscild.data.validation_report import validation_record
from sscild.paths import RunPaths, write_json
from sscild.synthetic.writer import generate_cohort
from sscild.profiles import get_profile


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    """A 5-patient smoke cohort whose fifth CT is moved to unlabelledTr/ (its label and row removed)."""
    base = tmp_path_factory.mktemp("semi")
    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=5, seed=3, unlabelled=0, progress=False)
    cases = sorted(p.name for p in (data / "imagesTr").iterdir())
    last = cases[-1].removesuffix("_0000.nii.gz")
    (data / "unlabelledTr").mkdir()
    shutil.move(data / "imagesTr" / cases[-1], data / "unlabelledTr" / "other_0000.nii.gz")
    (data / "labelsTr" / f"{last}.nii.gz").unlink()
    clin = pd.read_csv(data / "clinical.csv")
    clin[clin.case_id != last].to_csv(data / "clinical.csv", index=False)
    run = RunPaths(results=base / "results", cohort="cohort", profile="smoke")
    report = validate_cohort(data)
    assert report.ok, report.format()
    write_json(run.validation, validation_record(report))
    prepare_run(data, run.results)
    return run


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_fold_with_unlabelled_scans_self_trains(semi_run, monkeypatch):
    assert list(unlabelled_scans(semi_run)) == ["other"]
    loaded = []
    real = train_mod.load_cached
    monkeypatch.setattr(train_mod, "load_cached", lambda run, cid, **kw: loaded.append(cid) or real(run, cid, **kw))
    # a 4-step teacher is never confident
    prof = get_profile("smoke").with_overrides(semi_supervised="self-training", pseudo_confidence=0.0)
    summ = train_mod.train_fold(semi_run, prof, 0, progress=False, iterations=4)
    fold = semi_run.fold_dir(0)
    assert summ["semi"]["mode"] == "self-training"
    assert summ["semi"]["unlabelled"] == ["other"] and summ["semi"]["student_iterations"] == 2
    assert summ["pseudo"]["scans"] == 1 and summ["pseudo"]["kept_share"] == 1.0
    assert summ["pseudo_cases"] == 1 and summ["init"] == "given state" and summ["steps"] == 2
    assert not set(loaded) & set(summ["test_cases"])  # held-out patients never loaded
    teacher, student = _weights(fold / "teacher" / "model_final.pt"), _weights(fold / "model_final.pt")
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    # a finished fold is reused, and the same fold with the mode off is stale, not silently reused
    assert train_mod.train_fold(semi_run, prof, 0, progress=False, iterations=4)["seconds"] == summ["seconds"]
    off = prof.with_overrides(semi_supervised="off")
    with pytest.raises(ValueError, match="semi-supervised"):
        train_mod.train_fold(semi_run, off, 0, progress=False, iterations=4)


def test_cohort_without_unlabelled_scans_trains_as_before(tmp_path):
    run = RunPaths(results=tmp_path, cohort="c", profile="smoke")
    assert unlabelled_scans(run) == {}  # no validation.json
    run.root.mkdir(parents=True)
    write_json(run.validation, {"root": str(tmp_path / "nowhere"), "problems": []})
    assert unlabelled_scans(run) == {}


def test_fold_with_unlabelled_scans_starts_from_pretraining(semi_run, monkeypatch):
    """The default mode: one pretraining per run on the unlabelled scans only; every fold starts from it."""
    prof = get_profile("smoke")
    assert semi_mode(prof) == "pretrain"
    loaded = []
    real = train_mod.load_cached
    monkeypatch.setattr(train_mod, "load_cached", lambda run, cid, **kw: loaded.append(cid) or real(run, cid, **kw))
    s1 = train_mod.train_fold(semi_run, prof, 1, progress=False, iterations=4)
    assert s1["semi"] == {"mode": "pretrain", "unlabelled": ["other"], "pretrain_steps": prof.pretrain_steps}
    assert s1["init"] == "given state" and s1["steps"] == 4 and "teacher_seconds" not in s1
    assert s1["pretraining"]["steps"] == prof.pretrain_steps and s1["pretraining"]["scans"] == 1
    assert not set(loaded) & set(s1["test_cases"])  # held-out patients never loaded
    pre = semi_run.root / "pretrained"
    state = torch.load(pre / "pretrained.pt", map_location="cpu", weights_only=False)
    # the pretrained weights depend on the unlabelled scans and the settings alone: a run folder with
    # nothing else in it (no cohort cache, no labels, no splits) gets the same weights
    other = RunPaths(results=semi_run.results / "elsewhere", cohort="x", profile="smoke")
    again, summ = cohort_pretrained_state(other, prof, unlabelled_scans(semi_run), log=None)
    assert not summ["reused"] and all(torch.equal(state[k], again[k]) for k in state)
    # the next fold of the run reuses its pretraining
    mtime = (pre / "pretrained.pt").stat().st_mtime_ns
    reused, summ = cohort_pretrained_state(semi_run, prof, unlabelled_scans(semi_run), log=None)
    assert summ["reused"] and (pre / "pretrained.pt").stat().st_mtime_ns == mtime
    assert all(torch.equal(state[k], reused[k]) for k in state)
    # the finished fold is stale when the pretraining changes or is switched off, not silently reused
    for changed in (prof.with_overrides(pretrain_steps=prof.pretrain_steps + 1), prof.with_overrides(semi_supervised="off")):
        with pytest.raises(ValueError, match="semi-supervised"):
            train_mod.train_fold(semi_run, changed, 1, progress=False, iterations=4)


def test_pretraining_changes_the_start_and_the_mode_is_checked(semi_run):
    prof = get_profile("smoke")
    state, _ = cohort_pretrained_state(semi_run, prof, unlabelled_scans(semi_run), log=None)
    torch.manual_seed(prof.seed)
    fresh = build_network(prof).state_dict()
    assert any(not torch.equal(state[k], fresh[k]) for k in state if state[k].is_floating_point())
    with pytest.raises(ValueError, match="semi_supervised must be one of"):
        semi_mode(prof.with_overrides(semi_supervised="auto"))
    assert semi_mode(prof.with_overrides(pretrain_steps=0)) == "off"


def test_the_external_check_uses_the_studys_words_and_check():
    """One vocabulary for unlabelled scans: the external check's profiles use the study's
    ``semi_supervised`` and ``pretrain_steps``, checked by the same function (the same error, the same
    "pretrain with 0 steps is off")."""
    from sscild.external.recipe import check_extra, external_profile
    from sscild.model.selftrain import SEMI_MODES

    for mode in SEMI_MODES:
        assert check_extra(external_profile("smoke", semi_supervised=mode))["semi_supervised"] == mode
    assert check_extra(external_profile("smoke", pretrain_steps=0))["semi_supervised"] == semi_mode(
        get_profile("smoke").with_overrides(pretrain_steps=0)) == "off"
    for bad in ("auto", "fine-tune"):
        with pytest.raises(ValueError, match="semi_supervised must be one of pretrain, self-training, consistency, off"):
            external_profile("smoke", semi_supervised=bad)


# ------------------------------------------------------------------ the recorded comparison of arms
def test_arm_record_pairs_patients_and_refuses_other_patients(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from sscild.analysis.arms import ARM_METRICS, arms_table, read_arms
    from sscild.paths import repo_root

    runs = []
    for name, shift in (("a", 0.0), ("b", 0.02)):
        d = tmp_path / name
        d.mkdir()
        df = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "fold": [i % 3 for i in range(12)],
                           **{m: 0.6 + shift + 0.1 * np.arange(12) / 12 for m in ARM_METRICS}})
        df.to_csv(d / "segmentation_metrics.csv", index=False)
        runs.append(d)
    out = tmp_path / "arms.csv"
    script = repo_root() / "scripts" / "record_arms.py"
    r = subprocess.run([sys.executable, str(script), str(out), f"control={runs[0]}", f"treated={runs[1]}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = arms_table(read_arms(out), n_boot=200)
    assert t.loc["treated", "Dice EF, change from control [95% CI]"].startswith("+0.020")
    assert t.loc["control", "Dice EF, change from control [95% CI]"] == ""
    # a run of other patients is refused, and nothing is written
    other = tmp_path / "c"
    other.mkdir()
    pd.read_csv(runs[1] / "segmentation_metrics.csv").iloc[1:].to_csv(other / "segmentation_metrics.csv", index=False)
    out2 = tmp_path / "arms2.csv"
    r = subprocess.run([sys.executable, str(script), str(out2), f"control={runs[0]}", f"short={other}"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "other patients" in r.stderr and not out2.exists()
    bad = read_arms(out).iloc[1:]
    bad.to_csv(out2, index=False)
    with pytest.raises(ValueError, match="other patients"):
        read_arms(out2)


def test_recorded_pretraining_comparison_is_whole():
    """The record the Model & training chapter shows: two arms on the same 40 synthetic patients."""
    from sscild.analysis.arms import read_arms
    from sscild.paths import repo_root

    for name in ("study_pretrain_cv.csv", "study_pretrain_cv_seed1.csv"):
        df = read_arms(repo_root() / "benchmarks" / name)
        assert df.groupby("arm", sort=False).size().tolist() == [40, 40]
        assert list(dict.fromkeys(df["arm"]))[0].startswith("no unlabelled scans")


def test_interrupted_fold_is_not_resumed_from_other_starting_weights(tmp_path):
    """A fold stopped mid-way after starting from the pretrained weights is not resumed once the
    pretraining has changed (it would mix two starts); the message says why."""
    data = generate_cohort(tmp_path / "cohort", profile=get_profile("smoke"), n=4, seed=5, progress=False)
    run = RunPaths(results=tmp_path / "results", cohort="cohort", profile="smoke")
    report = validate_cohort(data)
    write_json(run.validation, validation_record(report))
    prepare_run(data, run.results)
    prof = get_profile("smoke").with_overrides(checkpoint_every=2)
    part = train_mod.train_fold(run, prof, 0, progress=False, iterations=6, stop_after=2)
    assert part.get("interrupted") and (run.fold_dir(0) / "checkpoint_latest.pt").exists()
    with pytest.raises(ValueError, match="initial weights"):
        train_mod.train_fold(run, prof.with_overrides(pretrain_steps=prof.pretrain_steps + 2), 0, progress=False,
                             iterations=6)
    done = train_mod.train_fold(run, prof, 0, progress=False, iterations=6)  # the same start resumes
    assert done["steps"] == 6 and done["semi"]["mode"] == "pretrain"


def test_pretraining_reads_its_scans_from_memory_maps_not_memory(semi_run, tmp_path):
    """The unlabelled scans are cached once as float16 files and memory-mapped: memory does not grow with
    their number, and the patches are exactly those of the scans held in memory."""
    import numpy as np

    from sscild.data.image import load_volume
    from sscild.data.preprocess import preprocess_volume
    from sscild.model.pretrain import PatchSource, unlabelled_image

    prof = get_profile("smoke")
    run = RunPaths(results=tmp_path, cohort="c", profile="smoke")
    uid, scan = next(iter(unlabelled_scans(semi_run).items()))
    img = unlabelled_image(run, prof, uid, scan)
    assert isinstance(img, np.memmap) and img.dtype == np.float16 and not img.flags.writeable
    in_memory = np.asarray(preprocess_volume(load_volume(scan), None, profile=prof, case_id=uid).image, np.float16)
    assert np.array_equal(img, in_memory)
    cached = run.cache / "unlabelled" / f"{uid}.f16.npy"
    mtime = cached.stat().st_mtime_ns
    unlabelled_image(run, prof, uid, scan)
    assert cached.stat().st_mtime_ns == mtime                                 # reused, not rewritten
    unlabelled_image(run, prof.with_overrides(hu_clip=(-1000.0, 300.0)), uid, scan)
    assert cached.stat().st_mtime_ns != mtime                                 # other preprocessing: rebuilt
    img = unlabelled_image(run, prof, uid, scan)
    a, b = (PatchSource([v], prof.patch_size, 3)(np.random.default_rng(5)) for v in (img, in_memory))
    assert torch.equal(a, b)


def test_fold_with_consistency_learning(semi_run, tmp_path):
    """The study's folds with consistency learning: pretrained start, unlabelled patches beside every
    batch, reused when finished and stale under another mode (a copy of the run, without its folds)."""
    shutil.copytree(semi_run.results, tmp_path / "results", ignore=shutil.ignore_patterns("fold_*"))
    run = RunPaths(results=tmp_path / "results", cohort=semi_run.cohort, profile=semi_run.profile)
    prof = get_profile("smoke").with_overrides(semi_supervised="consistency")
    summ = train_mod.train_fold(run, prof, 0, progress=False, iterations=4)
    assert summ["semi"]["mode"] == "consistency" and summ["semi"]["unlabelled"] == ["other"]
    assert summ["consistency"]["per_batch"] == prof.batch_size and summ["init"] == "given state"  # pretrained start
    assert "pretraining" in summ
    # reused when finished; stale under another mode
    assert train_mod.train_fold(run, prof, 0, progress=False, iterations=4)["seconds"] == summ["seconds"]
    with pytest.raises(ValueError, match="semi-supervised"):
        train_mod.train_fold(run, prof.with_overrides(semi_supervised="pretrain"), 0, progress=False, iterations=4)
    # without pretraining steps, consistency starts from random weights
    fresh = prof.with_overrides(pretrain_steps=0)
    s1 = train_mod.train_fold(run, fresh, 1, progress=False, iterations=4)
    assert s1["init"] == "random" and s1["semi"]["mode"] == "consistency" and "pretraining" not in s1
