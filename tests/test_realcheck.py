"""The real-CT lung check: the network's lung field against the classical mask."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from cohort_factory import prepare_run
from sscild.profiles import get_profile
from sscild.data.nifti_writer import save_volume
from sscild.synthetic.phantom import generate_case
from sscild.synthetic.writer import generate_cohort
from sscild.analysis.realcheck import _dice, list_volumes, real_lung_check


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("realcheck")
    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=4, progress=False)
    run, _ = prepare_run(data, base / "results", iterations=10)
    return run.root


def test_dice_hand_cases():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert _dice(a, a) == 1.0
    assert _dice(a, b) == pytest.approx(0.5)
    assert np.isnan(_dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_list_volumes_takes_volume_files_only(tmp_path):
    for name in ("a.nrrd", "b.nii.gz", "c.mha", "notes.txt", "d.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series").mkdir()
    assert [p.name for p in list_volumes(tmp_path)] == ["a.nrrd", "b.nii.gz", "c.mha"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_volumes(tmp_path / "absent")


def test_check_on_a_synthetic_scan_is_self_consistent(models, tmp_path):
    case = generate_case(5, profile=get_profile("smoke"))
    scan = tmp_path / "scan.nii.gz"
    save_volume(scan, case.image, case.affine)
    table, views = real_lung_check([scan], models)
    row = table.iloc[0]
    assert row["scan"] == "scan.nii.gz" and row["models"] == 2
    assert 0.0 <= row["lung_dice"] <= 1.0
    # classical = network - extra + missed (each rounded to 0.1 mL)
    assert row["classical_lung_ml"] == pytest.approx(row["network_lung_ml"] - row["extra_ml"] + row["missed_ml"], abs=0.3)
    assert 0.0 <= row["lesion_pct_of_lung"] == pytest.approx(row["ef_pct_of_lung"] + row["ggo_pct_of_lung"], abs=0.02)
    v = views["scan.nii.gz"]
    assert v["label"].shape == case.image.shape and v["classical"].dtype == bool
    from sscild.book.plots.realct import lung_check_overlays

    fig = lung_check_overlays(views, table)
    assert len(fig.axes) == 6


def test_real_ct_volume(models):
    folder = shared_data("real-ct")
    table, _ = real_lung_check(list_volumes(folder)[:1], models, tta=False)
    assert table.iloc[0]["classical_lung_ml"] > 1500      # an adult's lungs, found without training


def test_book_takes_the_real_ct_chapter_or_a_placeholder(tmp_path):
    import nbformat

    from sscild.book.build import REAL_CT, assemble
    from sscild.paths import repo_root

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    assemble(repo_root() / "book", tmp_path / "book1", nbs)
    assert (tmp_path / "book1" / "chapters" / f"{REAL_CT}.md").exists()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(nb, nbs / f"{REAL_CT}.ipynb")
    assemble(repo_root() / "book", tmp_path / "book2", nbs)
    assert (tmp_path / "book2" / "chapters" / f"{REAL_CT}.ipynb").exists()
    assert not (tmp_path / "book2" / "chapters" / f"{REAL_CT}.md").exists()


def test_robustness_rows_and_the_network_alone(models, tmp_path):
    from sscild.analysis.robustness import family, robustness_check

    case = generate_case(5, profile=get_profile("smoke"))
    scan = tmp_path / "scan.nii.gz"
    save_volume(scan, case.image, case.affine)
    pick = [c for c in family(case.spacing) if c.name in ("unchanged", "lung -70 HU", "sharp kernel, noise 40 HU")]
    table, views = robustness_check([scan], models, changes=pick, progress=False)
    assert list(table["change"]) == ["unchanged", "lung -70 HU", "sharp kernel, noise 40 HU"]
    ref = table.iloc[0]
    assert ref["lung_change_pct"] == 0.0 and ref["network_lung_change_pct"] == 0.0
    for _, r in table.iterrows():
        assert r["network_lung_ml"] <= r["lung_ml"] + 0.05  # the completion only adds lung
        expect = 100.0 * (r["lung_ml"] / ref["lung_ml"] - 1.0)
        assert r["lung_change_pct"] == pytest.approx(expect, abs=0.05)
    worst = table.iloc[1:]["lung_dice"].idxmin()
    assert set(views) == {("scan.nii.gz", "unchanged"), ("scan.nii.gz", table.loc[worst, "change"])}


def test_trust_checks_report_what_the_command_does(models, tmp_path):
    from sscild.analysis.robustness import trust_checks

    case = generate_case(5, profile=get_profile("smoke"))
    scan = tmp_path / "scan.nii.gz"
    save_volume(scan, case.image, case.affine)
    t = trust_checks([scan], models)
    assert list(t["copy"]) == ["lungs filled with soft tissue", "slices reversed, header unchanged"]
    for r in t.itertuples():
        assert r.outcome.startswith(("refused (exit status 5)", "flagged: ", "answered without a flag"))
        assert (r.said != "") == (not r.outcome.startswith("answered"))


def test_false_lesions_are_named_by_where_they_lie():
    from sscild.analysis.false_lesions import false_lesion_summary, name_false_lesions

    hu = np.full((80, 70, 30), -1000.0, np.float32)
    hu[4:76, 4:66] = 40.0
    lab = np.zeros(hu.shape, np.uint8)
    lab[10:36, 10:60, 3:28] = 1                       # right lung (RAS: low x is the patient's left)
    lab[44:70, 10:60, 3:28] = 1                       # left lung
    hu[lab == 1] = -860.0
    lab[12:34, 10:14, 8:20] = 3                       # posterior subpleural band: dependent density
    lab[50:66, 30:40, 3:4] = 3                        # on the lowest lung slice: the diaphragm's dome
    lab[32:36, 30:40, 12:16] = 2                      # beside the mediastinum
    lab[20:24, 30:34, 20:21] = 3                      # a speck
    t = name_false_lesions(hu, lab, np.diag([1.0, 1.0, 2.5, 1.0]))
    by = {r["name"] for _, r in t.iterrows()}
    assert {"dependent density", "diaphragm partial volume", "hilum and mediastinal border"} <= by
    assert t.iloc[0]["name"] == "dependent density"            # the largest piece first
    assert t.iloc[-1]["name"] == "specks"
    assert t["share_of_lesion_pct"].sum() == pytest.approx(100.0, abs=0.5)
    s = false_lesion_summary(t)
    assert s["pieces"].sum() == len(t) and s.index[0] == "dependent density"


def test_chapter_formats_the_records_for_the_page(tmp_path):
    import pandas as pd

    from sscild.book.chapters import real_ct as ch

    rob = {"date": "2026-01-02", "commit": "0123456789abcdef", "processor": "CPU", "models": "results/x/cpu",
           "command": "python scripts/check_robustness.py", "aims": {"lung_change_pct_within": 5.0,
                                                                    "lung_dice_at_least": 0.95},
           "met": {"lung_volume": "1 of 2", "lung_dice": "2 of 2"},
           "worst": {"scan": "a.nrrd", "change": "lung -100 HU", "lung_dice": 0.75241, "lung_change_pct": -38.27},
           "rows": [{"scan": s, "change": c, "group": "g", "lung_ml": 1.0, "lung_dice": 0.9, "extra": 1}
                    for s in ("b.nrrd", "a.nrrd") for c in ("unchanged", "lung -100 HU")]}
    words = ch.robustness_words(rob)
    assert "commit `0123456789ab`" in words and "(Dice 0.752, volume -38.3 %)" in words
    assert "Dice **not recorded**" in words and ch.robustness_words(None).startswith("No robustness record")
    tables = ch.robustness_tables(rob)
    assert [s for s, _ in tables] == ["b.nrrd", "a.nrrd"]           # the record's order
    assert list(tables[0][1].columns) == ["lung (mL)", "lung Dice"] and tables[0][1].index.name == "change"
    named = {"a.nrrd": pd.DataFrame([{"name": "apical cap", "ml": 2.34, "share_of_lesion_pct": 61.7}]),
             "b.nrrd": pd.DataFrame(columns=["name", "ml", "share_of_lesion_pct"])}
    assert ch.largest_piece_words(named) == ("On a.nrrd the largest piece (2.3 mL, 62 % of the called lesion) "
                                             "is *apical cap*.")
    assert ch.find_scans(tmp_path / "absent") == (tmp_path / "absent", [])
