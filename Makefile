# Common commands. Every target installs the virtual environment at .venv/ first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# The tracking module is the one place that knows the store; the launcher of `mlflow run` must use it too.
TRACKING = export MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$$($(BIN)/python -m multiloss.tracking uri)}"
PROFILE ?= demo
# more `main` parameters, e.g. MAIN_PARAMS="-P seeds=0,1,2 -P fresh=true"
MAIN_PARAMS ?=
RUN = mlflow run . --env-manager local

.PHONY: install demo pipeline ablation test test-fast ui bench bench-demo team-server team-server-stop sweep-dashboard

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: the whole pipeline (`main`, profile experiments/demo.yaml) on built-in synthetic data; prints the report
demo: install
	$(MAKE) --no-print-directory pipeline PROFILE=demo

## pipeline: `main` with experiments/$(PROFILE).yaml; a finished step is reused, not run again
pipeline: install
	$(TRACKING); set -e; $(BIN)/python -m multiloss.tracking init >/dev/null; \
	$(RUN) -e main --experiment-name pipeline -P profile=$(PROFILE) $(MAIN_PARAMS)

# more `ablation` parameters, e.g. ABLATION_PARAMS="-P seeds=0,1,2,3,4 -P corrections=each"
ABLATION_PARAMS ?=

## ablation: the paper as published beside the corrected suite on $(PROFILE)'s data (first `main` up to the crop,
## reused when done); prints the report "What the corrections change"
ablation: install
	$(TRACKING); set -e; $(BIN)/python -m multiloss.tracking init >/dev/null; \
	$(RUN) -e main --experiment-name pipeline -P profile=$(PROFILE) -P until=crop $(MAIN_PARAMS); \
	$(RUN) -e ablation --experiment-name ablation -P profile=$(PROFILE) $(ABLATION_PARAMS)

# Test processes (pytest-xdist): tiny-model tests are mostly single-threaded graph building.
PYTEST_WORKERS ?= 2

## test: the whole test suite (what CI runs), in $(PYTEST_WORKERS) processes
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

## test-fast: skip the tests that train models or launch MLflow projects
test-fast: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow"

## ui: the MLflow UI on our store, at http://127.0.0.1:5000
ui: install
	$(TRACKING); eval "$$($(BIN)/python -m multiloss.tracking ui-command)"

## bench: input pipeline benchmark (prints a table of ratios)
bench: install
	$(BIN)/python bench/input_pipeline.py

## bench-demo: wall time per step and peak memory of the demo pipeline in a fresh store, then its rerun
bench-demo: install
	$(BIN)/python bench/demo_pipeline.py

# The team stack's MLflow port (PostgreSQL takes a free one); its files are under mlruns/team/.
TEAM_PORT ?= 5000

## team-server: PostgreSQL + MLflow with basic auth on 127.0.0.1:$(TEAM_PORT) for a small lab, data under
## mlruns/team/ (export MLFLOW_AUTH_ADMIN_PASSWORD first: the admin user's, refused when unset)
team-server: install
	$(BIN)/python -m multiloss.team start --port $(TEAM_PORT)

## team-server-stop: stop what team-server started (the data stays)
team-server-stop: install
	$(BIN)/python -m multiloss.team stop

# The sweeps' Optuna storage for sweep-dashboard: empty = the journal under mlruns/optuna/, a
# journal file path, an RDB URL, or `team` for the team server's database.
SWEEP_STORAGE ?=
DASHBOARD_PORT ?= 8080

## sweep-dashboard: optuna-dashboard on the sweeps' storage, at http://127.0.0.1:$(DASHBOARD_PORT)
sweep-dashboard: install
	$(BIN)/python -m multiloss.team.dashboard --storage "$(SWEEP_STORAGE)" --port $(DASHBOARD_PORT)
