# rmserve — the two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUNDLE ?= artifacts/default-bundle
CHECKPOINT ?= artifacts/default-checkpoint
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install system-deps bundle serve test test-unit test-integration lint eval proto clean

help:
	@echo "make serve  - create .venv, install, build the default bundle if missing, serve on $(HOST):$(PORT)"
	@echo "make test   - run the whole test suite (what CI runs)"
	@echo "make eval   - accuracy of the default bundle on the shipped dev split"
	@echo "make proto  - regenerate the gRPC stubs in proto from proto/"
	@echo "make lint   - ruff"

# Two install shapes in one venv: `make serve` needs the server and the default training (`.[train]`, which
# includes `serve`); `make test` adds the dev tools. torch is pinned exactly and installed first: a loose
# requirement makes pip fetch a multi-GB CUDA build.
$(VENV)/.installed-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[train]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-train
	$(BIN)/pip install -e '.[train,dev]'
	touch $@

install: $(VENV)/.installed

# promtool/prometheus and kubectl, from Debian's packages: the deploy/ tests need them (idempotent).
system-deps:
	bash scripts/install-system-deps.sh

$(BUNDLE)/bundle.json: | $(VENV)/.installed-train
	$(BIN)/rmserve train --output-dir $(CHECKPOINT) --skip-bad-rows --export-to $(BUNDLE)

bundle: $(BUNDLE)/bundle.json

serve: $(BUNDLE)/bundle.json
	$(BIN)/rmserve serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

eval: $(BUNDLE)/bundle.json
	$(BIN)/rmserve eval --bundle $(BUNDLE)

test: $(VENV)/.installed system-deps
	$(BIN)/python -m pytest -q

test-unit: $(VENV)/.installed system-deps
	$(BIN)/python -m pytest -q -m unit

test-integration: $(VENV)/.installed system-deps
	$(BIN)/python -m pytest -q -m integration

proto: $(VENV)/.installed
	$(BIN)/python proto/generate.py

lint: $(VENV)/.installed
	$(BIN)/ruff check rmserve proto service training tests bench examples

clean:
	rm -rf artifacts .pytest_cache
