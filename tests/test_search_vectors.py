"""Vectors for search (issue 15), without a model: what the log carries, what the store keeps, how it ranks.

- ``set_vectors`` round-trips and is written as format version 2 (every other command stays at 1).
- A write queues its version for the embedder (``to_embed``); a vector is stored only for the version it
  was computed for, dropped by the next version or a delete; a rebuild of the indexes requeues exactly
  the contexts whose current version has no vector, and keeps the vectors.
- Vector search is exact cosine, scored a block at a time and ranked as one product over every candidate
  would rank; a whole namespace's vectors kept as a matrix rank exactly as the scan does, through any
  history of writes, deletes, vectors and model changes (the matrix is used only at its version); hybrid
  fuses the lexical and vector rankings (``fusion.DEFAULT``), the newer context first on a tie; both are
  read in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.model import SEARCHABLE_KINDS
from mcpdb.retrieval import fusion, lexical, vectors
from mcpdb.store.commands import COMMAND_VERSION, WRITTEN_VERSION, Delete, Embedded, Put, SetVectors, decode, encode
from mcpdb.store.search import SearchQuery
from mcpdb.store.state_machine import _INDEX_FORMAT, ContextStore
from tests.store_helpers import AppliedLog

DIMENSIONS = 8


def _unit(*weights: float) -> bytes:
    return vectors.pack(list(weights) + [0.0] * (DIMENSIONS - len(weights)))


def _memory(fact: str, user: str | None = None) -> dict[str, Any]:
    return {"kind": "memory", "facts": [fact], "user_id": user, "tags": [], "data": {}}


def _vectors_of(log: AppliedLog, items: dict[str, bytes]) -> None:
    """Store ``items`` (id -> vector) for the contexts' current versions, as the embedder would."""
    embedded = tuple(
        Embedded(context_id, log.store.get("app", context_id)["version"], vectors.to_text(blob))  # type: ignore[index]
        for context_id, blob in items.items()
    )
    log.apply(SetVectors("app", embedded, "test-model"))


def _query(mode: str, terms: list[str], vector: bytes | None, limit: int = 5) -> SearchQuery:
    return SearchQuery(terms, vector, mode, SEARCHABLE_KINDS, None, [], limit)  # type: ignore[arg-type]


def test_set_vectors_round_trips_as_format_2_and_other_commands_stay_at_1() -> None:
    command = SetVectors("app", (Embedded("m1", 7, vectors.to_text(_unit(1.0))),), "gemma")
    payload = encode(command)
    assert orjson.loads(payload)["v"] == COMMAND_VERSION == 2
    assert decode(payload) == command
    assert orjson.loads(encode(Delete("app", "m1", None)))["v"] == WRITTEN_VERSION == 1


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=64))
def test_a_packed_vector_is_unit_length_float16(values: list[float]) -> None:
    blob = vectors.pack(values)
    array = np.frombuffer(blob, dtype=vectors.DTYPE).astype(np.float64)
    assert len(blob) == 2 * len(values)
    norm = float(np.linalg.norm(array))
    assert norm == 0.0 or abs(norm - 1.0) < 1e-2


@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=0, max_size=40),
    st.integers(1, 7),
    st.integers(1, 12),
)
def test_nearest_in_blocks_ranks_as_one_product_over_every_candidate(
    drawn: list[tuple[int, bool]], block: int, limit: int
) -> None:
    """Few distinct vectors (ties), some of another length (another model's): any block size gives the
    reference's ranking, by score then candidate order, and counts every candidate."""
    basis = [_unit(1.0), _unit(0.6, 0.8), _unit(0.0, 1.0), _unit(-1.0)]
    candidates = [
        (f"c{i:02d}".encode(), basis[which] if same_length else basis[which] * 2)
        for i, (which, same_length) in enumerate(drawn)
    ]
    query = _unit(0.8, 0.6)
    usable = [(key, blob) for key, blob in candidates if len(blob) == len(query)]
    wanted = np.frombuffer(query, dtype=vectors.DTYPE).astype(np.float32)
    scores = [float(np.frombuffer(blob, dtype=vectors.DTYPE).astype(np.float32) @ wanted) for _, blob in usable]
    reference = sorted(range(len(usable)), key=lambda i: (-scores[i], i))[:limit]
    original, vectors.BLOCK = vectors.BLOCK, block
    try:
        ranking, seen = vectors.nearest(query, iter(candidates), limit)
    finally:
        vectors.BLOCK = original
    assert [key for key, _ in ranking] == [usable[i][0] for i in reference]
    assert [score for _, score in ranking] == pytest.approx([scores[i] for i in reference], abs=1e-6)
    assert seen == len(candidates)


def test_vectors_follow_the_version_they_were_computed_for(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    log.apply(Put("app", "m1", _memory("green tea"), None, None, 1.0))
    log.apply(Put("app", "m2", _memory("black coffee"), None, None, 1.0))
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m1", "m2"]
    stale = log.store.get("app", "m1")["version"]  # type: ignore[index]
    log.apply(Put("app", "m1", _memory("green tea, no sugar"), None, None, 2.0))
    old_text = (Embedded("m1", stale, vectors.to_text(_unit(1.0))),)
    log.apply(SetVectors("app", old_text, "test-model"))
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m1", "m2"]
    _vectors_of(log, {"m1": _unit(1.0), "m2": _unit(0.0, 1.0)})
    assert log.store.pending_embeddings(10) == []
    found = log.store.search("app", _query("vector", [], _unit(1.0, 0.1)))
    assert [context["id"] for _, context in found.hits] == ["m1", "m2"] and found.embedded == 2
    log.apply(Put("app", "m2", _memory("espresso"), None, None, 3.0))  # a new version: its vector is gone
    found = log.store.search("app", _query("vector", [], _unit(1.0, 0.1)))
    assert [context["id"] for _, context in found.hits] == ["m1"] and found.searched == 2 and found.embedded == 1
    log.apply(Delete("app", "m1", None))
    assert log.store.search("app", _query("vector", [], _unit(1.0))).hits == []
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m2"]
    log.store.close()


def test_vectors_of_another_model_replace_the_old_ones_rather_than_mix_with_them(tmp_path: Path) -> None:
    """The first vector of a new model drops every stored one and queues its context again: a query of
    one model compared with another's vectors would rank by noise. The store says whose vectors it holds."""
    log = AppliedLog(str(tmp_path / "store"))
    for context_id in ("m1", "m2"):
        log.apply(Put("app", context_id, _memory(f"fact {context_id}"), None, None, 1.0))
    log.apply(Put("other", "m3", _memory("fact m3"), None, None, 1.0))
    assert log.store.embedding_model() is None
    _vectors_of(log, {"m1": _unit(1.0), "m2": _unit(0.0, 1.0)})
    version = log.store.get("other", "m3")["version"]  # type: ignore[index]
    log.apply(SetVectors("other", (Embedded("m3", version, vectors.to_text(_unit(1.0))),), "test-model"))
    assert log.store.embedding_model() == "test-model" and log.store.pending_embeddings(10) == []
    m1 = log.store.get("app", "m1")["version"]  # type: ignore[index]
    log.apply(SetVectors("app", (Embedded("m1", m1, vectors.to_text(_unit(1.0))),), "new-model"))
    assert log.store.embedding_model() == "new-model"
    assert [(item[0], item[1]) for item in log.store.pending_embeddings(10)] == [("app", "m2")]
    assert [(item[0], item[1]) for item in log.store.pending_embeddings(10, "app")] == [("other", "m3")]
    found = log.store.search("app", _query("vector", [], _unit(1.0)))
    assert [context["id"] for _, context in found.hits] == ["m1"] and found.embedded == 1
    log.store.close()


def test_namespaces_take_turns_in_the_embedders_queue(tmp_path: Path) -> None:
    """A batch is one namespace's, the next after the one served last: a tenant's import of thousands
    of memories delays another tenant's new memory by one batch, not by the import."""
    log = AppliedLog(str(tmp_path / "store"))
    for i in range(5):
        log.apply(Put("bulk", f"m{i}", _memory(f"imported fact {i}"), None, None, 1.0))
    log.apply(Put("bulk-2", "m0", _memory("one fact"), None, None, 1.0))
    log.apply(Put("small", "m0", _memory("a new fact"), None, None, 1.0))
    served = [
        [(ns, context_id) for ns, context_id, *_ in log.store.pending_embeddings(3, after)]
        for after in ("", "bulk", "bulk-2", "small")
    ]
    assert served == [
        [("bulk", "m0"), ("bulk", "m1"), ("bulk", "m2")],
        [("bulk-2", "m0")],  # "bulk-2" sorts after "bulk": a prefix is not the same namespace
        [("small", "m0")],
        [("bulk", "m0"), ("bulk", "m1"), ("bulk", "m2")],  # after the last, around to the first
    ]
    assert log.store.pending_embeddings(3, "zzz")[0][0] == "bulk"
    log.store.close()


def test_a_rebuild_requeues_what_has_no_vector_and_keeps_the_vectors(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    for context_id in ("m1", "m2", "m3"):
        log.apply(Put("app", context_id, _memory(f"fact {context_id}"), None, None, 1.0))
    _vectors_of(log, {"m1": _unit(1.0), "m3": _unit(0.0, 1.0)})
    before = log.store.search("app", _query("vector", [], _unit(1.0)))
    generation = log.store._generation
    with generation.env.begin(write=True) as txn:  # as a store of another index format: rebuilt on open
        txn.delete(_INDEX_FORMAT, db=generation.dbs[b"meta"])
    log.store.close()
    reopened = ContextStore(str(tmp_path / "store"))
    assert [item[1] for item in reopened.pending_embeddings(10)] == ["m2"]
    assert reopened.search("app", _query("vector", [], _unit(1.0))) == before
    reopened.close()


def test_hybrid_fuses_both_rankings_as_the_default_fusion_does(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    log.apply(Put("app", "words", _memory("tea tea tea"), None, None, 1.0))  # best lexically, far in meaning
    log.apply(Put("app", "meaning", _memory("a hot drink from leaves"), None, None, 1.0))  # no shared word
    log.apply(Put("app", "both", _memory("tea, a hot drink"), None, None, 1.0))  # second lexically, first in meaning
    _vectors_of(log, {"words": _unit(0.0, 1.0), "meaning": _unit(1.0, 0.5), "both": _unit(1.0)})
    terms = lexical.query_terms("tea")
    lexical_only = log.store.search("app", _query("lexical", terms, None))
    assert [c["id"] for _, c in lexical_only.hits] == ["words", "both"]
    vector_only = log.store.search("app", _query("vector", terms, _unit(1.0)))
    assert [c["id"] for _, c in vector_only.hits] == ["both", "meaning", "words"]
    hybrid = log.store.search("app", _query("hybrid", terms, _unit(1.0)))
    # Scaled 0..1 per list: both 0 lexically (the worse of two) and 1 by meaning, meaning 0.894 by
    # meaning alone, words 1 lexically and 0 by meaning: 0.8, 0.715, 0.2 with the vector weighted 0.8.
    assert [c["id"] for _, c in hybrid.hits] == ["both", "meaning", "words"]
    scored = [[(c["id"].encode(), score) for score, c in found.hits] for found in (lexical_only, vector_only)]
    assert [score for score, _ in hybrid.hits] == [score for _, score in fusion.DEFAULT.fuse(*scored, {}, 5)]
    log.store.close()


def test_reciprocal_rank_fusion_counts_ranks_and_relative_fusion_counts_leads() -> None:
    # The fact shares no word with the question; the distractor is first by words, third by meaning.
    words = [(b"distractor", 9.0), (b"other", 1.0)]
    meaning = [(b"fact", 0.90), (b"other", 0.55), (b"distractor", 0.40), (b"far", 0.10)]
    rrf = fusion.Fusion("rrf", 0.5).fuse(words, meaning, {}, 5)
    assert rrf[0] == (b"distractor", 0.5 / (fusion.RRF_K + 1) + 0.5 / (fusion.RRF_K + 3))
    assert [key for key, _ in rrf] == [b"distractor", b"other", b"fact", b"far"]
    relative = fusion.Fusion("relative", 0.8).fuse(words, meaning, {}, 5)
    assert [key for key, _ in relative] == [b"fact", b"distractor", b"other", b"far"]
    assert relative[0][1] == 0.8 * 1.0
    assert relative[1][1] == 0.2 * 1.0 + 0.8 * ((0.40 - 0.10) / (0.90 - 0.10))


def test_a_flat_vector_ranking_does_not_outweigh_the_only_exact_word_match() -> None:
    """The outside probe's case: a hundred unrelated memories within 0.02 of cosine, one memory holding
    the query's word and absent from the vector pool."""
    words = [(b"peanuts", 3.1)]
    meaning = [(f"bulk{i:03d}".encode(), 0.72 - i * 0.0002) for i in range(100)]
    assert [key for key, _ in fusion.Fusion("relative", 0.8).fuse(words, meaning, {}, 100)].index(b"peanuts") > 40
    fused = fusion.DEFAULT.fuse(words, meaning, {}, 5)
    assert fused[0] == (b"peanuts", pytest.approx(0.2))
    assert fused[1][1] == pytest.approx(0.8 * 0.0198 / 0.1)  # the floor, not the spread, scales the vectors


def test_equal_fused_scores_go_to_the_newer_context_then_to_id_order() -> None:
    for method in ("rrf", "relative"):
        tied = fusion.Fusion(method, 0.5).fuse([(b"old", 1.0)], [(b"new", 1.0)], {b"old": 1, b"new": 2}, 5)  # type: ignore[arg-type]
        assert [key for key, _ in tied] == [b"new", b"old"]
        unknown = fusion.Fusion(method, 0.5).fuse([(b"b", 1.0)], [(b"a", 1.0)], {}, 5)  # type: ignore[arg-type]
        assert [key for key, _ in unknown] == [b"a", b"b"]


def test_a_write_that_keeps_the_text_keeps_the_vector_and_a_bad_vector_leaves_the_queue(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    log.apply(Put("app", "m1", _memory("green tea"), None, None, 1.0))
    log.apply(Put("app", "m2", _memory("black coffee"), None, None, 1.0))
    _vectors_of(log, {"m1": _unit(1.0)})
    log.apply(Put("app", "m1", {**_memory("green tea"), "data": {"seen": 2}}, None, None, 2.0))  # data only
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m2"]
    found = log.store.search("app", _query("vector", [], _unit(1.0)))
    assert [(c["id"], c["data"]) for _, c in found.hits] == [("m1", {"seen": 2})]
    log.apply(Put("app", "m1", _memory("green tea", user="u1"), None, None, 3.0))  # another owner: re-embedded
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m1", "m2"]
    version = log.store.get("app", "m2")["version"]  # type: ignore[index]
    log.apply(SetVectors("app", (Embedded("m2", version, "not base64!"),), "test-model"))  # never a vector: dequeued
    assert [item[1] for item in log.store.pending_embeddings(10)] == ["m1"]
    log.store.close()


def test_a_rebuild_drops_vectors_a_release_without_them_left_behind(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    log.apply(Put("app", "m1", _memory("green tea"), None, None, 1.0))
    log.apply(Put("app", "m2", _memory("black coffee"), None, None, 1.0))
    _vectors_of(log, {"m1": _unit(1.0), "m2": _unit(0.0, 1.0)})
    generation = log.store._generation
    dbs = generation.dbs
    with generation.env.begin(write=True) as txn:  # an older release deletes m1 and rewrites m2, ctx alone
        txn.delete(b"app\x00m1", db=dbs[b"ctx"])
        record = orjson.loads(txn.get(b"app\x00m2", db=dbs[b"ctx"]))
        record["version"] += 100
        record["fields"]["facts"] = ["espresso"]
        txn.put(b"app\x00m2", orjson.dumps(record), db=dbs[b"ctx"])
        txn.delete(_INDEX_FORMAT, db=dbs[b"meta"])
    log.store.close()
    reopened = ContextStore(str(tmp_path / "store"))
    assert reopened.search("app", _query("vector", [], _unit(1.0))).hits == []  # no 500, no stale ranking
    assert [item[1] for item in reopened.pending_embeddings(10)] == ["m2"]
    reopened.close()


@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=0, max_size=40),
    st.integers(1, 12),
    st.binary(min_size=2 * DIMENSIONS, max_size=2 * DIMENSIONS),
)
def test_a_matrix_of_the_rows_ranks_as_the_block_scan(drawn: list[tuple[int, bool]], limit: int, odd: bytes) -> None:
    """The same candidates (ties, another length, and any float16 bits: NaN and infinity included) ranked
    from a matrix of the usable rows give what the block scan gives."""
    basis = [_unit(1.0), _unit(0.6, 0.8), odd, _unit(-1.0)]
    candidates = [
        (f"c{i:02d}".encode(), basis[which] if same_length else basis[which] * 2)
        for i, (which, same_length) in enumerate(drawn)
    ]
    query = _unit(0.8, 0.6)
    usable = [(key, blob) for key, blob in candidates if len(blob) == len(query)]
    rows = vectors.as_matrix([blob for _, blob in usable]) if usable else np.empty((0, DIMENSIONS), np.float32)
    scanned, _ = vectors.nearest(query, iter(candidates), limit)
    from_rows = vectors.nearest_rows(query, [key for key, _ in usable], rows, limit)
    assert [key for key, _ in from_rows] == [key for key, _ in scanned]
    assert np.array_equal([score for _, score in from_rows], [score for _, score in scanned], equal_nan=True)


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.sampled_from(["tea", "coffee", "chess"]), st.integers(0, 2)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
        st.tuples(st.just("embed"), st.lists(st.integers(0, 5), max_size=4), st.sampled_from(["m1"] * 5 + ["m2"])),
        st.tuples(st.just("search"), st.integers(0, 3)),
    ),
    min_size=4,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=_STEPS)
def test_whole_namespace_searches_from_the_matrix_answer_as_the_scan_through_any_history(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[Any, ...]]
) -> None:
    """Two stores apply the same log, one keeping whole-namespace matrices, one scanning every time; after
    every step a vector and a hybrid search of the whole namespace (and of one user) answer alike, twice
    (the second from the matrix the first kept)."""
    directory = tmp_path_factory.mktemp("matrices")
    cached, scanned = (
        AppliedLog(str(directory / "cached")),
        AppliedLog(str(directory / "scanned"), vector_cache_bytes=0),
    )
    basis = [_unit(1.0), _unit(0.6, 0.8), _unit(0.0, 1.0), _unit(-1.0)]
    for step in steps:
        if step[0] == "put":
            _, number, fact, user = step
            command: Any = Put("app", f"m{number}", _memory(fact, [None, "u1", "u2"][user]), None, None, 1.0)
        elif step[0] == "delete":
            command = Delete("app", f"m{step[1]}", None)
        elif step[0] == "embed":
            held = [(f"m{n}", cached.store.get("app", f"m{n}")) for n in step[1]]
            items = tuple(
                Embedded(context_id, record["version"], vectors.to_text(basis[int(context_id[1:]) % 4]))
                for context_id, record in held
                if record is not None
            )
            command = SetVectors("app", items, step[2])
        else:
            query = basis[step[1]]
            for owners in (None, ContextStore.owners_of(["u1", None])):
                for mode in ("vector", "hybrid"):
                    asked = SearchQuery(["tea"], query, mode, SEARCHABLE_KINDS, owners, [], 10)  # type: ignore[arg-type]
                    answer = scanned.store.search("app", asked)
                    assert cached.store.search("app", asked) == answer
                    assert cached.store.search("app", asked) == answer
            continue
        cached.apply(command)
        scanned.apply(command)
    cached.store.close()
    scanned.store.close()


def test_a_whole_namespace_matrix_is_rebuilt_after_any_change_to_the_namespaces_vectors(tmp_path: Path) -> None:
    """New vectors, a vector a rewrite dropped, and a new model (which drops every namespace's vectors)
    each make the next search rebuild."""
    cached, scanned = AppliedLog(str(tmp_path / "cached")), AppliedLog(str(tmp_path / "scanned"), vector_cache_bytes=0)
    asked = SearchQuery(["tea"], _unit(1.0), "vector", SEARCHABLE_KINDS, None, [], 10)  # type: ignore[arg-type]

    def both(command: Any, namespace: str = "app") -> list[str]:
        for log in (cached, scanned):
            log.apply(command)
        answer = scanned.store.search(namespace, asked)
        assert cached.store.search(namespace, asked) == answer  # a scan, keeping the rows as a matrix
        assert cached.store.search(namespace, asked) == answer  # from the matrix
        return [context["id"] for _, context in answer.hits]

    both(Put("elsewhere", "e1", _memory("tea"), None, None, 1.0), "elsewhere")
    embedded = SetVectors("elsewhere", (Embedded("e1", 1, vectors.to_text(_unit(1.0))),), "model")
    assert both(embedded, "elsewhere") == ["e1"]

    both(Put("app", "m1", _memory("tea"), None, None, 1.0))
    assert both(SetVectors("app", (Embedded("m1", 3, vectors.to_text(_unit(1.0))),), "model")) == ["m1"]
    assert cached.store._generation.matrices.nbytes > 0  # the second answer came from a matrix
    both(Put("app", "m2", _memory("tea"), None, None, 1.0))
    assert both(SetVectors("app", (Embedded("m2", 5, vectors.to_text(_unit(0.6, 0.8))),), "model")) == ["m1", "m2"]
    assert both(Put("app", "m1", _memory("green tea"), None, None, 1.0)) == ["m2"]  # its vector went with its text
    assert both(SetVectors("app", (Embedded("m1", 7, vectors.to_text(_unit(-1.0))),), "other")) == ["m1"]
    assert both(Put("app", "m3", _memory("tea"), None, None, 1.0), "elsewhere") == []  # the new model's: none yet


def test_a_namespace_whose_rows_do_not_fit_is_scanned_and_nothing_is_kept(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"), vector_cache_bytes=150)  # one row and its key (91 bytes), not two
    for number in range(2):
        log.apply(Put("app", f"m{number}", _memory("tea"), None, None, 1.0))
    _vectors_of(log, {"m0": _unit(1.0), "m1": _unit(0.6, 0.8)})
    asked = SearchQuery(["tea"], _unit(1.0), "vector", SEARCHABLE_KINDS, None, [], 10)  # type: ignore[arg-type]
    for _ in range(2):
        assert [context["id"] for _, context in log.store.search("app", asked).hits] == ["m0", "m1"]
        assert log.store._generation.matrices.nbytes == 0
