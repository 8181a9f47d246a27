"""Lung masks from registered U-Nets: prediction, ranking on a holdout set, the AND ensemble."""

from __future__ import annotations

import numpy as np
import pandas as pd

from multiloss.metrics.segmentation import segmentation_scores, summarize
from multiloss.segmentation.crop import and_masks

# The paper picks its top-3 on accuracy, IoU and Dice; we rank on mean Dice, ties broken by the
# mean IoU and then pixel accuracy.
RANK_ON = ("dice_mean", "mean_iou_mean", "pixel_accuracy_mean")


def predict_probabilities(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Lung probabilities (N, H, W) for images (N, H, W, 3) in [0, 1]."""
    return model.predict(images, batch_size=batch_size, verbose=0)[..., 0]


def score_table(truth: np.ndarray, predictions: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Mean ± std of each score per named prediction (boolean masks), and the per-image tables."""
    per_image = {name: segmentation_scores(truth, masks) for name, masks in predictions.items()}
    summary = pd.DataFrame({name: summarize(table) for name, table in per_image.items()}).T
    return summary, per_image


def rank(summary: pd.DataFrame) -> list[str]:
    """Row names best first."""
    return summary.sort_values(list(RANK_ON), ascending=False).index.tolist()


def and_ensemble(probabilities: list[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Masks (N, H, W) where every member's probability exceeds ``threshold``."""
    return and_masks(np.stack(probabilities), threshold)


