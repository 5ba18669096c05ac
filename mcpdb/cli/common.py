"""What every client-side command shares: where the cluster is, the token, and error handling."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console

from mcpdb.cli.errors import CliError
from mcpdb.client import DEFAULT_URL, Client, McpdbError

console = Console()

UrlOption = Annotated[
    list[str] | None,
    typer.Option("--url", help="Node URL (repeatable; else MCPDB_URL, comma-separated; else " + DEFAULT_URL + ")."),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", help="Bearer token (else MCPDB_TOKEN).", show_default=False)
]


def node_urls(urls: list[str] | None) -> list[str]:
    if urls:
        return [u for url in urls for u in url.split(",") if u]
    from_env = os.environ.get("MCPDB_URL", "")
    return [u.strip() for u in from_env.split(",") if u.strip()] or [DEFAULT_URL]


@contextlib.contextmanager
def client(urls: list[str] | None, token: str | None, deadline: float = 5.0) -> Iterator[Client]:
    """A client for the command, with every server or network error turned into one line."""
    chosen = node_urls(urls)
    for url in chosen:
        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url must start with http:// or https://, got {url!r}")
    try:
        with Client(chosen, token=token or os.environ.get("MCPDB_TOKEN"), deadline=deadline) as http:
            yield http
    except McpdbError as error:
        where = ", ".join(chosen)
        raise CliError(f"{error.message} ({where})" if error.status is None else error.message) from None


def print_json(value: Any) -> None:
    console.print_json(json.dumps(value))
