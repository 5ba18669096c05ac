"""Network namespaces for the harness: one per node, joined by a bridge.

Each node gets its own namespace with one veth into a bridge in the root
namespace, and its own address in a private /24 that exists only inside this
machine (the bridge holds .254, so the harness's clients in the root
namespace reach every node). Faults act on the namespaces:

- partitions: blackhole routes inside the namespaces (``ip route add
  blackhole``), so node A cannot reach node B while clients still reach both;
- slow links: a token-bucket qdisc (``tc ... tbf``) on the node's veth. This
  kernel has no ``netem``, so slowness is a bandwidth limit with its queueing
  delay, not a fixed added delay;
- lossy links: an nftables rule that drops a random share of the node's
  outgoing packets to its peers.

Everything is created with a per-run suffix and removed by ``teardown``, which
is idempotent and also registered with ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

NFT_TABLE = "mcpdbchaos"


class NetlabUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, or no ip/nft); the message says which."""


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


def availability() -> str | None:
    """None if namespaces can be used, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian packages iproute2, nftables)"
    return None


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str
    veth: str  # the end inside the namespace


class NetLab:
    """Namespaces, veths and a bridge for ``size`` hosts; fault injection on them."""

    def __init__(self, size: int) -> None:
        reason = availability()
        if reason is not None:
            raise NetlabUnavailable(reason)
        self.run_id = secrets.token_hex(2)
        self.subnet = f"10.{random.randint(100, 199)}.{random.randint(0, 255)}"
        self.bridge = f"mcjb{self.run_id}"
        self.hosts = [
            Host(f"n{i}", f"mcpdb-{self.run_id}-n{i}", f"{self.subnet}.{i}", f"mcj{self.run_id}p{i}")
            for i in range(1, size + 1)
        ]
        self._blackholes: set[tuple[str, str]] = set()
        self._up = False

    def setup(self) -> None:
        atexit.register(self.teardown)
        self._up = True
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, host in enumerate(self.hosts, start=1):
            outside = f"mcj{self.run_id}v{i}"
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", host.veth)
            _run("ip", "link", "set", host.veth, "netns", host.namespace)
            _run("ip", "link", "set", outside, "master", self.bridge)
            _run("ip", "link", "set", outside, "up")
            self._in(host, "ip", "addr", "add", f"{host.address}/24", "dev", host.veth)
            self._in(host, "ip", "link", "set", host.veth, "up")
            self._in(host, "ip", "link", "set", "lo", "up")

    def teardown(self) -> None:
        if not self._up:
            return
        self._up = False
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        for i in range(1, len(self.hosts) + 1):
            subprocess.run(["ip", "link", "del", f"mcj{self.run_id}v{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def exec_prefix(self, name: str) -> list[str]:
        """Prefix that runs a command inside the host's namespace."""
        return ["ip", "netns", "exec", self.host(name).namespace]

    def _in(self, host: Host, *args: str) -> None:
        _run("ip", "netns", "exec", host.namespace, *args)

    # ------------------------------------------------------------ faults
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut every link between hosts of different groups (both directions)."""
        membership = {name: i for i, group in enumerate(groups) for name in group}
        for a in self.hosts:
            for b in self.hosts:
                if a is not b and membership.get(a.name) != membership.get(b.name):
                    self.cut(a.name, b.name)

    def cut(self, source: str, target: str) -> None:
        """Drop what ``source`` sends to ``target`` (one direction)."""
        if (source, target) in self._blackholes:
            return
        self._in(self.host(source), "ip", "route", "add", "blackhole", f"{self.host(target).address}/32")
        self._blackholes.add((source, target))

    def heal(self) -> None:
        """Remove every partition, rate limit and loss rule."""
        for source, target in list(self._blackholes):
            with contextlib.suppress(RuntimeError):
                self._in(self.host(source), "ip", "route", "del", "blackhole", f"{self.host(target).address}/32")
            self._blackholes.discard((source, target))
        for host in self.hosts:
            subprocess.run(
                ["ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev", host.veth, "root"],
                capture_output=True,
            )
            subprocess.run(
                ["ip", "netns", "exec", host.namespace, "nft", "delete", "table", "inet", NFT_TABLE],
                capture_output=True,
            )

    def slow(self, name: str, rate_kbit: int = 512) -> None:
        """Limit the host's outgoing bandwidth; queued packets wait up to 200 ms."""
        host = self.host(name)
        self._in(
            host,
            "tc",
            "qdisc",
            "replace",
            "dev",
            host.veth,
            "root",
            "tbf",
            "rate",
            f"{rate_kbit}kbit",
            "burst",
            "16kbit",
            "latency",
            "200ms",
        )

    def lossy(self, name: str, percent: int = 20) -> None:
        """Drop ``percent`` % of the host's outgoing packets to the other hosts."""
        host = self.host(name)
        self._in(host, "nft", "add", "table", "inet", NFT_TABLE)
        self._in(host, "nft", "add", "chain", "inet", NFT_TABLE, "out", "{ type filter hook output priority 0; }")
        self._in(
            host,
            "nft",
            "add",
            "rule",
            "inet",
            NFT_TABLE,
            "out",
            "ip",
            "daddr",
            f"{self.subnet}.0/24",
            "ip",
            "daddr",
            "!=",
            f"{self.subnet}.254",
            "numgen",
            "random",
            "mod",
            "100",
            "<",
            str(percent),
            "drop",
        )
