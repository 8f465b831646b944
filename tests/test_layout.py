"""The package's architecture, asserted: the runtime never imports the evaluation tooling or SPS at module
level, no module-level import cycle exists, and importing the adapters loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semgrad_guard"
TOOLING = ("semgrad_guard.evaluation", "semgrad_guard.sps")
# The one lazy door from the runtime into SPS: SemGradScorer(profile="auto").
LAZY_ALLOWED = {("semgrad_guard.scorer", "semgrad_guard.sps")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """Modules imported at module level (outside ``if TYPE_CHECKING``), and inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    lazy: set[str] = set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        return set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            (lazy if in_function else top).update(names(child))
            visit(child, nested)

    visit(tree, False)
    return top, lazy


MODULES = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def internal(targets: set[str]) -> set[str]:
    """The package modules among ``targets`` (``a.b.name`` counts as ``a.b`` when ``name`` is no module)."""
    found = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target.startswith("semgrad_guard"):
            found.add(target)
    return found


def is_runtime(module: str) -> bool:
    return not module.startswith(TOOLING) and module != "semgrad_guard.cli"


def test_runtime_never_imports_tooling() -> None:
    runtime = [m for m in MODULES if is_runtime(m)]
    assert "semgrad_guard.scorer" in runtime and "semgrad_guard.statistics" in runtime
    for module in runtime:
        top, lazy = (internal(found) for found in MODULES[module])
        assert not any(t.startswith(TOOLING) for t in top), (module, top)
        for target in lazy:
            if target.startswith(TOOLING):
                assert (module, target.split(".sps")[0] + ".sps") in LAZY_ALLOWED, (module, target)


def test_no_module_level_import_cycle() -> None:
    graph = {module: internal(top) - {module} for module, (top, _) in MODULES.items()}
    # A package's __init__ importing its own submodules is not a cycle through them.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, set()):
            if state.get(target) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path, module, target])}")
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize(
    "package", ["semgrad_guard", "langchain_semgrad", "llama_index.evaluation.semgrad", "semgrad_guard.cli"]
)
def test_importing_loads_no_torch(package: str) -> None:
    """Adapters and configs import fast: torch and transformers load when a scorer loads its model."""
    code = f"import sys, {package}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
