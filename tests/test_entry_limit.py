"""No entry reaches the size from which pysyncobj sends it as a chunked "transmission", a path the log
guard cannot reconcile (an audit in session 24 reproduced a re-sent chunked entry truncating the
acknowledged, applied entries after it on pysyncobj's real handler): the batch size is four times the
largest body, and a proposal whose entry would still reach it is refused before it enters the log."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.config import FAIL_REASON
from pysyncobj.syncobj import _COMMAND_TYPE

from mcpdb.errors import EntryTooLarge
from mcpdb.model import CONTEXT_IN_ADAPTER, context_fields
from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import _syncobj_conf
from mcpdb.raft.replication import ENTRY_FRAMING_BYTES
from mcpdb.raft.settings import RaftSettings
from mcpdb.store import commands
from tests.raft_helpers import in_process_voter, wait_until


def _settings(tmp_path: Path, max_body: int) -> RaftSettings:
    return RaftSettings(
        self_addr="127.0.0.1:1",
        peers=[],
        data_dir=str(tmp_path),
        password=None,
        durable=True,
        compaction_min_entries=10**9,
        max_entry_bytes=max_body,
        compaction_bytes=1 << 40,
        disk_reserve_bytes=0,
        request_timeout=3.0,
    )


def _entry(payload: bytes) -> bytes:
    """The command as pysyncobj keeps it: its type byte, then its pickle of the ``@replicated`` call."""
    return bytes([_COMMAND_TYPE.REGULAR]) + pickle.dumps((0, (payload,)), protocol=2)


@pytest.mark.parametrize("max_body", [1 << 20, 2 << 20, 8 << 20])
def test_a_body_of_the_shortest_turns_the_limit_accepts_fits_one_appendentries(tmp_path: Path, max_body: int) -> None:
    """Short turns are stored with their defaults (``"timestamp":null,"metadata":{}``), more than twice
    the body: with a batch size of twice the body, a 2 MiB one made a 4.3 MB entry, chunked."""
    settings = _settings(tmp_path, max_body)
    batch = _syncobj_conf(settings, lambda old, new: None).appendEntriesBatchSizeBytes
    turn = '{"role":"tool","content":""}'
    count = (max_body - len('{"kind":"session","turns":[]}')) // (len(turn) + 1)
    body = '{"kind":"session","turns":[' + ",".join([turn] * count) + "]}"
    assert len(body) <= max_body
    context = CONTEXT_IN_ADAPTER.validate_json(body)  # what PUT /v1/namespaces/ns/contexts/s1 validates
    payload = commands.encode(commands.Put("ns", "s1", context_fields(context), context.ttl, None, time.time()))
    assert len(payload) > 2 * len(body)
    assert len(_entry(payload)) < len(payload) + ENTRY_FRAMING_BYTES < batch == settings.entry_limit


def test_a_proposal_whose_entry_would_be_chunked_is_refused_before_the_log(tmp_path: Path) -> None:
    replication, store = in_process_voter(tmp_path, f"127.0.0.1:{free_port()}", [])
    try:
        wait_until(replication.is_leader, "a lone voter did not lead")
        before = replication.status()["commit_index"]
        limit = replication.settings.entry_limit
        fact = "x" * (limit // 2)
        huge = commands.Put("ns", "big", {"kind": "memory", "facts": [fact, fact]}, None, None, 1.0)
        with pytest.raises(EntryTooLarge, match="more than the .* one log entry holds"):
            asyncio.run(replication.propose(huge, 10.0))
        fits = commands.Put("ns", "big", {"kind": "memory", "facts": [fact[: limit // 4]]}, None, None, 1.0)
        asyncio.run(replication.propose(fits, 10.0))
        refused: list[Any] = []  # one forwarded by a node whose own limit is larger
        replication._raft._applyCommand(b"x" * limit, lambda result, error: refused.append(error))
        assert refused == [FAIL_REASON.REQUEST_DENIED]
        wait_until(lambda: replication.status()["commit_index"] > before, "the status never showed the write")
        log = replication._raft._SyncObj__raftLog  # the refused one never entered it (a registration may have)
        assert all(len(log[position][0]) < limit for position in range(len(log)))
        assert store.get("ns", "big") is not None
    finally:
        replication.close()
        store.close()
