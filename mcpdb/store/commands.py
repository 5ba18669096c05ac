"""The Raft log entry: one typed command per state change, and its versioned wire format.

A log entry outlives the code that wrote it (a journal replayed after an
upgrade, a follower still on the previous release), so this module is the
one place its shape is defined. Every entry is a JSON object with ``op``
(which command) and ``v`` (the format version, ``COMMAND_VERSION``).

Versions:

- 0: entries written before the format had a version (release 0.1): no
  ``v`` key. They decode exactly as release 0.1's store read them: the same
  required keys, optional keys (``ttl``, ``if_version``, ``idempotency_key``)
  defaulting to None, and a batch operation that is not ``put`` deleting.
- 1: version 0's shape plus ``"v": 1``, without the ``now`` that version 0
  stamped on every entry but only put, append, batch, expire and
  create_token read. Release 0.1 reads entries by key and ignores ``v``, so
  it applies a version-1 entry exactly as this code does: a cluster mixing
  0.1 and current nodes, under either kind of leader, stays consistent.
- 2: adds ``set_vectors`` (the embeddings the leader computed). Only that
  command is written as version 2, every other one still as version 1: a node
  of the previous release applies every other entry and stops at the first
  vectors entry rather than skip it, and the leader proposes vectors only once
  every registered node says it reads version 2 (``formats`` in its registry
  entry), so a rolling upgrade never stops a node.

A future version whose meaning older code would misread must not be written
until every voter understands it (release 0.1 would apply it by its keys,
silently). A node of this release that meets an entry newer than it
understands never skips it, since a state machine that skips an entry
diverges from its peers: ``decode`` raises ``NewerFormat``, and the Raft
thread logs "log entry format vN is newer than this node understands (max
vM): upgrade this node" and exits the process with status 78 (see
``mcpdb.raft.replication``). The entry stays in the journal; restarted
unchanged the node stops at it again, upgraded it applies it.

The commands are frozen dataclasses that orjson serialises natively (without
``__slots__``, which would send orjson down a path three times slower):
against the dicts they replaced, a put costs about 1 us more to encode and
1.5 us more to decode, most of it the frozen ``__init__``. Contexts, turns and
node registrations stay plain JSON objects: their schema is ``mcpdb.model``'s
and the node's, checked before a command is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import orjson

from mcpdb.errors import NewerFormat
from mcpdb.model import NAMESPACE_PATTERN

COMMAND_VERSION = 2
"""The newest format this code can apply (and writes for ``set_vectors``)."""
WRITTEN_VERSION = 1
"""The format every other command is written in (see version 2 above)."""
SET_VECTORS_VERSION = 2
"""The format ``set_vectors`` is written in: the oldest that has it, whatever newer ones come."""


@dataclass(frozen=True)
class _Entry:
    # ``v`` and each ``op`` are fields that __init__ sets, not class constants:
    # orjson writes an instance's own attributes only.
    v: int = field(default=WRITTEN_VERSION, kw_only=True)


@dataclass(frozen=True)
class Put(_Entry):
    """Create or replace one context; ``context`` is the kind and its fields, ``ttl`` in seconds."""

    ns: str
    id: str
    context: dict[str, Any]
    ttl: int | None
    if_version: int | None
    now: float
    op: Literal["put"] = field(default="put", kw_only=True)


@dataclass(frozen=True)
class Delete(_Entry):
    ns: str
    id: str
    if_version: int | None
    op: Literal["delete"] = field(default="delete", kw_only=True)


@dataclass(frozen=True)
class Append(_Entry):
    """Append turns to a session (created if missing); a seen ``idempotency_key`` replays the first result."""

    ns: str
    id: str
    turns: tuple[dict[str, Any], ...]
    if_version: int | None
    idempotency_key: str | None
    now: float
    op: Literal["append"] = field(default="append", kw_only=True)


@dataclass(frozen=True)
class BatchPut:
    id: str
    context: dict[str, Any]
    ttl: int | None
    if_version: int | None
    op: Literal["put"] = field(default="put", kw_only=True)


@dataclass(frozen=True)
class BatchDelete:
    id: str
    if_version: int | None
    op: Literal["delete"] = field(default="delete", kw_only=True)


@dataclass(frozen=True)
class Batch(_Entry):
    """Several puts and deletes in one namespace, all applied or none."""

    ns: str
    ops: tuple[BatchPut | BatchDelete, ...]
    now: float
    op: Literal["batch"] = field(default="batch", kw_only=True)


@dataclass(frozen=True)
class Expire(_Entry):
    """The leader saw these (namespace, id, version) expire by its clock ``now``."""

    items: tuple[tuple[str, str, int], ...]
    now: float
    op: Literal["expire"] = field(default="expire", kw_only=True)


@dataclass(frozen=True)
class RegisterNode(_Entry):
    node: dict[str, Any]
    op: Literal["register_node"] = field(default="register_node", kw_only=True)


@dataclass(frozen=True)
class DeregisterNode(_Entry):
    id: str
    op: Literal["deregister_node"] = field(default="deregister_node", kw_only=True)


@dataclass(frozen=True)
class TokenSpec:
    """A scoped token as stored: its secret only as a SHA-256 ``hash``."""

    id: str
    hash: str
    description: str
    rate_limit: float | None
    scopes: dict[str, str]


@dataclass(frozen=True)
class CreateToken(_Entry):
    token: TokenSpec
    now: float
    op: Literal["create_token"] = field(default="create_token", kw_only=True)


@dataclass(frozen=True)
class RevokeToken(_Entry):
    id: str
    op: Literal["revoke_token"] = field(default="revoke_token", kw_only=True)


@dataclass(frozen=True)
class Embedded:
    """The vector of one version of one context: ``vector`` is ``mcpdb.retrieval.vectors``' bytes as text."""

    id: str
    version: int
    vector: str


@dataclass(frozen=True)
class SetVectors(_Entry):
    """Vectors the leader's embedder computed with ``model``; each is stored only if its context is
    still at that version (a newer version waits for its own)."""

    ns: str
    items: tuple[Embedded, ...]
    model: str
    op: Literal["set_vectors"] = field(default="set_vectors", kw_only=True)
    v: int = field(default=SET_VECTORS_VERSION, kw_only=True)


Command: TypeAlias = (
    Put | Delete | Append | Batch | Expire | RegisterNode | DeregisterNode | CreateToken | RevokeToken | SetVectors
)


@dataclass(frozen=True)
class Unreadable:
    """A committed entry that is not a valid command of any known version.

    Every replica decodes the same bytes the same way, so refusing it (the
    index still counts as applied) keeps replicas identical, as release 0.1
    did for an entry its handlers could not apply.
    """

    reason: str


def encode(command: Command) -> bytes:
    """The entry's bytes; raises orjson.JSONEncodeError for a value JSON cannot carry."""
    return orjson.dumps(command)


_ENTRY_START = b'{"v":'
# An entry's start when it names a namespace: its version, then ``ns``, a name of NAMESPACE_PATTERN.
_NAMED_ENTRY = re.compile(rb'\{"v":\d+,"ns":"(' + NAMESPACE_PATTERN.strip("^$").encode() + rb')"')
NAMESPACE_WITHIN = 128  # bytes from the start of an entry, or of pysyncobj's pickle around it, that hold ns


def namespace_in(entry: bytes) -> str | None:
    """The namespace an encoded command names (None for one of no namespace), read from its first
    ``NAMESPACE_WITHIN`` bytes without decoding the rest: a queued 500-record batch is half a megabyte.

    ``encode`` writes ``v`` and then ``ns`` first (a dataclass's fields in order, the base class's
    first). The bytes may be wrapped in pysyncobj's pickle of the call, which keeps them as they are
    after a binary header of a few bytes: the first ``{"v":`` is the entry's own start, and only
    there is an ``ns`` read (a node registration's fields or a token's scopes are never taken for it)."""
    return _namespace_matching(entry, _NAMED_ENTRY)


_SCOPED_ENTRY = re.compile(
    rb'\{"v":' + str(WRITTEN_VERSION).encode() + rb',"ns":"(' + NAMESPACE_PATTERN.strip("^$").encode() + rb')"'
)


NO_NAMESPACE = ""
"""The scope of a read of state no namespace holds (tokens, nodes): no entry names it (a namespace has a
character at least), so such a read waits only for the committed entries of no namespace."""


def read_scope_of(entry: bytes) -> str | None:
    """The one namespace an encoded command changes, when a read of any other namespace cannot see
    what it does: a context's put, delete or append, or a batch (all written at ``WRITTEN_VERSION``,
    which names the namespace first; ``namespace_in`` says how it is read). Such an entry also moves
    state of no namespace (per-kind counts, the change history, the embedding queue), which a GET, list
    or search never reads; a watch reads the history, and so waits for every entry. None for every
    other entry, conservatively: a token, a node, an expiry (of any namespaces), vectors (they also
    set the model every namespace's searches rank with), a format this code does not write.
    A linearizable read of a namespace waits only for the committed entries of its namespace and of
    None (``read_index``)."""
    return _namespace_matching(entry, _SCOPED_ENTRY)


def _namespace_matching(entry: bytes, pattern: re.Pattern[bytes]) -> str | None:
    """The namespace ``pattern`` reads at the entry's own start (its first ``{"v":`` within
    ``NAMESPACE_WITHIN`` bytes), or None."""
    start = entry.find(_ENTRY_START, 0, NAMESPACE_WITHIN)
    named = pattern.match(entry, start) if start >= 0 else None
    return named.group(1).decode("ascii") if named else None


def decode(payload: bytes) -> Command | Unreadable:
    """The command in an entry of any version up to ``COMMAND_VERSION``; raises NewerFormat past it."""
    try:
        return from_entry(orjson.loads(payload))
    except NewerFormat:
        raise
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        return Unreadable(f"{type(error).__name__}: {error}")


def from_entry(entry: Mapping[str, Any]) -> Command:
    """The command in a parsed entry; raises KeyError/TypeError/ValueError if it is malformed."""
    version = entry.get("v", 0)
    if type(version) is not int or version < 0:
        raise ValueError(f"format version {version!r} is not a version")
    if version > COMMAND_VERSION:
        raise NewerFormat(version, COMMAND_VERSION)
    # Every version shares one shape; 2 only adds an op (see the module docstring).
    return _READERS[entry["op"]](entry)


def _batch_op(op: Mapping[str, Any]) -> BatchPut | BatchDelete:
    if op["op"] == "put":
        return BatchPut(op["id"], op["context"], op.get("ttl"), op.get("if_version"))
    return BatchDelete(op["id"], op.get("if_version"))


def _token(token: Mapping[str, Any]) -> TokenSpec:
    return TokenSpec(token["id"], token["hash"], token["description"], token["rate_limit"], token["scopes"])


_READERS: dict[str, Callable[[Mapping[str, Any]], Command]] = {
    "put": lambda e: Put(e["ns"], e["id"], e["context"], e.get("ttl"), e.get("if_version"), e["now"]),
    "delete": lambda e: Delete(e["ns"], e["id"], e.get("if_version")),
    "append": lambda e: Append(
        e["ns"], e["id"], tuple(e["turns"]), e.get("if_version"), e.get("idempotency_key"), e["now"]
    ),
    "batch": lambda e: Batch(e["ns"], tuple(_batch_op(op) for op in e["ops"]), e["now"]),
    "expire": lambda e: Expire(tuple((ns, context_id, version) for ns, context_id, version in e["items"]), e["now"]),
    "register_node": lambda e: RegisterNode(e["node"]),
    "deregister_node": lambda e: DeregisterNode(e["id"]),
    "create_token": lambda e: CreateToken(_token(e["token"]), e["now"]),
    "revoke_token": lambda e: RevokeToken(e["id"]),
    "set_vectors": lambda e: SetVectors(
        e["ns"], tuple(Embedded(item["id"], item["version"], item["vector"]) for item in e["items"]), e["model"]
    ),
}
