"""Autoscaling on real processes: store-only voters decide, worker replicas with the model are started
under load and drained and stopped after it, and no request fails on the way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from mcpdb.client import Client
from mcpdb.ops.provisioning import LocalProvisioner, ScaleController
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration


def _chat(url: str, model: str, max_tokens: int) -> int:
    response = httpx.post(
        url + "/v1/chat/completions",
        timeout=120,
        json={
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to a hundred."}],
        },
    )
    return response.status_code


def test_workers_follow_the_load_and_leave_after_draining(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, extra_args=["--autoscale", "1:2", "--autoscale-cooldown", "3"])
    provisioner = LocalProvisioner(cluster, ["--inference", "--threads", "1"])
    stop = threading.Event()
    try:
        voters = cluster.urls()
        with Client(voters, deadline=10) as client:
            controller = ScaleController(client, provisioner)

            def control() -> None:
                while not stop.wait(0.5):
                    controller.step()

            threading.Thread(target=control, daemon=True).start()

            deadline = time.monotonic() + 90
            while not client.models():  # the first worker (min 1) starts and loads the model
                assert time.monotonic() < deadline, "no worker came up"
                time.sleep(0.5)
            model = client.models()[0]
            assert provisioner.workers() == ["w1"]

            statuses: list[int] = []
            load_stop = threading.Event()

            def load() -> None:
                while not load_stop.is_set():
                    statuses.append(_chat(voters[0], model, 24))

            clients = [threading.Thread(target=load) for _ in range(4)]
            for thread in clients:
                thread.start()
            deadline = time.monotonic() + 90
            while len(provisioner.workers()) < 2 or client.autoscale()["workers"] < 2:
                assert time.monotonic() < deadline, f"did not scale up: {client.autoscale()}"
                time.sleep(0.5)
            serving: set[str] = set()
            while serving < {"w1", "w2"} and time.monotonic() < deadline:  # the new worker takes work too
                serving |= {node["id"] for node in client.overview()["nodes"] if (node.get("tokens_per_s") or 0) > 0}
                time.sleep(0.5)
            assert serving >= {"w1", "w2"}, serving

            # A long generation on the newest worker while the load stops: scale-down drains it first.
            load_stop.set()
            for thread in clients:
                thread.join()
            long_status: list[int] = []
            newest = cluster.spec("w2").url
            long_call = threading.Thread(target=lambda: long_status.append(_chat(newest, model, 96)))
            long_call.start()
            deadline = time.monotonic() + 90
            while provisioner.workers() != ["w1"]:
                assert time.monotonic() < deadline, f"did not scale down: {client.autoscale()}"
                time.sleep(0.5)
            long_call.join(timeout=60)
            assert long_status == [200]
            assert statuses and set(statuses) == {200}, sorted(set(statuses))
            assert {n["id"] for n in httpx.get(voters[0] + "/v1/cluster").json()["nodes"]} == {
                "n1",
                "n2",
                "n3",
                "w1",
            }  # the drained worker left the registry
            while client.autoscale()["workers"] != 1:  # the leader observes once a second
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.autoscale()["desired"] == 1
            leader = client.autoscale()["leader"]
            metrics = httpx.get(cluster.spec(leader).url + "/metrics").text
            assert "mcpdb_autoscale_desired_workers 1.0" in metrics
            assert "mcpdb_autoscale_live_workers 1.0" in metrics
    finally:
        stop.set()
        cluster.stop_all(graceful=False)
