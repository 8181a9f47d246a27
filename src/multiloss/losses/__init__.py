"""Loss functions as small Keras objects, each registered by name so saved models reload without
custom-object plumbing. One table per family holds the paper's default parameters."""

from multiloss.losses.classification import CLASSIFICATION_LOSSES, classification_loss
from multiloss.losses.segmentation import SEGMENTATION_LOSSES, segmentation_loss

__all__ = ["CLASSIFICATION_LOSSES", "SEGMENTATION_LOSSES", "classification_loss", "segmentation_loss"]
