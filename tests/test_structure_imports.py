"""The package's structure: no import cycle among its modules, argument parsing only in the
command line, and no module file longer than ``MAX_LINES`` except the debt listed below.

The import graph is read from the source with ``ast`` (nothing is imported): an edge a -> b for
every ``import``/``from ... import`` of a module of the package in a, at module level or inside a
function (a lazy import still ties the two modules together) or under ``if TYPE_CHECKING:`` (a
type that names another module ties the two as well, and hides a cycle from the interpreter only).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "pyro_dirichlet_prune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400

TOO_LONG: set[str] = set()
"""Known debt: modules over MAX_LINES lines, to be split like search/, cli/ and pipeline were.
Remove an entry when its module is split; the test fails for any other module that grows past
MAX_LINES."""

KNOWN_LAZY_CYCLES: list[list[str]] = [
    # Known debt: cycles closed only by imports inside functions (they run, so they tie the
    # modules together, but they do not fail at import time). Remove an entry when it is fixed;
    # the test fails for any other cycle.
]

ARGPARSE_ALLOWED = ("cli",)
"""Only the command line parses arguments; the library takes plain values."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path], toplevel_only: bool = False) -> set[str]:
    """The modules of the package that module ``name`` imports (top-level names of imports such
    as ``argparse`` are returned too, prefixed with ``"ext:"``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            visit_one(child)  # imports under ``if TYPE_CHECKING:`` count too: a cycle hidden there is a cycle

    def visit_one(node: ast.AST) -> None:
        if toplevel_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name.startswith(PACKAGE) else f"ext:{alias.name.split('.')[0]}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(PACKAGE):
                found.add(f"ext:{target.split('.')[0]}")
            else:
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
        visit(node)

    visit(tree)
    return {m for m in found if m != name and (m.startswith("ext:") or m in modules)}


def import_graph(toplevel_only: bool = False) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    modules = _modules()
    return {n: {m for m in _imports(n, p, modules, toplevel_only) if not m.startswith("ext:")}
            for n, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """Module-level imports form no cycle; with the lazy imports inside functions, the only
    cycles are the known ones."""
    assert cycles(import_graph(toplevel_only=True)) == []
    found = cycles(import_graph())
    new = [c for c in found if c not in KNOWN_LAZY_CYCLES]
    assert new == [], f"import cycles (lazy imports included): {new}"


def test_the_library_does_not_import_the_command_line():
    graph = import_graph()
    cli = {m for m in graph if m == f"{PACKAGE}.cli" or m.startswith(f"{PACKAGE}.cli.")}
    assert cli, "no cli module found"
    offenders = {m: sorted(graph[m] & cli) for m in graph
                 if m not in cli and m != f"{PACKAGE}.__main__" and graph[m] & cli}
    assert offenders == {}


def test_only_the_command_line_uses_argparse():
    modules = _modules()
    users = sorted(n for n, p in modules.items() if "ext:argparse" in _imports(n, p, modules))
    allowed = [n for n in users if any(n == f"{PACKAGE}.{a}" or n.startswith(f"{PACKAGE}.{a}.")
                                       for a in ARGPARSE_ALLOWED)]
    assert users == allowed, f"argparse imported outside the command line: {sorted(set(users) - set(allowed))}"
    assert allowed, "the command line no longer imports argparse?"


def test_module_length():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    too_long = {f: n for f, n in lengths.items() if n > MAX_LINES and f not in TOO_LONG}
    assert too_long == {}, f"modules over {MAX_LINES} lines not listed as known debt: {too_long}"


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# Known debt: library modules whose error messages still speak of command-line flags (none now).
# The library names the argument (``rate must be in [0, 1), got 1.5``, ``resume=True``);
# ``cli.options.flag_words`` turns such names into flags for the command line.
FLAGS_IN_MESSAGES: set[str] = set()


def _raised_text(node: ast.Raise) -> list[str]:
    """The string constants (f-string parts included) of the exception a ``raise`` builds."""
    if node.exc is None:
        return []
    return [n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def flags_in_messages() -> dict[str, list[str]]:
    """``{module file: flags its raised messages name}`` for the library (the cli excluded)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("cli"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        flags = sorted({f for node in ast.walk(tree) if isinstance(node, ast.Raise)
                        for text in _raised_text(node) for f in FLAG.findall(text)})
        if flags:
            found[rel] = flags
    return found


def test_library_messages_name_arguments_not_flags():
    found = flags_in_messages()
    new = {f: flags for f, flags in found.items() if f not in FLAGS_IN_MESSAGES}
    assert new == {}, f"library modules whose error messages name command-line flags: {new}"
