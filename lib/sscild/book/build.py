"""Assemble and build the Jupyter Book (what ``make book`` runs).

    python -m sscild.book.build --src book --out BOOK_OUT --notebooks RESULTS/<cohort>/<profile>/notebooks

1. Copies the hand-written pages of ``--src`` (``_config.yml``, ``_toc.yml``, ``*.md``, ``*.bib``,
   ``_static/``) into ``--out`` when it is another folder (the tests build in a scratch folder so a
   user's book is never overwritten).
2. Copies the run's executed chapter notebooks into ``<out>/chapters/``. The appendix "External
   check on real CT" is the executed notebook of ``make external`` when there is one, else a page
   that says it was not run and how to run it. The appendix "The trained models on real CT" is the
   run's ``A2_real_ct`` notebook (a placeholder page when the run has none).
3. Numbers the tables across the book in reading order (:func:`number_tables`), as Sphinx numbers
   the figures.
4. Writes the book's configuration with the repository its buttons link to (:func:`repository_url`):
   the ``origin`` remote of the checkout, or ``REPO_URL``; without a public one the buttons are left
   out (:func:`book_config`).
5. Runs ``jupyter-book build`` with execution off and warnings as errors (``-W -n``), so a broken
   cross-reference or citation fails the build.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from sscild.paths import unroot

__all__ = ["assemble", "build", "main", "number_tables", "reading_order", "repository_url", "book_config"]

EXTERNAL = "A1_external"
REAL_CT = "A2_real_ct"


def assemble(src: Path, out: Path, notebooks: Path, external: Path | None = None,
             external_stale: list[str] | None = None) -> list[Path]:
    """Copy the hand-written pages and the executed chapters into ``out`` (module docstring).

    Args:
        src: the book's source folder.
        out: where the book is assembled and built.
        notebooks: the run's executed chapter notebooks.
        external: the executed appendix notebook, or None (the page then says it was not run).
        external_stale: files changed since the appendix was executed; the page then opens with a
            warning naming them and the command that brings it up to date.
    """
    src, out, notebooks = Path(src).resolve(), Path(out).resolve(), Path(notebooks).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if src != out:
        for item in src.iterdir():
            if item.name in ("_build", "chapters") or item.name.startswith("."):
                continue
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    chapters = out / "chapters"
    if chapters.exists():
        shutil.rmtree(chapters)
    chapters.mkdir()
    copied = []
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        if nb.name.endswith(".failed.ipynb"):
            continue
        _tag_for_reading(nb, chapters / nb.name)
        copied.append(chapters / nb.name)
    real = notebooks / f"{REAL_CT}.ipynb"
    if real.exists():
        _tag_for_reading(real, chapters / real.name)
        copied.append(chapters / real.name)
    else:
        shutil.copy2(src / "real_ct_not_run.md", chapters / f"{REAL_CT}.md")
    if external is not None and Path(external).exists():
        _tag_for_reading(Path(external), chapters / f"{EXTERNAL}.ipynb", stale=external_stale)
    else:
        shutil.copy2(src / "external_not_run.md", chapters / f"{EXTERNAL}.md")
    if (out / "_toc.yml").exists():
        number_tables([out / f"{name}.ipynb" for name in reading_order(out / "_toc.yml")])
    return copied


def reading_order(toc: Path) -> list[str]:
    """The book's pages in reading order (``_toc.yml``: root, then every part's chapters)."""
    import yaml

    t = yaml.safe_load(Path(toc).read_text())
    pages = [t["root"]]
    for part in t.get("parts", []):
        pages += [c["file"] for c in part.get("chapters", [])]
    pages += [c["file"] for c in t.get("chapters", [])]
    return pages


def number_tables(notebooks: list[Path]) -> int:
    """Number the tables of ``notebooks`` (in this order) across the book: Table 1, 2, ...

    Every caption written by :func:`sscild.book.report.show` starts with the placeholder
    :data:`~sscild.book.report.TABLE_MARK`; here it becomes ``Table N.``. Pages that are not
    notebooks, or absent, are skipped. Returns the number of tables.
    """
    import nbformat

    from sscild.book.report import TABLE_MARK

    n = 0
    for path in notebooks:
        if not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        changed = False
        for cell in nb.cells:
            for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
                html = output.get("data", {}).get("text/html")
                if html is None or TABLE_MARK not in "".join(html):
                    continue
                parts = "".join(html).split(TABLE_MARK)
                text = parts[0]
                for rest in parts[1:]:
                    n += 1
                    text += f'<span class="sscild-table-no">Table {n}.</span>' + rest
                output["data"]["text/html"] = text
                changed = True
        if changed:
            nbformat.write(nb, path)
    return n


def _tag_for_reading(src: Path, dst: Path, stale: list[str] | None = None) -> None:
    """Copy an executed notebook, tagged for a paper-shaped page.

    Code stays one click away (``hide-input``: a toggle above each output). The chapter's default
    ``parameters`` cell and papermill's injected cell are removed from the page (``remove-cell``):
    the values this run used are in the banner and on the Reproducibility page, and both cells stay
    in the notebook, where they are edited. Cells the author already tagged keep their tags.
    """
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags:
            cell.source = unroot(cell.source)  # paths inside the repository, relative to it
        if "parameters" in tags or "injected-parameters" in tags:
            if "remove-cell" not in tags:
                tags.append("remove-cell")
            continue
        elif not any(t.startswith(("remove-", "hide-")) for t in tags):
            tags.append("hide-input")
    if stale:
        note = nbformat.v4.new_markdown_cell(
            ":::{warning}\n**This page is out of date.** It was executed before these files last changed: "
            + ", ".join(f"`{f}`" for f in stale)
            + ". Run `make external` to re-run it with the current code; until then it shows the earlier run.\n:::")
        first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
        nb.cells.insert(first + 1, note)
    nbformat.write(nb, dst)


REPO_URL_ENV = "SSCILD_REPO_URL"
"""Environment variable (make: ``REPO_URL=...``) naming the public repository the book's buttons link to."""


def repository_url(root: Path | None = None) -> str | None:
    """The public repository this book is built from, as an https URL, or ``None`` when none is known.

    :data:`REPO_URL_ENV` when set (empty: none); otherwise the checkout's ``origin`` remote, written as
    https (``git@github.com:a/b.git`` -> ``https://github.com/a/b``). A local path or an unknown host
    is not a URL a reader can open, so it gives ``None``.

    >>> import os; os.environ[REPO_URL_ENV] = "git@github.com:lab/sscild.git"; repository_url()
    'https://github.com/lab/sscild'
    >>> os.environ[REPO_URL_ENV] = "/srv/git/sscild"; repository_url() is None
    True
    >>> del os.environ[REPO_URL_ENV]
    """
    import os
    import re

    url = os.environ.get(REPO_URL_ENV)
    if url is None:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root or Path(__file__).parent,
                                 capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    url = url.strip()
    m = re.fullmatch(r"git@([\w.-]+):(.+?)(\.git)?/?", url) or re.fullmatch(r"(?:https?|ssh|git)://(?:[^@/]+@)?([\w.-]+)/(.+?)(\.git)?/?", url)
    if not m or m.group(1).lower() not in ("github.com", "gitlab.com"):
        return None
    return f"https://{m.group(1).lower()}/{m.group(2)}"


def book_config(config: Path, url: str | None) -> dict:
    """``_config.yml`` with the repository the buttons link to: ``url``, or no buttons at all.

    Without a public repository (``url`` is ``None``) the repository, issue and edit buttons and the
    Binder launch links are switched off rather than left pointing at a repository that does not exist.
    """
    import yaml

    cfg = yaml.safe_load(Path(config).read_text())
    html = cfg.setdefault("html", {})
    if url:
        cfg.setdefault("repository", {})["url"] = url
    else:
        cfg.pop("repository", None)
        for key in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
            html[key] = False
        cfg["launch_buttons"] = {**cfg.get("launch_buttons", {}), "binderhub_url": "", "jupyterhub_url": ""}
    return cfg


def build(out: Path) -> int:
    import yaml

    out = Path(out)
    url = repository_url()
    cfg_path = out / "_build" / "_config.yml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(book_config(out / "_config.yml", url), sort_keys=False))
    print(f"book: repository links -> {url}" if url else
          f"book: no public repository known (no GitHub/GitLab `origin` remote, {REPO_URL_ENV} unset): "
          "repository, edit and Binder buttons left out")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(out), "--config", str(cfg_path),
           "--builder", "html", "-W", "-n", "--keep-going"]
    return subprocess.call(cmd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.book.build")
    ap.add_argument("--src", type=Path, default=Path("book"))
    ap.add_argument("--out", type=Path, default=Path("book"))
    ap.add_argument("--notebooks", type=Path, required=True)
    ap.add_argument("--external", type=Path, default=None, help="executed external-check notebook, if any")
    ap.add_argument("--external-stale", default="", help="files changed since the appendix ran (space-separated)")
    args = ap.parse_args(argv)
    assemble(args.src, args.out, args.notebooks, args.external, external_stale=args.external_stale.split() or None)
    rc = build(args.out)
    if rc != 0:
        print(f"jupyter-book build failed (exit {rc}); see the messages above.", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
