"""Narrow views of the store and of replication that several layers of the node read.

Each layer (the HTTP routers, metrics, the autoscaling duty, MCP) declares the
protocol of the node it needs next to its code; the parts those protocols
share are here, so a layer states what it reads of the store or of Raft and
NodeRuntime, which holds the real ContextStore and Replication, satisfies
them all (mypy checks it where the runtime is handed over).
"""

from __future__ import annotations

from typing import Any, Protocol


class NodeRegistry(Protocol):
    """The replicated node registry: every node's entry (id, addresses, model, slots, draining)."""

    def nodes(self) -> list[dict[str, Any]]: ...


class LeaderRole(Protocol):
    def is_leader(self) -> bool: ...
