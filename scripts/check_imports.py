"""Check that imports inside src/onceonly run one way: no circle, no import upwards.

Reads the ``ast`` of every module (imports inside functions and under
``TYPE_CHECKING`` count too: a lazy import is still a dependency) and fails,
printing each offence, when

- two or more modules import each other, directly or around a circle; or
- a module imports one of a higher floor. The floors, lowest first:
  records/keys/config/errors (and the other leaf modules), stores, the engine
  tier (engine.py and the batch flow beside it), the drivers (_sync.py,
  _async.py, and telemetry.py, which watches their steps), and the public
  entry points (everything else).

Run by scripts/test, so a circle introduced later fails CI.
Usage: python scripts/check_imports.py [SRC_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "onceonly"

# Floor of each module (by dotted name without the package); anything not listed
# is a public entry point. A module may import its own floor or lower ones.
LEAVES = {
    "errors",
    "records",
    "codec",
    "keys",
    "config",
    "metrics",
    "cache",
    "serializers",
    "runtime",
    "naming",
    "rebuild",
    "powertools_records",
    "_lazy",
    "jmespath_functions",
}
ENGINE = {"engine", "batch_engine"}
DRIVERS = {"_sync", "_async", "telemetry"}
FLOOR_NAMES = ["leaf", "store", "engine", "driver", "entry point"]


def floor(module: str) -> int:
    """The floor of ``onceonly.<module>`` (0 lowest)."""
    name = module.removeprefix(PACKAGE + ".")
    if name in LEAVES:
        return 0
    if name == "stores" or name.startswith("stores."):
        return 1
    if name in ENGINE:
        return 2
    if name in DRIVERS:
        return 3
    return 4


def module_names(src: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    names: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from .x import y`` imports the module x.y when there is one, else x.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src"
    modules = module_names(src)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    problems = [f"import circle: {' <-> '.join(group)}" for group in circles(graph)]
    for name in sorted(graph):
        for target in sorted(graph[name]):
            if floor(target) > floor(name):
                problems.append(
                    f"{name} ({FLOOR_NAMES[floor(name)]}) imports {target} "
                    f"({FLOOR_NAMES[floor(target)]}): imports must run downwards"
                )
    for problem in problems:
        print(f"check_imports: {problem}", file=sys.stderr)
    if not problems:
        edges = sum(len(targets) for targets in graph.values())
        print(f"check_imports: {len(modules)} modules, {edges} imports, no circle, none upwards")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
