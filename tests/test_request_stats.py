"""The histogram built from the request counters (route labels: tests/test_routes.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mcpdb.node.http.request_stats import RequestStats


def test_histogram_is_cumulative_with_sum_and_count() -> None:
    stats = RequestStats()
    for seconds in (0.0004, 0.002, 0.002, 3.0, 60.0):
        stats.observe("GET", "/v1/namespaces/a/contexts/x", 200, seconds)
    stats.observe("PUT", "/v1/namespaces/a/contexts/x", 409, 0.001)

    class Collector:
        def collect(self):  # noqa: ANN201
            return stats.families()

    registry = CollectorRegistry()
    registry.register(Collector())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    get = (("method", "GET"), ("route", "/v1/namespaces/{ns}/contexts/{id}"), ("status", "200"))
    assert samples[("mcpdb_http_request_duration_seconds_count", get)] == 5
    assert samples[("mcpdb_http_request_duration_seconds_sum", get)] == sum((0.0004, 0.002, 0.002, 3.0, 60.0))
    assert samples[("mcpdb_http_request_duration_seconds_bucket", (("le", "0.0005"),) + get)] == 1
    assert samples[("mcpdb_http_request_duration_seconds_bucket", (("le", "0.0025"),) + get)] == 3
    assert samples[("mcpdb_http_request_duration_seconds_bucket", (("le", "5.0"),) + get)] == 4
    assert samples[("mcpdb_http_request_duration_seconds_bucket", (("le", "+Inf"),) + get)] == 5
    conflict = (("method", "PUT"), ("route", "/v1/namespaces/{ns}/contexts/{id}"), ("status", "409"))
    assert samples[("mcpdb_http_request_duration_seconds_count", conflict)] == 1
