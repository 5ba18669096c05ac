"""Every error the server side raises that a caller can act on, in one tree, each with its HTTP status.

::

    McpdbServerError
    ├── InvalidInput               400  the request cannot mean anything
    │   ├── InvalidName                 invalid_name: a namespace or context id outside its charset
    │   ├── InvalidHeader               invalid_header
    │   └── InvalidCursor               invalid_cursor: a watch's since / Last-Event-ID
    ├── Unserializable             422  invalid_value: a value JSON cannot carry
    ├── UnsearchableQuery          422  invalid_query: no word to search for (or only stopwords, lexically)
    ├── Forbidden                  403  forbidden: the token's scope is too weak
    ├── Hidden                     404  not_found: a namespace the token holds no scope in
    ├── Refused                    409  the state machine refused the command (400 invalid_command)
    │   └── NotFound               404  not_found
    ├── ModelNotServed             404  model_not_found
    ├── HistoryTrimmed             410  compacted: the watch resumes before the history
    ├── EntryTooLarge              413  entry_too_large: the request, as stored, exceeds one log entry
    ├── ContextTooLarge            413  context_too_large: instructions, guardrails and messages alone
    ├── PromptTooLong              413  context_too_large: prompt plus completion exceed the window
    ├── Unavailable                503  unavailable, with Retry-After
    │   ├── NotApplied                  applied: no (certainly not in the log; a retry is safe)
    │   ├── Indeterminate               applied: unknown (may still commit)
    │   ├── NotLeader                   asked a follower for what the leader does
    │   ├── Overloaded                  overloaded: as much of this work running and queued as it takes
    │   └── InsufficientStorage    507  insufficient_storage: this node's disk alarm is raised
    └── NewerFormat                     a log entry from newer code: the node stops (never an answer)

Each class carries its ``status`` and ``code``; ``fields()`` adds what a response says beside the message
(node/http/responses.py renders them for REST; the chat worker and the MCP tools report the same). What
stays out: exceptions that never leave the module raising them (a worker lost mid-stream and retried,
a session limit answered by the MCP endpoint itself, a configuration refused before anything listens).
The client has its own tree (mcpdb.client), which imports nothing of this.
"""

from __future__ import annotations

from typing import Any


class McpdbServerError(Exception):
    status: int = 500
    code: str = "internal"

    def fields(self) -> dict[str, Any]:
        """What a response carries beside ``error`` and ``message``."""
        return {}


class InvalidInput(McpdbServerError, ValueError):
    status = 400


class InvalidName(InvalidInput):
    code = "invalid_name"


class InvalidHeader(InvalidInput):
    code = "invalid_header"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"


class Unserializable(McpdbServerError, ValueError):
    """A command holding a value JSON cannot carry (an integer beyond 64 bits, a lone surrogate)."""

    status, code = 422, "invalid_value"


class UnsearchableQuery(McpdbServerError, ValueError):
    """A search query with no word in it, or one ranked by words alone whose words the index never holds
    (stopwords, words over 32 characters): an empty answer would look like "nothing stored matches"."""

    status, code = 422, "invalid_query"

    def fields(self) -> dict[str, Any]:
        return {"parameter": "q"}  # REST's name for it (MCP's search_contexts calls it query)


class Forbidden(McpdbServerError):
    """The principal can see the namespace but its scope there is too weak."""

    status, code = 403, "forbidden"


class Hidden(McpdbServerError):
    """The principal holds no scope in the namespace: answered as if it did not exist."""

    status, code = 404, "not_found"


class Refused(McpdbServerError):
    """The state machine refused the command; nothing was changed. ``error`` is its own code
    (version_conflict, wrong_kind, invalid_command, ...)."""

    def __init__(self, error: str, message: str, current_version: int | None = None) -> None:
        super().__init__(message)
        self.error = self.code = error
        self.message = message
        self.current_version = current_version
        self.status = 404 if error == "not_found" else 400 if error == "invalid_command" else 409

    def fields(self) -> dict[str, Any]:
        return {"current_version": self.current_version}


class NotFound(Refused):
    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)

    def fields(self) -> dict[str, Any]:
        return {}


class ModelNotServed(McpdbServerError, LookupError):
    """No registered node serves the requested model (404, as OpenAI answers)."""

    status, code = 404, "model_not_found"


class HistoryTrimmed(McpdbServerError):
    """The changes after the requested version were trimmed from the history."""

    status, code = 410, "compacted"

    def __init__(self, since: int, oldest: int) -> None:
        super().__init__(
            f"changes after version {since} are no longer in the history; "
            f"the oldest version a watch can resume from is {oldest}"
        )
        self.oldest = oldest

    def fields(self) -> dict[str, Any]:
        return {"oldest_version": self.oldest}


class EntryTooLarge(McpdbServerError, ValueError):
    """The request's command, with its fields' defaults, is larger than one log entry may be."""

    status, code = 413, "entry_too_large"


class ContextTooLarge(McpdbServerError, ValueError):
    """Instructions, guardrails and the new messages alone exceed the budget."""

    status, code = 413, "context_too_large"


class PromptTooLong(McpdbServerError, ValueError):
    """The prompt and the requested completion do not fit the model's context window."""

    status, code = 413, "context_too_large"


class Unavailable(McpdbServerError):
    """The cluster could not take the request now; ``retry_after`` is a hint in seconds."""

    status, code = 503, "unavailable"
    retry_after = 1
    applied = "no"

    def fields(self) -> dict[str, Any]:
        return {"applied": self.applied, "retry_after": self.retry_after}


class NotApplied(Unavailable):
    """The entry is certainly not in the log: retrying cannot duplicate it."""


class Indeterminate(Unavailable):
    """The entry may or may not commit later: only an idempotent retry is safe."""

    applied = "unknown"


class NotLeader(Unavailable):
    """Assignments are made by the leader; the caller should ask the current one."""


class Overloaded(Unavailable):
    """This node runs and queues as many of these requests as it takes (``mcpdb.admission``, or a
    namespace's share of bulk writes in the HTTP gate): nothing was done, so a retry (here a moment
    later, or on another node) is safe."""

    code = "overloaded"


class InsufficientStorage(Unavailable):
    """This node cannot reserve disk space (its disk alarm, ``mcpdb.raft.disk``): it takes no writes
    until space returns; nothing was proposed, so a retry is safe. Reads keep working."""

    status, code = 507, "insufficient_storage"
    retry_after = 10


class NewerFormat(McpdbServerError):
    """A log entry written by newer code in a format this node cannot apply: the node stops."""

    def __init__(self, version: object, known: int) -> None:
        super().__init__(
            f"log entry format v{version} is newer than this node understands (max v{known}): upgrade this node"
        )
        self.version = version
