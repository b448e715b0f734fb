"""A/B of serving variants through `serve run`, alternating, several rounds: the evidence for a setting.

    python -m bench.ab serve_config.yaml other.yaml [--rounds 3] [--levels 8,32,128] [--seconds 8]
    python -m bench.ab serve_config.yaml /path/to/other/checkout::serve_config.yaml
    python -m bench.ab serve_config.yaml other.yaml --device --texts 16    # on bench.device_mode's stand-in device
    python -m bench.ab bench/serve_config.device_batching.yaml floor:http floor:handle --device --texts 16

Each variant is a serve config, or `DIR::CONFIG` to run another checkout's code (cwd and PYTHONPATH DIR),
e.g. a `git worktree` of the commit before a change, or `floor:http` / `floor:handle`: Ray Serve's own
layers with no model work (bench/apps/serve_floor.py) under serve_config.yaml's controller and HTTP options. One server up at a time; each round runs every
variant (started, warmed up, loaded at each level with the seed's body, stopped), the order reversed on
every other round, so a slow spell of this shared machine does not land on one variant only. Prints the
median and range of req/s (and median p50) per variant and level, and each variant's median over the first.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import yaml

from bench.device_mode import body_of, write_config
from bench.loadgen import announce_load_tool, run_load
from bench.servers import BODY, REPO, SERVE_PORT, start, stop, stop_all

URL = f"http://127.0.0.1:{SERVE_PORT}/analyze"


def parse_variant(spec: str) -> tuple[Path, str]:
    """`CONFIG` (this checkout) or `DIR::CONFIG` (CONFIG relative to DIR)."""
    code, _, config = spec.rpartition("::")
    return (Path(code).resolve() if code else REPO), config


#: `floor:NAME` variants -> the app of bench/apps/serve_floor.py they run.
FLOOR_APPS = {"http": "bench.apps.serve_floor:http_only", "handle": "bench.apps.serve_floor:with_handle"}
SERVICE_APP = "serve_app.app:build_app"


def write_floor_config(out: Path, name: str, source: Path = REPO / "serve_config.yaml") -> Path:
    """A serve config running floor app `name` with `source`'s controller, proxy and HTTP options."""
    config = yaml.safe_load(source.read_text())
    floor = {key: config[key] for key in ("controller_options", "proxy_location", "http_options") if key in config}
    floor["applications"] = [{"name": "floor", "route_prefix": "/", "import_path": FLOOR_APPS[name]}]
    path = out / f"serve_config.floor_{name}.yaml"
    path.write_text(yaml.safe_dump(floor, sort_keys=False))
    return path


def run_variant(spec: str, levels: list[int], seconds: float, log: Path, body: dict = BODY,
                device_dir: Path | None = None) -> dict[int, tuple[float, float]]:
    """{connections: (req/s, p50 ms)} for one start of one variant; raises if any request failed.
    With `device_dir`, the variant's config runs with bench.device_mode's stand-in backend (written there)."""
    variant_dir = (device_dir or log.parent / "ab_configs") / hashlib.sha1(spec.encode()).hexdigest()[:10]
    if spec.startswith("floor:"):
        variant_dir.mkdir(parents=True, exist_ok=True)
        code, config = REPO, str(write_floor_config(variant_dir, spec.removeprefix("floor:")))
    else:
        code, config = parse_variant(spec)
    if device_dir is not None and _import_path(code / config) == SERVICE_APP:  # the service, not a floor app
        variant_dir.mkdir(parents=True, exist_ok=True)
        config = str(write_config(variant_dir, code / config))
    serve_bin = str(Path(sys.executable).with_name("serve"))
    env = {"PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = start([serve_bin, "run", config], URL, BODY, log, env, cwd=code)
    try:
        run_load(URL, body, 8, 3)  # warm-up
        results = {}
        for connections in levels:
            result = run_load(URL, body, connections, seconds)
            if result.errors:
                raise SystemExit(f"{spec}: {result.errors} failed requests at {connections} connections; see {log}")
            results[connections] = (result.rps, result.p50_ms)
            time.sleep(1)
        return results
    finally:
        stop(proc)
        time.sleep(2)


def _import_path(config: Path) -> str:
    [app] = yaml.safe_load(config.read_text())["applications"]
    return app["import_path"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="serve configs (or DIR::CONFIG); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="8,32,128")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device", action="store_true",
                        help="run the service's configs on bench.device_mode's stand-in device (others as they are)")
    parser.add_argument("--texts", type=int, default=1, help="texts per request (bench.device_mode's bodies)")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    announce_load_tool()
    body = body_of(args.texts)
    runs: dict[str, list[dict[int, tuple[float, float]]]] = {spec: [] for spec in args.variants}
    try:
        for round_no in range(1, args.rounds + 1):
            order = args.variants if round_no % 2 else list(reversed(args.variants))
            for spec in order:
                results = run_variant(spec, levels, args.seconds, args.out / "ab.log", body,
                                      args.out / "ab_device_configs" if args.device else None)
                runs[spec].append(results)
                print(f"round {round_no} {spec}: " + "  ".join(f"c={c} {rps:.0f} req/s ({p50:.1f} ms)"
                                                             for c, (rps, p50) in results.items()), flush=True)
    finally:
        stop_all()
    print(f"\n{args.texts} text(s) per request{' on the stand-in device' if args.device else ''}")
    print(f"{args.rounds} rounds, alternating order: median req/s [range] (median p50 ms); x = median / the first's\n")
    print("| variant | " + " | ".join(f"c={c}" for c in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    base = {c: statistics.median(r[c][0] for r in runs[args.variants[0]]) for c in levels}
    for spec, results in runs.items():
        cells = []
        for c in levels:
            rates = [r[c][0] for r in results]
            median = statistics.median(rates)
            cells.append(f"{median:.0f} [{min(rates):.0f}-{max(rates):.0f}] ({statistics.median(r[c][1] for r in results):.1f}) "
                         f"{median / base[c]:.2f}x")
        print(f"| {spec} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
