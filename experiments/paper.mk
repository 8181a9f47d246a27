# Paper profile: the paper's settings (512 px; Adam 1e-3 + reduce-on-plateau for the U-Net; SGD 1e-3,
# momentum 0.9 for the classifier; lowest validation loss kept) on the real datasets. Point the paths
# at your local copies: `make pipeline PROFILE=paper SEG_DATA=... HOLDOUT_DATA=... CLS_SOURCE=...`.
# The paper gives no epoch counts; early stopping on validation loss ends each training.
SYNTH := no
SEG_DATA ?= data/lungs
HOLDOUT_DATA ?= data/MontgomerySet
CLS_SOURCE ?= data/chest_xray
CROPPED ?= data/cropped-512
SEG_SIZE ?= 512
SEG_EPOCHS ?= 100
SEG_EXTRA ?= -P patience=10 -P batch_size=8
CROP_SIZE ?= 512
CLS_SIZE ?= 512
CLS_EPOCHS ?= 100
CLS_EXTRA ?= -P patience=10 -P batch_size=16
TOP_K ?= 3
