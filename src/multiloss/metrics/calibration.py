"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks").

One scalar T > 0 rescales a model's logits, ``softmax(z / T)``: it changes confidence and never the
predicted class. T is fitted on validation predictions by minimising their negative log-likelihood.
The suite stores probabilities, not logits, so the logits are taken back as ``z = log(clip(p))``:
softmax(log p) = p, and any per-row constant that the log loses cancels in the softmax.

The NLL is convex in β = 1/T (a log-sum-exp of functions linear in β minus a linear term), so it is
unimodal in log T and a bounded one-dimensional search on log T finds its minimum on the bounds.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax

# Probabilities are clipped here before the log (the same floor as the NLL in classification_scores).
PROB_FLOOR = 1e-15
# The search range of T. A validation set the model gets entirely right has its NLL falling all the way
# to T → 0 (and one it gets entirely wrong, to T → ∞): the fit then stops at a bound.
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def _probabilities(probs, caller: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"{caller}: probs must be 2-D (n images, C classes), got shape {probs.shape}")
    n, classes = probs.shape
    if n < 1:
        raise ValueError(f"{caller}: probs has no rows (shape {probs.shape})")
    if classes < 2:
        raise ValueError(f"{caller}: probs needs at least 2 classes, got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{caller}: probs must be finite and non-negative")
    sums = probs.sum(1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"{caller}: every row of probs needs a positive sum")
    return probs / sums


def _class_labels(labels, n: int, classes: int, caller: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape != (n, classes):
            raise ValueError(f"{caller}: one-hot labels must have shape {(n, classes)}, got {labels.shape}")
        labels = labels.argmax(1)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{caller}: labels must be {n} class indices (or ({n}, {classes}) one-hot), "
                         f"got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError(f"{caller}: labels must be whole class indices")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"{caller}: labels must be class indices, got dtype {labels.dtype}")
    labels = labels.astype(int)
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{caller}: labels must lie in [0, {classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, PROB_FLOOR, 1.0))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    return float((logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(probs, labels) -> float:
    """The T > 0 that minimises the mean NLL of ``softmax(log(clip(probs)) / T)`` on these labels.

    ``probs``: (n, C) validation probabilities (rows are renormalised); ``labels``: n class indices or
    (n, C) one-hot. A bounded scalar search on log T over ``TEMPERATURE_BOUNDS``; T = 1 is kept if the
    search ends no better. Where the NLL does not depend on T at all (every row uniform: it is ln C for
    any T), returns 1.0. T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones.
    """
    probs = _probabilities(probs, "fit_temperature")
    labels = _class_labels(labels, *probs.shape, "fit_temperature")
    logits = _logits(probs)
    low, high = TEMPERATURE_BOUNDS
    at_one, at_low, at_high = (_nll(logits, labels, t) for t in (1.0, low, high))
    # A convex function of 1/T equal at three points is constant between them.
    if max(at_one, at_low, at_high) - min(at_one, at_low, at_high) <= 1e-12 * max(1.0, abs(at_one)):
        return 1.0
    result = minimize_scalar(lambda log_t: _nll(logits, labels, np.exp(log_t)),
                             bounds=(np.log(low), np.log(high)), method="bounded",
                             options={"xatol": 1e-9})
    if not np.isfinite(result.fun) or result.fun >= at_one:
        return 1.0
    return float(np.exp(result.x))


def temperature_scaled(probs, temperature: float) -> np.ndarray:
    """``softmax(log(clip(probs)) / temperature)`` row by row: (n, C), rows sum to 1, argmax unchanged.

    T = 1 returns the renormalised probabilities (up to the ``PROB_FLOOR`` clip of zeros).
    """
    probs = _probabilities(probs, "temperature_scaled")
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature_scaled: temperature must be finite and > 0, got {temperature}")
    return softmax(_logits(probs) / temperature, axis=1)
