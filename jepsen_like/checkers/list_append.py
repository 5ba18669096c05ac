"""Session turns as append-only lists: lost, duplicated, reordered, stale and phantom appends.

Each append adds a unique value to the list at a key (a session); each read
returns the whole list. Because appends are totally ordered by the log, all
reads of a key must be prefixes of one sequence, and a read must contain
every append acknowledged before the read was invoked, and everything an
earlier completed read already showed.

Anomalies:

- ``duplicate``: a value twice in one read (an append applied twice);
- ``phantom``: a value nobody appended; ``failed_append_visible``: a value
  whose append was reported as certainly not applied;
- ``reordered``: two reads that are not prefixes of one sequence;
- ``stale_read``: a read missing an append acknowledged before it began, or
  shorter than a read that completed before it began;
- ``lost``: an acknowledged append that no read after its acknowledgement
  ever contains (``check_final`` also checks every node after healing).

``info`` appends may appear or not (at most once).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from jepsen_like.history import Op, pairs


def _is_prefix(short: list[Any], long: list[Any]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def _check_key(key: str, operations: list[tuple[Op, Op]]) -> list[dict[str, Any]]:
    anomalies: list[dict[str, Any]] = []
    appends = {inv.value: done for inv, done in operations if inv.f == "append"}
    acknowledged = [(done.index, inv.value) for inv, done in operations if inv.f == "append" and done.type == "ok"]
    reads = [(inv, done) for inv, done in operations if inv.f == "read" and done.type == "ok"]

    def anomaly(kind: str, **details: Any) -> None:
        anomalies.append({"kind": kind, "key": key, **details})

    for inv, done in reads:
        values = list(done.value)
        for value, count in Counter(values).items():
            if count > 1:
                anomaly("duplicate", value=value, read_at=done.time)
            if value not in appends:
                anomaly("phantom", value=value, read_at=done.time)
            elif appends[value].type == "fail":
                anomaly("failed_append_visible", value=value, read_at=done.time)

    longest = max((list(done.value) for _, done in reads), key=len, default=[])
    for _, done in reads:
        if not _is_prefix(list(done.value), longest):
            anomaly("reordered", read=list(done.value), longest=longest, read_at=done.time)

    # Real-time order: what was acknowledged, or already seen, before a read began must be in it.
    seen_before: list[tuple[int, int]] = sorted((done.index, len(done.value)) for _, done in reads)
    for inv, done in reads:
        values = set(done.value)
        missing = [v for index, v in acknowledged if index < inv.index and v not in values]
        later = {v for other_inv, other in reads if other_inv.index > done.index for v in other.value}
        for value in missing:
            anomaly("stale_read" if value in later else "lost", value=value, read_at=done.time)
        longest_seen = max((length for index, length in seen_before if index < inv.index), default=0)
        if len(done.value) < longest_seen:
            anomaly("stale_read", read=list(done.value), shorter_than=longest_seen, read_at=done.time)
    return anomalies


def check(ops: Iterable[Op]) -> dict[str, Any]:
    """Check every key of a list-append history."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    anomalies = [a for key in sorted(by_key) for a in _check_key(key, pairs(by_key[key]))]
    return {"valid": not anomalies, "anomalies": anomalies, "counts": dict(Counter(a["kind"] for a in anomalies))}


def check_final(acknowledged: dict[str, list[Any]], final_reads: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """After healing: every acknowledged append is on every node, once, and all nodes agree."""
    anomalies = []
    for node, reads in sorted(final_reads.items()):
        for key, values in acknowledged.items():
            present = reads.get(key, [])
            for value in values:
                if value not in present:
                    anomalies.append({"kind": "lost_on_node", "node": node, "key": key, "value": value})
            for value, count in Counter(present).items():
                if count > 1:
                    anomalies.append({"kind": "duplicate_on_node", "node": node, "key": key, "value": value})
    keys = {key for reads in final_reads.values() for key in reads}
    for key in sorted(keys):
        if len({tuple(reads.get(key, [])) for reads in final_reads.values()}) > 1:
            anomalies.append({"kind": "replicas_differ", "key": key,
                              "lists": {node: reads.get(key, []) for node, reads in final_reads.items()}})
    return anomalies
