"""How long a follower's Raft thread is held by installing a snapshot from its leader.

pysyncobj hands a follower the leader's snapshot in chunks, each in the follower's Raft thread, and
installs it in that thread right after the last one. The install used to copy the LMDB file out of
the received tar (gigabytes at 1 M contexts) before opening it; now the copy is made chunk by chunk
as the snapshot arrives (``snapshot.Extraction``) and the install only opens it. This loads a store
in process, writes its snapshot, and measures, on a fresh follower store each:

- the anchor, the previous install: the whole file at once, then ``install_snapshot`` (the copy);
- the receive, chunk by chunk as the transport delivers them (longest call and total), then the
  install of what was extracted meanwhile.

    python -m benchmarks.snapshot_install [--contexts 300000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.scale import value
from mcpdb.raft.snapshotter import CHUNK_BYTES, Snapshotter
from mcpdb.store import snapshot
from mcpdb.store.commands import Batch, BatchPut
from mcpdb.store.state_machine import ContextStore

BATCH = 1000


def load(directory: Path, contexts: int) -> ContextStore:
    """A store holding ``contexts`` 1 KiB memory contexts (``bench scale``'s opaque values)."""
    store = ContextStore(str(directory))
    for index, start in enumerate(track(range(0, contexts, BATCH), description="loading"), start=1):
        puts = tuple(
            BatchPut(f"c{i}", {"kind": "memory", "facts": [value(i, "opaque")]}, None, None)
            for i in range(start, min(start + BATCH, contexts))
        )
        store.apply(index, Batch("bench", puts, 1.0))
    store.commit()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=300_000)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="mcpdb-install-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        source = load(root / "leader", args.contexts)
        applied = source.applied_index()
        leaders_file = str(root / "leader.snapshot")
        size = snapshot.write(leaders_file, source.pin_snapshot(), ((b"", applied, 1), (b"", applied - 1, 1), None))
        source.close()

        copied = ContextStore(str(root / "copied"))
        began = time.perf_counter()
        copied.install_snapshot(leaders_file)
        copy_install_s = time.perf_counter() - began
        copied.close()

        follower = ContextStore(str(root / "follower"))
        snapshots = Snapshotter(str(root / "follower.snapshot"), follower, lambda _: True)
        longest, total = 0.0, 0.0
        with open(leaders_file, "rb") as leader:
            first = True
            while True:
                data = leader.read(CHUNK_BYTES)
                began = time.perf_counter()
                done = snapshots.receive((data, first, not data))
                took = time.perf_counter() - began
                longest, total, first = max(longest, took), total + took, False
                if done:
                    break
        began = time.perf_counter()
        snapshots.install(lambda: None)
        install_s = time.perf_counter() - began
        assert follower.applied_index() == applied
        follower.close()

    table = Table(title=f"installing a snapshot of {args.contexts:,} contexts ({size / 1e9:.2f} GB)")
    for column in ("", "new", "anchor: copy at install", "new/anchor"):
        table.add_column(column, justify="right")
    table.add_row(
        "Raft thread held by the install, s",
        f"{install_s:.3f}",
        f"{copy_install_s:.3f}",
        f"{install_s / copy_install_s:.2g}",
    )
    table.add_row("longest receive call, s", f"{longest:.3f}", "-", "")
    table.add_row("all receive calls, s", f"{total:.2f}", "-", "")
    console.print(table)
    console.print(f"command: python -m benchmarks.snapshot_install --contexts {args.contexts}")


if __name__ == "__main__":
    main()
