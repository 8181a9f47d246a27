"""Scoring one classifier's probabilities on one split: every classification metric, the MCC
interval, what it predicts (how many images per class, its mean confidence), the per-image
probabilities (which the ensembles read) and the figures; and whether a model is degenerate.

A model is degenerate when on VALIDATION it predicts one class for every image, or its mean
confidence (the mean of each image's largest probability) stays within
:data:`DEGENERATE_CONFIDENCE_MARGIN` of 1/C: it has learned nothing a pool should rank. The
decision is made on validation only; the same test on the test split is for reporting only
(:func:`one_class_reason`), never for choosing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multiloss import names
from multiloss.data.classes import CLASSES
from multiloss.metrics.classification import (
    classification_scores,
    confusion,
    mcc_interval,
    reliability_bins,
)

# TensorFlow (data.datasets) and matplotlib (plots) are imported where used: the report reads the
# degeneracy helpers here without them.

PROBABILITY_COLUMNS = [f"p_{name}" for name in CLASSES]

# Degenerate: mean confidence within this of 1/C (inclusive), or one predicted class, on validation.
DEGENERATE_CONFIDENCE_MARGIN = 0.02
# Score names of what a model predicts on a split (logged as <split>_<name>, e.g. val_predicted_viral).
PREDICTED_PREFIX = "predicted_"
MEAN_CONFIDENCE = "mean_confidence"
# How reasons name the split a score came from.
SPLIT_WORDS = {"val": "validation", "test": "test"}
_FLOAT_SLACK = 1e-9          # 0.52 − 0.5 is 0.020000000000000018 in floating point


def score_split(labels: np.ndarray, probs: np.ndarray, ci_method: str = "bootstrap", seed: int = 0) -> dict[str, float]:
    """All scalar scores plus ``mcc_low``/``mcc_high`` by ``ci_method``, and what the model
    predicts (:func:`prediction_summary`), from which :func:`degenerate_from_scores` decides."""
    scores = classification_scores(labels, probs)
    scores["mcc_low"], scores["mcc_high"] = mcc_interval(labels, probs.argmax(1), ci_method, seed=seed)
    scores.update(prediction_summary(probs))
    return scores


def _class_names(n_classes: int, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        if len(classes) != n_classes:
            raise ValueError(f"{n_classes} probability columns but {len(classes)} class names")
        return list(classes)
    return list(CLASSES) if n_classes == len(CLASSES) else [f"class{k}" for k in range(n_classes)]


def prediction_summary(probs: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, float]:
    """``predicted_<class>``: how many images the model assigns to each class (argmax), and
    ``mean_confidence``: the mean over images of the largest probability (rows renormalised)."""
    probs = np.asarray(probs, float)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (images, classes) with images >= 1 and classes >= 2, "
                         f"got shape {probs.shape}")
    probs = probs / probs.sum(1, keepdims=True)
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    summary = {f"{PREDICTED_PREFIX}{name}": float(n) for name, n in zip(_class_names(probs.shape[1], classes), counts)}
    summary[MEAN_CONFIDENCE] = float(probs.max(1).mean())
    return summary


def _counts(summary: Mapping[str, float]) -> dict[str, float]:
    counts = {key.removeprefix(PREDICTED_PREFIX): float(value) for key, value in summary.items()
              if key.startswith(PREDICTED_PREFIX)}
    if len(counts) < 2:
        raise ValueError(f"no per-class prediction counts ({PREDICTED_PREFIX}<class>) among {sorted(summary)}")
    return counts


def one_class_reason(summary: Mapping[str, float], split: str = "val") -> str | None:
    """"predicts bacterial for all 40 validation images" when every image of ``split`` got one
    class (``summary``: :func:`prediction_summary`'s keys, e.g. a split's scores), else None."""
    counts = _counts(summary)
    total = sum(counts.values())
    used = [name for name, n in counts.items() if n > 0]
    if len(used) != 1:
        return None
    return f"predicts {used[0]} for all {total:.0f} {SPLIT_WORDS.get(split, split)} images"


def pinned_confidence_reason(summary: Mapping[str, float]) -> str | None:
    """"mean confidence 0.334 within 0.02 of 1/3" when the mean confidence is that close to 1/C."""
    n_classes = len(_counts(summary))
    confidence = float(summary[MEAN_CONFIDENCE])
    if not abs(confidence - 1 / n_classes) <= DEGENERATE_CONFIDENCE_MARGIN + _FLOAT_SLACK:
        return None
    return f"mean confidence {confidence:.3f} within {DEGENERATE_CONFIDENCE_MARGIN:g} of 1/{n_classes}"


def degenerate_from_scores(val_scores: Mapping[str, float]) -> str | None:
    """Why a model whose VALIDATION scores are ``val_scores`` (at least :func:`prediction_summary`'s
    keys) is degenerate (both reasons when both hold, "; " between them), or None."""
    reasons = [r for r in (one_class_reason(val_scores, "val"), pinned_confidence_reason(val_scores)) if r]
    return "; ".join(reasons) or None


def degenerate_reason(val_probs: np.ndarray, classes: Sequence[str] | None = None) -> str | None:
    """Why a model with VALIDATION probabilities ``val_probs`` (images, classes) is degenerate, or
    None: it predicts one class for every image, or its mean confidence is within
    :data:`DEGENERATE_CONFIDENCE_MARGIN` of 1/C. Never give it test predictions to choose by."""
    return degenerate_from_scores(prediction_summary(val_probs, classes))


def degenerate_tags(val_scores: Mapping[str, float]) -> dict[str, str]:
    """The tags a classify run and its registered version carry: ``degenerate`` "true"/"false" and,
    when true, ``degenerate.reason`` (decided on ``val_scores``, the validation split's scores)."""
    reason = degenerate_from_scores(val_scores)
    if reason is None:
        return {names.DEGENERATE_TAG: "false"}
    return {names.DEGENERATE_TAG: "true", names.DEGENERATE_REASON_TAG: reason}


def predictions_frame(paths, labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One row per image: path, true label, the three probabilities, the predicted label."""
    frame = pd.DataFrame(probs, columns=PROBABILITY_COLUMNS)
    frame.insert(0, "label", [CLASSES[i] for i in labels])
    frame.insert(0, "path", list(paths))
    frame["predicted"] = [CLASSES[i] for i in probs.argmax(1)]
    return frame


def read_predictions(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(frame, label indices, probabilities) from a file written by :func:`predictions_frame`."""
    from multiloss.data.datasets import label_indices

    frame = pd.read_csv(path)
    missing = [c for c in ["path", "label", *PROBABILITY_COLUMNS] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a predictions file (missing columns {missing})")
    return frame, label_indices(frame["label"], str(path)), frame[PROBABILITY_COLUMNS].to_numpy(float)


def split_figures(folder: str | os.PathLike, split: str, labels: np.ndarray, probs: np.ndarray,
                  title: str) -> list[Path]:
    from multiloss.plots import confusion_plot, reliability_plot, roc_pr_plot

    folder = Path(folder)
    confidence, accuracy, counts = reliability_bins(labels, probs)
    return [
        confusion_plot(confusion(labels, probs), CLASSES, folder / f"{split}_confusion.png", f"{title} — {split}"),
        roc_pr_plot(labels, probs, CLASSES, folder / f"{split}_roc_pr.png", f"{title} — {split}"),
        reliability_plot(confidence, accuracy, counts, folder / f"{split}_reliability.png", f"{title} — {split}"),
    ]
