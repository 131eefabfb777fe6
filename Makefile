# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/imgsave: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: demo test lint bench
demo: $(BIN)/imgsave
	$(BIN)/imgsave demo

test: $(BIN)/imgsave lint
	$(BIN)/python -m pytest

lint: $(BIN)/imgsave
	$(BIN)/ruff check src tests scripts

bench: $(BIN)/imgsave
	$(BIN)/python scripts/bench.py
