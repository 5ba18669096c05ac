"""What a search matches in a context: the text a reader would call its content, not its ids or free data.

One definition for the lexical index and the embeddings, so both rank the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def searchable_text(kind: str, fields: dict[str, Any]) -> Iterable[str]:
    """The pieces of text of a context of ``kind`` with ``fields``, in a fixed order (sessions: none)."""
    if kind == "memory":
        yield from fields.get("facts", [])
        yield from fields.get("tags", [])
    elif kind == "instruction":
        yield fields.get("role") or ""
        yield from fields.get("domains", [])
        yield fields.get("text") or ""
        yield fields.get("style") or ""
    elif kind == "profile":
        yield fields.get("name") or ""
        yield from fields.get("goals", [])
        yield from (value for value in fields.get("preferences", {}).values() if isinstance(value, str))
    elif kind == "guardrail":
        yield from fields.get("rules", [])
        yield from fields.get("deny_topics", [])
    elif kind == "task":
        yield fields.get("domain") or ""
        yield fields.get("goal") or ""


def embedding_text(kind: str, fields: dict[str, Any]) -> str:
    """The one string a context's vector is computed from."""
    return ". ".join(piece for piece in searchable_text(kind, fields) if piece)
