"""Reading the book online and editing chapters interactively.

* ``make publish`` puts a built site on a ``gh-pages`` branch (pushed to a bare repository here);
* the chapters survive jupytext round trips, and saving one from JupyterLab leaves the ``.py`` as it was;
* ``make lab`` serves the chapters as notebooks;
* the launch / source buttons of the built pages point at files that exist, and no page loads a
  script or style from another host;
* the GitHub workflow parses and only calls make targets that exist;
* (slow) a chapter opened the way a person opens it runs top to bottom against a finished run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import nbformat
import pytest
import yaml

from conftest import REPO
from sscild.book.check import toc_pages

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
VENV_BIN = Path(sys.executable).parent
GIT = shutil.which("git")
REMOTE_ASSET = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)""", re.I)


def make(*args: str, cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    return subprocess.run(["make", "-C", str(cwd), *args], capture_output=True, text=True, env=env, **kw)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run([GIT, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def branch_files(repo: Path, branch: str = "gh-pages") -> set[str]:
    return set(git("ls-tree", "-r", "--name-only", branch, cwd=repo).split())


# ---- make publish ------------------------------------------------------------------------------

@pytest.fixture
def pages_repos(tmp_path):
    """A bare 'remote' and an empty clone-like working repository with that remote as 'pages'."""
    if GIT is None:
        pytest.skip("git is not installed")
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git("init", "--quiet", "--bare", str(bare), cwd=tmp_path)
    git("init", "--quiet", str(work), cwd=tmp_path)
    git("remote", "add", "pages", str(bare), cwd=work)
    return bare, work


def fake_site(book_out: Path) -> tuple[Path, list[str]]:
    """A built-looking site: index.html and one page per TOC entry, plus a page that will go away."""
    html = book_out / "_build" / "html"
    pages = [f"{p}.html" for p in toc_pages(REPO / "book" / "_toc.yml")]
    for rel in ["index.html", *pages, "stale.html", "_static/style.css"]:
        (html / rel).parent.mkdir(parents=True, exist_ok=True)
        (html / rel).write_text(f"<html><body>{rel} v1</body></html>\n")
    return html, pages


def test_publish_pushes_the_site_and_replaces_it(tmp_path, pages_repos):
    bare, work = pages_repos
    book_out = tmp_path / "book"
    html, pages = fake_site(book_out)
    base = [f"BOOK_OUT={book_out}", f"PUBLISH_REPO={work}", "REMOTE=pages"]

    # without PUSH=1: a local gh-pages commit only
    proc = make("publish", *base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"index.html", ".nojekyll", "stale.html"} <= branch_files(work)
    assert git("branch", "--list", "gh-pages", cwd=bare).strip() == ""

    proc = make("publish", *base, "PUSH=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = branch_files(bare)
    assert {"index.html", ".nojekyll", "stale.html", "_static/style.css"} <= first
    assert set(pages) <= first, sorted(set(pages) - first)
    assert git("show", "gh-pages:chapters/03_segmentation.html", cwd=bare) == "<html><body>chapters/03_segmentation.html v1</body></html>\n"

    # second publish: one page gone, one changed -> the branch holds exactly the new site
    (html / "stale.html").unlink()
    (html / "index.html").write_text("<html><body>index v2</body></html>\n")
    proc = make("publish", *base, "PUSH=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = branch_files(bare)
    assert second == first - {"stale.html"}
    assert git("show", "gh-pages:index.html", cwd=bare) == "<html><body>index v2</body></html>\n"
    assert len(git("rev-list", "gh-pages", cwd=bare).split()) == 3  # history kept, fast-forward pushes
    # the working repository's own branch, index and files are untouched
    assert git("status", "--porcelain", cwd=work) == ""
    assert sorted(p.name for p in work.iterdir()) == [".git"]


def test_publish_refuses_an_unbuilt_book(tmp_path, pages_repos):
    bare, work = pages_repos
    proc = make("publish", f"BOOK_OUT={tmp_path / 'never-built'}", f"PUBLISH_REPO={work}", "PUSH=1", "REMOTE=pages")
    assert proc.returncode != 0
    assert "the book is not built" in proc.stderr and "make all" in proc.stderr
    assert git("branch", "--list", "gh-pages", cwd=work).strip() == ""
    assert git("branch", "--list", "gh-pages", cwd=bare).strip() == ""


def test_publish_names_a_missing_remote(tmp_path, pages_repos):
    _, work = pages_repos
    book_out = tmp_path / "book"
    fake_site(book_out)
    proc = make("publish", f"BOOK_OUT={book_out}", f"PUBLISH_REPO={work}", "PUSH=1", "REMOTE=nowhere")
    assert proc.returncode != 0
    assert "no remote named 'nowhere'" in proc.stderr
    assert git("branch", "--list", "gh-pages", cwd=work).strip() == ""


# ---- jupytext ------------------------------------------------------------------------------------

def jupytext(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "jupytext"), *args], capture_output=True, text=True, cwd=cwd)


def test_chapters_are_stable_under_jupytext_round_trip():
    """py -> ipynb -> py gives the same file for every chapter (one process: jupytext starts slowly)."""
    assert NOTEBOOKS
    proc = jupytext("--test-strict", "--to", "ipynb", *map(str, NOTEBOOKS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_round_trip_check_catches_an_unstable_file(tmp_path):
    shutil.copy2(REPO / "jupytext.toml", tmp_path / "jupytext.toml")  # the chapters' conditions
    bad = tmp_path / "unstable.py"
    bad.write_text("# %%\nx = 1\n# %%\ny = 2\n")  # no header, no blank line between cells
    proc = jupytext("--test-strict", "--to", "ipynb", str(bad), cwd=tmp_path)
    assert proc.returncode != 0 and "unstable.py" in proc.stdout + proc.stderr


def _lab_contents_manager(root: Path):
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    return build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(root))


def _save_like_jupyterlab(root: Path, rel: str, extra_cell: str | None = None) -> None:
    """Open ``rel`` as a notebook, add what JupyterLab adds (cell metadata, outputs, language info), save."""
    cm = _lab_contents_manager(root)
    nb = cm.get(rel, type="notebook", content=True)["content"]
    for cell in nb.cells:
        cell.metadata["editable"] = True
        cell.metadata["slideshow"] = {"slide_type": ""}
        if cell.cell_type == "code":
            cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="output\n")]
            cell.execution_count = 1
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.0"}
    if extra_cell is not None:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    cm.save({"type": "notebook", "format": "json", "content": nb}, rel)


def test_saving_from_jupyterlab_keeps_the_py_source(tmp_path):
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy2(REPO / "jupytext.toml", root / "jupytext.toml")
    for src in NOTEBOOKS:
        shutil.copy2(src, root / "notebooks" / src.name)
        _save_like_jupyterlab(root, f"notebooks/{src.name}")
        assert (root / "notebooks" / src.name).read_bytes() == src.read_bytes(), src.name
    assert sorted(p.name for p in (root / "notebooks").iterdir()) == sorted(p.name for p in NOTEBOOKS)  # no .ipynb

    # an edit is saved into the .py as a new percent cell
    _save_like_jupyterlab(root, "notebooks/00_abstract.py", extra_cell="answer = 6 * 7")
    assert (root / "notebooks" / "00_abstract.py").read_text() == (REPO / "notebooks" / "00_abstract.py").read_text() + "\n# %%\nanswer = 6 * 7\n"


def test_without_the_jupytext_config_saving_would_rewrite_the_chapter(tmp_path):
    """Control: the byte-identical save above is due to jupytext.toml."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    src = REPO / "notebooks" / "03_segmentation.py"
    shutil.copy2(src, root / "notebooks" / src.name)
    _save_like_jupyterlab(root, f"notebooks/{src.name}")
    saved = (root / "notebooks" / src.name).read_text()
    assert saved != src.read_text()
    assert "editable=true" in saved or "jupytext_version" in saved


# ---- make lab -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _venv_is_current() -> bool:
    digest = subprocess.run("cat requirements.txt pyproject.toml | sha256sum | cut -c1-16", shell=True,
                            capture_output=True, text=True, cwd=REPO).stdout.strip()
    return (REPO / ".venv" / f".installed-{digest}").exists()


def test_make_lab_serves_chapters_as_notebooks(tmp_path):
    if not _venv_is_current():
        pytest.skip(".venv is not set up for the current requirements (run `make setup`); `make lab` would install it")
    port = _free_port()
    log = tmp_path / "lab.log"
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-C", str(REPO), "lab", f"LAB_PORT={port}", f"BOOK_OUT={tmp_path / 'book'}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            m = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)", log.read_text())
            url = m and m.group(0)
        assert url, f"no URL with a token printed:\n{log.read_text()[-3000:]}"
        token = parse_qs(urlparse(url).query)["token"][0]

        def api(path):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)

        model = api("contents/notebooks/01_data.py?type=notebook&content=1")
        assert model["type"] == "notebook"
        cells = model["content"]["cells"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells)
        assert model["content"]["metadata"]["jupytext"]["text_representation"]["format_name"] == "percent"
        assert api("kernelspecs")["default"] == "python3"
        assert "--allow-root" in log.read_text() or os.getuid() != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---- the built pages: launch/source buttons, no remote assets --------------------------------------

def _config() -> dict:
    return yaml.safe_load((REPO / "book" / "_config.yml").read_text())


TEST_REPO = "https://github.com/lab/sscild"
"""A public repository URL for the tests (the book takes the real one from the origin remote or REPO_URL)."""


def check_buttons(html_dir: Path, repo_url: str = TEST_REPO) -> list[str]:
    """Problems with the repository/launch links and remote assets of a built site (empty = fine)."""
    cfg = _config()
    repo_url = repo_url.rstrip("/")
    branch = cfg["repository"].get("branch", "main")
    org, name = repo_url.split("/")[-2:]
    toc = toc_pages(REPO / "book" / "_toc.yml")
    problems = []
    if not any((html_dir / "_sources" / f"{page}.ipynb").exists() for page in toc):
        problems.append("no page of the table of contents was built from a notebook")
    for page in toc:
        f = html_dir / f"{page}.html"
        if not f.exists():
            problems.append(f"{page}: page missing")
            continue
        text = f.read_text(errors="replace")
        for m in REMOTE_ASSET.finditer(text):
            problems.append(f"{page}: loads {m.group(1)}")
        edits = re.findall(rf'href="{re.escape(repo_url)}/edit/{re.escape(branch)}/([^"?#]+)"', text)
        if not edits:
            problems.append(f"{page}: no edit link")
        for rel in edits:
            if not (REPO / rel).is_file():
                problems.append(f"{page}: edit link points at {rel}, which is not a file of the repository")
        is_notebook = (html_dir / "_sources" / f"{page}.ipynb").exists()
        binder = re.findall(rf'href="https://mybinder\.org/v2/gh/{org}/{name}/{branch}\?urlpath=lab/tree/([^"]+)"', text)
        if is_notebook and binder != [f"book/{page}.ipynb"]:
            problems.append(f"{page}: Binder link {binder} does not open book/{page}.ipynb")
    return problems


def test_book_pages_link_to_sources_and_binder_and_load_nothing_remote(tmp_path):
    """Assemble and build a book from the real sources with placeholder chapter notebooks, for a repository."""
    from sscild.book.build import assemble, book_config

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for page in toc_pages(REPO / "book" / "_toc.yml"):
        if re.fullmatch(r"chapters/\d\d_\w+", page):
            nb = nbformat.v4.new_notebook()
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            nb.cells = [nbformat.v4.new_markdown_cell(f"# Placeholder {page}"),
                        nbformat.v4.new_code_cell("1 + 1", execution_count=1, outputs=[
                            nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)])]
            nbformat.write(nb, nbs / f"{page.split('/')[1]}.ipynb")
    out = tmp_path / "book"
    assemble(REPO / "book", out, nbs)
    (out / "_config.yml").write_text(yaml.safe_dump(book_config(out / "_config.yml", TEST_REPO), sort_keys=False))
    proc = subprocess.run([str(VENV_BIN / "jupyter-book"), "build", str(out), "--builder", "html"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    problems = check_buttons(out / "_build" / "html")
    assert not problems, problems
    # Binder opens book/chapters/<chapter>.ipynb: binder/postBuild must create them (it runs the smoke study)
    post = (REPO / "binder" / "postBuild").read_text()
    assert "make all PROFILE=smoke" in post and "book/chapters/" in post
    assert os.access(REPO / "binder" / "postBuild", os.X_OK)


def test_button_check_catches_remote_scripts_and_dead_edit_links(tmp_path):
    cfg = _config()
    repo_url, branch = TEST_REPO, cfg["repository"].get("branch", "main")
    html = tmp_path / "html"
    for page in toc_pages(REPO / "book" / "_toc.yml"):
        (html / f"{page}.html").parent.mkdir(parents=True, exist_ok=True)
        (html / f"{page}.html").write_text(f'<a href="{repo_url}/edit/{branch}/book/discussion.md">edit</a>')
    (html / "discussion.html").write_text('<script src="https://cdn.jsdelivr.net/x.js"></script>'
                                          f'<a href="{repo_url}/edit/{branch}/book/no-such-page.md">edit</a>')
    problems = " | ".join(check_buttons(html))
    assert "discussion: loads https://cdn.jsdelivr.net/x.js" in problems
    assert "book/no-such-page.md, which is not a file" in problems
    assert problems.count("discussion:") == 2


@pytest.mark.slow
def test_built_smoke_book_links_to_sources_and_binder(smoke_run):
    """With a public repository (the origin remote or REPO_URL) every page links to it; without one the
    pages have no repository, edit or Binder link at all, rather than links to a repository that does not exist."""
    from sscild.book.build import repository_url

    url = repository_url(REPO)
    if url:
        problems = check_buttons(smoke_run["html"], url)
        assert not problems, problems
        return
    for page in toc_pages(REPO / "book" / "_toc.yml"):
        text = (smoke_run["html"] / f"{page}.html").read_text(errors="replace")
        assert "mybinder.org" not in text and "/edit/main/" not in text and "github.com/sscild" not in text, page


# ---- the GitHub workflow --------------------------------------------------------------------------

def make_targets(scratch: Path) -> set[str]:
    """Targets make knows in this Makefile (and mk/*.mk), from its database (no recipe is run; the
    Makefile's parse-time marker file goes to ``scratch``)."""
    proc = subprocess.run(["make", "-C", str(REPO), "-qp", f"BOOK_OUT={scratch / 'book'}", f"RESULTS={scratch / 'results'}"],
                          capture_output=True, text=True)
    targets = set()
    for line in proc.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9_][A-Za-z0-9_.%-]*):(?!=)", line)
        if m:
            targets.add(m.group(1))
    return targets


def test_workflow_is_valid_and_runs_only_existing_make_targets(tmp_path):
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    jobs = wf["jobs"]
    runs, uses = [], []
    for job in jobs.values():
        assert isinstance(job.get("timeout-minutes"), int)
        for step in job["steps"]:
            runs += [step["run"]] if "run" in step else []
            uses += [step["uses"].split("@")[0]] if "uses" in step else []
    assert {"actions/upload-pages-artifact", "actions/deploy-pages", "actions/cache", "actions/setup-python"} <= set(uses)
    deploy = next(j for j in jobs.values() if any("deploy-pages" in s.get("uses", "") for s in j["steps"]))
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "push" in deploy["if"] and "refs/heads/main" in deploy["if"]
    called = set()
    for script in runs:
        for m in re.finditer(r"(?:^|[;&|]\s*)make\s+([^\n;&|]*)", script, re.M):
            called |= {w for w in m.group(1).split() if "=" not in w and not w.startswith("-")}
    assert {"setup", "all", "test"} <= called
    known = make_targets(tmp_path)
    assert {"publish", "lab", "all", "test"} <= known  # the database is read correctly (and mk/publish.mk is included)
    assert called <= known, sorted(called - known)


# ---- a chapter as a person runs it (slow: needs a finished run) ------------------------------------

@pytest.mark.slow
def test_chapter_runs_top_to_bottom_as_opened_in_jupyterlab(smoke_run, tmp_path, monkeypatch):
    """notebooks/00_abstract.py, opened through jupytext's contents manager (what JupyterLab uses) and
    executed with nbclient with its default parameters (profile "cpu", data_dir None) and no edit.

    The defaults point at the layout a default `make all` leaves: <results>/synthetic-cpu/cpu and
    <data>/synthetic-cpu. The smoke run's cohort and results are copied into that layout in tmp_path
    and found through SSCILD_RESULTS / SSCILD_DATA_ROOT, so nothing but environment variables is
    injected, and the shared smoke run is never written to. The abstract only reads the run's results.
    """
    from nbclient import NotebookClient

    data_root, results = tmp_path / "data", tmp_path / "results"
    shutil.copytree(smoke_run["data"], data_root / "synthetic-cpu")
    shutil.copytree(smoke_run["results"], results / "synthetic-cpu" / "cpu")
    monkeypatch.setenv("SSCILD_DATA_ROOT", str(data_root))
    monkeypatch.setenv("SSCILD_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = (REPO / "notebooks" / "00_abstract.py").read_bytes()

    nb = _lab_contents_manager(REPO).get("notebooks/00_abstract.py", type="notebook", content=True)["content"]
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'profile = "cpu"' in params.source
    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", o.get("text", "")) for o in outputs])
    assert "synthetic-cpu" in text  # the banner names the cohort the defaults resolved to
    assert (REPO / "notebooks" / "00_abstract.py").read_bytes() == before
