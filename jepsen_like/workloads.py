"""Workloads: what the clients do through mcpdb's public REST API, and how outcomes are classified.

- ``register``: per-key read, write and compare-and-set on contexts. A
  register's value is stored as a memory context's single fact. A CAS
  ``[expected, new]`` reads the context (linearizably) and, if its value is
  ``expected``, writes ``new`` with ``If-Match`` on the version it read: the
  write only applies if nothing changed in between, so when it applies it is
  an atomic value-CAS at its commit point.
- ``list-append``: appends of unique values as session turns, and reads of
  whole sessions.

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
        path = f"/v1/namespaces/{NAMESPACE}/contexts/{op.key}"
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
        path = f"/v1/namespaces/{NAMESPACE}/contexts/{op.key}"
        if op.f == "read":
            return self.read(http, path)
        response = _request(http, "POST", f"/v1/namespaces/{NAMESPACE}/sessions/{op.key}/turns",
                            json={"role": "user", "content": str(op.value)})
        if response.status_code != 200:
            raise _classify(response)
        return op.value

    @staticmethod
    def read(http: httpx.Client, path: str, consistency: str = "linearizable") -> list[int]:
        response = _request(http, "GET", f"{path}?consistency={consistency}", read=True)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise Outcome("fail", _classify(response).error)
        return [int(turn["content"]) for turn in response.json()["turns"]]


def _request(http: httpx.Client, method: str, path: str, read: bool = False, **kwargs: Any) -> httpx.Response:
    """One HTTP call; transport errors become ``fail`` for reads and ``info`` for writes."""
    try:
        return http.request(method, path, **kwargs)
    except httpx.ConnectError as error:
        raise Outcome("fail", f"connect: {error}") from None  # never reached the node
    except httpx.HTTPError as error:
        raise Outcome("fail" if read else "info", f"{type(error).__name__}: {error}") from None


WORKLOADS = {"register": RegisterWorkload, "list-append": ListAppendWorkload}
