"""pyproject.toml declares what footprint imports; nothing private of typer or click is used."""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "footprint"
# Import names whose distribution is named otherwise, for when it is not installed here.
DISTRIBUTION_OF = {"pynvml": "nvidia-ml-py", "yaml": "pyyaml", "PIL": "pillow"}
NEWER_STDLIB = {"tomllib"}  # stdlib from 3.11 on (tomli is imported before that)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return normalize(match.group(1))


def _guarded_by_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
            for n in names
        ):
            return True
    return False


@functools.cache
def imports() -> list[tuple[str, str, bool]]:
    """(module, file, optional) for each absolute import in footprint/; optional: inside a
    ``try`` that catches ImportError."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        optional_nodes: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and _guarded_by_import_error(node):
                for inner in node.body:
                    optional_nodes.update(id(n) for n in ast.walk(inner))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                found.append((module, str(path.relative_to(ROOT)), id(node) in optional_nodes))
    return found


def third_party(module: str) -> str | None:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in NEWER_STDLIB or top in ("footprint", "__future__"):
        return None
    return top


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def distributions(top: str) -> set[str]:
    """The distributions that may provide import name ``top``."""
    names = {normalize(DISTRIBUTION_OF.get(top, top))}
    names.update(normalize(d) for d in installed_distributions().get(top, []))
    return names


def declared() -> tuple[set[str], set[str]]:
    """(core dependencies, dependencies of any extra), normalized names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        requirement_name(r)
        for group in project.get("optional-dependencies", {}).values()
        for r in group
    }
    return core, extras


def test_every_third_party_import_is_a_declared_dependency():
    core, extras = declared()
    missing = []
    for module, path, optional in imports():
        top = third_party(module)
        if top is None:
            continue
        allowed = core | extras if optional else core
        if not distributions(top) & allowed:
            where = "dependencies or an extra" if optional else "dependencies"
            missing.append(f"{path}: {top} (not in [project] {where})")
    assert not missing, "imported but not declared:\n" + "\n".join(sorted(set(missing)))


def test_the_check_sees_the_imports_it_must():
    tops = {third_party(m) for m, _, _ in imports()} - {None}
    assert {"typer", "rich", "sqlalchemy", "sqlmodel", "matplotlib", "pynvml"} <= tops
    assert distributions("pynvml") >= {"nvidia-ml-py"}


@pytest.mark.parametrize("group", ["dependencies", "postgres", "parquet", "amd"])
def test_every_dependency_has_a_lower_bound(group):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = (
        project["dependencies"]
        if group == "dependencies"
        else project["optional-dependencies"][group]
    )
    unbounded = [r for r in requirements if ">=" not in r.split(";")[0]]
    assert not unbounded


def test_no_private_typer_or_click_imports():
    private = []
    for module, path, _ in imports():
        parts = module.split(".")
        if parts[0] in ("typer", "click") and any(p.startswith("_") for p in parts[1:]):
            private.append(f"{path}: {module}")
    assert not private
