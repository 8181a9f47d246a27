"""Lung masks from registered U-Nets: prediction, and the AND ensemble of several."""

from __future__ import annotations

import numpy as np

from multiloss.segmentation.crop import and_masks

PREDICT_BATCH = 8      # images per batch when a U-Net predicts masks


def predict_probabilities(model, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Lung probabilities (N, H, W) for images (N, H, W, 3) in [0, 1]."""
    return model.predict(images, batch_size=batch_size, verbose=0)[..., 0]


def and_ensemble(probabilities: list[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Masks (N, H, W) where every member's probability exceeds ``threshold``."""
    return and_masks(np.stack(probabilities), threshold)
