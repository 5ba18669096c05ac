"""Workloads: what the clients do through mcpdb's public REST API, and how outcomes are classified.

- ``register``: per-key read, write and compare-and-set on contexts. A
  register's value is stored as a memory context's single fact. A CAS
  ``[expected, new]`` reads the context (linearizably) and, if its value is
  ``expected``, writes ``new`` with ``If-Match`` on the version it read: the
  write only applies if nothing changed in between, so when it applies it is
  an atomic value-CAS at its commit point.
- ``list-append``: appends of unique values as session turns, and reads of
  whole sessions.
- ``chat``: chat completions into sessions (``/v1/chat/completions`` with
  the real model), each with its own idempotency key and retried with that
  key when an attempt fails or times out; reads list the sessions' user
  turns. The user messages are unique values, so the list-append checker
  applies to them; ``checkers/chat.py`` checks the rest (a reply per
  message, exactly once, from fresh enough context).

Each key lives in a namespace of its own (``namespace_of``): a linearizable
read of one namespace skips the committed entries of the others that its node
has not applied yet (``RaftNode.last_entry_for``), so the checkers see whether
what it skips could ever change what it returns.

Outcome classes follow Jepsen: ``ok`` happened, ``fail`` certainly did not
(4xx, or 503 with ``"applied": "no"``), ``info`` may have (timeouts, dropped
connections, 503 with ``"applied": "unknown"``). Reads change nothing, so a
read that did not complete is a ``fail``. After an ``info`` the worker takes
a new process id, because its old operation may still be in flight.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import httpx

NAMESPACE = "jepsen"


def namespace_of(key: str) -> str:
    """The namespace ``key`` lives in: one per key."""
    return f"{NAMESPACE}-{key}"


def _context_path(key: str) -> str:
    return f"/v1/namespaces/{namespace_of(key)}/contexts/{key}"


class Outcome(Exception):
    """How an operation ended when it did not end ``ok``."""

    def __init__(self, kind: str, error: str) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error


def _classify(response: httpx.Response) -> Outcome:
    body: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        pass
    message = f"{response.status_code} {body.get('message', response.text[:200])}"
    if response.status_code == 503 and body.get("applied") == "unknown":
        return Outcome("info", message)
    return Outcome("fail", message)


@dataclass
class Operation:
    f: str
    key: str
    value: Any


class RegisterWorkload:
    name = "register"

    def __init__(self, keys: int = 5, values: int = 5) -> None:
        self.keys = [f"r{k}" for k in range(keys)]
        self.values = values

    def next_op(self, rng: random.Random) -> Operation:
        key = rng.choice(self.keys)
        roll = rng.random()
        if roll < 0.4:
            return Operation("read", key, None)
        if roll < 0.8:
            return Operation("write", key, rng.randrange(self.values))
        return Operation("cas", key, [rng.randrange(self.values), rng.randrange(self.values)])

    def execute(self, http: httpx.Client, op: Operation) -> Any:
        path = _context_path(op.key)
        if op.f == "read":
            value, _ = self._read(http, path)
            return value
        if op.f == "write":
            self._write(http, path, op.value, None)
            return op.value
        expected, new = op.value
        current, version = self._read(http, path)
        if current != expected:
            raise Outcome("fail", f"value is {current}, not {expected}")
        self._write(http, path, new, version)
        return op.value

    def final_read(self, http: httpx.Client, key: str) -> int | None:
        response = http.get(f"{_context_path(key)}?consistency=stale")
        return int(response.json()["facts"][0]) if response.status_code == 200 else None

    @staticmethod
    def _read(http: httpx.Client, path: str) -> tuple[int | None, int]:
        response = _request(http, "GET", path, read=True)
        if response.status_code == 404:
            return None, 0
        if response.status_code != 200:
            raise Outcome("fail", _classify(response).error)
        body = response.json()
        return int(body["facts"][0]), int(body["version"])

    @staticmethod
    def _write(http: httpx.Client, path: str, value: int, version: int | None) -> None:
        headers = {"If-Match": str(version)} if version is not None else {}
        response = _request(http, "PUT", path, json={"kind": "memory", "facts": [str(value)]}, headers=headers)
        if response.status_code not in (200, 201):
            raise _classify(response)


class ListAppendWorkload:
    name = "list-append"

    def __init__(self, keys: int = 5) -> None:
        self.keys = [f"s{k}" for k in range(keys)]
        self._values = itertools.count(1)

    def next_op(self, rng: random.Random) -> Operation:
        key = rng.choice(self.keys)
        if rng.random() < 0.5:
            return Operation("read", key, None)
        return Operation("append", key, next(self._values))

    def execute(self, http: httpx.Client, op: Operation) -> Any:
        path = _context_path(op.key)
        if op.f == "read":
            return self.read(http, path)
        response = _request(
            http,
            "POST",
            f"/v1/namespaces/{namespace_of(op.key)}/sessions/{op.key}/turns",
            json={"role": "user", "content": str(op.value)},
        )
        if response.status_code != 200:
            raise _classify(response)
        return op.value

    @staticmethod
    def read(http: httpx.Client, path: str, consistency: str = "linearizable") -> list[int]:
        return [int(turn["content"]) for turn in _session_turns(http, path, consistency)]

    def final_read(self, http: httpx.Client, key: str) -> list[int]:
        return self.read(http, _context_path(key), consistency="stale")


class ChatWorkload:
    name = "chat"
    ATTEMPTS = 3
    TIMEOUT_S = 20.0  # a cold prompt on a busy 2-core machine takes seconds

    def __init__(self, keys: int = 4) -> None:
        self.keys = [f"c{k}" for k in range(keys)]
        self._values = itertools.count(1)
        self._model: str | None = None

    def next_op(self, rng: random.Random) -> Operation:
        key = rng.choice(self.keys)
        if rng.random() < 0.3:
            return Operation("read", key, None)
        return Operation("chat", key, next(self._values))

    def execute(self, http: httpx.Client, op: Operation) -> Any:
        if op.f == "read":
            return self.messages(_session_turns(http, _context_path(op.key), "linearizable"))
        body = {
            "model": self._model_name(http),
            "max_tokens": 4,
            "temperature": 0,
            "namespace": namespace_of(op.key),
            "session_id": op.key,
            "messages": [{"role": "user", "content": f"message {op.value}"}],
        }
        maybe_applied = False
        for _ in range(self.ATTEMPTS):  # the same key every time: a retry must never add a second turn
            try:
                response = http.post(
                    "/v1/chat/completions",
                    json=body,
                    timeout=self.TIMEOUT_S,
                    headers={"Idempotency-Key": f"jepsen-{op.value}"},
                )
            except httpx.ConnectError:
                continue
            except httpx.HTTPError:
                maybe_applied = True
                continue
            if response.status_code == 200:
                return op.value
            if response.status_code != 503:
                raise Outcome("fail", _classify(response).error)
            maybe_applied = True  # the worker may have appended before it was lost
        raise Outcome("info" if maybe_applied else "fail", f"no attempt of chat {op.value} completed")

    @staticmethod
    def messages(turns: list[dict[str, Any]]) -> list[int]:
        """A session's chat messages as the unique values their requests sent ("message 17" -> 17)."""
        return [int(turn["content"].split()[-1]) for turn in turns if turn["role"] == "user"]

    def _model_name(self, http: httpx.Client) -> str:
        if self._model is None:
            response = _request(http, "GET", "/v1/models", read=True)
            models = response.json().get("data", []) if response.status_code == 200 else []
            if not models:
                raise Outcome("fail", "no model served yet")
            self._model = models[0]["id"]
        return self._model

    def final_read(self, http: httpx.Client, key: str) -> list[dict[str, Any]]:
        return _session_turns(http, _context_path(key), "stale")


def _session_turns(http: httpx.Client, path: str, consistency: str) -> list[dict[str, Any]]:
    response = _request(http, "GET", f"{path}?consistency={consistency}", read=True)
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise Outcome("fail", _classify(response).error)
    return response.json()["turns"]


def _request(http: httpx.Client, method: str, path: str, read: bool = False, **kwargs: Any) -> httpx.Response:
    """One HTTP call; transport errors become ``fail`` for reads and ``info`` for writes."""
    try:
        return http.request(method, path, **kwargs)
    except httpx.ConnectError as error:
        raise Outcome("fail", f"connect: {error}") from None  # never reached the node
    except httpx.HTTPError as error:
        raise Outcome("fail" if read else "info", f"{type(error).__name__}: {error}") from None


WORKLOADS = {"register": RegisterWorkload, "list-append": ListAppendWorkload, "chat": ChatWorkload}
