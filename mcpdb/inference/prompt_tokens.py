"""Text and rendered prompts -> the model's tokens, control tokens parsed only where the format put them.

A client's text is tokenized with special tokens *not* parsed: ``<end_of_turn>`` typed by a user is
seven ordinary tokens the model reads as text, never the token that closes a turn (see
``prompt_format``). Each piece is tokenized on its own; llama.cpp already tokenizes the text between
two control tokens on its own, so only a piece boundary inside such text can tokenize differently
from the whole (measured on the bundled model: a content starting with a newline after the format's
``\\n\\n`` gives ``\\n\\n`` + ``\\n`` instead of ``\\n\\n\\n``), and it does so the same way every time.
A vocabulary that adds a space before the start of a text (``tokenizer.ggml.add_space_prefix``, set
for Llama 2's; the bundled Gemma's is not) gets one before each content too: a model given with
``--model`` then reads ``[INST] Hello`` as if it were ``[INST]  Hello``.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

from mcpdb.inference.prompt_format import Piece

# Pieces tokenized lately, kept: assembly tokenizes a prompt once per window size it tries, and each
# chat of a session again (llama.cpp's tokenizer costs ~0.8 us a character for the bundled model), but
# from one try or chat to the next most pieces (the system text, the kept turns) are the same. Only
# short pieces are kept, their tokens as 4-byte integers: at most 2,048 x 2,048 characters and their
# tokens, ~25 MB whatever clients send (as tuples of Python ints, 8,192 x 4,096 reached ~1.2 GB).
CACHED_PIECES = 2048
CACHED_PIECE_CHARS = 2048


class Tokenizer(Protocol):
    @property
    def max_token_chars(self) -> int:
        """The most characters one token stands for: a text of n characters is at least n / this many
        tokens, which tells a prompt that cannot fit without tokenizing it."""

    def text(self, text: str) -> list[int]:
        """The tokens of client text, no BOS, nothing in it read as a control token."""

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        """A rendered prompt's tokens as generation takes them: BOS, then each piece."""


class LlamaTokenizer:
    """``Tokenizer`` over a llama-cpp-python ``Llama`` (a loaded model, or ``vocab_only``)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._cached = functools.lru_cache(maxsize=CACHED_PIECES)(self._tokenize)  # thread-safe
        # the vocabulary's longest token, control tokens included (the bundled model's: 31 tabs)
        self.max_token_chars = max(
            len(llm.detokenize([token], special=True).decode(errors="replace")) for token in range(llm.n_vocab())
        )

    def _tokenize(self, text: str, special: bool) -> array[int]:
        return array("i", self._llm.tokenize(text.encode(), add_bos=False, special=special))

    def _piece(self, text: str, special: bool) -> array[int]:
        return self._cached(text, special) if len(text) <= CACHED_PIECE_CHARS else self._tokenize(text, special)

    def text(self, text: str) -> list[int]:
        return list(self._piece(text, False))

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        tokens: list[int] = list(self._llm.tokenize(b"", add_bos=True, special=False))
        for piece in pieces:
            tokens += self._piece(piece.text, not piece.is_content)
        return tokens
