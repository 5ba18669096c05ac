"""``mcpdb bench retrieval`` (issue 15): how well and how fast search chooses memories.

Quality: the generated memory benchmark (``benchmarks.memory_corpus``: users with a fact and a
distractor per topic, each topic asked in other words and directly, and records told apart by a name
or code, each asked for by it) is loaded into a ``ContextStore`` through the commands the log applies
(``Batch``, then ``SetVectors`` with the vectors the embedding model gives each text, as the leader's
embedding duty proposes them). Each question is searched among its user's memories, as a chat's gather
reads them, in each mode; recall@1, recall@5 and MRR of the memory that answers it, over all questions
and per style; beside the store's own hybrid, the other fusions (``FUSIONS``) computed from the same
two rankings. Anchors on the same corpus in the same run: SQLite FTS5's BM25 (stdlib ``sqlite3``,
``porter unicode61``, the question's words OR-ed) and exact brute-force cosine over the same stored
vectors in float32 (the ceiling a vector index could reach).

Chats (``benchmarks.recall_chats``): how often the needed memory reached a prompt the node's own gather
and assembly built, against the all-or-nothing assembly, and how much of each follow-up's prompt the
KV cache held.

Time until a write is vector-searchable (``benchmarks.freshness``): three real nodes, background write
loads in one namespace, probes in it and in another tenant's.

Latency: the same generator grown to N memories in one namespace (10 k, 100 k, 1 M), each text's
vector computed once and given to every memory with that text (a value repeats across users, and a
million distinct embeddings would take this machine hours: the vectors are real, only reused). Search
p50/p99 per mode, the query's embedding included where the mode needs one, a user's memories (as a
chat asks) and the whole namespace (its first search after a write apart); FTS5 the same way. All in
process, so neither HTTP nor Raft blurs the search's own cost (``mcpdb bench kv`` measures those).

Embedding cost per write: the model's time for one fact, as the duty embeds them.
"""

from __future__ import annotations

import functools
import itertools
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import freshness, live_chats, plots, recall_chats
from benchmarks.memory_corpus import (
    MEMORIES_PER_USER,
    STYLES,
    TOPICS,
    Memory,
    Question,
    distinct_texts,
    memories,
    questions,
    user_id,
)
from benchmarks.memory_corpus import question as question_of
from benchmarks.stats import percentile
from mcpdb.retrieval.fusion import Fusion

NAMESPACE = "bench"
BATCH = 500
MODES = ("lexical", "vector", "hybrid")
_FTS5_TABLE = "CREATE VIRTUAL TABLE memories USING fts5(id UNINDEXED, user_id UNINDEXED, facts, tokenize='porter')"
FRESHNESS_RATES = (0, 50, 500)  # background writes/s in the time-until-searchable phases
POOL = 100  # ranks looked at per question: an answer further down counts as not found
# The fusions measured beside the store's own (``fusion.DEFAULT``), from the same two rankings.
FUSIONS = (
    *(Fusion("rrf", weight) for weight in (0.5, 0.8, 0.9)),
    *(Fusion("relative", weight, 0.1) for weight in (0.7, 0.8, 0.9, 0.95)),
    Fusion("relative", 0.9),
)


@dataclass
class RetrievalSettings:
    users: int = 100  # quality corpus: MEMORIES_PER_USER memories and as many questions each
    sizes: tuple[int, ...] = (10_000, 100_000)
    queries: int = 200  # timed searches per size and mode
    chat_users: int = 10  # users per memory count in the chat comparison: MEMORIES_PER_USER questions each
    chat_filler: int = 400  # small-talk memories beside a chat user's own, in the second comparison
    out: Path | None = None
    embedding_model: str | None = None  # a GGUF file; None: the node's default (all-MiniLM-L6-v2)
    freshness_seconds: float = 30.0  # each load phase of the time-until-searchable run (0: not run)
    live_chat_users: int = 3  # users whose conversations run on a real node (0: not run)
    live_reply_tokens: int = live_chats.REPLY_TOKENS  # each reply's limit in those conversations
    live_long_exchanges: int = 40  # then one conversation this long on that node (0: none)

    def command(self) -> str:
        sizes = ",".join(str(size) for size in self.sizes)
        return (
            (
                f"mcpdb bench retrieval --users {self.users} --sizes {sizes} --queries {self.queries}"
                f" --chat-users {self.chat_users} --chat-filler {self.chat_filler}"
            )
            + (f" --freshness-seconds {self.freshness_seconds:g}" if self.freshness_seconds != 30 else "")
            + (f" --live-chat-users {self.live_chat_users}" if self.live_chat_users != 3 else "")
            + (
                f" --live-reply-tokens {self.live_reply_tokens}"
                if self.live_reply_tokens != live_chats.REPLY_TOKENS
                else ""
            )
            + (f" --live-long-exchanges {self.live_long_exchanges}" if self.live_long_exchanges != 40 else "")
            + (f" --out {self.out}" if self.out else "")
            + (f" --embedding-model {self.embedding_model}" if self.embedding_model else "")
        )

    def folder(self) -> Path:
        return plots.run_folder(self.out)

    def live_chats_s(self) -> float:
        """A node's start and models (~90 s), then ~5 s a chat and ~20 ms to embed a memory."""
        per_user = len(recall_chats.CONVERSATION) * 5 + (MEMORIES_PER_USER + self.chat_filler) * 0.02
        return 90 + self.live_chat_users * per_user + self.live_long_exchanges * 6 if self.live_chat_users else 0

    def expected_s(self) -> float:
        """Rough length of the run for the progress bar: loads at ~4,000 memories/s, ~50 ms a search."""
        chats = self.chat_users * 8 + self.chat_filler * 0.15
        live = self.live_chats_s()
        fresh = 60 + len(FRESHNESS_RATES) * (3 * self.freshness_seconds + 10) if self.freshness_seconds else 0
        per_user = self.users * MEMORIES_PER_USER / 4000
        embedding = 0.01 * min(40_000, max(self.sizes, default=0) // 25)  # distinct texts, ~10 ms each
        searches = sum(size / 4000 + self.queries * 0.3 for size in self.sizes)
        return 30 + chats + live + fresh + per_user + embedding + searches


@dataclass
class _Vectors:
    """Each distinct text's vector, computed once (the store's bytes)."""

    embedder: Any
    blobs: dict[str, bytes] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def of(self, text: str) -> bytes:
        if text not in self.blobs:
            began = time.perf_counter()
            self.blobs[text] = self.embedder.embed([text])[0]
            self.seconds.append(time.perf_counter() - began)
        return self.blobs[text]


def _fields(memory: Memory) -> dict[str, Any]:
    return {"kind": "memory", "user_id": memory.user_id, "facts": [memory.text]}


class _Corpus:
    """One store and one FTS5 database holding the same memories, vectors included."""

    def __init__(self, directory: Path, vectors: _Vectors) -> None:
        from mcpdb.store.state_machine import ContextStore

        self.store = ContextStore(str(directory / "store"))
        self.vectors = vectors
        self.index = 0
        self.fts = sqlite3.connect(directory / "fts5.db", check_same_thread=False)
        self.fts.execute("PRAGMA journal_mode=WAL")
        self.fts.execute("PRAGMA synchronous=OFF")
        self.fts.execute(_FTS5_TABLE)

    def _apply(self, command: Any) -> None:
        self.index += 1
        self.store.apply(self.index, command)
        self.store.commit()

    def load(self, items: Iterable[Memory]) -> int:
        """Write ``items`` as the log would (batches, then the vectors the duty would propose)."""
        from mcpdb.retrieval import vectors
        from mcpdb.retrieval.text import embedding_text
        from mcpdb.store.commands import Batch, BatchPut, Embedded, SetVectors

        loaded = 0
        for chunk in _chunks(iter(items), BATCH):
            self._apply(Batch(NAMESPACE, tuple(BatchPut(m.id, _fields(m), None, None) for m in chunk), 1.0))
            with self.fts:
                self.fts.executemany(
                    "INSERT INTO memories(id, user_id, facts) VALUES (?, ?, ?)",
                    ((m.id, m.user_id, m.text) for m in chunk),
                )
            while pending := self.store.pending_embeddings(BATCH):
                embedded = tuple(
                    Embedded(context_id, version, vectors.to_text(self.vectors.of(embedding_text(kind, fields))))
                    for _, context_id, version, kind, fields in pending
                )
                self._apply(SetVectors(NAMESPACE, embedded, "bench"))
            loaded += len(chunk)
        return loaded

    def scored(self, question: str, mode: str, user_id: str | None, limit: int, fresh: bool) -> list[tuple[str, float]]:
        """(id, score) of what a search returns, best first. The query is embedded as the service does,
        each time when ``fresh`` (a timed search pays for it), else once per distinct question."""
        from mcpdb.service import search_query

        vector = None
        if mode != "lexical":
            vector = self.vectors.embedder.embed([question])[0] if fresh else self.vectors.of(question)
        asked = search_query(question, vector, mode, "memory", user_id, [], limit)  # type: ignore[arg-type]
        return [(context["id"], score) for score, context in self.store.search(NAMESPACE, asked).hits]

    def rank(self, question: str, mode: str, user_id: str | None, limit: int, fresh: bool) -> list[str]:
        return [context_id for context_id, _ in self.scored(question, mode, user_id, limit, fresh)]

    def fused_rank(self, fusion: Fusion, question: str, user_id: str) -> list[str]:
        """The hybrid ranking ``fusion`` would give, from the lexical and vector searches' own scores."""
        lexical, similar = (
            [(key.encode(), score) for key, score in self.scored(question, mode, user_id, POOL, fresh=False)]
            for mode in ("lexical", "vector")
        )
        return [key.decode() for key, _ in fusion.fuse(lexical, similar, {}, POOL)]

    def fts_rank(self, question: str, user_id: str | None, limit: int = POOL) -> list[str]:
        from mcpdb.retrieval.lexical import words as split_words

        words = " OR ".join(f'"{word}"' for word in split_words(question))
        if not words:
            return []
        where = "memories MATCH ?" + (" AND user_id = ?" if user_id is not None else "")
        arguments: tuple[Any, ...] = (words, user_id) if user_id is not None else (words,)
        rows = self.fts.execute(
            f"SELECT id FROM memories WHERE {where} ORDER BY bm25(memories) LIMIT {limit}", arguments
        )
        return [row[0] for row in rows]

    def brute_rank(self, question: str, held: list[Memory]) -> list[str]:
        """Exact cosine in float32 over the same vectors, of the memories ``held``: the ceiling."""
        import numpy as np

        query = np.frombuffer(self.vectors.of(question), dtype="<f2").astype(np.float32)
        matrix = np.stack([np.frombuffer(self.vectors.of(m.text), dtype="<f2").astype(np.float32) for m in held])
        return [held[i].id for i in np.argsort(-(matrix @ query), kind="stable")]

    def close(self) -> None:
        self.fts.close()
        self.store.close()


def _chunks(items: Iterator[Memory], size: int) -> Iterator[list[Memory]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _quality(ranks: list[int | None]) -> dict[str, float]:
    """recall@1, recall@5 and MRR from each question's 1-based answer rank (None: not in the pool)."""
    count = len(ranks)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / count,
        "recall@5": sum(1 for r in ranks if r is not None and r <= 5) / count,
        "mrr": sum(1 / r for r in ranks if r is not None) / count,
    }


def _qualities(asked: list[Question], ranks: list[int | None]) -> dict[str, dict[str, float]]:
    """Quality over every question ("all") and over each style's."""
    found = {"all": _quality(ranks)}
    for style in STYLES:
        found[style] = _quality([rank for q, rank in zip(asked, ranks, strict=True) if q.style == style])
    return found


def _rank_of(answer: str, ranked: list[str]) -> int | None:
    return ranked.index(answer) + 1 if answer in ranked else None


def measure_quality(corpus: _Corpus, users: int) -> dict[str, dict[str, dict[str, float]]]:
    held: dict[str, list[Memory]] = {}
    for memory in memories(users):
        held.setdefault(memory.user_id, []).append(memory)
    systems: dict[str, Callable[[Question], list[str]]] = {
        mode: _ranking(corpus, mode, POOL, fresh=False) for mode in MODES
    }
    systems["fts5 (anchor)"] = lambda q: corpus.fts_rank(q.text, q.user_id)
    systems["brute-force cosine (ceiling)"] = lambda q: corpus.brute_rank(q.text, held[q.user_id])
    for candidate in FUSIONS:
        systems[f"hybrid by {candidate.name}"] = functools.partial(_fused, corpus, candidate)
    asked = list(questions(users))
    return {name: _qualities(asked, [_rank_of(q.answer_id, rank(q)) for q in asked]) for name, rank in systems.items()}


def _fused(corpus: _Corpus, candidate: Fusion, asked: Question) -> list[str]:
    return corpus.fused_rank(candidate, asked.text, asked.user_id)


def _ranking(corpus: _Corpus, mode: str, limit: int, fresh: bool) -> Callable[[Question], list[str]]:
    """A question's ranking in ``mode`` among its user's memories."""
    return lambda asked: corpus.rank(asked.text, mode, asked.user_id, limit, fresh)


def _ranking_of_namespace(corpus: _Corpus, mode: str) -> Callable[[Question], list[str]]:
    """A question's ranking in ``mode`` among every memory of the namespace, its query embedded each time."""
    return lambda asked: corpus.rank(asked.text, mode, None, 5, fresh=True)


def _timed(search: Callable[[Question], object], asked: list[Question]) -> dict[str, float]:
    spent = []
    for question in asked:
        began = time.perf_counter()
        search(question)
        spent.append((time.perf_counter() - began) * 1000)
    return {"p50_ms": percentile(spent, 0.5) or 0.0, "p99_ms": percentile(spent, 0.99) or 0.0}


def measure_latency(corpus: _Corpus, users: int, queries: int) -> dict[str, dict[str, float]]:
    rng = random.Random(users)
    asked = [question_of(rng.randrange(users), rng.randrange(len(TOPICS))) for _ in range(queries)]
    found: dict[str, dict[str, float]] = {}
    for mode in MODES:
        found[f"{mode}, one user"] = _timed(_ranking(corpus, mode, 5, fresh=True), asked)
    found["fts5, one user (anchor)"] = _timed(lambda q: corpus.fts_rank(q.text, q.user_id, 5), asked)
    found["lexical, whole namespace"] = _timed(_ranking_of_namespace(corpus, "lexical"), asked)
    found["fts5, whole namespace (anchor)"] = _timed(lambda q: corpus.fts_rank(q.text, None, 5), asked)
    # Every vector in the namespace: the first search after a write builds the namespace's matrix (or
    # scans, if it is beyond the store's bound), the others use it. Fewer of them: a scan takes seconds.
    whole = _ranking_of_namespace(corpus, "hybrid")
    found["hybrid, whole namespace, first after a write"] = _timed(whole, asked[:1])
    found["hybrid, whole namespace"] = _timed(whole, asked[1 : 1 + max(3, queries // 10)])
    return found


def measure_chats(vectors: _Vectors, users: int, extra: int) -> dict[str, Any]:
    """``recall_chats`` over ``users`` users holding their own memories and ``extra`` of small talk."""
    from mcpdb.inference.llama_worker import default_model_path
    from mcpdb.store.commands import Put

    directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-retrieval-"))
    try:
        corpus = _Corpus(directory, vectors)
        corpus._apply(Put(NAMESPACE, "assistant", recall_chats.INSTRUCTION, None, None, 1.0))
        corpus._apply(Put(NAMESPACE, "rules", recall_chats.GUARDRAIL, None, None, 1.0))
        for number in range(users):
            corpus._apply(Put(NAMESPACE, user_id(number), recall_chats.profile(user_id(number)), None, None, 1.0))
        held = recall_chats.held_by(users, extra)
        corpus.load(held)
        chats = recall_chats.Chats(corpus.store, NAMESPACE, default_model_path(), vectors.of)
        try:
            found: dict[str, Any] = chats.reached(users, held)
            found["cached_share"] = {kind: recall_chats.summary(s) for kind, s in chats.cached_shares(users).items()}
        finally:
            chats.close()
        corpus.close()
        return found
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_told_earlier(users: int) -> dict[str, Any]:
    """``recall_chats.Chats.told_earlier``: facts told in a conversation that outgrew the window."""
    from mcpdb.inference.llama_worker import default_model_path
    from mcpdb.store.commands import Put
    from mcpdb.store.state_machine import ContextStore

    directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-retrieval-"))
    try:
        store = ContextStore(str(directory / "store"))
        for index, (context_id, context) in enumerate(
            (("assistant", recall_chats.INSTRUCTION), ("rules", recall_chats.GUARDRAIL)), start=1
        ):
            store.apply(index, Put(NAMESPACE, context_id, context, None, None, 1.0))
        store.commit()
        chats = recall_chats.Chats(store, NAMESPACE, default_model_path(), lambda _text: None)
        try:
            return chats.told_earlier(users, recall_chats.TOLD_SMALL_TALK)
        finally:
            chats.close()
            store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_freshness(settings: RetrievalSettings) -> dict[str, Any]:
    """``benchmarks.freshness`` on a fresh 3-node cluster with this run's embedding model."""
    directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-freshness-"))
    extra = ["--embedding-model", settings.embedding_model] if settings.embedding_model else []
    cluster = freshness.start_cluster(directory, extra)
    try:
        return freshness.measure(cluster, FRESHNESS_RATES, settings.freshness_seconds)
    finally:
        cluster.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


def _embedder(path: str | None) -> Any:
    from mcpdb.retrieval.embedding import Embedder
    from mcpdb.retrieval.minilm import default_embedding_model_path

    return Embedder(path or default_embedding_model_path())


def run(settings: RetrievalSettings, step: Callable[[str, float], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"command": settings.command(), "users": settings.users, "sizes": {}, "chats": {}}
    step("loading the embedding model", 5)
    vectors = _Vectors(_embedder(settings.embedding_model))
    step("embedding the corpus's texts", 20)
    for text in distinct_texts(settings.users):
        vectors.of(text)
    results["embedding_ms_per_fact"] = {
        "p50": percentile([s * 1000 for s in vectors.seconds], 0.5),
        "p99": percentile([s * 1000 for s in vectors.seconds], 0.99),
    }
    directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-retrieval-"))
    try:
        corpus = _Corpus(directory, vectors)
        step(f"quality: {settings.users * MEMORIES_PER_USER:,} memories", settings.users * MEMORIES_PER_USER / 4000)
        corpus.load(memories(settings.users))
        results["quality"] = measure_quality(corpus, settings.users)
        corpus.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for extra in (0, settings.chat_filler):
        held = MEMORIES_PER_USER + extra
        step(f"chats: {settings.chat_users} users with {held} memories each", settings.chat_users * 4)
        results["chats"][str(held)] = measure_chats(vectors, settings.chat_users, extra)
    step(f"chats: {settings.chat_users} users' facts told in turns that left the window", settings.chat_users * 40)
    results["told_earlier"] = measure_told_earlier(settings.chat_users)
    if settings.live_chat_users:
        held = MEMORIES_PER_USER + settings.chat_filler
        step(f"chats on a real node: {settings.live_chat_users} users, {held} memories each", settings.live_chats_s())
        results["live_chats"] = {
            str(held): live_chats.measure(
                settings.live_chat_users,
                settings.chat_filler,
                settings.live_reply_tokens,
                settings.live_long_exchanges,
            )
        }
    if settings.freshness_seconds:
        step("time until a write is vector-searchable: a 3-node cluster", 60)
        results["freshness"] = measure_freshness(settings)
    for size in settings.sizes:
        users = max(1, size // MEMORIES_PER_USER)
        directory = Path(tempfile.mkdtemp(prefix="mcpdb-bench-retrieval-"))
        try:
            corpus = _Corpus(directory, vectors)
            step(f"{size:,} memories: loading", size / 4000)
            began = time.perf_counter()
            loaded = corpus.load(itertools.islice(memories(users), size))
            load_s = time.perf_counter() - began
            step(f"{size:,} memories: searching", settings.queries * 0.3)
            results["sizes"][str(size)] = {
                "memories": loaded,
                "load_per_s": loaded / load_s,
                "latency": measure_latency(corpus, users, settings.queries),
            }
            corpus.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return results


QUALITY_COLUMNS = ("ranking", "recall@1", "recall@5", "MRR", *(f"recall@5 {style}" for style in STYLES))
LATENCY_COLUMNS = ("memories", "search", "p50 ms", "p99 ms", "p99 / FTS5's")


def quality_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [name, *(f"{q['all'][metric]:.3f}" for metric in ("recall@1", "recall@5", "mrr"))]
        + [f"{q[style]['recall@5']:.3f}" for style in STYLES]
        for name, q in results["quality"].items()
    ]


def latency_rows(results: dict[str, Any]) -> list[list[str]]:
    table = []
    for size, measured in results["sizes"].items():
        latency = measured["latency"]
        for name, figures in latency.items():
            anchor = latency["fts5, whole namespace (anchor)" if "namespace" in name else "fts5, one user (anchor)"]
            ratio = figures["p99_ms"] / anchor["p99_ms"] if anchor["p99_ms"] else float("nan")
            table.append(
                [f"{int(size):,}", name, f"{figures['p50_ms']:.2f}", f"{figures['p99_ms']:.2f}", f"{ratio:.2f}x"]
            )
    return table


def _draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, latency) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [name for name in results["quality"] if not name.startswith("hybrid by")]  # the variants: the table
    for offset, metric in ((-0.27, "recall@1"), (0, "recall@5"), (0.27, "mrr")):
        quality.bar(
            [i + offset for i in range(len(names))],
            [results["quality"][name]["all"][metric] for name in names],
            width=0.27,
            label=metric,
        )
    quality.set_xticks(range(len(names)), [name.replace(" (", "\n(") for name in names], fontsize=7)
    quality.set_ylim(0, 1.1)
    quality.set_title(f"{results['users']} users' memories, paraphrased, direct and named questions")
    quality.legend()
    sizes = [int(size) for size in results["sizes"]]
    if sizes:
        for name in results["sizes"][str(sizes[0])]["latency"]:
            latency.plot(
                sizes, [results["sizes"][str(s)]["latency"][name]["p99_ms"] for s in sizes], marker="o", label=name
            )
        latency.set_xscale("log")
        latency.set_yscale("log")
        latency.set_xlabel("memories in the namespace")
        latency.set_ylabel("p99 ms (query embedding included)")
        latency.set_title("search latency, in process")
        latency.legend(fontsize=7)
    plots.finish(fig, path, results["command"])


CHAT_COLUMNS = (
    "memories per user",
    "fact reached the prompt: recall",
    "all-or-nothing",
    "prompt tokens: recall",
    "all-or-nothing",
    "cached share, follow-ups: mean",
    "min",
    "over 90%",
    "uncached tokens",
    "recalled anew",
    "new subject: mean",
)


def chat_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [
            held,
            f"{c['reached_recall']:.3f}",
            f"{c['reached_all_or_nothing']:.3f}",
            f"{c['prompt_tokens_recall']:.0f}",
            f"{c['prompt_tokens_all_or_nothing']:.0f}",
            f"{c['cached_share']['follow_up']['mean']:.3f}",
            f"{c['cached_share']['follow_up']['min']:.3f}",
            f"{c['cached_share']['follow_up']['over_90']:.2f}",
            f"{c['cached_share']['uncached']['mean']:.1f}",
            f"{c['cached_share']['recalled_anew']['mean']:.2f}",
            f"{c['cached_share']['new_subject']['mean']:.3f}",
        ]
        for held, c in results["chats"].items()
    ]


TOLD_COLUMNS = (
    "question",
    "asked",
    "its fact's turn out of the window",
    "fact reached the prompt: turns kept only",
    "with turn recall",
)


def told_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [
            style,
            str(t["asked"]),
            f"{t['out_of_window']:.3f}",
            f"{t['reached_without']:.3f}",
            f"{t['reached_with_turn_recall']:.3f}",
        ]
        for style, t in results.get("told_earlier", {}).items()
    ]


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def save(results: dict[str, Any], folder: Path) -> None:
    lines = _table(QUALITY_COLUMNS, quality_rows(results))
    lines += ["", *_table(CHAT_COLUMNS, chat_rows(results))]
    lines += ["", *_table(TOLD_COLUMNS, told_rows(results))]
    lines += ["", *_table(LATENCY_COLUMNS, latency_rows(results))]
    if "live_chats" in results:
        lines += ["", *_table(live_chats.COLUMNS, live_chats.rows(results["live_chats"]))]
        lines += ["", *_table(live_chats.LONG_COLUMNS, live_chats.long_rows(results["live_chats"]))]
    if "freshness" in results:
        lines += ["", *_table(freshness.COLUMNS, freshness.rows(results["freshness"]))]
    embedding = results["embedding_ms_per_fact"]
    lines += ["", f"embedding one fact: p50 {embedding['p50']:.0f} ms, p99 {embedding['p99']:.0f} ms"]
    plots.save_run(folder, results, "\n".join(lines) + f"\n\n`{results['command']}`\n", _draw, "retrieval.png")
