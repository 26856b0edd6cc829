# Set-up on a fresh machine: `make demo` (install + run the demo) and `make test` (install + run the tests).
# TORCH picks the torch build; the default is the CPU wheel this project's machines carry. Elsewhere, e.g.:
#   make demo TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/tive demo --out tive-demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) tive-demo
