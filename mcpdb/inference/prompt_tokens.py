"""Text and rendered prompts -> the model's tokens, control tokens parsed only where the format put them.

A client's text is tokenized with special tokens *not* parsed: ``<end_of_turn>`` typed by a user is
seven ordinary tokens the model reads as text, never the token that closes a turn (see
``prompt_format``). Each piece is tokenized on its own; llama.cpp already tokenizes the text between
two control tokens on its own, so only a piece boundary inside such text can tokenize differently
from the whole (measured on the bundled model: a content starting with a newline after the format's
``\\n\\n`` gives ``\\n\\n`` + ``\\n`` instead of ``\\n\\n\\n``), and it does so the same way every time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

from mcpdb.inference.prompt_format import Piece

# Pieces tokenized lately, kept: assembly tokenizes a prompt once per window size it tries, and each
# chat of a session again (llama.cpp's tokenizer costs ~0.8 us a character for the bundled model), but
# from one try or chat to the next most pieces (the system text, the kept turns) are the same. Only
# short pieces are kept, so the cache stays a few MB however large a turn may be.
CACHED_PIECES = 8192
CACHED_PIECE_CHARS = 4096


class Tokenizer(Protocol):
    def text(self, text: str) -> list[int]:
        """The tokens of client text, no BOS, nothing in it read as a control token."""

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        """A rendered prompt's tokens as generation takes them: BOS, then each piece."""


class LlamaTokenizer:
    """``Tokenizer`` over a llama-cpp-python ``Llama`` (a loaded model, or ``vocab_only``)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._cached = functools.lru_cache(maxsize=CACHED_PIECES)(self._tokenize)  # thread-safe

    def _tokenize(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self._llm.tokenize(text.encode(), add_bos=False, special=special))

    def _piece(self, text: str, special: bool) -> tuple[int, ...]:
        return self._cached(text, special) if len(text) <= CACHED_PIECE_CHARS else self._tokenize(text, special)

    def text(self, text: str) -> list[int]:
        return list(self._piece(text, False))

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        tokens: list[int] = list(self._llm.tokenize(b"", add_bos=True, special=False))
        for piece in pieces:
            tokens += self._piece(piece.text, not piece.is_content)
        return tokens
