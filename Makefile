# softprompt: the commands. `make setup` then `make test`; see README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test lint bench help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with pinned dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .

test:  ## lint, then run the test suite (tiny models, CPU, offline)
	$(BIN)/ruff check src tests components pipelines benchmarks
	$(BIN)/pytest

lint:  ## ruff
	$(BIN)/ruff check src tests components pipelines benchmarks

bench:  ## run the benchmarks; results under benchmarks/results/
	$(BIN)/python benchmarks/train_step.py
