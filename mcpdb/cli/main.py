"""Entry point of the ``mcpdb`` command."""

from __future__ import annotations

import typer

from mcpdb.cli import (
    autoscale,
    bench,
    chat,
    ctx,
    jepsen,
    mcp_stdio,
    search,
    session,
    status,
    token,
    top,
    up,
    watch,
)
from mcpdb.cli.errors import CliError, fail
from mcpdb.node import command as node_command
from mcpdb.node.config import ConfigError

app = typer.Typer(
    help="mcpdb: a Raft-replicated context database for LLM applications.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(node_command.app, name="node")
app.add_typer(ctx.app, name="ctx")
app.add_typer(session.app, name="session")
app.add_typer(bench.app, name="bench")
app.add_typer(token.app, name="token")
app.command("up")(up.up)
app.command("status")(status.status)
app.command("jepsen")(jepsen.jepsen)
app.command("chat")(chat.chat)
app.command("watch")(watch.watch)
app.command("search")(search.search)
app.command("mcp")(mcp_stdio.mcp)
app.command("top")(top.top)
app.command("autoscale")(autoscale.autoscale)


def run() -> None:
    """Console-script entry: user mistakes become one line on stderr and a non-zero exit."""
    try:
        app()
    except (CliError, ConfigError) as error:
        fail(str(error), getattr(error, "code", 2))
    except KeyboardInterrupt:
        fail("interrupted", 130)
