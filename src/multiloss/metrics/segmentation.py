"""Segmentation scores, per image, then mean ± std over the set.

``mean_iou`` is the paper's "global" IoU: the IoU of the lung and of the background, averaged.
An image where truth and prediction are both empty scores 1 (nothing to find, nothing found).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

SCORES = ("pixel_accuracy", "dice", "lung_iou", "mean_iou")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), 1.0)


def segmentation_scores(truth: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per image of boolean masks shaped (N, H, W): the four SCORES."""
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    predicted = np.asarray(predicted, bool).reshape(len(predicted), -1)
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and prediction {predicted.shape} differ in shape")
    tp = (truth & predicted).sum(1)
    fp = (~truth & predicted).sum(1)
    fn = (truth & ~predicted).sum(1)
    tn = (~truth & ~predicted).sum(1)
    lung_iou = _ratio(tp, tp + fp + fn)
    background_iou = _ratio(tn, tn + fp + fn)
    return pd.DataFrame({
        "pixel_accuracy": (tp + tn) / truth.shape[1],
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "lung_iou": lung_iou,
        "mean_iou": (lung_iou + background_iou) / 2,
    })


def summarize(per_image: pd.DataFrame) -> dict[str, float]:
    """``{score}_mean`` and ``{score}_std`` (population std, as numpy) for each score."""
    out = {}
    for score in SCORES:
        out[f"{score}_mean"] = float(per_image[score].mean())
        out[f"{score}_std"] = float(per_image[score].std(ddof=0))
    return out


def dice_coefficient(y_true, y_pred, threshold: float = 0.5):
    """Training metric: per-image Dice of the thresholded prediction, averaged over the batch."""
    t = tf.reshape(tf.cast(y_true > 0.5, tf.float32), [tf.shape(y_true)[0], -1])
    p = tf.reshape(tf.cast(y_pred > threshold, tf.float32), [tf.shape(y_pred)[0], -1])
    tp = tf.reduce_sum(t * p, 1)
    den = tf.reduce_sum(t, 1) + tf.reduce_sum(p, 1)
    return tf.reduce_mean(tf.where(den > 0, 2 * tp / tf.maximum(den, 1.0), 1.0))


def lung_iou(y_true, y_pred, threshold: float = 0.5):
    """Training metric: per-image lung IoU of the thresholded prediction, averaged over the batch."""
    t = tf.reshape(tf.cast(y_true > 0.5, tf.float32), [tf.shape(y_true)[0], -1])
    p = tf.reshape(tf.cast(y_pred > threshold, tf.float32), [tf.shape(y_pred)[0], -1])
    tp = tf.reduce_sum(t * p, 1)
    union = tf.reduce_sum(tf.maximum(t, p), 1)
    return tf.reduce_mean(tf.where(union > 0, tp / tf.maximum(union, 1.0), 1.0))


dice_coefficient.__name__ = "dice"
lung_iou.__name__ = "iou"
