"""The lexical index as LMDB holds it: a term list per context, and postings in blocks per term and entry.

Why blocks: with a key per posting (``ns \\0 term \\0 owner \\0 kind \\0 id``, the layout before), a
500-record batch of the scale bench put about 6,000 keys scattered over as many B-tree pages, and
those pages' copies were half of the Raft thread's busy time while a million contexts loaded
(benchmarks/RESULTS.md, sessions 15 and 21).
Here an entry's postings are gathered while it applies and written once at its end, one key per
(term, owner class, kind): a batch writes one key per distinct term it holds, next to each other in
the term's range. Measured in raw LMDB on the scale bench's records, 22.8 against 57.9 us a record at
300-600 k, and smaller on disk. Lucene's segments and FTS5's per-transaction blocks make the same
choice; neither can live inside the store's own transactions and snapshots (see ``lexical``).

Two databases:

- ``terms``: ``ns \\0 owner \\0 kind \\0 id`` -> the block holding the context's postings (8 bytes: the
  entry that wrote them), its length in terms (4 bytes), and ``\\0 term : count`` per term, sorted,
  then ``\\0``. A search of some users' contexts reads their lists, so a chat's search costs what its
  user holds, whatever the namespace holds; a write finds here which blocks to take a context out of.
- ``lexical``: ``ns \\0 term \\0 class \\0 kind \\0 block`` -> the postings of the contexts of that kind and
  owner class (``-``: nobody's, ``u``: some user's) that the entry ``block`` indexed with ``term``: per
  context its id's length (2 bytes), the term's count (2), its length (4), then the id. A search of the
  whole namespace, or of nobody's contexts, reads one key per term and entry.

A context taken out of the index (deleted, or its words changed) leaves its blocks rewritten without it
as its entry ends, so every block holds exactly the current postings and BM25's statistics never count
a stale one. That is the layout's price: a delete or an overwrite rewrites each of its terms' blocks
(at most a batch's 1,000 postings each) where a key per posting deleted one key. Small blocks are not
merged: a namespace written one context at a time holds one block per term and write, as many keys as
a key per posting did. The
blocks a replica holds depend on which entries wrote what, the same on every replica applying the
same log; a store rebuilt from ``ctx`` groups contexts by their version instead, and holds the same
postings, which is all a search reads: scores are summed per context in query-term order and ranked
by (score, id), never by where a posting is kept.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from mcpdb.retrieval import lexical
from mcpdb.retrieval.text import searchable_text

_SEP = b"\x00"
_HEAD = struct.Struct(">QI")  # a term list's block, the context's length in terms
_BLOCK = struct.Struct(">Q")
_ENTRY = struct.Struct(">HHI")  # a posting in a block: id length, count, context length; the id follows
_MAX_COUNT = 0xFFFF
_NOBODY_CLASS = lexical.NOBODY  # the owner class of nobody's contexts, and of an owner of nobody
_USER_CLASS = b"u"
_CLASSES = (_NOBODY_CLASS, _USER_CLASS)

Posting = tuple[bytes, int, int]  # a context's id, a term's count in it, its length in terms


@dataclass(frozen=True)
class Posted:
    """One context as the lexical index holds it: a function of its record alone."""

    namespace: bytes
    owner: bytes
    kind: str
    context_id: bytes
    counts: tuple[tuple[str, int], ...]  # (term, count), sorted by term; counts capped at 65,535
    length: int  # in terms


def posted(namespace: bytes, owner: bytes, kind: str, context_id: bytes, fields: dict[str, Any]) -> Posted | None:
    """What the index holds of a context (None: no words to index)."""
    found: list[str] = []
    for text in searchable_text(kind, fields):
        found += lexical.terms(text)
    if not found:
        return None
    ordered = tuple(sorted(Counter(found).items()))
    if max(count for _, count in ordered) > _MAX_COUNT:  # a word repeated 65,536 times: rare, capped
        ordered = tuple((term, min(count, _MAX_COUNT)) for term, count in ordered)
    return Posted(namespace, owner, kind, context_id, ordered, len(found))


def owned_key(namespace: bytes, owner: bytes, kind: str, context_id: bytes) -> bytes:
    """A context's key in an index grouped by owner and kind (its term list, its vector)."""
    return namespace + _SEP + owner + _SEP + kind.encode() + _SEP + context_id


def _after_term(owner: bytes, kind: str) -> bytes:
    """What follows the term in a block's key, up to the block: the owner's class and the kind."""
    return _SEP + owner[:1] + _SEP + kind.encode() + _SEP


def _block_prefix(namespace: bytes, term: str, owner: bytes, kind: str) -> bytes:
    return namespace + _SEP + term.encode() + _after_term(owner, kind)


def _block_key_ends(namespace: bytes, owner: bytes, kind: str, block: int) -> tuple[bytes, bytes]:
    """What comes before and after the term in the keys of one context's blocks: a block's key is
    ``head + term + tail``, the two built once for all the context's terms."""
    return namespace + _SEP, _after_term(owner, kind) + _BLOCK.pack(block)


def _term_list(block: int, context: Posted) -> bytes:
    words = "".join(f"\0{term}:{count}" for term, count in context.counts).encode()
    return _HEAD.pack(block, context.length) + words + _SEP


def parse_term_list(value: bytes) -> tuple[int, int, list[tuple[str, int]]]:
    """(block, length, [(term, count)]) of a term list."""
    block, length = _HEAD.unpack_from(value)
    counts = []
    for item in bytes(value[_HEAD.size + 1 : -1]).split(_SEP):
        term, _, count = item.rpartition(b":")
        counts.append((term.decode(), int(count)))
    return int(block), int(length), counts


def _terms_held(wanted: re.Pattern[bytes], term_list: bytes) -> list[tuple[bytes, bytes]]:
    """(term, count) of each query term ``wanted`` finds in a term list."""
    return wanted.findall(term_list, _HEAD.size)


def parse_block(value: bytes) -> Iterator[Posting]:
    """The postings of a block, in the order they were written."""
    at, end = 0, len(value)
    while at < end:
        id_length, count, length = _ENTRY.unpack_from(value, at)
        at += _ENTRY.size
        yield bytes(value[at : at + id_length]), count, length
        at += id_length


def _without(value: bytes, removed: set[bytes]) -> bytes:
    """A block without the postings of ``removed``: its bytes sliced around them, nothing decoded
    but each posting's id (a delete of one context from a 1,000-posting block, per term)."""
    kept, at, end, start = [], 0, len(value), 0
    unpack = _ENTRY.unpack_from
    while at < end:
        id_start = at + _ENTRY.size
        id_end = id_start + unpack(value, at)[0]
        if value[id_start:id_end] in removed:
            kept.append(value[start:at])
            start = id_end
        at = id_end
    kept.append(value[start:])
    return b"".join(kept)


def _pack_block(postings: dict[bytes, tuple[int, int]]) -> bytes:
    return b"".join(
        _ENTRY.pack(len(context_id), count, length) + context_id for context_id, (count, length) in postings.items()
    )


class PostingsWriter:
    """The writer thread's changes to the lexical index within one entry (or one rebuild chunk):
    term lists are written at once, postings gathered per block and written by ``flush``, which also
    takes removed contexts out of the blocks that held them."""

    def __init__(self, rebuilding: bool = False) -> None:
        # A rebuild's chunks may write one block twice (contexts of one version far apart in ``ctx``);
        # an entry's never do, and a second write there is a bug to refuse the entry for.
        self._rebuilding = rebuilding
        # block key -> {context id: (count, length)}, in the order contexts were added
        self._pending: dict[bytes, dict[bytes, tuple[int, int]]] = {}
        # a written block's key -> the contexts to take out of it: each block is rewritten once an entry,
        # however many of its contexts the entry deletes (an expiry sweep of a whole batch)
        self._removals: dict[bytes, set[bytes]] = {}

    def add(self, txn: lmdb.Transaction, dbs: dict[bytes, Any], block: int, context: Posted) -> None:
        """Index ``context`` in ``block`` (it is not indexed: ``remove`` it first)."""
        txn.put(
            owned_key(context.namespace, context.owner, context.kind, context.context_id),
            _term_list(block, context),
            db=dbs[b"terms"],
        )
        head, tail = _block_key_ends(context.namespace, context.owner, context.kind, block)
        pending, context_id, length = self._pending, context.context_id, context.length
        for term, count in context.counts:
            key = head + term.encode() + tail
            held = pending.get(key)
            if held is None:
                pending[key] = {context_id: (count, length)}
            else:
                held[context_id] = (count, length)

    def remove(self, txn: lmdb.Transaction, dbs: dict[bytes, Any], context: Posted) -> None:
        """Take ``context`` out of the index, as the index holds it (nothing if it does not)."""
        namespace, owner, kind, context_id = context.namespace, context.owner, context.kind, context.context_id
        value = txn.pop(owned_key(namespace, owner, kind, context_id), db=dbs[b"terms"])
        if value is None:
            return
        block, _, counts = parse_term_list(value)
        head, tail = _block_key_ends(namespace, owner, kind, block)
        for term, _ in counts:
            key = head + term.encode() + tail
            pending = self._pending.get(key)
            if pending is not None and context_id in pending:  # written by the entry being applied
                del pending[context_id]
                if not pending:
                    del self._pending[key]
                continue
            self._removals.setdefault(key, set()).add(context_id)

    def flush(self, txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> None:
        """Write the gathered postings, one put a block, and rewrite the blocks contexts were taken
        out of."""
        blocks = dbs[b"lexical"]
        for key, postings in self._pending.items():
            value = _pack_block(postings)
            if not txn.put(key, value, db=blocks, overwrite=False):
                if not self._rebuilding:
                    raise RuntimeError(f"postings block {key!r} is already written")
                txn.put(key, bytes(txn.get(key, db=blocks)) + value, db=blocks)
        for key, removed in self._removals.items():
            stored = txn.get(key, db=blocks)
            if stored is None:
                continue
            kept = _without(stored, removed)
            if kept:
                txn.put(key, kept, db=blocks)
            else:
                txn.delete(key, db=blocks)
        self.discard()

    def discard(self) -> None:
        """Forget the gathered postings and removals (their entry's transaction was rolled back)."""
        self._pending.clear()
        self._removals.clear()

    def gathered(self) -> int:
        """How many blocks are gathered, for a rebuild to flush before they grow too large."""
        return len(self._pending)


def matches(
    txn: lmdb.Transaction,
    dbs: dict[bytes, Any],
    namespace: bytes,
    terms: Sequence[str],
    kinds: Sequence[str],
    owners: Sequence[bytes] | None,
) -> dict[str, list[Posting]]:
    """Per query term, the postings of the contexts of ``kinds`` and ``owners`` (None: anyone's) that
    hold it. Nobody's and everyone's come from the blocks; a user's from their term lists."""
    found: dict[str, list[Posting]] = {term: [] for term in terms}
    classes = _CLASSES if owners is None else [_NOBODY_CLASS] if _NOBODY_CLASS in owners else []
    cursor = txn.cursor(db=dbs[b"lexical"])
    for term in terms:
        for owner_class in classes:
            for kind in kinds:
                prefix = _block_prefix(namespace, term, owner_class, kind)
                if not cursor.set_range(prefix):
                    continue
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    found[term].extend(parse_block(value))
    if owners is None or not terms:
        return found
    # One pass of C over each list finds every query term in it (``\0 term : count``; terms hold
    # neither NUL nor ':'), so a user's search costs a regex call per context the user holds.
    wanted = re.compile(b"\\x00(" + b"|".join(re.escape(term.encode()) for term in terms) + b"):([0-9]+)")
    lists = txn.cursor(db=dbs[b"terms"])
    for owner in owners:
        if owner == _NOBODY_CLASS:  # read from the blocks above
            continue
        for kind in kinds:
            prefix = owned_key(namespace, owner, kind, b"")
            if not lists.set_range(prefix):
                continue
            for key, value in lists:
                if not key.startswith(prefix):
                    break
                held = _terms_held(wanted, value)
                if held:
                    context_id, length = bytes(key[len(prefix) :]), _HEAD.unpack_from(value)[1]
                    for held_term, count in held:
                        found[held_term.decode()].append((context_id, int(count), length))
    return found
