"""Every HTTP route of a node, once: its path template, who may call it, and whether it is client load.

The request gate's access rules, the request metrics' route labels and the
overview's "clients' load" all read this table, and tests/test_routes.py
checks it against the routes the app really declares, so a new route cannot
be counted as "other" or skip its access rule unnoticed (as ``/v1/autoscale``
and ``/v1/node/drain`` once were in the metrics).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import cached_property

from mcpdb.node.internal.messages import ASSIGN_PATH, GENERATE_PATH, LOAD_PATH


class Access(enum.Enum):
    public = "public"  # no token (health checks; /ui is a static page whose data needs one)
    token = "token"  # any valid token; the route checks the namespaces it names itself
    namespace = "namespace"  # read scope in {namespace} for GET/HEAD, write scope otherwise
    cluster_admin = "cluster_admin"  # admin on every namespace ('*')


_LABEL_NAMES = {"{namespace}": "{ns}", "{context_id}": "{id}", "{session_id}": "{id}", "{token_id}": "{id}"}


@dataclass(frozen=True)
class Route:
    template: str  # as declared to FastAPI / Starlette
    access: Access
    client_load: bool = True  # False: the nodes' own or the operators' traffic, left out of the overview's rates

    @cached_property
    def label(self) -> str:
        """The route as request metrics label it (bounded cardinality: templates, never ids)."""
        label = self.template
        for name, short in _LABEL_NAMES.items():
            label = label.replace(name, short)
        return label

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(self.template)) + "$")


_NS = "/v1/namespaces/{namespace}"
ROUTES = (
    Route("/healthz", Access.public, client_load=False),
    Route("/readyz", Access.public, client_load=False),
    Route("/ui", Access.public, client_load=False),
    Route("/metrics", Access.token, client_load=False),
    Route("/v1/overview", Access.token, client_load=False),
    Route("/v1/node", Access.token, client_load=False),
    Route("/v1/cluster", Access.token, client_load=False),
    Route("/v1/autoscale", Access.token, client_load=False),
    Route("/v1/node/drain", Access.cluster_admin, client_load=False),
    Route("/v1/node/snapshot", Access.cluster_admin, client_load=False),
    Route("/v1/cluster/members", Access.cluster_admin),
    Route("/v1/cluster/members/{raft_addr}", Access.cluster_admin),
    Route(ASSIGN_PATH, Access.cluster_admin, client_load=False),
    Route(LOAD_PATH, Access.cluster_admin, client_load=False),
    Route(GENERATE_PATH, Access.cluster_admin, client_load=False),
    Route(_NS + "/contexts/{context_id}", Access.namespace),
    Route(_NS + "/contexts", Access.namespace),
    Route(_NS + "/search", Access.namespace),
    Route(_NS + "/sessions/{session_id}/turns", Access.namespace),
    Route(_NS + "/batch", Access.namespace),
    Route(_NS + "/watch", Access.namespace),
    Route("/v1/chat/completions", Access.token),
    Route("/v1/models", Access.token),
    Route("/v1/tokens", Access.token),
    Route("/v1/tokens/{token_id}", Access.token),
    Route("/mcp", Access.token),
    Route("/openapi.json", Access.token),
    Route("/docs", Access.token),
)
OTHER = "other"  # the label of a path no route matches (it gets 404)

_FIXED = {route.template: route for route in ROUTES if "{" not in route.template}
_TEMPLATED = [route for route in ROUTES if "{" in route.template]
PUBLIC_PATHS = frozenset(route.template for route in ROUTES if route.access is Access.public)
UNCOUNTED_LABELS = frozenset(route.label for route in ROUTES if not route.client_load)


def route_for(path: str) -> Route | None:
    """The route ``path`` belongs to, or None (it is no route of the node's)."""
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed
    return next((route for route in _TEMPLATED if route.pattern.match(path)), None)


def label_of(path: str) -> str:
    route = route_for(path)
    return OTHER if route is None else route.label
