"""``/v1/tokens``: create, list and revoke scoped tokens through the cluster.

A principal manages the tokens whose every namespace it is admin in (admin
on ``*`` manages all); other tokens do not exist for it. The secret is shown
once, in the answer to its creation.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Path, Request
from pydantic import BaseModel, Field

from mcpdb.auth import Principal, Scope
from mcpdb.errors import Hidden
from mcpdb.node.http.access import Authenticator, confirmed_of, principal_of
from mcpdb.node.http.responses import FastJSON
from mcpdb.node.http.responses import error_response as error
from mcpdb.service import Consistency, ContextService
from mcpdb.store.commands import NO_NAMESPACE


class TokenRecords(Protocol):
    """The replicated token records (hashes and scopes, never secrets)."""

    def tokens(self) -> list[dict[str, Any]]: ...

    def token(self, token_id: str) -> dict[str, Any] | None: ...


class TokenNode(Protocol):
    """What the token routes use of their node: writes through the service, reads of the records."""

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def service(self) -> ContextService: ...

    @property
    def store(self) -> TokenRecords: ...


class TokenIn(BaseModel):
    scopes: dict[Annotated[str, Field(min_length=1, max_length=128)], Scope] = Field(
        min_length=1, max_length=100, description="namespace (or '*') -> read | write | admin"
    )
    description: str = Field(default="", max_length=200)
    rate_limit: float | None = Field(default=None, gt=0, le=1_000_000, description="requests/s on each node")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in ("id", "description", "scopes", "rate_limit", "created_at", "version")}


def _managed(principal: Principal, record: dict[str, Any]) -> bool:
    return principal.may_manage({namespace: Scope(scope) for namespace, scope in record["scopes"].items()})


def add_token_routes(app: FastAPI, runtime: TokenNode) -> None:
    @app.post("/v1/tokens", status_code=201, tags=["tokens"])
    async def create_token(body: TokenIn, request: Request) -> Any:
        """Mint a token with the given scopes; needs admin in each of them. The token is in this
        answer only (the cluster stores its hash)."""
        if not runtime.authenticator.enabled:
            return error(
                400,
                "auth_disabled",
                "this cluster runs without a bootstrap token, so tokens would "
                "not be enforced: start the nodes with --token-file (or MCPDB_TOKEN)",
            )
        if not principal_of(request).may_manage(body.scopes):
            return error(403, "forbidden", "creating this token needs admin scope in each of its namespaces")
        result = await runtime.service.create_token(body.scopes, body.description, body.rate_limit)
        return FastJSON(result, status_code=201)

    @app.get("/v1/tokens", tags=["tokens"])
    async def list_tokens(request: Request) -> dict[str, Any]:
        """The tokens this principal manages (never their secrets or hashes)."""
        await runtime.service.read_index(Consistency.linearizable, NO_NAMESPACE, confirmed_of(request))
        principal = principal_of(request)
        return {"items": [_public(record) for record in runtime.store.tokens() if _managed(principal, record)]}

    @app.delete("/v1/tokens/{token_id}", tags=["tokens"])
    async def revoke_token(
        token_id: Annotated[str, Path(pattern=r"^[a-f0-9]{16}$")], request: Request
    ) -> dict[str, Any]:
        """Revoke a token; refused on every node from the moment the revocation commits."""
        await runtime.service.read_index(Consistency.linearizable, NO_NAMESPACE, confirmed_of(request))
        record = runtime.store.token(token_id)
        if record is None or not _managed(principal_of(request), record):
            raise Hidden(f"token {token_id} does not exist")
        return await runtime.service.revoke_token(token_id)
