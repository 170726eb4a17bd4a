# The two commands of the README:
#   make demo   set everything up and run the main job on the bundled default model
#   make test   set everything up and run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch 2.13.0 is the CPU wheel this kind of machine carries; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup setup-dev demo test lint clean

$(VENV)/.setup: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PIP) install -q -e ".[dev,train]"
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

demo: setup
	$(VENV)/bin/llava demo

test: setup-dev
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest tests

lint: setup-dev
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
