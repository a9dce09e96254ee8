"""`sscild segment`: outputs in the input's geometry, clear errors, real CT end to end, radiological montage."""

from __future__ import annotations

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from cohort_factory import make_dicom_series, make_tiny_cohort
from conftest import shared_data
from sscild.cli import main
from sscild.cohort import load_cohort
from sscild.errors import InputError
from sscild.folds import make_splits, write_splits
from sscild.io import load_volume
from sscild.paths import RunPaths
from sscild.predict import segment_scan
from sscild.preprocess import build_cache
from sscild.train import train_fold


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two smoke-profile fold models trained for a few steps on a 4-patient synthetic cohort."""
    base = tmp_path_factory.mktemp("segment")
    try:
        from sscild.phantom import generate_cohort

        data = generate_cohort(base / "cohort", profile="smoke", n=4, progress=False)
    except ImportError:  # pragma: no cover - older trees without the generator
        data = make_tiny_cohort(base / "cohort", n=4, shape=(64, 56, 12), spacing=(3.6, 3.6, 10.0))
    run = RunPaths(results=base / "results", cohort="cohort", profile="smoke")
    cohort = load_cohort(data)
    build_cache(cohort, run, "smoke", progress=False)
    write_splits(run.splits, make_splits([c.case_id for c in cohort.cases], k=2, seed=0))
    for k in range(2):
        train_fold(run, "smoke", k, iterations=10, progress=False)
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
    report = segment_scan(scan, tmp_path / "out", models=models["root"], progress=False)
    assert sha(scan) == digest  # input untouched
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["patient_labels.itksnap.txt", "patient_labels.nii.gz", "patient_labels.seg.nrrd",
                     "patient_overlay.png", "patient_report.csv", "patient_report.html", "patient_report.json",
                     "patient_zones.csv"]
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
               *flags])
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

    from sscild.plots.segmentation import scan_montage, to_canonical

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
    from sscild.provenance import segment_benchmark_table

    table = segment_benchmark_table()
    assert table is not None, "benchmarks/segment_cpu.json should be in the repository"
    assert "512 x 512 x 300" in table.loc["scan", "value"]
    assert table.loc["wall time, fresh process", "value"].endswith("(target 20.0 s)")
    assert segment_benchmark_table(tmp_path / "absent.json") is None
