"""Constant load through change and loss: does any request fail while the service is updated or loses a replica?

    python -m bench.chaos [--events user_config,model_version,kill_model,kill_ingress] [--clients 16]
                          [--seconds 60] [--event-at 20] [--config serve_config.yaml] [--url http://127.0.0.1:8000]
                          [--no-keepalive] [--retry-dropped]

Needs the service started on this machine by `serve run serve_config.yaml` (any mode). For each event,
`--clients` clients send the seed's request back to back for `--seconds` seconds (loopback, bounded in time);
at `--event-at` seconds the event happens:
- user_config:   `serve deploy` of the config with changed user_config (replicas reconfigured in place);
- model_version: `serve deploy` of the config serving another model version (the default model exported
                 to a directory by `python -m serve_app.model.export`: every replica is replaced);
- kill_model:    SIGKILL of one SentimentModel replica;
- kill_ingress:  SIGKILL of the Ingress replica.
Per event it prints failed requests (by status or exception), p50/p99 latency before and in the 10 s after
the event, and the seconds after the event from which every 5-second mean completion rate is at least 80%
of the rate before it (None: not within the run).
`serve deploy` runs with RAY_AUTH_MODE=token: Ray 2.60 turns token auth on for local clusters, and the
CLI answers "Unauthorized" from another shell without it. The last event's config stays deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

EVENTS = ("user_config", "model_version", "kill_model", "kill_ingress")
BODY = {"text": "I love using this product!"}
#: The process title Ray gives a replica of this application's deployments.
REPLICA_TITLE = "ServeReplica:sentiment:{}"


@dataclass
class Outcome:
    started: float
    latency: float
    result: str  # "200", another status, or an exception's name


#: What a client sees when a connection closes before any answer: the request may not have been read, and
#: POST /analyze stores nothing, so sending it again is safe (the retry `--retry-dropped` makes).
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


async def load(url: str, clients: int, seconds: float, outcomes: list[Outcome], t0: float,
               keepalive: bool = True, retry_dropped: bool = False) -> None:
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients if keepalive else 0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def send() -> str:
            try:
                return str((await http.post(f"{url}/analyze", json=BODY)).status_code)
            except DROPPED as exc:
                if not retry_dropped:
                    return type(exc).__name__
                outcomes_retried.append(type(exc).__name__)
                return str((await http.post(f"{url}/analyze", json=BODY)).status_code)

        async def client() -> None:
            while (now := time.monotonic()) < deadline:
                try:
                    result = await send()
                except httpx.HTTPError as exc:
                    result = type(exc).__name__
                outcomes.append(Outcome(now - t0, time.monotonic() - now, result))

        outcomes_retried: list[str] = []
        await asyncio.gather(*(client() for _ in range(clients)))
        if outcomes_retried:
            print(f"  dropped connections retried once: {collections.Counter(outcomes_retried)}", flush=True)


def replica_pids(deployment: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", REPLICA_TITLE.format(deployment)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in found.split())


def serve_deploy(config: dict, workdir: Path) -> None:
    path = workdir / f"deploy-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    serve = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve), "deploy", str(path)], check=True, env=env, capture_output=True, text=True)


def changed_user_config(config: dict) -> dict:
    changed = copy.deepcopy(config)
    for deployment in changed["applications"][0]["deployments"]:
        settings = deployment.setdefault("user_config", {})
        if deployment["name"] == "Ingress":
            settings["max_queued"] = settings.get("max_queued", 128) + 1
        else:
            settings["max_batch_size"] = settings.get("max_batch_size", 64) + 1
    return changed


def other_model_version(config: dict, exported: Path) -> dict:
    changed = copy.deepcopy(config)
    args = changed["applications"][0]["args"]
    args["model"] = str(exported) if args.get("model", "default") != str(exported) else "default"
    return changed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summarize(event: str, outcomes: list[Outcome], event_at: float, seconds: float, detail: dict) -> dict:
    per_second: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    for o in outcomes:
        if o.result == "200":
            per_second[int(o.started + o.latency)] += 1
        else:
            failures[o.result] += 1
    before = [per_second[s] for s in range(3, int(event_at))]
    baseline = sum(before) / max(1, len(before))
    # Back to full rate: from this second on, every 5-second mean is >= 80% of the rate before the event
    # (one second alone is too noisy on a shared 2-core machine).
    means = [sum(per_second[t] for t in range(s, s + 5)) / 5 for s in range(int(seconds) - 4)]
    low = [s for s in range(int(event_at), len(means)) if means[s] < 0.8 * baseline]
    if not low:
        back = int(event_at)
    elif low[-1] + 1 < len(means):
        back = low[-1] + 1
    else:
        back = None  # still below at the end of the run
    window = [o.latency for o in outcomes if event_at <= o.started < event_at + 10 and o.result == "200"]
    steady = [o.latency for o in outcomes if 3 <= o.started and o.started + o.latency < event_at and o.result == "200"]
    return {
        "event": event,
        **detail,
        "requests": len(outcomes),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "rps_before": round(baseline, 1),
        "p50_ms_before": percentile(steady, 0.5), "p99_ms_before": percentile(steady, 0.99),
        "p50_ms_event": percentile(window, 0.5), "p99_ms_event": percentile(window, 0.99),
        "full_rate_again_after_s": None if back is None else round(back - event_at, 1),
        "rps_by_second": [per_second[s] for s in range(int(seconds))],
    }


def act(event: str, config: dict, exported: Path, workdir: Path) -> dict:
    if event == "user_config":
        serve_deploy(changed_user_config(config), workdir)
        return {}
    if event == "model_version":
        new = other_model_version(config, exported)
        serve_deploy(new, workdir)
        config.clear()
        config.update(new)
        return {"model": new["applications"][0]["args"]["model"]}
    deployment = {"kill_model": "SentimentModel", "kill_ingress": "Ingress"}[event]
    pid = replica_pids(deployment)[0]
    os.kill(pid, signal.SIGKILL)
    return {"killed_pid": pid}


async def one_event(event: str, args, config: dict, exported: Path, workdir: Path) -> dict:
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    before = {name: replica_pids(name) for name in ("SentimentModel", "Ingress")}
    loader = asyncio.create_task(load(args.url, args.clients, args.seconds, outcomes, t0, not args.no_keepalive,
                                      args.retry_dropped))
    await asyncio.sleep(args.event_at)
    detail = await asyncio.to_thread(act, event, config, exported, workdir)
    await loader
    after = {name: replica_pids(name) for name in ("SentimentModel", "Ingress")}
    detail["replicas_replaced"] = {name: sorted(set(before[name]) - set(after[name])) != [] for name in before}
    return summarize(event, outcomes, args.event_at, args.seconds, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default=",".join(EVENTS))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--event-at", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between events (replacements finish)")
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--no-keepalive", action="store_true", help="a new connection per request")
    parser.add_argument("--retry-dropped", action="store_true",
                        help="send a request again, once, when its connection closed before any answer")
    args = parser.parse_args(argv)
    events = [e for e in args.events.split(",") if e]
    if unknown := set(events) - set(EVENTS):
        parser.error(f"unknown events {sorted(unknown)}; choose from {EVENTS}")
    config = yaml.safe_load(args.config.read_text())
    results = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = Path(tmp)
        exported = workdir / "model-v2"
        if "model_version" in events:
            subprocess.run([sys.executable, "-m", "serve_app.model.export", str(exported)], check=True, capture_output=True)
        for n, event in enumerate(events):
            if n:
                time.sleep(args.settle)
            result = asyncio.run(one_event(event, args, config, exported, workdir))
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| event | requests | failed | p99 ms before | p99 ms in the 10 s after | >= 80% of the rate before, for good, after (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['event']} | {r['requests']} | {r['failed']} {r['failures'] or ''} | {r['p99_ms_before']} | "
              f"{r['p99_ms_event']} | {r['full_rate_again_after_s']} |")
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
