# One entry point for people, CI and the Dockerfile. The Dockerfile runs the same convert and
# serve commands as the targets below (tests/test_dockerfile.py checks that they match).
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON ?= python3
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
# What to convert: a hub id or a local Hugging Face checkpoint directory.
SOURCE ?= facebook/m2m100_418M
QUANTIZATION ?= int8
MODEL_DIR ?= models/$(notdir $(patsubst %/,%,$(SOURCE)))-$(QUANTIZATION)
HOST ?= 0.0.0.0
PORT ?= 9527
PYTEST_ARGS ?=

.PHONY: help venv venv-convert venv-dev lock convert run serve test bench-checkpoint clean distclean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

# --- virtual environment: the project itself, installed editable (its packages import from anywhere, its console
# scripts are in $(VENV)/bin), with one extra per stamp; a stamp is rebuilt when pyproject.toml or a requirements
# file changes (requirements/*.txt are the lists pyproject.toml reads).
$(VENV)/bin/python:
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

EXTRAS_runtime :=
EXTRAS_convert := [convert]
EXTRAS_dev := [dev]

$(VENV)/.installed-%: pyproject.toml $(wildcard requirements/*.txt) | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e '.$(EXTRAS_$*)'
	@touch $@

venv: $(VENV)/.installed-runtime ## the project and its run-time dependencies (no torch, no transformers)
venv-convert: $(VENV)/.installed-convert ## plus torch (CPU build) and transformers, to convert
venv-dev: $(VENV)/.installed-dev ## plus convert, tests, load tests, benchmarks

# The image installs requirements/runtime.lock (pip --require-hashes): runtime.txt's pins and every transitive
# dependency, with the hashes of every file PyPI has for them, for any platform. LOCK_ARGS=--upgrade moves the
# transitive pins to their newest versions; without it they stay where the lock has them.
LOCK_ARGS ?=
lock: venv-dev ## regenerate requirements/runtime.lock (the image's pins, with hashes) after editing requirements/runtime.txt
	$(VENV)/bin/uv pip compile --quiet requirements/runtime.txt --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --output-file requirements/runtime.lock $(LOCK_ARGS)

convert: venv-convert ## convert SOURCE into MODEL_DIR (QUANTIZATION=int8; FORCE=1 overwrites)
	$(PYTHON) -m convert $(SOURCE) $(MODEL_DIR) --quantization $(QUANTIZATION) $(if $(FORCE),--force)

serve: venv ## serve MODEL_DIR on HOST:PORT
	$(PYTHON) -m service --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT)

run: venv-convert ## set up, convert SOURCE if MODEL_DIR is missing, then serve on PORT
	@[ -f $(MODEL_DIR)/manifest.json ] || $(MAKE) --no-print-directory convert
	@$(MAKE) --no-print-directory serve

test: venv-dev ## the whole test suite (installs redis-server, promtool, kubectl if missing)
	./scripts/install_system_deps.sh
	$(PYTHON) -m pytest $(PYTEST_ARGS)

bench-checkpoint: venv-dev ## build the full-size random-weight m2m100_418M benchmark checkpoint
	$(PYTHON) scripts/make_bench_checkpoint.py

clean: ## remove reports and caches (keeps .venv and models/)
	rm -rf reports .pytest_cache build
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean ## also remove the virtual environment and converted models
	rm -rf $(VENV) models

-include mk/*.mk
