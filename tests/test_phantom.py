"""Tests of the synthetic SSc-ILD cohort generator (sscild.synthetic: phantom, lungfunction, writer) and its figure helper."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from sscild.data.lungmask import lung_mask_by_threshold, parenchyma_stats
from sscild.profiles import get_profile
from sscild.synthetic.lungfunction import CLINICAL_MODEL, clinical_from_extent, simulate_population
from sscild.synthetic.phantom import PhantomCase, generate_case
from sscild.synthetic.writer import CLINICAL_COLUMNS, generate_cohort

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"

# cpu-profile cases with a clear share of fibrosis (used by the separability and lung-likeness tests)
CPU_CASES = (1, 9)


def _dice(a, b):
    s = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / s if s else 1.0


def _threshold_rule(hu, label):
    """Density-mask rule: lesion = lung voxels in [-750, -200] HU; EF vs GGO by the best single HU cut.

    The cut (and its direction) is chosen with the reference labels, i.e. the most favourable cut for
    this case: an upper bound of what any single-threshold rule can do.
    """
    lung = label > 0
    les = lung & (hu >= -750) & (hu <= -200)
    total = _dice(les, label >= 2)
    ef = label == 2
    best = 0.0
    for cut in range(-750, -195, 10):
        for above in (True, False):
            pred = les & ((hu > cut) if above else (hu <= cut))
            best = max(best, _dice(pred, ef))
    return total, best


@pytest.fixture(scope="module")
def cpu_cases():
    return [generate_case(i, profile=get_profile("cpu"), seed=0) for i in CPU_CASES]


@pytest.fixture(scope="module")
def smoke_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "phantom-smoke"
    generate_cohort(out, profile=get_profile("smoke"), progress=False)
    return out


def _hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# the cohort folder
# ---------------------------------------------------------------------------------------------
def test_cohort_layout_and_dataset_json(smoke_cohort):
    import nibabel as nib

    ds = json.loads((smoke_cohort / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "normal": 1, "ef": 2, "ggo": 3}
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["numTraining"] == 8 and ds["file_ending"] == ".nii.gz" and ds["synthetic"] is True
    assert "seed 0" in ds["source"] and "profile smoke" in ds["source"]
    assert ds["phantom"]["n"] == 8 and ds["phantom"]["profile"] == "smoke"
    for i in range(8):
        img = nib.load(smoke_cohort / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        lab = nib.load(smoke_cohort / "labelsTr" / f"case_{i:03d}.nii.gz")
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert img.shape[:2] == (96, 96)
        zooms = img.header.get_zooms()
        assert 0.9 * 3.6 - 1e-6 <= zooms[0] <= 1.1 * 3.6 + 1e-6 and zooms[2] in (8.0, 10.0)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    rows = (smoke_cohort / "clinical.csv").read_text().splitlines()
    assert tuple(rows[0].split(",")) == CLINICAL_COLUMNS
    assert [r.split(",")[0] for r in rows[1:]] == [f"case_{i:03d}" for i in range(8)]
    cells = [r.split(",") for r in rows[1:]]
    assert any(c[CLINICAL_COLUMNS.index("dlco_pct")] == "" for c in cells)  # a few values are missing
    assert all(c[CLINICAL_COLUMNS.index("fvc_pct")] != "" for c in cells)
    assert {c[2] for c in cells} <= {"F", "M"}


def test_same_seed_byte_identical_different_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", profile=get_profile("smoke"), n=2, seed=3, progress=False)
    b = generate_cohort(tmp_path / "b", profile=get_profile("smoke"), n=2, seed=3, progress=False)
    c = generate_cohort(tmp_path / "c", profile=get_profile("smoke"), n=2, seed=4, progress=False)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert ha["imagesTr/case_000_0000.nii.gz"] != hc["imagesTr/case_000_0000.nii.gz"]
    assert ha["clinical.csv"] != hc["clinical.csv"]


def test_rerun_is_noop_and_foreign_folders_are_refused(tmp_path):
    out = generate_cohort(tmp_path / "coh", profile=get_profile("smoke"), n=2, seed=0, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert generate_cohort(out, profile=get_profile("smoke"), n=2, seed=0, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    with pytest.raises(ValueError, match="other settings"):
        generate_cohort(out, profile=get_profile("smoke"), n=2, seed=1, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate_cohort(out, profile=get_profile("smoke"), n=3, seed=0, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("somebody's data")
    with pytest.raises(ValueError, match="not a synthetic phantom cohort"):
        generate_cohort(foreign, profile=get_profile("smoke"), n=1, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="positive integer"):
        generate_cohort(tmp_path / "x", profile=get_profile("smoke"), n=0)
    with pytest.raises(ValueError, match="Unknown profile"):
        get_profile("huge")
    with pytest.raises(TypeError, match="resolved Profile"):       # names are resolved where a run starts
        generate_cohort(tmp_path / "x", profile="smoke")


def test_interrupted_run_is_completed(tmp_path):
    out = generate_cohort(tmp_path / "coh", profile=get_profile("smoke"), n=2, seed=0, progress=False)
    ref = _hashes(out)
    (out / "dataset.json").unlink()  # as if interrupted before the end
    (out / "labelsTr" / "case_001.nii.gz").unlink()
    generate_cohort(out, profile=get_profile("smoke"), n=2, seed=0, progress=False)
    assert _hashes(out) == ref


def test_unlabelled_scans_are_other_patients_and_leave_the_labelled_files_alone(tmp_path):
    """The profile's unlabelled scans go to unlabelledTr/ (images only, other patients); the labelled
    cohort is byte-identical with or without them, and validation finds no copy of a labelled image."""
    from sscild.data.cohort import load_cohort
    from sscild.data.validate import validate_cohort

    prof = get_profile("smoke")
    assert prof.phantom_unlabelled == 2
    withu = generate_cohort(tmp_path / "u", profile=prof, n=3, seed=0, progress=False)
    plain = generate_cohort(tmp_path / "p", profile=prof, n=3, seed=0, unlabelled=0, progress=False)
    hu, hp = _hashes(withu), _hashes(plain)
    assert sorted(k for k in hu if k.startswith("unlabelledTr/")) == ["unlabelledTr/scan_000_0000.nii.gz",
                                                                     "unlabelledTr/scan_001_0000.nii.gz"]
    same = [k for k in hp if k.endswith(".nii.gz") or k.endswith(".csv")]
    assert same and all(hu[k] == hp[k] for k in same)
    assert not (plain / "unlabelledTr").exists() and "unlabelled" not in json.loads((plain / "dataset.json").read_text())["phantom"]
    assert json.loads((withu / "dataset.json").read_text())["phantom"]["unlabelled"] == 2
    assert "scan_000" not in (withu / "clinical.csv").read_text()
    assert list(load_cohort(withu).unlabelled) == ["scan_000", "scan_001"]
    report = validate_cohort(withu)
    assert report.ok and not [p for p in report.problems if str(p.case_id).startswith("unlabelled")]
    with pytest.raises(ValueError, match="other settings"):  # another number of unlabelled scans is another cohort
        generate_cohort(withu, profile=prof, n=3, seed=0, unlabelled=1, progress=False)
    with pytest.raises(ValueError, match="unlabelled must be"):
        generate_cohort(tmp_path / "bad", profile=prof, n=3, unlabelled=-1, progress=False)


# ---------------------------------------------------------------------------------------------
# labels and extents
# ---------------------------------------------------------------------------------------------
def test_generate_case_fields_and_label_sanity():
    case = generate_case(1, profile=get_profile("smoke"), seed=0)
    assert isinstance(case, PhantomCase) and case.case_id == "case_001"
    assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape and case.affine.shape == (4, 4)
    assert set(np.unique(case.label).tolist()) <= {0, 1, 2, 3}
    assert {2, 3} <= set(np.unique(case.label).tolist())
    lung = case.label > 0
    # the lung is where the image is air-like: lesions lie in the lungs seen in the image
    found = ndi.binary_dilation(lung_mask_by_threshold(case.image, case.spacing), iterations=1)
    lesion = case.label >= 2
    assert (lesion & found).sum() >= 0.97 * lesion.sum()
    assert (lung & found).sum() >= 0.95 * lung.sum()
    # both lungs: voxels on both sides of the body's midline, and disease on both sides
    cx = np.nonzero(case.image.max(axis=(1, 2)) > -500)[0]
    mid = int(round(0.5 * (cx[0] + cx[-1])))
    left, right = lung[:mid].sum(), lung[mid:].sum()
    assert min(left, right) > 0.3 * max(left, right)
    assert lesion[:mid].sum() > 0 and lesion[mid:].sum() > 0
    # lower-zone predominance: more lesion in the lower half of the lungs than in the upper half
    zs = np.nonzero(lung.any(axis=(0, 1)))[0]
    zmid = (zs[0] + zs[-1]) // 2
    assert lesion[:, :, :zmid].sum() > lesion[:, :, zmid:].sum()
    # truth matches the labels
    t = case.truth
    assert t["ef_pct"] == pytest.approx(100 * (case.label == 2).sum() / lung.sum())
    assert t["lesion_pct"] == pytest.approx(t["ef_pct"] + t["ggo_pct"])


def test_extents_spread_across_the_cohort(smoke_cohort):
    import csv

    with open(smoke_cohort / "phantom_truth.csv") as fh:
        rows = list(csv.DictReader(fh))
    les = np.array([float(r["lesion_pct"]) for r in rows])
    ef = np.array([float(r["ef_pct"]) for r in rows])
    assert les.min() < 12 and les.max() > 30  # mild and severe patients
    assert (ef > 0).sum() >= 6
    assert np.all(les <= 60)


def test_generate_case_argument_checks():
    with pytest.raises(ValueError, match="case_index"):
        generate_case(-1, profile=get_profile("smoke"))
    with pytest.raises(ValueError, match="seed"):
        generate_case(0, profile=get_profile("smoke"), seed=-2)


# ---------------------------------------------------------------------------------------------
# not trivially separable; looks like lung
# ---------------------------------------------------------------------------------------------
def test_hu_threshold_rule_cannot_find_fibrosis(cpu_cases):
    for case in cpu_cases:
        assert (case.label == 2).sum() > 1000, case.case_id
        total, ef = _threshold_rule(case.image.astype(np.float32), case.label)
        assert ef <= 0.5, f"{case.case_id}: EF Dice of the best single HU cut is {ef:.3f}"
        assert 0.3 <= total <= 0.9, f"{case.case_id}: total lesion Dice of the density mask {total:.3f}"
        # EF's mean attenuation overlaps GGO's; its texture (spread) does not
        ef_hu = case.image[case.label == 2].astype(float)
        ggo_hu = case.image[case.label == 3].astype(float)
        assert abs(ef_hu.mean() - ggo_hu.mean()) < 120
        assert ef_hu.std() > ggo_hu.std()


def _real_at(path, pixel_mm):
    sitk = pytest.importorskip("SimpleITK")
    im = sitk.ReadImage(str(path))
    a = sitk.GetArrayFromImage(im).transpose(2, 1, 0).astype(np.float32)
    sp = im.GetSpacing()
    f = sp[0] / pixel_mm
    a = ndi.zoom(ndi.gaussian_filter(a, (0.42 / f, 0.42 / f, 0)), (f, f, 1.0), order=1)
    return np.rint(a).astype(np.int16), (pixel_mm, pixel_mm, sp[2])


@pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"real CT samples not available ({REAL_CT} is absent)")
def test_phantom_lung_resembles_real_ct(cpu_cases):
    pix = float(np.mean([c.spacing[0] for c in cpu_cases]))
    real = []
    for name in ("chest-ct-1.nrrd", "chest-ct-2.nrrd"):
        hu, sp = _real_at(REAL_CT / name, pix)  # same pixel size as the phantom: same partial volume
        mask = lung_mask_by_threshold(hu, sp)
        assert mask.sum() * np.prod(sp) / 1e6 > 1.5, name  # litres of lung found
        real.append(parenchyma_stats(hu, mask))
    real_median = np.mean([r["median_hu"] for r in real])
    real_vf = np.mean([r["vessel_fraction"] for r in real])
    for case in cpu_cases:
        mask = lung_mask_by_threshold(case.image, case.spacing) & (case.label == 1)
        st = parenchyma_stats(case.image, mask)
        assert abs(st["median_hu"] - real_median) <= 40, (case.case_id, st["median_hu"], real_median)
        # vessel fraction (share of lung voxels above -500 HU): within 2.5 percentage points and a factor 2
        assert abs(st["vessel_fraction"] - real_vf) <= 0.025, (case.case_id, st["vessel_fraction"], real_vf)
        assert 0.5 <= st["vessel_fraction"] / real_vf <= 2.0
        assert 40 <= st["iqr_hu"] <= 160


# ---------------------------------------------------------------------------------------------
# lung mask and statistics on hand-made volumes
# ---------------------------------------------------------------------------------------------
def _toy_chest():
    hu = np.full((60, 60, 12), -1000, np.int16)
    yy, xx = np.mgrid[:60, :60]
    body = ((xx - 30) / 27.0) ** 2 + ((yy - 30) / 22.0) ** 2 < 1
    hu[body] = 40
    hu[12:27, 18:42, :] = -850  # right lung
    hu[33:48, 18:42, :] = -850  # left lung
    hu[20, 30, :] = 40  # a vessel inside a lung
    hu[29:32, 24:27, 6:] = -1000  # trachea, upper half only
    return hu


def test_lung_mask_by_threshold_on_toy_chest():
    hu = _toy_chest()
    m = lung_mask_by_threshold(hu, (2.0, 2.0, 5.0))
    expect = np.zeros_like(m)
    expect[12:27, 18:42, :] = True
    expect[33:48, 18:42, :] = True
    assert np.array_equal(m, expect)  # vessel filled in, trachea and outside air left out


def test_parenchyma_stats_hand_computed():
    hu = np.array([[-900, -860], [-840, -100]], np.int16)
    m = np.array([[True, True], [True, True]])
    st = parenchyma_stats(hu, m)
    assert st["n_voxels"] == 4
    assert st["median_hu"] == -850.0
    assert st["vessel_fraction"] == 0.25
    assert st["mean_hu"] == pytest.approx(-675.0)
    empty = parenchyma_stats(hu, np.zeros_like(m))
    assert empty["n_voxels"] == 0 and np.isnan(empty["median_hu"])
    with pytest.raises(ValueError, match="shape"):
        parenchyma_stats(hu, m[:1])


# ---------------------------------------------------------------------------------------------
# the planted clinical model
# ---------------------------------------------------------------------------------------------
def test_planted_clinical_model_population():
    df = simulate_population(5000, seed=0)
    rho_fvc = spearmanr(df["lesion_pct"], df["fvc_pct"])[0]
    assert -0.68 <= rho_fvc <= -0.52
    assert spearmanr(df["lesion_pct"], df["dlco_pct"])[0] < -0.4
    assert spearmanr(df["lesion_pct"], df["fev1_pct"])[0] < -0.3
    assert spearmanr(df["lesion_pct"], df["fev1_fvc"])[0] > -0.05  # restriction: ratio preserved
    assert df["lesion_pct"].min() < 3 and df["lesion_pct"].max() > 45
    assert (df["sex"] == "F").mean() > 0.7


def test_clinical_model_direction_and_constants():
    rng = np.random.default_rng(0)
    ef = np.zeros(20000)
    mild = clinical_from_extent(ef, ef, 50.0, rng)
    severe = clinical_from_extent(ef + 20, ef + 20, 50.0, np.random.default_rng(0))
    # with the same noise, 20 % EF + 20 % GGO lowers FVC by (0.90 + 0.40) * 20 (before clipping)
    assert np.median(mild["fvc_pct"] - severe["fvc_pct"]) == pytest.approx(26.0, abs=0.01)
    assert np.median(mild["dlco_pct"] - severe["dlco_pct"]) == pytest.approx(33.0, abs=0.01)
    assert np.median(severe["fev1_fvc"] - mild["fev1_fvc"]) == pytest.approx(2.0, abs=0.01)
    for key in ("fvc_pct", "fev1_pct", "fev1_fvc", "dlco_pct"):
        assert "equation" in CLINICAL_MODEL[key]


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def test_figures_render(tmp_path):
    from sscild.book.plots.phantom import phantom_gallery, phantom_vs_real

    case = generate_case(0, profile=get_profile("smoke"))
    fig = phantom_vs_real(case.image, case.spacing, case.image[::-1, ::-1], case.spacing, real_orientation="LPS")
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "vs.png")
    fig2 = phantom_gallery(case)
    fig2.savefig(tmp_path / "gallery.png")
    assert (tmp_path / "vs.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="orientation"):
        phantom_vs_real(case.image, case.spacing, case.image, case.spacing, real_orientation="XYZ")
