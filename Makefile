# The README's two commands: `make demo` (set up + run the whole pipeline embedded) and `make test`;
# `make test-fast` is the quick loop while editing (the tests marked slow in tests/conftest.py left out).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/cltv demo

# Every test, ~15-18 min on a 2-core machine: a line per test slower than 10 s as it finishes, the 20
# slowest at the end, and a failure if the run left files in the repository root.
test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=20

# The pure and small tests: no Spark session, no generated panel, no trained release, no server (< 3 min).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not slow" --durations=10

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

clean:
	rm -rf work .pytest_cache catboost_info mlruns spark-warehouse metastore_db derby.log
