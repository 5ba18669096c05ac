"""The import direction of the house (docs/ARCHITECTURE.md, "The house"), read from every module's
imports with ``ast`` (lazy and TYPE_CHECKING imports count: they are dependencies too).

The layers, bottom up: ``store`` <- ``raft`` <- ``inference`` <- ``node``; the client SDK beside them,
importing nothing of the server; ``ops`` starts nodes as processes; the CLI is the top and the node
never imports it. Each package's ``__init__`` docstring states its own rule.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The checkout's tools import mcpdb like any application does: they are held to the same rules.
SCANNED = ("mcpdb", "benchmarks", "jepsen_like")

# The shared contracts (model, auth, fsutil, errors, admission) import none of the packages nor the service.
_LEAF_FORBIDDEN = (
    "mcpdb.store",
    "mcpdb.raft",
    "mcpdb.inference",
    "mcpdb.node",
    "mcpdb.client",
    "mcpdb.ops",
    "mcpdb.cli",
    "mcpdb.service",
)

# Importer (module or package) -> mcpdb packages it must not import.
FORBIDDEN = {
    "mcpdb.model": _LEAF_FORBIDDEN,
    "mcpdb.auth": _LEAF_FORBIDDEN,
    "mcpdb.fsutil": _LEAF_FORBIDDEN,
    "mcpdb.errors": _LEAF_FORBIDDEN,
    "mcpdb.admission": _LEAF_FORBIDDEN,
    "mcpdb.store": (
        "mcpdb.raft",
        "mcpdb.inference",
        "mcpdb.node",
        "mcpdb.client",
        "mcpdb.cli",
        "mcpdb.ops",
        "mcpdb.service",
    ),
    "mcpdb.raft": ("mcpdb.inference", "mcpdb.node", "mcpdb.client", "mcpdb.cli", "mcpdb.ops", "mcpdb.service"),
    "mcpdb.service": ("mcpdb.inference", "mcpdb.node", "mcpdb.client", "mcpdb.cli", "mcpdb.ops"),
    "mcpdb.inference": ("mcpdb.node", "mcpdb.client", "mcpdb.cli", "mcpdb.ops"),
    # ops runs from a plain `pip install mcpdb` (`mcpdb up`): it talks to nodes through the client and
    # starts them as processes, so nothing that needs LMDB, pysyncobj or llama.cpp.
    "mcpdb.ops": ("mcpdb.store", "mcpdb.raft", "mcpdb.inference", "mcpdb.node", "mcpdb.cli", "mcpdb.service"),
}

# (importer, imported) pairs that break a rule on purpose, each with its reason. None today.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, relative imports resolved; ``from a import b`` yields ``a.b`` when
    b is a module of the checkout, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(importers: list[str], refused: Callable[[str, str], bool]) -> list[str]:
    """'importer -> imported' for each import ``refused(importer, imported)`` flags, unless ALLOWED."""
    return [
        f"{importer} -> {imported}"
        for importer in importers
        for imported in sorted(set(_imports(importer, MODULES[importer])))
        if refused(importer, imported) and (importer, imported) not in ALLOWED
    ]


def test_every_package_is_scanned() -> None:
    """A guard for the guard: the walk finds each layer, so a rule cannot pass on an empty set."""
    for package in (
        "mcpdb.store",
        "mcpdb.raft",
        "mcpdb.inference",
        "mcpdb.node",
        "mcpdb.node.http",
        "mcpdb.client",
        "mcpdb.ops",
        "mcpdb.cli",
        "benchmarks",
        "jepsen_like",
    ):
        assert any(_within(name, package) for name in MODULES if name != package), package


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer: str) -> None:
    importers = [name for name in MODULES if _within(name, layer)]
    assert not _violations(importers, lambda _, imported: any(_within(imported, upper) for upper in FORBIDDEN[layer]))


def test_the_client_imports_httpx_and_the_stdlib_only() -> None:
    """``pip install mcpdb`` serves an application with the SDK alone: nothing of the server, no other
    third-party package."""
    importers = [name for name in MODULES if _within(name, "mcpdb.client")]

    def refused(_: str, imported: str) -> bool:
        top = imported.partition(".")[0]
        if top == "mcpdb":
            return not _within(imported, "mcpdb.client")
        return top not in sys.stdlib_module_names and top != "httpx"

    assert not _violations(importers, refused)


def test_only_the_node_and_the_cli_import_the_node() -> None:
    """Everything else starts nodes as processes (``python -m mcpdb.node``)."""
    importers = [name for name in MODULES if not (_within(name, "mcpdb.node") or _within(name, "mcpdb.cli"))]
    assert not _violations(importers, lambda _, imported: _within(imported, "mcpdb.node"))


def test_the_cli_imports_only_the_node_command_and_its_config() -> None:
    """``mcpdb --help`` and the client commands import no server code; ``node start`` loads the server
    when it runs."""
    importers = [name for name in MODULES if _within(name, "mcpdb.cli")]
    allowed = ("mcpdb.node", "mcpdb.node.command", "mcpdb.node.config")
    assert not _violations(importers, lambda _, imported: _within(imported, "mcpdb.node") and imported not in allowed)


def test_nothing_imports_the_cli() -> None:
    """The CLI is the top of the house; only its own modules (and the tests) import it."""
    importers = [name for name in MODULES if not _within(name, "mcpdb.cli")]
    assert not _violations(importers, lambda _, imported: _within(imported, "mcpdb.cli"))


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The walk sees lazy and relative imports, the kinds a careless edit adds."""
    module = tmp_path / "mcpdb" / "store" / "sneaky.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..node import runtime\n    import mcpdb.cli.main\n")
    found = set(_imports(_module_name(module, tmp_path), module))
    assert {"mcpdb.node", "mcpdb.cli.main"} <= found
