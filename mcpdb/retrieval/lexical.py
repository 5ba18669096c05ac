"""The words of a context as the state machine indexes them, and BM25 over them.

Why not a search library: the index must change in the LMDB transaction of the write that changes the
context, travel inside snapshots, and be the same on every replica at the same applied index, so that a
search is exactly as consistent as a GET. Tantivy, Whoosh, Xapian or SQLite FTS5 each keep their own
files, written outside that transaction and outside the snapshot. What is hand-written here is small:
the terms' layout in LMDB (``mcpdb.store.postings``) and the BM25 formula over integer statistics read
in one read transaction. The text analysis uses a library (PyStemmer: Snowball's English stemmer in C,
integer and character work only, so the same terms come out on every CPU; the pure-Python
snowballstemmer gives the same stems 100x slower, 8 ms per 1 KiB fact in the Raft thread).

A context's owner is ``-`` for nobody, or ``u`` and the SHA-256 of its user_id. Counters per
(namespace, owner, kind), and per (namespace, kind) across owners, hold the number of indexed contexts
and their total length, for BM25's N and average length over exactly the contexts a search may return.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import struct
import unicodedata
import zlib

import Stemmer

# Longer "words" are not indexed: identifiers, hashes, base64, noise, which nobody searches for by word
# (an id is read by GET) and which cost a posting each (a 1 KiB random value holds about twenty). Lucene
# and Elasticsearch split at 255; 99.9% of English words are shorter than 32. A term is at most 32
# characters, so a block key (namespace, term, class, kind) stays well under LMDB's 511 bytes.
MAX_WORD_CHARS = 32
MAX_QUERY_TERMS = 32
NOBODY = b"-"  # the store's owner of a context of no user (``_NOBODY`` there)
ALL_OWNERS = b"*"  # the counters' owner for every owner together (a real owner is b"-" or b"u" + 32 bytes)
# BM25's usual constants (Robertson; also Lucene's and FTS5's defaults).
K1 = 1.2
B = 0.75

_SEP = b"\x00"
_COUNTER = struct.Struct(">QQ")  # contexts indexed, their total length in terms
_WORD = re.compile(r"[^\W_]+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_stemmer = Stemmer.Stemmer("english")
# What the terms depend on besides this code: the interpreter's Unicode tables (casefold, \w) and the
# stemmer's version. Stamped beside the indexes' format, so a store or snapshot indexed under others is
# rebuilt when opened rather than mixed with terms this node would derive differently.
ANALYZER = zlib.crc32(
    f"unicode {unicodedata.unidata_version} stemmer {importlib.metadata.version('PyStemmer')}".encode()
)
# The most frequent English function words: they match nearly every context and would cost a search a
# scan of nearly every posting for almost no score.
STOPWORDS = frozenset(
    "a about an and are as at be been but by can could did do does for from had has have he her his how i if "
    "in into is it its me my no not of on or our she so than that the their them then there these they this "
    "to was we were what when where which who why will with would you your".split()
)


def words(text: str) -> list[str]:
    """The casefolded words of ``text``, in order: what ``terms`` keeps or drops, then stems. ASCII text
    (most of it) takes a narrower pattern, 2.4x faster on a 1 KiB fact, with the same words: for ASCII
    characters the pattern ``_WORD`` matches ``[a-z0-9]`` once lowered, and casefold is lower."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return _WORD.findall(text.casefold())


def terms(text: str) -> list[str]:
    """The index terms of ``text``, in order: words casefolded, stopwords and words over
    ``MAX_WORD_CHARS`` dropped, stemmed."""
    casefolded = words(text)
    return list(_stemmer.stemWords([w for w in casefolded if len(w) <= MAX_WORD_CHARS and w not in STOPWORDS]))


def query_terms(text: str) -> list[str]:
    """A query's distinct terms in first-seen order, at most ``MAX_QUERY_TERMS``."""
    return list(dict.fromkeys(terms(text)))[:MAX_QUERY_TERMS]


def split_owned(rest: bytes) -> tuple[bytes, bytes, bytes]:
    """(owner, kind, what follows) of a key part that starts ``owner \0 kind \0`` (a term list's or
    a vector's key after its namespace): the owner is one byte for nobody, 33 for a user (``u``
    and a SHA-256 digest), so a NUL inside a user's digest is never taken for the separator."""
    owner_end = 1 if rest[:1] == NOBODY else 33
    kind_end = rest.index(_SEP, owner_end + 1)
    return rest[:owner_end], rest[owner_end + 1 : kind_end], rest[kind_end + 1 :]


COUNTER_PREFIX = b"lex_count" + _SEP  # the counters' keys in the store's ``meta`` database


def counter_key(namespace: bytes, owner: bytes, kind: str) -> bytes:
    return COUNTER_PREFIX + namespace + _SEP + owner + _SEP + kind.encode()


def counter_keys(namespace: bytes, owner: bytes, kind: str) -> tuple[bytes, bytes]:
    """The counters a context of ``owner`` and ``kind`` counts in: its owner's, and all owners'."""
    return counter_key(namespace, owner, kind), counter_key(namespace, ALL_OWNERS, kind)


def pack_counter(contexts: int, length: int) -> bytes:
    return _COUNTER.pack(contexts, length)


def unpack_counter(raw: bytes | memoryview | None) -> tuple[int, int]:
    if raw is None:
        return 0, 0
    contexts, length = _COUNTER.unpack(raw)
    return int(contexts), int(length)


def idf(contexts: int, matching: int) -> float:
    """BM25's inverse document frequency, in Lucene's form (never negative, so a word in most contexts
    still counts a little rather than against a match)."""
    return math.log(1.0 + (contexts - matching + 0.5) / (matching + 0.5))


def term_score(weight: float, count: int, length: int, average_length: float) -> float:
    """One term's BM25 contribution to one context."""
    norm = K1 * (1.0 - B + B * length / average_length) if average_length else K1
    return weight * count * (K1 + 1.0) / (count + norm)
