"""Classification scores: discrimination, calibration, intervals and paired tests.

scikit-learn and SciPy do what they already do (AUROC, AUPRC, MCC, log-loss, exact binomial
intervals, bootstrap); what they lack (expected calibration error, the multi-class Brier score,
McNemar's exact test, the paired bootstrap of an MCC difference) is written here.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

ECE_BINS = 15
CI_METHODS = ("wald", "clopper-pearson", "wilson", "bootstrap")


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(1) if y.ndim == 2 else y.astype(int)


def reliability_bins(y_true, probs, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count) per non-empty equal-width bin of the top probability."""
    probs = np.asarray(probs, float)
    confidence = probs.max(1)
    hits = probs.argmax(1) == _labels(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = [(confidence[which == b].mean(), hits[which == b].mean(), (which == b).sum())
            for b in range(bins) if (which == b).any()]
    return tuple(np.array(column) for column in zip(*rows)) if rows else (np.array([]),) * 3


def expected_calibration_error(y_true, probs, bins: int = ECE_BINS) -> float:
    """Σ_bins (n_b / N)·|accuracy_b − confidence_b| over equal-width bins of the top probability."""
    confidence, accuracy, counts = reliability_bins(y_true, probs, bins)
    return float((counts / counts.sum() * np.abs(accuracy - confidence)).sum())


def brier_score(y_true, probs) -> float:
    """Mean over images of Σ_k (p_k − y_k)² (the multi-class Brier score, in [0, 2])."""
    probs = np.asarray(probs, float)
    onehot = np.eye(probs.shape[1])[_labels(y_true)]
    return float(((probs - onehot) ** 2).sum(1).mean())


def classification_scores(y_true, probs) -> dict[str, float]:
    """Every scalar classification score for one model on one split."""
    probs = np.asarray(probs, float)
    probs = probs / probs.sum(1, keepdims=True)   # float32 softmax rows miss 1 by ~1e-7
    labels = _labels(y_true)
    classes = np.arange(probs.shape[1])
    onehot = np.eye(probs.shape[1])[labels]
    predicted = probs.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                               average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "auroc_micro": float(roc_auc_score(onehot, probs, average="micro")),
        "auroc_macro": float(roc_auc_score(onehot, probs, average="macro")),
        "auprc_micro": float(average_precision_score(onehot, probs, average="micro")),
        "auprc_macro": float(average_precision_score(onehot, probs, average="macro")),
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "mcc": float(matthews_corrcoef(labels, predicted)),
        "ece": expected_calibration_error(labels, probs),
        "brier": brier_score(labels, probs),
        "nll": float(log_loss(labels, np.clip(probs, 1e-15, 1), labels=classes)),
    }


def confusion(y_true, probs) -> np.ndarray:
    probs = np.asarray(probs)
    return confusion_matrix(_labels(y_true), probs.argmax(1), labels=np.arange(probs.shape[1]))


def proportion_ci(value: float, n: int, method: str = "wald", level: float = 0.95) -> tuple[float, float]:
    """Interval for a proportion-like score measured on n images.

    ``wald``: value ± z·sqrt(value(1 − value)/n), what the paper's tables print (also for MCC);
    ``clopper-pearson`` (exact) and ``wilson``: SciPy's binomial intervals on round(value·n) hits,
    so the value must lie in [0, 1].
    """
    if n < 1:
        raise ValueError(f"proportion_ci: n must be >= 1, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"proportion_ci: level must be in (0, 1), got {level}")
    if method == "wald":
        half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(max(value * (1 - value), 0.0) / n)
        return float(value - half), float(value + half)
    if method in ("clopper-pearson", "wilson"):
        if not 0 <= value <= 1:
            raise ValueError(f"proportion_ci: method {method} needs a value in [0, 1], got {value}")
        result = stats.binomtest(int(round(value * n)), n).proportion_ci(
            confidence_level=level, method="exact" if method == "clopper-pearson" else "wilson")
        return float(result.low), float(result.high)
    raise ValueError(f"proportion_ci: method must be wald, clopper-pearson or wilson, got {method!r}")


def resampled_mcc(labels: np.ndarray, predicted: np.ndarray, index: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """The multi-class MCC of each resample at once: ``index`` (R, n) picks images with replacement.

    From the confusion counts (Gorodkin's R_K, what scikit-learn computes): with c correct of s,
    t_k true and p_k predicted per class, MCC = (c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)),
    0 where the denominator is 0.
    """
    n_classes = n_classes or int(max(labels.max(), predicted.max())) + 1
    y, p = labels[index], predicted[index]
    rows = np.arange(index.shape[0])[:, None]
    t = np.zeros((index.shape[0], n_classes))
    q = np.zeros_like(t)
    np.add.at(t, (rows, y), 1.0)
    np.add.at(q, (rows, p), 1.0)
    s = float(index.shape[1])
    c = (y == p).sum(1).astype(float)
    numerator = c * s - (t * q).sum(1)
    denominator = np.sqrt((s**2 - (q**2).sum(1)) * (s**2 - (t**2).sum(1)))
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def mcc_bootstrap_ci(y_true, predicted, n_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of the MCC over images."""
    labels, predicted = _labels(y_true), np.asarray(predicted).astype(int)
    index = np.random.default_rng(seed).integers(0, len(labels), (n_resamples, len(labels)))
    low, high = np.quantile(resampled_mcc(labels, predicted, index), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def mcc_interval(y_true, predicted, method: str = "bootstrap", level: float = 0.95, seed: int = 0):
    """The MCC interval by ``method`` (one of CI_METHODS; proportions use n = number of images).

    ``wald`` treats the MCC as a proportion, as the paper's tables do. MCC lies in [−1, 1], so the
    binomial intervals (``clopper-pearson``, ``wilson``) are taken on (MCC + 1)/2 and mapped back.
    """
    if method == "bootstrap":
        return mcc_bootstrap_ci(y_true, predicted, level=level, seed=seed)
    value = float(matthews_corrcoef(_labels(y_true), np.asarray(predicted).astype(int)))
    if method == "wald":
        return proportion_ci(value, len(predicted), method, level)
    low, high = proportion_ci((value + 1) / 2, len(predicted), method, level)
    return 2 * low - 1, 2 * high - 1


# What each interval method gives for the MCC, in the words logs and reports use: only the bootstrap
# is an interval of the MCC itself; the binomial ones are proportion intervals on (MCC + 1)/2.
MCC_INTERVAL_LABELS = {
    "bootstrap": "percentile bootstrap of the MCC over test images",
    "wald": "Wald, the MCC treated as a proportion of n images (as the paper prints)",
    "clopper-pearson": "Clopper-Pearson proportion interval on (MCC + 1)/2, mapped back (not an MCC interval)",
    "wilson": "Wilson proportion interval on (MCC + 1)/2, mapped back (not an MCC interval)",
}


def mcnemar_exact(y_true, pred_a, pred_b) -> float:
    """Two-sided exact McNemar p-value from the images exactly one of the two models gets right."""
    labels = _labels(y_true)
    right_a = np.asarray(pred_a) == labels
    right_b = np.asarray(pred_b) == labels
    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap_mcc_difference(y_true, pred_a, pred_b, n_resamples: int = 2000, seed: int = 0,
                                    level: float = 0.95) -> dict[str, float]:
    """MCC(a) − MCC(b) on the same images, its percentile interval and a two-sided p-value
    (twice the share of resamples on the far side of zero)."""
    labels = _labels(y_true)
    pred_a, pred_b = np.asarray(pred_a).astype(int), np.asarray(pred_b).astype(int)
    index = np.random.default_rng(seed).integers(0, len(labels), (n_resamples, len(labels)))
    n_classes = int(max(labels.max(), pred_a.max(), pred_b.max())) + 1
    diffs = resampled_mcc(labels, pred_a, index, n_classes) - resampled_mcc(labels, pred_b, index, n_classes)
    observed = matthews_corrcoef(labels, pred_a) - matthews_corrcoef(labels, pred_b)
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(observed), "low": float(low), "high": float(high),
            "p_value": float(min(1.0, 2 * tail))}
