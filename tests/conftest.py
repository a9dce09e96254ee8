"""Shared fixtures: the real-CT sample folder and one end-to-end smoke run of the whole study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SMOKE_DIR = REPO / "build" / "test"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when the folder is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real CT samples not available ({p} is absent; they live in ../shared/data beside the checkout)")
    return p


def smoke_make(*targets: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run make with the smoke profile in a scratch folder (never the user's results/, data/ or book/)."""
    args = ["make", "-C", str(REPO), *targets, "PROFILE=smoke",
            f"RESULTS={SMOKE_DIR / 'results'}", f"DATA_ROOT={SMOKE_DIR / 'data'}", f"BOOK_OUT={SMOKE_DIR / 'book'}"]
    args += [f"{k}={v}" for k, v in (extra or {}).items()]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(args, capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def smoke_run():
    """The whole study (every chapter and the book) on the smoke profile; returns its paths."""
    proc = smoke_make("all")
    if proc.returncode != 0:
        pytest.fail(f"`make all PROFILE=smoke` failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return {
        "stdout": proc.stdout,
        "results": SMOKE_DIR / "results" / "synthetic-smoke" / "smoke",
        "data": SMOKE_DIR / "data" / "synthetic-smoke",
        "book": SMOKE_DIR / "book",
        "html": SMOKE_DIR / "book" / "_build" / "html",
    }
