"""The node-to-node messages: what one side encodes the other decodes to the same value, and a message
a node of another version cannot read is refused, never misread."""

from __future__ import annotations

import pydantic
import pytest

from mcpdb.inference.request import ChatRequest
from mcpdb.node.internal.messages import Assignment, AssignRequest, LoadReport, WorkOrder

MESSAGES = [
    AssignRequest(model="m", session_key="acme/s1", namespace="acme", exclude=["n2"]),
    Assignment(node_id="n1", http_url="http://127.0.0.1:7700", read_index=42, reason="affinity", domain_matched=False),
    WorkOrder(
        request=ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], namespace="acme", session_id="s1"),
        read_index=42,
        idempotency_key="k",
        seed=7,
    ),
    LoadReport(node_id="n1", load={"in_flight": 1, "queued": 0, "slots": 1, "tokens_per_s": 41.5}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_survives_the_wire(message: pydantic.BaseModel) -> None:
    assert type(message).model_validate_json(message.model_dump_json()) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_an_unknown_field_is_refused(message: pydantic.BaseModel) -> None:
    with pytest.raises(pydantic.ValidationError):
        type(message).model_validate({**message.model_dump(), "added_by_a_newer_node": 1})
