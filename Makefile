# Common commands. Every target installs the virtual environment at .venv/ first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# The tracking module is the one place that knows the store; the launcher of `mlflow run` must use it too.
TRACKING = export MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$$($(BIN)/python -m multiloss.tracking uri)}"
DATA ?= data/synthetic
CROPPED ?= data/cropped
DEMO_CROP_SIZE ?= 128
# The demo profile: small images and few epochs, sized for a 2-core CPU.
DEMO_SEG_SIZE ?= 64
DEMO_SEG_EPOCHS ?= 6
SEG_LOSSES := bce bce_dice focal tversky focal_tversky
RUN = mlflow run . --env-manager local

.PHONY: install demo test test-fast ui bench clean-store

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: the pipeline on the built-in synthetic data, through `mlflow run`
demo: install
	$(TRACKING); set -e; $(BIN)/python -m multiloss.tracking init; \
	$(RUN) -e synth --experiment-name data -P out=$(DATA); \
	for loss in $(SEG_LOSSES); do \
	  $(RUN) -e segment --experiment-name segmentation -P loss=$$loss -P data=$(DATA)/lungs \
	    -P img_size=$(DEMO_SEG_SIZE) -P epochs=$(DEMO_SEG_EPOCHS) -P bn_momentum=0.9 -P patience=3; \
	done; \
	$(RUN) -e segment_eval --experiment-name segmentation -P data=$(DATA)/MontgomerySet \
	  -P img_size=$(DEMO_SEG_SIZE) -P top_k=3; \
	$(RUN) -e crop --experiment-name segmentation -P data=$(DATA)/chest_xray -P out=$(CROPPED) \
	  -P img_size=$(DEMO_CROP_SIZE) -P seg_size=$(DEMO_SEG_SIZE) -P top_k=3

## test: the whole test suite (what CI runs)
test: install
	$(BIN)/python -m pytest

## test-fast: skip the tests that train models or launch MLflow projects
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

## ui: the MLflow UI on our store, at http://127.0.0.1:5000
ui: install
	$(TRACKING); eval "$$($(BIN)/python -m multiloss.tracking ui-command)"

## bench: input pipeline benchmark (prints a table of ratios)
bench: install
	$(BIN)/python bench/input_pipeline.py
