"""Feed an accelerator: the serving path's own rate when the model costs the CPU nothing.

    .venv/bin/python -m bench.device_mode [--seconds 10] [--levels 32,128] [--texts 1,16]

On Inferentia the forward runs on a NeuronCore and the replica's CPU only tokenizes, pads and moves
requests; what the serving path sustains on the CPU is then the bound. This runs the real application
(`serve run` of serve_config.yaml's deployments and controller_options, the fixed Neuron bucket grid,
tokenizer, bucketing, Ingress and handles) with one change: the backend sleeps (GIL released) for the time
a NeuronCore would take for the padded batch, instead of computing it.

Device time: AWS's published Neuron benchmark for DistilBERT on inf2.xlarge, 5,308 sentences/s at batch 16
and sequence length 128 on the instance's two NeuronCores, i.e. 2,654 x 128 padded tokens/s per core; a
forward of batch b x seq s sleeps b * s / (2,654 * 128) s (6.0 ms for 16 x 128), at least 1 ms (a floor
assumed for fixed per-call cost, not published). Two model replicas stand for the two NeuronCores.
What this does not show: the Neuron runtime's own host CPU use, real latencies per shape, or MiniLM's
speed on a NeuronCore (a 6-layer BERT, as DistilBERT, but not the same graph).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from bench.loadgen import run_load
from bench.run import REPO, start, stop

#: Padded tokens per second of one NeuronCore (AWS: 5,308 sentences/s, batch 16 x 128 tokens, 2 cores).
CORE_TOKENS_PER_S = 5308 / 2 * 128
MIN_FORWARD_S = 0.001
#: The RayService's compiled grid (kuberay/10-rayservice.yaml) with its 512 window.
DEVICE_BUCKETS = {"batch_sizes": [1, 4, 8, 16, 32], "seq_lens": [16, 32, 64, 128, 256, 512]}


def device_seconds(batch_size: int, seq_len: int) -> float:
    return max(MIN_FORWARD_S, batch_size * seq_len / CORE_TOKENS_PER_S)


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


def write_config(out: Path) -> Path:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    [app] = config["applications"]
    app["import_path"] = "bench.device_mode:build_device_app"
    app["args"] = {**app["args"], "buckets": DEVICE_BUCKETS, "dtype": "float32"}
    path = out / "serve_config.device.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_mode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--levels", default="32,128")
    parser.add_argument("--texts", default="1,16", help="texts per request")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config = write_config(args.out)
    serve_bin = str(Path(sys.executable).with_name("serve"))
    url = "http://127.0.0.1:8000/analyze"
    env = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    proc = start([serve_bin, "run", str(config)], url, {"text": "ok"}, args.out / "device_mode.log", env)
    rows = []
    try:
        for texts in [int(n) for n in args.texts.split(",")]:
            body = {"text": "I love using this product!"} if texts == 1 else \
                {"text": [f"I love using this product, review {i}!" for i in range(texts)]}
            run_load(url, body, 8, 3)  # warm-up
            for connections in [int(c) for c in args.levels.split(",")]:
                result = run_load(url, body, connections, args.seconds)
                rows.append((texts, result))
                print(f"  {texts:3d} texts/request c={connections:<4d} {result.rps:8.1f} req/s = "
                      f"{result.rps * texts:8.1f} sentences/s  p50 {result.p50_ms:7.1f} ms  errors {result.errors}", flush=True)
                time.sleep(min(10.0, max(1.0, result.p99_ms / 1000)))
    finally:
        stop(proc)
    print("\n| texts per request | connections | req/s | sentences/s | p50 ms | p99 ms | errors |\n|---:|---:|---:|---:|---:|---:|---:|")
    for texts, r in rows:
        print(f"| {texts} | {r.connections} | {r.rps:.1f} | {r.rps * texts:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
