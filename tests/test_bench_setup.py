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
