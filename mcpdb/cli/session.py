"""``mcpdb session``: append turns to a session."""

from __future__ import annotations

from typing import Annotated

import typer

from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.cli.errors import CliError

app = typer.Typer(help="Work with sessions.", no_args_is_help=True)
ROLES = ("system", "user", "assistant", "tool")


@app.command("append")
def append(
    namespace: str,
    session_id: Annotated[str, typer.Argument(metavar="ID")],
    text: str,
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")] = "user",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Append one turn (the session is created if missing)."""
    if role not in ROLES:
        raise CliError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    with client(url, token) as http:
        result = http.append(namespace, session_id, role, text)
    console.print(f"{namespace}/{session_id}: {result['turn_count']} turns, version {result['version']}")
