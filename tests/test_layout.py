"""The package's layout as docs/internals.md states it: no import circle between modules, and each
folder imports only the folders below it (core the math, runtime the machinery, ...)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neural_alignment"

LAYERS = {
    "core": set(),
    "runtime": {"core"},
    "registry": {"core"},
    "recipes": {"core", "runtime", "registry"},
    "training": {"core", "runtime", "recipes", "registry"},
    "grids": {"core", "runtime", "recipes", "registry", "training", "analysis"},
    "search": {"core", "runtime", "recipes", "registry", "training", "grids", "analysis"},
    "analysis": {"core", "runtime", "recipes", "registry", "training"},
}
"""Which top-level folders each folder may import (``plugins``, ``api.py`` and ``cli.py`` may import any)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every ``neural_alignment`` module ``path`` imports, at module level or inside a function
    (``from package import submodule`` imports the submodule, not the package's ``__init__``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("neural_alignment")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neural_alignment"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path, set(paths)) if m in paths and m != name} for name, path in paths.items()}


def test_no_module_imports_itself_back_through_others():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_a_folder_imports_only_the_folders_below_it(folder):
    allowed = LAYERS[folder] | {folder}
    bad = []
    for module, targets in graph().items():
        if module.split(".")[1:2] != [folder]:
            continue
        for target in targets:
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed:
                bad.append(f"{module} imports {target}")
    # the old paths of three runtime modules stay importable from core for plugins (core/backend.py etc.)
    bad = [
        b for b in bad if not b.startswith(tuple(f"neural_alignment.core.{m} " for m in ("backend", "data", "logger")))
    ]
    assert not bad, "\n".join(bad)


def test_the_old_plugin_paths_still_give_the_moved_classes():
    import warnings

    from neural_alignment.runtime.backend import Backend
    from neural_alignment.runtime.data import DataSplits
    from neural_alignment.runtime.logger import Logger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from neural_alignment.core.backend import Backend as OldBackend
        from neural_alignment.core.data import DataSplits as OldDataSplits
        from neural_alignment.core.logger import Logger as OldLogger
    assert (OldBackend, OldDataSplits, OldLogger) == (Backend, DataSplits, Logger)
