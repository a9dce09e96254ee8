"""Progress lines reach make's terminal while a notebook runs, and stay out of the notebook."""

from __future__ import annotations

import json

import nbformat
import pytest

from sscild.progress import ENV, Heartbeat, emit


def test_heartbeat_writes_rate_and_time_left(tmp_path, monkeypatch):
    log = tmp_path / "p.log"
    monkeypatch.setenv(ENV, str(log))
    hb = Heartbeat("fold 2", total=100, unit="step", every=1e-6)
    hb.update(50, loss=0.5)
    hb.update(100, loss=0.25)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fold 2: step 50/100, loss 0.500") and "left" in lines[0]
    assert lines[1].endswith("done")


def test_heartbeat_is_rate_limited_and_silent_without_the_variable(tmp_path, monkeypatch):
    log = tmp_path / "p.log"
    monkeypatch.setenv(ENV, str(log))
    hb = Heartbeat("x", total=10, every=3600)
    for k in range(1, 10):
        hb.update(k)
    assert not log.exists() or log.read_text() == ""
    hb.update(10)                                   # the last unit is always reported
    assert len(log.read_text().splitlines()) == 1
    monkeypatch.delenv(ENV)
    emit("nothing")                                 # no file named: a no-op
    with pytest.raises(ValueError):
        Heartbeat("x", total=-1)


@pytest.mark.slow
def test_runner_echoes_kernel_progress_to_the_terminal(tmp_path, capsys):
    from sscild.book.runner import run_notebook

    src = tmp_path / "nb.py"
    src.write_text("# %%\nfrom sscild.progress import emit\nemit('halfway there')\nprint('in the notebook')\n")
    out = tmp_path / "out.ipynb"
    run_notebook(src, out, step="demo")
    printed = capsys.readouterr().out
    assert "[sscild] demo: halfway there" in printed
    nb = nbformat.read(out, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "in the notebook" in text and "halfway there" not in text
    assert not list(tmp_path.glob("*.progress.log"))
