"""Tests of sscild.analysis.clinical, its tables and sentences (sscild.book.chapters.clinical), its figures and
the Clinical correlation chapter, on a small fake run.

The fake run has 30 segmented cases. Lung function is a strictly decreasing function of the
*reference* lesion percent (so the reference rho is exactly -1) with known missing values, one
segmented case has no clinical row and one clinical row has no segmentation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from sscild.analysis import clinical as clin  # noqa: E402
from sscild.analysis.clinical_inputs import load_clinical  # noqa: E402
from sscild.book.chapters import clinical as ch  # noqa: E402
from sscild.numfmt import fmt_p  # noqa: E402
from sscild.evaluation.stats import holm  # noqa: E402
from sscild.paths import RunPaths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N = 30
NO_CLINICAL = "case_029"          # segmented, absent from clinical.csv
MISSING = {"fvc_pct": [0, 1], "fev1_pct": [2], "fev1_fvc": [3, 4, 5], "dlco_pct": [0, 6]}
MISSING_AGE = [7]
# patients with a value, by hand: 30 segmented - 1 without a clinical row - the blanked ones
EXPECTED_N = {"fvc_pct": 27, "fev1_pct": 28, "fev1_fvc": 26, "dlco_pct": 27}


def _seg_rows(n=N, *, pred_equals_ref=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lung_ref = float(rng.uniform(3500, 6000))
        lung_pred = lung_ref * float(rng.uniform(0.95, 1.05))
        ef_ref = lung_ref * (1.0 + 1.4 * i) / 100.0  # ef + ggo = (1.5 + 1.5 i) % of lung, distinct
        ggo_ref = lung_ref * (0.5 + 0.1 * i) / 100.0
        if pred_equals_ref:
            lung_pred, ef_pred, ggo_pred = lung_ref, ef_ref, ggo_ref
        else:
            ef_pred = ef_ref * float(rng.uniform(0.6, 1.4))
            ggo_pred = ggo_ref * float(rng.uniform(0.6, 1.4))
        row = {"case_id": f"case_{i:03d}", "fold": i % 4}
        for tag, lung, ef, ggo in (("ref", lung_ref, ef_ref, ggo_ref), ("pred", lung_pred, ef_pred, ggo_pred)):
            vols = {"ef": ef, "ggo": ggo, "lesion": ef + ggo, "normal": lung - ef - ggo, "lung": lung}
            for region, v in vols.items():
                row[f"vol_{tag}_{region}_ml"] = v
                if region != "lung":
                    row[f"pct_{tag}_{region}"] = 100.0 * v / lung
        row["dice_lesion"] = 0.8
        rows.append(row)
    return pd.DataFrame(rows)


def _clinical_rows(seg: pd.DataFrame) -> pd.DataFrame:
    lesion = seg["pct_ref_lesion"].to_numpy()
    clin_df = pd.DataFrame({
        "case_id": seg["case_id"],
        "age": 40.0 + (np.arange(len(seg)) * 7) % 31,
        "sex": ["F" if i % 3 else "M" for i in range(len(seg))],
        "height_cm": 150.0 + (np.arange(len(seg)) * 11) % 37,
        "fvc_pct": 110.0 - 1.2 * lesion,
        "fev1_pct": 105.0 - 1.0 * lesion,
        "fev1_fvc": 0.70 + 0.004 * lesion,   # rises with restriction
        "dlco_pct": 95.0 - 1.5 * lesion,
    })
    for col, idx in MISSING.items():
        clin_df.loc[idx, col] = np.nan
    clin_df.loc[MISSING_AGE, "age"] = np.nan
    clin_df = clin_df[clin_df["case_id"] != NO_CLINICAL]
    extra = clin_df.iloc[[0]].copy()
    extra["case_id"] = "case_999"      # a clinical row without segmentation
    return pd.concat([clin_df, extra], ignore_index=True)


def make_fake_run(tmp_path: Path, *, pred_equals_ref=False, profile="smoke"):
    """A cohort folder (dataset.json + clinical.csv) and its run's segmentation_metrics.csv."""
    cohort = tmp_path / "cohortX"
    cohort.mkdir()
    seg = _seg_rows(pred_equals_ref=pred_equals_ref)
    (cohort / "dataset.json").write_text(json.dumps({
        "name": "cohortX", "labels": {"background": 0, "normal": 1, "ef": 2, "ggo": 3}, "synthetic": True,
        "numTraining": N, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    _clinical_rows(seg).to_csv(cohort / "clinical.csv", index=False, na_rep="")
    run = RunPaths.for_run(cohort, profile, tmp_path / "results")
    run.root.mkdir(parents=True)
    seg.to_csv(run.segmentation_metrics, index=False)
    return cohort, run


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    cohort, run = make_fake_run(tmp_path_factory.mktemp("fake"))
    seg = clin.load_segmentation_metrics(run.segmentation_metrics)
    table = clin.join_tables(seg, load_clinical(cohort))
    full = clin.clinical_correlations(table, seed=0, n_resamples=300)
    return cohort, run, seg, table, full


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def test_load_clinical_coerces_markers_and_codes_and_never_rescales(tmp_path):
    (tmp_path / "clinical.csv").write_text(
        "case_id,age,sex,fvc_pct,fev1_fvc,smoker\n"
        " a ,51,female,80.5,81.0,no\n"
        "b,NA,m, n/a ,0.9,yes\n"
        "c,,F,-,,\n"
    )
    t = load_clinical(tmp_path)
    assert t.index.tolist() == ["a", "b", "c"]
    assert t["sex"].tolist() == ["F", "M", "F"]
    assert t["fvc_pct"].dtype == float and t.loc["a", "fvc_pct"] == 80.5
    assert t[["age", "fvc_pct"]].isna().sum().tolist() == [2, 2]
    # FEV1/FVC is a ratio: 81.0 (a percent) is set aside and listed, never divided by 100
    assert math.isnan(t.loc["a", "fev1_fvc"]) and t.loc["b", "fev1_fvc"] == 0.9
    assert len(t.attrs["problems"]) == 1 and "fev1_fvc = 81.0 for case a" in t.attrs["problems"][0]
    assert t.attrs["notes"] == []
    assert t.loc["b", "smoker"] == "yes"           # other columns kept as text


BAD_TABLE = (
    "case_id,sex,fvc_pct,dlco_pct\n"
    "a,F,80,50\n"
    "a,M,70,60\n"
    "b,X,eighty,55\n"
    "c,F,75,450\n"
    "d,M,66,40\n"
)


def test_load_clinical_sets_unusable_values_missing_and_lists_them(tmp_path):
    (tmp_path / "clinical.csv").write_text(BAD_TABLE)
    t = load_clinical(tmp_path)
    assert t.index.tolist() == ["b", "c", "d"]               # both rows of the duplicated case dropped
    assert math.isnan(t.loc["b", "fvc_pct"]) and pd.isna(t.loc["b", "sex"])
    assert math.isnan(t.loc["c", "dlco_pct"]) and t.loc["d", "dlco_pct"] == 40.0
    assert len(t.attrs["problems"]) == 4
    assert [any(f"case {c}" in p for p in t.attrs["problems"]) for c in "abc"] == [True] * 3


def test_load_clinical_strict_reports_every_problem_at_once(tmp_path):
    (tmp_path / "clinical.csv").write_text(BAD_TABLE)
    with pytest.raises(ValueError) as err:
        load_clinical(tmp_path, strict=True)
    msg = str(err.value)
    assert "clinical.csv" in msg
    assert "2 rows for case a" in msg
    assert "'eighty' for case b" in msg
    assert "'X' for case b" in msg
    assert "dlco_pct = 450 for case c" in msg and "10..200" in msg


def test_missing_inputs_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="clinical.csv"):
        load_clinical(tmp_path)
    with pytest.raises(FileNotFoundError, match="make evaluate"):
        clin.load_segmentation_metrics(tmp_path / "segmentation_metrics.csv")
    _seg_rows(4).drop(columns=["pct_pred_ggo"]).to_csv(tmp_path / "seg.csv", index=False)
    with pytest.raises(ValueError, match="pct_pred_ggo"):
        clin.load_segmentation_metrics(tmp_path / "seg.csv")


def test_join_keeps_segmented_cases_and_availability_counts(fake):
    _, _, seg, table, _ = fake
    assert len(table) == N and "case_999" not in table.index
    assert table.loc[NO_CLINICAL, ["fvc_pct", "dlco_pct"]].isna().all()
    avail = clin.availability(seg, load_clinical(fake[0]))["patients"]
    assert avail["segmented (out-of-fold)"] == N
    assert avail["with a clinical row"] == N - 1
    assert avail["clinical rows without segmentation"] == 1
    assert avail["with FVC (% pred)"] == EXPECTED_N["fvc_pct"]
    assert avail["with age"] == N - 1 - len(MISSING_AGE)


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------


def test_grid_is_complete_with_n_in_every_cell(fake):
    _, _, _, table, full = fake
    assert len(full) == 2 * 6 * 4
    assert set(full["source"]) == {"predicted", "reference"}
    assert full.groupby(["source", "measure", "unit", "outcome"]).size().eq(1).all()
    assert full[["n", "rho", "p", "ci_low", "ci_high", "p_holm", "partial_rho", "partial_n"]].notna().all().all()
    for outcome, n in EXPECTED_N.items():
        assert (full.loc[full["outcome"] == outcome, "n"] == n).all()
    # partial: also drops the case without age
    fvc = full[full["outcome"] == "fvc_pct"]
    assert (fvc["partial_n"] == EXPECTED_N["fvc_pct"] - 1).all()
    assert (full["partial_covariates"] == "age+sex+height_cm").all()
    assert (full["p_holm"] >= full["p"] - 1e-15).all()


def test_reference_rho_is_exact_for_planted_monotone_relations(fake):
    full = fake[4]
    ref = full[(full["source"] == "reference") & (full["measure"] == "lesion") & (full["unit"] == "pct")]
    got = ref.set_index("outcome")["rho"]
    assert got["fvc_pct"] == pytest.approx(-1.0)
    assert got["dlco_pct"] == pytest.approx(-1.0)
    assert got["fev1_fvc"] == pytest.approx(1.0)
    # the model's noisy volumes keep the sign but not the perfect rank agreement
    pred = full[(full["source"] == "predicted") & (full["measure"] == "lesion") & (full["unit"] == "pct")]
    assert (pred.set_index("outcome").loc[["fvc_pct", "dlco_pct"], "rho"] < -0.5).all()
    assert (pred["diff"] > 0).loc[pred["outcome"] == "fvc_pct"].all()


def test_difference_is_zero_when_prediction_equals_reference(tmp_path):
    cohort, run = make_fake_run(tmp_path, pred_equals_ref=True)
    table = clin.join_tables(clin.load_segmentation_metrics(run.segmentation_metrics), load_clinical(cohort))
    full = clin.clinical_correlations(table, seed=1, n_resamples=200)
    pred = full[full["source"] == "predicted"]
    assert (pred["diff"] == 0).all()
    assert (pred["diff_ci_low"] == 0).all() and (pred["diff_ci_high"] == 0).all()
    ref = full[full["source"] == "reference"].reset_index(drop=True)
    assert np.allclose(pred["rho"].to_numpy(), ref["rho"].to_numpy())
    assert full.loc[full["source"] == "reference", "diff"].isna().all()


def test_grid_without_covariates_or_outcomes(fake):
    table = fake[3]
    full = clin.clinical_correlations(table[[c for c in table if c not in ("age", "sex", "height_cm", "dlco_pct")]],
                                      n_resamples=100)
    assert len(full) == 2 * 6 * 3
    assert (full["partial_rho"] == full["rho"]).all() and (full["partial_covariates"] == "none").all()
    with pytest.raises(ValueError, match="No lung-function column"):
        clin.clinical_correlations(table.drop(columns=list(clin.OUTCOMES)))


def test_display_tables_have_one_row_per_cell(fake):
    full = fake[4]
    side = ch.side_by_side(full)
    assert side.shape == (24, 5)
    assert side.index.names == ["lung function", "lesion measure"]
    cell = side.loc[("FVC (% pred)", "total lesion, % of lung")]
    assert cell["n"] == EXPECTED_N["fvc_pct"] and cell["reference ρ [95% CI]"].startswith("-1.00")
    assert ch.p_value_table(full).shape == (24, 4)
    assert ch.partial_table(full).shape == (24, 7)
    assert "predicted partial ρ [95% CI]" in ch.partial_table(full).columns
    assert [fmt_p(v) for v in (0.0004, 0.0123, 0.43, float("nan"))] == ["<0.001", "0.012", "0.43", "n/a"]


def test_sentences_follow_the_numbers(fake):
    full = fake[4]
    words = ch.paper_contrast(full).splitlines()          # as for a real cohort
    assert len(words) == 2
    assert "FEV1 (% pred)" in words[0] and "% of lung" in words[0] and "the same sign as the published -0.64" in words[0]
    # planted FEV1/FVC rises with lesion: opposite to the paper's negative rho, far outside its interval
    assert "the opposite sign to the published -0.73" in words[1] and "outside" in words[1]
    assert all("not replication" in w for w in words)
    from sscild.evaluation.stats import detectable_rho
    n = int(ch.grid_cell(full, "predicted", "lesion", "pct", "fev1_pct")["n"])
    lo, hi = detectable_rho(-0.64, n)
    assert f"below {lo:.2f} or above {hi:.2f}" in words[0] and "80% power" in words[1]
    synthetic = ch.paper_contrast(full, synthetic=True)
    assert "set by the generator" in synthetic and "inside" not in synthetic and "outside" not in synthetic
    text = ch.interpretation(full)
    assert text.count("\n") == 3 and "weaker than the reference's" in text   # reference rho is exactly -1


# ----------------------------------------------------------------------------------------------
# staging, summary, files
# ----------------------------------------------------------------------------------------------


def test_staging_hand_computed():
    table = pd.DataFrame({"pct_ref_lesion": [5.0, 25.0, 30.0, 19.0, 21.0, np.nan],
                          "pct_pred_lesion": [6.0, 24.0, 15.0, 22.0, 40.0, 10.0]},
                         index=[f"c{i}" for i in range(6)])
    s = clin.staging(table, n_resamples=100)
    # reference limited: c0, c3; extensive: c1, c2, c4; predicted limited: c0, c2; extensive: c1, c3, c4
    assert s["table"].loc["limited"].tolist() == [1, 1]
    assert s["table"].loc["extensive"].tolist() == [1, 2]
    assert s["n"] == 5 and s["percent_agreement"] == pytest.approx(60.0)
    # po = 0.6, pe = 0.4 * 0.4 + 0.6 * 0.6 = 0.52, kappa = 0.08 / 0.48
    assert s["kappa"] == pytest.approx(1 / 6)
    assert s["display"].loc["total", "total"] == 5
    assert pd.isna(s["stages"].loc["c5", "stage_ref"]) and s["stages"].loc["c5", "stage_pred"] == "limited"


def test_summary_json_has_the_key_numbers(fake, tmp_path):
    cohort, run, seg, table, full = fake
    stage = clin.staging(table, n_resamples=100)
    summary = clin.summary_dict(full, stage, cohort="cohortX", synthetic=True, profile="smoke",
                                n_cases=len(seg), seed=0, n_resamples=300)
    out = RunPaths(results=tmp_path / "r", cohort="cohortX", profile="smoke")
    csv_path, json_path = clin.write_outputs(out, full, summary)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(json_path.read_text(), parse_constant=no_nan)
    for key in ("predicted_lesion_pct", "reference_lesion_pct"):
        assert set(data[key]) == {"fev1_pct", "fev1_fvc", "fvc_pct", "dlco_pct"}
        for cell in data[key].values():
            assert {"rho", "ci_low", "ci_high", "p", "p_holm", "n"} <= set(cell)
    assert data["predicted_lesion_pct"]["fvc_pct"]["n"] == EXPECTED_N["fvc_pct"]
    assert {"diff", "diff_ci_low", "diff_ci_high"} <= set(data["predicted_lesion_pct"]["fev1_pct"])
    assert {"kappa", "ci_low", "ci_high", "n", "table", "threshold_pct"} <= set(data["staging"])
    assert data["staging"]["threshold_pct"] == 20.0
    assert data["reference_lesion_pct"]["fvc_pct"]["rho"] == pytest.approx(-1.0)
    back = pd.read_csv(csv_path)
    assert len(back) == 48 and {"partial_rho", "diff", "p_holm", "source"} <= set(back.columns)
    assert not list(csv_path.parent.glob(".*.tmp*"))


def test_planted_model_only_for_synthetic_cohorts():
    assert ch.planted_model(False) is None
    md = ch.planted_model_markdown({
        "description": "planted on purpose",
        "fvc_pct": {"equation": "98 - 0.9*EF", "noise_sd": 11.0},
        "missing": {"dlco_pct": 0.1, "odd": float("nan")},
    })
    assert md.startswith("planted on purpose")
    assert "| FVC (% pred) | `98 - 0.9*EF` | 11.0 |" in md
    # every other setting as a table, not a raw JSON dump
    assert "```" not in md and "| missing | dlco_pct: 0.1; odd: null |" in md
    assert "98 - 0.9" not in md.split("Other settings")[1]


def test_figures_draw_on_the_fake_run(fake):
    from sscild.book.plots.clinical import pft_scatter, rho_heatmap, staging_scatter

    _, _, _, table, full = fake
    fig = pft_scatter(table, full)
    assert sum(ax.get_visible() for ax in fig.axes) == 4
    title = fig.axes[0].get_title(loc="left")
    assert title.startswith("ρ = ") and f"n = {EXPECTED_N['fvc_pct']}" in title
    assert "paper" not in fig.axes[1].get_title(loc="left")      # published values are shown apart, not in panels
    # one adjusted p per primary endpoint: the panel shows the endpoints table's (Holm over the primary pair)
    ends = clin.endpoints(full).set_index("outcome")
    titles = {ax.get_title(loc="left") for ax in fig.axes}
    for o in ("fev1_pct", "fev1_fvc"):
        want = f"adjusted {fmt_p(ends.loc[o, 'p_holm'])}: primary endpoint; Holm over the primary pair"
        assert any(want in t for t in titles), (o, want, titles)
    assert sum("Holm over the grid" in t for t in titles) == 2                  # FVC and DLCO
    assert len(rho_heatmap(full).axes) == 4          # three panels and one colour bar
    assert staging_scatter(clin.staging(table, n_resamples=50)).axes[0].get_title().startswith("Extent stage")
    import matplotlib.pyplot as plt

    plt.close("all")


# ----------------------------------------------------------------------------------------------
# the chapter, end to end
# ----------------------------------------------------------------------------------------------


def test_chapter_runs_end_to_end_on_the_fake_run(tmp_path, monkeypatch):
    from sscild.book.runner import run_notebook

    cohort, run = make_fake_run(tmp_path)
    monkeypatch.setenv("SSCILD_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = run_notebook(REPO / "notebooks" / "04_clinical.py", tmp_path / "nb" / "04.ipynb",
                       parameters={"profile": "smoke", "data_dir": str(cohort)}, cwd=tmp_path)
    text = out.read_text()
    assert "planted by the synthetic-cohort generator" in text
    nb = json.loads(text)
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if "image/png" in o.get("data", {})]           # nothing shown twice
    glued = [k for o in outputs for k in o.get("data", {}) if k.endswith("image/png")]
    md = ["".join(o.get("data", {}).get("text/markdown", "")) for o in outputs]
    placed = [t for t in md if "{glue:figure}" in t]
    assert len(glued) == 3 and len(placed) == 3                                      # each figure once, numbered
    assert "```json" not in text
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream"
                and o.get("name") == "stderr"]
    summary = json.loads(run.clinical_summary.read_text())
    assert summary["cohort"] == "cohortX" and summary["n_cases"] == N
    assert summary["reference_lesion_pct"]["fvc_pct"]["rho"] == pytest.approx(-1.0)
    assert len(pd.read_csv(run.clinical_correlations)) == 48
    for name in ("clinical_rho_heatmap", "clinical_scatter_lesion_pct", "clinical_staging"):
        assert (run.figures / f"{name}.png").stat().st_size > 10_000
    assert not math.isnan(summary["staging"]["kappa"])


def test_zone_correlations_read_the_zones_the_segmentation_chapter_wrote(tmp_path):
    from sscild.analysis.segmentation import ZONE_EXTENT_FILE
    from sscild.clinic.zones import zone_correlations

    cohort, run = make_fake_run(tmp_path)
    clinical = load_clinical(cohort)
    assert ch.zone_correlation_table(run, cohort, clinical, seed=0) is None     # no label maps, no predictions
    (cohort / "labelsTr").mkdir()
    run.predictions.mkdir()
    with pytest.raises(FileNotFoundError, match="Segmentation chapter first"):
        ch.zone_correlation_table(run, cohort, clinical, seed=0)
    rng = np.random.default_rng(1)
    ids = [f"case_{i:03d}" for i in range(N)]
    zones = pd.DataFrame([{"case_id": cid, "source": "predicted", "zone": zone, "lesion_pct": rng.uniform(0, 40) / 3,
                           "ef_pct": rng.uniform(0, 20) / 7}
                          for cid in ids for zone in ("whole lung", "lower", "peripheral")])
    zones.to_csv(run.root / ZONE_EXTENT_FILE, index=False)
    got = ch.zone_correlation_table(run, cohort, clinical, seed=0)
    pd.testing.assert_frame_equal(got, zone_correlations(zones, clinical, n_resamples=clin.N_RESAMPLES, seed=0),
                                  check_exact=True)
    assert len(got) == 10


def test_primary_endpoint_is_named_and_holm_adjusted_as_a_pair(fake):
    full = fake[4]
    e = clin.endpoints(full)
    prim = e[e["role"] == "primary"]
    assert list(prim["outcome"]) == ["fev1_pct", "fev1_fvc"] and (e["role"].iloc[:2] == "primary").all()
    assert np.allclose(prim["p_holm"], holm(prim["p"].to_numpy()))        # family of two
    sec = e[e["role"] == "secondary"].set_index("outcome")
    grid = full[(full["source"] == "predicted") & (full["measure"] == "lesion") & (full["unit"] == "pct")]
    assert np.allclose(sec["p_holm"], grid.set_index("outcome").loc[sec.index, "p_holm"])   # whole grid
    t = ch.endpoints_table(full)
    assert t.index.get_level_values(0).tolist()[:2] == ["primary", "primary"]
    assert list(ch.paper_comparison().columns) == ["published ρ", "p", "patients", "lesion measure"]


def test_partial_correlations_have_bootstrap_intervals(fake):
    full = fake[4]
    ok = full["partial_rho"].notna()
    assert ok.any()
    inside = (full.loc[ok, "partial_ci_low"] <= full.loc[ok, "partial_rho"] + 1e-12) & (
        full.loc[ok, "partial_rho"] <= full.loc[ok, "partial_ci_high"] + 1e-12)
    assert inside.all()


def test_planted_target_is_set_beside_what_was_recovered(fake):
    full = fake[4]
    text = ch.planted_vs_recovered(full, {"target_spearman_extent_fvc": -0.6})
    ref = full[(full["source"] == "reference") & (full["measure"] == "lesion") & (full["unit"] == "pct")
               & (full["outcome"] == "fvc_pct")].iloc[0]
    assert "ρ = -0.60" in text and f"ρ = {ref['rho']:.2f}" in text and "says nothing" in text
    pred = full[(full["source"] == "predicted") & (full["measure"] == "lesion") & (full["unit"] == "pct")
                & (full["outcome"] == "fvc_pct")].iloc[0]
    hit = lambda c, t: c["ci_low"] <= t <= c["ci_high"]  # noqa: E731
    for target in (-0.6, float(ref["rho"]), 0.99):
        text = ch.planted_vs_recovered(full, {"target_spearman_extent_fvc": target})
        if hit(ref, target) and hit(pred, target):
            assert "kept the planted relationship" in text
        elif hit(ref, target):
            assert "lost part of the planted relationship" in text
        else:
            assert "does not include the target either" in text
    assert ch.planted_vs_recovered(full, None) == "" and ch.planted_vs_recovered(full, {}) == ""


def test_staging_accuracy_and_the_cutoff_band(tmp_path):
    table = pd.DataFrame({"pct_ref_lesion": [5.0, 30.0, 25.0, 12.0, 40.0], "pct_pred_lesion": [8.0, 26.0, 15.0, 22.0, 45.0]})
    stage = clin.staging(table, n_resamples=50)
    t = ch.staging_accuracy_table(stage)
    assert t.loc["sensitivity (extensive found)", "patients"] == "2 of 3"        # 30 and 40 found, 25 missed
    assert t.loc["specificity (limited kept limited)", "patients"] == "1 of 2"   # 12 called 22
    summary = {"agreement": {"network": {"lesion": {"bland_altman": {"loa_low": -6.0, "loa_high": 8.0}}}}}
    words = ch.cutoff_band_words(stage, summary)
    assert "between 14.0 and 28.0 %" in words and "**3 of 5**" in words           # 15, 22, 26
    assert "not computed" in ch.cutoff_band_words(stage, tmp_path / "absent.json")
