# Quick start: `make demo` and `make test`. Both install into .venv first when needed.
VENV ?= .venv
STAMP := $(VENV)/.lumstream-installed
PYTEST_ARGS ?=

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lumstream demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
