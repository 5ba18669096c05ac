"""The node's layers receive the runtime through a protocol they declare (issue 13, contract 5).

The HTTP routers, metrics, the autoscaling duty and the MCP server each say
what they use of their node (NodeView, ChatNode, MetricsSource, ...), and
mypy (in .ci/run) checks that NodeRuntime satisfies them where it is handed
over. What this test holds, read with ``ast``: none of them imports the
runtime, and none takes it as ``Any``, which would switch that check off.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parent.parent / "mcpdb" / "node"
LAYERS = sorted([*NODE.glob("http/*.py"), *NODE.glob("mcp/*.py"), NODE / "metrics.py", NODE / "autoscaling.py"])


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "mcpdb.node.runtime":
            problems.append(f"line {node.lineno}: imports mcpdb.node.runtime")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                if arg.arg == "runtime" and (arg.annotation is None or ast.unparse(arg.annotation) == "Any"):
                    problems.append(f"line {node.lineno}: {node.name}() takes the runtime untyped")
    return problems


@pytest.mark.parametrize("path", LAYERS, ids=lambda path: str(path.relative_to(NODE)))
def test_a_layer_takes_its_node_through_a_protocol(path: Path) -> None:
    assert _problems(path) == []
