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
include experiments/$(PROFILE).mk
SEG_LOSSES := bce bce_dice focal tversky focal_tversky
CLS_LOSSES := cce focal kld hinge ls_cce ls_focal cal_cce cce_entropy cal_neg_entropy cal_kld cal_focal cal_hinge
RUN = mlflow run . --env-manager local

.PHONY: install demo pipeline classify-all test test-fast ui bench clean-store

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: the pipeline on the built-in synthetic data, through `mlflow run` (profile experiments/demo.mk)
demo: install
	$(MAKE) --no-print-directory pipeline PROFILE=demo

## pipeline: synth (demo) -> segment x5 -> segment_eval -> crop -> classify x12, for $(PROFILE)
pipeline: install
	$(TRACKING); set -e; $(BIN)/python -m multiloss.tracking init; \
	if [ "$(SYNTH)" = yes ]; then $(RUN) -e synth --experiment-name data -P out=$(DATA_ROOT) $(SYNTH_PARAMS); fi; \
	for loss in $(SEG_LOSSES); do \
	  $(RUN) -e segment --experiment-name segmentation -P loss=$$loss -P data=$(SEG_DATA) \
	    -P img_size=$(SEG_SIZE) -P epochs=$(SEG_EPOCHS) $(SEG_EXTRA); \
	done; \
	$(RUN) -e segment_eval --experiment-name segmentation -P data=$(HOLDOUT_DATA) \
	  -P img_size=$(SEG_SIZE) -P top_k=$(TOP_K); \
	$(RUN) -e crop --experiment-name segmentation -P data=$(CLS_SOURCE) -P out=$(CROPPED) \
	  -P img_size=$(CROP_SIZE) -P seg_size=$(SEG_SIZE) -P top_k=$(TOP_K); \
	$(MAKE) --no-print-directory classify-all PROFILE=$(PROFILE)

## classify-all: the twelve classification losses on the cropped data of $(PROFILE)
classify-all: install
	$(TRACKING); set -e; \
	for loss in $(CLS_LOSSES); do \
	  $(RUN) -e classify --experiment-name classification -P loss=$$loss -P data=$(CROPPED) \
	    -P img_size=$(CLS_SIZE) -P epochs=$(CLS_EPOCHS) $(CLS_EXTRA); \
	done

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
