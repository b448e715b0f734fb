"""Benchmark this service against the seed article's Flask app and the frameworks a user might pick instead
(LitServe, Infinity), on the same weights, in one run.

    make bench        (or: .venv/bin/python -m bench.run [--seconds 10] [--levels 1,8,32,128]
                       [--servers seed,serve,litserve,infinity] [--passes 2])

One server up at a time on loopback (an idle server still takes CPU): each is started, warmed up, loaded
with wrk (the seed's body; Infinity's own /classify body) at every connection count, and stopped with
SIGINT (as Ctrl-C; the seconds it took are reported). Two passes, the second in the opposite order; the
table shows each server's best pass and the range over passes. `serve` is plain `serve run
serve_config.yaml`. The peers run in their own virtualenvs (bench/peers.py, created on first use). Then
the in-process ceiling (the model's own batched forward, no HTTP). Writes bench/results/results.json and
bench/results/throughput.png. Every server started is stopped on every way out.
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
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import NO_WRK_WARNING, announce_load_tool, run_load
from bench.report import paired_ratios, plot, render_paired, render_table, render_targets, summarize
from bench.servers import (BODY, INFINITY_PORT, LITSERVE_PORT, REPO, SEED_PORT, SERVE_PORT, Server, start, stop, stop_all,
                           without_throughput_mode)

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

    from serve_app.model.classifier import build_classifier
    from serve_app.config import AppConfig, BucketSettings
    from serve_app.model.source import load_classifier

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
    encoder layer (serve_app/model/pooling.py), which the service skips and `pipeline()` would pay in full
    (+1.1 ms a request here, +13%). Without it the seed runs exactly the six trained encoder layers the
    service runs and reads [CLS] through the pooler: the same cost per request, not the same predictions.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve_app.model.pooling import remove_mean_pooling_layer

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


def define_servers(names: list[str], config: str, serve_env: dict, seed_dir: Path, precision: str,
                   out: Path) -> list[Server]:
    """The servers named, on the same exported weights: the seed and the peers serve `seed_dir` (the export
    without the pooling layer the service skips); the peers in the served precision, the seed in float32
    as the article runs it. Peers' virtualenvs are created here on first use."""
    from bench.peers import ensure_venv

    offline = (("HF_HUB_OFFLINE", "1"),)
    serve_bin = str(Path(sys.executable).with_name("serve"))
    peer_dtype = "bfloat16" if precision == "bfloat16" else "float32"
    ray = offline + (("RAY_USAGE_STATS_ENABLED", "0"),)
    defined = {
        "seed": lambda: Server("seed", "seed Flask + pipeline (float32)",
                               (sys.executable, "bench/apps/seed_app.py", str(seed_dir), str(SEED_PORT)),
                               f"http://127.0.0.1:{SEED_PORT}/analyze", BODY, offline),
        "serve": lambda: Server("serve", f"this service: serve run {config}" + (" (+ env)" if serve_env else ""),
                                (serve_bin, "run", config), f"http://127.0.0.1:{SERVE_PORT}/analyze", BODY,
                                ray + tuple(serve_env.items())),
        "serve-ray-defaults": lambda: Server(
            "serve-ray-defaults", "this service without controller_options (Ray's Python proxy)",
            (serve_bin, "run", without_throughput_mode(config, out)), f"http://127.0.0.1:{SERVE_PORT}/analyze",
            BODY, ray + tuple(serve_env.items())),
        "litserve": lambda: Server("litserve", f"LitServe 0.2.19 (2 workers x 1 thread, batch 32, 5 ms; {peer_dtype})",
                                   (str(ensure_venv("litserve") / "python"), "bench/apps/litserve_app.py", str(seed_dir),
                                    str(LITSERVE_PORT), peer_dtype),
                                   f"http://127.0.0.1:{LITSERVE_PORT}/predict", BODY, offline),
        "infinity": lambda: Server("infinity", f"Infinity 0.0.78 (torch engine, batch 32; {peer_dtype})",
                                   (str(ensure_venv("infinity") / "infinity_emb"), "v2", "--model-id", str(seed_dir),
                                    "--served-model-name", "sentiment", "--engine", "torch", "--device", "cpu",
                                    "--batch-size", "32", "--dtype", peer_dtype, "--host", "127.0.0.1",
                                    "--port", str(INFINITY_PORT)),
                                   f"http://127.0.0.1:{INFINITY_PORT}/classify",
                                   {"input": [BODY["text"]], "model": "sentiment"}, offline + (("INFINITY_ANONYMOUS_USAGE_STATS", "0"),)),
    }
    unknown = set(names) - set(defined)
    if unknown:
        raise SystemExit(f"unknown servers {sorted(unknown)}; known: {sorted(defined)}")
    return [defined[name]() for name in names]


def measure(server: Server, levels: list[int], seconds: float, out: Path, pass_no: int) -> list[dict]:
    """Start one server, warm it up, load it at every level, stop it (also when anything fails)."""
    print(f"pass {pass_no}: starting {server.name} ...", flush=True)
    proc = start(list(server.command), server.url, server.body, out / f"{server.name}.log", dict(server.env))
    rows = []
    try:
        run_load(server.url, server.body, 8, 3)  # warm-up
        for connections in levels:
            result = run_load(server.url, server.body, connections, seconds).as_dict()
            result.update(server=server.name, run=pass_no)
            rows.append(result)
            print(f"  {server.name:11s} c={connections:<4d} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
                  f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}", flush=True)
            # Requests still queued when the load stops keep the server busy for about its p99.
            time.sleep(min(10.0, max(1.0, result["p99_ms"] / 1000)))
    finally:
        took = stop(proc)
    print(f"  {server.name}: SIGINT (Ctrl-C) ended it in " + (f"{took:.1f} s" if took is not None else "> 60 s"), flush=True)
    for row in rows:
        row["sigint_exit_s"] = took
    time.sleep(2)  # let the stopped server's processes go before the next one is measured
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per level and server")
    parser.add_argument("--levels", default="1,8,32,128", help="connection counts")
    parser.add_argument("--servers", default="seed,serve,litserve,infinity",
                        help="servers to measure, one at a time, in this order (the second pass reverses it); "
                             "also: serve-ray-defaults (the config without its controller_options: Ray's Python proxy)")
    parser.add_argument("--passes", type=int, default=2, help="passes over the servers, alternating the order")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--config", default="serve_config.yaml", help="serve config to benchmark")
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for `serve run` (the 'serve' server)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    serve_env = dict(item.split("=", 1) for item in args.serve_env)
    args.out.mkdir(parents=True, exist_ok=True)
    tool = announce_load_tool()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the finally blocks below
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    model_dir = args.out / "model"
    # Always re-export: a stale directory from an earlier default model would benchmark other weights.
    subprocess.run([sys.executable, "-m", "serve_app.model.export", str(model_dir)], cwd=REPO, check=True)
    seed_dir = seed_model_dir(model_dir)
    served = precision_args(REPO / args.config)
    servers = define_servers(args.servers.split(","), args.config, serve_env, seed_dir, describe_precision(served),
                             args.out)
    rows: list[dict] = []
    try:
        for pass_no in range(1, args.passes + 1):
            for server in (servers if pass_no % 2 else servers[::-1]):
                rows.extend(measure(server, levels, args.seconds, args.out, pass_no))
    finally:
        stop_all()
    ceiling = None if args.no_ceiling else in_process_ceiling(model_dir, served=served)
    summary = summarize(rows, servers, levels)
    table = render_table(summary, servers, levels)
    targets = render_targets(summary, levels)
    print(f"\nbest of {args.passes} passes, [range over passes] (p50 ms of the best pass); {tool}, body {BODY}\n")
    if tool != "wrk":
        print(NO_WRK_WARNING + "\n")
    print(table + "\n\n" + targets)
    if args.passes >= 3:  # the steadier comparison: ratios within a pass, their median over passes
        print("\n" + render_paired(rows))
    if ceiling:
        best_serve = max((r["rps"] for r in rows if r["server"] == "serve"), default=0.0)
        print(f"\nin-process ceiling ({ceiling['precision']}, as served): {ceiling['sentences_per_s']:.1f} sentences/s "
              f"at batch {ceiling['best_batch']} (one process, {os.cpu_count()} threads: "
              f"{ceiling['one_process_all_threads']:.1f}; {ceiling['processes']} one-thread processes: "
              f"{ceiling['one_thread_processes']:.1f}); serving at saturation: {best_serve:.1f} req/s = "
              f"{100 * best_serve / ceiling['sentences_per_s']:.0f}% of it")
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "body": BODY, "seconds_per_level": args.seconds, "config": args.config, "serve_env": serve_env,
        "servers": [asdict(s) for s in servers], "seed_model": str(seed_dir), "rows": rows,
        "ceiling": ceiling, "table_markdown": table, "targets": targets,
        "paired_ratios": {f"{peer} c={c}": values for (peer, c), values in paired_ratios(rows).items()},
        "load_tool": tool,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, servers, levels, ceiling["sentences_per_s"] if ceiling else float("nan"), args.out / "throughput.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
