"""``mcpdb watch``: follow a namespace's changes as they commit."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.cli.errors import CliError
from mcpdb.model import KINDS


def watch(
    namespace: str,
    prefix: Annotated[str, typer.Option(help="Only ids starting with this.")] = "",
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Resume after this event id or version (default: changes from now on).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print every change to a namespace in commit order until interrupted; fails over between
    nodes without missing or repeating a change."""
    if kind is not None and kind not in KINDS:
        raise CliError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    with client(url, token, deadline=30.0) as http:
        for change in http.watch(namespace, prefix, kind, since):
            if as_json:
                print(json.dumps(change), flush=True)
            else:
                console.print(
                    f"[dim]{change['event_id']:>8}[/dim]  {change['action']:<7} {change['kind']:<11} {change['id']}",
                    highlight=False,
                )
