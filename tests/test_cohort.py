"""sscild.data.cohort, labels, clinical_table and validate: discovery, validation (one test per problem kind), clinical table, CLI."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohort_factory import TINY_SHAPE, TINY_SPACING, hash_tree, make_case_arrays, make_tiny_cohort
from sscild.cli import main
from sscild.data.clinical_table import CLINICAL_COLUMNS
from sscild.data.cohort import load_cohort, read_case
from sscild.data.labels import resolve_label_map
from sscild.data.validate import validate_cohort
from sscild.data.validation_report import PROBLEM_KINDS, Problem
from sscild.errors import CohortError

AFFINE = np.diag([*TINY_SPACING, 1.0])


@pytest.fixture
def root(tmp_path):
    return make_tiny_cohort(tmp_path / "tiny", n=4)


def validate(root, **kw):
    """Validate, and check the inputs are byte-identical afterwards."""
    before = hash_tree(root) if Path(root).is_dir() else {}
    report = validate_cohort(root, **kw)
    after = hash_tree(root) if Path(root).is_dir() else {}
    assert before == after, "validation modified its input folder"
    json.dumps(report.to_dict())  # always JSON-able
    return report


def only(report, kind, case=None):
    found = [p for p in report.problems if p.kind == kind and (case is None or p.case_id == case)]
    assert found, f"no {kind!r} problem for {case}; got:\n{report.format()}"
    assert kind in PROBLEM_KINDS
    return found[0]


def save(path, array, affine=AFFINE, dtype=None):
    arr = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def set_dataset(root, **changes):
    ds = json.loads((root / "dataset.json").read_text())
    ds.update(changes)
    (root / "dataset.json").write_text(json.dumps(ds))


def edit_clinical(root, case, column, value):
    df = pd.read_csv(root / "clinical.csv", dtype=str, keep_default_na=False)
    df.loc[df.case_id == case, column] = value
    df.to_csv(root / "clinical.csv", index=False)


def assert_named(problem, case, words):
    text = f"{problem.case_id} {problem.file} {problem.message} {problem.fix}"
    assert problem.case_id == case
    for w in words:
        assert w.lower() in text.lower(), f"{w!r} missing from {text!r}"
    assert problem.fix


# ------------------------------------------------------------------------------- clean cohort


def test_clean_cohort_is_ok(root):
    report = validate(root)
    assert report.ok and report.problems == []
    assert report.cases == ["case_000", "case_001", "case_002", "case_003"]
    assert report.usable_cases == report.cases and report.bad_cases == []
    assert "No problems found" in report.format()
    assert report.to_frame().empty


def test_load_cohort_and_read_case(root):
    cohort = load_cohort(root)
    assert [c.case_id for c in cohort.cases] == ["case_000", "case_001", "case_002", "case_003"]
    assert cohort.synthetic is True and cohort.name == "tiny"
    assert cohort.label_map == {0: 0, 1: 1, 2: 2, 3: 3}
    assert list(cohort.clinical.index) == cohort.case_ids
    assert cohort.clinical["age"].dtype == float and cohort.clinical.loc["case_002", "age"] == 42
    assert cohort.clinical.loc["case_001", "sex"] == "M"
    image, roles = read_case(cohort, "case_001")
    expected_img, expected_lab = make_case_arrays(TINY_SHAPE, seed=1)
    np.testing.assert_array_equal(image.array, expected_img)
    np.testing.assert_array_equal(roles, expected_lab)
    assert roles.dtype == np.uint8 and image.spacing == pytest.approx(TINY_SPACING)
    assert load_cohort(root, exclude=["case_001"]).case_ids == ["case_000", "case_002", "case_003"]
    with pytest.raises(CohortError, match="case_999"):
        load_cohort(root, exclude=["case_999"])
    with pytest.raises(CohortError, match="no case 'nope'"):
        read_case(cohort, "nope")


# ------------------------------------------------------------------------------- folder level


def test_missing_dataset_json_makes_every_case_unusable(root):
    (root / "dataset.json").unlink()
    report = validate(root)
    p = only(report, "missing_dataset_json")
    assert p.case_id is None and p.file == "dataset.json" and '"labels"' in p.fix
    assert not report.ok and report.bad_cases == report.cases and report.usable_cases == []
    assert "affects every case" in report.format()
    with pytest.raises(CohortError, match="dataset.json"):
        load_cohort(root)


def test_malformed_dataset_json(root):
    (root / "dataset.json").write_text('{"labels": {"background": 0,, }')
    report = validate(root)
    only(report, "malformed_dataset_json")
    assert report.bad_cases == report.cases
    with pytest.raises(CohortError, match="not valid JSON"):
        load_cohort(root)


def test_dataset_json_without_labels(root):
    ds = json.loads((root / "dataset.json").read_text())
    del ds["labels"]
    (root / "dataset.json").write_text(json.dumps(ds))
    p = only(validate(root), "dataset_json_field")
    assert '"labels"' in p.message


def test_missing_folder(tmp_path):
    report = validate(tmp_path / "nowhere")
    assert only(report, "missing_folder").case_id is None and not report.ok


def test_num_training_mismatch_is_a_warning(root):
    set_dataset(root, numTraining=7)
    report = validate(root)
    p = only(report, "num_training")
    assert p.severity == "warning" and "7" in p.message and '"numTraining": 4' in p.fix
    assert report.ok and report.bad_cases == []


def test_badly_named_image_file(root):
    shutil.copy(root / "imagesTr" / "case_000_0000.nii.gz", root / "imagesTr" / "extra.nii.gz")
    report = validate(root)
    p = only(report, "bad_filename")
    assert p.file == "imagesTr/extra.nii.gz" and "_0000" in p.fix and p.severity == "warning"


# ------------------------------------------------------------------------------- label roles


def test_unknown_label_names_need_a_label_map(root):
    set_dataset(root, labels={"background": 0, "lung": 1, "reticulation": 2, "ggo": 3})
    report = validate(root)
    p = only(report, "label_role")
    assert "reticulation" in p.message and "--label-map" in p.fix
    assert report.bad_cases == report.cases
    with pytest.raises(CohortError, match="reticulation"):
        load_cohort(root)
    assert validate(root, label_map={"reticulation": "ef"}).ok


def test_label_map_merges_ef_components_and_maps_consolidation(root):
    labels = {"background": 0, "lung": 1, "reticulation": 2, "ground glass": 3, "honeycombing": 4,
              "consolidation": 5}
    set_dataset(root, labels=labels)
    lab = nib.load(str(root / "labelsTr" / "case_002.nii.gz")).get_fdata().astype(np.uint8)
    lab[0, 0, 0], lab[1, 0, 0] = 4, 5
    save(root / "labelsTr" / "case_002.nii.gz", lab, dtype=np.uint8)
    lmap = {"reticulation": "ef", "honeycombing": "ef", "consolidation": "normal"}
    assert validate(root, label_map=lmap).ok
    cohort = load_cohort(root, label_map=lmap)
    assert cohort.label_map == {0: 0, 1: 1, 2: 2, 3: 3, 4: 2, 5: 1}
    _, roles = read_case(cohort, "case_002")
    assert roles[0, 0, 0] == 2 and roles[1, 0, 0] == 1 and roles.max() == 3
    assert not validate(root, label_map={"reticulation": "ef", "honeycombing": "ef",
                                         "consolidation": "ggo"}).problems


def test_synonyms_map_without_label_map():
    mapping, problems = resolve_label_map({"Background": 0, "normal_lung": 1, "fibrosis": 2, "ground-glass": 3})
    assert mapping == {0: 0, 1: 1, 2: 2, 3: 3} and problems == []
    mapping, problems = resolve_label_map({"background": 0, "lung": 1}, {"lung": "wrong"})
    assert any("not a study role" in p.message for p in problems)


def test_cli_label_map(root, capsys):
    set_dataset(root, labels={"background": 0, "lung": 1, "fibrosis": 2, "consolidation": 3})
    assert main(["validate", str(root)]) == 1
    assert "consolidation" in capsys.readouterr().out
    assert main(["validate", str(root), "--label-map", '{"consolidation": "ggo"}']) == 0


# ------------------------------------------------------------------------------- per case


def test_missing_image(root):
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    report = validate(root)
    assert_named(only(report, "missing_image"), "case_001", ["case_001_0000.nii.gz", "imagesTr"])
    assert report.bad_cases == ["case_001"]
    assert report.usable_cases == ["case_000", "case_002", "case_003"]


def test_missing_label(root):
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    report = validate(root)
    assert_named(only(report, "missing_label"), "case_002", ["labelsTr", "case_002.nii.gz"])
    assert report.bad_cases == ["case_002"]
    assert load_cohort(root).case("case_002").label is None


def test_truncated_image(root):
    f = root / "imagesTr" / "case_003_0000.nii.gz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    report = validate(root)
    p = only(report, "unreadable", "case_003")
    assert p.file == "imagesTr/case_003_0000.nii.gz" and "truncated" in p.message
    assert report.bad_cases == ["case_003"]


def test_corrupt_label(root):
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    report = validate(root)
    assert only(report, "unreadable", "case_000").file == "labelsTr/case_000.nii.gz"
    assert report.bad_cases == ["case_000"]


def test_shape_mismatch(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=1)
    save(root / "labelsTr" / "case_001.nii.gz", lab[:, :, :-1], dtype=np.uint8)
    p = only(validate(root), "shape_mismatch", "case_001")
    assert_named(p, "case_001", ["(24, 20, 5)", "(24, 20, 6)", "labelsTr/case_001.nii.gz"])


def test_spacing_mismatch(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=1)
    save(root / "labelsTr" / "case_001.nii.gz", lab, np.diag([1.5, 1.5, 5.0, 1.0]), dtype=np.uint8)
    report = validate(root)
    assert_named(only(report, "spacing_mismatch", "case_001"), "case_001", ["5.0", "4.0", "spacing"])
    assert report.bad_cases == ["case_001"]


def test_orientation_mismatch(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=2)
    flipped = AFFINE.copy()
    flipped[0, 0] = -flipped[0, 0]
    save(root / "labelsTr" / "case_002.nii.gz", lab, flipped, dtype=np.uint8)
    assert_named(only(validate(root), "affine_mismatch", "case_002"), "case_002", ["orientation"])


def test_origin_shift(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=2)
    shifted = AFFINE.copy()
    shifted[:3, 3] = [10.0, 0.0, 0.0]
    save(root / "labelsTr" / "case_002.nii.gz", lab, shifted, dtype=np.uint8)
    report = validate(root)
    only(report, "affine_mismatch", "case_002")
    assert not [p for p in report.problems if p.kind == "spacing_mismatch"]


def test_label_values_outside_dataset_json(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=3)
    lab[:2, :2, 0] = 7
    save(root / "labelsTr" / "case_003.nii.gz", lab, dtype=np.uint8)
    p = only(validate(root), "label_values", "case_003")
    assert_named(p, "case_003", ["7 (4 voxels)", "dataset.json"])


def test_non_integer_labels(root):
    _, lab = make_case_arrays(TINY_SHAPE, seed=3)
    lab = lab.astype(np.float32)
    lab[5, 5, 2] = 1.5
    save(root / "labelsTr" / "case_003.nii.gz", lab, dtype=np.float32)
    assert "non-integer" in only(validate(root), "label_values", "case_003").message


def test_raw_stored_values_are_not_hu(root):
    img, _ = make_case_arrays(TINY_SHAPE, seed=0)
    save(root / "imagesTr" / "case_000_0000.nii.gz", (img.astype(np.int32) + 1024).astype(np.uint16))
    report = validate(root)
    p = only(report, "not_hu", "case_000")
    assert "Hounsfield" in p.message + p.fix and "RescaleIntercept" in p.fix
    assert report.bad_cases == ["case_000"]


def test_lung_not_below_minus_500_is_not_hu(root):
    img, lab = make_case_arrays(TINY_SHAPE, seed=0)
    img = img.copy()
    img[lab == 1] = 30  # air outside the body stays -1000, but "lung" is soft tissue
    save(root / "imagesTr" / "case_000_0000.nii.gz", img)
    p = only(validate(root), "not_hu", "case_000")
    assert "-500" in p.message


def test_nan_and_inf(root):
    img, _ = make_case_arrays(TINY_SHAPE, seed=1)
    img = img.astype(np.float32)
    img[0, 0, 0], img[1, 0, 0] = np.nan, np.inf
    save(root / "imagesTr" / "case_001_0000.nii.gz", img)
    p = only(validate(root), "non_finite", "case_001")
    assert "2 voxel(s)" in p.message


def test_no_lung_label(root):
    save(root / "labelsTr" / "case_002.nii.gz", np.zeros(TINY_SHAPE, np.uint8), dtype=np.uint8)
    report = validate(root)
    assert_named(only(report, "no_lung", "case_002"), "case_002", ["lung"])
    assert report.bad_cases == ["case_002"]


def test_case_ids_differing_only_by_letter_case(root):
    shutil.copy(root / "imagesTr" / "case_001_0000.nii.gz", root / "imagesTr" / "CASE_001_0000.nii.gz")
    shutil.copy(root / "labelsTr" / "case_001.nii.gz", root / "labelsTr" / "CASE_001.nii.gz")
    report = validate(root)
    only(report, "duplicate_case_id", "case_001")
    only(report, "duplicate_case_id", "CASE_001")
    assert report.bad_cases == ["CASE_001", "case_001"]


def test_second_channel_is_a_duplicate_image(root):
    shutil.copy(root / "imagesTr" / "case_002_0000.nii.gz", root / "imagesTr" / "case_002_0001.nii.gz")
    report = validate(root)
    p = only(report, "duplicate_case_id", "case_002")
    assert "case_002_0001.nii.gz" in p.message and "1 channel" in p.message
    assert report.bad_cases == ["case_002"]


# ------------------------------------------------------------------------------- clinical


def test_clinical_missing_row_is_a_warning(root):
    df = pd.read_csv(root / "clinical.csv")
    df[df.case_id != "case_001"].to_csv(root / "clinical.csv", index=False)
    report = validate(root)
    p = only(report, "clinical_missing_row", "case_001")
    assert p.severity == "warning" and report.ok and "case_001" in report.usable_cases
    assert load_cohort(root).clinical.loc["case_001"].isna().all()


def test_clinical_non_numeric(root):
    edit_clinical(root, "case_002", "fvc_pct", "eighty")
    report = validate(root)
    assert_named(only(report, "clinical_non_numeric", "case_002"), "case_002", ["fvc_pct", "eighty"])
    assert np.isnan(load_cohort(root).clinical.loc["case_002", "fvc_pct"])


@pytest.mark.parametrize("column, value, hint", [
    ("fev1_fvc", "75", "ratio"),
    ("fev1_fvc", "0.1", "0.2..1.2"),
    ("dlco_pct", "250", "10..200"),
    ("fvc_pct", "2.8", "% predicted"),
    ("age", "130", "5..110"),
    ("age", "3", "5..110"),
])
def test_clinical_implausible(root, column, value, hint):
    edit_clinical(root, "case_003", column, value)
    report = validate(root)
    p = only(report, "clinical_implausible", "case_003")
    assert_named(p, "case_003", [column, value, hint])
    assert report.ok  # a clinical value does not make the scan unusable
    assert np.isnan(load_cohort(root).clinical.loc["case_003", column])


def test_negative_volume_column(root):
    df = pd.read_csv(root / "clinical.csv")
    df["lung_volume_ml"] = [4000, -20, 3500, 3900]
    df.to_csv(root / "clinical.csv", index=False)
    p = only(validate(root), "clinical_implausible", "case_001")
    assert "negative volume" in p.message and "lung_volume_ml" in p.message


def test_clinical_row_without_image(root):
    with open(root / "clinical.csv", "a") as fh:
        fh.write("case_099,50,F,170,80,78,0.8,60\n")
    report = validate(root)
    p = only(report, "clinical_without_image", "case_099")
    assert "no image" in p.message and p.severity == "warning"
    assert "case_099" not in report.cases and report.ok


def test_clinical_missing_value_is_a_warning(root):
    edit_clinical(root, "case_000", "dlco_pct", "")
    report = validate(root)
    p = only(report, "clinical_missing_value", "case_000")
    assert p.severity == "warning" and "dlco_pct" in p.message and report.ok


def test_clinical_duplicate_rows(root):
    with open(root / "clinical.csv", "a") as fh:
        fh.write("case_000,60,M,180,70,65,0.9,50\n")
    p = only(validate(root), "clinical_duplicate_row", "case_000")
    assert "2 rows" in p.message
    assert load_cohort(root).clinical.loc["case_000"].isna().all()


def test_clinical_bad_sex_and_no_case_id(root):
    edit_clinical(root, "case_001", "sex", "X")
    assert "F or M" in only(validate(root), "clinical_non_numeric", "case_001").message
    df = pd.read_csv(root / "clinical.csv").rename(columns={"case_id": "patient"})
    df.to_csv(root / "clinical.csv", index=False)
    assert "case_id" in only(validate(root), "clinical_unreadable").message


def test_clinical_columns_table():
    assert {"age", "sex", "height_cm", "fvc_pct", "fev1_pct", "fev1_fvc", "dlco_pct"} <= set(CLINICAL_COLUMNS)
    unit, (lo, hi), _ = CLINICAL_COLUMNS["fev1_fvc"]
    assert unit == "ratio" and (lo, hi) == (0.2, 1.2)
    assert CLINICAL_COLUMNS["dlco_pct"][1] == (10, 200)


# ------------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once(root):
    (root / "labelsTr" / "case_000.nii.gz").unlink()                      # missing label
    f = root / "imagesTr" / "case_001_0000.nii.gz"
    f.write_bytes(f.read_bytes()[:100])                                   # truncated
    _, lab = make_case_arrays(TINY_SHAPE, seed=2)
    lab[0, 0, 0] = 9
    save(root / "labelsTr" / "case_002.nii.gz", lab, dtype=np.uint8)     # undeclared value
    edit_clinical(root, "case_003", "fev1_fvc", "72")                     # percent instead of ratio
    set_dataset(root, numTraining=3)                                      # warning
    report = validate(root)
    kinds = {(p.case_id, p.kind) for p in report.problems}
    assert {("case_000", "missing_label"), ("case_001", "unreadable"), ("case_002", "label_values"),
            ("case_003", "clinical_implausible"), (None, "num_training")} <= kinds
    assert report.bad_cases == ["case_000", "case_001", "case_002"]
    assert report.usable_cases == ["case_003"]
    text = report.format()
    for needle in ("case_000", "case_001", "case_002", "case_003", "missing_label", "unreadable",
                   "label_values", "clinical_implausible", "num_training", "fix:"):
        assert needle in text
    frame = report.to_frame()
    assert list(frame.columns) == ["severity", "case_id", "file", "kind", "message", "fix"]
    assert len(frame) == len(report.problems)
    d = report.to_dict()
    assert d["ok"] is False and d["bad_cases"] == report.bad_cases and len(d["problems"]) == len(report.problems)


def test_problem_str_and_severity():
    p = Problem("case_1", "labelsTr/case_1.nii.gz", "no_lung", "no lung.", "label it.")
    assert str(p) == "[error] case_1 | labelsTr/case_1.nii.gz | no_lung: no lung. Fix: label it."
    with pytest.raises(ValueError, match="severity"):
        Problem(None, None, "x", "m", "f", "fatal")


# ------------------------------------------------------------------------------- CLI


def test_cli_validate_clean_and_broken(root, capsys):
    assert main(["validate", str(root)]) == 0
    assert "No problems found" in capsys.readouterr().out
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "case_001" in out and "missing_label" in out
    assert main(["validate", str(root), "--exclude-bad"]) == 0
    out = capsys.readouterr().out
    assert "Unusable cases: case_001" in out and "1 case(s) would be excluded" in out


def test_cli_validate_folder_error_fails_even_with_exclude_bad(root, capsys):
    (root / "dataset.json").unlink()
    assert main(["validate", str(root), "--exclude-bad"]) == 1
    assert "missing_dataset_json" in capsys.readouterr().out


# ------------------------------------------------------------------------------- memory


def test_validation_memory_is_a_few_copies_of_one_case(tmp_path):
    """Peak traced memory stays within a small multiple of one case's image (cases one at a time)."""
    shape = (128, 128, 48)
    root = make_tiny_cohort(tmp_path / "mid", n=2, shape=shape)
    image_bytes = np.prod(shape) * 2  # int16
    tracemalloc.start()
    try:
        report = validate_cohort(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.format()
    assert peak < 8 * image_bytes, f"peak {peak / 2**20:.1f} MiB for a {image_bytes / 2**20:.1f} MiB image"


def test_cohort_in_nrrd_format(root, tmp_path):
    """nnU-Net cohorts may use another file_ending; validation reads headers through SimpleITK."""
    import SimpleITK as sitk

    other = tmp_path / "nrrd_cohort"
    for sub in ("imagesTr", "labelsTr"):
        (other / sub).mkdir(parents=True)
        for f in (root / sub).iterdir():
            sitk.WriteImage(sitk.ReadImage(str(f)), str(other / sub / f.name.replace(".nii.gz", ".nrrd")))
    shutil.copy(root / "clinical.csv", other / "clinical.csv")
    ds = json.loads((root / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**ds, "file_ending": ".nrrd"}))
    assert validate(other).ok
    _, lab = make_case_arrays(TINY_SHAPE, seed=1)
    flipped = sitk.GetImageFromArray(lab[::-1].transpose(2, 1, 0).copy())
    flipped.CopyInformation(sitk.ReadImage(str(other / "labelsTr" / "case_001.nrrd")))
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(flipped, str(other / "labelsTr" / "case_001.nrrd"))
    assert validate(other).bad_cases == ["case_001"]
    _, roles = read_case(load_cohort(other), "case_002")
    np.testing.assert_array_equal(roles, make_case_arrays(TINY_SHAPE, seed=2)[1])


# ------------------------------------------------------------------------------- unlabelled scans


def add_unlabelled(root, uid, seed=7):
    (root / "unlabelledTr").mkdir(exist_ok=True)
    img, _ = make_case_arrays(TINY_SHAPE, seed=seed)
    save(root / "unlabelledTr" / f"{uid}_0000.nii.gz", img, dtype=img.dtype)


def test_unlabelled_scans_are_found_and_checked(root):
    add_unlabelled(root, "u_000")
    add_unlabelled(root, "u_001", seed=8)
    report = validate(root)
    assert report.ok, report.format()
    cohort = load_cohort(root)
    assert list(cohort.unlabelled) == ["u_000", "u_001"]
    assert cohort.case_ids == ["case_000", "case_001", "case_002", "case_003"]  # not labelled cases
    assert load_cohort(make_tiny_cohort(root.parent / "plain", n=2)).unlabelled == {}


def test_unlabelled_problems_name_the_file_and_leave_labelled_cases_usable(root):
    add_unlabelled(root, "u_ok")
    (root / "unlabelledTr" / "u_bad_0000.nii.gz").write_bytes(b"truncated")          # unreadable
    shutil.copy(root / "labelsTr" / "case_001.nii.gz", root / "unlabelledTr" / "u_lab.nii.gz")  # a label file
    (root / "unlabelledTr" / "labelsTr").mkdir()                                        # a labels folder
    shutil.copy(root / "imagesTr" / "case_002_0000.nii.gz", root / "unlabelledTr" / "copy_0000.nii.gz")
    raw, _ = make_case_arrays(TINY_SHAPE, seed=9)
    save(root / "unlabelledTr" / "raw_0000.nii.gz", raw + 1024, dtype=np.int16)         # not HU
    report = validate(root)
    assert not report.ok
    assert_named(only(report, "unreadable", "unlabelled/u_bad"), "unlabelled/u_bad", ["u_bad_0000.nii.gz"])
    assert_named(only(report, "unlabelled_label_file", "unlabelled/u_lab"), "unlabelled/u_lab",
                 ["unlabelledTr/u_lab.nii.gz", "labelsTr"])
    assert_named(only(report, "unlabelled_label_file", "unlabelled"), "unlabelled", ["unlabelledTr/labelsTr"])
    assert_named(only(report, "unlabelled_duplicate", "unlabelled/copy"), "unlabelled/copy",
                 ["unlabelledTr/copy_0000.nii.gz", "imagesTr/case_002_0000.nii.gz"])
    assert_named(only(report, "not_hu", "unlabelled/raw"), "unlabelled/raw", ["raw_0000.nii.gz", "Hounsfield"])
    assert report.bad_cases == [] and len(report.usable_cases) == 4
    assert not [p for p in report.problems if p.case_id == "unlabelled/u_ok"]
    assert "Unlabelled scan copy (training only" in report.format()


def test_empty_unlabelled_folder_is_an_error(root):
    (root / "unlabelledTr").mkdir()
    report = validate(root)
    assert_named(only(report, "unlabelled_empty", "unlabelled"), "unlabelled", ["unlabelledTr", "remove"])
    assert report.bad_cases == []
