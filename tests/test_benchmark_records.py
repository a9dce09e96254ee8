"""The Reproducibility chapter's list of recorded benchmarks: every record with its date, commit and machine."""

from __future__ import annotations

import json

from sscild.book.chapters.reproducibility import benchmark_records
from sscild.paths import repo_root


def test_every_record_is_listed_with_a_commit(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"what": "a timing", "date": "2026-12-06", "commit": "abc1234",
                                               "machine": {"cpu": "AMD EPYC", "cores": 2}, "command": "python x.py"}))
    (folder / "b.csv").write_text("arm,case_id\n")
    (folder / "notes.txt").write_text("not a record")
    t = benchmark_records(folder)
    assert list(t.index) == ["a.json", "b.csv"]
    assert t.loc["a.json", "commit"] == "abc1234 (measured on)" and t.loc["a.json", "machine"] == "AMD EPYC, 2 cores"
    assert t.loc["b.csv", "commit"] == "not recorded"          # outside a git checkout nothing can be said


def test_the_repository_records_all_name_a_commit():
    t = benchmark_records()
    assert len(t) >= 10
    if (repo_root() / ".git").exists():
        assert not (t["commit"] == "not recorded").any(), t[t["commit"] == "not recorded"]
