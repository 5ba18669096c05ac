"""Who may do what: scoped tokens and the principal a request acts as.

A token is ``mcpdb_<id>_<secret>``. The cluster stores, replicated, only the
id, the SHA-256 of the secret, and the scopes: one of read < write < admin per
namespace, ``*`` standing for every namespace. The secret is 32 random bytes,
so a plain hash is enough (a slow password hash protects guessable secrets;
these are not). The node's bootstrap token (``--token``) is the root
principal: admin on ``*``, the one that creates the first scoped tokens.

Refusals follow one rule everywhere (REST, MCP, CLI): a namespace the
principal holds no scope in does not exist for it (404, so its contexts'
existence does not leak); a namespace it holds too weak a scope in is 403.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mcpdb.errors import Forbidden, Hidden

ALL_NAMESPACES = "*"
_TOKEN = re.compile(r"^mcpdb_([a-f0-9]{16})_([A-Za-z0-9_-]{43})$")


class Scope(str, Enum):
    read = "read"
    write = "write"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Scope.read: 1, Scope.write: 2, Scope.admin: 3}


@dataclass(frozen=True)
class Principal:
    """The identity a request acts as; ``token_id`` None for the root (bootstrap) token."""

    token_id: str | None
    scopes: Mapping[str, Scope] = field(default_factory=dict)
    rate_limit: float | None = None  # requests per second on each node; None: unlimited

    def scope_in(self, namespace: str) -> Scope | None:
        own = self.scopes.get(namespace)
        every = self.scopes.get(ALL_NAMESPACES)
        if own is None or (every is not None and every.rank > own.rank):
            return every
        return own

    def allows(self, namespace: str, needed: Scope) -> bool:
        held = self.scope_in(namespace)
        return held is not None and held.rank >= needed.rank

    def check(self, namespace: str, needed: Scope) -> None:
        held = self.scope_in(namespace)
        if held is None:
            # The same words whether the namespace exists or not: nothing about it leaks.
            raise Hidden(f"namespace {namespace} does not exist or this token has no scope in it")
        if held.rank < needed.rank:
            raise Forbidden(f"this token has {held.value} scope in {namespace}; {needed.value} is needed")

    @property
    def cluster_admin(self) -> bool:
        return self.scopes.get(ALL_NAMESPACES) is Scope.admin

    def require_cluster_admin(self) -> None:
        if not self.cluster_admin:
            raise Forbidden("this needs an admin token for every namespace (admin on '*')")

    def may_manage(self, scopes: Mapping[str, Scope]) -> bool:
        """Whether this principal may create, list or revoke a token holding ``scopes``: only one that
        is admin in each of its namespaces (admin on '*' for a token on '*')."""
        return all(self.allows(namespace, Scope.admin) for namespace in scopes)


ROOT = Principal(None, {ALL_NAMESPACES: Scope.admin})


def new_token() -> tuple[str, str, str]:
    """A fresh token: (the token to hand out, its id, the hash to store)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"mcpdb_{token_id}_{secret}", token_id, _hash(secret)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id_of(token: str) -> str | None:
    """The id part of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return match[1] if match else None


def principal_for(token: str, record: dict[str, Any] | None) -> Principal | None:
    """The principal of ``token`` given its stored record (None when unknown, revoked or wrong)."""
    match = _TOKEN.fullmatch(token)
    if match is None or record is None:
        return None
    if not hmac.compare_digest(_hash(match[2]), record["hash"]):
        return None
    return Principal(
        record["id"],
        {namespace: Scope(scope) for namespace, scope in record["scopes"].items()},
        record.get("rate_limit"),
    )
