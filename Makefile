# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml or
# constraints.txt change. `make repro` runs the pipeline on the built-in world; `make test` lints
# (ruff, as configured in pyproject.toml) and runs every test, the slow end-to-end DVC runs included.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cft-installed

.PHONY: setup repro test

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m cft_compat.torchvision_fallback install
	touch $(STAMP)

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest
