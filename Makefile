# cellwatch: `make test` and `make demo` are the two entry points (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLES := /usr/share/doc/opencv-doc/examples/data

.PHONY: test demo bench samples compose-client clean

# The venv is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (install python3.11)"; exit 1; }
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (Debian)"; \
	    apt-get update -qq && apt-get install -y -qq python3-venv python3-dev >/dev/null; \
	  else echo "error: $(PYTHON) has no venv module; install python3-venv"; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Real sample photos and footage (vtest.avi) from Debian's opencv-doc package.
samples:
	@if [ ! -f $(SAMPLES)/vtest.avi ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing opencv-doc (sample photos and vtest.avi)"; \
	    apt-get update -qq && apt-get install -y -qq opencv-doc >/dev/null; \
	  else echo "note: opencv-doc is missing and cannot be installed here; tests that need real footage will skip"; fi; \
	fi

# A compose client, to check docker-compose.yml statically (no engine is needed).
compose-client:
	@if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing docker-compose (client only, to validate docker-compose.yml)"; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else echo "note: no compose client; the compose config check will skip"; fi; \
	fi

test: $(STAMP) samples compose-client
	$(BIN)/python -m pytest

bench: $(STAMP) samples
	$(BIN)/python bench/troi_align.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/alerts.py

demo:
	@echo "make demo: not available yet: the shipped person model and the service demo are not built yet."
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache
