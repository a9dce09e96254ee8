"""The package's layers: imports flow one way, and each module stays readable.

Each subpackage may import only the layers below it (``ALLOWED``); analysis of a cohort never imports
the synthetic generator, inference never imports the book's plotting, and nothing but the book and
the command line imports the book. Checked on the source (every import, also one inside a
function), so a violation fails here before it can form a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "sscild"
CORE = "core"
# layer -> the layers it may import (besides itself)
ALLOWED = {
    CORE: set(),
    "data": {CORE},
    "synthetic": {CORE, "data"},
    "evaluation": {CORE, "data"},
    "model": {CORE, "data", "evaluation"},
    "clinic": {CORE, "data", "evaluation", "model"},
    "analysis": {CORE, "data", "evaluation", "model", "clinic"},
    "external": {CORE, "data", "evaluation", "model"},
    "cluster": {CORE},
    "book": {CORE, "data", "synthetic", "evaluation", "model", "clinic", "analysis", "external", "cluster"},
    "cli": {CORE, "data", "synthetic", "evaluation", "model", "clinic", "analysis", "external", "cluster", "book"},
}
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 80


def _modules():
    return sorted(p for p in LIB.rglob("*.py"))


def _layer_of_file(path: Path) -> str:
    rel = path.relative_to(LIB)
    if len(rel.parts) == 1:
        return "cli" if rel.stem == "cli" else CORE
    return rel.parts[0]


def _layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "sscild":
        return None
    if len(parts) == 1:
        return CORE
    if (LIB / parts[1]).is_dir():
        return parts[1]
    return "cli" if parts[1] == "cli" else CORE


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, "." * node.level + (node.module or "")
            elif node.module:
                yield node.lineno, node.module
                if node.module == "sscild":  # `from sscild import data` names a subpackage
                    for a in node.names:
                        yield node.lineno, f"sscild.{a.name}"


def test_every_module_sits_in_a_known_layer():
    layers = {_layer_of_file(p) for p in _modules()}
    assert layers <= set(ALLOWED), f"subpackages without a layer in ALLOWED: {layers - set(ALLOWED)}"


def test_imports_flow_down_the_layers():
    bad = []
    for path in _modules():
        mine = _layer_of_file(path)
        for line, name in _imports(path):
            if name.startswith("."):
                bad.append(f"{path.relative_to(LIB)}:{line} relative import {name!r}: use `from sscild...`")
                continue
            theirs = _layer_of_module(name)
            if theirs is None or theirs == mine:
                continue
            if theirs not in ALLOWED[mine]:
                bad.append(f"{path.relative_to(LIB)}:{line} ({mine}) imports {name} ({theirs})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_rules_can_fail():
    # the checker itself: a module of the analysis layer importing the generator is caught
    assert "synthetic" not in ALLOWED["analysis"]
    assert "book" not in ALLOWED["model"]
    assert _layer_of_module("sscild.synthetic.phantom") == "synthetic"
    assert _layer_of_module("sscild.paths") == CORE
    assert _layer_of_file(LIB / "analysis" / "x.py") == "analysis"


def test_no_private_name_crosses_modules():
    bad = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sscild"):
                bad += [f"{path.relative_to(LIB)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names used from another module:\n" + "\n".join(bad)


def test_modules_are_short():
    long = {str(p.relative_to(LIB)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short_or_say_why():
    bad = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                said = any("# long:" in lines[i] for i in range(max(0, first - 3), first - 1))
                if n > MAX_FUNCTION_LINES and not said:
                    bad.append(f"{path.relative_to(LIB)}:{node.lineno} {node.name} ({n} lines)")
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines without a `# long: <why>` comment:\n" + "\n".join(bad)


def test_package_map_lists_every_module():
    missing = []
    for pkg in sorted(d for d in LIB.iterdir() if d.is_dir() and (d / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
        for mod in sorted(pkg.glob("*.py")):
            if mod.stem != "__init__" and mod.stem not in doc:
                missing.append(f"{pkg.name}/{mod.name}")
        for sub in sorted(d for d in pkg.iterdir() if d.is_dir() and (d / "__init__.py").exists()):
            if sub.name not in doc:
                missing.append(f"{pkg.name}/{sub.name}/")
    top = ast.get_docstring(ast.parse((LIB / "__init__.py").read_text())) or ""
    for p in sorted(LIB.iterdir()):
        name = p.stem if p.suffix == ".py" else p.name
        if (p.suffix == ".py" and name != "__init__") or (p.is_dir() and (p / "__init__.py").exists()):
            if name not in top:
                missing.append(name)
    assert not missing, f"modules the package docstrings do not list: {missing}"


@pytest.mark.parametrize("name", ["sscild.synthetic", "sscild.book"])
def test_analysis_and_inference_stay_clean(name):
    # named edges of the design, spelled out: analysis must not import the generator or the book,
    # inference (model) must not import plotting
    checked = {"sscild.synthetic": ["analysis"], "sscild.book": ["model", "analysis", "external"]}[name]
    for layer in checked:
        for path in (LIB / layer).rglob("*.py"):
            for line, imported in _imports(path):
                assert not imported.startswith(name), f"{path.relative_to(LIB)}:{line} imports {imported}"


# ---- the chapter dimension: a chapter is one notebook over one chapter module -----------------

NOTEBOOKS = LIB.parents[1] / "notebooks"
TOC = LIB.parents[1] / "book" / "_toc.yml"
MAX_NOTEBOOK_MODULES = 3
TRAINING_ENTRY_POINTS = {"sscild.model.train", "sscild.model.selftrain.train_fold", "sscild.cli"}
"""What starts training (a fold, pretraining through the command); a chapter reads what the folds wrote."""


def _toc_chapters() -> list[str]:
    return [line.split("chapters/", 1)[1].strip() for line in TOC.read_text().splitlines()
            if "file: chapters/" in line]


def _sscild_modules(path: Path) -> set[str]:
    """Distinct sscild modules a notebook imports, anywhere in it: ``from sscild.x import y`` counts
    ``sscild.x.y`` when ``y`` is a module and ``sscild.x`` otherwise."""
    def is_module(dotted: str) -> bool:
        base = LIB.parent.joinpath(*dotted.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "sscild")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sscild":
            for a in node.names:
                out.add(f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module)
    return out


def test_every_chapter_in_the_book_has_a_notebook_and_a_chapter_module():
    chapters = _toc_chapters()
    assert "01_data" in chapters and "A2_real_ct" in chapters, chapters
    for name in chapters:
        assert (NOTEBOOKS / f"{name}.py").exists(), f"the table of contents names {name}, which has no notebook"
        modules = _sscild_modules(NOTEBOOKS / f"{name}.py")
        own = [m for m in modules if m.startswith("sscild.book.chapters.")]
        assert len(own) == 1, f"notebooks/{name}.py imports no single chapter module of sscild.book.chapters: {modules}"


def test_chapter_notebooks_import_at_most_three_sscild_modules():
    counts = {name: sorted(_sscild_modules(NOTEBOOKS / f"{name}.py")) for name in _toc_chapters()}
    over = {k: v for k, v in counts.items() if len(v) > MAX_NOTEBOOK_MODULES}
    assert not over, f"chapter notebooks importing more than {MAX_NOTEBOOK_MODULES} sscild modules: {over}"


def test_no_chapter_in_the_book_trains_a_fold():
    """Only notebooks/train_fold.py (run per fold by make) trains; a chapter that imported the trainer,
    directly or through its chapter module, would retrain when one of its figures changed."""
    from sscild.book.deps import library_files

    trainer = {LIB / "model" / "train.py", LIB / "cli.py"}
    for name in _toc_chapters():
        used = set(library_files(NOTEBOOKS / f"{name}.py"))
        assert not used & trainer, f"notebooks/{name}.py reaches {sorted(str(p.relative_to(LIB)) for p in used & trainer)}"
        text = (NOTEBOOKS / f"{name}.py").read_text()
        assert "train_fold(" not in text and "cohort_pretrained_state(" not in text, name
    assert "train_fold(" in (NOTEBOOKS / "train_fold.py").read_text()   # the rule has something to find


def test_the_notebook_rules_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from sscild.book.chapters import data as ch\nfrom sscild.book.report import show\n"
                   "from sscild.paths import rel\nfrom sscild.analysis import segmentation as ev\n"
                   "import sscild.model.train\n")
    assert len(_sscild_modules(bad)) == 5
