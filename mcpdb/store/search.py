"""A search inside one read transaction: lexical scores, vector similarities, their fusion, the winners.

Everything a ranking reads (the lexical counters and postings, the stored vectors, the winners'
records) comes from one LMDB read transaction, so a search answers for exactly one version of the
store, as a GET does, and every replica at that version answers the same: the statistics are integers,
the vectors the bytes the log carried, the arithmetic single-threaded (``vectors.nearest``).

Modes: ``lexical`` ranks every context sharing a term with the query by BM25 (exact); ``vector`` every
context of the searched ones that has a vector, by cosine (exact), its first ``POOL`` (a whole
namespace's vectors from its matrix in memory, ``vector_matrices``, while it holds their version); ``hybrid`` fuses
the two rankings' first ``POOL`` each (``fusion.DEFAULT``), the newer context first on a tie.
Tags narrow after ranking: a hybrid or vector search with tags returns the tagged contexts among the
pools, possibly fewer than asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lmdb

from mcpdb.model import SearchMode
from mcpdb.retrieval import fusion, lexical, vectors
from mcpdb.store import postings
from mcpdb.store.vector_matrices import VectorMatrices

POOL = 100  # per ranking, what hybrid fuses (k is at most 100)
_SEP = b"\x00"


@dataclass(frozen=True)
class SearchQuery:
    """What to rank: the query's ``terms`` and ``vector`` (None: no vector could be computed) as the
    service prepared them, which contexts may answer, and how many to return."""

    terms: Sequence[str]
    vector: bytes | None
    mode: SearchMode
    kinds: Sequence[str]
    owners: Sequence[bytes] | None  # None: anyone's
    tags: Sequence[str]
    limit: int


@dataclass(frozen=True)
class SearchHits:
    """A search's best contexts, (score, context) best first; how many contexts matched a query term,
    how many the search looked among (those of the kinds and users asked for), and how many of those
    have a vector of their current version (None: not looked at, without a query vector); and which of
    the hits share a term with the query (their ids); for a search of some owners' contexts with a query
    vector, each hit's cosine and how the cosines of every candidate spread."""

    hits: list[tuple[float, dict[str, Any]]]
    matched: int
    searched: int
    embedded: int | None
    worded: frozenset[str] = frozenset()
    # Searches of some owners' contexts with a query vector (a chat's recall): each hit's cosine, by id,
    # and the mean and standard deviation of every cosine the search computed.
    cosines: dict[str, float] = field(default_factory=dict)
    spread: tuple[float, float] | None = None


def _scans(prefix: bytes, owners: Sequence[bytes] | None) -> list[bytes]:
    return [prefix] if owners is None else [prefix + owner + _SEP for owner in owners]


def counted(txn: lmdb.Transaction[bytes], meta: Any, namespace: bytes, query: SearchQuery) -> tuple[int, int]:
    """How many contexts ``query`` looks among (those of its kinds and owners the index holds) and their
    total length in terms: the index's counters, nothing ranked."""
    contexts = total_length = 0
    for owner in [lexical.ALL_OWNERS] if query.owners is None else query.owners:
        for kind in query.kinds:
            held, length = lexical.unpack_counter(txn.get(lexical.counter_key(namespace, owner, kind), db=meta))
            contexts, total_length = contexts + held, total_length + length
    return contexts, total_length


def _lexical_scores(
    txn: lmdb.Transaction[bytes],
    dbs: dict[bytes, Any],
    namespace: bytes,
    query: SearchQuery,
    contexts: int,
    length: int,
) -> dict[bytes, float]:
    average = length / contexts if contexts else 0.0
    scores: dict[bytes, float] = {}
    found = postings.matches(txn, dbs, namespace, query.terms, query.kinds, query.owners)
    for term in query.terms:
        matched = found[term]
        weight = lexical.idf(contexts, len(matched))
        for context_id, count, context_length in matched:
            scores[context_id] = scores.get(context_id, 0.0) + lexical.term_score(
                weight, count, context_length, average
            )
    return scores


def _stored_vectors(
    txn: lmdb.Transaction[bytes], dbs: dict[bytes, Any], namespace: bytes, query: SearchQuery
) -> Iterator[tuple[bytes, bytes]]:
    """(context id, vector bytes) of every searched context that has a vector, in key order, as the
    cursor reads them (never all at once: a namespace may hold millions)."""
    wanted_kinds = {kind.encode() for kind in query.kinds}
    cursor = txn.cursor(db=dbs[b"vectors"])
    for scan in _scans(namespace + _SEP, query.owners):
        if not cursor.set_range(scan):
            continue
        for key, value in cursor:
            if not key.startswith(scan):
                break
            _, kind, context_id = lexical.split_owned(key[len(namespace) + 1 :])
            if kind in wanted_kinds:
                yield context_id, value[vectors.VERSION.size :]


def run(
    txn: lmdb.Transaction[bytes],
    dbs: dict[bytes, Any],
    matrices: VectorMatrices,
    namespace: str,
    query: SearchQuery,
    record_of: Callable[[bytes], dict[str, Any] | None],
    materialise: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> SearchHits:
    """The search ``query`` in ``namespace`` at the version ``txn`` reads; ``record_of`` reads a
    context's record by id in that transaction, ``materialise`` turns one into the API's shape."""
    ns = namespace.encode()
    contexts, length = counted(txn, dbs[b"meta"], ns, query)
    scores = _lexical_scores(txn, dbs, ns, query, contexts, length) if query.mode != "vector" else {}
    lexical_ranking = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    # Without a query vector nothing is compared, so nothing is read (a hybrid search on a node
    # without a model is lexical, and must not cost a scan of every vector in scope).
    similar: list[tuple[bytes, float]] = []
    embedded = None
    spread = None
    if query.vector is not None:

        def scan() -> Iterator[tuple[bytes, bytes]]:  # now, or once to build a matrix
            return _stored_vectors(txn, dbs, ns, query)

        if query.owners is None:  # the whole namespace: from its matrix, exactly as the scan would rank
            similar, embedded = matrices.nearest(txn, dbs[b"meta"], ns, query.kinds, query.vector, scan, POOL)
        else:  # a few owners' vectors (a chat's user and nobody): fewer than building a matrix would cost
            spread = vectors.Spread()
            similar, embedded = vectors.nearest(query.vector, scan(), POOL, spread=spread)
    ranking = lexical_ranking if query.mode == "lexical" else similar
    records: dict[bytes, dict[str, Any] | None] = {}  # read once, for the fusion's recency and the answer
    if query.mode == "hybrid":
        pools = (lexical_ranking[:POOL], similar[:POOL])
        records = {key: record_of(key) for pool in pools for key, _ in pool}
        recency = {key: record["version"] for key, record in records.items() if record is not None}
        ranking = fusion.DEFAULT.fuse(*pools, recency, POOL)
    hits: list[tuple[float, dict[str, Any]]] = []
    for context_id, score in ranking:
        if len(hits) == query.limit:
            break
        record = records[context_id] if context_id in records else record_of(context_id)
        # Postings, vectors and ctx change in the same transactions; a stray one (an index another
        # analyzer built, before its rebuild) is passed over rather than answered with a 500.
        if record is not None and set(query.tags) <= set(record["fields"].get("tags", [])):
            hits.append((score, materialise(context_id.decode(), record)))
    worded = frozenset(context["id"] for _, context in hits if context["id"].encode() in scores)
    if spread is None:
        return SearchHits(hits, len(scores), contexts, embedded, worded)
    similarity = {key.decode(): score for key, score in similar}
    cosines = {context["id"]: similarity[context["id"]] for _, context in hits if context["id"] in similarity}
    return SearchHits(hits, len(scores), contexts, embedded, worded, cosines, spread.mean_std())
