"""Overload check against a running service: N concurrent clients for T seconds, then one normal request.

    python -m bench.overload [--url http://127.0.0.1:8000/analyze] [--clients 256] [--seconds 15]

Prints the status codes seen (the service should answer only 200 and 429, or 503 with `limits.overload_status: 503`), latency of the 200s,
and whether a normal request succeeds right afterwards. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import time

import httpx


async def hammer(url: str, clients: int, seconds: float) -> dict:
    codes: collections.Counter = collections.Counter()
    ok_latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one_client(n: int) -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json={"text": f"client {n}: I love using this product!"})
                    codes[response.status_code] += 1
                    if response.status_code == 200:
                        ok_latencies.append(time.perf_counter() - started)
                    elif response.status_code in (429, 503):
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 10)
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1

        await asyncio.gather(*(one_client(n) for n in range(clients)))
        after = await client.post(url, json={"text": "I love using this product!"})
    ordered = sorted(ok_latencies)
    return {
        "clients": clients,
        "seconds": seconds,
        "codes": {str(k): v for k, v in codes.items()},
        "ok_p50_ms": 1000 * statistics.median(ordered) if ordered else None,
        "ok_p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
        "after_status": after.status_code,
        "after_body": after.json(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/analyze")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    result = asyncio.run(hammer(args.url, args.clients, args.seconds))
    print(json.dumps(result, indent=2))
    unexpected = set(result["codes"]) - {"200", "503", "429"}
    return 1 if unexpected or result["after_status"] != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
