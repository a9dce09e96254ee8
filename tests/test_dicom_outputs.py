"""DICOM and Slicer outputs carry codes: SEG segment coding, model identification, series numbers,
.seg.nrrd terminology, and the DICOM SR of the volumes read back (highdicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cohort_factory import make_dicom_series
from sscild.clinic.dicom_sr import EXTENT_STAGE, PERCENT_OF_LUNG, STAGES, VOLUME, write_dicom_sr
from sscild.clinic.viewer import (LUNG, SEGMENT_CODES, algorithm_parameters, derived_series_number,
                                  read_slicer_segments, read_slicer_terminology, write_dicom_seg, write_slicer_seg)
from sscild.data.image import load_volume, pick_series
from sscild.errors import InputError
from sscild.palette import LABEL_NAMES

MODELS = [{"path": f"run/fold_{k}/model_final.pt", "sha256": f"{k:x}{'ab' * 31}{k:x}", "fold": k, "profile": "cpu"}
          for k in range(5)]
VOLUMES = {"lung": 3210.4, "normal": 2600.1, "ef": 350.2, "ggo": 260.1, "lesion": 610.3}
PERCENT = {"normal": 80.99, "ef": 10.91, "ggo": 8.1, "lesion": 19.01}


def _label(shape):
    lab = np.zeros(shape, np.uint8)
    lab[3:17, 2:14, 1:8] = 1
    lab[4:9, 3:8, 2:6] = 2
    lab[11:15, 3:8, 2:6] = 3
    return lab


def _series(folder, **kwargs):
    hu = np.full((20, 16, 9), -1000.0)
    hu[3:17, 2:14, 1:8] = -800.0
    make_dicom_series(folder, hu, **kwargs)
    return load_volume(folder), list(pick_series(folder).files)


@pytest.fixture
def series(tmp_path):
    return _series(tmp_path / "series")


@pytest.fixture
def seg_file(tmp_path, series):
    vol, files = series
    return write_dicom_seg(tmp_path / "x_seg.dcm", _label(vol.shape), vol.affine, files, models=MODELS)


def _code(item) -> tuple[str, str, str]:
    return str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)


# ---------------------------------------------------------------------------------------------
# DICOM Segmentation


def test_seg_segments_are_coded_lesions_in_the_lung_normal_lung_not_the_organ(seg_file):
    import highdicom as hd

    seg = hd.seg.segread(str(seg_file))
    by_number = {int(d.SegmentNumber): d for d in seg.SegmentSequence}
    assert sorted(by_number) == [1, 2, 3]
    for n, d in by_number.items():
        assert d.SegmentLabel == LABEL_NAMES[n]
        assert _code(d.SegmentedPropertyCategoryCodeSequence[0]) == SEGMENT_CODES[n]["category"]
        assert _code(d.SegmentedPropertyTypeCodeSequence[0]) == SEGMENT_CODES[n]["type"]
        assert [_code(r) for r in d.AnatomicRegionSequence] == [SEGMENT_CODES[n]["anatomic_region"]]
    normal = by_number[1]
    # normal lung is normal lung parenchyma, not the whole organ Lung (an Anatomical Structure)
    assert normal.SegmentedPropertyTypeCodeSequence[0].CodeValue != LUNG[0]
    assert normal.SegmentedPropertyCategoryCodeSequence[0].CodeValue != "91723000"
    assert _code(normal.SegmentedPropertyTypeCodeSequence[0]) == ("17621005", "SCT", "Normal")
    assert normal.AnatomicRegionSequence[0].CodeValue == "113255004"   # parenchyma of lung
    for n in (2, 3):
        assert _code(by_number[n].AnatomicRegionSequence[0]) == ("39607008", "SCT", "Lung")
    assert _code(by_number[3].SegmentedPropertyTypeCodeSequence[0]) == ("RID28531", "RADLEX", "ground-glass opacity")


def test_seg_names_the_models_and_takes_its_series_number_from_the_source(tmp_path, series, seg_file):
    import highdicom as hd

    vol, files = series
    seg = hd.seg.segread(str(seg_file))
    algo = hd.AlgorithmIdentificationSequence.from_sequence(
        seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence)
    assert algo.name == "sscild fold ensemble"
    from sscild import __version__

    assert algo.version == __version__
    assert algo.parameters == {"models": "5 folds", "sha256": " ".join(m["sha256"][:12] for m in MODELS),
                               "profile": "cpu"}
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert int(source.SeriesNumber) == 1 and int(seg.SeriesNumber) == 101
    write_dicom_seg(tmp_path / "n.dcm", _label(vol.shape), vol.affine, files, series_number=42)
    assert int(pydicom.dcmread(tmp_path / "n.dcm", stop_before_pixels=True).SeriesNumber) == 42
    # without models: the version only, no parameters
    bare = hd.seg.segread(str(tmp_path / "n.dcm")).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "AlgorithmParameters" not in bare


def test_derived_series_numbers_and_algorithm_parameters():
    ds = pydicom.Dataset()
    assert derived_series_number(ds, "seg") == 9001 and derived_series_number(ds, "sr") == 9002
    ds.SeriesNumber = ""
    assert derived_series_number(ds, "seg") == 9001
    ds.SeriesNumber = 4
    assert derived_series_number(ds, "seg") == 104 and derived_series_number(ds, "sr") == 105
    assert algorithm_parameters(None) == {}
    one = algorithm_parameters([{"path": "m.pt", "sha256": "ABCDEF0123456789" * 4}])
    assert one == {"models": "1 fold", "sha256": "abcdef012345"}   # no profile named, none written
    assert not any(c in v for v in algorithm_parameters(MODELS).values() for c in ",=")
    with pytest.raises(ValueError, match="sha256"):
        algorithm_parameters([{"path": "m.pt"}])
    with pytest.raises(ValueError, match="sha256"):
        algorithm_parameters([{"path": "m.pt", "sha256": "not-a-hash-at-all"}])


# ---------------------------------------------------------------------------------------------
# 3D Slicer


def test_seg_nrrd_terminology_entry_for_every_segment(tmp_path):
    import nrrd

    lab = _label((20, 16, 9))
    path = write_slicer_seg(tmp_path / "x_labels.seg.nrrd", lab, np.eye(4))
    terms = read_slicer_terminology(path)
    assert sorted(terms) == sorted(LABEL_NAMES)
    for value, entry in terms.items():
        codes = SEGMENT_CODES[value]
        assert (entry["category"], entry["type"], entry["anatomic_region"]) == \
               (codes["category"], codes["type"], codes["anatomic_region"])
        assert entry["type_modifier"] is None and entry["anatomic_region_modifier"] is None
        assert entry["anatomic_context"] == "Anatomic codes - DICOM master list" and entry["context"]
    header = nrrd.read_header(str(path))
    tags = header["Segment2_Tags"].split("|")
    assert "sscild:label=3" in tags   # the package's own tag stays
    entry = next(t for t in tags if t.startswith("TerminologyEntry:"))
    # Slicer's layout: 7 parts joined by ~, each code scheme^value^meaning, an empty one ^^
    parts = entry.removeprefix("TerminologyEntry:").split("~")
    assert len(parts) == 7 and parts[2] == "RADLEX^RID28531^ground-glass opacity" and parts[3] == "^^"
    assert parts[5] == "SCT^39607008^Lung"
    assert {v: s["name"] for v, s in read_slicer_segments(path).items()} == LABEL_NAMES


# ---------------------------------------------------------------------------------------------
# DICOM SR


def _groups(sr):
    """{tracking identifier: group} of every measurement group, and which were volumetric."""
    content = sr.content
    vol = {g.tracking_identifier: g for g in content.get_volumetric_roi_measurement_groups()}
    img = {g.tracking_identifier: g for g in content.get_image_measurement_groups()}
    return vol, img


def _numbers(group) -> dict:
    return {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}


def test_sr_holds_the_volumes_and_references_the_seg(tmp_path, series, seg_file):
    import highdicom as hd

    _, files = series
    path = write_dicom_sr(tmp_path / "x_sr.dcm", series_files=files, seg_path=seg_file, volumes_ml=VOLUMES,
                          percent_of_lung=PERCENT, stage="limited", models=MODELS)
    sr = hd.sr.srread(str(path))
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    seg = pydicom.dcmread(seg_file, stop_before_pixels=True)
    assert sr.Modality == "SR" and isinstance(sr.content, hd.sr.MeasurementReport)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert str(sr.PatientName) == str(source.PatientName)
    assert int(sr.SeriesNumber) == 102 and sr.SeriesNumber != seg.SeriesNumber   # source 1 + 101; SEG: + 100
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    evidence = {s.SeriesInstanceUID: len(s.ReferencedSOPSequence)
                for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence == {source.SeriesInstanceUID: len(files), seg.SeriesInstanceUID: 1}
    volumetric, image = _groups(sr)
    assert set(volumetric) == {LABEL_NAMES[n] for n in (1, 2, 3)}
    assert set(image) == {"whole lung", "lesion (established fibrosis and ground-glass opacity)"}
    for key, n in (("normal", 1), ("ef", 2), ("ggo", 3)):
        g = volumetric[LABEL_NAMES[n]]
        ref = g.referenced_segment[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and int(ref.ReferencedSegmentNumber) == n
        assert (g.finding_type.value, g.finding_type.scheme_designator) == SEGMENT_CODES[n]["type"][:2]
        assert [s.value.value for s in g.finding_sites] == [SEGMENT_CODES[n]["anatomic_region"][0]]
        assert _numbers(g) == {VOLUME[0]: (VOLUMES[key], "ml"), PERCENT_OF_LUNG[0]: (PERCENT[key], "%")}
    assert _numbers(image["whole lung"]) == {VOLUME[0]: (VOLUMES["lung"], "ml")}
    lesion = image["lesion (established fibrosis and ground-glass opacity)"]
    assert _numbers(lesion) == {VOLUME[0]: (VOLUMES["lesion"], "ml"), PERCENT_OF_LUNG[0]: (PERCENT["lesion"], "%")}
    stage = {q.name.value: q.value.value for q in lesion.get_qualitative_evaluations()}
    assert stage[EXTENT_STAGE[0]] == STAGES["limited"][0]
    # the algorithm: name, version and the models' hashes (TID 4019) in every group
    texts = [str(i.TextValue) for i in hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.TEXT,
                                                                      recursive=True)]
    assert texts.count("sscild fold ensemble") == 5
    assert f"sha256={' '.join(m['sha256'][:12] for m in MODELS)}" in texts
    schemes = [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence]
    assert schemes == ["99SSCILD"]


def test_sr_without_seg_and_without_patient_attributes(tmp_path):
    import highdicom as hd

    _, files = _series(tmp_path / "anon", identity={})   # an anonymised series: no name, ID, dates
    pct = {"ef": float("nan"), "ggo": float("nan"), "lesion": float("nan")}
    vols = {"lung": 0.0, "normal": 0.0, "ef": 0.0, "ggo": 0.0, "lesion": 0.0}
    path = write_dicom_sr(tmp_path / "a_sr.dcm", series_files=files, seg_path=None, volumes_ml=vols,
                          percent_of_lung=pct, stage="undetermined", models=None, series_number=7)
    sr = hd.sr.srread(str(path))
    assert int(sr.SeriesNumber) == 7 and sr.PatientID == "" and str(sr.PatientName) == ""
    volumetric, image = _groups(sr)
    assert not volumetric and len(image) == 5   # no Segmentation: every region an image-level group
    for g in image.values():
        assert _numbers(g) == {VOLUME[0]: (0.0, "ml")}   # a percent that is not a number is left out
    lesion = image["lesion (established fibrosis and ground-glass opacity)"]
    assert {q.name.value: q.value.value for q in lesion.get_qualitative_evaluations()}[EXTENT_STAGE[0]] == \
        STAGES["undetermined"][0]
    params = [i for i in hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)
              if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert params == []   # models unknown: only name and version


def test_sr_refuses_what_it_cannot_reference(tmp_path, series, seg_file):
    _, files = series
    out = tmp_path / "bad_sr.dcm"
    _, other = _series(tmp_path / "other")
    with pytest.raises(InputError, match="not a DICOM Segmentation of this series"):
        write_dicom_sr(out, series_files=other, seg_path=seg_file, volumes_ml=VOLUMES, percent_of_lung=PERCENT,
                       stage="extensive")
    (tmp_path / "notes.dcm").write_text("not DICOM")
    with pytest.raises(InputError, match="not readable as DICOM"):
        write_dicom_sr(out, series_files=files, seg_path=tmp_path / "notes.dcm", volumes_ml=VOLUMES,
                       percent_of_lung=PERCENT, stage="limited")
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.StudyInstanceUID
        ds.save_as(stripped / Path(f).name)
    with pytest.raises(InputError, match="StudyInstanceUID"):
        write_dicom_sr(out, series_files=sorted(stripped.iterdir()), seg_path=None, volumes_ml=VOLUMES,
                       percent_of_lung=PERCENT, stage="limited")
    with pytest.raises(ValueError, match="stage"):
        write_dicom_sr(out, series_files=files, seg_path=None, volumes_ml=VOLUMES, percent_of_lung=PERCENT,
                       stage="severe")
    with pytest.raises(ValueError, match="missing"):
        write_dicom_sr(out, series_files=files, seg_path=None, volumes_ml={"lung": 1.0}, percent_of_lung=PERCENT,
                       stage="limited")
    assert not out.exists() and not list(tmp_path.glob(".bad_sr*"))
