"""Packaging: what pyproject.toml declares matches what the library imports, requirements.txt pins it
all, the version is written once, README states the Python versions pyproject supports, and the
LICENSE and CITATION.cff are there and well-formed. Reads files only (no network, no installs)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "sscild"

# import name -> distribution name, where they differ
DIST_OF_IMPORT = {
    "yaml": "PyYAML",
    "PIL": "pillow",
    "nrrd": "pynrrd",
    "skimage": "scikit-image",
    "IPython": "ipython",
    "myst_nb": "myst-nb",
    "sklearn": "scikit-learn",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs) -> dict[str, Requirement]:
    out = {}
    for r in reqs:
        req = Requirement(r)
        out[canonicalize_name(req.name)] = req
    return out


def _core() -> dict[str, Requirement]:
    return _names(_pyproject()["project"]["dependencies"])


def _extras() -> dict[str, dict[str, Requirement]]:
    return {k: _names(v) for k, v in _pyproject()["project"].get("optional-dependencies", {}).items()}


def _third_party_imports() -> dict[str, set[str]]:
    """Every top-level module imported anywhere in lib/sscild (lazy imports inside functions too),
    other than the standard library and sscild itself -> the files importing it (relative to lib/sscild)."""
    found: dict[str, set[str]] = {}
    for path in sorted(LIB.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top in ("sscild", "__future__"):
                    continue
                found.setdefault(top, set()).add(path.relative_to(LIB).as_posix())
    return found


def _dist(module: str) -> str:
    return canonicalize_name(DIST_OF_IMPORT.get(module, module))


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"requirements.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def test_every_import_is_declared():
    """Imports outside sscild.book are core dependencies; sscild.book (chapters, book build, browser
    check) may also use its extras."""
    core, extras = _core(), _extras()
    any_extra = set().union(*extras.values()) if extras else set()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        dist = _dist(module)
        outside_book = sorted(f for f in files if not f.startswith("book/"))
        if outside_book and dist not in core:
            missing.append(f"{module} ({dist}): imported by {', '.join(outside_book)}, not in [project].dependencies")
        elif not outside_book and dist not in core and dist not in any_extra:
            missing.append(f"{module} ({dist}): imported by {', '.join(sorted(files))}, in no dependency list")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


def test_every_core_dependency_is_imported():
    imported = {_dist(m) for m in _third_party_imports()}
    unused = sorted(set(_core()) - imported)
    assert not unused, f"[project].dependencies not imported anywhere in lib/sscild: {unused}"


def test_requirements_pin_pyproject_exactly():
    """requirements.txt (what `make setup` installs) pins every dependency and extra, within the ranges
    pyproject gives, and nothing else."""
    pins = _pins()
    declared = dict(_core())
    for reqs in _extras().values():
        declared.update(reqs)
    assert sorted(set(declared) - set(pins)) == [], "declared in pyproject.toml but not pinned in requirements.txt"
    assert sorted(set(pins) - set(declared)) == [], "pinned in requirements.txt but declared nowhere in pyproject.toml"
    outside = [f"{n}=={pins[n]} (pyproject: {r.specifier})" for n, r in declared.items()
               if not r.specifier.contains(pins[n], prereleases=True)]
    assert not outside, f"pins outside pyproject's ranges: {outside}"


def test_torch_pin_is_written_once():
    """The Makefile's torch step reads the pin from requirements.txt; nothing else repeats it."""
    pin = _pins()["torch"]
    for name in ("Makefile", "README.md", "environment.yml"):
        path = ROOT / name
        if path.exists():
            assert f"torch=={pin}" not in path.read_text(), f"{name} repeats the torch pin {pin}"


def _supported() -> list[str]:
    return sorted((c.rsplit("::", 1)[1].strip() for c in _pyproject()["project"]["classifiers"]
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)), key=Version)


def test_requires_python_matches_classifiers_and_readme():
    supported = _supported()
    assert supported, "no 'Programming Language :: Python :: 3.N' classifiers"
    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert [s.operator for s in spec] == [">="], "requires-python: a lower bound only"
    assert Version(next(iter(spec)).version) == Version(supported[0])
    assert all(spec.contains(v) for v in supported)
    assert not spec.contains(f"3.{Version(supported[0]).minor - 1}")
    # README's installation section names the same versions: "Python 3.11 and 3.12"
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Installing\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## Installing' section"
    stated = re.search(r"Python (3\.\d+(?:(?:, | and | or )3\.\d+)*)", section.group(1))
    assert stated, "README's 'Installing' section does not state the Python versions"
    assert re.findall(r"3\.\d+", stated.group(1)) == supported


def test_version_is_written_once():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project.get("dynamic", [])
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sscild.__version__"}
    assigned = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
                assigned.append((path.relative_to(LIB).as_posix(), node.value))
    assert [f for f, _ in assigned] == ["__init__.py"], assigned
    version = assigned[0][1]
    assert isinstance(version, ast.Constant) and isinstance(version.value, str)  # setuptools reads it without importing
    Version(version.value)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    if "version" in cff:
        assert str(cff["version"]) == version.value, "CITATION.cff's version differs from sscild.__version__"


def test_license_file():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert "LICENSE" in project.get("license-files", [])


@pytest.fixture(scope="module")
def cff() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_citation_cff(cff):
    for key in ("cff-version", "message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff: {key} is missing"
    assert cff["cff-version"] == "1.2.0"
    assert cff.get("type", "software") == "software"
    assert cff["license"] == _pyproject()["project"]["license"]
    for person in cff["authors"]:
        assert person.get("name") or person.get("family-names"), person
    for ref in cff.get("references", []):
        assert ref.get("type") and ref.get("title") and ref.get("authors"), ref
    if "repository-code" in cff:
        book = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
        assert cff["repository-code"] == book["repository"]["url"], "CITATION.cff and book/_config.yml name different repositories"
