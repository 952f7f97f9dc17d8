# `make test` and `make demo` each set up .venv on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check expman tests bench demo templates
	$(BIN)/ruff format --check expman tests bench demo templates
	$(BIN)/mypy expman

test: lint
	$(BIN)/pytest

demo: $(BIN)/.installed
	$(BIN)/python -m demo.iris

bench: $(BIN)/.installed
	$(BIN)/python -m bench.checkpoint_io

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
