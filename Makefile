# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml or
# constraints.txt change. `make repro` runs the pipeline on the built-in world; `make test` the tests.
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
	$(BIN)/python -m pipeline.torchvision_fallback install
	touch $(STAMP)

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest
