# make serve   - set up .venv and run the service on http://localhost:8000
# make test    - set up .venv (with dev dependencies) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test test-fast test-images bench compile export-model train clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

# serve_config.yaml carries Ray's high-throughput mode itself (controller_options): the plain command is
# the fast one.
serve: install
	$(BIN)/serve run serve_config.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The images tier: builds docker/Dockerfile.cpu and .inf2 and runs the RayService's pods as containers. Needs a
# Docker engine (or root with docker.io installed: the test starts its own dockerd) and debootstrap.
test-images: install
	$(BIN)/python -m pytest -m images $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not serve and not train and not cluster" $(PYTEST_ARGS)

export-model: install
	$(BIN)/python -m serve_app.model.export artifacts/default-model

compile: install
	$(BIN)/python -m serve_app.backends.precompile --backend jit --out artifacts/compile-cache

train: install
	$(BIN)/python -m training.finetune --config training/configs/default.yaml

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) artifacts .pytest_cache
