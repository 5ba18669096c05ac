"""Authentication and the access rules of the REST paths, applied in the request gate.

Which principal a request acts as:

- a node without a bootstrap token (loopback development) serves everyone as root;
- the bootstrap token (``--token``) is root; it is compared in constant time
  and costs nothing more, so node-to-node traffic and benchmarks stay fast;
- a scoped token is looked up in the replicated store after a read barrier:
  every creation or revocation committed before the request arrived is in
  effect on whichever node it reaches (a revoked token is refused everywhere
  as soon as the revocation commits, a new one accepted everywhere). For a
  read of ``/v1/namespaces/{ns}/...`` the barrier is that namespace's, and the
  request's GET, list or search is served at it (``CONFIRMED_KEY``): one round
  to the leader per request, not one for the token and one for the read.

What a path needs is its route's ``Access`` in the route table
(mcpdb/node/http/routes.py): ``/v1/namespaces/{ns}/...`` read scope in ns
for GET, write scope otherwise; cluster changes and node-to-node routes
admin on ``*``; everything else (status, models, metrics, docs, /mcp, chat
and token routes, which check their own namespaces) only a valid token.
"""

from __future__ import annotations

import hmac
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcpdb.auth import ROOT, Principal, Scope, principal_for, token_id_of
from mcpdb.errors import Forbidden, Hidden
from mcpdb.model import NAMESPACE_PATTERN
from mcpdb.node.http.routes import PUBLIC_PATHS, Access, route_for
from mcpdb.service import Confirmed
from mcpdb.store.commands import NO_NAMESPACE
from mcpdb.store.state_machine import ContextStore

__all__ = [
    "CONFIRMED_KEY",
    "PRINCIPAL_KEY",
    "PUBLIC_PATHS",
    "Authenticator",
    "Refusal",
    "confirmed_of",
    "namespace_path",
    "path_refusal",
    "principal_of",
    "token_check_scope",
]

PRINCIPAL_KEY = "mcpdb.principal"
CONFIRMED_KEY = "mcpdb.confirmed"  # the token check's read index, when a read of its namespace may reuse it
_NAMESPACES = "/v1/namespaces/"
_READ_METHODS = frozenset({"GET", "HEAD"})
_AT_THE_CHECK = re.compile(r"contexts|contexts/[^/]+|search")  # below /v1/namespaces/{ns}/: reads served at it
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


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


def confirmed_of(request: Any) -> Confirmed | None:
    """The read index the request's token check confirmed, if a read may reuse it (``request``: anything
    with an ASGI ``scope``)."""
    return request.scope.get(CONFIRMED_KEY)


def token_check_scope(method: str, path: str, query: bytes) -> str:
    """What a scoped token's check waits for: for a linearizable GET, list or search of namespace ns,
    ns's entries (the read is then served at the same read index); for anything else only the entries
    of no namespace, which hold the tokens (a stale read or a watch waits for nothing more, so
    waiting for its namespace would only delay it)."""
    named = namespace_path(path)
    if method != "GET" or named is None or not _AT_THE_CHECK.fullmatch(named[1]):
        return NO_NAMESPACE
    if not _NAMESPACE.fullmatch(named[0]) or ("consistency", "stale") in urllib.parse.parse_qsl(
        query.decode("latin-1")
    ):
        return NO_NAMESPACE
    return named[0]


# fresh(namespace): a read index at which the entries of that namespace and of none are applied here
Fresh = Callable[[str], Awaitable[int | None]]


class Authenticator:
    def __init__(self, bootstrap_token: str | None, store: ContextStore, fresh: Fresh) -> None:
        self.enabled = bootstrap_token is not None
        self._bootstrap = f"Bearer {bootstrap_token}".encode() if bootstrap_token else b""
        self._store = store
        self._fresh = fresh

    async def principal(
        self, authorization: bytes | None, read_scope: str = NO_NAMESPACE
    ) -> tuple[Principal | None, Confirmed | None]:
        """The principal behind an Authorization header (the node has a bootstrap token), or None if it
        names nobody; and for a scoped token, the read index it was checked at, after the entries of
        ``read_scope`` and of none were applied. Raises Unavailable when a scoped token cannot be
        checked against fresh state.

        The check waits for ``read_scope``'s entries only if the token, as this node last applied it,
        may read there: how long a request waits must not tell a token that a namespace it holds no
        scope in is being written, as its 404 does not (entries of no namespace, which every check
        waits for, include every namespace's vectors and expiries: a far weaker signal, and the
        same for all). The stale record only picks what to wait for; the answer is the fresh one's."""
        if authorization is None:
            return None, None
        if hmac.compare_digest(authorization, self._bootstrap):
            return ROOT, None
        token = authorization.removeprefix(b"Bearer ").decode("utf-8", "replace")
        token_id = token_id_of(token)
        if token_id is None:
            return None, None
        known = principal_for(token, self._store.token(token_id))
        if known is None or not known.allows(read_scope, Scope.read):
            read_scope = NO_NAMESPACE
        index = await self._fresh(read_scope)
        confirmed = Confirmed(index, read_scope) if index is not None else None
        return principal_for(token, self._store.token(token_id)), confirmed


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
