"""Python client for mcpdb's REST API (httpx), sync and async, with failover and safe retries.

Both clients share one description of each call (``_Call``) and one retry
policy; they differ only in how they send. The policy:

- a node that cannot be reached (connection refused, DNS, connect timeout)
  never saw the request: try the next node URL;
- 503 with ``"applied": "no"`` did not happen: back off (honouring
  ``Retry-After``) and retry, on the next node;
- an indeterminate outcome - 503 with ``"applied": "unknown"``, or a
  connection that broke after the request was sent - is retried only when
  the call is idempotent: reads, PUT, DELETE, and session appends, which
  always carry an ``Idempotency-Key`` (generated when the caller gives none),
  so a retried append never adds a turn twice. A batch or a conditional write
  is not retried blindly; the caller gets ``Unavailable(applied="unknown")``.

Every retry stays within ``deadline`` seconds in total.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:7700"


class McpdbError(Exception):
    """Any error the server reported or the client could not recover from."""

    def __init__(self, message: str, status: int | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}


class InvalidRequest(McpdbError):
    """400, 413 or 422: the request itself is wrong; the message says how."""


class Unauthorized(McpdbError):
    """401: missing or wrong token."""


class NotFound(McpdbError):
    """404: no such context (or route)."""


class Forbidden(McpdbError):
    """403: the token's scope in that namespace is too weak."""


class Conflict(McpdbError):
    """409: version mismatch or wrong kind; ``current_version`` is the server's."""

    @property
    def current_version(self) -> int | None:
        return self.body.get("current_version")


class Unavailable(McpdbError):
    """The cluster could not serve the call in time; ``applied`` is "no" or "unknown"."""

    @property
    def applied(self) -> str:
        return str(self.body.get("applied", "unknown"))


_ERRORS: dict[int, type[McpdbError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}


@dataclass
class _Call:
    method: str
    path: str
    idempotent: bool
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Retry(Exception):
    def __init__(self, delay: float, error: McpdbError) -> None:
        self.delay = delay
        self.error = error


def _decide(call: _Call, response: httpx.Response | None, error: Exception | None, attempt: int) -> Any:
    """The retry policy: return the decoded body, or raise ``_Retry`` or a final ``McpdbError``."""
    backoff = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
    if error is not None:
        sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        failure = Unavailable(f"{type(error).__name__}: {error}", None, {"applied": "unknown" if sent else "no"})
        if not sent or call.idempotent:
            # Unreachable: move on to the next URL almost at once.
            raise _Retry(backoff / 4 if not sent else backoff, failure)
        raise failure
    assert response is not None
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    if response.status_code < 300:
        return body
    message = body.get("message") or body.get("detail") or response.reason_phrase
    if response.status_code == 429:  # rate limited: nothing happened, try again when allowed
        retry_after = response.headers.get("Retry-After", "")
        raise _Retry(float(retry_after) if retry_after.isdigit() else backoff, McpdbError(message, 429, body))
    if response.status_code == 503:
        failure = Unavailable(message, 503, body)
        if failure.applied == "no" or call.idempotent:
            retry_after = response.headers.get("Retry-After", "")
            raise _Retry(max(backoff, float(retry_after)) if retry_after.isdigit() else backoff, failure)
        raise failure
    raise _ERRORS.get(response.status_code, McpdbError)(
        f"{response.status_code}: {message}", response.status_code, body
    )


class _CallBuilder:
    """How each API call is spelled; shared by both clients."""

    @staticmethod
    def put(ns: str, context_id: str, context: dict[str, Any], if_version: int | None, create_only: bool) -> _Call:
        headers = {}
        if if_version is not None:
            headers["If-Match"] = str(if_version)
        if create_only:
            headers["If-None-Match"] = "*"
        # A conditional write retried after an unknown outcome could report a
        # false conflict (its own first attempt changed the version).
        return _Call("PUT", f"/v1/namespaces/{ns}/contexts/{context_id}", not headers, json=context, headers=headers)

    @staticmethod
    def get(ns: str, context_id: str, consistency: str) -> _Call:
        return _Call("GET", f"/v1/namespaces/{ns}/contexts/{context_id}", True, params={"consistency": consistency})

    @staticmethod
    def delete(ns: str, context_id: str, if_version: int | None) -> _Call:
        headers = {"If-Match": str(if_version)} if if_version is not None else {}
        return _Call("DELETE", f"/v1/namespaces/{ns}/contexts/{context_id}", if_version is None, headers=headers)

    @staticmethod
    def list(ns: str, kind: str | None, prefix: str, limit: int, cursor: str | None, consistency: str) -> _Call:
        params: dict[str, Any] = {"prefix": prefix, "limit": limit, "consistency": consistency}
        if kind:
            params["kind"] = kind
        if cursor:
            params["cursor"] = cursor
        return _Call("GET", f"/v1/namespaces/{ns}/contexts", True, params=params)

    @staticmethod
    def search(
        ns: str,
        query: str,
        kind: str | None,
        user_id: str | None,
        tags: builtins.list[str],
        k: int,
        mode: str,
        consistency: str,
    ) -> _Call:
        params: dict[str, Any] = {"q": query, "k": k, "mode": mode, "consistency": consistency}
        if kind:
            params["kind"] = kind
        if user_id is not None:
            params["user_id"] = user_id
        if tags:
            params["tags"] = tags
        return _Call("GET", f"/v1/namespaces/{ns}/search", True, params=params)

    @staticmethod
    def append(ns: str, session_id: str, turns: builtins.list[dict[str, Any]], idempotency_key: str | None) -> _Call:
        return _Call(
            "POST",
            f"/v1/namespaces/{ns}/sessions/{session_id}/turns",
            True,
            json={"turns": turns},
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        )

    @staticmethod
    def batch(ns: str, ops: builtins.list[dict[str, Any]]) -> _Call:
        return _Call("POST", f"/v1/namespaces/{ns}/batch", False, json={"ops": ops})

    @staticmethod
    def chat(body: dict[str, Any], idempotency_key: str | None) -> _Call:
        # Safe to retry: the key makes the server replay a reply it already recorded.
        return _Call(
            "POST",
            "/v1/chat/completions",
            True,
            json=body,
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        )


def chat_body(
    messages: list[dict[str, str]],
    model: str,
    *,
    namespace: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    task_id: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """A /v1/chat/completions body with mcpdb's context fields; unset fields are left out."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": stream,
        "namespace": namespace,
        "session_id": session_id,
        "user_id": user_id,
        "task_id": task_id,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    return {key: value for key, value in body.items() if value is not None}


class _Base:
    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one node URL is needed")
        self.urls = [u.rstrip("/") for u in self.urls]
        self.deadline = deadline
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._current = 0

    def _attempts(self) -> Iterator[tuple[int, str]]:
        """(attempt, url) until the deadline, starting from the last URL that worked."""
        stop = time.monotonic() + self.deadline
        attempt = 0
        while attempt == 0 or time.monotonic() < stop:
            yield attempt, self.urls[(self._current + attempt) % len(self.urls)]
            attempt += 1

    def _exchange(self, call: _Call) -> Generator[str | float, Any, Any]:
        """The retry loop without I/O: yields a URL to send to (and receives the
        response or error) or a delay to sleep; returns the decoded body.
        Both clients drive it with their own transport."""
        last: McpdbError | None = None
        for attempt, url in self._attempts():
            response, error = yield url
            try:
                result = _decide(call, response, error, attempt)
            except _Retry as retry:
                last = retry.error
                yield retry.delay
                continue
            self._current = (self._current + attempt) % len(self.urls)
            return result
        assert last is not None
        raise last


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) of each server-sent event; comments and keep-alives are skipped."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, event, "\n".join(data)
            event_id, event, data = None, "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def _sse_chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """JSON payloads of server-sent events up to ``[DONE]``; an error payload raises."""
    for _, _, data in _sse_events(lines):
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            raise _ERRORS.get(error.get("code"), McpdbError)(
                f"{error.get('code')}: {error.get('message')}", error.get("code"), chunk
            )
        yield chunk


def _turn(role: str, content: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    return {"role": role, "content": content, "metadata": metadata or {}}


class Client(_Base):
    """Synchronous client. ``Client(["http://n1:7700", "http://n2:7700"], token=...)``."""

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
    ) -> None:
        super().__init__(urls, token, timeout, deadline)
        self._http = httpx.Client(headers=self._headers, timeout=timeout)

    def _send(self, call: _Call) -> Any:
        exchange = self._exchange(call)
        action = next(exchange)
        while True:
            if isinstance(action, str):
                try:
                    outcome: Any = (
                        self._http.request(
                            call.method, action + call.path, json=call.json, params=call.params, headers=call.headers
                        ),
                        None,
                    )
                except httpx.HTTPError as error:
                    outcome = (None, error)
            else:
                time.sleep(action)
                outcome = None
            try:
                action = exchange.send(outcome)
            except StopIteration as done:
                return done.value

    def put(
        self,
        ns: str,
        context_id: str,
        context: dict[str, Any],
        if_version: int | None = None,
        create_only: bool = False,
    ) -> dict[str, Any]:
        return self._send(_CallBuilder.put(ns, context_id, context, if_version, create_only))

    def get(self, ns: str, context_id: str, consistency: str = "linearizable") -> dict[str, Any]:
        return self._send(_CallBuilder.get(ns, context_id, consistency))

    def delete(self, ns: str, context_id: str, if_version: int | None = None) -> dict[str, Any]:
        return self._send(_CallBuilder.delete(ns, context_id, if_version))

    def list(
        self,
        ns: str,
        kind: str | None = None,
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
        consistency: str = "linearizable",
    ) -> dict[str, Any]:
        return self._send(_CallBuilder.list(ns, kind, prefix, limit, cursor, consistency))

    def search(
        self,
        ns: str,
        query: str,
        kind: str | None = None,
        user_id: str | None = None,
        tags: builtins.list[str] | None = None,
        k: int = 5,
        mode: str = "hybrid",
        consistency: str = "linearizable",
    ) -> dict[str, Any]:
        """The ``k`` contexts that best match ``query``, best first (``results``: id, kind, score,
        context); ``user_id``: that user's and nobody's; ``tags``: carrying all of them; ``mode``:
        hybrid, lexical or vector."""
        return self._send(_CallBuilder.search(ns, query, kind, user_id, tags or [], k, mode, consistency))

    def iter_contexts(
        self, ns: str, kind: str | None = None, prefix: str = "", page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every matching context, following ``next_cursor`` page by page."""
        cursor = None
        while True:
            page = self.list(ns, kind, prefix, page_size, cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def append(
        self,
        ns: str,
        session_id: str,
        role: str,
        content: str,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return self.append_turns(ns, session_id, [_turn(role, content, metadata)], idempotency_key)

    def append_turns(
        self, ns: str, session_id: str, turns: builtins.list[dict[str, Any]], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return self._send(_CallBuilder.append(ns, session_id, turns, idempotency_key))

    def batch(self, ns: str, ops: builtins.list[dict[str, Any]]) -> dict[str, Any]:
        return self._send(_CallBuilder.batch(ns, ops))

    def cluster(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/v1/cluster", True))

    def models(self) -> builtins.list[str]:
        return [model["id"] for model in self._send(_Call("GET", "/v1/models", True))["data"]]

    def chat(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """One chat completion (``body`` from ``chat_body``), retried safely under one idempotency key."""
        return self._send(_CallBuilder.chat({**body, "stream": False}, idempotency_key))

    def chat_stream(self, body: dict[str, Any], idempotency_key: str | None = None) -> Iterator[dict[str, Any]]:
        """The streamed chunks of a chat completion. Until the first byte the request fails over like
        any call; a stream cut off later raises ``Unavailable`` (retry with the same key: the server
        replays the reply if it was recorded)."""
        call = _CallBuilder.chat({**body, "stream": True}, idempotency_key)
        for attempt, url in self._attempts():
            try:
                with self._http.stream(
                    "POST",
                    url + call.path,
                    json=call.json,
                    headers=call.headers,
                    timeout=httpx.Timeout(self._timeout, read=None),
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        _decide(call, response, None, attempt)
                    yield from _sse_chunks(response.iter_lines())
                    return
            except _Retry as retry:
                time.sleep(retry.delay)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue
            except httpx.HTTPError as error:
                raise Unavailable(
                    f"stream broken: {type(error).__name__}: {error}", None, {"applied": "unknown"}
                ) from None
        raise Unavailable(f"no node answered within {self.deadline} s", None, {"applied": "no"})

    def watch(
        self, ns: str, prefix: str = "", kind: str | None = None, since: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every change to the namespace (``{"event_id", "version", "id", "kind", "action", ...}``), in
        commit order, for as long as the caller iterates. A broken stream is resumed on the next node
        from the last event id, so nothing is missed or repeated; ``deadline`` bounds the time without
        any node answering. A history trimmed past ``since`` raises ``McpdbError`` (status 410)."""
        params: dict[str, Any] = {"prefix": prefix, **({"kind": kind} if kind else {})}
        last_id = since
        stop = time.monotonic() + self.deadline
        attempt = 0
        while True:
            url = self.urls[(self._current + attempt) % len(self.urls)]
            call = _Call(
                "GET", f"/v1/namespaces/{ns}/watch", True, params={**params, **({"since": last_id} if last_id else {})}
            )
            try:
                with self._http.stream(
                    "GET", url + call.path, params=call.params, timeout=httpx.Timeout(self._timeout, read=None)
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        _decide(call, response, None, attempt)
                    stop = time.monotonic() + self.deadline
                    for event_id, event, data in _sse_events(response.iter_lines()):
                        body = json.loads(data)
                        if event == "error":
                            raise McpdbError(f"410: {body['message']}", 410, body)
                        last_id = event_id
                        yield {"event_id": event_id, **body}
            except _Retry as retry:
                time.sleep(retry.delay)
            except httpx.HTTPError:
                time.sleep(0.1)
            attempt += 1
            if time.monotonic() > stop:
                raise Unavailable(f"no node served the watch for {self.deadline} s", None, {"applied": "no"})

    def node(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/v1/node", True))

    def overview(self) -> dict[str, Any]:
        """The cluster as the dashboard shows it: leader, term, per-node load and rates."""
        return self._send(_Call("GET", "/v1/overview", True))

    def autoscale(self) -> dict[str, Any]:
        """The leader's autoscaling decision (desired and live workers, utilisation, reason)."""
        return self._send(_Call("GET", "/v1/autoscale", True))

    def create_token(
        self, scopes: dict[str, str], description: str = "", rate_limit: float | None = None
    ) -> dict[str, Any]:
        """A new token (``{"token", "id", "scopes", ...}``); not retried after an unknown outcome,
        since a retry would mint a second token."""
        return self._send(
            _Call(
                "POST",
                "/v1/tokens",
                False,
                json={"scopes": scopes, "description": description, "rate_limit": rate_limit},
            )
        )

    def tokens(self) -> builtins.list[dict[str, Any]]:
        return self._send(_Call("GET", "/v1/tokens", True))["items"]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._send(_Call("DELETE", f"/v1/tokens/{token_id}", True))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client with the same methods as ``Client``, awaited."""

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
    ) -> None:
        super().__init__(urls, token, timeout, deadline)
        self._http = httpx.AsyncClient(headers=self._headers, timeout=timeout)

    async def _send(self, call: _Call) -> Any:
        exchange = self._exchange(call)
        action = next(exchange)
        while True:
            if isinstance(action, str):
                try:
                    outcome: Any = (
                        await self._http.request(
                            call.method, action + call.path, json=call.json, params=call.params, headers=call.headers
                        ),
                        None,
                    )
                except httpx.HTTPError as error:
                    outcome = (None, error)
            else:
                await asyncio.sleep(action)
                outcome = None
            try:
                action = exchange.send(outcome)
            except StopIteration as done:
                return done.value

    async def put(
        self,
        ns: str,
        context_id: str,
        context: dict[str, Any],
        if_version: int | None = None,
        create_only: bool = False,
    ) -> dict[str, Any]:
        return await self._send(_CallBuilder.put(ns, context_id, context, if_version, create_only))

    async def get(self, ns: str, context_id: str, consistency: str = "linearizable") -> dict[str, Any]:
        return await self._send(_CallBuilder.get(ns, context_id, consistency))

    async def delete(self, ns: str, context_id: str, if_version: int | None = None) -> dict[str, Any]:
        return await self._send(_CallBuilder.delete(ns, context_id, if_version))

    async def list(
        self,
        ns: str,
        kind: str | None = None,
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
        consistency: str = "linearizable",
    ) -> dict[str, Any]:
        return await self._send(_CallBuilder.list(ns, kind, prefix, limit, cursor, consistency))

    async def search(
        self,
        ns: str,
        query: str,
        kind: str | None = None,
        user_id: str | None = None,
        tags: builtins.list[str] | None = None,
        k: int = 5,
        mode: str = "hybrid",
        consistency: str = "linearizable",
    ) -> dict[str, Any]:
        return await self._send(_CallBuilder.search(ns, query, kind, user_id, tags or [], k, mode, consistency))

    async def iter_contexts(
        self, ns: str, kind: str | None = None, prefix: str = "", page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        cursor = None
        while True:
            page = await self.list(ns, kind, prefix, page_size, cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def append(
        self,
        ns: str,
        session_id: str,
        role: str,
        content: str,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return await self.append_turns(ns, session_id, [_turn(role, content, metadata)], idempotency_key)

    async def append_turns(
        self, ns: str, session_id: str, turns: builtins.list[dict[str, Any]], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return await self._send(_CallBuilder.append(ns, session_id, turns, idempotency_key))

    async def batch(self, ns: str, ops: builtins.list[dict[str, Any]]) -> dict[str, Any]:
        return await self._send(_CallBuilder.batch(ns, ops))

    async def cluster(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/v1/cluster", True))

    async def models(self) -> builtins.list[str]:
        return [model["id"] for model in (await self._send(_Call("GET", "/v1/models", True)))["data"]]

    async def chat(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._send(_CallBuilder.chat({**body, "stream": False}, idempotency_key))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
