"""The server's error tree (mcpdb/errors.py): each error's status and code as the API documents them, and
no second tree growing elsewhere."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mcpdb
from mcpdb import errors
from mcpdb.node.http.responses import error_parts

CASES = [
    (errors.InvalidName("bad"), 400, "invalid_name", {}),
    (errors.InvalidHeader("bad"), 400, "invalid_header", {}),
    (errors.InvalidCursor("bad"), 400, "invalid_cursor", {}),
    (errors.Unserializable("big"), 422, "invalid_value", {}),
    (errors.UnsearchableQuery("no words"), 422, "invalid_query", {"parameter": "q"}),
    (errors.Forbidden("weak"), 403, "forbidden", {}),
    (errors.Hidden("none"), 404, "not_found", {}),
    (errors.NotFound("gone"), 404, "not_found", {}),
    (errors.Refused("version_conflict", "cas", 7), 409, "version_conflict", {"current_version": 7}),
    (errors.Refused("invalid_command", "bad"), 400, "invalid_command", {"current_version": None}),
    (errors.ModelNotServed("m"), 404, "model_not_found", {}),
    (errors.HistoryTrimmed(3, 9), 410, "compacted", {"oldest_version": 9}),
    (errors.ContextTooLarge("big"), 413, "context_too_large", {}),
    (errors.PromptTooLong("long"), 413, "context_too_large", {}),
    (errors.NotApplied("no leader"), 503, "unavailable", {"applied": "no", "retry_after": 1}),
    (errors.Indeterminate("timeout"), 503, "unavailable", {"applied": "unknown", "retry_after": 1}),
    (errors.NotLeader("follower"), 503, "unavailable", {"applied": "no", "retry_after": 1}),
    (
        errors.InsufficientStorage("disk full"),
        507,
        "insufficient_storage",
        {"applied": "no", "retry_after": 10},
    ),
]


@pytest.mark.parametrize("error, status, code, fields", CASES, ids=lambda c: type(c).__name__)
def test_each_error_answers_its_status(
    error: errors.McpdbServerError, status: int, code: str, fields: dict[str, object]
) -> None:
    assert error_parts(error) == (status, code, str(error), fields)


def test_the_tree_is_in_one_module() -> None:
    """Every server error derives from McpdbServerError in mcpdb/errors.py; no other module of the server
    defines one (the client keeps its own tree)."""
    tree = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.McpdbServerError)
    }
    root = Path(mcpdb.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "errors.py" or "client" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
                assert not bases & tree, f"{path}: {node.name} extends the server's error tree outside errors.py"
