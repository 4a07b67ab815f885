"""The import rules of DESIGN.md's layout, read from every module's imports (function-level included).

Why: the layout only stays true if a broken rule fails a test; each failure names the module and the import.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "perftop"

# The frameworks the agent hooks and imports, only lazily, inside functions (the others it reaches through
# sys.modules): SQLAlchemy (the SQL hook, EXPLAIN), Django (its ORM hook), Celery (its task signals).
AGENT_LAZY_FRAMEWORKS = frozenset({"sqlalchemy", "django", "celery"})
# Modules outside `agent/` that the agent may use: stdlib-only wire code, and the app-side public API
# (`perftop`, its version, the WSGI/ASGI middleware the framework hooks install).
AGENT_MAY_IMPORT = ("perftop.agent", "perftop.wire", "perftop._version")
AGENT_MAY_IMPORT_EXACTLY = ("perftop",)

KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Cycles not broken yet, each with why and what breaks it. A cycle listed here that no longer exists fails
the test too, so the list only shrinks."""


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, at which line, and whether it sits inside a function."""

    importer: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """The dotted module name of a file under perftop/."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every perftop module by dotted name."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an `from ... import` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _under_type_checking(node: ast.If) -> bool:
    """Whether an `if` is `if TYPE_CHECKING:` (annotations only, never run)."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every runtime import in one module; `from pkg import sub` counts as importing the submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _under_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(name, alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(name, sub if sub in modules else base, node.lineno, in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    """Every runtime import of every perftop module."""
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def _within(module: str, package: str) -> bool:
    """Whether `module` is `package` or inside it."""
    return module == package or module.startswith(package + ".")


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(edges):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return cycles


def test_no_import_cycles() -> None:
    """No cycle among perftop modules, counting imports inside functions too."""
    modules = all_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    where: dict[tuple[str, str], int] = {}
    for imp in all_imports():
        if imp.target in modules and imp.target != imp.importer:
            edges[imp.importer].add(imp.target)
            where.setdefault((imp.importer, imp.target), imp.line)
    problems = []
    found = find_cycles(edges)
    for gone in set(KNOWN_CYCLES) - {frozenset(component) for component in found}:
        problems.append("no longer a cycle, remove it from KNOWN_CYCLES: " + ", ".join(sorted(gone)))
    for component in found:
        if frozenset(component) in KNOWN_CYCLES:
            continue
        members = set(component)
        links = [
            f"{src} (line {where[(src, dst)]}) imports {dst}"
            for src in component
            for dst in sorted(edges[src] & members)
        ]
        problems.append("cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(links))
    assert not problems, "\n".join(problems)


def test_nothing_imports_cli_or_commands() -> None:
    """Only cli imports commands, and commands only `commands._args`; `python -m perftop` runs cli.main."""
    problems = []
    for imp in all_imports():
        if not (_within(imp.target, "perftop.cli") or _within(imp.target, "perftop.commands")):
            continue
        if imp.importer == "perftop.__main__" and imp.target == "perftop.cli":
            continue
        if imp.importer == "perftop.cli" and _within(imp.target, "perftop.commands"):
            continue
        if _within(imp.importer, "perftop.commands") and imp.target in (
            "perftop.commands",
            "perftop.commands._args",
        ):
            continue
        problems.append(f"{imp.importer} (line {imp.line}) imports {imp.target}")
    assert not problems, "\n".join(problems)


def test_agent_imports_stdlib_and_agent_side_only() -> None:
    """`perftop/agent/` imports the stdlib and agent-side modules; frameworks only lazily, in functions."""
    stdlib = sys.stdlib_module_names
    problems = []
    for imp in all_imports():
        if not _within(imp.importer, "perftop.agent"):
            continue
        top = imp.target.split(".")[0]
        if top in stdlib or top == "__future__":
            continue
        if imp.target in AGENT_MAY_IMPORT_EXACTLY or any(_within(imp.target, ok) for ok in AGENT_MAY_IMPORT):
            continue
        if top in AGENT_LAZY_FRAMEWORKS and imp.in_function:
            continue
        kind = "at module level" if not imp.in_function else "inside a function"
        problems.append(f"{imp.importer} (line {imp.line}) imports {imp.target} {kind}")
    assert not problems, "\n".join(problems)


def test_panes_do_not_import_the_app() -> None:
    """Panes reach the app through messages or a protocol below both, never by importing tui.app."""
    problems = [
        f"{imp.importer} (line {imp.line}) imports {imp.target}"
        for imp in all_imports()
        if _within(imp.importer, "perftop.tui.panes") and _within(imp.target, "perftop.tui.app")
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import b\n", {"pkg.b"}),
        ("def f():\n    from .b import x\n", {"pkg.b"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n", {"typing"}),
    ],
)
def test_reader_sees_relative_lazy_and_skips_type_checking(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    """The reader itself: relative and function-level imports count, `if TYPE_CHECKING:` blocks do not."""
    path = tmp_path / "a.py"
    path.write_text(source, encoding="utf-8")
    modules = {"pkg.a": path, "pkg.b": tmp_path / "b.py"}
    assert {imp.target for imp in imports_of("pkg.a", path, modules)} == expected


def test_cycle_finder_reports_a_cycle() -> None:
    """The cycle finder itself on a known graph."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LAYER_MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "perftop.wire": (),
    "perftop.agent": ("perftop.wire",),
    "perftop.collectors": ("perftop.wire",),
    "perftop.render": ("perftop.wire", "perftop.collectors"),
    "perftop.export": ("perftop.wire", "perftop.collectors", "perftop.render"),
    "perftop.recording": ("perftop.wire", "perftop.collectors", "perftop.render"),
    "perftop.launch": ("perftop.wire", "perftop.collectors", "perftop.render"),
    "perftop.tui": (
        "perftop.wire",
        "perftop.collectors",
        "perftop.render",
        "perftop.recording",
        "perftop.launch",
    ),
}
"""DESIGN.md's layers, each with the perftop packages below it that it may import (besides itself and
`perftop._version`). `cli` and `commands` may import any of them; the other test above keeps them on top."""

IN_APP_LAUNCHERS = {
    "perftop.launch._bootstrap.sitecustomize": ("perftop.agent",),
    "perftop.launch.demo_service": ("perftop",),
    "perftop.agent.autostart": ("perftop",),
}
"""Modules that start an agent inside the monitored app, as the app itself would: the bootstrap `perftop run`
puts on the app's path (it imports the agent lazily, once the program runs), the demo service (an
instrumented app) and the agent's autostart (both through the public API, `perftop.start`)."""


def test_every_module_imports_only_its_layer_and_below() -> None:
    """No upward or sideways import between DESIGN.md's layers (function-level imports count too)."""
    problems = []
    for imp in all_imports():
        if not _within(imp.target, "perftop") or _within(imp.target, "perftop._version"):
            continue
        layer = next((name for name in LAYER_MAY_IMPORT if _within(imp.importer, name)), None)
        if layer is None or _within(imp.target, layer):
            continue
        allowed = LAYER_MAY_IMPORT[layer] + IN_APP_LAUNCHERS.get(imp.importer, ())
        if any(imp.target == ok if ok == "perftop" else _within(imp.target, ok) for ok in allowed):
            continue
        problems.append(f"{imp.importer} (line {imp.line}) imports {imp.target}, outside {layer}'s layers")
    assert not problems, "\n".join(problems)


def test_the_public_facades_import_only_the_agent() -> None:
    """`perftop`, `perftop.wsgi` and `perftop.asgi` run in instrumented apps: agent-side code only, so an app
    never needs Textual, psutil or SQLAlchemy installed."""
    problems = []
    for imp in all_imports():
        if imp.importer not in ("perftop", "perftop.wsgi", "perftop.asgi"):
            continue
        top = imp.target.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if any(_within(imp.target, ok) for ok in ("perftop.agent", "perftop.wire", "perftop._version")):
            continue
        problems.append(f"{imp.importer} (line {imp.line}) imports {imp.target}")
    assert not problems, "\n".join(problems)


def test_no_private_name_is_imported_or_reached_across_modules() -> None:
    """DESIGN.md: no private (`_name`) imports across modules: neither `from perftop.x import _y` nor
    `x._y` on an imported perftop module (`perftop._version`, the version module, is the one exception)."""
    problems = []
    for name, path in all_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perftop"):
                for alias in node.names:
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and alias.name != "_version"
                    ):
                        problems.append(f"{name} (line {node.lineno}) imports {node.module}.{alias.name}")
                    modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules.update(
                    alias.asname or alias.name.split(".")[0]
                    for alias in node.names
                    if alias.name.startswith("perftop")
                )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                problems.append(f"{name} (line {node.lineno}) reaches {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)
