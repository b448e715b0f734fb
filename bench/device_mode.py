"""Feed an accelerator: the serving path's own rate when the model costs the CPU nothing.

    .venv/bin/python -m bench.device_mode [--seconds 10] [--levels 32,128] [--texts 1,16]
    .venv/bin/python -m bench.device_mode --peers [--passes 2]     # beside LitServe on the same stand-in

On Inferentia the forward runs on a NeuronCore and the replica's CPU only tokenizes, pads and moves
requests; what the serving path sustains on the CPU is then the bound. This runs the real application
(`serve run` of serve_config.yaml's deployments and controller_options, the fixed Neuron bucket grid,
tokenizer, bucketing, Ingress and handles) with one change: the backend sleeps (GIL released) for the time
a NeuronCore would take for the padded batch, instead of computing it (bench/device_time.py: AWS's published
inf2.xlarge DistilBERT figure). Two model replicas stand for the two NeuronCores.

`--peers` also runs LitServe given the same stand-in (bench/apps/litserve_device_app.py: the real tokenizer, a
sleep for the padded forwards' device time, two workers), one server at a time, in alternating order over
`--passes` passes, 1- and 16-text bodies at 8, 32 and 128 connections, and prints each figure's median and
range with the per-pass ratio.
What this does not show: the Neuron runtime's own host CPU use, real latencies per shape, or MiniLM's
speed on a NeuronCore (a 6-layer BERT, as DistilBERT, but not the same graph).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from bench.device_time import DEVICE_BUCKETS, device_seconds
from bench.loadgen import run_load
from bench.servers import LITSERVE_PORT, REPO, start, stop


class DeviceTimeBackend:
    """A backend whose forward costs device time only: sleeps for the bucket's time, returns zero logits."""

    name = "device-time"
    on_host = False  # as a NeuronCore: the forward waits, the replica's event loop keeps taking calls

    def __init__(self, grid, num_labels: int) -> None:
        self.grid = grid
        self.num_labels = num_labels

    def forward(self, input_ids, attention_mask):
        import torch

        time.sleep(device_seconds(*input_ids.shape))
        return torch.zeros((input_ids.shape[0], self.num_labels))

    def warm_up(self) -> None:
        pass


def device_backend(config, loaded) -> DeviceTimeBackend:
    return DeviceTimeBackend(config.buckets.grid(fixed=True), loaded.model.config.num_labels)


def build_device_app(args: dict):
    """`import_path` of the bench's config: the service's app with the device-time backend."""
    from serve_app.app import compose_app
    from serve_app.config import parse_app_args

    return compose_app(parse_app_args(args), backend_factory=device_backend)


def write_config(out: Path, source: Path = REPO / "serve_config.yaml") -> Path:
    config = yaml.safe_load(source.read_text())
    [app] = config["applications"]
    app["import_path"] = "bench.device_mode:build_device_app"
    app["args"] = {**app["args"], "buckets": DEVICE_BUCKETS, "dtype": "float32"}
    path = out / "serve_config.device.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def body_of(texts: int) -> dict:
    return {"text": "I love using this product!"} if texts == 1 else \
        {"text": [f"I love using this product, review {i}!" for i in range(texts)]}


def server_commands(config: Path, out: Path) -> dict[str, Callable[[], tuple[list[str], str, dict]]]:
    """name -> a function giving (command, URL, extra env) of a server this bench runs on the stand-in device
    (called when that server is first needed: the LitServe peer's virtualenv and model are made then)."""
    path = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"

    def serve():
        return ([str(Path(sys.executable).with_name("serve")), "run", str(config)], "http://127.0.0.1:8000/analyze",
                {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path})

    def litserve():
        from bench.peers import ensure_venv

        model_dir = out / "model"
        if not (model_dir / "config.json").is_file():  # the exported default model: its tokenizer and labels
            subprocess.run([sys.executable, "-m", "serve_app.model.export", str(model_dir)], cwd=REPO, check=True)
        return ([str(ensure_venv("litserve") / "python"), "bench/apps/litserve_device_app.py", str(model_dir), str(LITSERVE_PORT)],
                f"http://127.0.0.1:{LITSERVE_PORT}/predict", {"HF_HUB_OFFLINE": "1", "PYTHONPATH": path})

    return {"serve": serve, "litserve": litserve}


def measure(name: str, command: list[str], url: str, env: dict, texts_list: list[int], levels: list[int],
            seconds: float, log: Path) -> list[dict]:
    proc = start(command, url, {"text": "ok"}, log, env)
    rows = []
    try:
        for texts in texts_list:
            body = body_of(texts)
            run_load(url, body, 8, 3)  # warm-up
            for connections in levels:
                result = run_load(url, body, connections, seconds)
                rows.append({"server": name, "texts": texts, **result.as_dict()})
                print(f"  {name:8s} {texts:3d} texts/request c={connections:<4d} {result.rps:8.1f} req/s = "
                      f"{result.rps * texts:8.1f} sentences/s  p50 {result.p50_ms:7.1f} ms  errors {result.errors}", flush=True)
                time.sleep(min(10.0, max(1.0, result.p99_ms / 1000)))
    finally:
        stop(proc)
    time.sleep(2)  # let the stopped server's processes go before the next one is measured
    return rows


def peer_table(rows: list[dict]) -> str:
    """Median [range] of sentences/s per server, body and level, and the median of the per-pass ratios."""
    lines = ["| texts per request | connections | this service sentences/s | LitServe (same stand-in) | ratio (per-pass median) |",
             "|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["texts"], r["connections"]) for r in rows})
    for texts, connections in keys:
        def rates(server):
            return {r["run"]: r["rps"] * texts for r in rows if (r["server"], r["texts"], r["connections"]) == (server, texts, connections)}
        ours, peer = rates("serve"), rates("litserve")
        ratios = [ours[k] / peer[k] for k in ours if k in peer and peer[k] > 0]
        def cell(values):
            v = sorted(values)
            return f"{statistics.median(v):,.0f} [{v[0]:,.0f}-{v[-1]:,.0f}]" if v else "-"
        ratio = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" if ratios else "-"
        lines.append(f"| {texts} | {connections} | {cell(ours.values())} | {cell(peer.values())} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_mode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--levels", default=None, help="connections (default 32,128; with --peers 8,32,128)")
    parser.add_argument("--texts", default="1,16", help="texts per request")
    parser.add_argument("--peers", action="store_true", help="also run LitServe on the same stand-in device")
    parser.add_argument("--passes", type=int, default=2, help="with --peers: passes, in alternating order")
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml", help="the serve config to run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in (args.levels or ("8,32,128" if args.peers else "32,128")).split(",")]
    texts_list = [int(n) for n in args.texts.split(",")]
    commands = server_commands(write_config(args.out, args.config), args.out)
    names = ["serve", "litserve"] if args.peers else ["serve"]
    rows = []
    for pass_no in range(1, (args.passes if args.peers else 1) + 1):
        order = names if pass_no % 2 else names[::-1]
        for name in order:
            print(f"pass {pass_no}: {name} ...", flush=True)
            command, url, env = commands[name]()
            for row in measure(name, command, url, env, texts_list, levels, args.seconds, args.out / f"device_{name}.log"):
                rows.append({**row, "run": pass_no})
    (args.out / "device_mode.json").write_text(json.dumps({"levels": levels, "texts": texts_list, "rows": rows}, indent=1))
    if args.peers:
        print("\n" + peer_table(rows))
        return 0
    print("\n| texts per request | connections | req/s | sentences/s | p50 ms | p99 ms | errors |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['texts']} | {r['connections']} | {r['rps']:.1f} | {r['rps'] * r['texts']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
