"""What the search index costs a write (issue 15): contexts/s applied into the store beside SQLite FTS5.

The lexical index is written in the transaction of every write, by the Raft thread of every replica, so
its price is paid on the write path. This measures it where nothing else blurs it, in process: N memory
contexts applied to a ``ContextStore`` in batches of 500 (one ``Batch`` command each, committed as a
group commit would), against SQLite's FTS5 (stdlib sqlite3, ``porter unicode61``, one transaction per
batch, ``synchronous=OFF`` as LMDB runs NOSYNC here) indexing the same text. Three corpora:

- ``facts``: short English facts, 8-14 words from a 2,000-word Zipf-distributed vocabulary (what mem0-style
  memories look like);
- ``random``: the scale bench's 1 KiB values (letters, digits and spaces), mostly "words" longer than an
  index keeps;
- ``opaque``: one 1 KiB token (``mcpdb bench kv``'s value): no word is indexed, the write path without
  the index's work, the baseline.

Every tenth memory is one heavy user's (the others spread over 1,000 users), and after the load both
systems answer that user's search (five words of the corpus's first text, the user's and nobody's
memories, best five by BM25) eleven times, median reported: mcpdb reads that user's term lists (its
cost follows the user's memories), FTS5 its matches in the whole table, filtered by user.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import plots

BATCH = 500
CORPORA = ("facts", "random", "opaque")
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba", "do", "fi", "gu", "he", "ji"]


@dataclass
class IndexSettings:
    contexts: int = 100_000
    out: Path | None = None

    def command(self) -> str:
        return f"mcpdb bench index --contexts {self.contexts}" + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return plots.run_folder(self.out)

    def expected_s(self) -> float:
        """Rough length of the whole run, for the progress bar: about 5,000 contexts/s per step."""
        return len(CORPORA) * 2 * self.contexts / 5000


def _vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < 2000:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def corpus(name: str, count: int) -> Iterator[str]:
    """The ``count`` texts of corpus ``name``, the same on every run."""
    rng = random.Random(15)
    if name == "facts":
        vocabulary = _vocabulary(rng)
        weights = [1.0 / rank for rank in range(1, len(vocabulary) + 1)]
        for _ in range(count):
            yield " ".join(rng.choices(vocabulary, weights, k=rng.randint(8, 14)))
    elif name == "random":
        filler = "".join(rng.choices(string.ascii_letters + string.digits + " ", k=4096))
        for i in range(count):
            start = (i * 7919) % 3000
            yield filler[start : start + 1024]
    else:
        for i in range(count):
            yield f"{i:08d}" + "x" * 1016


HEAVY_USER = "heavy"
SEARCH_RUNS = 11


def _user_of(position: int) -> str:
    return HEAVY_USER if position % 10 == 0 else f"u{position % 1000}"


def _query_words(texts: list[str]) -> list[str]:
    """Five distinct words of the corpus's first text that the index keeps (none for ``opaque``)."""
    from mcpdb.retrieval import lexical

    kept = [word for word in lexical.words(texts[0]) if lexical.terms(word)]
    return list(dict.fromkeys(kept))[:5]


def _median_ms(search: Callable[[], object]) -> float:
    times = []
    for _ in range(SEARCH_RUNS):
        began = time.perf_counter()
        search()
        times.append((time.perf_counter() - began) * 1000)
    return sorted(times)[SEARCH_RUNS // 2]


def _timed(apply: Callable[[int, list[str]], None], texts: list[str]) -> float:
    began = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        apply(start, texts[start : start + BATCH])
    return len(texts) / (time.perf_counter() - began)


def _mcpdb(texts: list[str], directory: Path) -> dict[str, float]:
    from mcpdb.retrieval import lexical
    from mcpdb.store.commands import Batch, BatchPut
    from mcpdb.store.search import SearchQuery
    from mcpdb.store.state_machine import ContextStore

    store = ContextStore(str(directory / "store"))
    index = 0

    def apply(start: int, batch: list[str]) -> None:
        nonlocal index
        index += 1
        puts = tuple(
            BatchPut(f"c{start + k}", {"kind": "memory", "facts": [text], "user_id": _user_of(start + k)}, None, None)
            for k, text in enumerate(batch)
        )
        store.apply(index, Batch("bench", puts, 1.0))
        store.commit()

    rate = _timed(apply, texts)
    size = store.stats()["size_bytes"]
    terms = lexical.query_terms(" ".join(_query_words(texts)))
    owners = ContextStore.owners_of([HEAVY_USER, None])
    query = SearchQuery(terms, None, "lexical", ["memory"], owners, [], 5)
    search_ms = _median_ms(lambda: store.search("bench", query))
    store.close()
    return {"contexts_per_s": rate, "bytes": size, "user_search_ms": search_ms}


def _fts5(texts: list[str], directory: Path) -> dict[str, float]:
    path = directory / "fts5.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE VIRTUAL TABLE memories USING fts5(facts, user_id UNINDEXED, tokenize='porter unicode61')")

    def apply(start: int, batch: list[str]) -> None:
        with db:
            db.executemany(
                "INSERT INTO memories(rowid, facts, user_id) VALUES (?, ?, ?)",
                ((start + k, text, _user_of(start + k)) for k, text in enumerate(batch)),
            )

    rate = _timed(apply, texts)
    words = _query_words(texts)
    match = " OR ".join(f'"{word}"' for word in words) or '""'
    search = "SELECT rowid FROM memories WHERE memories MATCH ? AND user_id = ? ORDER BY rank LIMIT 5"
    search_ms = _median_ms(lambda: db.execute(search, (match, HEAVY_USER)).fetchall())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {"contexts_per_s": rate, "bytes": path.stat().st_size, "user_search_ms": search_ms}


def run(settings: IndexSettings, step: Callable[[str, float], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"command": settings.command(), "contexts": settings.contexts, "corpora": {}}
    for name in CORPORA:
        texts = list(corpus(name, settings.contexts))
        measured = {}
        for system, measure in (("mcpdb", _mcpdb), ("fts5", _fts5)):
            step(f"{name}: {system}", settings.contexts / 5000)
            directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-index-"))
            try:
                measured[system] = measure(texts, directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        measured["ratio"] = measured["mcpdb"]["contexts_per_s"] / measured["fts5"]["contexts_per_s"]
        results["corpora"][name] = measured
    return results


def rows(results: dict[str, Any]) -> list[list[str]]:
    table = []
    for name, measured in results["corpora"].items():
        mine, anchor = measured["mcpdb"], measured["fts5"]
        table.append(
            [
                name,
                f"{mine['contexts_per_s']:,.0f}",
                f"{anchor['contexts_per_s']:,.0f}",
                f"{measured['ratio']:.2f}x",
                f"{mine['bytes'] / 1e6:,.0f} / {anchor['bytes'] / 1e6:,.0f}",
                f"{mine['user_search_ms']:.2f} / {anchor['user_search_ms']:.2f}",
            ]
        )
    return table


COLUMNS = (
    "corpus",
    "mcpdb contexts/s",
    "FTS5 rows/s (anchor)",
    "ratio",
    "MB mcpdb / FTS5",
    "heavy user's search ms, mcpdb / FTS5",
)


def _draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["corpora"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for offset, system in ((-0.2, "mcpdb"), (0.2, "fts5")):
        rates = [results["corpora"][name][system]["contexts_per_s"] for name in names]
        ax.bar([i + offset for i in range(len(names))], rates, width=0.4, label=system)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("contexts indexed per second")
    ax.set_title(f"{results['contexts']:,} memories in batches of {BATCH}, in process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(results: dict[str, Any], folder: Path) -> None:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    plots.save_run(folder, results, "\n".join(lines) + f"\n\n`{results['command']}`\n", _draw, "index.png")
