"""A store that fails under the Raft thread stops the node instead of serving a state its log does not give.

pysyncobj logs a tick that raised and carries on. After a failed LMDB commit (EIO on a full disk, seen
with three nodes at 1 M contexts) its applied index counted entries the store had lost, and reads on
that node would have missed acknowledged writes. A single-voter node runs in a child process whose
store's group commit fails once; the node must exit with EXIT_STORE_FAILED, and a restart on the same
directories must replay the entry the failed commit lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import EXIT_JOURNAL_SYNC_FAILED, EXIT_STORE_FAILED

pytestmark = pytest.mark.integration

NODE = textwrap.dedent(
    """
    import asyncio, sys, time
    import lmdb
    from mcpdb.raft.replication import Replication
    from mcpdb.raft.settings import RaftSettings
    from mcpdb.store.commands import Put
    from mcpdb.store.state_machine import ContextStore

    data, address, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    fail = mode in ("fail", "fsync")
    store = ContextStore(data + "/store")
    settings = RaftSettings(
        self_addr=address, peers=[], data_dir=data + "/raft", password=None, durable=True,
        compaction_min_entries=10**9, max_entry_bytes=1 << 20, compaction_bytes=1 << 40, disk_reserve_bytes=0,
        request_timeout=3.0,
    )
    replication = Replication(settings, store)
    deadline = time.monotonic() + 20
    while not replication.is_leader() and time.monotonic() < deadline:
        time.sleep(0.05)
    if mode == "fsync":  # the journal's next fsync fails with EIO, as a dying disk's does
        import errno, os, types
        import mcpdb.raft.journal as journal_module

        def fsync_fails(fd):
            raise OSError(errno.EIO, "Input/output error (injected)")

        journal_os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
        journal_os.fsync = fsync_fails
        journal_module.os = journal_os
        put = Put("ns", "lost", {"kind": "memory", "facts": ["x"]}, None, None, 1.0)
        try:
            asyncio.run(replication.propose(put, 5.0))
            print("acknowledged", flush=True)
        except Exception as error:
            print("proposal ended:", type(error).__name__, flush=True)
        time.sleep(5)
        print("still running", flush=True)
    elif fail:
        committed = store.commit

        def commit_fails_once() -> None:
            if store._group is None:  # an idle tick: nothing applied to lose yet
                return committed()
            store.commit = committed
            store._group.abort()
            store._group = None
            raise lmdb.Error("mdb_txn_commit: Input/output error (injected)")

        store.commit = commit_fails_once
        put = Put("ns", "lost", {"kind": "memory", "facts": ["x"]}, None, None, 1.0)
        try:
            asyncio.run(replication.propose(put, 5.0))
        except Exception as error:
            print("proposal ended:", type(error).__name__, flush=True)
        time.sleep(5)
        print("still running", flush=True)
    else:
        deadline = time.monotonic() + 20
        while store.get("ns", "lost") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        print("replayed" if store.get("ns", "lost") else "missing", flush=True)
    """
)


def _run(tmp_path: Path, address: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NODE, str(tmp_path), address, mode],
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )


def test_a_failed_journal_fsync_stops_the_node_before_the_write_is_acknowledged(tmp_path: Path) -> None:
    """After a failed fsync Linux may have dropped the pages and a retry can succeed without them
    on disk: the node stops rather than acknowledge the entry (the journal had marked its segment
    clean before the fsync, and the next tick acknowledged the write with no fsync at all)."""
    failed = _run(tmp_path, f"127.0.0.1:{free_port()}", "fsync")
    assert failed.returncode == EXIT_JOURNAL_SYNC_FAILED, failed.stdout + failed.stderr
    assert "the Raft journal could not be fsynced; stopping this node" in failed.stderr
    assert "acknowledged" not in failed.stdout and "still running" not in failed.stdout


def test_a_failed_store_commit_stops_the_node_and_a_restart_replays_the_entry(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    failed = _run(tmp_path, address, "fail")
    assert failed.returncode == EXIT_STORE_FAILED, failed.stdout + failed.stderr
    assert "the store failed in the Raft thread; stopping this node" in failed.stderr
    assert "still running" not in failed.stdout
    restarted = _run(tmp_path, address, "replay")
    assert restarted.stdout.strip().endswith("replayed"), restarted.stdout + restarted.stderr
