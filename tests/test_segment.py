"""`sscild segment` and `sscild compare`: outputs in the input's geometry, viewer files, zones, the HTML page, batches,
the right models, one-line errors, real CT end to end, radiological montage."""

from __future__ import annotations

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from cohort_factory import make_dicom_series, make_tiny_cohort, prepare_run
from conftest import shared_data
from sscild.cli import main
from sscild.profiles import get_profile
from sscild.errors import InputError
from sscild.data.image import load_volume
from sscild.clinic.segment import segment_scan


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two smoke-profile fold models trained for a few steps on a 4-patient synthetic cohort."""
    base = tmp_path_factory.mktemp("segment")
    from sscild.synthetic.writer import generate_cohort

    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=4, progress=False)
    run, cohort = prepare_run(data, base / "results", iterations=10)
    return {"root": run.root, "data": data, "image": cohort.cases[0].image}


@pytest.fixture
def fake_models(tmp_path):
    """A models folder whose checkpoint is never reached (the scan is refused first)."""
    root = tmp_path / "models"
    (root / "fold_0").mkdir(parents=True)
    (root / "fold_0" / "model_final.pt").write_bytes(b"not a checkpoint")
    return root


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_nifti(path, array, affine):
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def cli_error(capsys, *argv) -> str:
    rc = main(["segment", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    assert err.startswith("sscild segment: error: ")
    return err


# ---------------------------------------------------------------------------------------------
# errors: one clear message, exit status 1, no traceback


def test_not_ct_is_refused(tmp_path, fake_models, capsys):
    mr = np.random.default_rng(0).integers(0, 4096, size=(48, 48, 20)).astype(np.int16)  # MR-like 0..4095
    scan = save_nifti(tmp_path / "t1.nii.gz", mr, np.diag([1.0, 1.0, 3.0, 1.0]))
    err = cli_error(capsys, scan, "--out", tmp_path / "out", "--models", fake_models)
    assert "not CT in Hounsfield units" in err and "t1.nii.gz" in err
    assert not (tmp_path / "out").exists()


def test_unreadable_file_is_refused(tmp_path, fake_models, capsys):
    scan = tmp_path / "broken.nii.gz"
    scan.write_bytes(b"\x1f\x8b this is not really gzip")
    err = cli_error(capsys, scan, "--out", tmp_path / "out", "--models", fake_models)
    assert "broken.nii.gz: cannot be read" in err


def test_a_2d_image_is_refused(tmp_path, fake_models, capsys):
    ct = np.full((64, 64), -1000, np.int16)
    ct[16:48, 16:48] = 40
    scan = save_nifti(tmp_path / "slice.nii.gz", ct, np.diag([0.7, 0.7, 1.0, 1.0]))
    err = cli_error(capsys, scan, "--out", tmp_path / "out", "--models", fake_models)
    assert "single 2D image" in err


def test_missing_scan_and_missing_or_unusable_models(tmp_path, fake_models, capsys):
    make_tiny_cohort(tmp_path / "c", n=1, shape=(24, 20, 12))
    scan = tmp_path / "c" / "imagesTr" / "case_000_0000.nii.gz"
    assert "no such file" in cli_error(capsys, tmp_path / "nope.nii.gz", "--out", tmp_path / "o")
    assert "models folder not found" in cli_error(capsys, scan, "--out", tmp_path / "o", "--models", tmp_path / "none")
    (tmp_path / "empty").mkdir()
    err = cli_error(capsys, scan, "--out", tmp_path / "o", "--models", tmp_path / "empty")
    assert "no fold_*/model_final.pt" in err
    assert "not a usable sscild model" in cli_error(capsys, scan, "--out", tmp_path / "o", "--models", fake_models)
    with pytest.raises(InputError, match="models folder not found"):
        segment_scan(scan, tmp_path / "o", models=tmp_path / "none", progress=False)


def test_output_inside_the_dicom_folder_is_refused(tmp_path, fake_models, capsys):
    hu = np.full((16, 16, 10), -1000.0)
    hu[4:12, 4:12] = 40.0
    folder = tmp_path / "series"
    make_dicom_series(folder, hu)
    before = {p.name: sha(p) for p in folder.iterdir()}
    err = cli_error(capsys, folder, "--out", folder / "seg", "--models", fake_models)
    assert "inside the DICOM folder" in err
    assert {p.name: sha(p) for p in folder.iterdir()} == before


# ---------------------------------------------------------------------------------------------
# outputs


def test_segment_writes_label_map_reports_and_montage(models, tmp_path):
    src = load_volume(models["image"])
    # store the scan left-right reversed with an affine that says so (LPS-like): output must follow it
    affine = src.affine @ np.array([[-1, 0, 0, src.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    scan = save_nifti(tmp_path / "patient.nii.gz", np.asarray(src.array)[::-1].astype(np.int16), affine)
    digest = sha(scan)
    report = segment_scan(scan, tmp_path / "out", models=models["root"], progress=False, refuse=False)
    assert sha(scan) == digest  # input untouched
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["patient_densitometry.csv", "patient_labels.itksnap.txt", "patient_labels.nii.gz",
                     "patient_labels.seg.nrrd",
                     "patient_overlay.png", "patient_report.csv", "patient_report.html", "patient_report.json",
                     "patient_uncertainty.nii.gz", "patient_zones.csv"]
    lab = nib.load(str(out / "patient_labels.nii.gz"))
    assert lab.shape == src.shape
    np.testing.assert_allclose(lab.affine, affine)
    arr = np.asarray(lab.dataobj)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1, 2, 3}
    on_disk = json.loads((out / "patient_report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    assert len(on_disk["models"]) == 2 and "mean softmax of 2" in on_disk["ensemble"]
    assert on_disk["precision"] in ("float32", "bfloat16 autocast (native on this CPU)", "float16 autocast (CUDA)")
    assert "largest" in on_disk["postprocess"]
    counts = np.bincount(arr.ravel(), minlength=4)
    voxel_ml = float(np.prod(src.spacing)) / 1000
    s = report["summary"]
    assert s["lung_volume_ml"] == pytest.approx(counts[1:].sum() * voxel_ml, abs=0.06)
    assert s["volumes_ml"]["lesion"] == pytest.approx((counts[2] + counts[3]) * voxel_ml, abs=0.06)
    if counts[1:].sum():
        pct = 100 * (counts[2] + counts[3]) / counts[1:].sum()
        assert s["percent_of_lung"]["lesion"] == pytest.approx(pct, abs=0.006)
        assert s["extent_stage"] == ("extensive" if pct > 20 else "limited")
    rows = list(csv.reader((out / "patient_report.csv").open()))
    assert rows[0] == ["region", "volume_ml", "percent_of_lung"]
    assert [r[0] for r in rows[1:]] == ["normal", "ef", "ggo", "lesion", "lung", "extent_stage"]
    assert (out / "patient_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name,flags", [("chest-ct-1.nrrd", []), ("chest-ct-2.nrrd", ["--no-tta"])])
def test_cli_segment_on_real_ct(models, tmp_path, capsys, name, flags):
    scan = shared_data("real-ct", name)
    rc = main(["segment", str(scan), "--out", str(tmp_path / "out"), "--models", str(models["root"]), "--quiet",
               "--force", *flags])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["extent_stage"] in ("limited", "extensive", "undetermined")
    stem = name.removesuffix(".nrrd")
    ct = load_volume(scan)
    lab = load_volume(tmp_path / "out" / f"{stem}_labels.nii.gz")
    assert lab.shape == ct.shape
    np.testing.assert_allclose(lab.affine, ct.affine, atol=1e-4)
    for suffix in ("_report.json", "_report.csv", "_overlay.png"):
        assert (tmp_path / "out" / f"{stem}{suffix}").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# montage orientation


def test_montage_is_radiological_whatever_the_voxel_order():
    import matplotlib.pyplot as plt

    from sscild.clinic.figures import scan_montage
    from sscild.data.orientation import to_canonical

    shape = (20, 16, 10)
    image = np.full(shape, -800, np.int16)
    label = np.ones(shape, np.uint8)
    label[15:] = 2  # EF in the patient's right (high x in RAS)
    ras = np.diag([1.0, 1.0, 2.0, 1.0])
    las = ras @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    a, sp = to_canonical(label, ras)
    b, _ = to_canonical(label[::-1], las)
    np.testing.assert_array_equal(a, b)
    assert sp == (1.0, 1.0, 2.0)
    for lab, aff in ((label, ras), (label[::-1], las)):
        fig = scan_montage(image if aff is ras else image[::-1], lab, aff, n_axial=1)
        shown = np.asarray(fig.axes[0].images[1].get_array())  # (rows = anterior..posterior, cols)
        cols = np.flatnonzero((shown == 2).any(axis=0))
        assert cols.max() < shown.shape[1] // 2  # patient's right drawn on the image's left
        plt.close(fig)


def test_recorded_segment_benchmark_renders(tmp_path):
    from sscild.book.provenance import segment_benchmark_table

    table = segment_benchmark_table()
    assert table is not None, "benchmarks/segment_cpu.json should be in the repository"
    assert "512 x 512 x 300" in table.loc["scan", "value"]
    assert table.loc["wall time, fresh process", "value"].endswith("(target 20.0 s)")
    assert segment_benchmark_table(tmp_path / "absent.json") is None


# ---------------------------------------------------------------------------------------------
# the command line: one line per error, exit codes, --version, --debug


def test_version_and_bad_options_give_one_line_and_exit_2(capsys, tmp_path):
    from sscild import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"sscild {__version__}"
    cases = [
        (["phantom", str(tmp_path / "c"), "--profile", "gpu"], "invalid choice: 'gpu'"),
        (["validate", str(tmp_path), "--label-map", '{"reticulation": ef}'], "--label-map is not valid JSON"),
        (["validate", str(tmp_path), "--label-map", '["ef"]'], "must be a JSON object"),
        (["segment", "scan.nii.gz"], "--out is required"),
        (["frobnicate"], "invalid choice"),
    ]
    for argv, expected in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    import sscild.synthetic.writer

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(sscild.synthetic.writer, "generate_cohort", boom)
    rc = main(["phantom", str(tmp_path / "c"), "--profile", "smoke"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "unexpected error: RuntimeError: disk on fire second line" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["phantom", str(tmp_path / "c"), "--profile", "smoke", "--debug"])


def test_a_model_that_needs_more_than_weights_is_refused(models, tmp_path, capsys):
    import torch

    state = torch.load(models["root"] / "fold_0" / "model_final.pt", weights_only=True)
    state["extra"] = np.random.default_rng(0)   # a pickled object: weights_only loading must refuse it
    bad = tmp_path / "run" / "fold_0"
    bad.mkdir(parents=True)
    torch.save(state, bad / "model_final.pt")
    scan = shared_data("real-ct", "chest-ct-1.nrrd")
    err = cli_error(capsys, scan, "--out", tmp_path / "out", "--models", tmp_path / "run")
    assert "refused" in err and "weights_only=True" in err and "numpy.random" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the right models: the situation of issue 15, planted


def _study_cpu_run(results, data):
    """Two `cpu`-profile study fold models (2 iterations each) in results/synthetic-cpu/cpu."""
    run, _ = prepare_run(data, results, profile="cpu", cohort="synthetic-cpu", iterations=2)
    return run.root


def _external_run(out):
    """The external check's COVID slice models (GGO / consolidation), trained the way run_external trains them."""
    from sscild.external.grid import training_case
    from sscild.external.recipe import external_profile
    from sscild.external.slices import CLASS_NAMES, SliceImage
    from sscild.model.train import train_model

    p = external_profile("cpu", iterations=2)
    rng = np.random.default_rng(0)
    slices = {}
    for i in range(3):
        img = rng.integers(0, 255, (96, 96)).astype(np.uint8)
        lab = np.zeros((96, 96), np.uint8)
        lab[30:50, 30:50] = 1
        lab[60:70, 20:40] = 2
        slices[str(i)] = SliceImage(str(i), img, lab, out / f"{i}.jpg", out / f"{i}.png")
    for k in range(2):
        cases = {sid: training_case(s, p) for sid, s in slices.items()}
        train_model(cases, p, out / "cv" / f"fold_{k}", key=k, num_classes=3, class_names=CLASS_NAMES,
                    progress=False, iterations=2)
    return out / "cv"


def test_segment_without_models_uses_the_study_models_never_the_external_ones(models, tmp_path, monkeypatch, capsys):
    import os
    import time

    import torch

    results = tmp_path / "results"
    study = _study_cpu_run(results, models["data"])
    time.sleep(0.05)
    external = _external_run(results / "external")          # trained last: the newest run under results/
    newest = max(results.glob("*/*/fold_*/model_final.pt"), key=lambda p: p.stat().st_mtime)
    assert newest.parent.parent == external
    state = torch.load(external / "fold_0" / "model_final.pt", weights_only=True)
    assert state["label_scheme"] == {"background": 0, "ggo": 1, "consolidation": 2}
    assert state["input_kind"] == "2d-image-slices"
    study_state = torch.load(study / "fold_0" / "model_final.pt", weights_only=True)
    assert study_state["label_scheme"] == {"background": 0, "normal": 1, "ef": 2, "ggo": 3}
    assert study_state["input_kind"] == "ct-volume-hu" and study_state["profile"]["name"] == "cpu"

    monkeypatch.setenv("SSCILD_RESULTS", str(results))
    scan = shared_data("real-ct", "chest-ct-1.nrrd")
    rc = main(["segment", str(scan), "--out", str(tmp_path / "out"), "--quiet", "--no-tta", "--force"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"models: {study} (2 fold model(s)" in captured.err and "default profile 'cpu'" in captured.err
    assert "external/cv (segments ggo/consolidation, not the study's labels)" in captured.err
    report = json.loads((tmp_path / "out" / "chest-ct-1_report.json").read_text())
    assert [os.path.dirname(os.path.dirname(m)) for m in report["models"]] == [str(study)] * 2

    # asked for explicitly, the external models are refused with a clear message
    err = cli_error(capsys, scan, "--out", tmp_path / "out2", "--models", external)
    assert "segments other labels (0 background, 1 ggo, 2 consolidation" in err and "not an SSc-ILD model" in err
    # a checkpoint from before the scheme was recorded is judged by its class names
    legacy = tmp_path / "legacy" / "fold_0"
    legacy.mkdir(parents=True)
    del state["label_scheme"], state["input_kind"]
    torch.save(state, legacy / "model_final.pt")
    err = cli_error(capsys, scan, "--out", tmp_path / "out3", "--models", legacy.parent)
    assert "1 ggo, 2 consolidation" in err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


# ---------------------------------------------------------------------------------------------
# viewer files, zones and the HTML page from a real segment run; DICOM in, DICOM SEG out


def test_dicom_series_gets_a_dicom_seg_and_the_page_is_self_contained(models, tmp_path):
    import highdicom as hd
    import nrrd

    from sscild.clinic.viewer import read_itksnap_labels, read_slicer_segments

    src = load_volume(models["image"])
    folder = tmp_path / "series"
    make_dicom_series(folder, np.clip(np.asarray(src.array, float), -1024, 3000), spacing=src.spacing,
                      identity={"PatientID": "SSC-7", "ConvolutionKernel": "B45f", "PatientName": "Test^Patient"})
    before = {p.name: sha(p) for p in folder.iterdir()}
    report = segment_scan(folder, tmp_path / "out", models=models["root"], progress=False, refuse=False)
    assert {p.name: sha(p) for p in folder.iterdir()} == before
    out = tmp_path / "out"
    assert report["acquisition"]["patient_id"] == "SSC-7" and report["acquisition"]["kernel"] == "B45f"
    assert report["acquisition"]["slice_thickness_from"] == "DICOM SliceThickness"
    lab = load_volume(out / "series_labels.nii.gz")
    seg = hd.seg.segread(str(out / "series_seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["normal lung", "established fibrosis",
                                                             "ground-glass opacity"]
    import pydicom

    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    # the models that made it, by hash; the volumes in a DICOM SR beside it, equal to the report's
    params = str(seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert all(m["sha256"][:12] in params for m in report["model_files"])
    sr = hd.sr.srread(str(out / "series_sr.dcm"))
    assert sr.SeriesInstanceUID != seg.SeriesInstanceUID and "series_sr.dcm" in report["outputs"]["dicom_sr"]
    evidence = {i.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence and first.SOPInstanceUID in evidence
    # every lung voxel of the label map is in the DICOM SEG at the same place
    sv = seg.get_volume(combine_segments=True)
    arr = np.asarray(sv.array)
    lps = np.diag([-1.0, -1, 1, 1]) @ lab.affine
    idx = np.argwhere(np.asarray(lab.array) > 0)[::7]
    world = np.c_[idx, np.ones(len(idx))] @ lps.T
    ijk = np.rint(world @ np.linalg.inv(np.asarray(sv.affine)).T)[:, :3].astype(int)
    np.testing.assert_array_equal(arr[ijk[:, 0], ijk[:, 1], ijk[:, 2]], np.asarray(lab.array)[tuple(idx.T)])
    data, header = nrrd.read(str(out / "series_labels.seg.nrrd"))   # cropped to the lung, offset in the header
    i, j, k = map(int, header["Segmentation_ReferenceImageExtentOffset"].split())
    full = np.asarray(lab.array)
    np.testing.assert_array_equal(data, full[i:i + data.shape[0], j:j + data.shape[1], k:k + data.shape[2]])
    assert int((data > 0).sum()) == int((full > 0).sum())
    assert read_slicer_segments(out / "series_labels.seg.nrrd") == read_itksnap_labels(out / "series_labels.itksnap.txt")
    # zones: in the report and the CSV, consistent with the whole-lung numbers
    zones = report["zones"]["table"]
    assert zones["whole lung"]["lesion_pct"] == pytest.approx(report["summary"]["percent_of_lung"]["lesion"], abs=0.01)
    rows = list(csv.reader((out / "series_zones.csv").open()))
    assert rows[0][0] == "zone" and [r[0] for r in rows[1:]][:3] == ["whole lung", "right", "left"]
    # one self-contained page: the montage inside, nothing loaded from elsewhere
    page = (out / "series_report.html").read_text()
    assert "data:image/png;base64," in page and "Where the disease is" in page and "peripheral" in page
    for ref in ("http://", "https://", "<script", "<link", "src='series", 'src="series', "@import"):
        assert ref not in page


# ---------------------------------------------------------------------------------------------
# many scans at once


def test_a_folder_of_scans_one_bad_does_not_stop_the_others(models, tmp_path, capsys):
    src = load_volume(models["image"])
    folder = tmp_path / "scans"
    folder.mkdir()
    save_nifti(folder / "a.nii.gz", np.asarray(src.array).astype(np.int16), src.affine)
    save_nifti(folder / "b.nii.gz", np.asarray(src.array)[::-1].astype(np.int16), src.affine)
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    make_dicom_series(folder / "patient_c", np.clip(np.asarray(src.array, float), -1024, 3000), spacing=src.spacing)
    rc = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--models", str(models["root"]), "--force"])
    captured = capsys.readouterr()
    assert rc == 1  # one scan failed
    assert "3 of 4 scan(s) segmented" in captured.out
    assert "broken.nii.gz" in captured.err and "cannot be read" in captured.err and "Traceback" not in captured.err
    rows = {r["scan"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "out" / "batch.csv").open())}
    assert set(rows) == {"a.nii.gz", "b.nii.gz", "broken.nii.gz", "patient_c"}
    assert rows["broken.nii.gz"]["status"] == "failed" and "cannot be read" in rows["broken.nii.gz"]["error"]
    for name in ("a.nii.gz", "b.nii.gz", "patient_c"):
        r = rows[name]
        assert r["status"] == "ok" and r["error"] == "" and float(r["lung_ml"]) >= 0
        assert r["extent_stage"] in ("limited", "extensive", "undetermined")
        report = json.loads(next((tmp_path / "out" / name.split(".")[0]).glob("*_report.json")).read_text())
        assert float(r["lesion_pct"]) == pytest.approx(report["summary"]["percent_of_lung"]["lesion"])
    assert (tmp_path / "out" / "patient_c" / "patient_c_seg.dcm").exists()


def test_a_folder_of_single_dicom_slices_reports_each(models, tmp_path, capsys):
    folder = shared_data("real-ct", "dicom-slices")
    rc = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--models", str(models["root"]), "--quiet",
               "--force"])
    captured = capsys.readouterr()
    rows = list(csv.DictReader((tmp_path / "out" / "batch.csv").open()))
    n = len([p for p in folder.iterdir() if p.suffix == ".dcm"])
    assert rc == 1 and len(rows) == n
    assert all(r["status"] == "failed" and "single 2D image" in r["error"] for r in rows)


# ---------------------------------------------------------------------------------------------
# compare


def test_cli_compare_segments_or_reuses_and_writes_json_csv_html(models, tmp_path, capsys):
    src = load_volume(models["image"])
    a = save_nifti(tmp_path / "visit1.nii.gz", np.asarray(src.array).astype(np.int16), src.affine)
    segment_scan(a, tmp_path / "seg1", models=models["root"], progress=False, refuse=False)
    shifted = src.affine.copy()
    shifted[:3, 3] += 7.0                      # the same scan, elsewhere in space
    b = save_nifti(tmp_path / "visit2.nii.gz", np.asarray(src.array).astype(np.int16), shifted)
    rc = main(["compare", str(tmp_path / "seg1"), str(b), "--out", str(tmp_path / "cmp"),
               "--models", str(models["root"]), "--quiet", "--force"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "lesion (EF + GGO)" in captured.out and "compare.html" in captured.out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert (tmp_path / "cmp" / "followup" / "visit2_report.json").exists()   # segmented here
    assert not (tmp_path / "cmp" / "baseline").exists()                       # reused
    for row in result["change"]:
        assert abs(row["change_pp"] or 0) < 1e-6 and abs(row["change_ml"]) < 1e-6, row  # same scan: no change
    assert result["warnings"] == [] and result["lung_volume_ratio"] == pytest.approx(1.0)
    assert any("PatientID" in u for u in result["not_checked"])
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert len(rows) == 8 * 3 and rows[0]["zone"] == "whole lung"
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "derived in idiopathic pulmonary fibrosis (IPF)" in page and page.count("data:image/png;base64,") == 2
    assert "http" not in page


# ---------------------------------------------------------------------------------------------
# knowing when not to answer: uncertainty, quality control, refusal, odd DICOM


def test_report_carries_uncertainty_and_quality_control(models, tmp_path):
    src = load_volume(models["image"])
    scan = save_nifti(tmp_path / "p.nii.gz", np.asarray(src.array).astype(np.int16), src.affine)
    report = segment_scan(scan, tmp_path / "out", models=models["root"], progress=False, refuse=False)
    unc = load_volume(tmp_path / "out" / "p_uncertainty.nii.gz")
    lab = np.asarray(load_volume(tmp_path / "out" / "p_labels.nii.gz").array)
    arr = np.asarray(unc.array)
    assert arr.shape == src.shape and arr.dtype == np.uint8 and arr.max() <= 100
    np.testing.assert_allclose(unc.affine, src.affine)
    per = report["uncertainty"]["per_class"]
    assert per["lung"]["voxels"] == int((lab > 0).sum())
    if per["lesion"]["voxels"]:
        want = 100.0 * float((arr[lab >= 2] >= 50).mean())
        assert per["lesion"]["uncertain_pct"] == pytest.approx(want, abs=0.06)
    qc = report["quality_control"]
    assert set(qc["measures"]) >= {"missed_lung_pct", "solidity_top", "solidity_bottom", "mediastinum_hu",
                                   "lung_on_lowest_slice_pct", "slice_mm", "training_slice_mm"}
    assert report["summary"]["flags"] == [f["code"] for f in qc["flags"]]
    for f in qc["flags"]:
        assert f["seen"] and f["means"] and f["severity"] in ("warning", "refuse (overridden with --force)")
    page = (tmp_path / "out" / "p_report.html").read_text()
    assert "Can this result be trusted?" in page and "uncertain (%)" in page


def test_no_lungs_exit_status_5_and_nothing_written(models, tmp_path, capsys, monkeypatch):
    """A scan in which the ensemble finds no lung is refused (the decision itself: tests/test_qc.py)."""
    import sscild.clinic.segment as seg

    real = seg.segment_volume

    def no_lung(*a, **kw):
        res = real(*a, **kw)
        res.label[:] = 0
        return res

    monkeypatch.setattr(seg, "segment_volume", no_lung)
    src = load_volume(models["image"])
    scan = save_nifti(tmp_path / "filled.nii.gz", np.asarray(src.array).astype(np.int16), src.affine)
    rc = main(["segment", str(scan), "--out", str(tmp_path / "out"), "--models", str(models["root"]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 5, err
    assert "no lungs found - is this a chest CT?" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc = main(["segment", str(scan), "--out", str(tmp_path / "forced"), "--models", str(models["root"]), "--quiet",
               "--force"])
    assert rc == 0
    report = json.loads((tmp_path / "forced" / "filled_report.json").read_text())
    assert report["summary"]["flags"][0] == "no_lungs"
    assert report["quality_control"]["flags"][0]["severity"] == "refuse (overridden with --force)"


def test_dicom_without_frame_of_reference_gets_every_output_but_the_seg(models, tmp_path):
    import pydicom

    src = load_volume(models["image"])
    folder = tmp_path / "anonymised"
    make_dicom_series(folder, np.clip(np.asarray(src.array, float), -1024, 3000), spacing=src.spacing)
    for f in folder.iterdir():                       # an anonymiser that strips the Frame of Reference UID
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    report = segment_scan(folder, tmp_path / "out", models=models["root"], progress=False, refuse=False)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "anonymised_seg.dcm" not in names and "dicom_seg" not in report["outputs"]
    for suffix in ("_labels.nii.gz", "_uncertainty.nii.gz", "_labels.seg.nrrd", "_report.html", "_zones.csv",
                   "_overlay.png", "_report.json"):
        assert f"anonymised{suffix}" in names
    assert "FrameOfReferenceUID" in report["not_written"]["dicom_seg"]
    assert "Not written: dicom_seg" in (tmp_path / "out" / "anonymised_report.html").read_text()
