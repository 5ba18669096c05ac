"""Context operations on top of replication: what REST, MCP and the CLI all call.

Writes become log commands carrying the proposer's clock; reads go through a
read barrier unless the caller asks for ``stale`` (local state, may lag).
Refusals decided by the state machine (version conflict, missing context)
come back as ``Refused`` with the code the store chose.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from pydantic import BaseModel

from mcpdb.auth import ALL_NAMESPACES, Scope, new_token
from mcpdb.raft.barrier import ReadBarrier
from mcpdb.model import BatchIn, Turn, check_context_id, check_namespace, context_fields
from mcpdb.raft.replication import Replication
from mcpdb.store.state_machine import Page


class Consistency(str, Enum):
    linearizable = "linearizable"
    stale = "stale"


class Refused(Exception):
    """The state machine refused the command; nothing was changed."""

    def __init__(self, error: str, message: str, current_version: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.current_version = current_version


class NotFound(Refused):
    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("ok"):
        return result
    if result["error"] == "not_found":
        raise NotFound(result["message"])
    raise Refused(result["error"], result["message"], result.get("current_version"))


class ContextService:
    """Namespaced context reads and writes with the consistency the caller asked for."""

    def __init__(self, replication: Replication, barrier: ReadBarrier, write_timeout: float,
                 unsafe_stale_reads: bool = False) -> None:
        self._replication = replication
        self._barrier = barrier
        self._write_timeout = write_timeout
        # Deliberately broken mode for the fault-injection harness: serve
        # "linearizable" reads from local state. Never use it otherwise.
        self._unsafe_stale_reads = unsafe_stale_reads

    @property
    def store(self) -> Any:
        return self._replication.store

    async def _write(self, command: dict[str, Any]) -> dict[str, Any]:
        command["now"] = time.time()
        return _checked(await self._replication.propose(command, self._write_timeout))

    async def read_index(self, consistency: Consistency) -> int | None:
        """Wait until local state is fresh enough for ``consistency``; returns the read index."""
        if consistency is Consistency.stale or self._unsafe_stale_reads:
            return None
        return await self._barrier.wait()

    async def put(self, namespace: str, context_id: str, context: BaseModel,
                  if_version: int | None = None) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        result = await self._write({
            "op": "put", "ns": namespace, "id": context_id, "context": context_fields(context),
            "ttl": getattr(context, "ttl", None), "if_version": if_version,
        })
        return {"namespace": namespace, "id": context_id, "version": result["version"],
                "created": result["created"]}

    async def get(self, namespace: str, context_id: str,
                  consistency: Consistency = Consistency.linearizable) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        await self.read_index(consistency)
        record = self.store.get(namespace, context_id)
        if record is None:
            raise NotFound(f"{namespace}/{context_id} does not exist")
        return record

    async def delete(self, namespace: str, context_id: str,
                     if_version: int | None = None) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        result = await self._write({"op": "delete", "ns": namespace, "id": context_id,
                                    "if_version": if_version})
        return {"namespace": namespace, "id": context_id, "deleted": True, "version": result["version"]}

    async def list(self, namespace: str, kind: str | None = None, prefix: str = "", limit: int = 100,
                   cursor: str | None = None,
                   consistency: Consistency = Consistency.linearizable) -> Page:
        check_namespace(namespace)
        await self.read_index(consistency)
        return self.store.list(namespace, kind=kind, prefix=prefix, limit=limit, cursor=cursor)

    async def append(self, namespace: str, session_id: str, turns: list[Turn],
                     if_version: int | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """Append turns to a session (created if missing) atomically, in order.

        With an idempotency key, a retry of an append that already committed
        returns the first result instead of appending again.
        """
        check_namespace(namespace)
        check_context_id(session_id)
        result = await self._write({
            "op": "append", "ns": namespace, "id": session_id,
            "turns": [turn.model_dump(mode="json") for turn in turns],
            "if_version": if_version, "idempotency_key": idempotency_key,
        })
        return {"namespace": namespace, "id": session_id, "version": result["version"],
                "turn_count": result["turn_count"], "first_seq": result["first_seq"],
                "replayed": result.get("replayed", False)}

    async def batch(self, namespace: str, batch: BatchIn) -> dict[str, Any]:
        check_namespace(namespace)
        ops: list[dict[str, Any]] = []
        for op in batch.ops:
            check_context_id(op.id)
            entry: dict[str, Any] = {"op": op.op, "id": op.id, "if_version": op.if_version}
            if op.op == "put":
                entry["context"] = context_fields(op.context)
                entry["ttl"] = op.context.ttl
            ops.append(entry)
        result = await self._write({"op": "batch", "ns": namespace, "ops": ops})
        return {"namespace": namespace, "version": result["version"], "results": result["results"]}

    async def expire_due(self, limit: int = 1000) -> int:
        """Leader duty: propose the expiry of contexts whose TTL ran out (by the leader's clock)."""
        due = self.store.expired(time.time(), limit)
        if not due:
            return 0
        result = await self._write({"op": "expire", "items": [list(item) for item in due]})
        return int(result["expired"])

    async def create_token(self, scopes: dict[str, Scope], description: str,
                           rate_limit: float | None = None) -> dict[str, Any]:
        """Mint a scoped token; the secret is in the answer only, the store keeps its hash."""
        for namespace in scopes:
            if namespace != ALL_NAMESPACES:
                check_namespace(namespace)
        token, token_id, digest = new_token()
        stored = {"id": token_id, "hash": digest, "description": description, "rate_limit": rate_limit,
                  "scopes": {namespace: scope.value for namespace, scope in scopes.items()}}
        result = await self._write({"op": "create_token", "token": stored})
        return {"token": token, "id": token_id, "scopes": stored["scopes"], "description": description,
                "rate_limit": rate_limit, "version": result["version"]}

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result = await self._write({"op": "revoke_token", "id": token_id})
        return {"id": token_id, "revoked": True, "version": result["version"]}

    async def register_node(self, node: dict[str, Any]) -> None:
        await self._write({"op": "register_node", "node": node})

    async def deregister_node(self, node_id: str) -> None:
        await self._write({"op": "deregister_node", "id": node_id})
