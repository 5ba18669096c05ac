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
