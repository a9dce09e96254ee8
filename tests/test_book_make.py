"""The book follows the run: the Makefile's book rule never re-runs the external appendix (it shows the
appendix as last executed) and, when the appendix's sources changed since, tells bookbuild so that the
page says it is out of date; bookbuild puts that warning on the page."""

from __future__ import annotations

import os
import subprocess
import time

import nbformat

from conftest import REPO
from sscild.book.build import _tag_for_reading


def _dry_run(tmp_path, *targets):
    args = ["make", "-n", "-C", str(REPO), *targets, "PROFILE=smoke", f"RESULTS={tmp_path / 'results'}",
            f"DATA_ROOT={tmp_path / 'data'}", f"BOOK_OUT={tmp_path / 'book'}"]
    return subprocess.run(args, capture_output=True, text=True)


def test_book_uses_the_executed_appendix_without_rerunning_it(tmp_path):
    ext = tmp_path / "results" / "external"
    ext.mkdir(parents=True)
    nb = ext / "A1_external.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    old = time.time() - 10 * 365 * 86400                    # executed long before the current sources
    os.utime(nb, (old, old))
    (ext / ".executed").touch()
    proc = _dry_run(tmp_path, "book")
    assert proc.returncode == 0, proc.stderr
    assert "--step external" not in proc.stdout               # building the book never re-runs it
    line = next(x for x in proc.stdout.splitlines() if "sscild.book.build" in x)
    assert f"--external {nb}" in line                        # the executed appendix, as it is
    assert "--external-stale" in proc.stdout and "notebooks/A1_external.py" in proc.stdout


def test_book_without_an_executed_appendix_gets_the_stub(tmp_path):
    proc = _dry_run(tmp_path, "book")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "sscild.book.build" in x)
    assert "--external" not in line


def test_out_of_date_appendix_page_says_so(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# External check"), nbformat.v4.new_code_cell("x = 1")]
    src, dst = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    nbformat.write(nb, src)
    _tag_for_reading(src, dst, stale=["lib/sscild/external/runs.py"])
    cells = nbformat.read(dst, as_version=4).cells
    assert cells[0].source == "# External check"
    assert "out of date" in cells[1].source and "`lib/sscild/external/runs.py`" in cells[1].source
    assert "make external" in cells[1].source
    _tag_for_reading(src, dst)
    assert len(nbformat.read(dst, as_version=4).cells) == 2


def test_an_appendix_executed_before_the_stamp_existed_is_still_shown(tmp_path):
    ext = tmp_path / "results" / "external"
    ext.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), ext / "A1_external.ipynb")      # no .executed stamp
    proc = _dry_run(tmp_path, "book")
    assert proc.returncode == 0, proc.stderr
    assert "--step external" not in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if "sscild.book.build" in x)
    assert f"--external {ext / 'A1_external.ipynb'}" in line


def test_each_external_profile_runs_into_its_own_folder(tmp_path):
    """`make external EXTERNAL_PROFILE=long` trains into results/external-long (sscild.external.recipe.run_folder)
    and executes the appendix there on that run; the default profile keeps results/external."""
    from sscild.external.recipe import run_folder

    train = tmp_path / "train"
    (train / "images").mkdir(parents=True)
    results = tmp_path / "results"
    for profile in ("cpu", "long"):
        proc = _dry_run(tmp_path, "external", f"EXTERNAL_PROFILE={profile}", f"EXTERNAL_TRAIN={train}",
                        "EXTERNAL_UNLABELLED=")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.replace("\\\n", " ").splitlines()                # continued recipe lines joined
        run = next(x for x in lines if "sscild.external run" in x)
        assert f" {run_folder(profile, results)} " in run + " " and f"--profile {profile}" in run
        page = next(x for x in lines if "--step external" in x)
        assert f"-p out_dir {run_folder(profile, results)} " in page + " "
        assert f"{results / 'external' / 'A1_external.ipynb'}" in page       # one appendix page for both


def test_switching_profiles_never_reruns_the_other_profiles_finished_check(tmp_path):
    """Each run folder keeps its own parameter mark: after the long profile's check, the cpu check that is
    already finished stays finished (and the reverse); only the page follows the profile. Real make runs:
    a check that had to run would fail here (its training folder is empty)."""
    train = tmp_path / "train"
    (train / "images").mkdir(parents=True)
    results = tmp_path / "results"
    common = [f"EXTERNAL_TRAIN={train}", "EXTERNAL_UNLABELLED=", "PROFILE=smoke", f"RESULTS={results}",
              f"DATA_ROOT={tmp_path / 'data'}", f"BOOK_OUT={tmp_path / 'book'}"]

    def make(target, profile):
        return subprocess.run(["make", "-C", str(REPO), str(target), f"EXTERNAL_PROFILE={profile}", *common],
                              capture_output=True, text=True)

    for profile, folder in (("cpu", "external"), ("long", "external-long")):
        for mark in (results / folder / ".run-params", results / "external" / ".params"):
            proc = make(mark, profile)
            assert proc.returncode == 0 and mark.exists(), proc.stderr
        time.sleep(0.05)
        (results / folder / "summary.json").write_text("{}")              # the finished check, after its marks
    for profile, folder in (("cpu", "external"), ("long", "external-long"), ("cpu", "external")):
        assert make(results / "external" / ".params", profile).returncode == 0     # the page switches profile
        assert (results / "external" / ".params").read_text().startswith(f"profile={profile} ")
        time.sleep(0.05)
        proc = make(results / folder / "summary.json", profile)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "sscild.external run" not in proc.stdout, (profile, proc.stdout)


def test_the_appendix_page_follows_every_recorded_external_screen(tmp_path):
    """Every benchmarks/external_* record the appendix reads is a prerequisite of its page, so a screen
    recorded again (or a new one) re-executes the page on the next `make external`."""
    proc = subprocess.run(["make", "-n", "-p", "-C", str(REPO), "external", "PROFILE=smoke",
                           f"RESULTS={tmp_path / 'results'}", f"DATA_ROOT={tmp_path / 'data'}",
                           f"BOOK_OUT={tmp_path / 'book'}", f"EXTERNAL_TRAIN={tmp_path / 'train'}"],
                          capture_output=True, text=True)
    page = f"{tmp_path / 'results' / 'external' / 'A1_external.ipynb'}:"
    rule = next(x for x in proc.stdout.splitlines() if x.startswith(page))
    records = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").glob("external_*")
                     if p.suffix in (".csv", ".json"))
    assert records and "benchmarks/external_budget_screen.json" in records
    missing = [r for r in records if r not in rule.split()]
    assert not missing, missing
