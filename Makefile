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
OVERRIDES ?=
FORCE ?=
COMMANDS ?=
STYLE ?=
# A named variant (results/<profile>-<NAME>/; required with any change), a subset of notebooks, a YAML file of recipe
# settings, notebook 05's studies. Set here (not from the environment: a shell's NAME is not a variant's) and
# handed to the command through the environment, so that values and paths with spaces or any characters pass intact.
NAME =
ONLY =
SETTINGS =
STUDIES =
export PROFILE DATA_ROOT LIST_DIR OVERRIDES COMMANDS NAME ONLY SETTINGS STUDIES

# One cache root for `make` and the `cprfl` command: the user's (as cprfl_lib.paths.cache_root decides it).
# The standard torch hub and Hugging Face caches are used as they are. Jupyter, IPython and Matplotlib
# keep their state under the cache root, so nothing is written elsewhere in the home folder.
export CPRFL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cprfl
export MPLCONFIGDIR ?= $(CPRFL_CACHE)/matplotlib
export IPYTHONDIR ?= $(CPRFL_CACHE)/ipython
export JUPYTER_CONFIG_DIR ?= $(CPRFL_CACHE)/jupyter/config
export JUPYTER_DATA_DIR ?= $(CPRFL_CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR ?= $(CPRFL_CACHE)/jupyter/runtime
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# The tests have a cache of their own inside the checkout's ignored .cache (kept between runs: generated
# data are reused), and see no network-backed hub cache.
TEST_CACHE := $(CURDIR)/.cache/test-cache
TEST_ENV := CPRFL_CACHE=$(TEST_CACHE) TORCH_HOME=$(TEST_CACHE)/torch HF_HOME=$(TEST_CACHE)/huggingface \
	HF_HUB_OFFLINE=1 MPLCONFIGDIR=$(TEST_CACHE)/matplotlib IPYTHONDIR=$(TEST_CACHE)/ipython \
	JUPYTER_CONFIG_DIR=$(TEST_CACHE)/jupyter/config JUPYTER_DATA_DIR=$(TEST_CACHE)/jupyter/data \
	JUPYTER_RUNTIME_DIR=$(TEST_CACHE)/jupyter/runtime

.PHONY: help env reproduce test lint notebooks strip-notebooks lab bench clean-env

help:
	@echo "make reproduce [PROFILE=quick|quick-extra|paper-check|paper|own|own-paper] [DATA_ROOT=D] [LIST_DIR=L] [OVERRIDES=\"k=v ...\"] [FORCE=1] [COMMANDS=file]"
	@echo "                 regenerate every table and figure into results/<profile>/ (paper profiles: the plan first)"
	@echo "                 STYLE=my-style.yaml: the figures drawn in that style (its keys: cprfl_repro/style.yaml)"
	@echo "make reproduce NAME=x [ONLY=05] [SETTINGS=my.yaml] [STUDIES=\"table2,my-study.yaml\"] [OVERRIDES=...]"
	@echo "                 a named variant into results/<profile>-x/, each table beside the profile's own runs"
	@echo "make test        lint, the stored notebooks under nbval, the unit tests, the README's commands"
	@echo "make lab         JupyterLab on results/quick/notebooks/ (the embedded default's executed notebooks), '$(KERNEL)' kernel"
	@echo "make bench       loader, training-step and evaluation throughput of this machine, and the GPU projection"
	@echo "make notebooks   re-execute the stored notebooks at smoke scale; make strip-notebooks: drop volatile metadata"

# The environment: a venv with the pinned torch, the package (editable, with the reproduction and development
# extras) and its Jupyter kernel. It is rebuilt only when pyproject.toml changes. pip byte-compiles what it installs:
# with PYTHONDONTWRITEBYTECODE=1 (set on this machine and in CI) Python never writes a .pyc itself, and without them
# every process compiles torch, pandas and matplotlib again (10 s an import; make test took 27 min instead of 19).
env: $(STAMP)
$(STAMP): pyproject.toml
	@mkdir -p $(CPRFL_CACHE) $(MPLCONFIGDIR) $(IPYTHONDIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[repro,dev]"
	$(PY) -m ipykernel install --prefix $(VENV) --name $(KERNEL) --display-name "Python (cprfl)" > /dev/null
	touch $(STAMP)

reproduce: export CPRFL_STYLE := $(if $(STYLE),$(if $(filter /%,$(STYLE)),$(STYLE),$(CURDIR)/$(STYLE)),$(CPRFL_STYLE))
reproduce: $(STAMP)
	$(PY) -m cprfl_repro.reproduce --profile "$$PROFILE" --data-root "$$DATA_ROOT" --list-dir "$$LIST_DIR" \
		--overrides "$$OVERRIDES" --name "$$NAME" --only "$$ONLY" --settings "$$SETTINGS" --studies "$$STUDIES" \
		--write-commands "$$COMMANDS" $(if $(FORCE),--force)

lint: $(STAMP)
	$(VENV)/bin/ruff check cprfl_lib cprfl_repro tools tests

# The stored notebooks (executed at smoke scale) run first under nbval and record their metrics in
# .cache/nbval-results; tests/test_notebook_metrics.py then checks those against tests/notebook_metrics/. The
# other tests then run in two processes, a test file to each (pytest-xdist): one process kept one core busy on
# average (the README's end-to-end commands wait on their subprocesses and kernels); the caches they share are
# filled under a lock.
NBVAL_RESULTS := $(CURDIR)/.cache/nbval-results
TEST_WORKERS ?= 2
# the files of the README's longest commands, listed first; xdist still orders the files by their number of tests
# (with --no-loadscope-reorder the two longest ran side by side and make test took 15 min 18 s against 14 min 41 s)
SLOW_FIRST := tests/test_paper_protocol.py tests/test_readme_cli.py tests/test_own.py tests/test_figures.py
test: $(STAMP) lint
	rm -rf $(NBVAL_RESULTS)
	mkdir -p $(TEST_CACHE)
	$(TEST_ENV) CPRFL_RESULTS_DIR=$(NBVAL_RESULTS) $(PY) -m pytest -q --durations=15 --nbval-lax --nbval-kernel-name $(KERNEL) \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 notebooks tests/test_notebook_metrics.py
	$(TEST_ENV) CPRFL_RESULTS_DIR=$(NBVAL_RESULTS) $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile \
		$(SLOW_FIRST) tests --ignore tests/test_notebook_metrics.py

# Re-execute the stored notebooks at smoke scale and refresh their reference metrics (before committing them).
notebooks: $(STAMP)
	mkdir -p $(TEST_CACHE)
	$(TEST_ENV) $(PY) -m cprfl_repro.reproduce --refresh-notebooks
	$(PY) -m tools.strip_notebooks notebooks/*.ipynb

strip-notebooks: $(STAMP)
	$(PY) -m tools.strip_notebooks notebooks/*.ipynb

# The executed notebooks of the embedded default (what `make reproduce` wrote): re-running a cell reads the runs of
# the run store; a run by hand writes results/<profile>-lab/ (or results/<profile>-<name>/), never results/quick/.
LAB_DIR := results/quick/notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. --LabApp.default_url=/lab/tree/$(LAB_DIR)

bench: $(STAMP)
	$(PY) -m tools.bench

clean-env:
	rm -rf $(VENV)
