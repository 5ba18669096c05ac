"""``mcpdb token``: create, list and revoke scoped tokens (needs an admin token)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mcpdb.auth import Scope
from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.cli.errors import CliError

app = typer.Typer(help="Scoped access tokens.", no_args_is_help=True)


@app.command("create")
def create(
    ns: Annotated[list[str], typer.Option("--ns", help="Namespace the token may use ('*' for all); repeat.")],
    scope: Annotated[str, typer.Option(help="read, write or admin (in every --ns).")] = "read",
    description: Annotated[str, typer.Option(help="What the token is for.")] = "",
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second on each node.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    if scope not in Scope.__members__:
        raise CliError(f"unknown scope {scope!r}; use read, write or admin")
    with client(url, token) as http:
        created = http.create_token({namespace: scope for namespace in ns}, description, rate_limit)
    console.print(f"token {created['id']} ({scope} in {', '.join(ns)}); store it now, it is not shown again:")
    print(created["token"], flush=True)


@app.command("list")
def list_tokens(url: UrlOption = None, token: TokenOption = None) -> None:
    """Tokens you may manage (never their secrets)."""
    with client(url, token) as http:
        items = http.tokens()
    table = Table("id", "scopes", "rate limit", "description")
    for item in items:
        scopes = ", ".join(f"{ns}:{scope}" for ns, scope in sorted(item["scopes"].items()))
        table.add_row(
            item["id"], scopes, f"{item['rate_limit']:g}/s" if item["rate_limit"] else "", item["description"]
        )
    console.print(table if items else "no tokens")


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID")], url: UrlOption = None, token: TokenOption = None
) -> None:
    """Revoke a token: every node refuses it from the moment the revocation commits."""
    with client(url, token) as http:
        result = http.revoke_token(token_id)
    console.print(f"revoked {token_id} at version {result['version']}")
