# Two commands do all the set-up: `make train` and `make test` create/reuse .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.acktr-installed

.PHONY: install train test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## train: a real short ACKTR run on CartPole-v1 (about a minute on 2 cores)
train: $(STAMP)
	$(BIN)/acktr train --env CartPole --seed 0

## test: the default test suite (< 15 minutes on 2 cores); slow learning runs excluded
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## lint: ruff (lint + format check) and mypy over the package sources; CI runs it before the tests
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy acktr agents curvature envs zoo

clean:
	rm -rf $(VENV) build *.egg-info runs
