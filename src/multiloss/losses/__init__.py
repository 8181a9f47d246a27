"""Loss functions as small Keras objects, each registered by name so saved models reload without
custom-object plumbing. One table per family holds the paper's default parameters."""

from multiloss.losses.segmentation import SEGMENTATION_LOSSES, segmentation_loss

__all__ = ["SEGMENTATION_LOSSES", "segmentation_loss"]
