"""Load several nodes with one wrk process and read back what it measured.

wrk sends a process's requests to one host, but wrk 4 lets a script's
``setup`` give each thread its own address. So one process runs one thread
per connection, the threads spread round-robin over the nodes
(``lua/common.lua``), and its single latency histogram covers every request:
the percentiles are exact, not merged from several processes.

Throughput counts 2xx answers only; every other status and every socket
error is counted beside it, so a system that answers fast with errors does
not look fast.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LUA = Path(__file__).parent / "lua"


@dataclass
class WrkResult:
    seconds: float
    ok: int  # 2xx answers
    statuses: dict[str, int]  # every status code seen, 2xx included
    socket_errors: dict[str, int]  # connect, read, write, timeout (no answer at all)
    latency_ms: dict[str, float]  # p50, p90, p99, p99.9, max (all answers)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds

    @property
    def failed(self) -> int:
        """Requests that got no 2xx answer: other statuses and socket errors."""
        return sum(n for code, n in self.statuses.items() if not code.startswith("2")) + sum(
            self.socket_errors.values()
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok_per_s": self.ok_per_s, "failed": self.failed}


def script(urls: list[str], scenario: str) -> str:
    """``lua/<scenario>.lua`` with the targets and the shared setup/response/done ahead of it."""
    targets = ", ".join(f'{{"{urlsplit(u).hostname}", "{urlsplit(u).port}"}}' for u in urls)
    return "\n".join(
        [f"targets = {{{targets}}}", (LUA / "common.lua").read_text(), (LUA / f"{scenario}.lua").read_text()]
    )


def parse(output: str) -> WrkResult:
    """wrk's output, whose JSON line ``lua/common.lua`` printed."""
    line = next((ln for ln in output.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {output.strip()[-300:]}")
    raw = json.loads(line)
    return WrkResult(
        seconds=raw["duration_us"] / 1e6,
        ok=sum(n for code, n in raw["statuses"].items() if code.startswith("2")),
        statuses=raw["statuses"],
        socket_errors=raw["socket_errors"],
        latency_ms={name: us / 1000 for name, us in raw["latency_us"].items()},
    )


def run(urls: list[str], scenario: str, connections: int, seconds: float, timeout_s: float = 5.0) -> WrkResult:
    """Load ``urls`` with ``lua/<scenario>.lua`` for ``seconds`` over ``connections`` connections."""
    with tempfile.TemporaryDirectory(prefix="mcpdb-wrk-") as tmp:
        path = Path(tmp) / f"{scenario}.lua"
        path.write_text(script(urls, scenario))
        process = subprocess.Popen(
            [
                "wrk",
                f"-t{connections}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                f"--timeout={timeout_s:g}s",
                "-s",
                str(path),
                urls[0],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=seconds + 60)
        finally:  # interrupted or hung: wrk must not keep loading the next scenario
            if process.poll() is None:
                process.kill()
                process.wait()
    return parse(output)


def version() -> str:
    """wrk's version line (``wrk -v`` prints it with its usage and exits 1), recorded with the results."""
    output = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    return output.split("\n")[0].strip()
