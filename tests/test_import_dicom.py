"""sscild.data.dicom.import_dicom: DICOM series -> pseudonymised cohort folder, no identifying value leaks."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cohort_factory import IDENTITY, hash_tree, make_case_arrays, make_dicom_series
from sscild.cli import main
from sscild.data.cohort import load_cohort, read_case
from sscild.data.validate import validate_cohort
from sscild.errors import InputError
from sscild.data.dicom import import_dicom
from sscild.data.image import load_volume
from sscild.data.nifti_writer import save_volume

pytestmark = pytest.mark.filterwarnings("ignore:.*DICOM series:UserWarning")

SHAPE = (16, 12, 4)
SPACING = (0.8, 0.7, 2.5)
ORIGIN_LPS = (-100.0, -120.0, -50.0)
# voxel -> RAS: x and y negated (LPS -> RAS), origin likewise
RAS_AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])

OTHER_IDENTITY = {**IDENTITY, "PatientName": "ROE^RICHARD", "PatientID": "MRN777888",
                  "PatientBirthDate": "19551231", "AccessionNumber": "ACC111"}


@pytest.fixture
def source(tmp_path):
    """Two patients; folder names sort as (anon_a, anon_b); anon_a has a label and a scout series."""
    src = tmp_path / "dicom"
    hu_a, lab_a = make_case_arrays(SHAPE, seed=1)
    hu_b, _ = make_case_arrays(SHAPE, seed=2)
    make_dicom_series(src / "anon_b", hu_b.astype(float), spacing=SPACING, origin_lps=ORIGIN_LPS,
                      identity=OTHER_IDENTITY)
    make_dicom_series(src / "anon_a" / "series1", hu_a.astype(float), spacing=SPACING, origin_lps=ORIGIN_LPS)
    make_dicom_series(src / "anon_a" / "scout", hu_a[:, :, :1].astype(float), spacing=SPACING,
                      origin_lps=ORIGIN_LPS, prefix="SC")
    labels = tmp_path / "labels"
    save_volume(labels / "anon_a.nii.gz", lab_a, RAS_AFFINE)
    clinical = tmp_path / "clinical.csv"
    pd.DataFrame({
        "patient": ["anon_b", "anon_a", "anon_zz"],
        "Name": ["ROE^RICHARD", "DOE^JANE", "X^Y"],
        "MRN": ["MRN777888", "MRN123456", "MRN0"],
        "date_of_birth": ["19551231", "19600101", "19000101"],
        "scan_date": ["2019-03-14", "2019-03-14", "2019-03-14"],
        "hospital_ref": ["General Hospital", "General Hospital", "x"],
        "remark": ["ok", "MRN123456 follow-up", "ok"],  # an innocent name, a leaking value
        "age": [61, 58, 40],
        "sex": ["M", "F", "F"],
        "fvc_pct": [71.5, 88.0, 90.0],
        "fev1_fvc": [0.82, 0.79, 0.8],
    }).to_csv(clinical, index=False)
    return {"src": src, "labels": labels, "clinical": clinical, "hu_a": hu_a, "lab_a": lab_a, "hu_b": hu_b}


def _secrets(src: Path) -> set[bytes]:
    """Every identifying string written into the source headers, including the UIDs."""
    values = set()
    for ident in (IDENTITY, OTHER_IDENTITY):
        values |= {v for v in ident.values()}
        values |= {part for v in ident.values() for part in v.split("^") if len(part) >= 4}
    for f in src.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        values |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                   str(ds.FrameOfReferenceUID)}
    values.add("2019-03-14")
    return {v.encode() for v in values}


def _all_output_bytes(folder: Path):
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            yield f, gzip.decompress(data) if f.name.endswith(".gz") else data


def test_import_writes_a_pseudonymised_cohort_without_identifying_values(source, tmp_path, caplog):
    before = hash_tree(tmp_path / "dicom")
    out = tmp_path / "cohorts" / "mine"
    with caplog.at_level(logging.WARNING, logger="sscild.data.dicom"), pytest.warns(UserWarning, match="most slices"):
        result = import_dicom(source["src"], out, labels=source["labels"], clinical=source["clinical"])
    assert result == out
    assert hash_tree(tmp_path / "dicom") == before  # inputs untouched

    # layout
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["clinical.csv", "dataset.json", "imagesTr/case_000_0000.nii.gz",
                     "imagesTr/case_001_0000.nii.gz", "labelsTr/case_000.nii.gz"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["synthetic"] is False and ds["labels"] == {"background": 0, "normal": 1, "ef": 2, "ggo": 3}
    assert ds["file_ending"] == ".nii.gz" and ds["channel_names"] == {"0": "CT"} and ds["numTraining"] == 2

    # the key lies next to, not inside, the cohort; the log says so
    key = tmp_path / "cohorts" / "mine_import_key.csv"
    assert key.is_file() and not list(out.rglob("*key*"))
    table = pd.read_csv(key)
    assert list(table.case_id) == ["case_000", "case_001"] and list(table.patient_folder) == ["anon_a", "anon_b"]
    assert any("OUTSIDE the cohort" in r.getMessage() and str(key) in r.getMessage() for r in caplog.records)

    # no identifying value in any byte of any output file (the key included)
    secrets = _secrets(source["src"])
    assert b"DOE^JANE" in secrets and b"General Hospital" in secrets
    for f, data in list(_all_output_bytes(out)) + [(key, key.read_bytes())]:
        for s in secrets:
            assert s not in data, f"{s!r} leaked into {f}"
        assert str(source["src"]).encode() not in data

    # clinical table: case ids, identifying columns gone, rows matched to the right patient
    clin = pd.read_csv(out / "clinical.csv")
    assert list(clin.columns) == ["case_id", "age", "sex", "fvc_pct", "fev1_fvc"]
    assert clin.set_index("case_id").loc["case_000", "age"] == 58  # anon_a
    assert clin.set_index("case_id").loc["case_001", "fvc_pct"] == 71.5  # anon_b


def test_imported_geometry_and_values(source, tmp_path):
    out = import_dicom(source["src"], tmp_path / "c", labels=source["labels"])
    a = load_volume(out / "imagesTr" / "case_000_0000.nii.gz")
    b = load_volume(out / "imagesTr" / "case_001_0000.nii.gz")
    assert a.array.dtype == np.int16
    assert a.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(a.affine, RAS_AFFINE, atol=1e-4)
    np.testing.assert_array_equal(a.array, source["hu_a"])  # HU and slice order (files were named backwards)
    np.testing.assert_array_equal(b.array, source["hu_b"])
    np.testing.assert_array_equal(load_volume(out / "labelsTr" / "case_000.nii.gz").array, source["lab_a"])
    # the imported cohort validates; the only error is the missing label of case_001
    report = validate_cohort(out)
    assert report.bad_cases == ["case_001"]
    assert {p.kind for p in report.errors} == {"missing_label"}
    _, roles = read_case(load_cohort(out), "case_000")
    np.testing.assert_array_equal(roles, source["lab_a"])


def test_import_is_reproducible(source, tmp_path):
    one = import_dicom(source["src"], tmp_path / "one", labels=source["labels"], clinical=source["clinical"])
    two = import_dicom(source["src"], tmp_path / "two", labels=source["labels"], clinical=source["clinical"])
    h1, h2 = hash_tree(one), hash_tree(two)
    ds1, ds2 = (json.loads((p / "dataset.json").read_text()) for p in (one, two))
    assert ds1.pop("name") == "one" and ds2.pop("name") == "two" and ds1 == ds2
    h1.pop("dataset.json"), h2.pop("dataset.json")
    assert h1 == h2


def test_import_refuses_non_empty_output_and_output_inside_source(source, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        import_dicom(source["src"], out)
    with pytest.raises(InputError, match="inside the DICOM source"):
        import_dicom(source["src"], source["src"] / "cohort")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_dicom(source["src"], empty) == empty  # an existing empty folder is fine
    assert (empty / "dataset.json").is_file()


def test_import_reports_every_bad_patient_folder_and_writes_nothing(source, tmp_path):
    (source["src"] / "anon_c").mkdir()
    (source["src"] / "anon_c" / "notes.txt").write_text("no images here")
    (source["src"] / "anon_d").mkdir()
    with pytest.raises(InputError) as exc:
        import_dicom(source["src"], tmp_path / "c")
    assert "anon_c" in str(exc.value) and "anon_d" in str(exc.value) and "2 problem" in str(exc.value)
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.partial")]


def test_import_label_on_another_grid_is_refused(source, tmp_path):
    save_volume(source["labels"] / "anon_b.nii.gz", np.zeros((3, 3, 3), np.uint8), RAS_AFFINE)
    with pytest.raises(InputError, match="anon_b.*shape"):
        import_dicom(source["src"], tmp_path / "c", labels=source["labels"])
    assert not (tmp_path / "c").exists()


def test_cli_import_dicom(source, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["import-dicom", str(source["src"]), str(out), "--labels", str(source["labels"])]) == 0
    assert "cohort written to" in capsys.readouterr().out
    assert (out / "labelsTr" / "case_000.nii.gz").is_file()
    assert main(["import-dicom", str(source["src"]), str(out)]) == 1
    assert "not empty" in capsys.readouterr().err


def test_import_reads_labels_in_other_formats(source, tmp_path):
    import SimpleITK as sitk

    nifti = source["labels"] / "anon_a.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(source["labels"] / "anon_a.nrrd"))
    nifti.unlink()
    out = import_dicom(source["src"], tmp_path / "c", labels=source["labels"])
    np.testing.assert_array_equal(load_volume(out / "labelsTr" / "case_000.nii.gz").array, source["lab_a"])
