"""HTTP load: wrk (Debian package `wrk`) when installed, else a bounded asyncio client. Loopback only."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class LoadResult:
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str

    def as_dict(self) -> dict:
        return asdict(self)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, body: dict, connections: int, seconds: float) -> LoadResult:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    script.close()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    Path(script.name).unlink()
    percentiles = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return LoadResult(connections, requests, seconds, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                      percentiles.get("50", float("nan")), percentiles.get("99", float("nan")), errors, "wrk")


async def _asyncio_load(url: str, body: dict, connections: int, seconds: float) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return LoadResult(connections, len(ordered), elapsed, len(ordered) / elapsed,
                      1000 * statistics.median(ordered), 1000 * ordered[int(0.99 * (len(ordered) - 1))], errors, "asyncio")


def load_tool() -> str:
    """The load generator `run_load` will use: "wrk", or "asyncio" (Python, on the same cores as the server)."""
    return "wrk" if shutil.which("wrk") else "asyncio"


#: Printed by a run without wrk: the fallback client runs on the same cores as the server it loads.
NO_WRK_WARNING = (
    "WARNING: wrk is not installed; the asyncio client loads the server instead and takes the same cores "
    "(on 2 cores: 0.8x wrk's req/s at 8 connections, 0.4x at 32, 0.08x at 128). These figures "
    "are not comparable with docs/benchmark.md; install wrk (Debian/Ubuntu: sudo apt-get install wrk)."
)


def announce_load_tool() -> str:
    """`load_tool()`, printing NO_WRK_WARNING when it is not wrk: what a benchmark calls before it loads."""
    tool = load_tool()
    if tool != "wrk":
        print(NO_WRK_WARNING, flush=True)
    return tool


def run_load(url: str, body: dict, connections: int, seconds: float) -> LoadResult:
    if load_tool() == "wrk":
        return run_wrk(url, body, connections, seconds)
    return asyncio.run(_asyncio_load(url, body, connections, seconds))
