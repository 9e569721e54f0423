# Two commands do everything on a fresh machine:
#   make demo   set up on first use, then train GPD from scratch on Fashion-MNIST
#   make test   set up on first use, then run the test suite (slow tests: make test-slow)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.gpd-installed

.PHONY: setup demo test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_data.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	bash scripts/setup_data.sh $(BIN)/python
	touch $(STAMP)

demo: setup
	$(BIN)/gpd train

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
