# Demo profile: the built-in synthetic data, small images and few epochs, sized for a 2-core CPU.
# Read by the Makefile (`make demo`, or `make pipeline PROFILE=demo`); override any value on the
# command line, e.g. `make demo SEG_EPOCHS=3`.
SYNTH := yes
DATA_ROOT ?= data/synthetic
SYNTH_PARAMS ?= -P n_seg=200 -P n_cls=150 -P size=128 -P seed=0
SEG_DATA ?= $(DATA_ROOT)/lungs
HOLDOUT_DATA ?= $(DATA_ROOT)/MontgomerySet
CLS_SOURCE ?= $(DATA_ROOT)/chest_xray
CROPPED ?= data/cropped
SEG_SIZE ?= 64
SEG_EPOCHS ?= 6
# BatchNorm's default momentum (0.99) lags badly over a few hundred CPU steps; see README.
SEG_EXTRA ?= -P bn_momentum=0.9 -P patience=3
CROP_SIZE ?= 128
CLS_SIZE ?= 64
CLS_EPOCHS ?= 30
# 324 training phantoms: without augmentation the classifier memorises them (test MCC 0.54 vs 0.86).
CLS_EXTRA ?= -P bn_momentum=0.9 -P patience=10 -P augment=paper
TOP_K ?= 3
