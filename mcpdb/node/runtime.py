"""Wires one node together: store, replication, read barrier, service, inference, duties.

Background duties run on every node and act only where they should: the
leader proposes TTL expiries; every node keeps its entry in the replicated
node registry current once a leader exists (that is how ``/v1/cluster``
finds each member's HTTP address, and how the scheduler learns each
worker's model, slots, weight and domains once the model has loaded);
every node with a loaded model sends its load to the leader every
HEARTBEAT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import httpx

from mcpdb import __version__
from mcpdb.errors import Unavailable
from mcpdb.inference.llama_worker import Worker, WorkerSettings, default_model_path
from mcpdb.inference.loadboard import HEARTBEAT_S
from mcpdb.inference.placement import Policy
from mcpdb.node.autoscaling import AutoscaleDuty
from mcpdb.node.config import NodeConfig
from mcpdb.node.embedding_duty import EmbeddingDuty
from mcpdb.node.http.access import Authenticator
from mcpdb.node.internal.chat_front import ChatFront
from mcpdb.node.internal.chat_worker import ChatWorker
from mcpdb.node.internal.leader_scheduler import LeaderScheduler
from mcpdb.node.internal.messages import LOAD_PATH, LoadReport
from mcpdb.node.metrics import NodeMetrics
from mcpdb.raft.barrier import ReadBarrier
from mcpdb.raft.replication import Replication
from mcpdb.raft.settings import RaftSettings
from mcpdb.retrieval.embedding import Embedder
from mcpdb.retrieval.minilm import default_embedding_model_path
from mcpdb.service import Consistency, ContextService
from mcpdb.store.background_io import Writeback
from mcpdb.store.changes import ChangeFeed
from mcpdb.store.commands import COMMAND_VERSION
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

EXPIRY_PERIOD_S = 1.0


class NodeRuntime:
    """Everything a node runs besides the HTTP server."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.store = ContextStore(
            os.path.join(config.data_dir, "store"),
            change_history=config.change_history,
            vector_cache_bytes=config.vector_cache_mb << 20,
        )
        settings = RaftSettings(
            self_addr=config.raft_addr,
            peers=config.peers,
            data_dir=os.path.join(config.data_dir, "raft"),
            password=config.cluster_secret,
            durable=config.durable,
            compaction_min_entries=config.compaction_min_entries,
            compaction_bytes=config.compaction_bytes,
            disk_reserve_bytes=config.disk_reserve_bytes,
            max_entry_bytes=config.max_body_bytes,
            request_timeout=config.request_timeout,
        )
        self.replication = Replication(settings, self.store)
        self.writeback = Writeback(self.store.data_file)
        self.change_feed = ChangeFeed(self.store)
        self.replication.on_commit(self.change_feed.on_commit)
        self.barrier = ReadBarrier(self.replication.read_index, config.request_timeout)
        self.embedder: Embedder | None = None  # loaded in the background, like the chat model
        self.embedding_state = "disabled"  # disabled | loading | ready | failed: <reason>
        self.service = ContextService(
            self.replication,
            self.barrier,
            config.request_timeout,
            unsafe_stale_reads=config.unsafe_stale_reads,
            embedder=lambda: self.embedder,
        )
        self.authenticator = Authenticator(
            config.token, self.store, lambda namespace: self.service.read_index(Consistency.linearizable, namespace)
        )
        self.metrics = NodeMetrics(self)
        self.worker: Worker | None = None
        self.chat_worker: ChatWorker | None = None
        self.inference_state = "disabled"  # disabled | loading | ready | failed: <reason>
        if config.inference:
            self.worker = Worker(
                WorkerSettings(
                    model_path=config.model_path or default_model_path(),
                    n_ctx=config.n_ctx,
                    threads=config.threads,
                    slots=config.slots,
                    weight=config.weight,
                    domains=tuple(config.domains),
                )
            )
            self.chat_worker = ChatWorker(
                config.node_id,
                self.service,
                self.replication,
                self.worker,
                config.request_timeout,
                config.memory_budget,
                on_first_token=self.metrics.ttft.observe,
            )
        self.embeddings = EmbeddingDuty(
            self.store,
            self.replication,
            self.service,
            lambda: self.embedder,
            chats_idle=lambda: self.worker is None or self.worker.idle,
            next_commit=self.change_feed.next_commit,
        )
        self.scheduler = LeaderScheduler(
            self.replication, self.store, self.barrier, Policy(config.policy), config.shed_threshold
        )
        self.front = ChatFront(
            config.node_id,
            self.replication,
            self.store,
            self.scheduler,
            self.chat_worker,
            self._stream_client,
            config.request_timeout,
        )
        self.draining = False  # set by POST /v1/node/drain: no new inference work, then leave
        self.autoscale = AutoscaleDuty(self, config.autoscale_policy())
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._stream_http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self._http = httpx.AsyncClient(timeout=0.5, headers=headers)
        # Node-to-node chat traffic: long streams, per-call timeouts.
        self._stream_http = httpx.AsyncClient(timeout=None, headers=headers, limits=httpx.Limits(max_connections=256))
        self.writeback.start()
        self._tasks = [
            asyncio.create_task(self._register_loop()),
            asyncio.create_task(self._expiry_loop()),
            asyncio.create_task(self.autoscale.run()),
            asyncio.create_task(self.embeddings.run()),
        ]
        if self.config.inference and self.config.embedding:
            self._tasks.append(asyncio.create_task(self._load_embedder()))
        if self.worker is not None:
            self._tasks += [asyncio.create_task(self._load_model()), asyncio.create_task(self._heartbeat_loop())]

    def http_client(self) -> httpx.AsyncClient:
        """The node's client for short calls to other nodes (carries the bootstrap token)."""
        assert self._http is not None, "the runtime has not started"
        return self._http

    def _stream_client(self) -> httpx.AsyncClient:
        """The node's client for node-to-node chat streams (no overall timeout, many connections)."""
        assert self._stream_http is not None, "the runtime has not started"
        return self._stream_http

    async def stop(self) -> None:
        """Graceful shutdown: hand over leadership (or leave the registry, for a replica), stop duties,
        close Raft and LMDB."""
        if self.config.raft_addr is None:
            with contextlib.suppress(Unavailable):
                await self.service.deregister_node(self.config.node_id)
        if self.replication.is_leader():
            self.replication.transfer_leadership()
            deadline = time.monotonic() + 2.0
            while self.replication.is_leader() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in (self._http, self._stream_http):
            if client is not None:
                await client.aclose()
        await asyncio.to_thread(self.replication.close)
        await asyncio.to_thread(self.writeback.stop)
        if self.chat_worker is not None:
            await asyncio.to_thread(self.chat_worker.close)
        if self.worker is not None:
            self.worker.close()
        if self.embedder is not None:
            self.embedder.close()
        self.store.close()

    # ---------------------------------------------------------------- duties
    def registration(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.config.node_id,
            "raft_addr": self.config.raft_addr,
            "http_url": self.config.http_url,
            "voter": self.config.raft_addr is not None,
            "version": __version__,
            "formats": COMMAND_VERSION,  # the newest log format it applies (the embedder waits for 2)
        }
        worker = self.worker
        if worker is not None and worker.ready:
            entry.update(
                model=worker.settings.model_name,
                n_ctx=worker.settings.n_ctx,
                slots=worker.settings.slots,
                weight=worker.weight,
                domains=list(worker.settings.domains),
            )
        if self.draining:
            entry["draining"] = True
        return entry

    async def _register_loop(self) -> None:
        """Keep this node's registry entry current: after every restart, and once the model loaded."""
        while True:
            registered = False
            if self.replication.leader_addr() is not None:
                current = {node["id"]: node for node in self.store.nodes()}
                registered = current.get(self.config.node_id) == self.registration()
                if not registered:
                    with contextlib.suppress(Unavailable):
                        await self.service.register_node(self.registration())
            await asyncio.sleep(1.0 if registered else 0.2)

    async def _load_model(self) -> None:
        """Load in a thread so the node serves the store (and Raft) while the model loads."""
        assert self.worker is not None
        self.inference_state = "loading"
        try:
            await asyncio.to_thread(self.worker.load)
        except Exception as error:  # noqa: BLE001 - the node keeps serving contexts without a model
            _log.exception("model failed to load")
            self.inference_state = f"failed: {error}"
            return
        self.inference_state = "ready"

    async def _load_embedder(self) -> None:
        """The embedding model, in a thread, once the chat model (if any) is in: loading both at once
        doubles the start-up peak of memory and disk reads for nothing."""
        while self.inference_state == "loading" or (self.worker is not None and self.inference_state == "disabled"):
            await asyncio.sleep(0.2)
        self.embedding_state = "loading"
        try:
            path = self.config.embedding_model_path
            if path is None:
                path = await asyncio.to_thread(default_embedding_model_path)
            self.embedder = await asyncio.to_thread(Embedder, path)
        except Exception as error:  # noqa: BLE001 - the node keeps serving, searching lexically
            _log.exception("embedding model failed to load")
            self.embedding_state = f"failed: {error}"
            return
        self.embedding_state = "ready"

    async def _heartbeat_loop(self) -> None:
        """Report load to the leader every HEARTBEAT_S; its board drops nodes silent for 2 s."""
        assert self.worker is not None and self._http is not None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self.worker.ready:
                continue
            load = self.worker.load_report()
            if self.replication.is_leader():
                self.scheduler.board.heartbeat(self.config.node_id, load)
                continue
            url = self.front.leader_url()
            if url is None:
                continue
            with contextlib.suppress(httpx.HTTPError):
                report = LoadReport(node_id=self.config.node_id, load=load)
                await self._http.post(
                    url + LOAD_PATH, content=report.model_dump_json(), headers={"content-type": "application/json"}
                )

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_PERIOD_S)
            if not self.replication.is_leader():
                continue
            try:
                await self.service.expire_due()
            except Unavailable:
                continue
            except Exception:  # noqa: BLE001 - a duty must outlive one failure
                _log.exception("expiry pass failed")

    # ---------------------------------------------------------------- status
    def ready(self) -> tuple[bool, str]:
        """Ready = a leader is known and this node applied everything it knows is committed."""
        status = self.replication.status()
        if status.get("disk_alarm"):
            return False, "disk alarm: " + "; ".join(status["disk_alarm_reasons"])
        if status["leader"] is None:
            return False, "no leader known"
        if not status["ready"]:
            return False, "still catching up with the leader's log"
        if status["applied_index"] < status["commit_index"]:
            return False, f"applied {status['applied_index']} of {status['commit_index']} committed entries"
        return True, "ready"

    def local_status(self) -> dict[str, Any]:
        raft = self.replication.status()
        ready, reason = self.ready()
        return {
            **{key: value for key, value in raft.items() if key != "ready"},
            "raft_ready": raft["ready"],  # pysyncobj's own: it has caught up with the leader's log once
            "id": self.config.node_id,
            "http_url": self.config.http_url,
            "raft_addr": self.config.raft_addr,
            "voter": self.config.raft_addr is not None,
            "durable": self.config.durable,
            "uptime_s": round(time.time() - self.started_at, 1),
            "ready": ready,  # what /readyz answers (disk alarm, leader, applied)
            "ready_reason": reason,
            "store": self.store.stats(),
            "store_applied_index": self.store.applied_index(),
            "read_barriers": {"batches": self.barrier.batches, "reads": self.barrier.reads},
            "inference": self._inference_status(),
        }

    def _inference_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": self.inference_state,
            "policy": self.scheduler.policy.value,
            "embedding": self.embedding_state,
            "embedded": self.embeddings.embedded,
        }
        worker = self.worker
        if worker is not None:
            status.update(
                model=worker.settings.model_name,
                n_ctx=worker.settings.n_ctx,
                slots=worker.settings.slots,
                threads=worker.settings.threads,
                domains=list(worker.settings.domains),
            )
        if worker is not None and worker.ready:
            assert worker.chat_format is not None
            status.update(
                weight=worker.weight,
                measured_tokens_per_s=worker.measured_tokens_per_s,
                chat_format=worker.chat_format.name,
                load=worker.load_report(),
            )
        if self.replication.is_leader():
            status["scheduler"] = {"assigned": self.scheduler.decisions, "board": self.scheduler.board.snapshot()}
        return status

    def members(self) -> list[dict[str, Any]]:
        """Every registered node by id, this one as it is now (its entry may not have committed yet)."""
        registry = {node["id"]: node for node in self.store.nodes()}
        registry[self.config.node_id] = self.registration()
        return sorted(registry.values(), key=lambda node: node["id"])

    async def cluster_status(self) -> dict[str, Any]:
        """Every registered node's own status, fetched concurrently; unreachable ones say so."""
        http = self.http_client()

        async def fetch(node: dict[str, Any]) -> dict[str, Any]:
            if node["id"] == self.config.node_id:
                return {**node, "reachable": True, **self.local_status()}
            try:
                response = await http.get(node["http_url"] + "/v1/node")
                response.raise_for_status()
                return {**node, "reachable": True, **response.json()}
            except (httpx.HTTPError, ValueError) as error:
                return {**node, "reachable": False, "role": "unreachable", "error": str(error) or type(error).__name__}

        nodes = await asyncio.gather(*(fetch(node) for node in self.members()))
        leader_addr = self.replication.leader_addr()
        leader = next((n["id"] for n in nodes if leader_addr and n.get("raft_addr") == leader_addr), None)
        return {
            "leader": leader,
            "leader_raft_addr": leader_addr,
            "term": self.replication.status()["term"],
            "raft_members": self.replication.voters(),
            "nodes": nodes,  # in id order, as members() gives them
        }
