"""Controls without lung disease: the phantom's healthy patients, the cohort folder, validation, scoring."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cohort_factory import prepare_run
from sscild.analysis.segmentation_summary import controls_summary
from sscild.data.cohort import load_cohort
from sscild.data.validate import validate_cohort
from sscild.model.controls import CONTROL_COLUMNS, control_scans, score_controls
from sscild.paths import write_json
from sscild.profiles import get_profile
from sscild.synthetic.phantom import generate_case
from sscild.synthetic.writer import CONTROL_INDEX0, generate_cohort

SMOKE = get_profile("smoke")


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_a_healthy_phantom_is_the_same_patient_without_disease():
    sick = generate_case(CONTROL_INDEX0, profile=SMOKE, seed=0)
    well = generate_case(CONTROL_INDEX0, profile=SMOKE, seed=0, healthy=True)
    assert set(np.unique(well.label).tolist()) == {0, 1}
    assert well.truth["lesion_pct"] == 0.0 and sick.truth["lesion_pct"] > 0
    assert well.truth["emphysema_kind"] == sick.truth["emphysema_kind"]      # same variety draws
    assert well.image.shape == sick.image.shape and well.truth["lung_ml"] >= sick.truth["lung_ml"]  # no fibrotic shrinkage


def test_controls_are_written_apart_and_leave_the_cohort_alone(tmp_path):
    with_c = generate_cohort(tmp_path / "c", profile=SMOKE, n=3, seed=0, progress=False)
    plain = generate_cohort(tmp_path / "p", profile=SMOKE, n=3, seed=0, controls=0, progress=False)
    hc, hp = _hashes(with_c), _hashes(plain)
    assert [k for k in hc if k.startswith("controlsTs/")] == ["controlsTs/control_000_0000.nii.gz"]
    assert all(hc[k] == hp[k] for k in hp if k.endswith((".nii.gz", ".csv")))
    assert json.loads((with_c / "dataset.json").read_text())["phantom"]["controls"] == 1
    assert "controls" not in json.loads((plain / "dataset.json").read_text())["phantom"]
    assert "control_000" not in (with_c / "clinical.csv").read_text()
    assert list(load_cohort(with_c).controls) == ["control_000"]
    report = validate_cohort(with_c)
    assert report.ok and not [p for p in report.problems if str(p.case_id).startswith("controls")]
    with pytest.raises(ValueError, match="controls must be"):
        generate_cohort(tmp_path / "bad", profile=SMOKE, n=3, controls=-1, progress=False)


def test_validation_refuses_a_control_that_repeats_a_case_or_holds_a_label(tmp_path):
    root = generate_cohort(tmp_path / "c", profile=SMOKE, n=3, seed=0, unlabelled=0, progress=False)
    shutil.copy(root / "imagesTr" / "case_001_0000.nii.gz", root / "controlsTs" / "copy_0000.nii.gz")
    shutil.copy(root / "labelsTr" / "case_002.nii.gz", root / "controlsTs" / "case_002.nii.gz")
    report = validate_cohort(root)
    kinds = {(p.case_id, p.kind) for p in report.problems}
    assert ("controls/copy", "controls_duplicate") in kinds
    assert ("controls/case_002", "controls_label_file") in kinds
    assert report.usable_cases == ["case_000", "case_001", "case_002"]   # no labelled case is affected
    text = report.format()
    assert "Control copy (scored for false lesions only" in text and "imagesTr/case_001_0000.nii.gz" in text
    empty = generate_cohort(tmp_path / "e", profile=SMOKE, n=3, seed=0, unlabelled=0, controls=0, progress=False)
    (empty / "controlsTs").mkdir()
    assert any(p.kind == "controls_empty" for p in validate_cohort(empty).problems)


def test_controls_are_scored_by_every_fold_once(tmp_path):
    data = generate_cohort(tmp_path / "cohort", profile=SMOKE, n=4, seed=0, unlabelled=0, progress=False)
    run, _ = prepare_run(data, tmp_path / "results", iterations=4)
    write_json(run.validation, {"root": str(data), "problems": []})
    assert list(control_scans(run)) == ["control_000"]
    table = score_controls(run, progress=False)
    assert list(table.columns) == CONTROL_COLUMNS and list(table["control"]) == ["control_000"]
    lab = np.asarray(__import__("nibabel").load(str(run.root / "controls" / "control_000.nii.gz")).dataobj)
    row = table.iloc[0]
    n_lung = int((lab > 0).sum())
    assert row["lesion_pct"] == pytest.approx(100 * (lab >= 2).sum() / max(n_lung, 1), abs=1e-3)
    stamp = (run.root / "controls" / "control_000.nii.gz").stat().st_mtime_ns
    again = score_controls(run, progress=False)        # nothing changed: read back, not scored again
    assert (run.root / "controls" / "control_000.nii.gz").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False)
    s = controls_summary(table)
    assert s["n"] == 1 and s["worst"] == "control_000"
    assert controls_summary(pd.DataFrame(columns=CONTROL_COLUMNS)) == {"n": 0}


def test_a_cohort_without_controls_scores_none(tmp_path):
    data = generate_cohort(tmp_path / "cohort", profile=SMOKE, n=4, seed=0, unlabelled=0, controls=0, progress=False)
    run, _ = prepare_run(data, tmp_path / "results")
    write_json(run.validation, {"root": str(data), "problems": []})
    assert score_controls(run, progress=False).empty
