"""End to end: `make all PROFILE=smoke` runs every chapter and renders the book; a second run does no work."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, smoke_make

pytestmark = pytest.mark.slow


def test_every_chapter_executed_and_book_built(smoke_run):
    nb = smoke_run["results"] / "notebooks"
    for chapter in ["00_abstract", "01_data", "02_training", "03_segmentation", "04_clinical", "05_reproducibility"]:
        assert (nb / f"{chapter}.ipynb").exists(), chapter
        assert (smoke_run["html"] / "chapters" / f"{chapter}.html").exists(), chapter
    assert (smoke_run["html"] / "index.html").exists()
    for k in range(2):
        assert (smoke_run["results"] / f"fold_{k}" / "model_final.pt").exists()


def test_second_make_all_does_no_work(smoke_run):
    proc = smoke_make("all")
    assert proc.returncode == 0, proc.stderr
    assert "[sscild] running" not in proc.stdout, proc.stdout
    assert "jupyter-book" not in proc.stdout.lower() or "Nothing to be done" in proc.stdout
    assert re.search(r"Nothing to be done for .all.", proc.stdout + proc.stderr), proc.stdout


def test_book_has_no_remote_assets(smoke_run):
    offenders = []
    for f in smoke_run["html"].rglob("*.html"):
        text = f.read_text(errors="replace")
        for m in re.finditer(r"""(?:src|href)=["'](https?:)?//([^"'/]+)""", text):
            host = m.group(2)
            if any(s in host for s in ("cdn", "jsdelivr", "googleapis", "unpkg", "cloudflare")):
                offenders.append(f"{f.name}: {m.group(0)}")
    assert not offenders, offenders[:10]


def test_book_does_not_print_the_build_machines_folders(smoke_run):
    """Paths inside the repository appear relative to it (the smoke run's data and results live there)."""
    root = str(REPO.resolve())
    offenders = [f.name for f in (smoke_run["html"] / "chapters").glob("*.html") if root in f.read_text(errors="replace")]
    assert not offenders, offenders


def test_runlog_records_every_step(smoke_run):
    log = json.loads((smoke_run["results"] / "runlog.json").read_text())
    steps = {s["step"] for s in log["steps"] if s["status"] == "ok"}
    assert {"data", "train_fold_0", "train_fold_1", "training_chapter", "evaluate", "correlate", "abstract",
            "real_ct"} <= steps


def test_failing_notebook_reports_cell_not_json(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nraise ValueError("planted failure in cell two")\n')
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sscild.book.runner", str(bad), str(tmp_path / "out.ipynb")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "planted failure in cell two" in proc.stderr
    assert "Notebook failed" in proc.stderr and str(bad) in proc.stderr
    assert '"cell_type"' not in proc.stderr  # not a wall of JSON
    assert not (tmp_path / "out.ipynb").exists()  # nothing that looks finished
    assert (tmp_path / "out.failed.ipynb").exists()


def test_changing_a_chapter_figure_retrains_no_fold(smoke_run):
    """The folds are trained by their own notebook (notebooks/train_fold.py), whose library files exclude
    the book's figures: a changed training figure re-runs the training chapter, never a fold."""
    from conftest import smoke_make

    proc = smoke_make("-n", "-W", "lib/sscild/book/plots/training.py", "all")
    assert proc.returncode == 0, proc.stderr
    assert "--step training_chapter" in proc.stdout
    assert "--step train_fold_" not in proc.stdout and "train_fold.py" not in proc.stdout
