"""Folder names of the dataset layouts users have, each written once: readers look for them, the
synthetic generator writes them, the crop stage mirrors them."""

# The folders of one data root (a profile's ``data``): lung masks to train on, a holdout mask set
# from another institution, and the classification images.
LUNGS = "lungs"                  # images/ + masks/ pairs
HOLDOUT = "MontgomerySet"        # Montgomery layout
KERMANY = "chest_xray"           # Kermany layout
DATA_ROOT = {"lungs": LUNGS, "holdout": HOLDOUT, "kermany": KERMANY}

# Pair layout.
PAIR_IMAGES, PAIR_MASKS = "images", "masks"

# Montgomery layout: CXR_png/ and ManualMask/{leftMask,rightMask}/ with the same file names.
MONTGOMERY_IMAGES = "CXR_png"
MONTGOMERY_MASKS = "ManualMask"
MONTGOMERY_SIDES = ("leftMask", "rightMask")
