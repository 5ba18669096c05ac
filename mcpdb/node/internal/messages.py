"""The node-to-node messages of inference, one typed definition each, used by the sender and the receiver.

- ``AssignRequest`` -> ``Assignment``: the entry node asks the leader which worker serves a request
  (``POST ASSIGN_PATH``); the leader answers with the worker and the read index it must wait for.
- ``WorkOrder``: the entry node hands the assigned worker the request (``POST GENERATE_PATH``; the
  worker answers with NDJSON events).
- ``LoadReport``: every worker tells the leader its load (``POST LOAD_PATH``, every HEARTBEAT_S).

They are JSON on the wire (pydantic), so a node of another version refuses a message it cannot read
with a 422 rather than misreading it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mcpdb.inference.request import ChatRequest

ASSIGN_PATH = "/v1/internal/assign"
LOAD_PATH = "/v1/internal/load"
GENERATE_PATH = "/v1/internal/generate"
INTERNAL_PATHS = (ASSIGN_PATH, LOAD_PATH, GENERATE_PATH)
IDEMPOTENCY_KEY_MAX = 128


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AssignRequest(_Message):
    model: str
    session_key: str | None = None
    namespace: str | None = None
    task_id: str | None = None
    exclude: list[str] = Field(default_factory=list, max_length=64, description="workers already tried")


class Assignment(_Message):
    node_id: str
    http_url: str
    read_index: int = Field(ge=0)
    reason: str
    domain_matched: bool


class WorkOrder(_Message):
    request: ChatRequest
    read_index: int = Field(ge=0)
    idempotency_key: str = Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX)
    seed: int = Field(ge=0)


class LoadReport(_Message):
    node_id: str = Field(min_length=1, max_length=63)
    load: dict[str, float | int]
