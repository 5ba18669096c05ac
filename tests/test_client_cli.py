"""The Python client and the ``mcpdb`` command against real clusters."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcpdb.client import AsyncClient, Client, Conflict, InvalidRequest, NotFound, Unavailable
from mcpdb.ops.localcluster import LocalCluster, free_port

pytestmark = pytest.mark.integration
MEMORY = {"kind": "memory", "facts": ["likes tea"]}


def test_client_round_trip_errors_and_pages(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    with Client(cluster.urls()) as client:
        created = client.put("c", "a", MEMORY)
        assert created["created"] is True
        assert client.get("c", "a")["facts"] == ["likes tea"]
        with pytest.raises(Conflict) as conflict:
            client.put("c", "a", MEMORY, if_version=created["version"] + 50)
        assert conflict.value.current_version == created["version"]
        with pytest.raises(NotFound):
            client.get("c", "missing")
        with pytest.raises(InvalidRequest) as invalid:
            client.put("c", "b", {"kind": "memory", "facts": []})
        assert "facts" in invalid.value.message
        for i in range(25):
            client.put("c", f"p{i:02d}", MEMORY)
        listed = [item["id"] for item in client.iter_contexts("c", prefix="p", page_size=7)]
        assert listed == [f"p{i:02d}" for i in range(25)]
        result = client.batch("c", [{"op": "put", "id": "b1", "context": MEMORY}, {"op": "delete", "id": "a"}])
        assert [r["id"] for r in result["results"]] == ["b1", "a"]


def test_client_fails_over_to_live_nodes(cluster: LocalCluster) -> None:
    dead = cluster.layout.nodes[0]
    cluster.kill(dead.node_id)
    with Client([dead.url, *cluster.urls()[1:]], deadline=20) as client:
        for i in range(5):
            client.put("f", f"k{i}", MEMORY)
            assert client.get("f", f"k{i}")["facts"] == ["likes tea"]


def test_client_retries_503_until_the_quorum_returns(cluster: LocalCluster) -> None:
    survivor, *others = [n.node_id for n in cluster.layout.nodes]
    for node_id in others:
        cluster.kill(node_id)
    with Client([cluster.spec(survivor).url], deadline=2) as client:
        began = time.monotonic()
        with pytest.raises(Unavailable):
            client.get("q", "x")
        assert time.monotonic() - began < 8
    for node_id in others:
        cluster.start(node_id)
    with Client(cluster.urls(), deadline=30) as client:
        client.put("q", "x", MEMORY)  # retried through the election
        assert client.get("q", "x")["facts"] == ["likes tea"]


def test_append_retry_with_the_same_key_adds_one_turn(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    with Client(cluster.urls()) as client:
        first = client.append("s", "chat", "user", "hello", idempotency_key="turn-1")
        again = client.append("s", "chat", "user", "hello", idempotency_key="turn-1")
        assert again["version"] == first["version"] and again["replayed"] is True
        client.append("s", "chat", "assistant", "hi")
        assert [t["content"] for t in client.get("s", "chat")["turns"]] == ["hello", "hi"]


def test_async_client(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster

    async def scenario() -> list[str]:
        async with AsyncClient(cluster.urls()) as client:
            await asyncio.gather(*(client.append("a", "chat", "user", str(i)) for i in range(10)))
            session = await client.get("a", "chat")
            return sorted(t["content"] for t in session["turns"])

    assert asyncio.run(scenario()) == sorted(str(i) for i in range(10))


def _cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mcpdb.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_commands_and_one_line_errors(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = shared_cluster
    env = {"MCPDB_URL": ",".join(cluster.urls()), "COLUMNS": "200"}
    put = _cli(
        "ctx",
        "put",
        "demo",
        "tutor",
        "--kind",
        "instruction",
        "--file",
        "-",
        stdin='{"role": "tutor", "text": "Be clear."}',
        env=env,
    )
    assert put.returncode == 0 and "created demo/tutor" in put.stdout
    got = _cli("ctx", "get", "demo", "tutor", env=env)
    assert got.returncode == 0 and '"role": "tutor"' in got.stdout
    appended = _cli("session", "append", "demo", "s1", "--role", "user", "hello", env=env)
    assert appended.returncode == 0 and "1 turns" in appended.stdout
    listed = _cli("ctx", "ls", "demo", env=env)
    assert "tutor" in listed.stdout and "s1" in listed.stdout
    found = _cli("search", "demo", "be CLEAR", "-k", "3", env=env)
    assert found.returncode == 0 and "tutor" in found.stdout and "instruction" in found.stdout, found.stdout
    status = _cli("status", "--json", env=env)
    assert status.returncode == 0 and '"leader"' in status.stdout
    assert _cli("ctx", "rm", "demo", "tutor", env=env).returncode == 0

    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    for args, expected in (
        (("ctx", "get", "demo", "tutor"), "does not exist"),
        (("ctx", "put", "demo", "x", "--kind", "memory", "--file", str(bad_json)), "not valid JSON"),
        (("ctx", "put", "demo", "x", "--kind", "memory", "--file", str(tmp_path / "nope.json")), "cannot read"),
        (("ctx", "put", "demo", "x", "--kind", "wizard", "--file", str(bad_json)), "unknown kind"),
        (("ctx", "get", "demo", "x", "--url", f"http://127.0.0.1:{free_port()}"), "Connection refused"),
        (("ctx", "get", "demo", "x", "--url", "localhost:1"), "must start with http"),
        (("search", "demo", "tea", "-k", "0"), "-k must be between 1 and 100"),
        (("search", "demo", "tea", "--kind", "session"), "cannot search kind"),
    ):
        result = _cli(*args, env=env)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if text in line:
            return seen
        if process.poll() is not None:
            break
    raise AssertionError(f"did not print {text!r}: {seen}")


def test_up_serves_until_ctrl_c_and_brings_the_data_back(tmp_path: Path) -> None:
    base = free_port()
    while any(_busy(base + offset) for offset in (0, 1, 2, 100, 101, 102)):
        base = free_port()
    args = [
        sys.executable,
        "-m",
        "mcpdb.cli",
        "up",
        "--nodes",
        "3",
        "--data-dir",
        str(tmp_path / "data"),
        "--base-port",
        str(base),
    ]
    env = {**os.environ, "COLUMNS": "200"}
    for attempt in range(2):
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        try:
            printed = _wait_for_line(process, "serving")
            assert f"http://127.0.0.1:{base}" in printed and "leader:" in printed
            with Client([f"http://127.0.0.1:{base + i}" for i in range(3)]) as client:
                if attempt == 0:
                    client.put("up", "kept", MEMORY)
                else:
                    assert client.get("up", "kept")["facts"] == ["likes tea"]
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert not any(_busy(base + offset) for offset in (0, 1, 2))


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
