"""Validation of contexts, names and batch bodies (pydantic models)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mcpdb.errors import InvalidName
from mcpdb.model import CONTEXT_IN_ADAPTER, BatchIn, TurnsIn, check_context_id, check_namespace

VALID = [
    {"kind": "instruction", "role": "tutor", "text": "Be clear.", "domains": ["maths"], "style": "brief"},
    {"kind": "profile", "name": "Ada", "preferences": {"tone": "warm"}, "goals": ["learn"]},
    {"kind": "session", "user_id": "u1", "turns": [{"role": "user", "content": "hi"}]},
    {"kind": "guardrail", "rules": ["no medical advice"], "deny_topics": ["diagnosis"], "max_output_tokens": 200},
    {"kind": "task", "domain": "maths", "goal": "fractions", "status": "in_progress"},
    {"kind": "memory", "facts": ["likes tea"], "tags": ["food"], "ttl": 60, "data": {"source": "chat"}},
]
INVALID = [
    {"kind": "instruction", "text": "missing role"},
    {"kind": "instruction", "role": "tutor", "text": "x", "colour": "red"},  # unknown field
    {"kind": "profile", "preferences": ["not", "an", "object"]},
    {"kind": "session", "turns": [{"role": "narrator", "content": "x"}]},
    {"kind": "guardrail", "rules": []},
    {"kind": "task", "domain": "maths", "goal": "x", "status": "someday"},
    {"kind": "memory", "facts": ["x"], "ttl": 0},
    {"kind": "memory", "facts": []},
    {"kind": "wizard"},
    {"facts": ["no kind"]},
]


@pytest.mark.parametrize("body", VALID, ids=[b["kind"] for b in VALID])
def test_each_kind_accepts_a_valid_body(body: dict) -> None:
    assert CONTEXT_IN_ADAPTER.validate_python(body).kind == body["kind"]


@pytest.mark.parametrize("body", INVALID)
def test_invalid_bodies_are_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        CONTEXT_IN_ADAPTER.validate_python(body)


@pytest.mark.parametrize("name", ["a", "tenant-1", "x_y", "a" * 63])
def test_valid_namespaces(name: str) -> None:
    assert check_namespace(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a/b", "a.b", "a" * 64, "a b", "é", "a\n"])
def test_invalid_namespaces(name: str) -> None:
    with pytest.raises(InvalidName):
        check_namespace(name)


@pytest.mark.parametrize("name", ["x", "S1", "user@example.com", "a.b:c-d_e", "a" * 128])
def test_valid_ids(name: str) -> None:
    assert check_context_id(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../etc", "a/b", "a\\b", "a\x00b", "a\nb", "a\n", ".hidden", "a" * 129]
)
def test_invalid_ids(name: str) -> None:
    with pytest.raises(InvalidName):
        check_context_id(name)


def test_turns_and_batch_limits() -> None:
    with pytest.raises(ValidationError):
        TurnsIn.model_validate({"turns": []})
    with pytest.raises(ValidationError):
        BatchIn.model_validate({"ops": [{"op": "rename", "id": "x"}]})
    batch = BatchIn.model_validate(
        {"ops": [{"op": "put", "id": "x", "context": VALID[5]}, {"op": "delete", "id": "y", "if_version": 3}]}
    )
    assert [op.op for op in batch.ops] == ["put", "delete"]
