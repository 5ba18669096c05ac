"""``mcpdb top``: the cluster live in the terminal, from the same overview as the /ui dashboard."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.cli.errors import CliError

_ROLE_STYLE = {"leader": "bold green", "follower": "white", "replica": "magenta", "candidate": "yellow"}


def _number(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def render(overview: dict[str, Any]) -> Group:
    """The overview as a header line and one row per node."""
    p95 = overview.get("p95_latency_s")
    header = Text.assemble(
        ("mcpdb ", "bold cyan"),
        f"leader {overview.get('leader') or 'none'}  ",
        f"term {_number(overview.get('term'), 0)}  ",
        f"{_number(overview.get('requests_per_s'))} req/s  ",
        f"{_number(overview.get('tokens_per_s'))} tokens/s  ",
        f"p95 {_number(p95, 1, 1000)} ms",
    )
    table = Table(
        "node",
        "role",
        "model",
        "weight",
        "slots",
        "in flight",
        "queued",
        "tokens/s",
        "req/s",
        "p95 ms",
        "errors/s",
        "assigned/s",
        "lag",
        expand=True,
    )
    for row in overview["nodes"]:
        role = row.get("role", "unreachable") if row["reachable"] else "unreachable"
        assigned = sum((row.get("assignments_per_s") or {}).values())
        table.add_row(
            row["id"],
            Text(role, style=_ROLE_STYLE.get(role, "bold red")),
            row.get("model") or "-",
            _number(row.get("weight")),
            _number(row.get("slots"), 0),
            _number(row.get("in_flight"), 0),
            _number(row.get("queued"), 0),
            _number(row.get("tokens_per_s")),
            _number(row.get("requests_per_s")),
            _number(row.get("p95_latency_s"), 1, 1000),
            _number(row.get("errors_per_s")),
            _number(assigned, 2) if role == "leader" else "",
            _number(row.get("apply_lag"), 0),
        )
    return Group(header, table)


def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one refresh and exit.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Leader, term, and per node: role, capacity, load, tokens/s, requests/s, p95 latency, assignments."""
    if interval < 0.2:
        raise CliError("--interval must be at least 0.2 s")
    with client(url, token) as http:
        http.overview()  # the first sample only anchors the rates
        time.sleep(min(interval, 1.0))
        if once:
            console.print(render(http.overview()))
            return
        with Live(render(http.overview()), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(http.overview()))
