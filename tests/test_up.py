"""``mcpdb up`` with a bootstrap token, as a newcomer runs it: the real command, its output in a pipe
at 80 columns, real node processes behind it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcpdb.client import Client
from mcpdb.ops.localcluster import free_port
from tests.test_client_cli import _busy, _wait_for_line

pytestmark = pytest.mark.integration
TOKEN = "up-test-bootstrap-token"


def _node_pids(data_dir: Path) -> list[int]:
    """Processes whose command line names ``data_dir``: the nodes ``mcpdb up`` started there."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(data_dir) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue  # exited while we looked
    return pids


def _free_base() -> int:
    base = free_port()
    while any(_busy(base + offset) for offset in (0, 1, 2, 100, 101, 102)):
        base = free_port()
    return base


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Holds the ``mcpdb up`` processes a test starts; kills them and their nodes at teardown, pass or fail
    (the nodes run in sessions of their own, so ending ``up``'s group alone would leave them)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in _node_pids(tmp_path):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone meanwhile


def _up(run_up: list[subprocess.Popen[str]], args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mcpdb.cli", "up", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "COLUMNS": "80"},
        start_new_session=True,
    )
    run_up.append(process)
    return process


def _assert_token_required(url: str) -> None:
    assert httpx.get(f"{url}/v1/node", timeout=5).status_code == 401
    assert httpx.get(f"{url}/v1/node", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200


def _assert_urls_whole(printed: str, base: int, nodes: int) -> None:
    for i in range(nodes):
        assert re.search(rf"(?m)^\s*n{i + 1}\s+http://127\.0\.0\.1:{base + i}$", printed), printed


def _stop_with_ctrl_c(process: subprocess.Popen[str], data_dir: Path) -> str:
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "stopped" in rest
    assert _node_pids(data_dir) == []
    return rest


def test_up_with_mcpdb_token_serves_the_demo_and_prints_whole_urls(
    tmp_path: Path, run_up: list[subprocess.Popen[str]]
) -> None:
    base, data_dir = _free_base(), tmp_path / "data"
    process = _up(
        run_up,
        ["--nodes", "3", "--data-dir", str(data_dir), "--base-port", str(base), "--demo"],
        {**os.environ, "MCPDB_TOKEN": TOKEN},
    )
    printed = _wait_for_line(process, "serving", timeout=150)
    _assert_urls_whole(printed, base, 3)
    assert "the session now holds 6 turns" in printed  # the demo ran with the token
    assert "every node requires the token in MCPDB_TOKEN" in printed
    urls = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    for url in urls:
        _assert_token_required(url)
    with Client(urls, token=TOKEN) as client:
        client.put("up", "kept", {"kind": "memory", "facts": ["likes tea"]})
    _stop_with_ctrl_c(process, data_dir)


def test_up_with_a_token_file_autoscales_and_never_prints_the_secret(
    tmp_path: Path, run_up: list[subprocess.Popen[str]]
) -> None:
    base, data_dir = _free_base(), tmp_path / "data"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {key: value for key, value in os.environ.items() if key != "MCPDB_TOKEN"}
    process = _up(
        run_up,
        [
            "--nodes",
            "1",
            "--data-dir",
            str(data_dir),
            "--base-port",
            str(base),
            "--token-file",
            str(token_file),
            "--autoscale",
            "1:1",
        ],
        env,
    )
    # The controller reads the leader's decision with the token, then starts the worker.
    printed = _wait_for_line(process, "started w1", timeout=60)
    _assert_urls_whole(printed, base, 1)
    assert f'export MCPDB_TOKEN="$(head -n1 {token_file})"' in printed
    _assert_token_required(f"http://127.0.0.1:{base}")
    rest = _stop_with_ctrl_c(process, data_dir)
    assert TOKEN not in printed + rest


def test_up_with_an_unreadable_token_file_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcpdb.cli",
            "up",
            "--data-dir",
            str(tmp_path / "data"),
            "--token-file",
            str(tmp_path / "missing"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"cannot read {tmp_path / 'missing'}" in result.stderr
    assert "Traceback" not in result.stderr
