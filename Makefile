# The two commands of the README:
#   make demo   set everything up and run the main job on the bundled default model
#   make test   set everything up and run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch 2.13.0 is the CPU wheel this kind of machine carries (pip finds it locally); an unpinned torch would pull a
# multi-GB CUDA build. Where pip sees only PyPI, the same pin is the CUDA build on Linux x86: pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU one.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup setup-dev browser demo test lint clean

$(VENV)/.setup: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PIP) install -q -e ".[dev,train]"
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

# Headless Chromium + chromedriver for the chat-page test (tests/serve/test_chat_page.py), from Debian. Idempotent;
# where it cannot install (not root, no Debian mirror) it says so and that one test skips with the reason.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "make browser: could not install chromium + chromium-driver; the chat-page test will be skipped"; \
	else echo "make browser: chromium not installed and apt-get not usable here; the chat-page test will be skipped"; fi

demo: setup
	$(VENV)/bin/llava demo

test: setup-dev browser
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest tests

lint: setup-dev
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
