"""A cluster overview from successive scrapes of every node's /metrics: what `mcpdb top` and /ui show.

Pure functions over parsed samples, so rates and percentiles are computed
(and tested) in one place: requests/s and p95 latency over the interval
between two scrapes (from the histogram buckets' increase), tokens/s, queue,
assignments/s per worker as the leader decided them, time to first token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mcpdb.node.http.routes import UNCOUNTED_LABELS

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

_HTTP = "mcpdb_http_request_duration_seconds"


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _summed(samples: Samples, name: str, keep: Any = lambda labels: True) -> dict[Labels, float]:
    """Sum of ``name`` over label sets ``keep`` accepts, grouped by their ``le`` label (if any)."""
    out: dict[Labels, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name != name:
            continue
        as_dict = dict(labels)
        if not keep(as_dict):
            continue
        key = (("le", as_dict["le"]),) if "le" in as_dict else ()
        out[key] = out.get(key, 0.0) + value
    return out


def _counted(labels: dict[str, str]) -> bool:
    return labels.get("route") not in UNCOUNTED_LABELS  # the overview's own and the nodes' traffic


def quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative (upper bound, count) pairs, interpolated inside its bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _interval_quantile(
    before: Samples | None, after: Samples, name: str, q: float, keep: Any = lambda labels: True
) -> float | None:
    now = _summed(after, name + "_bucket", keep)
    then = _summed(before, name + "_bucket", keep) if before else {}
    deltas = [(float(dict(key)["le"]), value - then.get(key, 0.0)) for key, value in now.items()]
    return quantile(deltas, q)


@dataclass
class Scrape:
    at: float
    samples: Samples


def node_row(node: dict[str, Any], before: Scrape | None, after: Scrape | None) -> dict[str, Any]:
    """One node's line of the overview (``node``: its registry entry); rates over before -> after."""
    row: dict[str, Any] = {
        "id": node["id"],
        "url": node.get("http_url"),
        "model": node.get("model"),
        "reachable": after is not None,
    }
    if after is None:
        return row
    s = after.samples
    roles = [dict(labels)["role"] for (name, labels), value in s.items() if name == "mcpdb_raft_role" and value == 1]
    row.update(
        role=roles[0] if roles else "unknown",
        term=_value(s, "mcpdb_raft_term"),
        commit_index=_value(s, "mcpdb_raft_commit_index"),
        apply_lag=_value(s, "mcpdb_raft_apply_lag"),
        tokens_per_s=_value(s, "mcpdb_inference_tokens_per_s"),
        in_flight=_value(s, "mcpdb_inference_in_flight"),
        queued=_value(s, "mcpdb_inference_queued"),
        slots=_value(s, "mcpdb_inference_slots"),
        weight=_value(s, "mcpdb_inference_weight"),
    )
    seconds = after.at - before.at if before is not None else 0.0
    if before is None or seconds <= 0:
        return row
    b = before.samples

    def rate(keep: Any) -> float:
        requests = _summed(s, _HTTP + "_count", keep), _summed(b, _HTTP + "_count", keep)
        return max(0.0, sum(requests[0].values()) - sum(requests[1].values())) / seconds

    row.update(
        requests_per_s=rate(_counted),
        errors_per_s=rate(lambda labels: _counted(labels) and labels["status"] >= "500"),
        p95_latency_s=_interval_quantile(b, s, _HTTP, 0.95, _counted),
        ttft_p95_s=_interval_quantile(b, s, "mcpdb_inference_ttft_seconds", 0.95),
    )
    assigned, assigned_before = _assignments(s), _assignments(b)
    row["assignments_per_s"] = {
        worker: max(0.0, value - assigned_before.get(worker, 0.0)) / seconds for worker, value in assigned.items()
    }
    return row


def _assignments(samples: Samples) -> dict[str, float]:
    """The leader's assignments so far, per worker."""
    return {
        dict(labels)["node"]: value
        for (name, labels), value in samples.items()
        if name == "mcpdb_scheduler_assignments_total"
    }


def cluster_row(at: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole cluster at one moment: leader, term, totals, and the per-node rows."""
    leader = next((r["id"] for r in rows if r.get("role") == "leader"), None)
    terms = [r["term"] for r in rows if r.get("term") is not None]
    latencies = [r["p95_latency_s"] for r in rows if r.get("p95_latency_s") is not None]
    return {
        "at": at,
        "leader": leader,
        "term": max(terms) if terms else None,
        "requests_per_s": sum(r.get("requests_per_s") or 0.0 for r in rows),
        "tokens_per_s": sum(r.get("tokens_per_s") or 0.0 for r in rows),
        "p95_latency_s": max(latencies) if latencies else None,
        "nodes": rows,
    }
