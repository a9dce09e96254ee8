"""sscild.analysis.data and sscild.book.chapters.data: Table 1, exclusions, label maps, folds; the phantom
comparison helpers of sscild.analysis.phantomcheck."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cohort_factory import TINY_SHAPE, TINY_SPACING, make_case_arrays, make_tiny_cohort
from sscild.analysis import data as ds
from sscild.profiles import get_profile
from sscild.analysis import phantomcheck
from sscild.analysis.clinical_inputs import load_clinical
from sscild.book.chapters import data as ch
from sscild.data.labels import LABEL_MAP_ENV, label_map_from_env
from sscild.data.cohort import load_cohort
from sscild.data.validate import validate_cohort
from sscild.data.validation_report import validation_record
from sscild.data.prepare import prepare_stage, read_cases, read_validation, validate_stage
from sscild.data.folds import make_splits
from sscild.paths import RunPaths
from sscild.data.cache import build_cache

CLINICAL = """case_id,age,sex,height_cm,fvc_pct,fev1_pct,fev1_fvc,dlco_pct
case_000,40,F,160,80,,0.70,50
case_001,50,F,161,,,0.80,70
case_002,60,M,175,60,,0.90,90
"""
"""Three of four cases have a row (case_003 has none); FVC blank once; FEV1 never given."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_tiny_cohort(tmp_path_factory.mktemp("cohort") / "tiny", n=4)
    (root / "clinical.csv").write_text(CLINICAL)
    run = RunPaths.for_run(root, "smoke", tmp_path_factory.mktemp("results"))
    cases = build_cache(load_cohort(root), run, get_profile("smoke"), progress=False)
    return root, cases


def test_summarise_by_hand():
    s = ch.summarise([4.0, None, 1.0, 3.0, 2.0, "n/a"])
    assert ds.quartiles([4.0, None, 1.0, 3.0, 2.0, "n/a"]) == {k: s[k] for k in ("n", "missing", "median", "q1", "q3")}
    assert (s["n"], s["missing"]) == (4, 2)
    # 1 2 3 4: median 2.5, quartiles at positions 0.75 and 2.25 -> 1.75 and 3.25
    assert (s["median"], s["q1"], s["q3"]) == (2.5, 1.75, 3.25)
    assert s["summary"] == "2.5 [1.8, 3.2]"
    empty = ch.summarise([None, math.nan])
    assert (empty["n"], empty["missing"], empty["summary"]) == (0, 2, "not available")
    assert math.isnan(empty["median"])


def test_table_one_on_tiny_cohort(tiny):
    root, cases = tiny
    t = ch.table_one(cases, load_clinical(root))
    row = lambda g, c: t.loc[(g, c)]  # noqa: E731

    assert row("Patients", "Patients (n)")["summary"] == "4"
    sex = row("Patients", "Female, n (%)")
    assert (sex["summary"], sex["n"], sex["missing"]) == ("2 (67 %)", 3, 1)
    age = row("Patients", "Age (years)")
    assert (age["median"], age["q1"], age["q3"], age["n"], age["missing"]) == (50, 45, 55, 3, 1)

    fvc = row("Lung function", "FVC (% predicted)")  # 80, blank, 60, no row
    assert (fvc["n"], fvc["missing"], fvc["median"], fvc["q1"], fvc["q3"]) == (2, 2, 70, 65, 75)
    assert fvc["summary"] == "70.0 [65.0, 75.0]"
    fev1 = row("Lung function", "FEV1 (% predicted)")
    assert (fev1["n"], fev1["missing"], fev1["summary"]) == (0, 4, "not available")
    ratio = row("Lung function", "FEV1/FVC (ratio)")
    assert (ratio["n"], ratio["missing"], ratio["summary"]) == (3, 1, "0.80 [0.75, 0.85]")
    dlco = row("Lung function", "DLCO (% predicted)")
    assert (dlco["median"], dlco["q1"], dlco["q3"], dlco["missing"]) == (70, 60, 80, 1)

    geo = "Scanner geometry"
    assert row(geo, "In-plane pixel spacing (mm)")["summary"] == f"{TINY_SPACING[0]:.2f} [{TINY_SPACING[0]:.2f}, {TINY_SPACING[0]:.2f}]"
    assert row(geo, "Slice spacing (mm)")["median"] == TINY_SPACING[2]
    assert row(geo, "In-plane matrix (voxels)")["summary"] == f"{TINY_SHAPE[0]} x {TINY_SHAPE[1]}: 4 (100 %)"
    assert row(geo, "Slices (n)")["median"] == TINY_SHAPE[2]

    # volumes from the label arrays the factory wrote, counted here independently
    voxel_ml = float(np.prod(TINY_SPACING)) / 1000.0
    labels = [make_case_arrays(TINY_SHAPE, seed=i)[1] for i in range(4)]
    lung = [float((lab > 0).sum()) * voxel_ml for lab in labels]
    ef_pct = [100.0 * (lab == 2).sum() / (lab > 0).sum() for lab in labels]
    vol = "Lung and lesions (reference labels)"
    assert row(vol, "Lung volume (mL)")["median"] == pytest.approx(np.median(lung))
    assert row(vol, "EF (% of lung)")["q3"] == pytest.approx(np.percentile(ef_pct, 75))
    assert (t["n"] + t["missing"]).eq(4).all()


def test_table_one_without_clinical_counts_everything_missing(tiny):
    _, cases = tiny
    t = ch.table_one(cases, None)
    pft = t.loc["Lung function"]
    assert pft["missing"].eq(4).all() and pft["n"].eq(0).all()
    with pytest.raises(ValueError, match="twice"):
        ch.table_one(pd.concat([cases, cases.iloc[:1]]), None)


def test_exclusions_list_every_broken_case_with_its_reason(tmp_path):
    root = make_tiny_cohort(tmp_path / "broken", n=4)
    (root / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"not a nifti file")
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    report = validate_cohort(root)
    ex = ds.exclusions(report)
    assert ex["case_id"].tolist() == ["case_001", "case_002"]
    reasons = dict(zip(ex["case_id"], ex["reasons"]))
    assert "unreadable" in reasons["case_001"] and "imagesTr/case_001_0000.nii.gz" in reasons["case_001"]
    assert "missing_label" in reasons["case_002"]
    assert ex["fix"].str.len().gt(0).all()

    record = validation_record(report)
    json.dumps(record)
    assert [e["case_id"] for e in record["excluded"]] == ["case_001", "case_002"]
    assert record["included"] == ["case_000", "case_003"]
    assert record["policy"].startswith("strict")

    summary = ch.problem_summary(report)
    assert summary.loc[("error", "missing_label"), "problems"] == 1
    assert summary.loc[("error", "missing_label"), "cases"] == "case_002"
    rows, hidden = ch.problem_rows(report, limit=1)
    assert len(rows) == 1 and rows.loc[0, "severity"] == "error" and hidden == len(report.problems) - 1


def test_the_data_stage_writes_what_the_chapter_reads_back_unchanged(tmp_path):
    """validation.json, cases.csv and splits.json are written once by make's data stage; the Data
    chapter's report and table read from them equal the ones computed directly."""
    root = make_tiny_cohort(tmp_path / "cohort", n=5)
    (root / "labelsTr" / "case_004.nii.gz").unlink()          # one unusable case, excluded by the stage
    run = RunPaths.for_run(root, "smoke", tmp_path / "results")
    with pytest.raises(FileNotFoundError, match="make data"):
        prepare_stage(root, run, get_profile("smoke"), progress=False)
    report = validate_stage(root, run.validation)
    again, label_map = read_validation(run)
    assert again.to_dict() == report.to_dict() and label_map is None
    assert again.bad_cases == ["case_004"] and again.format() == report.format()
    cases = prepare_stage(root, run, get_profile("smoke"), progress=False)
    assert sorted(cases["case_id"]) == ["case_000", "case_001", "case_002", "case_003"]
    pd.testing.assert_frame_equal(read_cases(run), cases, check_dtype=False)   # floats bit for bit
    splits = json.loads(run.splits.read_text())
    assert sorted(c for f in splits for c in f["val"]) == sorted(cases["case_id"])
    stage = ch.read_stage(run, root)
    assert stage.report.bad_cases == ["case_004"] and len(stage.splits) == len(splits)
    assert "case_004" not in {c.case_id for c in stage.cohort.cases}
    other = make_tiny_cohort(tmp_path / "other", n=3)
    with pytest.raises(ValueError, match="validation of"):
        prepare_stage(other, run, get_profile("smoke"), progress=False)


def test_folder_error_excludes_every_case(tmp_path):
    root = make_tiny_cohort(tmp_path / "nojson", n=2)
    (root / "dataset.json").unlink()
    ex = ds.exclusions(validate_cohort(root))
    assert ex["case_id"].tolist() == ["case_000", "case_001"]
    assert ex["reasons"].str.contains("dataset.json").all()


def test_clean_cohort_has_no_exclusions(tiny):
    root, _ = tiny
    report = validate_cohort(root)
    assert ds.exclusions(report).empty
    assert validation_record(report)["excluded"] == []


def test_label_map_example_and_environment(tmp_path):
    t = ch.label_map_example()
    roles = dict(zip(t["label name"], t["study role"]))
    assert roles["honeycombing"] == "ef (2)" and roles["consolidation"] == "ggo (3)" and roles["lung"] == "normal (1)"
    assert dict(zip(t["label name"], t["given role by"]))["lung"] == "its name"
    with pytest.raises(ValueError, match="role"):
        ch.label_map_example({"background": 0, "lung": 1, "honeycombing": 2})

    assert label_map_from_env({}) is None
    f = tmp_path / "map.json"
    f.write_text('{"honeycombing": "ef"}')
    assert label_map_from_env({LABEL_MAP_ENV: str(f)}) == {"honeycombing": "ef"}
    with pytest.raises(ValueError, match="not valid JSON"):
        label_map_from_env({LABEL_MAP_ENV: "{honeycombing: ef}"})
    with pytest.raises(ValueError, match="neither"):
        label_map_from_env({LABEL_MAP_ENV: str(tmp_path / "absent.json")})


def test_pick_examples_distinct_and_ordered():
    df = pd.DataFrame({"case_id": ["a", "b", "c", "d", "e"], "lesion_pct": [1.0, 5.0, 10.0, 20.0, 40.0]})
    assert ds.pick_examples(df) == {"mild": "a", "moderate": "c", "severe": "e"}
    two = pd.DataFrame({"case_id": ["a", "b"], "lesion_pct": [3.0, 3.0]})
    assert ds.pick_examples(two) == {"mild": "a", "moderate": "b"}


def test_example_case_picks_the_slice_with_most_lesion(tiny):
    root, _ = tiny
    ex = ds.example_case(load_cohort(root), "case_000")
    lesion = (ex["label"] >= 2).sum(axis=(0, 1))
    assert ex["axial"] == int(np.argmax(lesion)) and ex["hu"].shape == TINY_SHAPE
    assert ex["lesion_pct"] == pytest.approx(ex["ef_pct"] + ex["ggo_pct"])


def test_pick_slice_skips_slices_with_little_lung():
    lab = np.zeros((10, 10, 3), np.uint8)
    lab[:, :, 0] = 0
    lab[:2, :2, 0] = 2  # 4 lesion voxels, but only 4 lung voxels: a lung base
    lab[:, :, 1] = 1
    lab[:1, :3, 1] = 3  # 3 lesion voxels in a full slice
    lab[:, :, 2] = 1  # full slice, no lesion
    assert ds.pick_slice(lab, "axial") == 1
    assert ds.pick_slice(lab, "axial", min_lung_share=0.0) == 0
    assert ds.pick_slice(np.where(lab > 0, 1, 0), "axial") == 1  # no lesion: most lung (first of ties)
    assert ds.pick_slice(lab, "coronal") in range(10)
    with pytest.raises(ValueError, match="view"):
        ds.pick_slice(lab, "sagittal")


def test_fold_composition_counts(tiny):
    _, cases = tiny
    splits = make_splits(sorted(cases["case_id"]), strata=dict(zip(cases["case_id"], cases["lesion_pct"])), k=2)
    comp = ds.fold_composition(splits, cases)
    assert comp["held out (n)"].tolist() == [2, 2] and comp["trained on (n)"].tolist() == [2, 2]
    ft = ds.fold_table(splits, cases)
    for k in (0, 1):
        v = ft.loc[ft["fold"] == k, "lesion_pct"]
        assert comp.loc[k, "median"] == pytest.approx(v.median())
    with pytest.raises(ValueError, match="not in the cases"):
        ds.fold_table(splits, cases.iloc[:2])


def test_clinical_model_tables():
    model = {"description": "x",
             "fvc_pct": {"equation": "98 - EF", "noise_sd": 11.0},
             "fev1_pct": {"equation": "FVC * r", "noise_sd": 3.0},
             "missing": {"spirometry_fev1": 0.05}, "clip": {"fvc_pct": [25.0, 140.0]},
             "population": {"age": "N(52, 12)"}, "target": -0.6}
    t = ch.clinical_model_table(model)
    assert t.loc["FVC (% predicted)", "planted equation"] == "98 - EF"
    assert t.loc["FVC (% predicted)", "clipped to"] == "25 to 140"
    assert t.loc["FEV1 (% predicted)", "missing (share)"] == "5 %"
    assert ch.population_table(model)["rule"].to_dict() == {"age": "N(52, 12)", "target": "-0.6"}


def test_resample_and_parenchyma_comparison():
    hu = np.full((40, 40, 4), -1000, np.int16)
    hu[4:36, 4:36] = 40
    hu[8:18, 8:32] = -850
    hu[22:32, 8:32] = -850
    out, sp = phantomcheck.resample_inplane(hu, (1.0, 1.0, 5.0), 2.0)
    assert out.shape == (20, 20, 4) and sp == (2.0, 2.0, 5.0)
    same, sp2 = phantomcheck.resample_inplane(hu, (2.0, 2.0, 5.0), 2.0)
    assert same is hu and sp2 == (2.0, 2.0, 5.0)
    t = phantomcheck.parenchyma_comparison([("a", "synthetic", hu, (1.0, 1.0, 5.0))])
    assert t.loc["a", "median HU"] == -850 and t.loc["a", "voxels above -500 HU (%)"] == 0
    assert t.loc["a", "lung (mL)"] == pytest.approx(2 * 10 * 24 * 4 * 5 / 1000)


def test_real_ct_files_absent_folder(tmp_path):
    assert phantomcheck.real_ct_files(tmp_path / "nowhere") == []
    (tmp_path / "chest-ct-2.nrrd").write_bytes(b"")
    (tmp_path / "chest-ct-1.nrrd").write_bytes(b"")
    assert [p.name for p in phantomcheck.real_ct_files(tmp_path)] == ["chest-ct-1.nrrd", "chest-ct-2.nrrd"]


def test_key_numbers(tiny):
    root, cases = tiny
    key = ds.key_numbers(validate_cohort(root), cases)
    assert (key["n_found"], key["n_included"], key["n_excluded"]) == (4, 4, 0)
    assert key["lesion_pct_median"] == pytest.approx(cases["lesion_pct"].median())


def test_load_real_ct_reorients_and_resamples():
    from conftest import shared_data
    from sscild.data.image import load_volume

    path = shared_data("real-ct", "chest-ct-1.nrrd")
    vol = load_volume(path)
    assert np.all(np.diag(vol.affine)[:2] < 0)  # stored in LPS order: x and y run backwards in RAS
    hu, sp = phantomcheck.load_real_ct(path)
    assert np.array_equal(hu, np.asarray(vol.array)[::-1, ::-1, :]) and sp == pytest.approx(vol.spacing)
    small, sp2 = phantomcheck.load_real_ct(path, pixel_mm=2.0)
    assert sp2 == (2.0, 2.0, pytest.approx(vol.spacing[2]))
    assert small.shape == (round(vol.shape[0] * vol.spacing[0] / 2.0), round(vol.shape[1] * vol.spacing[1] / 2.0), vol.shape[2])
    assert phantomcheck.load_real_ct(path, pixel_mm=0.3)[1] == pytest.approx(vol.spacing)  # never upsampled


def test_read_clinical_notes(tmp_path):
    root = make_tiny_cohort(tmp_path / "c", n=2, clinical=False)
    table, notes = ds.read_clinical(root)
    assert table is None and "no clinical.csv" in notes[0]
    (root / "clinical.csv").write_text("patient,age\ncase_000,50\n")
    table, notes = ds.read_clinical(root)
    assert table is None and "case_id" in notes[0]
    (root / "clinical.csv").write_text("case_id,fev1_fvc\ncase_000,80\ncase_001,0.7\n")
    table, notes = ds.read_clinical(root)
    assert math.isnan(table["fev1_fvc"].tolist()[0]) and table["fev1_fvc"].tolist()[1] == 0.7
    assert "fev1_fvc = 80 for case case_000" in notes[0]      # set aside and said, never rescaled
