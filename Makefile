# cprfl: the two commands are `make reproduce` and `make test`; both create the environment when it is missing.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cprfl-installed
KERNEL := cprfl
PROFILE ?= quick
DATA_ROOT ?=
LIST_DIR ?=

# Caches and Jupyter state stay inside the repository's ignored .cache folder.
export CPRFL_CACHE ?= $(CURDIR)/.cache/cprfl
export TORCH_HOME ?= $(CURDIR)/.cache/torch
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export IPYTHONDIR ?= $(CURDIR)/.cache/ipython
export JUPYTER_CONFIG_DIR ?= $(CURDIR)/.cache/jupyter/config
export JUPYTER_DATA_DIR ?= $(CURDIR)/.cache/jupyter/data
export JUPYTER_RUNTIME_DIR ?= $(CURDIR)/.cache/jupyter/runtime
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help env reproduce test notebooks lab bench clean-env

help:
	@echo "make reproduce [PROFILE=quick|paper] [DATA_ROOT=...]  regenerate every table and figure into results/<profile>/"
	@echo "make test                                             unit tests + notebooks under nbval"
	@echo "make lab                                              JupyterLab on notebooks/ with the '$(KERNEL)' kernel"
	@echo "make bench                                            throughput / memory benchmark of this machine"
	@echo "make notebooks                                        re-execute the stored notebooks at smoke scale"

# The environment: a venv with the pinned torch, the package (editable) and its Jupyter kernel.
# It is rebuilt only when pyproject.toml changes.
env: $(STAMP)
$(STAMP): pyproject.toml
	@mkdir -p $(CPRFL_CACHE) $(TORCH_HOME) $(HF_HOME) $(MPLCONFIGDIR) $(IPYTHONDIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name $(KERNEL) --display-name "Python (cprfl)" > /dev/null
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m cprfl_repro.reproduce --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(LIST_DIR),--list-dir $(LIST_DIR))

# The stored notebooks (executed at smoke scale) run first under nbval and record their metrics in
# .cache/nbval-results; tests/test_notebook_metrics.py then checks those against tests/notebook_metrics/.
NBVAL_RESULTS := $(CURDIR)/.cache/nbval-results
test: $(STAMP)
	rm -rf $(NBVAL_RESULTS)
	HF_HUB_OFFLINE=1 CPRFL_RESULTS_DIR=$(NBVAL_RESULTS) $(PY) -m pytest -q --nbval-lax --nbval-kernel-name $(KERNEL) \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 notebooks tests

# Re-execute the stored notebooks at smoke scale and refresh their reference metrics (before committing them).
notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m cprfl_repro.reproduce --refresh-notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) -m tools.bench

clean-env:
	rm -rf $(VENV)
