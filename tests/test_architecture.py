"""
The layout's rules, checked over the source: imports point one way, dependencies stay put.

Read from the AST of klavi_async's top-level modules (the `_cli`, `nats` and `testing`
packages sit on top and are not part of the core).  Imports under `if TYPE_CHECKING:`
do not run: they count for cycles (a type-level cycle is still a layering fault), with
one edge allowed (`TYPE_ONLY_ALLOWED`), and not for the third-party rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import klavi_async

PACKAGE = Path(klavi_async.__file__).parent
MODULES = {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}
MAX_LINES = 400
TYPE_ONLY_ALLOWED = {("_errors", "_results")}
"""`KlaviError.result` is annotated `CancelFailed | None`; results build the errors."""


def _runtime_imports(
    tree: ast.Module, *, typing: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (or, with *typing*, is only type-checked)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not typing and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(*, typing: bool = False) -> dict[str, set[str]]:
    """Module → the package's top-level modules it imports (at run time, or at all)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text()), typing=typing):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import _batch
                    targets.update(alias.name for alias in node.names)
                else:
                    targets.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("klavi_async"):
                targets.add((node.module or "").split(".")[1])
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def _external(name: str) -> set[str]:
    """The third-party and stdlib top-level packages *name* imports at run time."""
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert "_cancel" in graph["_client"]
    assert "_batch" in graph["_client"]  # `from . import _batch`
    assert "_kinds" in graph["_errors"]


def test_no_import_cycle_among_the_core_modules() -> None:
    assert _cycle(_graph()) is None


def test_no_type_level_cycle_either() -> None:
    graph = _graph(typing=True)
    for source, target in TYPE_ONLY_ALLOWED:
        assert target in graph[source] and target not in _graph()[source]
        graph[source].discard(target)
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_batch_knows_no_client() -> None:
    graph = _graph()
    assert "_client" not in graph["_batch"]
    assert "_cancel" not in graph["_batch"]


def test_results_build_errors_and_errors_know_no_results() -> None:
    graph = _graph()
    assert "_errors" in graph["_results"]
    assert "_results" not in graph["_errors"]


def test_the_retryable_table_imports_nothing_of_ours() -> None:
    assert _graph()["_kinds"] == set()


def test_only_the_transport_imports_aiohttp_and_only_retry_imports_tenacity() -> None:
    assert {name for name in MODULES if "aiohttp" in _external(name)} == {"_transport"}
    assert {name for name in MODULES if "tenacity" in _external(name)} == {"_retry"}


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_function_on_the_cancel_path_is_over_sixty_lines() -> None:
    """Sixty lines of code, signature included, docstring not."""
    long = []
    for name in (
        "_cancel",
        "_attempt",
        "_status",
        "_retry",
        "_auth",
        "_client",
        "_batch",
        "_transport",
        "_outcome",
    ):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if ast.get_docstring(node) is not None:  # the docstring is not code
                    doc = node.body[0]
                    length -= (doc.end_lineno or doc.lineno) - doc.lineno + 1
                if length > 60:
                    long.append(f"{name}.{node.name}: {length}")
    assert long == []
