"""What the benchmarks that measure mcpdb beside etcd 3.4 in one run (kv, scale) report the same way.

A row holds mcpdb's figure, the anchor's, their ratio, the target and
whether mcpdb meets it; rows without a target are reported, not judged
(``pass`` is None). ``environment`` records what the figures depend on
besides the code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import etcd_cluster

REPO = Path(__file__).resolve().parent.parent


def environment() -> dict[str, Any]:
    """Versions, cores, and how busy the machine was when the run began."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:  # no git
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "python": platform.python_version(),
        "etcd": etcd_cluster.version(),
        "mcpdb_commit": commit or "unknown",
    }


def ratio(mine: float | None, anchor: float | None) -> float | None:
    return mine / anchor if mine is not None and anchor else None


def relative(
    metric: str, mine: float | None, anchor: float | None, target: float | None = None, higher: bool = True
) -> dict[str, Any]:
    """A row judged by the ratio mcpdb/etcd (``higher``: the ratio must reach the target, else stay under)."""
    mine_to_anchor = ratio(mine, anchor)
    if target is None:
        return row(metric, mine, anchor, mine_to_anchor)
    passed = mine_to_anchor is not None and (mine_to_anchor >= target if higher else mine_to_anchor <= target)
    return row(metric, mine, anchor, mine_to_anchor, f"{'>=' if higher else '<='} {target:g}x", passed)


def row(
    metric: str,
    mine: float | None,
    anchor: float | None,
    mine_to_anchor: float | None = None,
    target: str = "",
    passed: bool | None = None,
) -> dict[str, Any]:
    return {"metric": metric, "mcpdb": mine, "etcd": anchor, "ratio": mine_to_anchor, "target": target, "pass": passed}


def cell(value: float | None) -> str:
    """A figure as the tables show it."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 100 else f"{value:,.2f}"


def verdict(passed: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[passed]


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as the markdown table of benchmarks/RESULTS.md."""
    lines = ["| metric | mcpdb | etcd 3.4 | mcpdb/etcd | target | met |", "|---|---|---|---|---|---|"]
    return lines + [
        f"| {r['metric']} | {cell(r['mcpdb'])} | {cell(r['etcd'])} | {cell(r['ratio'])} | {r['target']} | "
        f"{verdict(r['pass'])} |"
        for r in rows
    ]
