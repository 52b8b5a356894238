"""The module graph of voxgate's packages: no import cycle, and dependencies point one way.

Every `import` and `from ... import` statement counts, wherever it stands: at module level,
inside a function, or under `if TYPE_CHECKING:` (a cycle hidden from the interpreter is still a
cycle for a reader). Relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Repository folder -> installed package (pyproject's package-dir).
PACKAGES = {
    "server": "voxgate.server",
    "streaming": "voxgate.streaming",
    "model": "voxgate.model",
    "clients": "voxgate.clients",
}
# What each package may never import (DESIGN.md: server -> streaming -> model).
FORBIDDEN = {
    "voxgate.model": ("voxgate.server", "voxgate.streaming", "voxgate.clients"),
    "voxgate.streaming": ("voxgate.server", "voxgate.clients"),
}


def module_files() -> dict[str, Path]:
    """Every module of the four packages by its dotted name (a package by its `__init__.py`)."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules one module imports, relative imports resolved.

    `from a import b` names the module `a.b` where there is one, else the module `a` (`b` is
    an attribute of it); `import a.b.c` names the longest prefix that is a project module.
    """
    package = name if _is_package(path) else name.rpartition(".")[0]

    def longest_module(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(longest_module(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else longest_module(source))
    return {module for module in found if module is not None and module != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of its modules (the first repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if cycle := visit(imported):
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def module_lines() -> dict[str, int]:
    """Lines per module, for a reader who wants to see where the weight is (not asserted)."""
    return {name: len(path.read_text().splitlines()) for name, path in module_files().items()}


def print_module_lines() -> None:
    for name, lines in sorted(module_lines().items(), key=lambda item: item[1]):
        print(f"{lines:6d} {name}")


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_dependencies_point_one_way() -> None:
    wrong = [
        f"{module} imports {imported}"
        for module, edges in import_graph().items()
        for package, forbidden in FORBIDDEN.items()
        if _within(module, package)
        for imported in sorted(edges)
        if any(_within(imported, other) for other in forbidden)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_kind_of_import_counts(tmp_path: Path) -> None:
    """The parser itself: TYPE_CHECKING, function-level and relative imports all count, and
    `from package import name` names the module `name` where there is one."""
    (tmp_path / "pkg").mkdir()
    source = """
from typing import TYPE_CHECKING
from . import sibling
from .sub import helper
import pkg.plain
if TYPE_CHECKING:
    from pkg.typed import Thing
def later():
    from pkg import lazy
"""
    names = ["pkg", "pkg.user", "pkg.sibling", "pkg.sub", "pkg.plain", "pkg.typed", "pkg.lazy"]
    modules = {name: tmp_path / "pkg" / f"{name}.py" for name in names}
    modules["pkg"] = tmp_path / "pkg" / "__init__.py"
    modules["pkg.user"].write_text(source)
    assert imported_modules("pkg.user", modules["pkg.user"], modules) == set(names) - {
        "pkg",
        "pkg.user",
    }


def test_a_cycle_is_found_and_named() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


if __name__ == "__main__":
    print_module_lines()
    print("cycle:", find_cycle(import_graph()))
