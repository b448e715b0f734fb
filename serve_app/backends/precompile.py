"""Precompile every shape bucket into a compile cache that replicas load instead of compiling.

    python -m serve_app.backends.precompile --backend {jit,neuronx,neuron} --out DIR [--model default]
        [--cache-uri s3://BUCKET/compile-cache] [--batch-sizes 1,4,8,16,32] [--seq-lens 16,32,64,128]

Writes one artifact per bucket plus DIR/manifest.json, keyed by the weights' sha256, backend, compiler
version and bucket. With --cache-uri, buckets already in the shared store are fetched instead of compiled
and new ones are pushed there, where every replica with the same `compile_cache_uri` finds them. Run it on
the instance type that serves (neuronx artifacts are for inf2/trn1, neuron artifacts for inf1), with the
image that serves (the compiler version is part of the key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from serve_app.backends import BackendError, create_backend
from serve_app.config import AppConfig, BucketSettings
from serve_app.model.source import DEFAULT_SOURCE, ModelLoadError, load_classifier


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    defaults = BucketSettings()
    parser = argparse.ArgumentParser(prog="python -m serve_app.backends.precompile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, choices=["jit", "neuronx", "neuron"])
    parser.add_argument("--out", required=True, help="compile cache directory")
    parser.add_argument("--model", default=DEFAULT_SOURCE, help="model source (default: %(default)s)")
    parser.add_argument("--cache-uri", default=None, help="shared artifact store to fetch from and push to (s3://...)")
    parser.add_argument("--batch-sizes", type=_int_list, default=defaults.batch_sizes)
    parser.add_argument("--seq-lens", type=_int_list, default=defaults.seq_lens)
    args = parser.parse_args(argv)
    try:
        config = AppConfig(
            model=args.model,
            backend=args.backend,
            compile_cache_dir=args.out,
            compile_cache_uri=args.cache_uri,
            buckets=BucketSettings(batch_sizes=args.batch_sizes, seq_lens=args.seq_lens),
        )
        started = time.monotonic()
        loaded = load_classifier(config.model)
        backend = create_backend(config, loaded)
    except (ModelLoadError, BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({
        "backend": backend.name,
        "buckets": len(backend.grid.all()),
        "compiled": backend.stats.compiled,
        "loaded_from_cache": backend.stats.loaded,
        "fetched": backend.stats.fetched,
        "pushed": backend.stats.pushed,
        "weights_sha256": loaded.weights_sha256,
        "out": args.out,
        "seconds": round(time.monotonic() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
