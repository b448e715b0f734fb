"""Benchmark this service against the seed article's Flask app on the same weights, in one run.

    make bench        (or: .venv/bin/python -m bench.run [--seconds 10] [--levels 1,8,32,128] [--plain])

Starts both servers on loopback (the seed app on :5000, this service as `make serve` runs it on :8000:
`serve run serve_config.yaml` in Ray's high-throughput mode; --plain drops that mode), loads
them alternately with the same HTTP load generator and body at each connection count, then measures the
in-process ceiling (the model's own batched forward, no HTTP). Prints a table and writes
bench/results/results.json and bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.loadgen import run_load

REPO = Path(__file__).resolve().parents[1]
BODY = {"text": "I love using this product!"}
#: Same as the Makefile's SERVE_ENV (`make serve`): Ray's high-throughput mode with the HAProxy ingress.
FAST_SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def start(cmd: list[str], url: str, log: Path, env: dict | None = None, timeout_s: float = 300) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.post(url, json=BODY, timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise SystemExit(f"{' '.join(cmd)} did not answer within {timeout_s} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


#: The served app's args that change what one forward costs; the ceiling runs the model as served.
PRECISION_ARGS = ("quantize", "dtype")


def precision_args(config_path: Path) -> dict:
    """`quantize` / `dtype` of the served application (serve_config.yaml `args`), for the ceiling."""
    import yaml

    args = yaml.safe_load(config_path.read_text())["applications"][0].get("args") or {}
    return {key: args[key] for key in PRECISION_ARGS if key in args}


def describe_precision(served: dict) -> str:
    """What the ceiling (and the service) runs on this machine: 'int8', 'bfloat16' or 'float32'."""
    from serve_app.backends.cpu import resolve_precision

    return resolve_precision(served.get("quantize", "none"), served.get("dtype", "float32"))


def _forward_rate(model_dir: Path, batch: int, seconds: float, threads: int | None = None, barrier=None,
                  served: dict | None = None) -> float:
    """Sentences/s of `classify` on `batch` copies of the seed's text (tokenize + bucket + forward), in
    forwards of `batch` (the served config's bucket grid caps a forward at its largest batch size), with
    the served config's precision (`served`: quantize / dtype)."""
    import torch

    from serve_app.classifier import build_classifier
    from serve_app.config import AppConfig, BucketSettings
    from serve_app.model_source import load_classifier

    if threads:
        torch.set_num_threads(threads)
    config = AppConfig(backend="cpu", buckets=BucketSettings(batch_sizes=[batch]), **(served or {}))
    classifier = build_classifier(config, load_classifier(str(model_dir)))
    texts = [BODY["text"]] * batch
    classifier.classify(texts)
    if barrier is not None:
        barrier.wait()  # every process measures the same window
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.classify(texts)
        done += batch
    return done / (time.perf_counter() - started)


def seed_model_dir(model_dir: Path) -> Path:
    """The directory the seed app serves: `model_dir` itself, or for a mean-pooled model a copy without the
    pooling layer.

    `transformers.pipeline` cannot mean-pool, so a mean-pooled export carries the pooling as a seventh
    encoder layer (serve_app/pooling.py), which the service skips and `pipeline()` would pay in full
    (+1.1 ms a request here, +13%). Without it the seed runs exactly the six trained encoder layers the
    service runs and reads [CLS] through the pooler: the same cost per request, not the same predictions.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve_app.pooling import remove_mean_pooling_layer

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    if not remove_mean_pooling_layer(model):
        return model_dir
    out = model_dir.with_name(model_dir.name + "-seed")
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


def in_process_ceiling(model_dir: Path, seconds: float = 3.0, served: dict | None = None) -> dict:
    """The model's own throughput on this machine, no serving: the better of one process on every core
    (intra-op threads, each batch size) and one single-thread process per core at the best batch size
    (what replicas of one thread each can reach). `served`: the served precision (quantize / dtype)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    by_batch = {batch: _forward_rate(model_dir, batch, seconds, served=served) for batch in (1, 8, 16, 32, 64, 128)}
    best = max(by_batch, key=by_batch.get)
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(cores, mp_context=context) as pool:
        barrier = manager.Barrier(cores, timeout=300)
        futures = [pool.submit(_forward_rate, model_dir, best, 2 * seconds, 1, barrier, served) for _ in range(cores)]
        per_process = [future.result(timeout=600) for future in futures]
    one_process, processes = by_batch[best], sum(per_process)
    return {
        "best_batch": best, "sentences_per_s": max(one_process, processes),
        "one_process_all_threads": one_process, "by_batch": by_batch,
        "one_thread_processes": processes, "processes": cores, "per_process": per_process, "served": served or {},
        "precision": describe_precision(served or {}),
    }


def plot(rows: list[dict], ceiling: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("seed", "o--"), ("serve", "s-")):
        pts = [r for r in rows if r["server"] == name]
        label = "seed Flask app" if name == "seed" else "this service (Ray Serve)"
        left.plot([p["connections"] for p in pts], [p["rps"] for p in pts], style, label=label)
        right.plot([p["connections"] for p in pts], [p["p99_ms"] for p in pts], style, label=label)
    left.axhline(ceiling, color="grey", linestyle=":", label="in-process ceiling")
    for axis, title in ((left, "throughput (req/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per level and server")
    parser.add_argument("--levels", default="1,8,32,128", help="connection counts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--config", default="serve_config.yaml", help="serve config to benchmark")
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for `serve run` (overrides the defaults)")
    parser.add_argument("--plain", action="store_true",
                        help="plain `serve run serve_config.yaml` (Ray's Python proxy) instead of `make serve`'s "
                             "high-throughput mode")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    serve_env = {**({} if args.plain else FAST_SERVE_ENV), **dict(item.split("=", 1) for item in args.serve_env)}
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model"
    # Always re-export: a stale directory from an earlier default model would benchmark other weights.
    subprocess.run([sys.executable, "-m", "serve_app.export_model", str(model_dir)], cwd=REPO, check=True)

    print("starting the seed app and the service ...", flush=True)
    seed_dir = seed_model_dir(model_dir)
    seed = start([sys.executable, "bench/seed_app.py", str(seed_dir), "5000"], "http://127.0.0.1:5000/analyze",
                 args.out / "seed.log", {"HF_HUB_OFFLINE": "1"})
    serve_bin = str(Path(sys.executable).with_name("serve"))
    ours = start([serve_bin, "run", args.config], "http://127.0.0.1:8000/analyze", args.out / "serve.log",
                 {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", **serve_env})
    urls = {"seed": "http://127.0.0.1:5000/analyze", "serve": "http://127.0.0.1:8000/analyze"}
    rows = []
    try:
        for name, url in urls.items():
            run_load(url, BODY, 8, 3)  # warm-up
        for connections in levels:
            for name, url in urls.items():  # alternate the two at each level
                result = run_load(url, BODY, connections, args.seconds).as_dict()
                result["server"] = name
                rows.append(result)
                # Requests still queued when the load stops keep the server busy for about its p99:
                # let them drain so the next server is not measured against the previous one's backlog.
                time.sleep(min(10.0, max(1.0, result["p99_ms"] / 1000)))
                print(f"  {name:5s} c={connections:<4d} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
                      f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}", flush=True)
    finally:
        stop(ours)
        stop(seed)
    ceiling = in_process_ceiling(model_dir, served=precision_args(REPO / args.config))

    def pick(name, c):
        return next(r for r in rows if r["server"] == name and r["connections"] == c)

    lines = ["| connections | seed req/s | serve req/s | ratio | seed p50 ms | serve p50 ms | seed p99 ms | serve p99 ms | errors (seed/serve) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in levels:
        s, o = pick("seed", c), pick("serve", c)
        lines.append(f"| {c} | {s['rps']:.1f} | {o['rps']:.1f} | {o['rps'] / s['rps']:.2f}x | {s['p50_ms']:.1f} | "
                     f"{o['p50_ms']:.1f} | {s['p99_ms']:.1f} | {o['p99_ms']:.1f} | {s['errors']}/{o['errors']} |")
    best_serve = max(r["rps"] for r in rows if r["server"] == "serve")
    lines.append("")
    lines.append(f"in-process ceiling ({ceiling['precision']}, as served): {ceiling['sentences_per_s']:.1f} sentences/s at batch {ceiling['best_batch']} "
                 f"(one process, {os.cpu_count()} threads: {ceiling['one_process_all_threads']:.1f}; "
                 f"{ceiling['processes']} one-thread processes: {ceiling['one_thread_processes']:.1f}); "
                 f"serving at saturation: {best_serve:.1f} req/s = {100 * best_serve / ceiling['sentences_per_s']:.0f}% of it")
    table = "\n".join(lines)
    print("\n" + table)
    summary = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "body": BODY, "seconds_per_level": args.seconds, "config": args.config, "serve_env": serve_env,
        "seed_model": str(seed_dir.relative_to(REPO) if seed_dir.is_relative_to(REPO) else seed_dir), "rows": rows,
        "ceiling": ceiling, "table_markdown": table, "load_tool": rows[0]["tool"] if rows else None,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, ceiling["sentences_per_s"], args.out / "throughput.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
