"""The context contract: what an application stores for its models, by kind.

Every kind is validated on its own fields (unknown fields are refused, so a
typo is a 422 rather than silently dropped data) and carries a free-form
``data`` object for anything the schema does not name. The stored record adds
what the replicated store decides: version (Raft index of the last write),
created/updated times (the proposer's clock, carried in the log entry so every
replica agrees) and the TTL's expiry time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from mcpdb.errors import InvalidName

NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
CONTEXT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)
_CONTEXT_ID_RE = re.compile(CONTEXT_ID_PATTERN)

KINDS = ("instruction", "profile", "session", "guardrail", "task", "memory")
Kind = Literal["instruction", "profile", "session", "guardrail", "task", "memory"]
# What search finds: every kind but sessions, whose turns are kept apart from their record.
SEARCHABLE_KINDS = ("instruction", "profile", "guardrail", "task", "memory")
SearchableKind = Literal["instruction", "profile", "guardrail", "task", "memory"]
SEARCH_MODES = ("hybrid", "lexical", "vector")
SearchMode = Literal["hybrid", "lexical", "vector"]

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
# Free-form objects nest at most this deep: deeper documents are refused (422) rather than
# stored for every reader to choke on (recursive decoders, Python's recursion limit).
MAX_JSON_DEPTH = 32


def _depth_checked(value: dict[str, Any]) -> dict[str, Any]:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_depth_checked)]


def check_namespace(namespace: str) -> str:
    """Namespaces become key prefixes and URL segments: lowercase, short, no separators."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidName(
            f"invalid namespace {namespace!r}: use 1-63 characters from a-z 0-9 _ -, starting with a letter or digit"
        )
    return namespace


def check_context_id(context_id: str) -> str:
    """Ids must be safe as key components and URL path segments (no '/', no '..')."""
    if not _CONTEXT_ID_RE.fullmatch(context_id):
        raise InvalidName(
            f"invalid id {context_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . : @ -, "
            "starting with a letter or digit"
        )
    return context_id


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=256 * 1024)


class Turn(_Strict):
    """One message of a conversation. The timestamp is set by the store when absent."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    timestamp: float | None = None
    metadata: JsonObject = Field(default_factory=dict)


class _ContextBase(_Strict):
    data: JsonObject = Field(default_factory=dict, description="free-form extension fields")
    ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS, description="seconds until the context expires")


class InstructionIn(_ContextBase):
    """Who the model is and how it works: assembled into the system prompt; ``{{name}}`` in the text is a
    prompt argument."""

    kind: Literal["instruction"]
    role: str = Field(min_length=1, max_length=200, description="who the model is, e.g. 'contract lawyer'")
    domains: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="domain specialisations"
    )
    text: str = Field(min_length=1, description="the instruction itself")
    style: str | None = Field(default=None, description="tone or format, e.g. 'concise'")


class ProfileIn(_ContextBase):
    """A user: name, preferences and goals, assembled into the prompt of that user's chats."""

    kind: Literal["profile"]
    name: str | None = Field(default=None, description="the user's name")
    preferences: JsonObject = Field(default_factory=dict, description='e.g. {"tone": "plain"}')
    goals: list[str] = Field(default_factory=list, description="what the user wants to achieve")


class SessionIn(_ContextBase):
    """A conversation: its turns in order (replaced whole here; append_turn adds one)."""

    kind: Literal["session"]
    user_id: str | None = Field(default=None, description="the id of the user's profile")
    turns: list[Turn] = Field(default_factory=list, description="the conversation so far, oldest first")


class GuardrailIn(_ContextBase):
    """Rules every reply in the namespace must follow."""

    kind: Literal["guardrail"]
    rules: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="at least one rule")
    deny_topics: list[str] = Field(default_factory=list, description="topics the model must decline")
    max_output_tokens: int | None = Field(default=None, ge=1, description="a cap on a reply's length")


class TaskIn(_ContextBase):
    """Work in progress: its goal and status, assembled into the prompt of chats about it."""

    kind: Literal["task"]
    domain: str = Field(min_length=1, max_length=64, description="the task's field, e.g. 'legal'")
    goal: str = Field(min_length=1, description="what done looks like")
    status: Literal["open", "in_progress", "done", "cancelled"] = "open"


class MemoryIn(_ContextBase):
    """Facts the model should remember, about a user or in general."""

    kind: Literal["memory"]
    facts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="at least one fact")
    user_id: str | None = Field(default=None, description="the user the facts are about")
    tags: list[str] = Field(default_factory=list, description="labels to find the memory by")


ContextIn = Annotated[
    InstructionIn | ProfileIn | SessionIn | GuardrailIn | TaskIn | MemoryIn,
    Field(discriminator="kind"),
]
CONTEXT_IN_ADAPTER: TypeAdapter[Any] = TypeAdapter(ContextIn)


class TurnsIn(_Strict):
    """Body of a session append: one turn, or several appended atomically in order."""

    turns: list[Turn] = Field(min_length=1, max_length=1000)


class BatchPut(_Strict):
    op: Literal["put"]
    id: str
    context: ContextIn
    if_version: int | None = Field(default=None, ge=0)


class BatchDelete(_Strict):
    op: Literal["delete"]
    id: str
    if_version: int | None = Field(default=None, ge=0)


class BatchIn(_Strict):
    """Many writes committed as one log entry: all apply, or none (409 names the failing op)."""

    ops: list[Annotated[BatchPut | BatchDelete, Field(discriminator="op")]] = Field(min_length=1, max_length=1000)


def context_fields(context: BaseModel) -> dict[str, Any]:
    """The kind's own fields as stored (everything but ttl, which the store turns into expiry)."""
    return context.model_dump(exclude={"ttl"}, mode="json")
