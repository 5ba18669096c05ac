"""The context routes' fast path answers as FastAPI does, on a real cluster.

``PUT /v1/namespaces/{ns}/contexts/{id}`` with no query takes the fast path
(``mcpdb.node.http.fast_context``); the same request with a query the route
does not declare (``?via=fastapi``, which FastAPI ignores) goes through
FastAPI's stack. Each generated request is sent both ways, to two fresh ids,
and the answers must agree in status, body and headers once the ids and
versions are set aside.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcpdb.ops.localcluster import LocalCluster

pytestmark = pytest.mark.integration

_ids = itertools.count()


def _dumps(value: Any) -> bytes:
    """As the standard library writes it: integers past 64 bits and NaN included, which orjson refuses."""
    return json.dumps(value).encode()


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3))
_memory = st.fixed_dictionaries(
    {"kind": st.just("memory"), "facts": st.lists(_text, max_size=3)},
    optional={"user_id": _text | st.none(), "tags": st.lists(_text, max_size=2), "ttl": st.integers(-1, 10**9)},
)
_task = st.fixed_dictionaries(
    {"kind": st.just("task"), "domain": _text, "goal": _text},
    optional={"status": st.sampled_from(["open", "done", "later"]), "data": st.dictionaries(_text, _json, max_size=2)},
)
_session = st.fixed_dictionaries(
    {"kind": st.just("session")},
    optional={
        "turns": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "nobody"]), "content": _text}),
            max_size=2,
        ),
        "user_id": _text,
    },
)
_document = _memory | _task | _session | st.dictionaries(st.sampled_from(["kind", "facts", "rules", "x"]), _json)
_body = (
    _document.map(_dumps)
    | _document.map(lambda doc: _dumps(doc)[:-1])  # cut short: not JSON
    | _json.map(_dumps)
    | st.sampled_from([b"", b"NaN", b'{"kind": "memory", "facts": ["a"]} x', b'{"kind":"memory","facts":["\\ud800"]}'])
    | st.sampled_from([b'{"kind": "memory", "facts": ["big"], "ttl": 1e400}', b'\xff{"kind": "memory"}'])
)
_header = st.sampled_from(
    [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Content-Type", b"APPLICATION/JSON"),
        (b"If-Match", b"0"),
        (b"If-Match", b"1"),
        (b"If-Match", b'"7"'),
        (b"If-Match", b'W/"3"'),
        (b"If-Match", b"abc"),
        (b"If-Match", b""),
        (b"If-Match", b"\xb2"),  # latin-1 "2 superscript": str.isdigit, not int
        (b"If-Match", b"9" * 5000),
        (b"If-None-Match", b"*"),
        (b"If-None-Match", b"**"),
        (b"If-None-Match", b"x"),
    ]
)
_headers = st.lists(_header, max_size=3)  # repeats included: FastAPI then answers


def _comparable(response: httpx.Response, context_id: str) -> tuple[int, Any, dict[str, str]]:
    """Status, body and the headers that matter, with this request's id and any version made neutral."""
    text = response.text.replace(context_id, "ID")
    text = re.sub(r'"version":\d+', '"version":0', text)
    headers = {name: response.headers.get(name, "") for name in ("content-type", "retry-after")}
    headers["etag"] = "yes" if response.headers.get("etag") else ""
    return response.status_code, orjson.loads(text), headers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_body, headers=_headers)
@example(
    body=b'{"kind": "task", "domain": "d", "goal": "g", "data": {"n": 123456789012345678901234567890}}', headers=[]
)
@example(body=b'{"kind": "task", "domain": "d", "goal": "g", "data": {"n": NaN}}', headers=[])
@example(body=b'{"kind": "memory", "facts": ["a"]}', headers=[(b"If-Match", b"\xb2")])
@example(body=b'{"kind": "memory", "facts": ["\\udc00"]}', headers=[])
@example(body=b'{"kind": "memory", "facts": [' + b"[" * 3000 + b"]" * 3000 + b"]}", headers=[])
def test_a_put_is_answered_as_fastapi_answers_it(
    shared_cluster: LocalCluster, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    url = shared_cluster.urls()[0] + "/v1/namespaces/fastput/contexts/"
    number = next(_ids)
    fast_id, reference_id = f"fast-{number}", f"slow-{number}"
    if not any(name == b"Content-Type" for name, _ in headers):
        headers = [(b"Content-Type", b"application/json"), *headers]
    fast = httpx.put(url + fast_id, content=body, headers=headers)
    reference = httpx.put(url + reference_id + "?via=fastapi", content=body, headers=headers)
    assert _comparable(fast, fast_id) == _comparable(reference, reference_id), (body, headers)


def test_what_the_fast_path_wrote_reads_as_fastapis_write(shared_cluster: LocalCluster) -> None:
    url = shared_cluster.urls()[1] + "/v1/namespaces/fastput/contexts/"
    context = {"kind": "memory", "facts": ["the fast path stores what FastAPI stores"], "tags": ["t"], "ttl": 600}
    for context_id, query in (("same-fast", ""), ("same-slow", "?via=fastapi")):
        assert httpx.put(url + context_id + query, json=context).status_code == 201
    fast, slow = (httpx.get(url + context_id).json() for context_id in ("same-fast", "same-slow"))
    for record in (fast, slow):
        for moment in ("version", "created_at", "updated_at", "expires_at", "id"):
            record.pop(moment)
    assert fast == slow


def test_a_body_in_pieces_takes_the_fast_path_whole(shared_cluster: LocalCluster) -> None:
    url = shared_cluster.urls()[2] + "/v1/namespaces/fastput/contexts/chunked"

    def pieces() -> Iterator[bytes]:
        yield b'{"kind": "memory", '
        yield b'"facts": ["sent in two pieces"]}'

    written = httpx.put(url, content=pieces(), headers={"Content-Type": "application/json"})
    assert written.status_code == 201, written.text
    assert httpx.get(url).json()["facts"] == ["sent in two pieces"]
