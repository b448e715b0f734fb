"""The cpu backend's packed Linear weights against eager nn.Linear, in process, one thread (as a replica runs).

    python -m bench.in_process.packed_linears [--config serve_config.yaml] [--rounds 6]

Builds the served classifier twice from the config (tokenizer, buckets, precision as served): once as the
cpu backend builds it (serve_app/backends/cpu.py: `pack_linears`) and once with eager nn.Linear. Times
`classify` on copies of the seed's sentence at several batch sizes, the two alternating, and prints the
median ms per call and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
import yaml

from bench.servers import BODY, REPO

BATCHES = (1, 2, 4, 8, 16, 32)


def build(args: dict, packed: bool):
    from serve_app.backends import cpu
    from serve_app.model.classifier import build_classifier
    from serve_app.config import AppConfig
    from serve_app.model.source import load_classifier

    config = AppConfig.model_validate(args)
    with mock.patch.object(cpu, "pack_linears", cpu.pack_linears if packed else (lambda module: module)):
        return build_classifier(config, load_classifier(config.model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    app_args = yaml.safe_load(args.config.read_text())["applications"][0]["args"]
    classifiers = {"packed": build(app_args, True), "eager": build(app_args, False)}
    print(f"backend {classifiers['packed'].backend.name}; ms per classify() call, median of {args.rounds} rounds")
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for batch in BATCHES:
            texts = [BODY["text"]] * batch
            for name, classifier in classifiers.items():
                calls = max(4, 40 // batch)
                started = time.perf_counter()
                for _ in range(calls):
                    classifier.classify(texts)
                times.setdefault((batch, name), []).append((time.perf_counter() - started) / calls * 1000)
    print("| texts | packed ms | eager ms | eager / packed |\n|---:|---:|---:|---:|")
    for batch in BATCHES:
        packed, eager = (statistics.median(times[(batch, name)]) for name in ("packed", "eager"))
        print(f"| {batch} | {packed:.2f} | {eager:.2f} | {eager / packed:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
