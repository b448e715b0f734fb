"""How long a new Neuron replica takes from process start to its first answer, with and without the shared
compile cache (`compile_cache_uri`), on the default model and the RayService's bucket grid.

    python -m bench.replica_start [--rounds 2]

Each measurement is a fresh Python process doing what a SentimentModel replica does in __init__ (load the
model, build the neuronx backend: fetch or compile every bucket, warm up) and then classifying one text:
  cold      a new pod, no shared store: compiles every bucket (what every new pod did before);
  shared    a new pod (empty local dir), the store already filled by an earlier pod: fetches every bucket;
  local     the same pod again (local dir warm): loads every bucket.
The compiler is the test stand-in (tests/standin: torch_neuronx.trace = torch.jit.trace), so the compile
column is the stand-in's time, not neuronx-cc's (minutes per bucket on real hardware: the real gap is
larger). file:// stands in for s3://. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
started = time.monotonic()
from serve_app.model.classifier import build_classifier
from serve_app.config import AppConfig
from serve_app.model.source import load_classifier
config = AppConfig(model="default", backend="neuronx", compile_cache_dir=sys.argv[1], compile_cache_uri=sys.argv[2] or None)
loaded = load_classifier(config.model)
classifier = build_classifier(config, loaded)
[prediction], _ = classifier.classify(["I love using this product!"])
stats = classifier.backend.stats
print(json.dumps({"seconds": round(time.monotonic() - started, 1), "label": prediction.label,
                  "compiled": stats.compiled, "fetched": stats.fetched, "loaded": stats.loaded}))
"""


def start_replica(local_dir: Path, store_uri: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests' / 'standin'}", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(local_dir), store_uri], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows: dict[str, list[dict]] = {"cold": [], "shared": [], "local": []}
    for round_ in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="replica-start-"))
        try:
            store = (work / "store").as_uri()
            rows["cold"].append(start_replica(work / "pod-a", ""))
            primed = start_replica(work / "pod-b", store)  # fills the store (a cold start that also pushes)
            order = ["shared", "local"] if round_ % 2 == 0 else ["local", "shared"]
            for mode in order:
                directory = work / ("pod-c" if mode == "shared" else "pod-b")
                rows[mode].append(start_replica(directory, store))
            print(f"round {round_ + 1}: cold {rows['cold'][-1]}, primer {primed}, shared {rows['shared'][-1]}, "
                  f"local {rows['local'][-1]}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| start | seconds to first answer (each round) | buckets compiled / fetched / loaded |")
    print("|---|---|---|")
    for mode, results in rows.items():
        last = results[-1]
        print(f"| {mode} | {' / '.join(str(r['seconds']) for r in results)} | "
              f"{last['compiled']} / {last['fetched']} / {last['loaded']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
