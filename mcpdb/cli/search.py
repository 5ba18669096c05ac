"""``mcpdb search``: the contexts of a namespace that best match a query, as a chat would find them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mcpdb.cli.common import TokenOption, UrlOption, client, console, print_json
from mcpdb.cli.errors import CliError
from mcpdb.model import SEARCH_MODES, SEARCHABLE_KINDS

SNIPPET_CHARS = 80


def _text(context: dict) -> str:
    """A short line of what the context says, for the table."""
    parts = context.get("facts") or context.get("rules") or context.get("goals") or []
    text = " · ".join(str(part) for part in parts) or str(context.get("text") or context.get("goal") or "")
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def search(
    namespace: str,
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    user: Annotated[str | None, typer.Option(help="Only this user's contexts and nobody's.")] = None,
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(SEARCHABLE_KINDS)}.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only contexts carrying this tag (repeatable).")] = None,
    k: Annotated[int, typer.Option("-k", help="At most this many results (1-100).")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid (default), lexical (BM25) or vector.")] = "hybrid",
    stale: Annotated[bool, typer.Option(help="Search this node's state without a read index.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Rank a namespace's contexts by how well they match QUERY, linearizable unless --stale."""
    if kind is not None and kind not in SEARCHABLE_KINDS:
        raise CliError(f"cannot search kind {kind!r}; use one of {', '.join(SEARCHABLE_KINDS)}")
    if mode not in SEARCH_MODES:
        raise CliError(f"unknown mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
    if not 1 <= k <= 100:
        raise CliError("-k must be between 1 and 100")
    if not query.strip():
        raise CliError("the query is empty")
    with client(url, token) as http:
        found = http.search(namespace, query, kind, user, tag or [], k, mode, "stale" if stale else "linearizable")
    if as_json:
        print_json(found)
        return
    if not found["results"]:
        console.print(f"nothing in {namespace} matches {' '.join(found['terms']) or 'those words'}")
        return
    table = Table("score", "id", "kind", "text")
    for result in found["results"]:
        table.add_row(f"{result['score']:.2f}", result["id"], result["kind"], _text(result["context"]))
    console.print(table)
    console.print(f"[dim]{found['matched']} of {found['searched']} contexts share a term with the query[/dim]")
