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
DEMO_CLS_SIZE ?= 64
DEMO_CLS_EPOCHS ?= 30
CLS_LOSSES := cce focal kld hinge ls_cce ls_focal cal_cce cce_entropy cal_neg_entropy cal_kld cal_focal cal_hinge
RUN = mlflow run . --env-manager local

.PHONY: install demo demo-classify test test-fast ui bench clean-store

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
	  -P img_size=$(DEMO_CROP_SIZE) -P seg_size=$(DEMO_SEG_SIZE) -P top_k=3; \
	$(MAKE) --no-print-directory demo-classify

## demo-classify: the twelve classification losses on the cropped demo data
demo-classify: install
	$(TRACKING); set -e; \
	for loss in $(CLS_LOSSES); do \
	  $(RUN) -e classify --experiment-name classification -P loss=$$loss -P data=$(CROPPED) \
	    -P img_size=$(DEMO_CLS_SIZE) -P epochs=$(DEMO_CLS_EPOCHS) -P patience=10 -P bn_momentum=0.9 \
	    -P augment=paper; \
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
