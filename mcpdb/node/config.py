"""Node configuration, validated before anything listens."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcpdb.store.defaults import DEFAULT_CHANGE_HISTORY

if TYPE_CHECKING:
    from mcpdb.inference.autoscale_policy import ScalePolicy

_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ALLOWED_HOST_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])$")


class ConfigError(ValueError):
    """A node configuration that must not start; the message says what to change."""


def split_host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must look like HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret(path: str | None, env_var: str) -> str | None:
    """A secret from a file (first line) or, failing that, an environment variable."""
    if path:
        try:
            with open(path) as f:
                value = f.readline().strip()
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        if not value:
            raise ConfigError(f"{path} is empty")
        return value
    return os.environ.get(env_var) or None


@dataclass
class NodeConfig:
    node_id: str
    data_dir: str
    http_addr: str
    raft_addr: str | None
    peers: list[str] = field(default_factory=list)
    token: str | None = None
    cluster_secret: str | None = None
    durable: bool = True
    request_timeout: float = 3.0
    max_body_bytes: int = 1 << 20
    body_timeout: float = 10.0
    compaction_min_entries: int = 50_000
    compaction_bytes: int = 256 << 20
    disk_reserve_bytes: int = 64 << 20
    change_history: int = DEFAULT_CHANGE_HISTORY
    # Memory for whole-namespace searches' vector matrices (mcpdb.store.vector_matrices); 0: always scan.
    vector_cache_mb: int = 256
    unsafe_stale_reads: bool = False
    # MCP sessions: bounded per node and per token, closed after this many idle seconds.
    mcp_max_sessions: int = 1000
    mcp_sessions_per_token: int = 100
    mcp_idle_timeout: float = 300.0
    advertise_url: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)  # names besides its own a request's Host may use
    allowed_origins: list[str] = field(default_factory=list)  # origins besides its own whose pages may call it
    # Inference: a llama.cpp worker on this node (the bundled model unless model_path).
    inference: bool = True
    model_path: str | None = None
    # Embeddings for search (all-MiniLM-L6-v2 unless embedding_model_path); a node with inference only.
    embedding: bool = True
    embedding_model_path: str | None = None
    n_ctx: int = 4096
    # Tokens of a chat's prompt for the memories recalled for its new message (the most relevant first).
    memory_budget: int = 256
    threads: int = 2
    slots: int = 1
    weight: float | None = None  # None: the tokens/s measured when the model loads
    domains: list[str] = field(default_factory=list)
    policy: str = "affinity"
    shed_threshold: float = 1.0
    # Autoscaling (decided by the leader, acted on by a provisioner): "MIN:MAX" workers, or None.
    autoscale: str | None = None
    autoscale_target: float = 1.0
    autoscale_cooldown: float = 15.0

    def validate(self) -> None:
        if not _NODE_ID_RE.fullmatch(self.node_id):
            raise ConfigError(f"invalid node id {self.node_id!r}: use 1-63 characters from A-Z a-z 0-9 _ . -")
        http_host, _ = split_host_port(self.http_addr, "--http-addr")
        if self.raft_addr is not None:
            raft_host, _ = split_host_port(self.raft_addr, "--raft-addr")
            if not is_loopback(raft_host) and not self.cluster_secret:
                raise ConfigError(
                    "refusing Raft on a non-loopback address without a cluster secret "
                    "(--cluster-secret-file or MCPDB_CLUSTER_SECRET)"
                )
        for peer in self.peers:
            split_host_port(peer, "--peer")
        if not self.peers and self.raft_addr is None:
            raise ConfigError("a non-voting replica needs --peer addresses of the voters")
        if not is_loopback(http_host) and not self.token:
            raise ConfigError(
                "refusing to serve HTTP on a non-loopback address without a token (--token-file or MCPDB_TOKEN)"
            )
        for name in self.allowed_hosts:
            if not _ALLOWED_HOST_RE.fullmatch(name):
                raise ConfigError(f"--allowed-host {name!r}: give a host name or IP address, without scheme or port")
        self._validate_origins()
        if not 1 <= self.mcp_sessions_per_token <= self.mcp_max_sessions:
            raise ConfigError("--mcp-sessions-per-token must be between 1 and --mcp-max-sessions")
        if self.mcp_idle_timeout <= 0:
            raise ConfigError("--mcp-idle-timeout must be positive")
        if self.request_timeout <= 0:
            raise ConfigError("--request-timeout must be positive")
        if self.change_history < 1:
            raise ConfigError("--change-history must be at least 1")
        if self.vector_cache_mb < 0:
            raise ConfigError("--vector-cache-mb must be 0 or more")
        if self.body_timeout <= 0:
            raise ConfigError("--body-timeout must be positive")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes must be at least 1024")
        self._validate_inference()
        self.autoscale_policy()

    def _validate_origins(self) -> None:
        """--allowed-origin and --advertise-url must each name one HTTP(S) origin: the Origin rule compares
        scheme, host and port exactly."""
        from mcpdb.node.http.host_guard import parse_origin

        for origin in self.allowed_origins:
            if parse_origin(origin) is None:
                raise ConfigError(
                    f"--allowed-origin {origin!r}: give an origin such as https://mcpdb.example.com "
                    "or http://10.0.0.5:8080 (scheme, host, optional port; no path)"
                )
        if self.advertise_url and parse_origin(self.advertise_url.rstrip("/")) is None:
            raise ConfigError(
                f"--advertise-url {self.advertise_url!r}: give http:// or https:// with a host and "
                "optional port, e.g. http://node1.internal:7700 (no path)"
            )

    def autoscale_policy(self) -> ScalePolicy | None:
        """The autoscaling policy the flags ask for (None without --autoscale); ConfigError if invalid."""
        from mcpdb.inference.autoscale_policy import ScalePolicy

        if self.autoscale is None:
            return None
        try:
            return ScalePolicy.from_flags(
                self.autoscale, target_per_slot=self.autoscale_target, cooldown_s=self.autoscale_cooldown
            )
        except ValueError as error:
            raise ConfigError(f"--autoscale: {error}") from None

    def _validate_inference(self) -> None:
        from mcpdb.inference.placement import Policy

        if self.policy not in Policy.__members__:
            raise ConfigError(f"--policy must be one of {', '.join(Policy.__members__)}, got {self.policy!r}")
        if self.shed_threshold < 0:
            raise ConfigError("--shed-threshold must be zero or more")
        if not self.inference:
            return
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise ConfigError(f"--model {self.model_path}: no such file")
        if self.embedding_model_path is not None and not os.path.isfile(self.embedding_model_path):
            raise ConfigError(f"--embedding-model {self.embedding_model_path}: no such file")
        if not 256 <= self.n_ctx <= 131072:
            raise ConfigError("--n-ctx must be between 256 and 131072")
        if not 0 <= self.memory_budget <= self.n_ctx // 2:
            raise ConfigError("--memory-budget must be between 0 and half of --n-ctx")
        if not 1 <= self.threads <= 256:
            raise ConfigError("--threads must be between 1 and 256")
        if not 1 <= self.slots <= 64:
            raise ConfigError("--slots must be between 1 and 64")
        if self.weight is not None and self.weight <= 0:
            raise ConfigError("--weight must be positive")
        for domain in self.domains:
            if not 1 <= len(domain) <= 64:
                raise ConfigError(f"--domain {domain!r}: use 1-64 characters")

    @property
    def http_url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host, port = split_host_port(self.http_addr, "--http-addr")
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"
