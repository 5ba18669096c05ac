"""Authentication and the access rules of the REST paths, applied in the request gate.

Which principal a request acts as:

- a node without a bootstrap token (loopback development) serves everyone as root;
- the bootstrap token (``--token``) is root; it is compared in constant time
  and costs nothing more, so node-to-node traffic and benchmarks stay fast;
- a scoped token is looked up in the replicated store after a read barrier:
  every creation or revocation committed before the request arrived is in
  effect on whichever node it reaches (a revoked token is refused everywhere
  as soon as the revocation commits, a new one accepted everywhere).

What a path needs is its route's ``Access`` in the route table
(mcpdb/node/http/routes.py): ``/v1/namespaces/{ns}/...`` read scope in ns
for GET, write scope otherwise; cluster changes and node-to-node routes
admin on ``*``; everything else (status, models, metrics, docs, /mcp, chat
and token routes, which check their own namespaces) only a valid token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcpdb.auth import ROOT, Principal, Scope, principal_for, token_id_of
from mcpdb.errors import Forbidden, Hidden
from mcpdb.node.http.routes import PUBLIC_PATHS, Access, route_for
from mcpdb.store.state_machine import ContextStore

__all__ = [
    "PRINCIPAL_KEY",
    "PUBLIC_PATHS",
    "Authenticator",
    "Refusal",
    "namespace_path",
    "path_refusal",
    "principal_of",
]

PRINCIPAL_KEY = "mcpdb.principal"
_NAMESPACES = "/v1/namespaces/"
_READ_METHODS = frozenset({"GET", "HEAD"})


def namespace_path(path: str) -> tuple[str, str] | None:
    """(the namespace, what follows its ``/``) of a path under ``/v1/namespaces/``; None for any other
    path: the namespace a request's access rule checks, and the request gate's bulk share counts."""
    if not path.startswith(_NAMESPACES):
        return None
    namespace, _, rest = path[len(_NAMESPACES) :].partition("/")
    return (namespace, rest) if namespace else None


def principal_of(request: Any) -> Principal:
    """The principal the request gate authenticated (``request``: anything with an ASGI ``scope``)."""
    return request.scope[PRINCIPAL_KEY]


class Authenticator:
    def __init__(
        self, bootstrap_token: str | None, store: ContextStore, fresh: Callable[[], Awaitable[object]]
    ) -> None:
        self.enabled = bootstrap_token is not None
        self._bootstrap = f"Bearer {bootstrap_token}".encode() if bootstrap_token else b""
        self._store = store
        self._fresh = fresh

    async def principal(self, authorization: bytes | None) -> Principal | None:
        """The principal behind an Authorization header (the node has a bootstrap token), or None if it
        names nobody.
        Raises Unavailable when a scoped token cannot be checked against fresh state."""
        if authorization is None:
            return None
        if hmac.compare_digest(authorization, self._bootstrap):
            return ROOT
        token = authorization.removeprefix(b"Bearer ").decode("utf-8", "replace")
        token_id = token_id_of(token)
        if token_id is None:
            return None
        await self._fresh()
        return principal_for(token, self._store.token(token_id))


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str
    message: str


def path_refusal(principal: Principal, method: str, path: str) -> Refusal | None:
    """Why ``principal`` may not call ``method path``, or None if the path allows it."""
    route = route_for(path)
    if route is not None and route.access is Access.cluster_admin:
        if not principal.cluster_admin:
            return Refusal(403, "forbidden", "this needs an admin token for every namespace (admin on '*')")
        return None
    named = namespace_path(path)
    if named is None:
        return None
    namespace = named[0]
    try:
        principal.check(namespace, Scope.read if method in _READ_METHODS else Scope.write)
    except Hidden as hidden:
        return Refusal(404, "not_found", str(hidden))
    except Forbidden as forbidden:
        return Refusal(403, "forbidden", str(forbidden))
    return None
