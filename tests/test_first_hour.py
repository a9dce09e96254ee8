"""What a radiology researcher meets first: the command line's help, the device and series choice, batches that
survive interruption and keep their warnings, reports that name their models and cohort, lung densitometry."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest

from cohort_factory import make_dicom_series, prepare_run
from sscild.cli import build_parser, main
from sscild.clinic.densitometry import DENSITY_COLUMNS, histogram_measures, zone_densitometry
from sscild.clinic.zones import ZONES, zone_map
from sscild.data.image import load_volume
from sscild.data.series import is_lung_reconstruction, list_series, pick_series
from sscild.data.nifti_writer import save_volume
from sscild.errors import InputError
from sscild.model.device import device_from_name
from sscild.profiles import get_profile


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two smoke-profile fold models trained a few steps on a 4-patient synthetic cohort, with the data stage's
    validation.json (which names the cohort folder) written first, as `make all` does."""
    from sscild.paths import write_json
    from sscild.synthetic.writer import generate_cohort

    base = tmp_path_factory.mktemp("first_hour")
    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=4, progress=False)
    run, _ = prepare_run(data, base / "results")
    write_json(run.validation, {"root": str(data)})
    from sscild.model.train import train_fold

    for k in range(2):
        train_fold(run, get_profile("smoke"), k, iterations=10, progress=False)
    return {"root": run.root, "data": data, "image": sorted((data / "imagesTr").iterdir())[0]}


def _ct(models):
    src = load_volume(models["image"])
    return np.clip(np.asarray(src.array, float), -1024, 3000), src.spacing


# ---------------------------------------------------------------------------------------------
# the command line's help


@pytest.mark.parametrize("command", ["validate", "phantom", "import-dicom", "train", "segment", "compare"])
def test_every_command_has_a_description_examples_and_exit_codes(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = sub.format_help()
    assert sub.description and len(sub.description) > 60, command
    assert "examples:" in text and f"sscild {command}" in text.split("examples:")[1]
    assert "exit status:" in text and "5  (segment, compare)" in text
    undocumented = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
    assert not undocumented, f"{command}: arguments without help: {undocumented}"


def test_top_level_help_is_not_a_docstring_title(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "The ``sscild`` command line" not in out and "segmentation of systemic-sclerosis" in out
    assert "exit status:" in out


def test_device_names_are_checked():
    import torch

    assert device_from_name("auto") is None and device_from_name(None) is None
    assert device_from_name("CPU") == torch.device("cpu")
    with pytest.raises(InputError, match="not a device"):
        device_from_name("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            device_from_name("cuda:0")


def test_a_missing_device_is_a_bad_option_exit_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    scan = save_volume(tmp_path / "ct.nii.gz", np.full((16, 16, 16), -1000, np.int16), np.eye(4))
    assert main(["segment", str(scan), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "no CUDA GPU" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# which DICOM series


def test_lung_kernels_are_recognised():
    sharp = ["B70f", "Br64", "I70f\\3", "FC51", "YB", "LUNG", "BONE", "Hr60"]
    soft = ["B30f", "Br40", "FC03", "STANDARD", "SOFT", "A", None]
    assert all(is_lung_reconstruction(k) for k in sharp), [k for k in sharp if not is_lung_reconstruction(k)]
    assert not any(is_lung_reconstruction(k) for k in soft), [k for k in soft if is_lung_reconstruction(k)]
    assert is_lung_reconstruction("B31f", "Thorax 1.0 Lung") and not is_lung_reconstruction("B31f", "Thorax 1.0")


def _two_reconstructions(folder, hu, spacing):
    """Soft-tissue and lung-kernel reconstructions of one acquisition in one folder (same slice count)."""
    make_dicom_series(folder, hu, spacing=spacing, series_uid="1.2.826.0.1.3680043.10.1.111",
                      identity={"PatientID": "P1", "ConvolutionKernel": "B30f", "SeriesDescription": "Thorax 1.0 B30f"},
                      prefix="SOFT")
    make_dicom_series(folder, hu + 50.0, spacing=spacing, series_uid="1.2.826.0.1.3680043.10.1.222",
                      identity={"PatientID": "P1", "ConvolutionKernel": "B70f", "SeriesDescription": "Thorax 1.0 B70f"},
                      prefix="LUNG")


def test_tied_series_prefer_the_lung_kernel_and_series_uid_chooses(tmp_path):
    hu = np.full((12, 10, 8), -800.0)
    hu[:, :, :2] = 40.0
    _two_reconstructions(tmp_path / "s", hu, (0.8, 0.8, 1.0))
    with pytest.warns(UserWarning, match="lung reconstruction.*--series-uid"):
        chosen = pick_series(tmp_path / "s")
    assert all("LUNG" in os.path.basename(f) for f in chosen.files)
    soft = pick_series(tmp_path / "s", "1.2.826.0.1.3680043.10.1.111")
    assert all("SOFT" in os.path.basename(f) for f in soft.files)
    assert load_volume(tmp_path / "s", series_uid="1.111").array.max() < load_volume(
        tmp_path / "s", series_uid="1.2.826.0.1.3680043.10.1.222").array.max()
    with pytest.raises(InputError, match="matches no series.*B30f.*B70f"):
        pick_series(tmp_path / "s", "9.9.9")
    with pytest.raises(InputError, match="matches 2 series"):
        pick_series(tmp_path / "s", "1.2.826")
    rows = list_series(tmp_path / "s")
    assert [(r["kernel"], r["chosen"], r["lung_kernel"]) for r in rows] == [("B30f", False, False), ("B70f", True, True)] \
        or [(r["kernel"], r["chosen"], r["lung_kernel"]) for r in rows] == [("B70f", True, True), ("B30f", False, False)]


def test_cli_list_series_writes_nothing(tmp_path, capsys):
    hu = np.full((12, 10, 8), -800.0)
    _two_reconstructions(tmp_path / "s", hu, (0.8, 0.8, 1.0))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["segment", "--list-series", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "2 DICOM series" in out and "* 1.2.826.0.1.3680043.10.1.222" in out and "  1.2.826.0.1.3680043.10.1.111" in out
    assert "B70f lung kernel" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# densitometry


def test_histogram_measures_match_numpy_and_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    hu = np.concatenate([rng.normal(-850, 60, 20000), rng.normal(-450, 80, 5000), rng.normal(-980, 10, 1000)])
    hu = np.clip(np.rint(hu), -1024, 1000)
    hist = np.bincount((hu + 1024).astype(int), minlength=2025)
    m = histogram_measures(hist)
    assert m["mean_hu"] == pytest.approx(hu.mean())
    assert m["sd_hu"] == pytest.approx(hu.std())
    assert m["skewness"] == pytest.approx(stats.skew(hu))
    assert m["kurtosis"] == pytest.approx(stats.kurtosis(hu))            # excess (Fisher)
    assert m["haa_pct"] == pytest.approx(100 * np.mean((hu >= -600) & (hu <= -250)))
    assert m["laa950_pct"] == pytest.approx(100 * np.mean(hu < -950))
    assert abs(m["pd15_hu"] - np.percentile(hu, 15)) <= 1
    assert all(np.isnan(v) for v in histogram_measures(np.zeros(2025)).values())


def test_zone_densitometry_follows_the_zones_and_the_orientation():
    lab = np.zeros((24, 10, 12), np.uint8)
    lab[2:10, 2:8, :] = 1
    lab[14:22, 2:8, :] = 1
    hu = np.full(lab.shape, -850.0)
    hu[:, :, :4] = -450.0                                 # dense lower third (z = 0 is inferior with this affine)
    for affine in (np.eye(4), np.diag([-1.0, 1, 1, 1])):
        zm = zone_map(lab, affine)
        t = zone_densitometry(zm, hu, affine)
        assert list(t.index) == list(ZONES) and list(t.columns) == list(DENSITY_COLUMNS)
        assert t.loc["lower", "mean_hu"] == pytest.approx(-450.0) and t.loc["upper", "mean_hu"] == pytest.approx(-850.0)
        assert t.loc["lower", "haa_pct"] == pytest.approx(100.0) and t.loc["upper", "haa_pct"] == 0.0
        assert t.loc["whole lung", "haa_pct"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        zone_densitometry(zm, hu[:, :, :5], np.eye(4))


# ---------------------------------------------------------------------------------------------
# reports that name their models and cohort; densitometry in the report


def test_report_names_model_hashes_cohort_and_carries_densitometry(models, tmp_path):
    from sscild.clinic.segment import segment_scan

    report = segment_scan(models["image"], tmp_path / "out", models=models["root"], progress=False, refuse=False)
    files = report["model_files"]
    assert len(files) == 2 and {m["fold"] for m in files} == {0, 1}
    for m in files:
        with open(m["path"], "rb") as fh:
            assert m["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert report["training_cohort"] == {"name": "cohort", "synthetic": True}
    assert "SYNTHETIC" in report["warning"]
    dens = report["densitometry"]["table"]
    assert set(dens) == set(ZONES)
    whole = dens["whole lung"]
    assert -1024 < whole["mean_hu"] < 0 and 0 <= whole["haa_pct"] <= 100 and 0 <= whole["laa950_pct"] <= 100
    rows = list(csv.DictReader(open(report["outputs"]["densitometry"])))
    assert [r["zone"] for r in rows] == list(ZONES)
    page = open(report["outputs"]["html"]).read()
    assert page.index("Synthetic-only models") < page.index("Volumes")       # at the top
    assert "Lung densitometry" in page and files[0]["sha256"][:16] in page


def test_a_model_file_without_its_cohort_falls_back_to_the_run_folder(models, tmp_path):
    """Models trained before model files recorded their cohort: the run's run_context.json says it."""
    import shutil

    import torch

    from sscild.model.loading import load_ensemble

    run = tmp_path / "oldrun"
    for k in range(2):
        (run / f"fold_{k}").mkdir(parents=True)
        state = torch.load(models["root"] / f"fold_{k}" / "model_final.pt", weights_only=True)
        state.pop("training_cohort", None)
        torch.save(state, run / f"fold_{k}" / "model_final.pt")
    ens = load_ensemble(run)
    assert ens.training_cohort == {"name": None, "synthetic": None}
    (run / "run_context.json").write_text(json.dumps({"cohort": "synthetic-cpu", "builtin_cohort": True,
                                                      "data_dir": str(tmp_path / "gone")}))
    ens = load_ensemble(run)
    assert ens.training_cohort == {"name": "synthetic-cpu", "synthetic": True}
    shutil.rmtree(run)


# ---------------------------------------------------------------------------------------------
# batches


def test_batch_table_grows_as_it_goes_resumes_and_keeps_warnings(models, tmp_path, capsys, monkeypatch):
    import sscild.clinic.segment as seg

    hu, spacing = _ct(models)
    folder = tmp_path / "scans"
    folder.mkdir()
    src = load_volume(models["image"])
    for name in ("case_001_0000", "case_002_0000", "case_003_0000"):
        save_volume(folder / f"{name}.nii.gz", np.asarray(src.array).astype(np.int16), src.affine)
    _two_reconstructions(folder / "patient_d", hu, spacing)
    out = tmp_path / "out"
    real = seg.segment_scan
    calls = []

    def interrupted_on_third(item, *a, **kw):
        calls.append(item.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(item, *a, **kw)

    monkeypatch.setattr(seg, "segment_scan", interrupted_on_third)
    assert main(["segment", str(folder), "--out", str(out), "--models", str(models["root"]), "--quiet",
                 "--force"]) == 130
    rows = list(csv.DictReader((out / "batch.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]             # written as it went
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case_001", "case_002"]   # no _0000
    capsys.readouterr()
    assert main(["segment", str(folder), "--out", str(out), "--models", str(models["root"]), "--quiet"]) == 1
    assert "--resume" in capsys.readouterr().err                # never overwritten silently
    calls.clear()
    monkeypatch.setattr(seg, "segment_scan", lambda item, *a, **kw: (calls.append(item.name), real(item, *a, **kw))[1])
    assert main(["segment", str(folder), "--out", str(out), "--models", str(models["root"]), "--quiet", "--resume",
                 "--force"]) == 0
    assert calls == ["case_003_0000.nii.gz", "patient_d"]          # only what was not done
    assert "2 from the earlier run" in capsys.readouterr().out
    rows = {r["scan"].split("/")[-1]: r for r in csv.DictReader((out / "batch.csv").open())}
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    assert "holds 2 DICOM series" in rows["patient_d"]["warnings"] and rows["case_003_0000.nii.gz"]["warnings"] == ""
    assert rows["patient_d"]["series_uid"] == "1.2.826.0.1.3680043.10.1.222"
    assert float(rows["patient_d"]["mean_lung_hu"]) < 0


def test_warnings_print_as_one_line_not_a_source_path(models, tmp_path, capsys):
    hu, spacing = _ct(models)
    files = make_dicom_series(tmp_path / "gap", hu, spacing=spacing, reverse_names=False)
    files[len(files) // 2].unlink()                                  # a slice missing: unevenly spaced
    assert main(["segment", str(tmp_path / "gap"), "--out", str(tmp_path / "o"), "--models", str(models["root"]),
                 "--quiet", "--force"]) == 0
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "unevenly spaced" in l)
    assert line.startswith("sscild segment: warning: ") and ".py:" not in err and "UserWarning" not in err


def test_series_uid_reads_one_series_of_a_folder_with_two(models, tmp_path, capsys):
    hu, spacing = _ct(models)
    _two_reconstructions(tmp_path / "s", hu, spacing)
    for uid, kernel in (("1.2.826.0.1.3680043.10.1.111", "B30f"), ("1.2.826.0.1.3680043.10.1.222", "B70f")):
        out = tmp_path / kernel
        assert main(["segment", str(tmp_path / "s"), "--out", str(out), "--models", str(models["root"]),
                     "--quiet", "--force", "--series-uid", uid]) == 0
        assert "warning" not in capsys.readouterr().err
        report = json.loads(next(out.glob("*_report.json")).read_text())
        assert report["acquisition"]["kernel"] == kernel and report["acquisition"]["series_uid"] == uid
        assert not (out / "batch.csv").exists()


# ---------------------------------------------------------------------------------------------
# the loop back from the radiologist, through `sscild segment` itself


def test_segment_then_edit_in_slicer_then_import_gives_the_edited_voxels(models, tmp_path):
    """segment a DICOM series -> edit a segment of its .seg.nrrd (as Slicer saves it) -> import-dicom -> the
    cohort's label map equals the edited one voxel for voxel; its DICOM SEG, unedited, imports as the label map.
    (The few-step test models segment poorly, so the cohort would not pass validation's overlay check; the
    import of well-placed labels validating is tests/test_import_segmentations.py's.)"""
    import nrrd

    from sscild.data.dicom import import_dicom

    hu, spacing = _ct(models)
    make_dicom_series(tmp_path / "dicom" / "p1", hu, spacing=spacing)
    out = tmp_path / "seg"
    assert main(["segment", str(tmp_path / "dicom" / "p1"), "--out", str(out), "--models", str(models["root"]),
                 "--quiet", "--force"]) == 0
    label = np.asarray(load_volume(out / "p1_labels.nii.gz").array)
    assert (label == 1).sum() > 1000
    data, header = nrrd.read(str(out / "p1_labels.seg.nrrd"))
    i, j, k = map(int, header["Segmentation_ReferenceImageExtentOffset"].split())
    edited_box = data.copy()
    normal = np.argwhere(edited_box == 1)
    corner = normal[len(normal) // 2]
    block = tuple(slice(max(0, c - 4), c + 4) for c in corner)
    edited_box[block][edited_box[block] == 1] = 2            # the radiologist calls this normal lung fibrosis
    assert (edited_box != data).sum() > 20
    labels = tmp_path / "labels"
    labels.mkdir()
    nrrd.write(str(labels / "p1.seg.nrrd"), edited_box, header)
    edited = label.copy()
    edited[i:i + data.shape[0], j:j + data.shape[1], k:k + data.shape[2]] = edited_box
    cohort = import_dicom(tmp_path / "dicom", tmp_path / "cohort", labels=labels, progress=False)
    np.testing.assert_array_equal(np.asarray(load_volume(cohort / "labelsTr" / "case_000.nii.gz").array), edited)
    # the DICOM SEG sscild wrote, unedited, comes back as the label map itself
    (labels / "p1.seg.nrrd").unlink()
    (out / "p1_seg.dcm").rename(labels / "p1_seg.dcm")
    cohort2 = import_dicom(tmp_path / "dicom", tmp_path / "cohort2", labels=labels, progress=False)
    np.testing.assert_array_equal(np.asarray(load_volume(cohort2 / "labelsTr" / "case_000.nii.gz").array), label)
