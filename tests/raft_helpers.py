"""A voter in the test's own process: its Replication (a real Raft thread on a free loopback port) and
its store, with the settings such tests share (durable, no snapshot by size, no disk reserve)."""

from __future__ import annotations

from pathlib import Path

from mcpdb.raft.replication import Replication
from mcpdb.raft.settings import RaftSettings
from mcpdb.store.state_machine import ContextStore


def in_process_voter(root: Path, self_addr: str | None, peers: list[str]) -> tuple[Replication, ContextStore]:
    """A voter at ``self_addr`` (None: a read-only replica of ``peers``) with its data under ``root``; the
    caller closes both."""
    store = ContextStore(str(root / "store"))
    settings = RaftSettings(
        self_addr=self_addr,
        peers=peers,
        data_dir=str(root / "raft"),
        password=None,
        durable=True,
        compaction_min_entries=10**9,
        max_entry_bytes=1 << 20,
        compaction_bytes=1 << 40,
        disk_reserve_bytes=0,
    )
    return Replication(settings, store), store
