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

# torch's CPU build for the extras that pull torch (convert, and dev, which includes it). PyPI's Linux torch wheel
# is the CUDA build (29 packages, GBs); PyTorch's CPU index has the same version as +cpu, which pip prefers to the
# plain one. The index is added only when it answers within TORCH_INDEX_TIMEOUT seconds (name lookup included):
# an offline machine installs from pip's configured sources (a local wheel directory or mirror, pip config list)
# instead of retrying the index for every package. TORCH_INDEX_URL= (empty) never adds it.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_TIMEOUT ?= 3
TORCH_EXTRAS := convert dev
# Exit 0 when the URL in argv[1] gives any HTTP answer within argv[2] seconds. The request runs in a daemon
# thread so that a name lookup that hangs (urllib's timeout does not cover it) cannot hold make up either.
define TORCH_INDEX_PROBE
import sys, threading, urllib.error, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
done, answered = threading.Event(), []
def probe():
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds).close()
        answered.append(url)
    except urllib.error.HTTPError:
        answered.append(url)  # an answer, whatever its status: the index is reachable
    except Exception:
        pass  # refused, unknown host, TLS or proxy failure: unreachable now, no need to wait
    finally:
        done.set()
threading.Thread(target=probe, daemon=True).start()
done.wait(seconds)
sys.exit(0 if answered else 1)
endef
export TORCH_INDEX_PROBE
PIP_INSTALL_EXTRA = $(VENV)/bin/python -m pip install -q -e '.$(EXTRAS_$(1))'
# The recipe for one stamp: with the probe where torch is installed and an index is set, else pip alone (no commas
# in the branches: they are $(if) arguments).
install_extra = $(if $(and $(TORCH_INDEX_URL),$(filter $(1),$(TORCH_EXTRAS))),\
	if $(VENV)/bin/python -c "$$TORCH_INDEX_PROBE" '$(TORCH_INDEX_URL)' '$(TORCH_INDEX_TIMEOUT)'; then \
	  $(call PIP_INSTALL_EXTRA,$(1)) --extra-index-url '$(TORCH_INDEX_URL)'; \
	else \
	  echo "make: $(TORCH_INDEX_URL) is not reachable (waited up to $(TORCH_INDEX_TIMEOUT) s); installing torch from pip's configured sources only (on PyPI, torch is the CUDA build)" >&2; \
	  $(call PIP_INSTALL_EXTRA,$(1)); \
	fi,\
	$(call PIP_INSTALL_EXTRA,$(1)))

$(VENV)/.installed-%: pyproject.toml $(wildcard requirements/*.txt) | $(VENV)/bin/python
	$(call install_extra,$*)
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
