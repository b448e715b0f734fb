"""SIGKILL the model replica of a running service under steady load; report failures and recovery time.

    python -m bench.replica_kill [--url http://127.0.0.1:8000/analyze] [--clients 8] [--seconds 40]

Needs the service started by `serve run serve_config.yaml` on this machine (it finds the replica's
process by name). Prints requests per second before and after the kill, the failed requests, and how
long until throughput is back to 90% of the pre-kill rate. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_kill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/analyze")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--kill-at", type=float, default=10.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    per_second: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    code = http.post(args.url, json={"text": "I love using this product!"}).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                if code == 200:
                    per_second[int(time.monotonic() - started)] += 1
                else:
                    failures[str(code)] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(args.kill_at)
    pid = int(subprocess.run(["pgrep", "-f", "ServeReplica:sentiment:SentimentModel"], capture_output=True, text=True).stdout.split()[0])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic() - started
    time.sleep(max(0.0, args.seconds - args.kill_at))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    before = [per_second[s] for s in range(2, int(args.kill_at))]
    baseline = sum(before) / len(before)
    recovered = next((s for s in range(int(killed_at) + 1, int(args.seconds))
                      if all(per_second[t] >= 0.9 * baseline for t in range(s, min(s + 3, int(args.seconds))))), None)
    result = {
        "killed_pid": pid,
        "killed_at_s": round(killed_at, 1),
        "baseline_rps": round(baseline, 1),
        "rps_by_second": [per_second[s] for s in range(int(args.seconds))],
        "failed_requests": dict(failures),
        "full_speed_again_after_s": None if recovered is None else round(recovered - killed_at, 1),
    }
    print(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
