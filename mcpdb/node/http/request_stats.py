"""Request counts and latency by route and status, kept as plain counters on the request path.

prometheus-client's labelled histograms take a lock and a label lookup per
observation; on routes that serve ~10,000 requests/s per node that is worth
avoiding. Here an observation is a dict lookup, a bisect and two additions
(the event loop is the only writer), and the histogram families are built
from these counters at scrape time. Latency runs to the response's status
line: for streams (watch, chat) that is the time to the first byte.

Each answer is counted where its status is known, so the hottest route pays
no wrapper: the request gate counts its own refusals, the fast read path its
own answers, and ``TimedApp`` wraps ``send`` only for what FastAPI serves.
Latency runs from the gate's entry (``STARTED_KEY`` in the ASGI scope), so it
includes authentication.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily

from mcpdb.node.http.routes import label_of

STARTED_KEY = "mcpdb.started"
PATH_CACHE_SIZE = 4096
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestStats:
    def __init__(self) -> None:
        # (method, path, status) -> its series: hot keys skip the route regex and the tuple's formatting
        self._by_request: dict[tuple[str, str, int], list[float]] = {}
        # (method, route, status) -> bucket counts (the last one is +Inf), then the sum of seconds
        self._series: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        series = self._by_request.get((method, path, status))
        if series is None:
            series = self._series_for(method, path, status)
        series[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def answered(self, scope: dict[str, Any], status: int) -> None:
        """Count a request of ``scope`` answered with ``status`` now."""
        self.observe(scope["method"], scope["path"], status, time.perf_counter() - scope[STARTED_KEY])

    def _series_for(self, method: str, path: str, status: int) -> list[float]:
        key = (method, label_of(path), str(status))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        if len(self._by_request) < PATH_CACHE_SIZE:  # bounded: ids are unbounded, routes are not
            self._by_request[(method, path, status)] = series
        return series

    def families(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "mcpdb_http_request_duration_seconds",
            "HTTP requests by route and status: time to the response's status line.",
            labels=["method", "route", "status"],
        )
        for key, series in sorted(self._series.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), series[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(key), buckets, sum_value=series[-1])
        yield family


class TimedApp:
    """Counts every answer of the wrapped ASGI app at its status line."""

    def __init__(self, app: Any, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.stats.answered(scope, message["status"])
            await send(message)

        await self.app(scope, receive, timed_send)
