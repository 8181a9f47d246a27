"""Scoring one classifier's probabilities on one split: every classification metric, the MCC
interval, the per-image probabilities (which the ensembles read) and the figures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from multiloss.data.classes import CLASSES
from multiloss.data.datasets import label_indices
from multiloss.metrics.classification import (
    classification_scores,
    confusion,
    mcc_interval,
    reliability_bins,
)
from multiloss.plots import confusion_plot, reliability_plot, roc_pr_plot

PROBABILITY_COLUMNS = [f"p_{name}" for name in CLASSES]


def score_split(labels: np.ndarray, probs: np.ndarray, ci_method: str = "bootstrap", seed: int = 0) -> dict[str, float]:
    """All scalar scores plus ``mcc_low``/``mcc_high`` by ``ci_method``."""
    scores = classification_scores(labels, probs)
    scores["mcc_low"], scores["mcc_high"] = mcc_interval(labels, probs.argmax(1), ci_method, seed=seed)
    return scores


def predictions_frame(paths, labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One row per image: path, true label, the three probabilities, the predicted label."""
    frame = pd.DataFrame(probs, columns=PROBABILITY_COLUMNS)
    frame.insert(0, "label", [CLASSES[i] for i in labels])
    frame.insert(0, "path", list(paths))
    frame["predicted"] = [CLASSES[i] for i in probs.argmax(1)]
    return frame


def read_predictions(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(frame, label indices, probabilities) from a file written by :func:`predictions_frame`."""
    frame = pd.read_csv(path)
    missing = [c for c in ["path", "label", *PROBABILITY_COLUMNS] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a predictions file (missing columns {missing})")
    return frame, label_indices(frame["label"], str(path)), frame[PROBABILITY_COLUMNS].to_numpy(float)


def split_figures(folder: str | os.PathLike, split: str, labels: np.ndarray, probs: np.ndarray,
                  title: str) -> list[Path]:
    folder = Path(folder)
    confidence, accuracy, counts = reliability_bins(labels, probs)
    return [
        confusion_plot(confusion(labels, probs), CLASSES, folder / f"{split}_confusion.png", f"{title} — {split}"),
        roc_pr_plot(labels, probs, CLASSES, folder / f"{split}_roc_pr.png", f"{title} — {split}"),
        reliability_plot(confidence, accuracy, counts, folder / f"{split}_reliability.png", f"{title} — {split}"),
    ]
