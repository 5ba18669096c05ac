"""The overview's rates and percentiles from two scrapes (what `mcpdb top` and /ui show)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpdb.node.overview import Scrape, cluster_row, node_row, quantile

HTTP = "mcpdb_http_request_duration_seconds"
ROUTE = (("method", "GET"), ("route", "/v1/namespaces/{ns}/contexts/{id}"), ("status", "200"))
SCRAPE_ROUTE = (("method", "GET"), ("route", "/metrics"), ("status", "200"))


def _scrape(at: float, fast: float, slow: float, scrapes: float, assigned: float) -> Scrape:
    samples = {
        ("mcpdb_raft_role", (("role", "leader"),)): 1.0,
        ("mcpdb_raft_role", (("role", "follower"),)): 0.0,
        ("mcpdb_raft_term", ()): 3.0,
        ("mcpdb_inference_tokens_per_s", ()): 12.5,
        (HTTP + "_count", ROUTE): fast + slow,
        (HTTP + "_count", SCRAPE_ROUTE): scrapes,
        (HTTP + "_bucket", (("le", "0.01"),) + ROUTE): fast,
        (HTTP + "_bucket", (("le", "0.1"),) + ROUTE): fast + slow,
        (HTTP + "_bucket", (("le", "+Inf"),) + ROUTE): fast + slow,
        (HTTP + "_bucket", (("le", "+Inf"),) + SCRAPE_ROUTE): scrapes,
        ("mcpdb_scheduler_assignments_total", (("node", "n2"),)): assigned,
    }
    return Scrape(at, samples)


def test_rates_and_p95_over_the_interval_leave_out_the_overviews_own_scrapes() -> None:
    before = _scrape(100.0, fast=1000, slow=0, scrapes=5, assigned=10)
    after = _scrape(102.0, fast=1180, slow=20, scrapes=500, assigned=14)  # 200 requests, 10% slow
    row = node_row({"id": "n1", "http_url": "http://x"}, before, after)
    assert row["role"] == "leader" and row["term"] == 3.0
    assert row["requests_per_s"] == pytest.approx(100.0)
    assert 0.01 < row["p95_latency_s"] <= 0.1  # the slowest 10% sit in (10 ms, 100 ms]
    assert row["assignments_per_s"] == {"n2": pytest.approx(2.0)}
    first = node_row({"id": "n1"}, None, after)
    assert "requests_per_s" not in first  # one scrape gives no rates
    assert node_row({"id": "n3"}, before, None) == {"id": "n3", "url": None, "model": None, "reachable": False}
    overview = cluster_row(102.0, [row, first])
    assert overview["leader"] == "n1" and overview["tokens_per_s"] == 25.0


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=8), st.floats(min_value=0.01, max_value=1))
def test_quantile_lies_within_the_buckets(increments: list[float], q: float) -> None:
    bounds = [0.001 * 2**i for i in range(len(increments))]
    cumulative, total = [], 0.0
    for bound, count in zip(bounds, increments, strict=True):
        total += count
        cumulative.append((bound, total))
    value = quantile(cumulative + [(float("inf"), total)], q)
    if total == 0:
        assert value is None
    else:
        assert 0 <= value <= bounds[-1]
