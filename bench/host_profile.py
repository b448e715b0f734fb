"""Where a text's host CPU goes on the stand-in device: CPU per process and py-spy samples per stage.

    .venv/bin/python -m bench.host_profile [--texts 16] [--connections 128] [--seconds 12] [--config FILE]

Starts the application as `bench.device_mode` does (the backend sleeps for a NeuronCore's time), loads it
with wrk, and meanwhile (1) reads each process's CPU time from /proc (HAProxy, the Ingress, the model
replicas, Ray's controller and others) and (2) records the Ingress and one model replica with py-spy
(`--idle` off: CPU only). Prints CPU ms per request and per text for each process, and each recorded
process's samples grouped into stages by the innermost frame that names one (STAGES below).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.device_mode import body_of, server_commands, write_config
from bench.loadgen import run_load
from bench.servers import REPO, start, stop

#: stage -> substrings of a frame ("function (file:line)") that put a sample in it.
STAGES = [
    ("tokenize", ("WindowEncoder", "tokenizers", "_batch_encode_plus", "tokenization_utils")),
    ("bucket plan + pad", ("plan_groups", "pad_to_bucket")),
    ("device wait (sleep)", ("DeviceTimeBackend.forward",)),
    ("labels + result objects", ("Classifier.classify", "Prediction")),
    ("batching (serve.batch, isolation)", ("batching.py", "_run_batch", "classify_isolating", "_classify_request")),
    ("JSON out + response model", ("serialize_response", "jsonable_encoder", "JSONResponse", "render", "_prepare_response_content")),
    ("request parse + validation", ("request_body_to_args", "AnalyzeRequest", "validate_texts", "body (", "json.loads", "decode (json")),
    ("call grouping (Coalescer)", ("coalesce.py",)),
    ("handle call + gRPC", ("handle.py", "router.py", "grpc", "pickle", "serialization", "replica.py", "request_router")),
    ("HTTP server (uvicorn, direct ingress)", ("uvicorn", "h11", "httptools", "proxy", "starlette")),
]


def ray_processes() -> dict[str, list[int]]:
    """role -> pids of this machine's processes the service runs."""
    roles: dict[str, list[int]] = collections.defaultdict(list)
    for line in subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        for role, marker in (("Ingress", "ServeReplica:sentiment:Ingress"), ("SentimentModel", "ServeReplica:sentiment:SentimentModel"),
                             ("HAProxy", "haproxy"), ("ServeController", "ServeController"), ("raylet", "raylet"),
                             ("gcs_server", "gcs_server"), ("wrk", "wrk ")):
            if marker in args and "bench.host_profile" not in args:
                roles[role].append(int(pid))
                break
    return roles


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_of(stack: str) -> str:
    """The stage of the innermost frame that names one (a sample's own work, not its callers')."""
    for frame in reversed(stack.split(";")):
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "other (event loop, logging, metrics, ...)"


def record(pid: int, seconds: float, out: Path) -> collections.Counter:
    subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--rate", "200", "--format", "raw", "--nonblocking", "-o", str(out)], capture_output=True)
    stages: collections.Counter = collections.Counter()
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        stages[stage_of(stack)] += int(count)
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml", help="the serve config to run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command, url, env = server_commands(write_config(args.out, args.config), args.out)["serve"]()
    proc = start(command, url, {"text": "ok"}, args.out / "host_profile_serve.log", env)
    try:
        body = body_of(args.texts)
        run_load(url, body, 8, 3)  # warm-up
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(load=run_load(url, body, args.connections, args.seconds)))
        load.start()
        time.sleep(1.0)
        roles = ray_processes()
        before = {pid: cpu_seconds(pid) for pids in roles.values() for pid in pids}
        window_started = time.monotonic()
        recordings = {}
        threads = [threading.Thread(target=lambda role=role, pid=pids[0]: recordings.update(
                       {role: record(pid, args.seconds - 3, args.out / f"host_profile_{role}.txt")}))
                   for role, pids in roles.items() if role in ("Ingress", "SentimentModel")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        window = time.monotonic() - window_started
        used = {role: sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids) for role, pids in roles.items()}
        load.join()
    finally:
        stop(proc)
    rps = result["load"].rps
    print(f"\n{args.texts} texts/request, {args.connections} connections: {rps:.0f} req/s = {rps * args.texts:.0f} texts/s "
          f"(py-spy attached to the Ingress and one model replica: rates are lower than without it)\n")
    print("| process | CPU cores busy | CPU ms per request | CPU us per text |\n|---|---:|---:|---:|")
    for role, seconds in sorted(used.items(), key=lambda item: -item[1]):
        busy = seconds / window
        print(f"| {role} ({len(roles[role])}) | {busy:.2f} | {busy / rps * 1000:.3f} | {busy / (rps * args.texts) * 1e6:.1f} |")
    for role, stages in recordings.items():
        total = sum(stages.values()) or 1
        print(f"\n{role} (one process), py-spy samples by stage:\n\n| stage | share |\n|---|---:|")
        for stage, count in stages.most_common():
            print(f"| {stage} | {100 * count / total:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
