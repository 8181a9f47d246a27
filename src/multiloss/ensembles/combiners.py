"""Prediction-level ensembles on arrays: majority vote, mean, SLSQP-weighted mean, out-of-fold fits.

Keras-free NumPy and SciPy, shared by the scoring (ensembles.build) and the served model
(ensembles.serving), so both combine the members alike.

``member_probs`` is always shaped (K members, N images, C classes). Weights are fitted on
validation predictions only; the caller never passes test predictions to a fit.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

EPSILON = 1e-15


def _check(member_probs) -> np.ndarray:
    probs = np.asarray(member_probs, float)
    if probs.ndim != 3:
        raise ValueError(f"member_probs must be shaped (members, images, classes), got shape {probs.shape}")
    if probs.shape[0] < 1:
        raise ValueError("member_probs holds no members")
    return probs


def vote_shares(member_probs) -> np.ndarray:
    """(N, C): the share of members whose top class is each class."""
    probs = _check(member_probs)
    k, n, c = probs.shape
    votes = np.zeros((n, c))
    np.add.at(votes, (np.tile(np.arange(n), k), probs.argmax(2).ravel()), 1.0)
    return votes / k


def majority_vote(member_probs) -> np.ndarray:
    """(N,) the most voted class; a tie goes to the tied class with the highest mean probability.

    Not, as in the published code, to the highest class index, which favours one class."""
    probs = _check(member_probs)
    shares = vote_shares(probs)
    tied = shares == shares.max(1, keepdims=True)
    mean = probs.mean(0)
    return np.where(tied, mean, -np.inf).argmax(1)


def majority_probs(member_probs, tie_weight: float = 1e-6) -> np.ndarray:
    """(N, C) scores for the majority vote: the vote shares, nudged by ``tie_weight`` × the mean probability.

    The nudge makes the arg-max :func:`majority_vote`'s class, while ranking metrics (AUROC,
    AUPRC) still see the shares."""
    probs = _check(member_probs)
    scores = vote_shares(probs) + tie_weight * probs.mean(0)
    return scores / scores.sum(1, keepdims=True)


def mean_probs(member_probs) -> np.ndarray:
    return _check(member_probs).mean(0)


def weighted_mean(member_probs, weights) -> np.ndarray:
    probs = _check(member_probs)
    weights = np.asarray(weights, float)
    if weights.shape != (probs.shape[0],):
        raise ValueError(f"need one weight per member ({probs.shape[0]}), got shape {weights.shape}")
    return np.tensordot(weights, probs, axes=1)


def log_loss_of(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-probability of the true class (y_true: class indices)."""
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(picked, EPSILON, 1.0)).mean())


def optimize_weights(member_probs, y_true, restarts: int = 10, seed: int = 0) -> np.ndarray:
    """Weights ≥ 0 summing to 1 that minimise the log-loss of the weighted mean, by SLSQP.

    Starts: the uniform weights, each single member, and ``restarts`` seeded Dirichlet draws; the
    best end point wins, so the result is never worse than the best member alone.
    """
    probs = _check(member_probs)
    y_true = np.asarray(y_true, int)
    k = probs.shape[0]
    if y_true.shape != (probs.shape[1],):
        raise ValueError(f"y_true must hold one label per image ({probs.shape[1]}), got shape {y_true.shape}")

    def objective(w):
        return log_loss_of(weighted_mean(probs, w), y_true)

    rng = np.random.default_rng(seed)
    starts = [np.full(k, 1.0 / k), *np.eye(k), *rng.dirichlet(np.ones(k), size=restarts)]
    best_w, best_value = None, np.inf
    for start in starts:
        candidates = [start]
        if k > 1:
            result = minimize(objective, start, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                              constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
                              options={"ftol": 1e-10, "maxiter": 500})
            candidates.append(np.clip(result.x, 0.0, 1.0))
        for w in candidates:
            w = w / w.sum()
            value = objective(w)
            if value < best_value:
                best_w, best_value = w, value
    return best_w


def out_of_fold(fit_predict, member_probs, y_true, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, C) predictions where each image's comes from a combiner fitted without it.

    ``fit_predict(train_probs, train_labels, held_out_probs)`` fits on the first two and
    predicts the third. Scores of fitted combiners on these are honest; on the images they were
    fitted on they are not. Folds are stratified by class where every class has enough images.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    probs = _check(member_probs)
    y_true = np.asarray(y_true, int)
    n = probs.shape[1]
    folds = min(folds, n)
    if folds < 2:
        raise ValueError(f"out_of_fold needs at least 2 images, got {n}")
    counts = np.bincount(y_true)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts[counts > 0].min() >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    result = np.zeros((n, probs.shape[2]))
    for train, held in splitter.split(np.zeros(n), y_true):
        result[held] = fit_predict(probs[:, train], y_true[train], probs[:, held])
    return result
