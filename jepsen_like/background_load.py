"""A bulk load in a namespace no client reads, beside the workloads (``--background-load``).

Its batches are applied in steps over several ticks of each node's Raft thread, so the clients' reads
of their own namespaces meet committed entries of another namespace not yet applied: those a read of
one namespace skips (``RaftNode.last_entry_for``). Under faults the checkers then judge that skipping.
Outcomes are not recorded: nothing reads this namespace, and a failed batch is simply the next one.
"""

from __future__ import annotations

import threading

import httpx
import orjson

NAMESPACE = "jepsen-load"
RECORDS = 200  # a batch of 200 KiB: applied in a few of the Raft thread's steps
FACT = "background load " * 64  # 1 KiB
PAUSE_S = 0.05  # between batches: the load must not starve the clients of the two cores


class BackgroundLoad:
    """One thread posting the same batch of ``RECORDS`` 1 KiB contexts to the nodes in turn."""

    def __init__(self, urls: list[str], token: str, timeout: float) -> None:
        self._urls = urls
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)
        self.acknowledged = 0  # batches

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._timeout + 5)

    def _run(self) -> None:
        ops = [{"op": "put", "id": f"b{n}", "context": {"kind": "memory", "facts": [FACT]}} for n in range(RECORDS)]
        body = orjson.dumps({"ops": ops})
        turn = 0
        with httpx.Client(timeout=self._timeout) as http:
            while not self._stop.wait(PAUSE_S):
                url = self._urls[turn % len(self._urls)]
                turn += 1
                try:
                    response = http.post(f"{url}/v1/namespaces/{NAMESPACE}/batch", content=body, headers=self._headers)
                except httpx.HTTPError:
                    continue
                self.acknowledged += response.status_code == 200
