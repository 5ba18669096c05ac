"""Drive wrk against several nodes at once and merge what it reports.

wrk connects to one host per process, so each node gets its own wrk process
(one thread each), the connections split evenly. Each process prints a JSON
summary (``lua/common.lua``). Percentiles cannot be merged exactly: the
merged p50 is the median of the processes' p50s and the merged p99 the
largest p99, which can only overstate the tail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).parent / "lua"


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    requests: int


def run(urls: list[str], scenario: str, connections: int, seconds: float, path: str = "/") -> WrkResult:
    """Load ``urls`` with ``lua/<scenario>.lua`` for ``seconds``; ``connections`` split over the URLs."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (or run scripts/setup as root)")
    script = (LUA / f"{scenario}.lua").read_text() + "\n" + (LUA / "common.lua").read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    processes = []
    for position, url in enumerate(urls):
        share = connections // len(urls) + (1 if position < connections % len(urls) else 0)
        processes.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{share}", f"-d{seconds:g}s", "--timeout", "5s", "-s", handle.name, url + path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    summaries = []
    for process in processes:
        output, _ = process.communicate(timeout=seconds + 60)
        line = next((ln for ln in output.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {output.strip()[-300:]}")
        summaries.append(json.loads(line))
    Path(handle.name).unlink()
    p50s = sorted(s["p50_us"] for s in summaries)
    return WrkResult(
        requests_per_s=sum(s["requests"] / (s["duration_us"] / 1e6) for s in summaries),
        p50_ms=p50s[len(p50s) // 2] / 1000,
        p99_ms=max(s["p99_us"] for s in summaries) / 1000,
        errors=sum(s["errors"] for s in summaries),
        non_2xx=sum(s["non_2xx"] for s in summaries),
        requests=sum(s["requests"] for s in summaries),
    )
