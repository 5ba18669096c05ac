"""Text and rendered prompts -> the model's tokens, control tokens parsed only where the format put them.

A client's text is tokenized with special tokens *not* parsed: ``<end_of_turn>`` typed by a user is
seven ordinary tokens the model reads as text, never the token that closes a turn (see
``prompt_format``). Each piece is tokenized on its own; llama.cpp already tokenizes the text between
two control tokens on its own, so only a piece boundary inside such text can tokenize differently
from the whole (measured on the bundled model: a content starting with a newline after the format's
``\\n\\n`` gives ``\\n\\n`` + ``\\n`` instead of ``\\n\\n\\n``), and it does so the same way every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mcpdb.inference.prompt_format import Piece


class Tokenizer(Protocol):
    def text(self, text: str) -> list[int]:
        """The tokens of client text, no BOS, nothing in it read as a control token."""

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        """A rendered prompt's tokens as generation takes them: BOS, then each piece."""


class LlamaTokenizer:
    """``Tokenizer`` over a llama-cpp-python ``Llama`` (a loaded model, or ``vocab_only``)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def text(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def prompt(self, pieces: Sequence[Piece]) -> list[int]:
        tokens: list[int] = list(self._llm.tokenize(b"", add_bos=True, special=False))
        for piece in pieces:
            tokens += self._llm.tokenize(piece.text.encode(), add_bos=False, special=not piece.is_content)
        return tokens
