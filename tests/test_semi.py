"""Self-training in the study's pipeline: a cohort with unlabelledTr/ trains teacher and student per fold."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from cohort_factory import prepare_run
from sscild.analysis import data as ds
from sscild.model import train as train_mod
from sscild.model.selftrain import unlabelled_scans
from sscild.data.validate import validate_cohort
from sscild.paths import RunPaths, write_json
from sscild.synthetic.writer import generate_cohort
from sscild.profiles import get_profile


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    """A 5-patient smoke cohort whose fifth CT is moved to unlabelledTr/ (its label and row removed)."""
    base = tmp_path_factory.mktemp("semi")
    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=5, seed=3, progress=False)
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
    write_json(run.validation, ds.validation_record(report))
    prepare_run(data, run.results)
    return run


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_fold_with_unlabelled_scans_self_trains(semi_run, monkeypatch):
    assert list(unlabelled_scans(semi_run)) == ["other"]
    loaded = []
    real = train_mod.load_cached
    monkeypatch.setattr(train_mod, "load_cached", lambda run, cid, **kw: loaded.append(cid) or real(run, cid, **kw))
    prof = get_profile("smoke").with_overrides(pseudo_confidence=0.0)  # a 4-step teacher is never confident
    summ = train_mod.train_fold(semi_run, prof, 0, progress=False, iterations=4)
    fold = semi_run.fold_dir(0)
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
