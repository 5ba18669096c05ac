"""NodeView: the node as its HTTP surface sees it, the way rqlite's http package declares the Store
and Cluster interfaces it uses.

Each router declares what it uses next to its routes (ChatNode, TokenNode,
WatchNode, OverviewNode, DrainableNode; McpNode for the MCP endpoint);
NodeView is all of them plus what create_app's own routes and middleware use. NodeRuntime satisfies it, and
mypy checks that where the server hands the runtime to create_app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from mcpdb.node.autoscaling import DrainableNode
from mcpdb.node.http.chat_api import ChatNode
from mcpdb.node.http.overview_api import OverviewNode
from mcpdb.node.http.token_api import TokenNode, TokenRecords
from mcpdb.node.http.watch_api import ChangeHistory, WatchNode
from mcpdb.node.mcp.node_view import McpNode, McpStore
from mcpdb.node.views import LeaderRole, NodeRegistry

if TYPE_CHECKING:
    from mcpdb.node.config import NodeConfig
    from mcpdb.node.internal.leader_scheduler import LeaderScheduler
    from mcpdb.node.metrics import NodeMetrics
    from mcpdb.service import ContextService


class NodeStore(NodeRegistry, TokenRecords, ChangeHistory, McpStore, Protocol):
    """What the HTTP surface reads of the store directly (contexts go through the service)."""


class Membership(LeaderRole, Protocol):
    """What the HTTP surface uses of replication: the voters, changing them, and compacting the log."""

    async def change_membership(self, action: str, raft_addr: str, timeout: float) -> None: ...

    async def snapshot(self, timeout: float) -> dict[str, Any]: ...

    def voters(self) -> list[str]: ...


class NodeView(ChatNode, TokenNode, WatchNode, OverviewNode, DrainableNode, McpNode, Protocol):
    """Everything the HTTP app uses of its node."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def service(self) -> ContextService: ...

    @property
    def store(self) -> NodeStore: ...

    @property
    def replication(self) -> Membership: ...

    @property
    def scheduler(self) -> LeaderScheduler: ...

    @property
    def metrics(self) -> NodeMetrics: ...

    async def start(self) -> None:
        """Start the node's duties (the app's lifespan)."""

    async def stop(self) -> None:
        """Stop them and close Raft and the store."""

    def ready(self) -> tuple[bool, str]: ...

    def local_status(self) -> dict[str, Any]: ...

    async def cluster_status(self) -> dict[str, Any]: ...
