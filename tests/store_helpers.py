"""The store's secondary indexes as the tests read them: what it holds, and what its contexts derive."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from mcpdb.store.state_machine import ContextStore, _index_entries


def index_state(store: ContextStore) -> dict[str, Any]:
    """The keys of ``by_kind`` and ``by_owner`` in key order, and the per-kind counts, as the store holds them."""
    generation = store._generation
    with generation.env.begin() as txn:
        return {
            "by_kind": [key for key, _ in txn.cursor(db=generation.dbs[b"by_kind"])],
            "by_owner": [key for key, _ in txn.cursor(db=generation.dbs[b"by_owner"])],
            "counts": store.count_by_kind(),
        }


def derived_index_state(stored: dict[bytes, dict[str, Any]]) -> dict[str, Any]:
    """What ``index_state`` must be for contexts ``stored`` (ctx key -> record as ctx holds it)."""
    entries = [entry for key, record in stored.items() for entry in _index_entries(key, record)]
    return {
        "by_kind": sorted(key for name, key in entries if name == b"by_kind"),
        "by_owner": sorted(key for name, key in entries if name == b"by_owner"),
        "counts": dict(Counter(record["kind"] for record in stored.values())),
    }


def ctx_records(store: ContextStore) -> dict[bytes, dict[str, Any]]:
    """Every context as ctx holds it, by ctx key."""
    generation = store._generation
    with generation.env.begin(db=generation.dbs[b"ctx"]) as txn:
        return {key: orjson.loads(value) for key, value in txn.cursor()}
