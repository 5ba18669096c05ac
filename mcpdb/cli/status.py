"""``mcpdb status``: the cluster as one node sees it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mcpdb.cli.common import TokenOption, UrlOption, client, console, print_json


def status(
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Members, roles, leader, term and indexes per node."""
    with client(url, token) as http:
        cluster = http.cluster()
    if json_output:
        print_json(cluster)
        return
    table = Table("node", "url", "role", "term", "commit", "applied", "reachable", "disk")
    alarms = []
    for node in cluster["nodes"]:
        reachable = node.get("reachable", False)
        if node.get("disk_alarm"):
            alarms.append(f"[red]disk alarm on {node['id']}[/]: {'; '.join(node.get('disk_alarm_reasons', []))}")
        table.add_row(
            node["id"],
            node["http_url"],
            node.get("role", "?"),
            str(node.get("term", "")),
            str(node.get("commit_index", "")),
            str(node.get("applied_index", "")),
            "[green]yes[/]" if reachable else "[red]no[/]",
            "[red]FULL: writes refused[/]" if node.get("disk_alarm") else ("ok" if reachable else ""),
        )
    console.print(table)
    for alarm in alarms:
        console.print(alarm)
    console.print(f"leader: [bold]{cluster['leader'] or 'none'}[/] (term {cluster['term']})")
