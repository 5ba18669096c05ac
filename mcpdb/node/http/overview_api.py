"""``GET /v1/overview`` (the cluster as `mcpdb top` and /ui show it) and ``GET /ui`` (the dashboard).

The node that is asked scrapes every registered node's /metrics, at most once
a second and only while someone is asking, and keeps the last
HISTORY_POINTS overviews so a freshly opened dashboard has charts at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from importlib import resources
from typing import Any, Protocol

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from mcpdb.node.overview import Scrape, cluster_row, node_row, parse

HISTORY_POINTS = 300
MIN_INTERVAL_S = 1.0


class OverviewNode(Protocol):
    """What the overview uses of the node it is asked on: whom to scrape, and a client to do it."""

    def members(self) -> list[dict[str, Any]]: ...

    def http_client(self) -> httpx.AsyncClient: ...


class OverviewSampler:
    def __init__(self, runtime: OverviewNode) -> None:
        self._runtime = runtime
        self._last: dict[str, Scrape] = {}
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_POINTS)
        self._lock = asyncio.Lock()

    async def _scrape(self, http: httpx.AsyncClient, url: str) -> Scrape | None:
        try:
            response = await http.get(url + "/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return Scrape(time.time(), parse(response.text))

    async def sample(self) -> dict[str, Any]:
        async with self._lock:
            if self.history and time.time() - self.history[-1]["at"] < MIN_INTERVAL_S:
                return self.history[-1]
            nodes = self._runtime.members()
            http = self._runtime.http_client()
            scrapes = await asyncio.gather(*(self._scrape(http, node["http_url"]) for node in nodes))
            rows = []
            for node, scrape in zip(nodes, scrapes, strict=True):
                rows.append(node_row(node, self._last.get(node["id"]), scrape))
                if scrape is not None:
                    self._last[node["id"]] = scrape
            overview = cluster_row(time.time(), rows)
            self.history.append(overview)
            return overview


def add_overview_routes(app: FastAPI, runtime: OverviewNode) -> None:
    sampler = OverviewSampler(runtime)
    page = resources.files("mcpdb.node.http").joinpath("ui.html").read_text()

    @app.get("/v1/overview", tags=["operations"])
    async def overview(history: bool = False) -> dict[str, Any]:
        """Leader, term, and per node: role, requests/s, p95 latency, errors/s, tokens/s, queue,
        slots, weight and assignments/s; ``history=true`` adds the last 300 samples."""
        current = await sampler.sample()
        return {**current, "history": list(sampler.history)} if history else current

    @app.get("/ui", tags=["operations"], response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """The live dashboard (self-contained: no CDN, no build step). Open /ui#token=... when the
        cluster has a token."""
        return HTMLResponse(page)
