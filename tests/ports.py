"""Free TCP ports for servers a test starts later (a Serve proxy, a GCS, a metrics endpoint).

A picked port stays free only until something else binds it, so three things can take it first:
- Ray's own processes. `bind(port 0)` hands out a port from the kernel's ephemeral range, and every Ray process
  that starts after the pick (the raylet, object manager and agents of each fake node) binds port 0 too. Nothing
  fails at that bind: Serve's proxies and gRPC servers both set SO_REUSEPORT, so both listen and the kernel
  splits connections between them. That happened in CI: a worker node's proxy port, picked before the cluster
  started, was also a gRPC server's, and the test's HTTP POST reached the gRPC server ("illegal request line").
  So ports are picked where nothing allocates on its own: above Ray's worker ports (10002-19999 by default) and
  below the kernel's ephemeral range.
- An earlier pick of this process that has not been bound yet (a test picks a cluster's seven ports before any
  of them listens). So a port is handed out once per process.
- A socket on another of this machine's addresses. Servers bind 0.0.0.0, which conflicts with a socket on any
  address, so the check binds 0.0.0.0 too: a check on 127.0.0.1 passes while the node's own IP holds the port.
  In CI a head proxy failed to bind 0.0.0.0 on a port that was checked free on 127.0.0.1.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 19999
_handed_out: set[int] = set()


def ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    candidates = range(RAY_WORKER_PORTS_END + 1, ephemeral_range_start())
    for port in random.sample(candidates, min(200, len(candidates))):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {candidates}: pick one by hand or widen the range")
