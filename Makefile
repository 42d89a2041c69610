# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test models bench lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,models]'
	touch $(STAMP)

build/models/.built: $(STAMP) scripts/build_models.py scripts/build_cs_models.py scripts/data/customer_service/*.tsv
	$(BIN)/python scripts/build_models.py --out build/models
	$(BIN)/python scripts/build_cs_models.py --out build/models
	touch $@

models: build/models/.built

demo: models
	$(BIN)/python scripts/demo.py --models build/models

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: models
	$(BIN)/python scripts/bench/invoke.py --models build/models --out build/bench
	$(BIN)/python scripts/bench/dht.py --out build/bench
	$(BIN)/python scripts/bench/pipeline.py --models build/models --out build/bench

lint: $(STAMP)
	$(BIN)/ruff check p2pnet tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build
