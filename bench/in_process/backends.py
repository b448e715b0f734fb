"""Backends on SST-2 dev, in process: label agreement, accuracy, padding waste and sentences/s.

    python -m bench.in_process.backends [--batch 32] [--data ../shared/data/sst2]

Compares `cpu` (eager, dynamic shapes, float32) with `jit` (TorchScript per compiled bucket; the Neuron
path's shape handling), `cpu` in bfloat16 (`dtype: bfloat16`), `cpu` + int8 dynamic quantization and,
where `onnxruntime`, `onnx` and `onnxscript` are installed, ONNX Runtime in float32 on the same dynamic
padding (bench/in_process/onnx_backend.py; measured and not served: docs/benchmark.md). Texts arrive in dev-file
order in batches of --batch, as @serve.batch would hand them over.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from bench.in_process import onnx_backend
from serve_app.model.classifier import Classifier, build_classifier
from serve_app.config import AppConfig
from serve_app.model.source import load_classifier

REPO = Path(__file__).resolve().parents[2]


def read_dev(data_dir: Path) -> tuple[list[str], list[int]]:
    with open(data_dir / "dev.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]


def evaluate(classifier: Classifier, texts: list[str], batch: int, passes: int = 2) -> dict:
    predictions, padded, real, forwards = [], 0, 0, 0
    for i in range(0, len(texts), batch):
        got, report = classifier.classify(texts[i : i + batch])
        predictions += got
        padded, real, forwards = padded + report.padded_tokens, real + report.real_tokens, forwards + report.forwards
    started = time.perf_counter()
    for _ in range(passes):
        for i in range(0, len(texts), batch):
            classifier.classify(texts[i : i + batch])
    rate = passes * len(texts) / (time.perf_counter() - started)
    return {"predictions": predictions, "padding_waste": padded / real, "forwards": forwards, "sentences_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.in_process.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst2")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    texts, labels = read_dev(args.data)
    loaded = load_classifier(args.model)
    variants = {
        "cpu": AppConfig(backend="cpu"),
        "jit": AppConfig(backend="jit", compile_cache_dir=str(args.out / "jit-cache")),
        "cpu-bf16": AppConfig(backend="cpu", dtype="bfloat16"),
        "cpu-int8": AppConfig(backend="cpu", quantize="int8"),
    }
    factories = {}
    if onnx_backend.available():
        variants["onnxruntime"] = AppConfig(backend="cpu")
        factories["onnxruntime"] = onnx_backend.onnx_backend_factory
    results = {}
    for name, config in variants.items():
        fresh = load_classifier(args.model) if name in ("cpu-bf16", "cpu-int8") else loaded  # both convert in place
        started = time.perf_counter()
        classifier = build_classifier(config, fresh, factories.get(name))
        ready_s = time.perf_counter() - started
        run = evaluate(classifier, texts, args.batch)
        positive = [p.label == "POSITIVE" for p in run.pop("predictions")]
        run["accuracy"] = sum(p == bool(y) for p, y in zip(positive, labels)) / len(labels)
        run["labels"] = positive
        run["ready_s"] = ready_s
        results[name] = run
    reference = results["cpu"]["labels"]
    lines = ["| backend | SST-2 dev acc | agreement with cpu | padded/real tokens | forwards | sentences/s | build+warm-up s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in results.items():
        agreement = sum(a == b for a, b in zip(run.pop("labels"), reference)) / len(reference)
        run["agreement_with_cpu"] = agreement
        lines.append(f"| {name} | {run['accuracy']:.4f} | {agreement:.4f} | {run['padding_waste']:.3f} | {run['forwards']} | "
                     f"{run['sentences_per_s']:.0f} | {run['ready_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps({"batch": args.batch, "results": results, "table_markdown": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
