"""Inference benchmark: mcpdb's chat path against raw llama-cpp-python, and its scheduling policies.

Three measurements, each on fresh real node processes with the bundled model:

- throughput: completion tokens/s through a 1-node mcpdb cluster (HTTP,
  leader assignment, read barrier, streaming) against raw
  llama-cpp-python on the same model, threads, context and prompts,
  measured in the same run in alternating rounds, raw then mcpdb, each
  figure the median of its rounds (never both at once: they would share the
  two cores; one round each drifted by up to 5% between runs, more than the
  gap measured). mcpdb is loaded by two client processes so its single slot
  always has the next request waiting; the anchor is a loop of
  ``create_completion`` calls in a process of its own, kept for all rounds.
- affinity: 8 sessions x 6 turns with ~1,500-token contexts (each session's
  user has a profile and ~1,300 tokens of memories) on a 3-node cluster
  with 3 KV slots per node, turns sent one at a time in turn-major order;
  time to first token measured by the client on the stream, under
  ``affinity`` and under ``round_robin``.
- weighted: a 3-voter cluster whose two workers have real capacity 1:2 and
  are configured so (``--weight 1`` and ``--weight 2``): each runs one
  thread in its own cgroup, limited to half a CPU and to a whole CPU (the
  third voter serves no model). Threads alone cannot make 1:2 on two shared
  cores: a 2-thread node next to a 1-thread node gets far less than twice
  the CPU. Four client processes load it; each node's share of requests and
  the p95 latency, under ``weighted`` and under ``round_robin``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.plots import finish, run_folder, save_run
from benchmarks.stats import percentile
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

THROUGHPUT_TARGET, AFFINITY_TARGET, SHARE_TOLERANCE = 0.98, 5.0, 0.10  # throughput: issue 16
PROMPTS = (
    "Tell me about the sea.",
    "Describe a mountain village.",
    "Explain how bread is made.",
    "Write about an old library.",
    "Describe a train journey.",
    "Tell me about the moon.",
    "Write about a city at night.",
    "Describe a forest in autumn.",
)
NAMESPACE = "bench"
Step = Callable[[str, float], None]


@dataclass
class InferSettings:
    requests: int = 16  # per throughput side
    max_tokens: int = 64
    sessions: int = 8
    turns: int = 6
    weighted_requests: int = 48
    rounds: int = 3  # of the throughput comparison, alternating raw and mcpdb
    out: Path | None = None

    def command(self) -> str:
        line = (
            f"mcpdb bench infer --requests {self.requests} --max-tokens {self.max_tokens} "
            f"--sessions {self.sessions} --turns {self.turns} --weighted-requests {self.weighted_requests} "
            f"--rounds {self.rounds}"
        )
        return line + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return run_folder(self.out)

    def throughput_s(self) -> float:
        """Rough length of the throughput comparison, for the progress bar."""
        return 30 + 40 * self.rounds

    def expected_s(self) -> float:
        return self.throughput_s() + self.sessions * self.turns * 5.0 + 90


# ---------------------------------------------------------------- clients (run in child processes)
def _model_path() -> str:
    from mcpdb.inference.llama_worker import default_model_path

    return default_model_path()


_raw_model: Any = None  # the anchor's model, loaded once in its process and kept for every round


def raw_throughput(prompts: list[str], max_tokens: int, threads: int, n_ctx: int) -> dict[str, float]:
    """The anchor: llama-cpp-python alone, same model, prompt format, threads and batch as a worker."""
    global _raw_model
    from llama_cpp import Llama

    from mcpdb.inference.prompt_format import GemmaFormat

    render = GemmaFormat().render
    if _raw_model is None:
        _raw_model = Llama(
            model_path=_model_path(),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=256,
            verbose=False,
        )
        _raw_model.create_completion(render([{"role": "user", "content": "Warm up."}]), max_tokens=8, temperature=0.0)
    llm = _raw_model
    tokens, started = 0, time.perf_counter()
    for index, prompt in enumerate(prompts):
        text = render([{"role": "user", "content": prompt}])
        out = llm.create_completion(text, max_tokens=max_tokens, temperature=0.0, seed=index, stop=["<end_of_turn>"])
        tokens += out["usage"]["completion_tokens"]
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def chat_requests(url: str, model: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send streamed chat requests one after another; per request: node, TTFT, latency, tokens."""
    results = []
    with httpx.Client(timeout=120) as http:
        for body in bodies:
            started = time.perf_counter()
            first: float | None = None
            final: dict[str, Any] = {}
            with http.stream(
                "POST", url + "/v1/chat/completions", json={**body, "model": model, "stream": True}
            ) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    if "error" in chunk:
                        raise RuntimeError(f"chat failed: {chunk['error']}")
                    if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                        first = time.perf_counter()
                    if chunk.get("usage"):
                        final = chunk
            done = time.perf_counter()
            results.append(
                {
                    "at": started,
                    "node": final["mcpdb"]["node"],
                    "ttft_s": (first or done) - started,
                    "latency_s": done - started,
                    "tokens": final["usage"]["completion_tokens"],
                    "cached": final["usage"]["prompt_tokens_details"]["cached_tokens"],
                    "prompt_tokens": final["usage"]["prompt_tokens"],
                }
            )
    return results


def _in_parallel(url_for: Callable[[int], str], model: str, groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One client process per group of requests, all at once."""
    with ProcessPoolExecutor(len(groups)) as pool:
        futures = [pool.submit(chat_requests, url_for(i), model, group) for i, group in enumerate(groups)]
        return [result for future in futures for result in future.result()]


# ---------------------------------------------------------------- clusters
class CpuQuotas:
    """Node processes in cgroups (v1 ``cpu`` controller) with a CPU quota each: real, unequal capacity
    on one machine. Needs root; the groups are removed on exit."""

    ROOT = Path("/sys/fs/cgroup/cpu")
    PERIOD_US = 100_000

    def __init__(self, cpus: dict[str, float]) -> None:
        self.cpus = cpus
        self.groups = {node: self.ROOT / f"mcpdb-bench-{node}" for node in cpus}

    def __enter__(self) -> CpuQuotas:
        if not (self.ROOT / "cgroup.procs").exists():
            raise RuntimeError(f"the weighted benchmark needs the cgroup v1 cpu controller at {self.ROOT} (and root)")
        for node, group in self.groups.items():
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(int(self.cpus[node] * self.PERIOD_US)))
        return self

    def wrap(self, node_id: str, argv: list[str]) -> list[str]:
        """Join the node's group, then become the node (``exec``), so the quota covers all its threads."""
        if node_id not in self.groups:
            return argv
        return ["sh", "-c", f'echo $$ > {self.groups[node_id] / "cgroup.procs"} && exec "$@"', "sh", *argv]

    def __exit__(self, *exc: object) -> None:
        for group in self.groups.values():
            for _ in range(50):  # the group empties once its processes are reaped
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _cluster(
    folder: Path,
    node_args: list[list[str]],
    common: list[str],
    wrap: Callable[[str, list[str]], list[str]] | None = None,
) -> tuple[LocalCluster, str]:
    layout = ClusterLayout.fresh(len(node_args))
    # Inference alone: no second model to load, nothing embedded in the background beside the chats measured
    # (search and recall are ``mcpdb bench retrieval``'s).
    layout.extra_args = [*common, "--no-embedding"]
    for spec, args in zip(layout.nodes, node_args, strict=True):
        spec.args = args
    cluster = LocalCluster(layout, folder, wrap_command=wrap)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        status = cluster.wait_models(timeout=180)
    except BaseException:
        cluster.stop_all(graceful=False)
        raise
    return cluster, next(info["model"] for info in status.values() if info["state"] == "ready")


# ---------------------------------------------------------------- scenarios
def throughput(settings: InferSettings, root: Path) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.requests)]
    bodies = [
        {"messages": [{"role": "user", "content": p}], "max_tokens": settings.max_tokens, "temperature": 0, "seed": i}
        for i, p in enumerate(prompts)
    ]
    raw_rounds: list[float] = []
    mcpdb_rounds: list[float] = []
    with ProcessPoolExecutor(1) as pool:
        cluster, model = _cluster(root / "throughput", [[]], ["--threads", "2", "--slots", "1", "--n-ctx", "2048"])
        try:
            for _ in range(settings.rounds):
                raw = pool.submit(raw_throughput, prompts, settings.max_tokens, 2, 2048).result()
                raw_rounds.append(raw["tokens"] / raw["seconds"])
                started = time.perf_counter()
                results = _in_parallel(lambda _: cluster.urls()[0], model, [bodies[0::2], bodies[1::2]])
                mcpdb_rounds.append(sum(r["tokens"] for r in results) / (time.perf_counter() - started))
        finally:
            cluster.stop_all(graceful=False)
    mine, anchor = statistics.median(mcpdb_rounds), statistics.median(raw_rounds)
    return {
        "mcpdb_tokens_per_s": mine,
        "raw_tokens_per_s": anchor,
        "ratio": mine / anchor,
        "mcpdb_rounds": mcpdb_rounds,
        "raw_rounds": raw_rounds,
        # Each mcpdb round against the raw round just before it: the spread says how far the median
        # ratio can be trusted (rounds of one side differ by 5-10% here within minutes).
        "round_ratios": [mine / raw for mine, raw in zip(mcpdb_rounds, raw_rounds, strict=True)],
        "tokens_per_round": sum(r["tokens"] for r in results),
        "pass": mine / anchor >= THROUGHPUT_TARGET,
    }


def _seed_sessions(url: str, sessions: int) -> None:
    """A shared instruction; per session a user with a profile and ~1,300 tokens of memories."""
    with httpx.Client(timeout=10) as http:
        http.put(
            f"{url}/v1/namespaces/{NAMESPACE}/contexts/assistant",
            json={"kind": "instruction", "role": "a helpful assistant", "text": "Answer briefly."},
        ).raise_for_status()
        for s in range(sessions):
            user = f"user-{s}"
            http.put(
                f"{url}/v1/namespaces/{NAMESPACE}/contexts/{user}",
                json={
                    "kind": "profile",
                    "name": f"User {s}",
                    "preferences": {"tone": "plain", "language": "English"},
                    "goals": [f"finish project {s}"],
                },
            ).raise_for_status()
            facts = [
                f"{user} noted on day {d} that shipment {s * 100 + d} of part {d * 7 % 13} went to depot "
                f"{(s + d) % 9} and arrived {d % 4 + 1} hours late."
                for d in range(48)
            ]
            http.put(
                f"{url}/v1/namespaces/{NAMESPACE}/contexts/memory-{user}",
                json={"kind": "memory", "user_id": user, "facts": facts},
            ).raise_for_status()


def affinity(settings: InferSettings, root: Path, step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy in ("affinity", "round_robin"):
        step(f"affinity: {policy}", settings.sessions * settings.turns * (1.0 if policy == "affinity" else 4.5))
        cluster, model = _cluster(root / policy, [[], [], []], ["--policy", policy, "--slots", "3", "--n-ctx", "4096"])
        try:
            urls = cluster.urls()
            _seed_sessions(urls[0], settings.sessions)
            bodies = [
                {
                    "messages": [{"role": "user", "content": f"Question {t} for session {s}: what now?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                    "namespace": NAMESPACE,
                    "session_id": f"s{s}",
                    "user_id": f"user-{s}",
                }
                for t in range(settings.turns)
                for s in range(settings.sessions)
            ]
            results = []
            for i, body in enumerate(bodies):  # one at a time: the cache, not the queue, is measured
                results += chat_requests(urls[i % len(urls)], model, [body])
        finally:
            cluster.stop_all(graceful=False)
        # A session's first turn is cold under any policy; what routing changes is the follow-ups.
        out[policy] = {
            "all": _ttft_stats(results),
            "follow_ups": _ttft_stats(results[settings.sessions :]),
            "requests": results,
        }
    for group in ("all", "follow_ups"):
        for stat in ("mean", "p95"):
            out[f"{group}_{stat}_ratio"] = (
                out["round_robin"][group][f"ttft_{stat}_s"] / out["affinity"][group][f"ttft_{stat}_s"]
            )
    out["pass"] = min(out["follow_ups_mean_ratio"], out["follow_ups_p95_ratio"]) >= AFFINITY_TARGET
    return out


def _ttft_stats(results: list[dict[str, Any]]) -> dict[str, float]:
    ttfts = [r["ttft_s"] for r in results]
    return {
        "ttft_mean_s": statistics.fmean(ttfts),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in results),
        "cached_share": sum(r["cached"] for r in results) / sum(r["prompt_tokens"] for r in results),
    }


def weighted(settings: InferSettings, root: Path, step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {}
    weights = {"n1": 1.0, "n2": 2.0}
    cpus = {"n1": 0.5, "n2": 1.0}
    for policy in ("weighted", "round_robin"):
        step(f"weighted: {policy}", 45)
        with CpuQuotas(cpus) as quotas:
            cluster, model = _cluster(
                root / f"w-{policy}",
                [["--weight", "1"], ["--weight", "2"], ["--no-inference"]],
                ["--policy", policy, "--slots", "1", "--n-ctx", "2048", "--threads", "1"],
                quotas.wrap,
            )
            try:
                bodies = [
                    {
                        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        "max_tokens": 24,
                        "temperature": 0,
                        "seed": i,
                    }
                    for i in range(settings.weighted_requests)
                ]
                groups = [bodies[i::4] for i in range(4)]
                results = _in_parallel(lambda i: cluster.urls()[i % 3], model, groups)  # noqa: B023 - runs in this iteration
            finally:
                cluster.stop_all(graceful=False)
        shares = {node: sum(1 for r in results if r["node"] == node) / len(results) for node in weights}
        latencies = [r["latency_s"] for r in results]
        out[policy] = {
            "shares": shares,
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95),
            "requests": results,
        }
    total = sum(weights.values())
    out["capacity_shares"] = {node: weight / total for node, weight in weights.items()}
    out["cpu_quotas"] = cpus
    out["share_error"] = max(
        abs(out["weighted"]["shares"][n] - out["capacity_shares"][n]) / out["capacity_shares"][n] for n in weights
    )
    out["p95_ratio"] = out["round_robin"]["latency_p95_s"] / out["weighted"]["latency_p95_s"]
    out["pass"] = out["share_error"] <= SHARE_TOLERANCE
    return out


def run(settings: InferSettings, step: Step) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mcpdb-bench-infer-") as scratch:
        root = Path(scratch)
        step("throughput: raw vs mcpdb", settings.throughput_s())
        results = {"command": settings.command(), "throughput": throughput(settings, root)}
        results["affinity"] = affinity(settings, root, step)
        results["weighted"] = weighted(settings, root, step)
    return results


# ---------------------------------------------------------------- reporting
def rows(results: dict[str, Any]) -> list[list[str]]:
    t, a, w = results["throughput"], results["affinity"], results["weighted"]
    met = lambda ok: "yes" if ok else "NO"  # noqa: E731
    return [
        [
            "throughput (tokens/s)",
            f"{t['mcpdb_tokens_per_s']:.1f}",
            f"raw {t['raw_tokens_per_s']:.1f}",
            f"{t['ratio']:.2f}x (rounds {min(t['round_ratios']):.2f}-{max(t['round_ratios']):.2f})",
            f">= {THROUGHPUT_TARGET}x",
            met(t["pass"]),
        ],
        *[_ttft_row(a, group, stat) for group in ("follow_ups", "all") for stat in ("mean", "p95")],
        [
            "weighted share n1:n2",
            " : ".join(f"{w['weighted']['shares'][n]:.0%}" for n in ("n1", "n2")),
            "capacity 33% : 67%",
            f"max error {w['share_error']:.0%}",
            f"<= {SHARE_TOLERANCE:.0%}",
            met(w["pass"]),
        ],
        [
            "latency p95 (s)",
            f"weighted {w['weighted']['latency_p95_s']:.2f}",
            f"rr {w['round_robin']['latency_p95_s']:.2f}",
            f"rr/weighted {w['p95_ratio']:.2f}",
            "reported",
            "",
        ],
    ]


def _ttft_row(affinity: dict[str, Any], group: str, stat: str) -> list[str]:
    ratio = affinity[f"{group}_{stat}_ratio"]
    label = "follow-up turns" if group == "follow_ups" else "all turns"
    verdict = ("yes" if ratio >= AFFINITY_TARGET else "NO") if group == "follow_ups" else ""
    return [
        f"TTFT {stat}, {label} (s)",
        f"affinity {affinity['affinity'][group][f'ttft_{stat}_s']:.3f}",
        f"rr {affinity['round_robin'][group][f'ttft_{stat}_s']:.3f}",
        f"{ratio:.1f}x lower",
        f">= {AFFINITY_TARGET:g}x" if group == "follow_ups" else "reported",
        verdict,
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}`",
        "",
        "| metric | mcpdb | anchor | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    t = results["throughput"]
    lines += [
        "",
        "Throughput rounds (tokens/s, in order): raw "
        + ", ".join(f"{x:.1f}" for x in t["raw_rounds"])
        + "; mcpdb "
        + ", ".join(f"{x:.1f}" for x in t["mcpdb_rounds"]),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """TTFT of every request over the run per policy, and requests per node per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ttft, shares) = plt.subplots(1, 2, figsize=(12, 4.2))
    for policy, color in (("affinity", "tab:blue"), ("round_robin", "tab:orange")):
        requests = results["affinity"][policy]["requests"]
        ttft.plot(
            range(1, len(requests) + 1), [r["ttft_s"] for r in requests], "o-", ms=3, lw=0.8, color=color, label=policy
        )
    ttft.set_yscale("log")
    ttft.set_xlabel("request (turn-major: 8 sessions per turn)")
    ttft.set_ylabel("time to first token, s (log)")
    ttft.set_title("8 sessions x 6 turns, ~1,500-token contexts, 3 nodes")
    ttft.legend()
    nodes = ("n1", "n2")
    for offset, (policy, color) in zip(
        (-0.2, 0.2), (("weighted", "tab:green"), ("round_robin", "tab:orange")), strict=True
    ):
        shares.bar(
            [i + offset for i in range(len(nodes))],
            [results["weighted"][policy]["shares"][n] for n in nodes],
            width=0.4,
            color=color,
            label=policy,
        )
    shares.scatter(
        range(len(nodes)),
        [results["weighted"]["capacity_shares"][n] for n in nodes],
        color="black",
        zorder=3,
        label="configured capacity",
    )
    shares.set_xticks(range(len(nodes)), ["n1 (0.5 CPU, weight 1)", "n2 (1 CPU, weight 2)"])
    shares.set_ylabel("share of requests")
    shares.set_title("load per node")
    shares.legend()
    finish(fig, path, results["command"])


def save(results: dict[str, Any], folder: Path) -> None:
    save_run(folder, results, markdown(results), plot, "infer.png")
