"""The autoscaling policy's properties: bounds, no flapping under a steady load, a prompt scale-up after
a step, and hysteresis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.inference.autoscale_policy import Autoscaler, Observation, ScalePolicy

policies = st.builds(
    ScalePolicy,
    min_workers=st.integers(0, 3),
    max_workers=st.integers(3, 8),
    target_per_slot=st.sampled_from([0.8, 1.0, 2.0]),
    scale_down_below=st.sampled_from([0.1, 0.3]),
    cooldown_s=st.sampled_from([0.0, 5.0, 15.0]),
    window=st.integers(1, 6),
)


def _run(
    policy: ScalePolicy, demands: list[float], slots_per_worker: int = 1, start_workers: int = 1, interval: float = 1.0
) -> list[int]:
    """Feed the policy, letting the worker count follow its decisions at once (an ideal provisioner)."""
    scaler = Autoscaler(policy)
    workers, counts = start_workers, []
    for second, demand in enumerate(demands):
        decision = scaler.observe(Observation(second * interval, workers, workers * slots_per_worker, demand))
        assert policy.min_workers <= decision.desired <= policy.max_workers or decision.reason != "bounds"
        workers = decision.desired
        counts.append(workers)
    return counts


@settings(max_examples=400)
@given(policy=policies, demand=st.floats(0, 40), start=st.integers(0, 8), slots=st.integers(1, 4))
def test_a_steady_load_settles_without_flapping(policy: ScalePolicy, demand: float, start: int, slots: int) -> None:
    counts = _run(policy, [demand] * 200, slots, start)
    directions = [1 if b > a else -1 for a, b in itertools.pairwise(counts) if b != a]
    reversals = sum(1 for a, b in itertools.pairwise(directions) if a != b)
    assert reversals <= 1, counts[:80]  # at most: a correction into the bounds, then the load's direction
    assert len(set(counts[-50:])) == 1  # settled
    assert policy.min_workers <= counts[-1] <= policy.max_workers
    if demand > 0:
        assert counts[-1] >= 1


@settings(max_examples=300)
@given(policy=policies, slots=st.integers(1, 4), low=st.floats(0, 0.2), factor=st.floats(1.5, 6))
def test_a_step_up_scales_up_within_one_cooldown(policy: ScalePolicy, slots: int, low: float, factor: float) -> None:
    settle = 100
    counts = _run(policy, [low] * settle, slots, start_workers=max(policy.min_workers, 1))
    settled = counts[-1]
    if settled >= policy.max_workers:
        return
    step = (settled or 1) * slots * policy.target_per_slot * factor
    after = _run(policy, [low] * settle + [step] * 60, slots, start_workers=max(policy.min_workers, 1))[settle:]
    first_up = next(i for i, count in enumerate(after) if count > settled)
    assert first_up <= max(policy.cooldown_s, policy.window), (first_up, after[:30])


def test_hysteresis_band_holds() -> None:
    policy = ScalePolicy(1, 4, target_per_slot=1.0, scale_down_below=0.3, cooldown_s=0, window=1)
    scaler = Autoscaler(policy)
    for demand in (0.5, 0.9, 1.0, 0.31, 1.0):  # between the thresholds with 1 worker, 1 slot: hold
        assert scaler.observe(Observation(0.0, 1, 1, demand)).reason == "hold"
    assert scaler.observe(Observation(1.0, 1, 1, 3.5)).desired == 4  # straight to ceil(3.5 / 1.0)


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        ScalePolicy(3, 2)
    with pytest.raises(ValueError):
        ScalePolicy(1, 4, target_per_slot=1.0, scale_down_below=0.6)
    assert ScalePolicy.parse_bounds("1:4") == (1, 4)
    with pytest.raises(ValueError):
        ScalePolicy.parse_bounds("4")


def test_kubernetes_provisioner_reads_and_patches_the_deployments_scale() -> None:
    """The request shapes only: there is no Kubernetes API server on this machine."""
    import json

    import httpx

    from mcpdb.ops.provisioning import KubernetesProvisioner

    replicas = {"value": 1}
    seen: list[tuple[str, str, str]] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("content-type", "")))
        if request.method == "PATCH":
            replicas["value"] = json.loads(request.content)["spec"]["replicas"]
        return httpx.Response(200, json={"kind": "Scale", "spec": {"replicas": replicas["value"]}})

    provisioner = KubernetesProvisioner(
        "mcpdb-worker", namespace="ai", api_url="https://api", http=httpx.Client(transport=httpx.MockTransport(api))
    )
    assert provisioner.running() == 1
    assert "replicas to 3" in provisioner.scale_to(3)
    assert provisioner.running() == 3
    path = "/apis/apps/v1/namespaces/ai/deployments/mcpdb-worker/scale"
    assert seen[1] == ("PATCH", path, "application/merge-patch+json") and seen[0][:2] == ("GET", path)


def test_autoscale_benchmark_summary_and_plot(tmp_path) -> None:  # noqa: ANN001
    """The benchmark's arithmetic on a made-up run: step at 10 s, decision at 11 s, serving at 16 s."""
    from benchmarks.autoscale import AutoscaleSettings, offered, plot, rows, summarise

    settings = AutoscaleSettings(phases=AutoscaleSettings.parse_phases("1x10,4x20,0x10"))
    assert [offered(settings.phases, t) for t in (0, 9.9, 10, 29.9, 30, 45)] == [1, 1, 4, 4, 0, 0]
    timeline = [
        {
            "at": float(t),
            "offered": offered(settings.phases, t),
            "running": 1 if t < 11 or t >= 34 else 2,
            "live": 1 if t < 16 or t >= 34 else 2,
            "desired": 1 if t < 11 or t >= 33 else 2,
        }
        for t in range(40)
    ]
    scaled = {
        "bounds": "1:2",
        "timeline": timeline,
        "requests": [{"at": t / 2, "latency_s": 4.0 if 10 <= t / 2 < 16 else 2.0, "status": 200} for t in range(60)],
    }
    fixed = {
        "bounds": "1:1",
        "timeline": timeline,
        "requests": [{"at": t / 2, "latency_s": 4.0 if t / 2 >= 10 else 1.0, "status": 200} for t in range(60)],
    }
    summary = summarise(settings, scaled, fixed)
    assert (summary["scale_up_decision_s"], summary["scale_up_serving_s"]) == (1.0, 6.0)
    assert summary["p95_step_until_serving_s"] == 4.0
    assert (summary["p95_peak_s"], summary["fixed_p95_peak_s"]) == (4.0, 4.0)
    assert summary["scale_down_after_idle_s"] == 4.0 and summary["failed_requests"] == 0
    results = {
        "command": settings.command(),
        "settings": {"phases": settings.phases},
        "summary": summary,
        "autoscaled": scaled,
        "fixed": fixed,
    }
    assert rows(results)[3][3] == "1.00x"
    plot(results, tmp_path / "autoscale.png")
    assert (tmp_path / "autoscale.png").stat().st_size > 10_000


def test_controller_reports_a_failing_provisioner_and_carries_on() -> None:
    import httpx

    from mcpdb.ops.provisioning import KubernetesProvisioner, ScaleController

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"message": "forbidden"})

    class Decisions:
        def autoscale(self) -> dict:
            return {"desired": 2, "reason": "up", "utilisation": 2.0}

    provisioner = KubernetesProvisioner(
        "w", namespace="ns", api_url="https://api", http=httpx.Client(transport=httpx.MockTransport(api))
    )
    controller = ScaleController(Decisions(), provisioner)  # type: ignore[arg-type]
    assert "could not read the worker count: HTTPStatusError" in controller.step()
