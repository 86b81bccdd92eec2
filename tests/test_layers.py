"""The package's layering, read from the source: imports go one way.

The daemon and the API sit on top; the runner, adoption, the subsystems, the bus, the runtime and
the pure core below them. A module below importing the daemon or the API (even inside a function
or under TYPE_CHECKING) would let the layers grow back into one, and an import cycle among
module-level imports is how that starts.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "supervisor"

#: the modules allowed to import supervisor.daemon or supervisor.api: the entry points, the API
#: itself, and the stress harness, which drives a whole supervisor
TOP = ("supervisor.cli", "supervisor.clientcli", "supervisor.__main__", "supervisor.daemon")
TOP_PACKAGES = ("supervisor.api", "supervisor.testing", "supervisor.stress_cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return set()


def imports(path: Path, *, module_level: bool) -> set[str]:
    """The package's modules ``path`` imports: all of them, or only those imported at module
    level (which includes ``if TYPE_CHECKING:`` and ``try:`` blocks at the top)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    if module_level:
        for node in tree.body:
            found |= _names(node)
            if isinstance(node, ast.If | ast.Try):
                for inner in node.body:
                    found |= _names(inner)
    else:
        for any_node in ast.walk(tree):
            found |= _names(any_node)
    return {name for name in found if name in MODULES}


def _is_top(name: str) -> bool:
    return name in TOP or any(name == p or name.startswith(p + ".") for p in TOP_PACKAGES)


def test_nothing_below_the_daemon_imports_it_or_the_api() -> None:
    wrong = {
        name: sorted(
            dep
            for dep in imports(path, module_level=False)
            if dep == "supervisor.daemon" or dep.startswith("supervisor.api")
        )
        for name, path in MODULES.items()
        if not _is_top(name)
    }
    assert {} == {name: deps for name, deps in wrong.items() if deps}


def test_no_import_cycle_at_module_level() -> None:
    graph = {name: imports(path, module_level=True) for name, path in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert [] == cycles


def test_the_checks_see_the_imports() -> None:
    """The reader finds what it must: the daemon's own imports (so an empty answer above means
    something)."""
    daemon = imports(MODULES["supervisor.daemon"], module_level=True)
    assert {"supervisor.runner", "supervisor.adoption", "supervisor.lifecycle"} <= daemon
    assert "supervisor.api.server" in imports(MODULES["supervisor.daemon"], module_level=False)
