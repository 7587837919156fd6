# Two commands for a fresh clone: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench-setup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/terrasynth demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The benchmark scripts take data and budgets as arguments: docs/benchmarks.md gives each command.
bench-setup: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'   # torchgeo etc., for the comparisons

clean:
	rm -rf outputs .pytest_cache
