"""
The layout's rules, checked over the source: imports point one way, dependencies stay put.

Read from the AST.  The core is klavi_async's top-level modules; above it, the library
packages `nats` and `testing`; on top, `_cli`, which owns every command.  A package
uses another only through its public names (its `__init__`), never a private module;
the core is the layer every package builds on.  Imports under `if TYPE_CHECKING:` do
not run: they count for cycles (a type-level cycle is still a layering fault) and not
for the third-party rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import klavi_async

PACKAGE = Path(klavi_async.__file__).parent
MODULES = {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60
PACKAGES = ("_cli", "nats", "testing")
ALL_MODULES = {
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
    for path in sorted(PACKAGE.rglob("*.py"))
}
"""Every module of the distribution by dotted name under klavi_async: `_cli._runner`."""
LAYER = {"": 0, "testing": 1, "nats": 1, "_cli": 2}
"""The core below, the libraries above it, the commands on top."""


def _runtime_imports(
    tree: ast.Module, *, typing: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (or, with *typing*, is only type-checked)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not typing and isinstance(node, ast.If) and _is_type_checking(node.test) is not None:
            # `if TYPE_CHECKING:` runs its else; `if not TYPE_CHECKING:` its body.
            runs = node.orelse if _is_type_checking(node.test) else node.body
            for child in runs:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _is_type_checking(test: ast.expr) -> bool | None:
    """True for `TYPE_CHECKING` (or `typing.TYPE_CHECKING`), False for its `not`, else None."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _is_type_checking(test.operand)
        return None if inner is None else not inner
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
    return True if name == "TYPE_CHECKING" else None


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
    assert _cycle(_graph(typing=True)) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_batch_knows_no_client() -> None:
    graph = _graph()
    assert "_client" not in graph["_batch"]
    assert "_cancel" not in graph["_batch"]


def test_failures_build_on_results_and_results_know_no_failures() -> None:
    graph = _graph(typing=True)
    assert "_results" in graph["_errors"]
    assert "_errors" not in graph["_results"]


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


# --- the packages: a library below, commands above ---------------------------------


def _package(module: str) -> str:
    """`_cli._runner` -> `_cli`; a core module (`_client`) -> ``."""
    return module.split(".")[0] if "." in module or module in PACKAGES else ""


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The dotted names (under klavi_async) an import of ours reaches, else []."""
    if node.level == 0:
        if not (node.module or "").startswith("klavi_async"):
            return []
        base = (node.module or "").split(".")[1:]
    else:
        # The package the import is relative to: `nats._worker` and `nats.__init__` are
        # both in `nats`; each further dot climbs one package.
        here = module.split(".")[:-1]
        base = here[: len(here) - (node.level - 1)] + (node.module or "").split(".")
        base = [part for part in base if part]
    target = ".".join(base)
    # `from ..nats import _worker` names a module: the import reaches it, not only `nats`.
    named = [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
    modules = [name for name in named if _is_module(name)]
    if node.module is None:
        return modules
    return [target, *modules]


def _is_module(dotted: str) -> bool:
    return dotted in ALL_MODULES or f"{dotted}.__init__" in ALL_MODULES


def _edges(*, typing: bool = True) -> dict[str, set[str]]:
    """Every module -> the dotted names of ours it imports (`nats`, `_cli._rows`, ...)."""
    edges: dict[str, set[str]] = {}
    for dotted, path in ALL_MODULES.items():
        module = _package_name(dotted)
        found: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text()), typing=typing):
            if isinstance(node, ast.ImportFrom):
                found.update(_resolve(dotted, node))
            else:
                found.update(
                    ".".join(alias.name.split(".")[1:])
                    for alias in node.names
                    if alias.name.startswith("klavi_async.")
                )
        edges[module] = {target for target in found if target and target != module}
    return edges


def _package_name(dotted: str) -> str:
    """`nats.__init__` -> `nats`; the root's `__init__` -> `` (the core); others as they are."""
    return "" if dotted == "__init__" else dotted.removesuffix(".__init__")


def test_the_package_graph_sees_the_imports() -> None:
    edges = _edges()
    assert "nats" in edges["_cli._fleetcmds"]
    assert "_rows" in edges["nats._decide"]
    assert "testing" in edges["_cli._demo"]
    # A package's `__init__` is the package: its relative imports are its own modules.
    assert "nats._worker" in edges["nats"]
    assert "_tokens" in _edges(typing=True)[""]  # the root's, under TYPE_CHECKING


def test_the_resolver_reads_every_form_of_import() -> None:
    def resolve(module: str, source: str) -> list[str]:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.ImportFrom)
        return _resolve(module, node)

    assert resolve("_cli._demo", "from ..nats import _worker, connect") == [
        "nats",
        "nats._worker",
    ]
    assert resolve("nats.__init__", "from ._worker import CancelWorker") == ["nats._worker"]
    assert resolve("nats.__init__", "from .. import _rows") == ["_rows"]
    assert resolve("_client", "from . import _batch") == ["_batch"]
    assert resolve("_client", "from ._cancel import cancel") == ["_cancel"]
    assert resolve("_cli._runner", "from klavi_async.nats import _settle") == [
        "nats",
        "nats._settle",
    ]


def test_type_checking_blocks_are_told_apart() -> None:
    source = (
        "if TYPE_CHECKING:\n    from ._a import A\nelse:\n    from ._b import B\n"
        "if not TYPE_CHECKING:\n    from ._c import C\n"
        "if typing.TYPE_CHECKING:\n    from ._d import D\n"
    )
    running = {
        n.module for n in _runtime_imports(ast.parse(source)) if isinstance(n, ast.ImportFrom)
    }
    assert running == {"_b", "_c"}
    every = {
        n.module for n in _runtime_imports(ast.parse(source), typing=True)
        if isinstance(n, ast.ImportFrom)
    }  # fmt: skip
    assert every == {"_a", "_b", "_c", "_d"}


def test_no_package_imports_another_packages_private_module() -> None:
    crossing = []
    for module, targets in _edges().items():
        for target in targets:
            parts = target.split(".")
            other = parts[0] if parts[0] in PACKAGES else ""
            if other and other != _package(module) and len(parts) > 1:
                crossing.append(f"{module} -> {target}")
    assert crossing == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in _edges().items():
        for target in targets:
            if LAYER[_package(target.split(".")[0])] > LAYER[_package(module)] or (
                _package(module) in ("nats", "testing")
                and _package(target.split(".")[0]) not in ("", _package(module))
            ):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_only_the_commands_start_a_process_their_way() -> None:
    """`_process` tunes the allocator of a process the CLI owns; the library never may."""
    users = {module for module, targets in _edges().items() if "_process" in targets}
    assert users and all(module.startswith("_cli.") for module in users)


def test_no_cycle_among_all_the_modules() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in _edges().items():
        # `from ..nats import X` runs nats/__init__: an edge to the package itself.
        graph[module] = {t for t in targets if t in graph or t in _module_names()}
    for module in _module_names():
        graph.setdefault(module, set())
    assert _cycle({m: {t for t in ts if t != m} for m, ts in graph.items()}) is None


def _module_names() -> set[str]:
    return {module.removesuffix(".__init__") for module in ALL_MODULES}


def test_every_module_of_every_package_is_within_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in ALL_MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_function_anywhere_is_over_sixty_lines() -> None:
    """Sixty lines of code, signature included, docstring not."""
    long = []
    for name, path in ALL_MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if ast.get_docstring(node) is not None:
                    doc = node.body[0]
                    length -= (doc.end_lineno or doc.lineno) - doc.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length}")
    assert long == []
