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
