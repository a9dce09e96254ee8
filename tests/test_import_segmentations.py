"""Corrected segmentations back into a cohort: `sscild import-dicom --labels` with 3D Slicer and DICOM SEG files.

A label map on a small synthetic CT series is written as `sscild segment` writes it
(:func:`sscild.clinic.viewer.write_slicer_seg`, :func:`~sscild.clinic.viewer.write_dicom_seg`), "edited"
(a block of normal lung turned into EF), and imported: the cohort's label file must equal the edited
label map voxel for voxel, on the CT's grid, and the cohort must validate.
"""

from __future__ import annotations

import gzip

import nrrd
import numpy as np
import pydicom
import pytest

from cohort_factory import IDENTITY, make_case_arrays, make_dicom_series
from sscild.cli import main
from sscild.clinic.viewer import SEGMENT_CODES, write_dicom_seg, write_slicer_seg
from sscild.data.dicom import import_dicom
from sscild.data.image import load_volume
from sscild.data.segfiles import read_segmentation
from sscild.data.validate import validate_cohort
from sscild.errors import InputError

SHAPE = (48, 48, 12)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture
def case(tmp_path):
    """One patient (``anon_a``): its DICOM series, the CT as read, the label map and an edited copy."""
    hu, label = make_case_arrays(SHAPE, seed=3)
    files = make_dicom_series(tmp_path / "dicom" / "anon_a", hu.astype(float))
    ct = load_volume(tmp_path / "dicom" / "anon_a")
    edited = label.copy()
    block = np.zeros(SHAPE, bool)
    block[8:20, 20:30, 3:9] = True
    edited[block & (label == 1)] = 2  # the radiologist calls part of the normal lung fibrosis
    assert (edited != label).sum() > 50
    labels = tmp_path / "labels"
    labels.mkdir()
    return {"src": tmp_path / "dicom", "files": files, "ct": ct, "label": label, "edited": edited,
            "labels": labels, "tmp": tmp_path}


def _imported(out):
    return load_volume(out / "labelsTr" / "case_000.nii.gz")


def _write_layers(path, layers: np.ndarray, segments: list[dict], affine_ras: np.ndarray, flip_x=False):
    """A Slicer-style .seg.nrrd of ``layers`` (L, x, y, z), cropped to what is set, optionally stored with x reversed.

    ``segments``: dicts with name, layer, value and optional tags; no sscild tags unless given.
    """
    lps = LPS @ affine_ras
    idx = np.nonzero(layers.any(axis=0))
    lo, hi = [int(i.min()) for i in idx], [int(i.max()) + 1 for i in idx]
    assert lo != [0, 0, 0]
    box = layers[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = lps[:3, :3] @ np.asarray(lo, float) + lps[:3, 3]
    dirs = lps[:3, :3].T.copy()
    if flip_x:
        origin = origin + dirs[0] * (box.shape[1] - 1)
        dirs[0] = -dirs[0]
        box = box[:, ::-1]
    header = {"type": "unsigned char", "dimension": 4, "space": "left-posterior-superior",
              "space directions": np.vstack([np.full(3, np.nan), dirs]), "space origin": origin,
              "kinds": ["list", "domain", "domain", "domain"], "encoding": "gzip",
              "Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ReferenceImageExtentOffset": " ".join(map(str, lo))}
    for i, s in enumerate(segments):
        header.update({f"Segment{i}_ID": f"Segment_{i + 1}", f"Segment{i}_Name": s["name"],
                       f"Segment{i}_Layer": str(s["layer"]), f"Segment{i}_LabelValue": str(s["value"]),
                       f"Segment{i}_Tags": s.get("tags", "Segmentation.Status:inprogress|")})
    nrrd.write(str(path), np.ascontiguousarray(box), header)
    return path


def _two_layers(label: np.ndarray) -> np.ndarray:
    """Layer 0: the whole lung (1); layer 1: EF (1) and GGO (2) on top, as a Slicer user paints them."""
    return np.stack([(label > 0).astype(np.uint8), np.where(label == 2, 1, np.where(label == 3, 2, 0)).astype(np.uint8)])


def test_corrected_slicer_seg_is_imported_on_the_ct_grid(case, tmp_path):
    write_slicer_seg(case["labels"] / "anon_a.seg.nrrd", case["edited"], case["ct"].affine)
    out = import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], progress=False)
    lab = _imported(out)
    np.testing.assert_array_equal(lab.array, case["edited"])
    np.testing.assert_allclose(lab.affine, case["ct"].affine, atol=1e-4)
    report = validate_cohort(out)
    assert report.ok and not report.bad_cases, report.format()


def test_corrected_dicom_seg_is_imported(case, tmp_path):
    write_dicom_seg(case["labels"] / "anon_a_seg.dcm", case["edited"], case["ct"].affine, case["files"])
    out = import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], segment_codes=SEGMENT_CODES,
                       progress=False)
    np.testing.assert_array_equal(_imported(out).array, case["edited"])
    assert validate_cohort(out).ok
    data = gzip.decompress((out / "labelsTr" / "case_000.nii.gz").read_bytes())
    assert not [v for v in IDENTITY.values() if v.encode() in data]  # nothing of the SEG's header copied


def test_dicom_seg_segments_are_recognised_by_code_alone(case):
    path = write_dicom_seg(case["tmp"] / "anon_a.dcm", case["edited"], case["ct"].affine, case["files"])
    ds = pydicom.dcmread(path)
    for item in ds.SegmentSequence:
        item.SegmentLabel = f"Segment {item.SegmentNumber}"  # a viewer that keeps only the codes
    ds.save_as(path)
    np.testing.assert_array_equal(read_segmentation(path, case["ct"], codes=SEGMENT_CODES), case["edited"])
    np.testing.assert_array_equal(read_segmentation(path, case["ct"]), case["edited"])  # the standard codes


def test_slicer_two_layers_names_only(case, tmp_path):
    segments = [{"name": "Lung", "layer": 0, "value": 1}, {"name": "Fibrosis", "layer": 1, "value": 1},
                {"name": "ground glass", "layer": 1, "value": 2}]
    _write_layers(case["labels"] / "anon_a.seg.nrrd", _two_layers(case["edited"]), segments, case["ct"].affine, flip_x=True)
    out = import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], progress=False)
    np.testing.assert_array_equal(_imported(out).array, case["edited"])  # lesions win over the lung under them
    assert validate_cohort(out).ok


def test_slicer_terminology_identifies_a_segment(case):
    fibrosis = ("TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list"
                "~SCT^49755003^Morphologically Abnormal Structure~SCT^112674009^Fibrosis~^^~Anatomic codes~^^~^^|")
    segments = [{"name": "normal lung", "layer": 0, "value": 1},
                {"name": "Segment_2", "layer": 1, "value": 1, "tags": fibrosis},
                {"name": "GGO", "layer": 1, "value": 2}]
    path = _write_layers(case["tmp"] / "t.seg.nrrd", _two_layers(case["edited"]), segments, case["ct"].affine)
    np.testing.assert_array_equal(read_segmentation(path, case["ct"]), case["edited"])
    segments[1]["name"] = "ground-glass opacity"  # named GGO, coded fibrosis: refused
    _write_layers(path, _two_layers(case["edited"]), segments, case["ct"].affine)
    with pytest.raises(InputError, match="named as label 3 but coded as 'Fibrosis'"):
        read_segmentation(path, case["ct"])


def test_unknown_segment_name_is_refused_with_the_accepted_names(case, tmp_path):
    path = write_slicer_seg(case["labels"] / "anon_a.seg.nrrd", case["edited"], case["ct"].affine)
    data, header = nrrd.read(str(path))
    header["Segment1_Name"] = "consolidation"  # renamed; its terminology (if any) still says fibrosis
    nrrd.write(str(path), data, header)
    if "TerminologyEntry" in header["Segment1_Tags"]:
        np.testing.assert_array_equal(read_segmentation(path, case["ct"]), case["edited"])  # known by its code
    header["Segment1_Tags"] = "sscild:label=2|"  # a new segment: no terminology; the sscild tag is not trusted
    nrrd.write(str(path), data, header)
    with pytest.raises(InputError) as exc:
        import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], progress=False)
    msg = str(exc.value)
    assert "'consolidation'" in msg and "established fibrosis" in msg and "ground glass" in msg
    assert "--label-map" in msg and "anon_a" in msg
    assert not (tmp_path / "cohort").exists()
    out = import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], label_map={"Consolidation": "ef"},
                       progress=False)
    np.testing.assert_array_equal(_imported(out).array, case["edited"])


@pytest.mark.parametrize("change", ["half a voxel", "oversampled"])
def test_segmentation_off_the_ct_grid_is_refused(case, tmp_path, change):
    affine = case["ct"].affine.copy()
    if change == "half a voxel":
        affine[:3, 3] += affine[:3, 0] * 0.5
        label, match = case["edited"], "off the CT's voxel centres"
    else:
        affine[:3, :3] /= 2
        label, match = np.repeat(np.repeat(case["edited"], 2, axis=0), 2, axis=1), "voxel grid .* is not the CT's"
    write_slicer_seg(case["labels"] / "anon_a.seg.nrrd", label, affine)
    with pytest.raises(InputError, match=match) as exc:
        import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], progress=False)
    assert "Specify geometry" in str(exc.value)
    assert not (tmp_path / "cohort").exists()


def test_overlapping_lesions_are_refused_with_a_count(case):
    layers = _two_layers(case["edited"])
    layers = np.concatenate([layers, (case["edited"] == 2)[None].astype(np.uint8)])  # EF again, under a GGO name
    segments = [{"name": "normal lung", "layer": 0, "value": 1}, {"name": "EF", "layer": 1, "value": 1},
                {"name": "GGO", "layer": 2, "value": 1}]
    path = _write_layers(case["tmp"] / "o.seg.nrrd", layers, segments, case["ct"].affine)
    n = int((case["edited"] == 2).sum())
    with pytest.raises(InputError, match=f"{n} voxel\\(s\\) belong to both"):
        read_segmentation(path, case["ct"])


def test_two_label_files_for_one_patient_are_refused(case, tmp_path):
    write_slicer_seg(case["labels"] / "anon_a.seg.nrrd", case["edited"], case["ct"].affine)
    write_dicom_seg(case["labels"] / "anon_a_seg.dcm", case["label"], case["ct"].affine, case["files"])
    with pytest.raises(InputError, match="several label files .* anon_a.seg.nrrd, anon_a_seg.dcm"):
        import_dicom(case["src"], tmp_path / "cohort", labels=case["labels"], progress=False)


def test_cli_import_dicom_quiet_with_a_corrected_segmentation(case, tmp_path, capsys):
    write_slicer_seg(case["labels"] / "anon_a.seg.nrrd", case["edited"], case["ct"].affine)
    out = tmp_path / "cli"
    assert main(["import-dicom", str(case["src"]), str(out), "--labels", str(case["labels"]), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "cohort written to" in captured.out and "patient/s" not in captured.err and "%|" not in captured.err
    np.testing.assert_array_equal(_imported(out).array, case["edited"])
    assert main(["validate", str(out), "--brief"]) == 0
