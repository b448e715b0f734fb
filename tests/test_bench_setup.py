"""`make serve`, the README's command and the benchmark run the service the same way (tests check set-up,
never timings)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bench.servers import THROUGHPUT_MODE, without_throughput_mode

REPO = Path(__file__).resolve().parents[1]


def test_plain_serve_run_is_the_fast_mode(tmp_path):
    """serve_config.yaml carries Ray's throughput mode (controller_options, inherited by every proxy and
    replica), so `make serve`, the README and the bench all run the plain command, with no environment."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # what `serve run` validates
    env = config["controller_options"]["runtime_env"]["env_vars"]
    assert all(env[key] == "1" for key in THROUGHPUT_MODE)
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"  # Ctrl-C returns at once on a laptop
    import subprocess

    # What `make serve` runs (dry run; the venv step shows only when it is out of date).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # also when run from `make test`
    commands = subprocess.run(["make", "--no-print-directory", "-n", "serve"], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True).stdout
    assert commands.splitlines()[-1] == ".venv/bin/serve run serve_config.yaml", commands
    stripped = yaml.safe_load(Path(without_throughput_mode("serve_config.yaml", tmp_path)).read_text())
    assert "controller_options" not in stripped and stripped["applications"] == config["applications"]


def test_in_process_ceiling_takes_the_better_of_both_layouts(tiny_model_dir):
    """One process on every core vs one single-thread process per core, run at the same time (spawned
    processes, a shared barrier); the ceiling is the larger. Checks the bookkeeping, not the speed."""
    import os

    from bench.run import in_process_ceiling

    ceiling = in_process_ceiling(tiny_model_dir, seconds=0.1, served={"dtype": "bfloat16"})
    assert ceiling["served"] == {"dtype": "bfloat16"} and ceiling["precision"] == "bfloat16"
    assert ceiling["processes"] == (os.cpu_count() or 1) == len(ceiling["per_process"])
    assert all(rate > 0 for rate in ceiling["per_process"])
    assert ceiling["one_thread_processes"] == sum(ceiling["per_process"])
    assert ceiling["one_process_all_threads"] == ceiling["by_batch"][ceiling["best_batch"]]
    assert ceiling["sentences_per_s"] == max(ceiling["one_process_all_threads"], ceiling["one_thread_processes"])


def test_the_ceiling_runs_the_served_precision(tmp_path):
    """The ceiling measures the model as serve_config.yaml serves it (dtype / quantize), not always float32."""
    from bench.run import describe_precision, precision_args

    assert precision_args(Path(__file__).resolve().parents[1] / "serve_config.yaml") == {"dtype": "auto"}
    config = tmp_path / "c.yaml"
    config.write_text("applications:\n  - name: a\n    args: {quantize: int8, backend: cpu, model: x}\n")
    assert precision_args(config) == {"quantize": "int8"}
    assert describe_precision({"quantize": "int8"}) == "int8" and describe_precision({}) == "float32"
    from serve_app.backends.cpu import resolve_dtype

    assert describe_precision({"dtype": "auto"}) == str(resolve_dtype("auto")).removeprefix("torch.")
    config.write_text("applications:\n  - name: a\n    import_path: m:f\n")
    assert precision_args(config) == {}


def test_the_seed_serves_a_mean_pooled_model_without_its_pooling_layer(tmp_path, tiny_model_dir):
    """Same encoder layers as the service runs (the pooling layer would cost pipeline() a whole layer)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.run import seed_model_dir
    from serve_app.model.pooling import add_mean_pooling_layer

    plain = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir))
    assert seed_model_dir(tiny_model_dir) == tiny_model_dir  # nothing to strip
    pooled_dir = tmp_path / "model"
    add_mean_pooling_layer(plain)
    plain.save_pretrained(str(pooled_dir))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(pooled_dir))
    seed_dir = seed_model_dir(pooled_dir)
    seed = AutoModelForSequenceClassification.from_pretrained(str(seed_dir))
    assert seed.config.num_hidden_layers == plain.config.num_hidden_layers - 1 == len(seed.bert.encoder.layer)
    original = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir))
    for kept, trained in zip(seed.bert.encoder.layer, original.bert.encoder.layer):
        assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), trained.state_dict().values()))


def test_the_device_mode_spends_the_published_device_time_off_the_cpu():
    """bench.device_mode's backend: AWS's inf2.xlarge figure (5,308 sentences/s at 16 x 128 on 2 cores) per
    core, floored at 1 ms; the sleep costs no CPU (process time stays ~0 while it sleeps)."""
    import time

    import torch

    from bench.device_mode import DeviceTimeBackend
    from bench.device_time import DEVICE_BUCKETS, device_seconds
    from serve_app.config import BucketSettings

    assert abs(device_seconds(16, 128) - 16 / 2654) < 1e-9
    assert device_seconds(1, 16) == 0.001 and device_seconds(32, 512) > device_seconds(16, 512)
    backend = DeviceTimeBackend(BucketSettings(**DEVICE_BUCKETS).grid(fixed=True), num_labels=2)
    cpu, wall = time.process_time(), time.perf_counter()
    logits = backend.forward(torch.ones((32, 512), dtype=torch.long), torch.ones((32, 512), dtype=torch.long))
    assert logits.shape == (32, 2)
    assert time.perf_counter() - wall >= device_seconds(32, 512) > 10 * (time.process_time() - cpu)


def test_the_litserve_peer_sleeps_for_the_same_padded_forwards():
    """bench/device_time.py, as the LitServe device-mode peer charges a batch: chunks of at most 32 texts, each
    padded to the batch and sequence buckets that hold it."""
    from bench.device_time import device_seconds, padded_batches_seconds

    assert padded_batches_seconds([9]) == device_seconds(1, 16)
    assert padded_batches_seconds([9, 20, 3]) == device_seconds(4, 32)
    assert padded_batches_seconds([12] * 16) == device_seconds(16, 16)
    assert padded_batches_seconds([12] * 40) == device_seconds(32, 16) + device_seconds(8, 16)
    assert padded_batches_seconds([600]) == device_seconds(1, 512)


def test_the_peer_table_reports_median_range_and_per_pass_ratio():
    from bench.device_mode import peer_table

    rows = [{"server": s, "texts": 16, "connections": 32, "rps": rps, "run": run}
            for s, run, rps in (("serve", 1, 100), ("litserve", 1, 50), ("serve", 2, 120), ("litserve", 2, 100))]
    [line] = [l for l in peer_table(rows).splitlines() if l.startswith("| 16 |")]
    assert line == "| 16 | 32 | 1,760 [1,600-1,920] | 1,200 [800-1,600] | 1.60 [1.20-2.00] |"


def test_ab_variants_name_a_config_and_optionally_another_checkout(tmp_path):
    from bench.ab import parse_variant
    from bench.servers import REPO

    assert parse_variant("serve_config.yaml") == (REPO, "serve_config.yaml")
    assert parse_variant(f"{tmp_path}::bench/serve_config.jit.yaml") == (tmp_path.resolve(), "bench/serve_config.jit.yaml")


def test_only_orphaned_haproxy_from_this_prefix_is_stopped(tmp_path):
    """bench.servers.stop_orphaned_haproxy: a haproxy (here a copy of `sleep` named so) whose parent is gone is
    killed; one whose parent lives, or from another prefix, is left alone."""
    import shutil
    import subprocess
    import time

    from bench.servers import stop_orphaned_haproxy

    fake = tmp_path / "venv" / "bin" / "haproxy"
    fake.parent.mkdir(parents=True)
    shutil.copy(shutil.which("sleep"), fake)
    parented = subprocess.Popen([str(fake), "60"])
    orphan = int(subprocess.run(f"'{fake}' 60 >/dev/null 2>&1 & echo $!", shell=True, capture_output=True,
                                text=True).stdout)
    try:
        time.sleep(0.2)  # the shell has exited: the orphan's parent is now PID 1
        assert stop_orphaned_haproxy(tmp_path / "elsewhere", wait_s=0) == []
        assert stop_orphaned_haproxy(tmp_path / "venv", wait_s=1) == [orphan]  # waits out the parented one
        assert parented.poll() is None
    finally:
        parented.kill()
        parented.wait()


def test_paired_ratios_compare_servers_within_each_pass():
    from bench.report import paired_ratios, render_paired

    rows = [
        {"server": "serve", "connections": 8, "run": 1, "rps": 200.0},
        {"server": "litserve", "connections": 8, "run": 1, "rps": 100.0},
        {"server": "serve", "connections": 8, "run": 2, "rps": 300.0},
        {"server": "litserve", "connections": 8, "run": 2, "rps": 400.0},
        {"server": "serve", "connections": 8, "run": 3, "rps": 110.0},
        {"server": "litserve", "connections": 8, "run": 3, "rps": 100.0},
        {"server": "seed", "connections": 8, "run": 1, "rps": 50.0},  # not a peer
        {"server": "litserve", "connections": 32, "run": 1, "rps": 100.0},  # no serve row in that pass
    ]
    assert paired_ratios(rows) == {("litserve", 8): [2.0, 0.75, 1.1]}
    assert render_paired(rows) == "c=8: serve / litserve per pass 1.10x median [0.75-2.00] over 3 passes"


def test_the_load_generator_is_named_and_the_fallback_warned(monkeypatch, capsys, tmp_path):
    """Without wrk the asyncio client loads the server from the same cores: the run says so, loudly,
    instead of printing its lower figures under a "wrk" header."""
    import shutil

    from bench import ab, loadgen

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert loadgen.load_tool() == "asyncio"
    monkeypatch.setattr(ab, "run_variant", lambda *a, **k: {8: (1.0, 1.0)})
    monkeypatch.setattr(ab, "stop_all", lambda: None)
    ab.main(["a.yaml", "--rounds", "1", "--levels", "8", "--out", str(tmp_path)])
    assert "wrk is not installed" in capsys.readouterr().out
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/wrk" if name == "wrk" else None)
    assert loadgen.load_tool() == "wrk"
