"""Scale benchmark (issue 14): N 1 KiB memory contexts in a 3-node mcpdb cluster beside etcd 3.4
holding N 1 KiB keys, in one run, while a probe writes one key and linearizably reads it every 20 ms.

Each system runs the same scenario in turn; only one cluster is up at a
time (at a million records each needs gigabytes of disk and memory, and
both would share the two cores):

1. idle: the probe alone, a baseline;
2. load: N records in batches (mcpdb: the batch API, one log entry per
   batch; etcd: a txn of puts) from ``--loaders`` client processes, round robin
   over the members; mcpdb's memories belong to N/10 users, all in one
   namespace;
3. compaction: every mcpdb node is told to snapshot now (``POST
   /v1/node/snapshot``) if the nodes have that endpoint. Otherwise, and for
   etcd (which has no such API), the phase lasts until every member has
   compacted by count, driven by the probe's writes. etcd runs with a
   ``--snapshot-count`` low enough that it also snapshots a few times during
   the load; mcpdb gets the same ``--compaction-entries``, a floor for it (a
   snapshot is due past it only once the journal also holds half as many
   entries as the store has records, see ``_compact_when_large``), so during
   the load it compacts by journal bytes, as it would in production;
4. catch-up: a follower is stopped, its data wiped and the member restarted,
   timed until its applied index reaches the leader's commit index (etcd
   takes a wiped member back only as a new member: removed and re-added);
5. restart: every member stopped (SIGTERM) and started again, timed until a
   linearizable write and a read of it succeed.

The probe runs in its own process, open loop (a new write-then-read every
20 ms whatever happened to the earlier ones, so a stall shows in every tick
it covers, not as one long wait), and only sends to the members meant to
be up; the phases' windows are end to end, so none of its operations falls
outside them. A monitor thread reads every member's status four times a
second: leader changes (the leader a member names changing), compactions
(mcpdb: its Raft log's first index moving; etcd: its snapshot counter),
seen the same way for both and across restarts (a restarted member's own
counters, such as /metrics' leader changes, start again from zero).
Disk (allocated blocks of each data directory), data size (mcpdb: the LMDB
environment's ``size_bytes``; etcd: ``dbSizeInUse``) and RSS (VmRSS,
RssAnon, RssFile from /proc) are read at the end of each phase.

Chat gather cost: after the run, with the nodes stopped, node n1's store is
opened in this process and ``gather()`` (what a chat reads before it
assembles the prompt) is timed for one user who has a profile, a session
and a few memories, in the loaded namespace (N other users' memories)
against a namespace holding only that user's contexts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import queue
import random
import shutil
import statistics
import string
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from benchmarks import compare, plots
from benchmarks.compare import ratio, relative, row
from benchmarks.etcd_cluster import b64
from benchmarks.stats import percentile
from benchmarks.systems import Etcd, Mcpdb
from mcpdb.ops.localcluster import LocalCluster

INSTALL = "apt-get update && apt-get install -y etcd-server etcd-client"
# The loaded namespace, one holding only the chat user's contexts, and the probe's (not to add to what gather reads).
NS, EMPTY_NS, PROBE_NS = "scale", "scale-empty", "scale-probe"
PROBE_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 10.0
SLOW_S = 0.25  # a probe operation slower than this is a stall (issue 14)
P99_TARGET, DISK_TARGET, GATHER_TARGET = 1.5, 2.5, 1.2
JUDGED = ("load", "compaction", "catch-up")  # phases the stall, leader-change and p99 targets apply to
PHASES = ("idle", *JUDGED, "restart")
MONITOR_PERIOD_S = 0.25
GATHER_BUDGET_S = 60.0  # timed gather() calls per namespace stop after this long (at least 3 are made)
LOAD_ATTEMPTS = 5
VALUE_BYTES = 1024
START_S = 6.0  # rough seconds to start a cluster (progress only)
# Contexts of one chat user, in the loaded namespace and in an otherwise empty one.
CHAT_USER, CHAT_SESSION = "u-chat", "s-chat"
CHAT_MESSAGE = "which city do I like?"  # the chat's new message, which ranks its memories
CHAT_CONTEXTS: list[tuple[str, dict[str, Any]]] = [
    (CHAT_USER, {"kind": "profile", "name": "Chat User", "goals": ["plan a trip"]}),
    (
        CHAT_SESSION,
        {
            "kind": "session",
            "user_id": CHAT_USER,
            "turns": [{"role": r, "content": f"turn {i}"} for i, r in enumerate(("user", "assistant") * 2)],
        },
    ),
    ("chat-instruction", {"kind": "instruction", "role": "travel agent", "text": "Answer briefly."}),
    ("chat-guardrail", {"kind": "guardrail", "rules": ["no medical advice"]}),
    *[(f"chat-memory-{k}", {"kind": "memory", "user_id": CHAT_USER, "facts": [f"likes city {k}"]}) for k in range(5)],
]

Step = Callable[[str, float], None]
Request = tuple[str, str, Any]  # method, path, JSON body (None: no body)

_FILLER = "".join(random.Random(14).choices(string.ascii_letters + string.digits + " ", k=4 * VALUE_BYTES))
_OPAQUE = _FILLER.replace(" ", "x")


@dataclass
class ScaleSettings:
    contexts: int = 1_000_000
    batch: int = 500
    loaders: int = 3
    compaction_entries: int = 0  # 0: contexts // batch // 2, at least 100
    phase_s: float = 10.0
    gather_runs: int = 30
    out: Path | None = None  # None: benchmarks/runs/<timestamp>
    # "words": text a search indexes (~11 terms a record, ~9 of them shared by every record); "opaque": one
    # 1 KiB token that no index holds, the bytes etcd stores: the store's own cost, without the search's.
    values: str = "words"

    def command(self) -> str:
        """The command line that repeats this run."""
        line = (
            f"mcpdb bench scale --contexts {self.contexts} --batch {self.batch} --loaders {self.loaders} "
            f"--compaction-entries {self.compaction_entries} --phase-seconds {self.phase_s:g} "
            f"--gather-runs {self.gather_runs}"
        ) + (f" --values {self.values}" if self.values != "words" else "")
        return line + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return plots.run_folder(self.out)

    def snapshot_entries(self) -> int:
        """Log entries between compactions, for mcpdb and etcd alike: a few during the load."""
        return self.compaction_entries or max(100, self.contexts // self.batch // 2)

    def users(self) -> int:
        return max(1, self.contexts // 10)

    def expected_s(self) -> float:
        """Rough length of the whole run, for the progress bar."""
        compaction_s = self.snapshot_entries() * PROBE_INTERVAL_S
        per_system = START_S + 4 * self.phase_s + self.contexts / 8000 + compaction_s + self.contexts / 20000 + 8
        return 2 * per_system + self.contexts / 20000 + 5


def missing_tools() -> list[str]:
    return [] if shutil.which("etcd") else ["etcd"]


def require_tools() -> None:
    if missing_tools():
        raise RuntimeError(f"etcd not installed; as root: {INSTALL}")


# ---------------------------------------------------------------- what goes over the wire
def record_id(i: int) -> str:
    return f"m{i:09d}"


def value(i: int, values: str = "words") -> str:
    """1 KiB, different for every record (no store here compresses, but none gets a repeated value):
    ``ScaleSettings.values`` says which."""
    at = i % (len(_FILLER) - VALUE_BYTES)
    if values == "opaque":  # one word longer than the index's longest term: nothing to index
        return f"x{i:09d}" + _OPAQUE[at : at + VALUE_BYTES - 10]
    return f"{i:09d} " + _FILLER[at : at + VALUE_BYTES - 10]


class McpdbWire:
    """mcpdb's requests: memory contexts through the batch API; the probe's one context."""

    @staticmethod
    def batch(ids: Iterable[int], users: int, values: str) -> Request:
        ops = [
            {
                "op": "put",
                "id": record_id(i),
                "context": {"kind": "memory", "user_id": f"u{i % users}", "facts": [value(i, values)]},
            }
            for i in ids
        ]
        return "POST", f"/v1/namespaces/{NS}/batch", {"ops": ops}

    @staticmethod
    def write(key: str, text: str) -> Request:
        return "PUT", f"/v1/namespaces/{PROBE_NS}/contexts/{key}", {"kind": "memory", "facts": [text]}

    @staticmethod
    def read(key: str) -> Request:
        return "GET", f"/v1/namespaces/{PROBE_NS}/contexts/{key}", None  # linearizable by default


class EtcdWire:
    """etcd's requests through its JSON gateway: a txn of puts per batch; put and (linearizable) range."""

    @staticmethod
    def batch(ids: Iterable[int], users: int, values: str) -> Request:
        puts = [{"requestPut": {"key": b64(record_id(i)), "value": b64(value(i, values))}} for i in ids]
        return "POST", "/v3/kv/txn", {"success": puts}

    @staticmethod
    def write(key: str, text: str) -> Request:
        return "POST", "/v3/kv/put", {"key": b64(key), "value": b64(text)}

    @staticmethod
    def read(key: str) -> Request:
        return "POST", "/v3/kv/range", {"key": b64(key)}


WIRES: dict[str, type[McpdbWire] | type[EtcdWire]] = {"mcpdb": McpdbWire, "etcd": EtcdWire}


def _ok(status: int | str) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def _failure(error: httpx.HTTPError) -> str:
    """What the records say in place of a status when a request got none."""
    return "timeout" if isinstance(error, httpx.TimeoutException) else type(error).__name__


def _send(http: httpx.Client, url: str, request: Request) -> int | str:
    """The status of one request, or the failure that took its place."""
    method, path, body = request
    try:
        return http.request(method, url + path, json=body).status_code
    except httpx.HTTPError as error:
        return _failure(error)


# ---------------------------------------------------------------- load (client processes)
def _load_share(
    system: str,
    urls: list[str],
    first: int,
    last: int,
    batch: int,
    users: int,
    offset: int,
    headers: dict[str, str],
    values: str,
) -> Any:
    """One loader process: records [first, last) in batches, round robin over ``urls``, each batch
    retried on failure (every answer is counted); its own start and end, so spawning is not timed."""
    wire = WIRES[system]
    statuses: Counter[str] = Counter()
    acknowledged = 0
    started = time.time()
    with httpx.Client(timeout=60, headers=headers) as http:
        for n, start in enumerate(range(first, last, batch)):
            ids = range(start, min(start + batch, last))
            method, path, body = wire.batch(ids, users, values)
            content = json.dumps(body).encode()
            for attempt in range(LOAD_ATTEMPTS):
                url = urls[(offset + n + attempt) % len(urls)]
                try:
                    status: int | str = http.request(
                        method, url + path, content=content, headers={"content-type": "application/json"}
                    ).status_code
                except httpx.HTTPError as error:
                    status = _failure(error)
                statuses[str(status)] += 1
                if _ok(status):
                    acknowledged += len(ids)
                    break
                time.sleep(0.2 * (attempt + 1))
    return {"acknowledged": acknowledged, "statuses": dict(statuses), "started": started, "ended": time.time()}


# ---------------------------------------------------------------- the probe (its own process)
def _probe_main(system: str, urls: list[str], control: Any, out: Any) -> None:
    asyncio.run(_probe(system, urls, control, out))


async def _probe(system: str, urls: list[str], control: Any, out: Any) -> None:
    """Every PROBE_INTERVAL_S a write of the probe key then a linearizable read of it, through the
    next of ``urls`` (changed by messages on ``control``; None stops). Puts every operation on ``out``
    as (wall time sent, op, seconds, status)."""
    wire = WIRES[system]
    records: list[tuple[float, str, float, int | str]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)

    async def tick(http: httpx.AsyncClient, url: str, n: int) -> None:
        for op, (method, path, body) in (("write", wire.write("probe", f"probe {n}")), ("read", wire.read("probe"))):
            sent, began = time.time(), time.perf_counter()
            try:
                status: int | str = (await http.request(method, url + path, json=body)).status_code
            except httpx.HTTPError as error:
                status = _failure(error)
            records.append((sent, op, time.perf_counter() - began, status))

    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, limits=limits) as http:
        out.put("ready")
        running: set[asyncio.Task[None]] = set()
        due = time.monotonic()
        for n in itertools.count():
            try:
                message = control.get_nowait()
            except queue.Empty:
                pass
            else:
                if message is None:
                    break
                urls = message
            task = asyncio.create_task(tick(http, urls[n % len(urls)], n))
            running.add(task)
            task.add_done_callback(running.discard)
            due = max(due + PROBE_INTERVAL_S, time.monotonic())  # behind: skip ticks rather than burst
            await asyncio.sleep(due - time.monotonic())
        if running:  # operations in flight are part of the record (a stall at the end too)
            await asyncio.wait(running, timeout=2 * PROBE_TIMEOUT_S + 1)
    out.put(records)


class Probe:
    """The probe process of one system, aimed at the members meant to be up."""

    def __init__(self, system: str, urls: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._control = context.Queue()
        self._out = context.Queue()
        self._process = context.Process(target=_probe_main, args=(system, urls, self._control, self._out), daemon=True)
        self._process.start()
        try:
            self._out.get(timeout=60)  # "ready"
        except queue.Empty:
            self._process.terminate()
            raise RuntimeError("the probe process did not start within 60 s") from None

    def aim(self, urls: list[str]) -> None:
        self._control.put(urls)

    def stop(self) -> list[tuple[float, str, float, int | str]]:
        """Every operation it made (wall time sent, op, seconds, status)."""
        try:
            self._control.put(None)
            records: list[tuple[float, str, float, int | str]] = self._out.get(timeout=3 * PROBE_TIMEOUT_S)
            self._process.join(10)
            return records
        finally:
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)


# ---------------------------------------------------------------- the two systems
@dataclass
class MemberStatus:
    term: int
    leader: str | None  # as the member names it (mcpdb: Raft address; etcd: member id)
    applied: int
    commit: int
    compactions: int  # moves when the member compacts: mcpdb its log's first index, etcd its snapshot count
    data_bytes: int  # mcpdb: LMDB size_bytes; etcd: dbSizeInUse


class ScaleSystem(Protocol):
    name: str
    flags: list[str]  # what the members were started with beyond the defaults

    def urls(self) -> list[str]: ...
    def url(self, member: str) -> str: ...
    def leader(self) -> str: ...
    def members(self) -> list[str]: ...
    def status(self, http: httpx.Client, member: str) -> MemberStatus | None: ...
    def applied(self, http: httpx.Client, member: str) -> int | None: ...
    def records(self, http: httpx.Client, member: str) -> int | None: ...
    def pid(self, member: str) -> int | None: ...
    def member_dir(self, member: str) -> Path: ...
    def force_compaction(self) -> dict[str, Any]: ...
    def replace(self, member: str) -> None: ...
    def stop_all(self) -> None: ...
    def start_all(self) -> None: ...
    def wait_ready(self, timeout: float) -> None: ...
    def __enter__(self) -> ScaleSystem: ...
    def __exit__(self, *exc: object) -> None: ...


class McpdbAtScale(Mcpdb):
    """Three ``--no-inference`` nodes that compact every ``snapshot_entries`` entries, holding the chat
    user's contexts (in the loaded namespace and in an empty one) before the load."""

    def __init__(self, data_dir: Path, settings: ScaleSettings) -> None:
        body_bytes = max(1 << 20, settings.batch * 2 * VALUE_BYTES)  # a batch of 1 KiB facts with its JSON
        self.snapshot_entries = settings.snapshot_entries()
        flags = ["--compaction-entries", str(self.snapshot_entries), "--max-body-bytes", str(body_bytes)]
        super().__init__(data_dir, "durable", flags)
        self.flags = self.cluster.layout.extra_args

    def _start(self) -> None:
        super()._start()
        ops = [{"op": "put", "id": key, "context": context} for key, context in CHAT_CONTEXTS]
        for namespace in (NS, EMPTY_NS):
            httpx.post(
                f"{self.urls()[0]}/v1/namespaces/{namespace}/batch", json={"ops": ops}, timeout=10
            ).raise_for_status()

    def members(self) -> list[str]:
        return [spec.node_id for spec in self.cluster.layout.nodes]

    def status(self, http: httpx.Client, member: str) -> MemberStatus | None:
        try:
            raw = http.get(self.url(member) + "/v1/node").json()
            return MemberStatus(
                raw["term"],
                raw["leader"],
                raw["applied_index"],
                raw["commit_index"],
                raw.get("log_first_index", 0),
                raw["store"]["size_bytes"],
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def applied(self, http: httpx.Client, member: str) -> int | None:
        status = self.status(http, member)
        return None if status is None else status.applied

    def records(self, http: httpx.Client, member: str) -> int | None:
        try:
            contexts: int = http.get(self.url(member) + "/v1/node").json()["store"]["contexts"]
            return contexts
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def pid(self, member: str) -> int | None:
        return self.cluster.processes[member].pid if self.cluster.running(member) else None

    def member_dir(self, member: str) -> Path:
        return self.cluster.data_dir / member

    def force_compaction(self) -> dict[str, Any]:
        """POST /v1/node/snapshot on every node at once; 404/405 everywhere: the nodes lack it."""

        def snapshot(member: str) -> tuple[int | str, float]:
            began = time.perf_counter()
            with httpx.Client(timeout=300) as http:
                status = _send(http, self.url(member), ("POST", "/v1/node/snapshot", {}))
            return status, time.perf_counter() - began

        with ThreadPoolExecutor(len(self.members())) as pool:
            answers = dict(zip(self.members(), pool.map(snapshot, self.members()), strict=True))
        statuses = {member: status for member, (status, _) in answers.items()}
        forced = all(_ok(status) for status in statuses.values())
        if forced:
            slowest = max(seconds for _, seconds in answers.values())
            note = f"forced on every node (POST /v1/node/snapshot, slowest answer {slowest:.2f} s)"
        elif all(status in (404, 405) for status in statuses.values()):
            note = (
                f"not forced: the nodes have no POST /v1/node/snapshot ({statuses['n1']}); compaction by "
                f"--compaction-entries {self.snapshot_entries}, driven by the probe's writes"
            )
        else:
            note = f"POST /v1/node/snapshot failed: {statuses}; waited for compaction by --compaction-entries"
        return {
            "forced": forced,
            "note": note,
            "statuses": statuses,
            "seconds": {m: s for m, (_, s) in answers.items()},
        }

    def replace(self, member: str) -> None:
        """Stop the node, delete everything in its data directory but its log, start it empty."""
        self.cluster.stop(member)
        for entry in self.member_dir(member).iterdir():
            if entry != self.cluster.log_path(member):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.cluster.start(member)

    def stop_all(self) -> None:
        self.cluster.stop_all(graceful=True)

    def start_all(self) -> None:
        self.cluster.start_all()

    def wait_ready(self, timeout: float) -> None:
        self.cluster.wait_ready(timeout)


class EtcdAtScale(Etcd):
    """Three etcd members with room for N 1 KiB keys, snapshotting every ``snapshot_entries`` entries and
    taking txns of one batch."""

    def __init__(self, data_dir: Path, settings: ScaleSettings) -> None:
        self.snapshot_entries = settings.snapshot_entries()
        quota, txn_ops = 8 << 30, max(128, settings.batch)  # 8 GiB: the most etcd recommends, room for 3 M
        self.flags = ["--quota-backend-bytes", str(quota), "--snapshot-count", str(self.snapshot_entries)]
        self.flags += ["--max-txn-ops", str(txn_ops)]
        super().__init__(data_dir, self.flags)

    def members(self) -> list[str]:
        return list(self.cluster.names)

    def status(self, http: httpx.Client, member: str) -> MemberStatus | None:
        try:
            raw = http.post(self.url(member) + "/v3/maintenance/status", json={}).json()
            snapshots = self._metric(http, member, "etcd_debugging_snap_save_total_duration_seconds_count")
            if snapshots is None:
                return None
            return MemberStatus(
                int(raw["raftTerm"]),
                raw.get("leader"),
                int(raw.get("raftAppliedIndex", 0)),
                int(raw["raftIndex"]),
                snapshots,
                int(raw.get("dbSizeInUse", raw["dbSize"])),
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def applied(self, http: httpx.Client, member: str) -> int | None:
        """From the metrics listener: a member still joining answers there, not on its client URL."""
        return self._metric(http, member, "etcd_server_proposals_applied_total")

    def _metric(self, http: httpx.Client, member: str, name: str) -> int | None:
        try:
            text = http.get(self.cluster.metrics_url(member) + "/metrics").text
        except httpx.HTTPError:
            return None
        return next((int(float(line.split()[1])) for line in text.splitlines() if line.startswith(name + " ")), None)

    def records(self, http: httpx.Client, member: str) -> int | None:
        """Loaded keys in this member's own state (a serializable count)."""
        query = {"key": b64("m"), "range_end": b64("n"), "count_only": True, "serializable": True}
        try:
            return int(http.post(self.url(member) + "/v3/kv/range", json=query).json().get("count", 0))
        except (httpx.HTTPError, ValueError):
            return None

    def pid(self, member: str) -> int | None:
        process = self.cluster.processes.get(member)
        return process.pid if process is not None and process.poll() is None else None

    def member_dir(self, member: str) -> Path:
        return self.cluster.member_dir(member)

    def force_compaction(self) -> dict[str, Any]:
        return {
            "forced": False,
            "note": f"etcd has no API to snapshot now: snapshots by --snapshot-count {self.snapshot_entries}, "
            "driven by the probe's writes",
        }

    def replace(self, member: str) -> None:
        self.cluster.replace(member)

    def stop_all(self) -> None:
        for member in self.members():
            self.cluster.stop(member)

    def start_all(self) -> None:
        for member in self.members():
            self.cluster.start(member)

    def wait_ready(self, timeout: float) -> None:
        self.cluster.wait_ready(timeout)


# ---------------------------------------------------------------- observation
class Monitor:
    """Every member's status, sampled four times a second by a thread: (time, member, pid, status)."""

    def __init__(self, system: ScaleSystem) -> None:
        self.system = system
        self.samples: list[tuple[float, str, int | None, MemberStatus]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=1.0) as http:
            while not self._stop.wait(MONITOR_PERIOD_S):
                for member in self.system.members():
                    pid = self.system.pid(member)
                    status = self.system.status(http, member) if pid else None
                    if status is not None:
                        self.samples.append((time.time(), member, pid, status))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def compactions(self) -> list[tuple[float, str]]:
        """(time, member) of every compaction seen: the member's counter moved within one process."""
        events: list[tuple[float, str]] = []
        last: dict[str, tuple[int | None, int]] = {}
        for at, member, pid, status in list(self.samples):
            previous = last.get(member)
            if previous is not None and previous[0] == pid and status.compactions > previous[1]:
                events.append((at, member))
            last[member] = (pid, status.compactions)
        return events

    def leader_changes(self) -> list[tuple[float, str, str, str]]:
        """(time, member, old, new) each time a member names another leader than the last it named."""
        events: list[tuple[float, str, str, str]] = []
        last: dict[str, str] = {}
        for at, member, _, status in list(self.samples):
            if status.leader is None:
                continue
            previous = last.get(member)
            if previous is not None and previous != status.leader:
                events.append((at, member, previous, status.leader))
            last[member] = status.leader
        return events

    def term_increase(self, start: float, end: float) -> int:
        """Terms begun in [start, end): elections, won or not (from the highest term seen before, or,
        with no sample before, the lowest seen in the window)."""
        before = [s.term for at, _, _, s in list(self.samples) if at < start]
        during = [s.term for at, _, _, s in list(self.samples) if start <= at < end]
        if not during:
            return 0
        return max(0, max(during) - (max(before) if before else min(during)))


def allocated_bytes(path: Path) -> int:
    """Disk blocks a file or a directory tree takes (du, not apparent size: journals are sparse)."""
    if not path.exists():
        return 0
    if not path.is_dir():
        return path.lstat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # deleted while walking (a snapshot being replaced)
                continue
    return total


def rss(pid: int) -> dict[str, int]:
    """Resident memory of a process in bytes: all of it, anonymous (heap) and file-backed (mmap'd files)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    fields[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return fields


SETTLE_TIMEOUT_S = 120.0
# mcpdb's names for a file being freed gradually (background_io.TRASH_PREFIX) and a snapshot being
# written (Snapshotter); spelt here so that the bench does not import the node's store modules.
FREEING_PREFIX, WRITING_SUFFIX = ".trash-", ".writing"


def _unsettled(directory: Path) -> bool:
    return any(
        name.startswith(FREEING_PREFIX) or name.endswith(WRITING_SUFFIX)
        for _, _, files in os.walk(directory)
        for name in files
    )


def settle(directories: list[Path], timeout: float = SETTLE_TIMEOUT_S) -> float:
    """Wait (at most ``timeout``) until no snapshot is being written and no replaced file is still
    being freed in any of ``directories``; the seconds waited. Disk is judged after compaction
    (issue 14: "after compaction the journal gives its space back"), not in the middle of one."""
    started = time.monotonic()
    while any(_unsettled(directory) for directory in directories) and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return time.monotonic() - started


def resources(system: ScaleSystem) -> dict[str, dict[str, Any]]:
    """Per member, once compaction settled: disk (whole data directory, and by entry), data size,
    RSS, records held."""
    settled_s = settle([system.member_dir(member) for member in system.members()])
    found = {}
    with httpx.Client(timeout=30) as http:
        for member in system.members():
            directory, pid = system.member_dir(member), system.pid(member)
            status = system.status(http, member)
            entries = sorted(directory.iterdir()) if directory.is_dir() else []
            found[member] = {
                "disk_bytes": allocated_bytes(directory),
                "disk_by_entry": {entry.name: allocated_bytes(entry) for entry in entries},
                "data_bytes": status.data_bytes if status else None,
                "rss": rss(pid) if pid else {},
                "records": system.records(http, member),
                "settled_s": settled_s,
            }
    return found


def probe_stats(records: list[tuple[float, str, float, int | str]], start: float, end: float) -> dict[str, Any]:
    """The probe in [start, end): latency percentiles over every operation (failures too: a 503 after
    a 3 s wait is a 3 s stall), stalls, failures by status, the slowest operations."""
    window = [r for r in records if start <= r[0] < end]
    latencies = [r[2] for r in window]

    def ms(q: float) -> float | None:
        value = percentile(latencies, q)
        return None if value is None else value * 1000

    slowest = sorted(window, key=lambda r: -r[2])[:3]
    return {
        "ops": len(window),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
        "over_250ms": sum(1 for latency in latencies if latency > SLOW_S),
        "non_2xx": sum(1 for r in window if not _ok(r[3])),
        "failures": dict(Counter(str(r[3]) for r in window if not _ok(r[3]))),
        "slowest": [{"at_s": round(r[0], 3), "op": r[1], "ms": round(r[2] * 1000, 1), "status": r[3]} for r in slowest],
    }


# ---------------------------------------------------------------- phases
def _wait(condition: Callable[[], bool], timeout: float, period: float = 0.1) -> float | None:
    """time.time() when ``condition`` first held, None if it did not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(period)
    return None


def load(system: ScaleSystem, settings: ScaleSettings) -> dict[str, Any]:
    """N records from ``settings.loaders`` processes, each a contiguous share of the ids."""
    return load_records(
        system.name,
        system.urls(),
        settings.contexts,
        settings.loaders,
        settings.batch,
        settings.users(),
        values=settings.values,
    )


def load_records(
    system: str,
    urls: list[str],
    contexts: int,
    loaders: int,
    batch: int,
    users: int,
    headers: dict[str, str] | None = None,
    values: str = "words",
) -> dict[str, Any]:
    """``contexts`` 1 KiB records (mcpdb: memory contexts of ``users`` users in the ``NS`` namespace) from
    ``loaders`` processes through the batch API, each a contiguous share of the ids (also the fault
    harness's preload)."""
    per_loader = -(-contexts // loaders // batch) * batch
    shares = [
        (system, urls, first, min(first + per_loader, contexts), batch, users, n, headers or {}, values)
        for n, first in enumerate(range(0, contexts, per_loader))
    ]
    with multiprocessing.get_context("spawn").Pool(len(shares)) as pool:
        done = pool.starmap(_load_share, shares)
    start, end = min(d["started"] for d in done), max(d["ended"] for d in done)
    acknowledged = sum(d["acknowledged"] for d in done)
    statuses: Counter[str] = Counter()
    for d in done:
        statuses.update(d["statuses"])
    return {
        "start": start,
        "end": end,
        "acknowledged": acknowledged,
        "lost": contexts - acknowledged,
        "per_s": acknowledged / (end - start),
        "batch_answers": dict(statuses),
        "failed_batch_attempts": sum(count for status, count in statuses.items() if not status.startswith("2")),
    }


def compaction(system: ScaleSystem, monitor: Monitor, settings: ScaleSettings) -> dict[str, Any]:
    """Force a snapshot where the system can; then wait until every member compacted since the start."""
    start = time.time()
    forced = system.force_compaction()
    # Unforced, the probe's writes (one entry per tick) bring each member to its next compaction.
    timeout = 60 + 3 * settings.snapshot_entries() * PROBE_INTERVAL_S
    done = _wait(lambda: {m for at, m in monitor.compactions() if at >= start} >= set(system.members()), timeout)
    time.sleep(settings.phase_s)
    return {**forced, "start": start, "end": time.time(), "completed_s": None if done is None else done - start}


def catch_up(system: ScaleSystem, probe: Probe, settings: ScaleSettings) -> dict[str, Any]:
    """Wipe a follower and time it until it applied what the others committed (and until it serves
    clients: a joining etcd member applies the leader's snapshot at once but opens its client URL
    only once it has published itself, 7 s later under load); the probe avoids it meanwhile."""
    leader = system.leader()
    victim = [member for member in system.members() if member != leader][-1]
    others = [member for member in system.members() if member != victim]
    probe.aim([system.url(member) for member in others])
    start = time.time()
    system.replace(victim)
    restarted = time.time()
    reached: dict[str, float] = {}  # when the wiped member first answered clients, and caught up
    with httpx.Client(timeout=2.0) as http:

        def caught_up() -> bool:
            commits = [s.commit for s in (system.status(http, m) for m in others) if s is not None]
            applied = system.applied(http, victim)
            if "caught_up" not in reached and commits and applied is not None and applied >= max(commits):
                reached["caught_up"] = time.time()
            if "serving" not in reached and system.status(http, victim) is not None:
                reached["serving"] = time.time()
            return len(reached) == 2

        _wait(caught_up, 120 + settings.contexts / 2000)
    time.sleep(settings.phase_s)
    probe.aim(system.urls())
    return {
        "start": start,
        "end": time.time(),
        "member": victim,
        "leader_before": leader,
        "catch_up_s": reached["caught_up"] - restarted if "caught_up" in reached else None,
        "serving_s": reached["serving"] - restarted if "serving" in reached else None,
        "stop_wipe_start_s": restarted - start,
    }


def restart(system: ScaleSystem, settings: ScaleSettings) -> dict[str, Any]:
    """Stop every member, start them all, time until a linearizable write and a read of it succeed."""
    wire = WIRES[system.name]
    start = time.time()
    system.stop_all()
    stopped = time.time()
    system.start_all()
    with httpx.Client(timeout=2.0) as http:
        attempts = itertools.count()

        def write_and_read() -> bool:
            url = system.urls()[next(attempts) % len(system.urls())]
            return _ok(_send(http, url, wire.write("restart-check", str(time.time())))) and _ok(
                _send(http, url, wire.read("restart-check"))
            )

        done = _wait(write_and_read, 120 + settings.contexts / 5000, period=0.05)
    system.wait_ready(120)
    time.sleep(settings.phase_s)
    return {
        "start": start,
        "end": time.time(),
        "stop_s": stopped - start,
        "restart_s": None if done is None else done - stopped,
    }


def scenario(system: ScaleSystem, settings: ScaleSettings, step: Step) -> dict[str, Any]:
    """The five phases against one system, under its probe and monitor; times relative to its start."""
    t0 = time.time()
    monitor = Monitor(system)
    probe = Probe(system.name, system.urls())
    phases: dict[str, dict[str, Any]] = {}
    after: dict[str, dict[str, Any]] = {}
    try:
        step(f"{system.name}: idle", settings.phase_s)
        began = time.time()
        time.sleep(settings.phase_s)
        phases["idle"] = {"start": began, "end": time.time()}
        step(f"{system.name}: load {settings.contexts:,}", settings.contexts / 8000)
        phases["load"] = load(system, settings)
        after["load"] = resources(system)
        step(f"{system.name}: compaction", settings.phase_s + settings.snapshot_entries() * PROBE_INTERVAL_S)
        phases["compaction"] = compaction(system, monitor, settings)
        after["compaction"] = resources(system)
        step(f"{system.name}: catch-up", settings.phase_s + settings.contexts / 20000 + 5)
        phases["catch-up"] = catch_up(system, probe, settings)
        after["catch-up"] = resources(system)
        step(f"{system.name}: restart", settings.phase_s + 5)
        phases["restart"] = restart(system, settings)
        after["restart"] = resources(system)
    finally:
        records = probe.stop()
        monitor.stop()
    compactions, leader_changes = monitor.compactions(), monitor.leader_changes()
    for previous, name in itertools.pairwise(phases):  # windows end to end: no probe operation escapes them
        phases[name]["start"] = phases[previous]["end"]
    for phase in phases.values():
        start, end = phase["start"], phase["end"]
        phase.update(
            probe=probe_stats(records, start, end),
            leader_changes=max(Counter(m for at, m, _, _ in leader_changes if start <= at < end).values(), default=0),
            term_increase=monitor.term_increase(start, end),
            compactions=sum(1 for at, _ in compactions if start <= at < end),
            start=start - t0,
            end=end - t0,
        )
    return {
        "flags": system.flags,
        "phases": phases,
        "resources": after,
        "events": {
            "compactions": [[round(at - t0, 3), m] for at, m in compactions],
            "leader_changes": [[round(at - t0, 3), m, old, new] for at, m, old, new in leader_changes],
        },
        "probe": [[round(at - t0, 4), op, round(latency, 5), status] for at, op, latency, status in records],
    }


def measure_gather(store_dir: Path, settings: ScaleSettings) -> dict[str, Any]:
    """gather() in this process on a stopped node's store: the chat user in the loaded namespace
    against the same user in a namespace holding only its own contexts (median of many runs)."""
    from mcpdb.inference.gather import gather, recall_query
    from mcpdb.store.state_machine import ContextStore

    store = ContextStore(str(store_dir))
    recall = recall_query(CHAT_MESSAGE, None, CHAT_USER)  # ranked as a node without an embedder ranks: lexical
    measured: dict[str, Any] = {
        "method": f"in-process gather() on node n1's store after the run (nodes stopped), median of "
        f"{settings.gather_runs} runs per namespace (at least 3, fewer if they take over {GATHER_BUDGET_S:g} s)"
    }
    try:
        for label, namespace in (("empty", EMPTY_NS), ("loaded", NS)):
            seconds: list[float] = []
            deadline = time.monotonic() + GATHER_BUDGET_S
            while len(seconds) < settings.gather_runs and (len(seconds) < 3 or time.monotonic() < deadline):
                began = time.perf_counter()
                stored = gather(
                    store,
                    namespace,
                    applied_at_least=0,
                    session_id=CHAT_SESSION,
                    user_id=CHAT_USER,
                    task_id=None,
                    recall=recall,
                ).stored
                seconds.append(time.perf_counter() - began)
                counts = {"memories": len(stored.memories), "turns": len(stored.turns)}
                del stored  # at a million contexts one result is gigabytes: never hold two
            measured[label] = {
                "median_ms": statistics.median(seconds) * 1000,
                "min_ms": min(seconds) * 1000,
                "runs": len(seconds),
                **counts,
            }
    finally:
        store.close()
    measured["ratio"] = ratio(measured["loaded"]["median_ms"], measured["empty"]["median_ms"])
    return measured


def run(settings: ScaleSettings, step: Step) -> dict[str, Any]:
    """Both systems' scenarios, one after the other, and mcpdb's gather cost; rows with targets."""
    require_tools()
    results: dict[str, Any] = {
        "command": settings.command(),
        "settings": {**asdict(settings), "snapshot_entries": settings.snapshot_entries(), "users": settings.users()},
        "environment": compare.environment(),
    }
    with tempfile.TemporaryDirectory(prefix="mcpdb-bench-scale-") as tmp:
        results["environment"]["data_filesystem"] = _filesystem(Path(tmp))
        systems: list[tuple[str, Callable[[], ScaleSystem]]] = [
            ("etcd", lambda: EtcdAtScale(Path(tmp) / "etcd", settings)),
            ("mcpdb", lambda: McpdbAtScale(Path(tmp) / "mcpdb", settings)),
        ]
        for name, make in systems:
            step(f"{name}: starting", START_S)
            with make() as system:
                results[name] = scenario(system, settings, step)
                system.stop_all()
                if isinstance(system, McpdbAtScale):  # what a leader change or stall was (etcd logs to stderr)
                    results[name]["node_logs"] = _node_logs(system.cluster)
            results["environment"][f"loadavg_after_{name}"] = os.getloadavg()
            if name == "etcd":
                shutil.rmtree(Path(tmp) / name)  # its disk back before mcpdb loads
        step("mcpdb: gather", 10 + settings.contexts / 20000)
        results["gather"] = measure_gather(Path(tmp) / "mcpdb" / "n1" / "store", settings)
    results["rows"] = rows(results)
    return results


def _node_logs(cluster: LocalCluster) -> dict[str, str]:
    """Each node's log, which the run's temporary directory would take with it."""
    paths = {spec.node_id: cluster.log_path(spec.node_id) for spec in cluster.layout.nodes}
    return {node_id: path.read_text(errors="replace") for node_id, path in paths.items() if path.exists()}


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the run should be on a real disk, not tmpfs)."""
    best, kind = "", "unknown"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount_point, fs_type, *_ = line.split()
            if str(path.resolve()).startswith(mount_point) and len(mount_point) > len(best):
                best, kind = mount_point, fs_type
    return kind


# ---------------------------------------------------------------- reporting
def _worst(run: dict[str, Any], measure: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [measure(member) for by_member in run["resources"].values() for member in by_member.values()]
    found = [v for v in values if v is not None]
    return max(found) if found else None


def _disk_ratio(member: dict[str, Any]) -> float | None:
    return member["disk_bytes"] / member["data_bytes"] if member["data_bytes"] else None


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets (issue 14) and the headline figures, mcpdb beside etcd."""
    mcpdb, etcd = results["mcpdb"], results["etcd"]

    def both(measure: Callable[[dict[str, Any]], Any]) -> tuple[Any, Any]:
        return measure(mcpdb), measure(etcd)

    def phase(name: str, key: str) -> tuple[Any, Any]:
        return both(lambda run: run["phases"][name][key])

    def probe(name: str, key: str) -> tuple[Any, Any]:
        return both(lambda run: run["phases"][name]["probe"][key])

    def worst(measure: Callable[[dict[str, Any]], float | None]) -> tuple[float | None, float | None]:
        return both(lambda run: _worst(run, measure))

    def rss_mb(key: str) -> tuple[float | None, float | None]:
        return worst(lambda member: member["rss"][key] / 1e6 if member["rss"].get(key) else None)

    stalls = both(lambda run: sum(run["phases"][name]["probe"]["over_250ms"] for name in JUDGED))
    changes = both(lambda run: sum(run["phases"][name]["leader_changes"] for name in JUDGED))
    disk_ratio = worst(_disk_ratio)
    gather = results["gather"]
    return [
        relative("load records/s", *phase("load", "per_s")),
        row("load batch retries", *phase("load", "failed_batch_attempts")),
        row("ops > 250 ms (judged)", *stalls, ratio(*stalls), "= 0", stalls[0] == 0),
        row("leader changes (judged)", *changes, ratio(*changes), "= 0", changes[0] == 0),
        *[relative(f"p99 ms: {name}", *probe(name, "p99_ms"), P99_TARGET, higher=False) for name in JUDGED],
        *[relative(f"max ms: {name}", *probe(name, "max_ms")) for name in JUDGED],
        relative("wiped follower back s", *phase("catch-up", "catch_up_s")),
        relative("restart to write+read s", *phase("restart", "restart_s")),
        row(
            "disk/data per node",
            *disk_ratio,
            ratio(*disk_ratio),
            f"<= {DISK_TARGET:g}x",
            disk_ratio[0] is not None and disk_ratio[0] <= DISK_TARGET,
        ),
        row("disk GB per node", *worst(lambda member: member["disk_bytes"] / 1e9)),
        row("data GB per node", *worst(lambda member: (member["data_bytes"] or 0) / 1e9)),
        relative("RSS MB per node", *rss_mb("VmRSS")),
        relative("  anonymous (heap)", *rss_mb("RssAnon")),
        relative("  file-backed (mmap)", *rss_mb("RssFile")),
        row("gather ms, empty ns", gather["empty"]["median_ms"], None),
        row(
            "gather ms, loaded ns",
            gather["loaded"]["median_ms"],
            None,
            gather["ratio"],
            f"<= {GATHER_TARGET:g}x",
            gather["ratio"] is not None and gather["ratio"] <= GATHER_TARGET,
        ),
    ]


PHASE_COLUMNS = ("per phase", "system", *PHASES)
# What the phase table shows, row by row: a label and how to read it from a phase.
PHASE_FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("seconds", lambda phase: f"{phase['end'] - phase['start']:.1f}"),
    ("probe ops", lambda phase: str(phase["probe"]["ops"])),
    ("p50 ms", lambda phase: compare.cell(phase["probe"]["p50_ms"])),
    ("p99 ms", lambda phase: compare.cell(phase["probe"]["p99_ms"])),
    ("max ms", lambda phase: compare.cell(phase["probe"]["max_ms"])),
    ("ops > 250 ms", lambda phase: str(phase["probe"]["over_250ms"])),
    ("non-2xx", lambda phase: str(phase["probe"]["non_2xx"])),
    ("leader changes", lambda phase: str(phase["leader_changes"])),
    ("compactions", lambda phase: str(phase["compactions"])),
)


def phase_rows(results: dict[str, Any]) -> list[list[str]]:
    """Each figure of the probe and the monitor, mcpdb over etcd, one column per phase."""
    return [
        [label if system == "mcpdb" else "", system, *(figure(results[system]["phases"][name]) for name in PHASES)]
        for label, figure in PHASE_FIGURES
        for system in ("mcpdb", "etcd")
    ]


def details(results: dict[str, Any]) -> str:
    """What the tables summarise: how compaction and gather were measured, failures, records held."""
    gather, contexts = results["gather"], results["settings"]["contexts"]
    lines = [
        "judged: the load, compaction and catch-up phases (the restart takes the cluster down by design); "
        "worst: over every member at the end of every phase; RSS: VmRSS, of it RssAnon and RssFile",
        f"gather: {gather['method']}; loaded ns: the user's contexts among {contexts:,} other users' memories "
        f"(ratio: loaded / empty); memories gathered: empty {gather['empty']['memories']}, loaded "
        f"{gather['loaded']['memories']}",
    ]
    for name in ("mcpdb", "etcd"):
        run = results[name]
        phases = run["phases"]
        failures = {
            phase: probe["failures"] for phase, probe in ((p, phases[p]["probe"]) for p in PHASES) if probe["failures"]
        }
        records = {member: r["records"] for member, r in run["resources"]["restart"].items()}
        lines += [
            f"{name}: compaction {phases['compaction']['note']}; all members compacted after "
            f"{_seconds(phases['compaction']['completed_s'])}",
            f"{name}: catch-up of {phases['catch-up']['member']} {_seconds(phases['catch-up']['catch_up_s'])} "
            f"from its start (serving clients after {_seconds(phases['catch-up']['serving_s'])}; stop, wipe, start "
            f"took {phases['catch-up']['stop_wipe_start_s']:.1f} s); restart: stop "
            f"{phases['restart']['stop_s']:.1f} s, then {_seconds(phases['restart']['restart_s'])} to a write and "
            "a read",
            f"{name}: probe failures by phase {failures or 'none'}; records per member after restart {records}"
            + (" (every context: the loaded ones, the chat user's, the probe's)" if name == "mcpdb" else ""),
            f"{name}: flags {' '.join(run['flags'])}",
        ]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never (timed out)" if value is None else f"{value:.2f} s"


def markdown(results: dict[str, Any]) -> str:
    """The tables for benchmarks/RESULTS.md, with the command that produced them."""
    lines = [
        f"Command: `{results['command']}`",
        "",
        "| " + " | ".join(PHASE_COLUMNS) + " |",
        "|" + "---|" * len(PHASE_COLUMNS),
        *["| " + " | ".join(line) + " |" for line in phase_rows(results)],
        "",
        *compare.markdown_table(results["rows"]),
        "",
        details(results),
    ]
    return "\n".join(lines) + "\n"


PHASE_COLORS = {"load": "tab:gray", "compaction": "tab:orange", "catch-up": "tab:green", "restart": "tab:purple"}


def plot(results: dict[str, Any], path: Path) -> None:
    """Probe latency over time, one panel per system, log y; phases shaded, compactions and leader changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(2, 1, figsize=(12, 7), sharex=True, sharey=True)
    for ax, system in zip(panels, ("mcpdb", "etcd"), strict=True):
        run = results[system]
        for op, color in (("write", "tab:blue"), ("read", "tab:cyan")):
            ok = [(r[0], r[2] * 1000) for r in run["probe"] if r[1] == op and _ok(r[3])]
            ax.scatter([t for t, _ in ok], [ms for _, ms in ok], s=2, color=color, label=f"{op} (2xx)")
        failed = [(r[0], max(r[2] * 1000, 0.1)) for r in run["probe"] if not _ok(r[3])]
        ax.scatter([t for t, _ in failed], [ms for _, ms in failed], s=10, marker="x", color="red", label="failed")
        for name, color in PHASE_COLORS.items():
            phase = run["phases"][name]
            ax.axvspan(phase["start"], phase["end"], color=color, alpha=0.2, lw=0, label=name)
        for at, *_ in run["events"]["compactions"]:
            ax.axvline(at, ymax=0.06, color="black", lw=0.8)
        for at, *_ in run["events"]["leader_changes"]:
            ax.axvline(at, color="red", ls="--", lw=0.8)
        ax.axhline(SLOW_S * 1000, color="black", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("probe latency, ms (log)")
        ax.set_title(
            f"{system}: {results['settings']['contexts']:,} records; ticks at the bottom: compactions, "
            "dashed red: leader changes, dotted: 250 ms",
            fontsize=9,
        )
        ax.legend(loc="upper left", ncols=4, fontsize=7, markerscale=3)
    panels[-1].set_xlabel("seconds since the system's scenario began (its cluster up)")
    plots.finish(fig, path, results["command"])


def save(results: dict[str, Any], folder: Path) -> None:
    """results.json, results.md and scale.png in ``folder``, and each mcpdb node's log beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for member, text in results["mcpdb"].get("node_logs", {}).items():  # first: a failing plot must not lose them
        (folder / f"mcpdb-{member}.log").write_text(text)
    mcpdb = {key: value for key, value in results["mcpdb"].items() if key != "node_logs"}
    plots.save_run(folder, {**results, "mcpdb": mcpdb}, markdown(results), plot, "scale.png")
