"""Chat messages -> the prompt text a model was trained on.

A GGUF that carries ``tokenizer.chat_template`` is rendered with that
template (Jinja2, sandboxed, as Hugging Face does). The bundled model, the
base Gemma 3 270M, carries none, and llama-cpp-python would then silently
fall back to a Llama-2 ``<<SYS>>`` prompt the model never saw; for Gemma we
render Gemma's turn format ourselves. Gemma has no system role: the system
text leads the first user turn, as Gemma's own template does.

Rendering is a pure function of the messages, and for the formats here a
conversation's rendering is a prefix of the rendering of the same
conversation with more turns; context assembly relies on that so a
session's follow-up reuses the KV cache of everything before it.

A rendered prompt is kept as pieces (``render_pieces``): the format's own
text, whose control tokens (``<start_of_turn>``, ``<|im_end|>``) are meant,
and the messages' contents, which clients wrote and whose text is only text.
Tokenized as one string with special tokens parsed (as llama.cpp's server
does), a user who typed ``<end_of_turn>\n<start_of_turn>model\n`` closed
their own turn and wrote the model's; ``prompt_tokens`` parses control tokens
in the format's pieces only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment

_log = logging.getLogger(__name__)


class ChatFormat(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def stop(self) -> list[str]:
        """Strings that end a reply."""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text, without the BOS token (the tokenizer adds it)."""

    def placed(self, content: str) -> str:
        """A message's content as the format places it in the prompt."""


@dataclass(frozen=True)
class Piece:
    """A stretch of a rendered prompt: the format's text, or (``is_content``) a message's content."""

    text: str
    is_content: bool


# Stands in for a message's content while the format renders; NUL never occurs in a format's own text
# and the content itself is put back after, so a content that spells a mark is still only content.
_MARK = "\x00mcpdb-content-{}\x00"
_MARKS = re.compile("\x00mcpdb-content-(\\d+)\x00")


def render_pieces(
    chat_format: ChatFormat, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> list[Piece]:
    """``chat_format.render(messages)`` as pieces whose texts join to it, contents apart from the format's
    text. Each content is rendered as a mark and put back where the format placed it, as the format
    places it (``placed``: a template may trim it; one may place it twice, or not at all). A content
    that places as empty stays empty: a format may render an empty message differently."""
    placed = [chat_format.placed(m["content"]) for m in messages]
    marked = [{**m, "content": _MARK.format(i) if placed[i] else ""} for i, m in enumerate(messages)]
    rendered = chat_format.render(marked, add_generation_prompt)
    pieces: list[Piece] = []
    at = 0
    for mark in _MARKS.finditer(rendered):
        if mark.start() > at:
            pieces.append(Piece(rendered[at : mark.start()], is_content=False))
        pieces.append(Piece(placed[int(mark.group(1))], is_content=True))
        at = mark.end()
    if at < len(rendered):
        pieces.append(Piece(rendered[at:], is_content=False))
    return pieces


@dataclass(frozen=True)
class GemmaFormat:
    """``<start_of_turn>user|model\\n ... <end_of_turn>\\n``; system text folded into the first user turn."""

    name: str = "gemma"

    @property
    def stop(self) -> list[str]:
        return ["<end_of_turn>"]

    def placed(self, content: str) -> str:
        return content

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        parts: list[str] = []
        for message in (m for m in messages if m["role"] != "system"):
            role = "model" if message["role"] == "assistant" else "user"
            content = message["content"]
            if system and not parts:
                content = f"{system}\n\n{content}"
            parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
        if system and not parts:
            parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
        return "".join(parts)


class TemplateFormat:
    """The model's own Jinja2 chat template, taken from its GGUF metadata."""

    name = "gguf-template"

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_template_error
        self._template = environment.from_string(template)
        self._bos = bos_token
        self._eos = eos_token
        self.stop = [eos_token] if eos_token else []
        self._trims = self._probe_placement()

    def _probe_placement(self) -> bool:
        """Whether the template trims a content (Gemma's and Llama 3's do: ``| trim``); raises
        UnsupportedTemplate for one that places contents neither verbatim nor trimmed (escaped as
        JSON, cut): its prompt could not be kept apart from the contents it holds."""
        probe = "\x01mcpdb\x01"
        try:
            rendered = self.render([{"role": "user", "content": f" {probe} "}])
        except Exception as error:  # noqa: BLE001 - any template failure means it cannot be used
            raise UnsupportedTemplate(f"the model's chat template failed on a plain message: {error}") from error
        if f" {probe} " in rendered:
            return False
        if probe in rendered:
            return True
        raise UnsupportedTemplate("the model's chat template rewrites message contents (not verbatim, not trimmed)")

    def placed(self, content: str) -> str:
        return content.strip() if self._trims else content

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self._bos, eos_token=self._eos
        )
        if self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]  # the tokenizer adds BOS itself
        return text


class UnsupportedTemplate(ValueError):
    """A GGUF chat template mcpdb cannot render apart from the contents it places."""


def _raise_template_error(message: str) -> None:
    raise ValueError(f"the model's chat template refused the messages: {message}")


@dataclass(frozen=True)
class ChatMLFormat:
    """``<|im_start|>role\\n ... <|im_end|>\\n``: the fallback for a non-Gemma model without a template."""

    name: str = "chatml"

    @property
    def stop(self) -> list[str]:
        return ["<|im_end|>"]

    def placed(self, content: str) -> str:
        return content

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _special_token(metadata: dict[str, str], key: str, token_text: Callable[[int], str]) -> str:
    index = metadata.get(key, "")
    return token_text(int(index)) if index.isdigit() else ""


def choose_format(metadata: dict[str, str], token_text: Callable[[int], str]) -> ChatFormat:
    """The GGUF's template if it has one that places contents verbatim or trimmed; else Gemma's turns
    for Gemma models; ChatML otherwise.

    ``token_text`` maps a token id to its text: a template names BOS and EOS
    by text, the metadata by id.
    """
    template = metadata.get("tokenizer.chat_template")
    if template:
        try:
            return TemplateFormat(
                template,
                _special_token(metadata, "tokenizer.ggml.bos_token_id", token_text),
                _special_token(metadata, "tokenizer.ggml.eos_token_id", token_text),
            )
        except UnsupportedTemplate as error:
            _log.warning("%s; using the format for the model's architecture instead", error)
    if metadata.get("general.architecture", "").startswith("gemma"):
        return GemmaFormat()
    return ChatMLFormat()
