"""Out-of-fold scoring: per-case metrics against hand counts, summaries, agreement, the chapter's tables, outputs,
figures."""

from __future__ import annotations

import json
import math
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohort_factory import make_case_arrays
from sscild.analysis import segmentation as ev
from sscild.profiles import get_profile
from sscild.analysis import segmentation_errors as everr
from sscild.analysis import segmentation_summary as evsum
from sscild.book.chapters import segmentation as ch
from sscild.data.cohort import load_cohort
from sscild.data.folds import make_splits, write_splits
from sscild.evaluation.agreement import bland_altman, icc
from sscild.paths import RunPaths

SPACING = (1.5, 1.5, 4.0)
SHAPE = (24, 20, 6)
HU = {0: -1000, 1: -850, 2: -300, 3: -500}  # noise-free: EF and GGO inside the -600..-250 HU band


def _save(path, arr, dtype):
    aff = np.diag([*SPACING, 1.0])
    img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))


def _wrong(ref, kind):
    pred = ref.copy()
    if kind == "ggo_as_ef":
        pred[ref == 3] = 2
    elif kind == "no_lesion":
        pred[ref >= 2] = 1
    return pred


KINDS = {"case_000": "perfect", "case_001": "ggo_as_ef", "case_002": "no_lesion", "case_003": "perfect"}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    root = base / "cohort"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    refs = {}
    for i, cid in enumerate(KINDS):
        _, label = make_case_arrays(SHAPE, seed=i)
        image = np.vectorize(HU.get)(label)
        image[label == 0] = np.where(np.indices(SHAPE)[0][label == 0] % 2, -1000, 40)  # some body, some air
        _save(root / "imagesTr" / f"{cid}_0000.nii.gz", image, np.int16)
        _save(root / "labelsTr" / f"{cid}.nii.gz", label, np.uint8)
        refs[cid] = label
    (root / "dataset.json").write_text(json.dumps({
        "name": "cohort", "channel_names": {"0": "CT"}, "labels": {"background": 0, "normal": 1, "ef": 2, "ggo": 3},
        "numTraining": 4, "file_ending": ".nii.gz", "synthetic": True}))
    cohort = load_cohort(root)
    run = RunPaths(results=base / "results", cohort="cohort", profile="smoke")
    write_splits(run.splits, make_splits(list(KINDS), k=2, seed=0))
    run.predictions.mkdir(parents=True)
    for cid, kind in KINDS.items():
        _save(run.predictions / f"{cid}.nii.gz", _wrong(refs[cid], kind), np.uint8)
    df = ev.evaluate_oof(run, cohort, tolerance_mm=2.0, progress=False)
    return {"run": run, "cohort": cohort, "df": df.set_index("case_id"), "raw": df, "refs": refs}


def test_per_case_metrics_match_hand_counts(scored):
    df, refs = scored["df"], scored["refs"]
    for cid in ("case_000", "case_003"):
        for r in ("normal", "ef", "ggo", "lesion", "lung"):
            assert df.loc[cid, f"dice_{r}"] == pytest.approx(1.0)
        for r in ("ef", "ggo", "lesion"):
            assert df.loc[cid, f"nsd_{r}"] == pytest.approx(1.0)
        assert math.isnan(df.loc[cid, "nsd_lung"])  # not computed for the network's large regions
    n = np.bincount(refs["case_001"].ravel(), minlength=4)
    assert df.loc["case_001", "dice_ggo"] == 0.0                      # reference GGO, none predicted
    assert df.loc["case_001", "dice_ef"] == pytest.approx(2 * n[2] / (2 * n[2] + n[3]))
    assert df.loc["case_001", "dice_lesion"] == pytest.approx(1.0)
    m = np.bincount(refs["case_002"].ravel(), minlength=4)
    assert df.loc["case_002", "dice_lesion"] == 0.0
    assert df.loc["case_002", "dice_normal"] == pytest.approx(2 * m[1] / (2 * m[1] + m[2] + m[3]))
    voxel_ml = np.prod(SPACING) / 1000
    assert df.loc["case_002", "vol_ref_lesion_ml"] == pytest.approx((m[2] + m[3]) * voxel_ml)
    assert df.loc["case_002", "vol_pred_lesion_ml"] == 0.0
    assert df.loc["case_002", "pct_ref_lesion"] == pytest.approx(100 * (m[2] + m[3]) / m[1:].sum())
    assert (df["nsd_tolerance_mm"] == 2.0).all()
    assert list(df["fold"].sort_index()) == [0 if c in make_splits(list(KINDS), k=2, seed=0)[0]["val"] else 1
                                              for c in sorted(KINDS)]


def test_baseline_scores_the_density_band_inside_the_reference_lung(scored):
    df = scored["df"]
    # noise-free EF (-300 HU) and GGO (-500 HU) lie in the band, normal lung (-850 HU) does not
    assert np.allclose(df["baseline_dice_lesion"], 1.0)
    # EF (-300) and GGO (-500) are separable by density here: every fold's fitted cut lies between them
    # (the lowest cut that separates them perfectly), so the split scores 1 on the held-out cases
    assert ((df["baseline_ef_cut_hu"] > -500) & (df["baseline_ef_cut_hu"] < -300)).all()
    assert np.allclose(df["baseline_dice_ef"], 1.0) and np.allclose(df["baseline_dice_ggo"], 1.0)
    assert np.allclose(df["baseline_pct_pred_lesion"], df["pct_ref_lesion"])
    assert not any(c.startswith("baseline_nsd") for c in df.columns)


def test_csv_is_written_and_reads_back(scored):
    back = pd.read_csv(scored["run"].segmentation_metrics, dtype={"case_id": str})
    pd.testing.assert_frame_equal(back, scored["raw"], check_dtype=False)


def test_summary_keys_values_and_json(scored):
    raw = scored["raw"]
    s = evsum.summary_dict(raw, "cohort", True, "smoke", tolerance_mm=2.0,
                        settings={"tta": False, "postprocess": True})
    json.dumps(s, allow_nan=False)  # NaN written as null
    assert s["n_cases"] == 4
    assert s["metrics"]["dice_lesion"]["mean"] == pytest.approx(raw["dice_lesion"].mean())
    assert s["metrics"]["dice_ef"]["mean"] == pytest.approx(raw["dice_ef"].mean())
    assert s["metrics"]["dice_ggo"]["median"] == pytest.approx(raw["dice_ggo"].median())
    assert s["metrics"]["baseline_dice_lesion"]["mean"] == pytest.approx(1.0)
    assert s["policies"]["nsd_tolerance_mm"] == 2.0
    assert s["policies"]["nsd_regions"] == ["ef", "ggo", "lesion"]
    assert "largest" in s["policies"]["postprocess"]
    assert set(s["per_fold"]) == {"0", "1"}
    assert sum(f["n_cases"] for f in s["per_fold"].values()) == 4
    # agreement, percent of lung: predicted lesion % is the reference % except case_002 (0 predicted)
    p = scored["df"].loc["case_002", "pct_ref_lesion"]
    ba = s["agreement"]["network"]["lesion"]["bland_altman"]
    diffs = raw["pct_pred_lesion"] - raw["pct_ref_lesion"]
    assert ba["bias"] == pytest.approx(-p / 4)
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * diffs.std(ddof=1))
    assert s["agreement"]["network"]["lesion"]["icc"]["icc"] == pytest.approx(
        icc(raw["pct_pred_lesion"], raw["pct_ref_lesion"])["icc"])
    assert s["baseline"]["agreement_lesion"]["bland_altman"]["bias"] == pytest.approx(0.0, abs=1e-9)
    assert s["agreement_ml"]["network"]["lesion"]["bland_altman"]["bias"] == pytest.approx(
        bland_altman(raw["vol_pred_lesion_ml"], raw["vol_ref_lesion_ml"])["bias"])


def test_tables(scored):
    raw = scored["raw"]
    s = evsum.summary_dict(raw, "cohort", True, "smoke", n_boot=200)
    folds = evsum.per_fold_table(raw)
    assert list(folds.index) == ["fold 0", "fold 1", "all (mean over cases)"]
    assert folds.loc["all (mean over cases)", "Dice lesion"] == pytest.approx(raw["dice_lesion"].mean())
    assert folds["cases"].iloc[:2].sum() == 4
    table = ch.summary_table(raw, n_boot=200)
    assert table.loc[("Dice", "GGO"), "n (excluded)"] == "4 (0)"
    assert ch.agreement_table(s).shape[0] == 4  # lesion, EF, GGO for the network; lesion for the baseline
    paper = ch.paper_table()
    assert list(paper.columns) == ["published mean Dice", "patients", "validation"]   # no column of this run
    assert len(ch.baseline_table(raw, s)) == 9  # lesion, EF, GGO x (network, baseline, paired difference)
    # the paired difference carries its bootstrap interval (agreement.paired_difference, tested in test_stats)
    from sscild.evaluation.agreement import paired_difference

    d = paired_difference(raw["dice_lesion"], raw["baseline_dice_lesion"], n_resamples=2000, seed=0)
    row = ch.baseline_table(raw, s).loc[("total lesion (EF ∪ GGO)", "network − baseline (paired)")]
    assert row["Dice, mean [95% CI]"] == f"{d['mean_diff']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"
    assert s["baseline"]["paired_difference"]["lesion"]["mean_diff"] == pytest.approx(d["mean_diff"])
    # fixed limits with CIs, and the proportional-bias slope of the regression limits
    agree = ch.agreement_table(s)
    assert {"bias, pp [95% CI]", "lower limit, pp [95% CI]", "bias slope per pp of extent [95% CI]"} <= set(agree.columns)
    fitted = [a for who in ("network", "baseline") for a in s["agreement"][who].values()
              if a["bland_altman_regression"]["slope"] is not None]
    assert fitted and len(ch.regression_limits_table(s)) == 3 * len(fitted)   # three extents per fitted pair


def test_extreme_cases_skip_nan_and_break_ties_by_id():
    df = pd.DataFrame({"case_id": ["a", "b", "c", "d", "e"], "dice_lesion": [0.5, np.nan, 0.9, 0.5, 0.1]})
    assert ev.extreme_cases(df) == {"best": "c", "median": "a", "worst": "e"}


def test_nsd_tolerance_is_one_coarse_voxel_for_the_whole_cohort(scored):
    assert ev.nsd_tolerance_mm(scored["cohort"]) == pytest.approx(1.5 * 1.5)        # native 1.5 mm
    assert ev.nsd_tolerance_mm(scored["cohort"], get_profile("smoke")) == pytest.approx(1.5 * 3.6)  # network grid 3.6 mm


def test_missing_or_misplaced_prediction_is_reported(scored, tmp_path):
    run = RunPaths(results=tmp_path / "results", cohort="cohort", profile="smoke")
    run.root.mkdir(parents=True)
    run.splits.write_text(scored["run"].splits.read_text())
    with pytest.raises(FileNotFoundError, match="predict the held-out cases first"):
        ev.evaluate_oof(run, scored["cohort"], tolerance_mm=2.0, progress=False)
    run.predictions.mkdir()
    for cid in KINDS:
        _save(run.predictions / f"{cid}.nii.gz", np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] + 1)), np.uint8)
    with pytest.raises(ValueError, match="predict again"):
        ev.evaluate_oof(run, scored["cohort"], tolerance_mm=2.0, progress=False)


def test_oof_settings_read_the_manifest(scored, tmp_path):
    run = RunPaths(results=tmp_path, cohort="c", profile="smoke")
    assert ev.oof_settings(run) == {"tta": None, "postprocess": None}
    run.predictions.mkdir(parents=True)
    (run.predictions / "manifest.json").write_text(json.dumps({"cases": {
        "a": {"tta": True, "postprocess": True}, "b": {"tta": False, "postprocess": True}}}))
    assert ev.oof_settings(run) == {"tta": "mixed", "postprocess": True}


def test_figures_draw_without_warnings(scored):
    import matplotlib.pyplot as plt

    from sscild.book.plots import segmentation as sp

    raw, refs = scored["raw"], scored["refs"]
    s = evsum.summary_dict(raw, "cohort", True, "smoke", n_boot=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = [sp.metric_strip(raw, "dice", paper={"lesion": 0.78}), sp.metric_strip(raw, "nsd", tolerance_mm=2.0),
                sp.bland_altman_grid(raw, s), sp.baseline_comparison(raw)]
        cases = []
        for rank, cid in ev.extreme_cases(raw).items():
            image, ref, pred = ev.load_case_maps(scored["run"], scored["cohort"], cid)
            cases.append({"image": image.array, "ref": ref, "pred": pred, "affine": image.affine, "title": rank})
        figs.append(sp.case_montage(cases))
    assert len(figs[-1].axes) == 6 * len(cases)   # CT, reference, prediction; axial and coronal
    for f in figs:
        plt.close(f)


def test_thread_count_does_not_change_the_table(scored):
    one = ev.evaluate_oof(scored["run"], scored["cohort"], tolerance_mm=2.0, workers=1, progress=False)
    two = ev.evaluate_oof(scored["run"], scored["cohort"], tolerance_mm=2.0, workers=3, progress=False)
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(one, scored["raw"])


@pytest.mark.slow
def test_chapter_runs_clean_on_hand_made_predictions(scored, tmp_path):
    """The Segmentation chapter end to end (papermill): no error, nothing on stderr, outputs written."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    import nbformat

    from conftest import REPO
    from sscild.data.folds import fold_of, read_splits
    from sscild.model.inference import POSTPROCESS_RULE

    base = tmp_path / "copy"
    shutil.copytree(scored["run"].results, base / "results")
    shutil.copytree(scored["cohort"].root, base / "cohort")
    run = RunPaths(results=base / "results", cohort="cohort", profile="smoke")
    cases = {}
    for cid, fold in fold_of(read_splits(run.splits)).items():  # stand-in models the manifest vouches for
        model = run.fold_dir(fold) / "model_final.pt"
        model.parent.mkdir(exist_ok=True)
        model.write_bytes(f"fold {fold}".encode())
        cases[cid] = {"fold": fold, "model": f"fold_{fold}/model_final.pt", "tta": False, "postprocess": POSTPROCESS_RULE,
                      "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "cache_key": None}
    (run.predictions / "manifest.json").write_text(json.dumps({"cases": cases}))
    out = tmp_path / "03.ipynb"
    env = dict(os.environ, SSCILD_RESULTS=str(base / "results"))
    proc = subprocess.run([sys.executable, "-m", "sscild.book.runner", str(REPO / "notebooks" / "03_segmentation.py"),
                           str(out), "-p", "profile", "smoke", "-p", "data_dir", str(base / "cohort")],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    stderr = [o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr
    # each figure once: glued (not displayed in its cell) and placed once by a numbered glue:figure with a caption
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 0
    glued = [k for o in outputs for k in o.get("data", {}) if k.endswith("image/png")]
    assert len(glued) == 7  # Dice, NSD, cases, BA, EF/GGO attenuation, baseline, zones
    placed = [o["data"]["text/markdown"] for o in outputs if "{glue:figure}" in o.get("data", {}).get("text/markdown", "")]
    names = sorted(t.split("{glue:figure}")[1].split()[0] for t in placed)
    assert names == sorted(["seg_dice", "seg_nsd", "seg_cases", "seg_bland_altman", "seg_ef_ggo_hu", "seg_baseline",
                            "seg_zones"])
    assert all(":name: fig-" in t and len(t.split("\n\n", 1)[1]) > 40 for t in placed)   # label and caption
    summary = json.loads(run.segmentation_summary.read_text())
    assert summary["n_cases"] == 4 and summary["metrics"]["dice_lesion"]["mean"] is not None
    assert (base / "figures" / "cohort" / "smoke" / "seg_cases.png").exists()


def test_confusion_tables_hand_counted(scored):
    raw, refs = scored["raw"], scored["refs"]
    # case_001 predicts every GGO voxel as EF; case_002 predicts all lesion as normal lung
    conf = everr.confusion_table(raw)
    ggo_total = sum(int((r == 3).sum()) for r in refs.values())
    ef_total = sum(int((r == 2).sum()) for r in refs.values())
    assert conf.loc["reference GGO", "predicted EF"] == pytest.approx(100 * (refs["case_001"] == 3).sum() / ggo_total)
    assert conf.loc["reference EF", "predicted normal lung"] == pytest.approx(100 * (refs["case_002"] == 2).sum() / ef_total)
    assert conf.loc["reference EF", "predicted GGO"] == 0
    assert conf.loc["reference GGO", "reference voxels"] == ggo_total
    assert np.allclose(conf.filter(like="predicted").sum(axis=1), 100)
    per = ch.confusion_per_patient(raw)
    assert per.loc["reference GGO predicted EF", "range, %"] == "0.0 to 100.0"
    assert per.loc["reference GGO predicted EF", "patients"] == 4


def test_worst_cases_name_the_dominant_error(scored):
    raw = scored["raw"]
    w = everr.worst_cases(raw, n=2)
    assert list(w.index)[0] == "case_002"                       # no lesion predicted: Dice 0
    r = w.loc["case_002"]
    assert r["lesion called elsewhere (missed), mL"] == pytest.approx(
        raw.set_index("case_id").loc["case_002", "vol_ref_lesion_ml"])
    assert r["lesion where reference has none (false positive), mL"] == 0
    words = ch.worst_case_words(w)
    assert "case_002" in words and "under-calls" in words
    with pytest.raises(ValueError, match="positive"):
        everr.worst_cases(raw, n=0)


def test_chapter_sections_read_the_run(scored):
    run, cohort, raw = scored["run"], scored["cohort"], scored["raw"]
    worst, words = ch.worst_patients(run, cohort, raw, n=2)
    assert list(worst.index)[0] == "case_002" and "**case_002**" in words and "under-calls" in words
    summary = evsum.summary_dict(raw, "cohort", True, "smoke", tolerance_mm=2.0)
    fig, ovl = ch.attenuation_figure(cohort, raw, summary)
    assert ovl == 0.0 and fig.axes                              # noise-free phantom: EF and GGO apart
    assert ch.baseline_cut_words({"baseline": {}}) == ""
    assert ch.baseline_cut_words({"baseline": {"ef_cut_hu_per_fold": {"0": -420.0, "1": -400.5}}}) == (
        "EF/GGO cut fitted on each fold's training patients (HU): fold 0: -420, fold 1: -400.5.")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_zones_are_written_once_and_read_back_exactly(scored, tmp_path):
    run, cohort = scored["run"], scored["cohort"]
    zones = ev.cohort_zones(run, cohort)
    assert (run.root / ev.ZONE_EXTENT_FILE).is_file()
    assert set(zones["source"]) == {"predicted", "reference"} and zones["case_id"].nunique() == len(KINDS)
    pd.testing.assert_frame_equal(ev.read_cohort_zones(run), zones, check_exact=True)   # every float as computed
    with pytest.raises(FileNotFoundError, match="Segmentation chapter first"):
        ev.read_cohort_zones(RunPaths(results=tmp_path, cohort="cohort", profile="smoke"))


def test_slice_spacing_is_read_from_the_headers(scored):
    assert ev.slice_spacing_mm(scored["cohort"]) == (4.0, 4.0)


def test_error_location_zones_and_medial_share():
    ref = np.zeros((12, 4, 9), np.uint8)
    ref[1:11, :, :] = 1                                    # lung x 1..10, z 0..8
    pred = ref.copy()
    pred[5, :, 0:3] = 2                                    # false positive: medial, lower third
    ref2 = ref.copy()
    ref2[1, :, 7:9] = 3                                    # reference GGO, lateral and apical, missed
    pred2 = pred.copy()
    loc = everr.error_location(ref2, pred2, np.eye(4))
    fp, fn = loc["false_positive"], loc["missed"]
    assert fp["voxels"] == 12 and fp["lower"] == 100.0 and fp["medial"] == 100.0
    assert fn["voxels"] == 8 and fn["upper"] == 100.0 and fn["medial"] == 0.0
    # RAS flip of x (affine with -1) keeps the same answer: reorientation happens first
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert everr.error_location(ref2[::-1], pred2[::-1], flip)["false_positive"]["lower"] == 100.0
    table = pd.DataFrame({"fold": [0], "lesion Dice": [0.2], "reference lesion, % of lung": [5.0],
                          "predicted lesion, % of lung": [9.0]}, index=pd.Index(["c"], name="patient"))
    words = ch.worst_case_words(table, {"c": loc})
    assert "false-positive lesion mostly in the lower zone (100 %)" in words and "medial (beside the heart" in words


def test_label_attenuation_counts_reference_voxels(scored):
    hist = everr.label_attenuation(scored["cohort"], list(KINDS), lo=-1100, hi=200, bin_hu=10)
    refs = scored["refs"]
    assert hist["ef"].sum() == sum(int((r == 2).sum()) for r in refs.values())
    assert hist["ggo"].sum() == sum(int((r == 3).sum()) for r in refs.values())
    # noise-free phantom: EF at -300 HU, GGO at -500 HU, each in a single bin, so no overlap
    assert hist.loc[hist["ef"] > 0, "hu"].tolist() == [-295.0]
    assert hist.loc[hist["ggo"] > 0, "hu"].tolist() == [-495.0]
    assert everr.overlap_coefficient(hist["ef"], hist["ggo"]) == 0.0
    assert everr.overlap_coefficient([2, 2], [1, 1]) == 1.0
    assert np.isnan(everr.overlap_coefficient([0, 0], [1, 1]))
    with pytest.raises(ValueError):
        everr.label_attenuation(scored["cohort"], [], lo=0, hi=0)
