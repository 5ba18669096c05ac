"""Per-token request rate limits: one token bucket per token id, on each node.

A bucket holds up to ``burst_seconds`` worth of requests and refills at the
token's rate; a request takes one. Limits are per node (a client spreading
over N nodes gets up to N times the rate): a cluster-wide count would put a
replicated or leader round trip on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BURST_SECONDS = 2.0


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic, burst_seconds: float = BURST_SECONDS) -> None:
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (available, at)

    def take(self, key: str, rate: float) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else the seconds until one is."""
        now = self._clock()
        capacity = max(1.0, rate * self._burst_seconds)
        available, at = self._buckets.get(key, (capacity, now))
        available = min(capacity, available + (now - at) * rate)
        if available >= 1.0:
            self._buckets[key] = (available - 1.0, now)
            return 0.0
        self._buckets[key] = (available, now)
        return (1.0 - available) / rate
