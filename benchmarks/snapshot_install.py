"""How long a follower's Raft thread is held by installing a snapshot from its leader.

pysyncobj hands a follower the leader's snapshot in chunks, each in the follower's Raft thread, and
installs it in that thread right after the last one. The install used to copy the LMDB file out of
the received tar (gigabytes at 1 M contexts) before opening it; now the copy is made chunk by chunk
as the snapshot arrives (``snapshot.Extraction``) and the install only opens it. This loads a store
in process, writes its snapshot, and measures, on a fresh follower store each:

- the anchor, the previous install: the whole file at once, then ``install_snapshot`` (the copy);
- the receive, chunk by chunk as the transport delivers them (longest call and total), then the
  install of what was extracted meanwhile;
- the leader's framing of every chunk (``wire.frame``: pickled, a stored zlib stream) and the
  follower's parsing of it, beside the anchor of the framing before: the same chunks compressed at
  pysyncobj's level 3, as every message over 256 KiB still is.

    python -m benchmarks.snapshot_install [--contexts 300000]
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
import zlib
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.scale import value
from mcpdb.raft.snapshotter import CHUNK_BYTES, Snapshotter
from mcpdb.raft.wire import COMPRESSION_LEVEL, PICKLE_PROTOCOL, frame
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


def _chunk_message(data: bytes, first: bool, last: bool) -> dict[str, object]:
    """pysyncobj's message for one chunk (``SyncObj.__sendAppendEntries``)."""
    return {"type": "append_entries", "term": 2, "commit_index": 1, "serialized": (data, first, last)}


def _compressed_frame(message: dict[str, object]) -> bytes:
    """The anchor: a chunk framed as before, compressed at pysyncobj's level."""
    return zlib.compress(pickle.dumps(message, protocol=PICKLE_PROTOCOL), COMPRESSION_LEVEL)


def _parsed(body: bytes) -> object:
    """What the follower's transport does with a frame's body (no secret: nothing to decrypt)."""
    return pickle.loads(zlib.decompress(body))


def framing_seconds(path: str) -> dict[str, float]:
    """Seconds spent framing and parsing every chunk of the snapshot at ``path``, each way, and the
    bytes each way puts on the wire."""
    spent = dict.fromkeys(("send", "receive", "send_anchor", "receive_anchor", "bytes", "bytes_anchor"), 0.0)
    with open(path, "rb") as source:
        first = True
        while data := source.read(CHUNK_BYTES):
            message = _chunk_message(data, first, False)
            first = False
            for way, build, skip in (("", frame, 4), ("_anchor", _compressed_frame, 0)):
                began = time.perf_counter()
                framed = build(message)
                sent = time.perf_counter()
                _parsed(framed[skip:])
                spent["send" + way] += sent - began
                spent["receive" + way] += time.perf_counter() - sent
                spent["bytes" + way] += len(framed)
    return spent


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
        framing = framing_seconds(leaders_file)

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
                done = snapshots.receive((data, first, not data), applied=0)  # an empty follower
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
    framed = Table(title="framing every chunk: the leader's Raft thread sends, the follower's parses")
    for column in ("", "new: stored", "anchor: zlib level 3", "new/anchor"):
        framed.add_column(column, justify="right")
    for label, key, scale in (
        ("leader, framing, s per GB", "send", 1e9 / size),
        ("follower, parsing, s per GB", "receive", 1e9 / size),
        ("bytes on the wire per snapshot byte", "bytes", 1 / size),
    ):
        new, anchor = framing[key] * scale, framing[key + "_anchor"] * scale
        framed.add_row(label, f"{new:.3f}", f"{anchor:.3f}", f"{new / anchor:.2g}")
    console.print(framed)
    console.print(f"command: python -m benchmarks.snapshot_install --contexts {args.contexts}")


if __name__ == "__main__":
    main()
