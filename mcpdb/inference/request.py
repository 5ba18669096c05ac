"""The chat completion request: OpenAI's shape plus mcpdb's context fields.

Unknown OpenAI parameters are ignored, as OpenAI-compatible servers do, so
stock clients work; parameters that would change the meaning of the answer
and are not supported (``n`` > 1, tools) are refused with a clear 422.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcpdb.model import check_context_id, check_namespace


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        """OpenAI also sends content as a list of parts; text parts are joined, others refused."""
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise ValueError("only text content parts are supported")
                texts.append(str(part.get("text", "")))
            return "".join(texts)
        return value


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    n: int = Field(default=1, ge=1, le=1)
    # mcpdb's extensions: where the stored context comes from and where the turns go.
    namespace: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    task_id: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _context_fields(self) -> ChatRequest:
        named = [n for n in ("session_id", "user_id", "task_id") if getattr(self, n) is not None]
        if named and self.namespace is None:
            raise ValueError(f"{', '.join(named)} need a namespace")
        if self.namespace is not None:
            check_namespace(self.namespace)
        for name in named:
            check_context_id(getattr(self, name))
        if self.session_id is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("a request with a session_id needs a user message to append")
        return self

    def completion_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def session_key(self) -> str | None:
        return f"{self.namespace}/{self.session_id}" if self.session_id else None

    def seed_for(self, idempotency_key: str) -> int:
        """The sampling seed: the caller's, or one derived from the idempotency key, so a retry on
        another node samples the same tokens from the same prompt."""
        if self.seed is not None:
            return self.seed
        return int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:4], "big") & 0x7FFFFFFF
