"""The pricing modules import each other without a cycle (imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

PRICING = Path(__file__).resolve().parent.parent / "footprint" / "pricing"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The sibling modules ``path`` imports anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            names = (
                [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []
            )
            found |= {n.split(".")[2] for n in names if n.startswith("footprint.pricing.")}
            continue
        module = node.module or ""
        if node.level == 0:
            if not module.startswith("footprint.pricing"):
                continue
            module = module[len("footprint.pricing") :].lstrip(".")
        heads = [module] if module else [a.name for a in node.names]
        found |= {head.split(".")[0] for head in heads}
    return (found & modules) - {path.stem}


def test_no_import_cycle_in_pricing():
    modules = {p.stem for p in PRICING.glob("*.py")} - {"__init__"}
    graph = {name: _imports(PRICING / f"{name}.py", modules) for name in modules}
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        if name in done:
            return
        for imported in sorted(graph[name]):
            walk(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
