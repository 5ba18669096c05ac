"""LMDB is a cache of the Raft log: after an unclean reboot it is discarded and rebuilt."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mcpdb.store.commands import from_entry
from mcpdb.store.state_machine import ContextStore
from tests.conftest import start_cluster

PUT = from_entry({"op": "put", "ns": "a", "id": "x", "context": {"kind": "memory", "facts": ["f"]}, "now": 1.0})


def _open_and_leave_unclean(directory: Path) -> None:
    store = ContextStore(str(directory))
    store.apply(2, PUT)
    # No close(): the process "died" with the store open.


def test_clean_shutdown_keeps_the_store(tmp_path: Path) -> None:
    store = ContextStore(str(tmp_path))
    store.apply(2, PUT)
    store.close()
    (tmp_path / "BOOT_ID").write_text("another-boot")  # even across a reboot
    reopened = ContextStore(str(tmp_path))
    assert not reopened.rebuilt_after_unclean_reboot
    assert reopened.get("a", "x") is not None


def test_process_crash_on_the_same_boot_keeps_the_store(tmp_path: Path) -> None:
    _open_and_leave_unclean(tmp_path)
    reopened = ContextStore(str(tmp_path))
    assert not reopened.rebuilt_after_unclean_reboot
    assert reopened.applied_index() == 2


def test_unclean_reboot_discards_the_store(tmp_path: Path) -> None:
    _open_and_leave_unclean(tmp_path)
    (tmp_path / "BOOT_ID").write_text("the-boot-before-the-power-cut")
    reopened = ContextStore(str(tmp_path))
    assert reopened.rebuilt_after_unclean_reboot
    assert reopened.applied_index() == 0 and reopened.get("a", "x") is None


@pytest.mark.integration
def test_node_rebuilds_from_its_journal_after_an_unclean_reboot(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        victim = next(n.node_id for n in cluster.layout.nodes if n.node_id != cluster.leader())
        with httpx.Client(timeout=5) as http:
            for i in range(100):
                http.put(
                    f"{cluster.urls()[i % 3]}/v1/namespaces/r/contexts/k{i}", json={"kind": "memory", "facts": [str(i)]}
                ).raise_for_status()
            # pysyncobj persists the commit index once a second; alone, a node
            # replays its journal only up to the last persisted commit index.
            time.sleep(1.5)
            cluster.kill(victim)
            (cluster.data_dir / victim / "store" / "BOOT_ID").write_text("the-boot-before-the-power-cut")
            # Alone, it rebuilds from its own snapshot and journal, before hearing from a leader.
            for spec in cluster.layout.nodes:
                if spec.node_id != victim:
                    cluster.stop(spec.node_id)
            cluster.start(victim)
            url = cluster.spec(victim).url
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get(f"{url}/v1/namespaces/r/contexts/k99?consistency=stale").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "store was not rebuilt from the journal"
                time.sleep(0.1)
            log = (cluster.data_dir / victim / "node.log").read_text()
            assert "rebuilding it from snapshot and journal" in log
            for i in range(100):
                read = http.get(f"{url}/v1/namespaces/r/contexts/k{i}?consistency=stale")
                assert read.json()["facts"] == [str(i)]
    finally:
        cluster.stop_all(graceful=False)
