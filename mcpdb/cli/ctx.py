"""``mcpdb ctx``: put, get, list and remove contexts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mcpdb.cli.common import TokenOption, UrlOption, client, console, print_json
from mcpdb.cli.errors import CliError
from mcpdb.model import KINDS

app = typer.Typer(help="Read and write contexts.", no_args_is_help=True)


def _read_body(file: str) -> dict:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as error:
        raise CliError(f"cannot read {file}: {error.strerror}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(
            f"{'stdin' if file == '-' else file} is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(body, dict):
        raise CliError("the context must be a JSON object of the kind's fields")
    return body


@app.command("put")
def put(
    namespace: str,
    context_id: Annotated[str, typer.Argument(metavar="ID")],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(KINDS)}.")],
    file: Annotated[str, typer.Option(help="JSON file with the kind's fields, or - for stdin.")],
    if_version: Annotated[int | None, typer.Option(help="Only if the current version is this (CAS).")] = None,
    ttl: Annotated[int | None, typer.Option(help="Expire after this many seconds.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Create or replace a context."""
    if kind not in KINDS:
        raise CliError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    body = {**_read_body(file), "kind": kind}
    if ttl is not None:
        body["ttl"] = ttl
    with client(url, token) as http:
        result = http.put(namespace, context_id, body, if_version=if_version)
    verb = "created" if result["created"] else "replaced"
    console.print(f"{verb} {namespace}/{context_id} at version {result['version']}")


@app.command("get")
def get(
    namespace: str,
    context_id: Annotated[str, typer.Argument(metavar="ID")],
    stale: Annotated[bool, typer.Option(help="Read this node's state without a read index.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print a context as JSON (linearizable unless --stale)."""
    with client(url, token) as http:
        print_json(http.get(namespace, context_id, "stale" if stale else "linearizable"))


@app.command("ls")
def ls(
    namespace: str,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    prefix: Annotated[str, typer.Option(help="Only ids starting with this.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List contexts in id order."""
    if kind is not None and kind not in KINDS:
        raise CliError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if limit < 1:
        raise CliError("--limit must be at least 1")
    table = Table("id", "kind", "version", "updated", "ttl")
    shown = 0
    with client(url, token) as http:
        for item in http.iter_contexts(namespace, kind, prefix, page_size=min(limit, 1000)):
            table.add_row(
                item["id"], item["kind"], str(item["version"]), f"{item['updated_at']:.0f}", str(item["ttl"] or "")
            )
            shown += 1
            if shown == limit:
                break
    console.print(table if shown else f"no contexts in {namespace}")


@app.command("rm")
def rm(
    namespace: str,
    context_id: Annotated[str, typer.Argument(metavar="ID")],
    if_version: Annotated[int | None, typer.Option(help="Only if the current version is this.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a context."""
    with client(url, token) as http:
        result = http.delete(namespace, context_id, if_version=if_version)
    console.print(f"deleted {namespace}/{context_id} at version {result['version']}")
