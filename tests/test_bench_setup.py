"""`make serve` and the benchmark run the service the same way (tests check set-up, never timings)."""

from __future__ import annotations

from pathlib import Path

from bench.run import FAST_SERVE_ENV

REPO = Path(__file__).resolve().parents[1]


def test_make_serve_and_bench_use_the_same_serve_environment():
    makefile = (REPO / "Makefile").read_text()
    block = makefile[makefile.index("SERVE_ENV =") : makefile.index("serve: install")]
    for key, value in FAST_SERVE_ENV.items():
        assert f"{key}={value}" in block, key
    assert "$(SERVE_ENV) $(BIN)/serve run serve_config.yaml" in makefile


def test_in_process_ceiling_takes_the_better_of_both_layouts(tiny_model_dir):
    """One process on every core vs one single-thread process per core, run at the same time (spawned
    processes, a shared barrier); the ceiling is the larger. Checks the bookkeeping, not the speed."""
    import os

    from bench.run import in_process_ceiling

    ceiling = in_process_ceiling(tiny_model_dir, seconds=0.1)
    assert ceiling["processes"] == (os.cpu_count() or 1) == len(ceiling["per_process"])
    assert all(rate > 0 for rate in ceiling["per_process"])
    assert ceiling["one_thread_processes"] == sum(ceiling["per_process"])
    assert ceiling["one_process_all_threads"] == ceiling["by_batch"][ceiling["best_batch"]]
    assert ceiling["sentences_per_s"] == max(ceiling["one_process_all_threads"], ceiling["one_thread_processes"])
