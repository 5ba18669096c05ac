"""How one node takes part in Raft: the settings ``Replication`` is built from.

Plain data, so that the node can hold them without importing pysyncobj; the bridge
(``pysyncobj_bridge``) maps them onto pysyncobj's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

ELECTION_TIMEOUT_S = (0.5, 1.0)  # a follower stands after a random time in this range without a leader


@dataclass
class RaftSettings:
    """How one node takes part in Raft. ``self_addr=None`` makes a non-voting replica.

    The fields without a default are the node's flags: NodeConfig holds their defaults, once.
    """

    self_addr: str | None
    peers: list[str]
    data_dir: str
    password: str | None
    durable: bool
    compaction_min_entries: int
    max_entry_bytes: int
    compaction_bytes: int  # journal size that also triggers a snapshot
    disk_reserve_bytes: int  # kept allocated ahead of the journal and the store
    request_timeout: float  # a write's wait for its answer; bulk proposals held are bounded by it
    heartbeat_period: float = 0.05
    tick_period: float = 0.05
    election_timeout: tuple[float, float] = ELECTION_TIMEOUT_S

    @property
    def entry_limit(self) -> int:
        """Bytes from which pysyncobj sends an entry as a chunked "transmission", a path the log guard
        cannot reconcile (a re-sent one truncates the entries after it): no entry that large is
        proposed (``Replication.propose``). Four times the largest request body: stored with their
        fields' defaults, short turns or records more than double a body."""
        return max(4 << 20, 4 * self.max_entry_bytes)
