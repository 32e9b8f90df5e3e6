# Code checks that CI runs next to the tests (docs/ci-cd.md). Included by the Makefile, which defines
# PYTHON and venv-dev.
#
#   make lint      ruff on the whole tree, mypy on service/ and convert/ (configured in pyproject.toml)

.PHONY: lint

lint: venv-dev ## ruff check . and mypy service convert (their settings: pyproject.toml); fails on any finding
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy service convert
