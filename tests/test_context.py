"""The run context (one place resolves profile, folders, folds and fold parallelism) and make
following it and the library: the Makefile restates none of it, and a chapter re-runs exactly when a
library file it uses changes."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import REPO
from sscild.book.deps import library_files, make_fragment
from sscild.context import fold_parallelism, resolve
from sscild.profiles import PROFILES

LIB = REPO / "lib" / "sscild"


def _make(tmp_path, *args, extra=()):
    cmd = ["make", "-C", str(REPO), *args, "PROFILE=smoke", f"RESULTS={tmp_path / 'results'}",
           f"DATA={tmp_path / 'cohort'}", f"BOOK_OUT={tmp_path / 'book'}", "REAL_CT=", *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_fold_parallelism_follows_the_machine():
    assert fold_parallelism(8, cpus=2, gpus=0) == (2, 1)
    assert fold_parallelism(2, cpus=16, gpus=0) == (2, 1)          # never more jobs than folds
    assert fold_parallelism(8, cpus=8, gpus=1) == (1, 8)            # one GPU: one fold at a time
    assert fold_parallelism(8, cpus=2, gpus=0, jobs=1) == (1, 2)    # the sequential mode
    assert fold_parallelism(8, cpus=8, gpus=0, threads=4) == (2, 4)
    with pytest.raises(ValueError):
        fold_parallelism(8, cpus=2, gpus=0, jobs=0)


def test_context_resolves_once_and_is_written(tmp_path):
    ctx = resolve("smoke", tmp_path / "my-cohort", tmp_path / "res", cpus=2, gpus=0)
    assert ctx.num_folds == PROFILES["smoke"].num_folds
    assert ctx.run.root == (tmp_path / "res" / "my-cohort" / "smoke").resolve()
    written = json.loads(ctx.write().read_text())
    assert written["num_folds"] == 2 and written["fold_jobs"] == 2 and written["fold_threads"] == 1
    assert written["cohort"] == "my-cohort"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_make_takes_fold_count_and_results_folder_from_the_library(tmp_path, profile):
    proc = subprocess.run(["make", "-C", str(REPO), "-n", "train", f"PROFILE={profile}",
                           f"RESULTS={tmp_path / 'r'}", f"DATA={tmp_path / 'c'}", "FOLD_JOBS=1"],
                          capture_output=True, text=True)
    # a cohort folder without dataset.json stops make; the dry run still lists the folds it would train
    folds = {line.split("--step train_fold_")[1].split()[0] for line in proc.stdout.splitlines()
             if "--step train_fold_" in line}
    assert folds == {str(k) for k in range(PROFILES[profile].num_folds)}, proc.stdout + proc.stderr
    assert str(tmp_path / "r" / "c" / profile) in proc.stdout


def test_make_refuses_a_fold_count_of_its_own(tmp_path):
    proc = _make(tmp_path, "-n", "train", extra=["NUM_FOLDS=3"])
    assert proc.returncode != 0 and "NUM_FOLDS is the profile's" in proc.stderr


def test_deps_follow_imports_through_the_library():
    seg = {str(p.relative_to(LIB)) for p in library_files(REPO / "notebooks" / "03_segmentation.py")}
    assert "evaluation/metrics.py" in seg                 # imported through the analysis module
    assert "__init__.py" in seg
    real = {str(p.relative_to(LIB)) for p in library_files(REPO / "notebooks" / "A2_real_ct.py")}
    assert "book/plots/clinical.py" not in real
    frag = make_fragment(REPO / "notebooks", relative_to=REPO)
    assert "LIBDEPS_03_segmentation := " in frag and "lib/sscild/evaluation/metrics.py" in frag


def _fake_finished_run(tmp_path):
    """Every target of a smoke run present and newer than its sources (nothing to do)."""
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "dataset.json").write_text("{}")
    res = tmp_path / "results" / "cohort" / "smoke"
    nb = res / "notebooks"
    order = [[res / "validation.json"], [res / "cases.csv", res / "pretrained" / ".made"],
             [nb / "01_data.ipynb"], [res / f"fold_{k}" / "training.ipynb" for k in range(2)],
             [nb / f"{c}.ipynb" for c in ("02_training", "03_segmentation", "A2_real_ct")],
             [nb / "04_clinical.ipynb"], [nb / "00_abstract.ipynb"], [nb / "05_reproducibility.ipynb"],
             [tmp_path / "book" / "_build" / "html" / "index.html"]]
    t = time.time() + 60
    for i, group in enumerate(order):
        for f in group:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("{}")
            os.utime(f, (t + i, t + i))
    mark = tmp_path / "book" / ".run-source"
    mark.write_text(str(res.resolve()) + "\n")
    os.utime(mark, (t, t))


def _steps(proc) -> set[str]:
    return {line.split("--step ")[1].split()[0] for line in proc.stdout.splitlines() if "--step " in line}


def test_a_library_change_reruns_the_chapters_that_use_it_and_only_those(tmp_path):
    _fake_finished_run(tmp_path)
    assert _steps(_make(tmp_path, "-n", "all")) == set()
    metrics = _make(tmp_path, "-n", "-W", "lib/sscild/evaluation/baseline.py", "all")
    assert _steps(metrics) == {"evaluate", "correlate", "abstract", "reproducibility"}, metrics.stdout
    realct = _make(tmp_path, "-n", "-W", "lib/sscild/book/plots/realct.py", "all")
    assert _steps(realct) == {"real_ct", "reproducibility"}, realct.stdout
    figure = _make(tmp_path, "-n", "-W", "lib/sscild/book/plots/training.py", "all")
    assert _steps(figure) == {"training_chapter", "reproducibility"}, figure.stdout   # no fold retrains
    data_fig = _make(tmp_path, "-n", "-W", "lib/sscild/book/plots/data.py", "all")
    assert not any(s.startswith("train_fold") for s in _steps(data_fig)), data_fig.stdout
    assert "cli prepare" not in data_fig.stdout and "cli pretrain" not in data_fig.stdout


@pytest.mark.parametrize("allow", ["", "1"])
def test_make_validates_the_cohort_before_the_data_chapter(tmp_path, allow):
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "dataset.json").write_text("{}")
    proc = _make(tmp_path, "-n", "data", extra=[f"ALLOW_CLINICAL_GAPS={allow}"])
    lines = proc.stdout.splitlines()
    check = next(i for i, x in enumerate(lines) if "sscild.cli validate" in x)
    prepare = next(i for i, x in enumerate(lines) if "sscild.cli prepare" in x)
    data = next(i for i, x in enumerate(lines) if "--step data" in x)
    assert check < prepare < data and "--exclude-bad" in lines[check] and "--record" in lines[check]
    assert ("--allow-clinical-gaps" in lines[check]) is bool(allow)


def test_pretraining_runs_once_before_the_folds_and_not_after_the_data_chapter(tmp_path):
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "dataset.json").write_text("{}")
    lines = _make(tmp_path, "-n", "-j1", "train").stdout.splitlines()
    pretrain = [i for i, x in enumerate(lines) if "sscild.cli pretrain" in x]
    folds = [i for i, x in enumerate(lines) if "--step train_fold_" in x]
    assert len(pretrain) == 1 and folds and pretrain[0] < min(folds)
    assert not any("--step data" in x for x in lines)      # the folds need the data stage, not its chapter
