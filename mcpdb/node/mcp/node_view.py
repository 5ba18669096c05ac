"""What the MCP server, its tools and its change bus use of their node (NodeRuntime satisfies all
three; mypy checks it where create_app hands the runtime to McpServer)."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mcpdb.node.config import NodeConfig
    from mcpdb.node.internal.chat_front import ChatFront
    from mcpdb.node.metrics import NodeMetrics
    from mcpdb.service import ContextService
    from mcpdb.store.changes import ChangeFeed
    from mcpdb.store.state_machine import Page


class AppliedIndex(Protocol):
    def applied_index(self) -> int: ...


class FeedNode(Protocol):
    """The change bus: where the feed stands, and the feed."""

    @property
    def store(self) -> AppliedIndex: ...

    @property
    def change_feed(self) -> ChangeFeed: ...


class ServedModels(Protocol):
    def served_models(self) -> list[str]: ...


class ToolsNode(Protocol):
    """The tools: contexts through the service, chat through the entry side, models from the scheduler."""

    @property
    def service(self) -> ContextService: ...

    @property
    def scheduler(self) -> ServedModels: ...

    @property
    def front(self) -> ChatFront: ...


class McpStore(AppliedIndex, Protocol):
    """The store as resources read it: pages of contexts, and token records for revocation."""

    def token(self, token_id: str) -> dict[str, Any] | None: ...

    def scan(
        self, after: tuple[str, str] | None = None, kind: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]: ...

    def list(
        self, namespace: str, kind: str | None = None, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> Page: ...


class McpNode(ToolsNode, FeedNode, Protocol):
    """The MCP server: the tools' and the bus's needs, its limits, its metrics and the resources' store."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def metrics(self) -> NodeMetrics: ...

    @property
    def store(self) -> McpStore: ...
