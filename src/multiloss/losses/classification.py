"""The twelve classification losses of the paper, on softmax outputs, mean over the batch.

Each is a base term (CCE, categorical focal, KL divergence, categorical hinge) on targets that may
be label-smoothed, plus, for the ``cal_*`` losses, a calibration penalty and, for the entropy
losses, a confidence (negative-entropy) penalty. Unlike the published code, both penalties are
TensorFlow ops that carry gradient, and smoothing divides by the class count. A ``published``
variant (:mod:`multiloss.variants`) switches the published behaviour back on, for comparison.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras

from multiloss import variants
from multiloss.losses.params import resolve_params

EPSILON = 1e-7

# The values the paper settled on; the one table the factory, stages, sweeps and tags read.
CLASSIFICATION_LOSSES: dict[str, dict[str, float]] = {
    "cce": {},
    "focal": {"gamma": 1.0},
    "kld": {},
    "hinge": {},
    "ls_cce": {"sigma": 0.2},
    "ls_focal": {"sigma": 0.2, "gamma": 1.0},
    "cal_cce": {"lam": 10.0},
    "cce_entropy": {"beta": 2.0},
    "cal_neg_entropy": {"beta": 0.001, "lam": 10.0},
    "cal_kld": {"lam": 1.0},
    "cal_focal": {"gamma": 1.0, "lam": 1.0},
    "cal_hinge": {"lam": 10.0},
}

# Which base term each loss uses, and whether its entropy penalty is an activity regulariser on the
# softmax layer (cce_entropy, as the paper describes it) rather than a term of the loss itself.
_BASE = {"cce": "cce", "focal": "focal", "kld": "kld", "hinge": "hinge", "ls_cce": "cce", "ls_focal": "focal",
         "cal_cce": "cce", "cce_entropy": "cce", "cal_neg_entropy": "cce", "cal_kld": "kld",
         "cal_focal": "focal", "cal_hinge": "hinge"}
_ENTROPY_AS_ACTIVITY_REGULARIZER = {"cce_entropy"}
BASE_TERMS = ("cce", "focal", "kld", "hinge")


def smooth_labels(y_true, sigma: float, classes=None):
    """``(1 − σ)·y + σ/C`` with C the number of classes (``classes`` overrides it: the published
    code's 2)."""
    if classes is None:
        classes = tf.cast(tf.shape(y_true)[-1], y_true.dtype)
    return (1.0 - sigma) * y_true + sigma / classes


def entropy(y_pred):
    """Shannon entropy of each row of probabilities, shape (batch,)."""
    p = tf.clip_by_value(y_pred, EPSILON, 1.0)
    return -tf.reduce_sum(y_pred * tf.math.log(p), axis=-1)


def calibration_penalty(y_true, y_pred):
    """``|accuracy − mean confidence|`` over the batch; differentiable through the confidence
    (the maximum probability), the accuracy being a constant of the gradient."""
    hits = tf.cast(tf.equal(tf.argmax(y_pred, -1), tf.argmax(y_true, -1)), y_pred.dtype)
    accuracy = tf.stop_gradient(tf.reduce_mean(hits))
    confidence = tf.reduce_mean(tf.reduce_max(y_pred, axis=-1))
    return tf.abs(accuracy - confidence)


def base_loss(kind: str, y_true, y_pred, gamma: float = 1.0):
    """Per-example base term, shape (batch,)."""
    p = tf.clip_by_value(y_pred, EPSILON, 1.0)
    if kind == "cce":
        return -tf.reduce_sum(y_true * tf.math.log(p), axis=-1)
    if kind == "focal":
        return -tf.reduce_sum(y_true * tf.pow(1.0 - p, gamma) * tf.math.log(p), axis=-1)
    if kind == "kld":
        t = tf.clip_by_value(y_true, EPSILON, 1.0)
        return tf.reduce_sum(y_true * tf.math.log(t / p), axis=-1)
    if kind == "hinge":
        positive = tf.reduce_sum(y_true * y_pred, axis=-1)
        negative = tf.reduce_max((1.0 - y_true) * y_pred, axis=-1)
        return tf.maximum(negative - positive + 1.0, 0.0)
    raise ValueError(f"unknown base loss {kind!r}")


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """A classification loss as numbers: its base term and the weights of its penalties (0: none)."""

    base: str                        # one of BASE_TERMS
    gamma: float                     # the focal exponent (read by the focal base term only)
    sigma: float                     # label smoothing (0: none)
    smoothing_classes: float | None  # smoothing's divisor; None: the class count
    lam: float                       # calibration penalty weight
    calibration_gradient: bool       # False: the published constant penalty
    beta: float                      # entropy penalty weight inside the loss
    activity_beta: float             # entropy penalty weight as the softmax layer's activity regulariser


def per_example_loss(y_true, y_pred, *, base, sigma, smoothing_classes, lam, calibration_gradient, beta):
    """``base(targets, y_pred) + λ·calibration − β·mean entropy`` per example. The numbers may be
    Python floats or tensors (a shared graph's variables); a zero weight adds exactly zero, so
    every loss of the table is this one expression. ``calibration_gradient`` 0 keeps the
    penalty's value and stops its gradient, 1 lets it through."""
    y_true = tf.cast(y_true, y_pred.dtype)
    targets = smooth_labels(y_true, sigma, smoothing_classes)
    total = base(targets, y_pred)
    penalty = calibration_penalty(y_true, y_pred)
    constant = tf.stop_gradient(penalty)
    total += lam * (constant + calibration_gradient * (penalty - constant))
    return total - beta * tf.reduce_mean(entropy(y_pred))


@tf_keras.saving.register_keras_serializable(package="multiloss")
class EntropyRegularizer(tf_keras.regularizers.Regularizer):
    """Activity regulariser ``−β·H(p)`` summed over the batch (Keras divides by the batch size)."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def __call__(self, activations):
        return -self.beta * tf.reduce_sum(entropy(activations))

    def get_config(self):
        return {"beta": self.beta}


@tf_keras.saving.register_keras_serializable(package="multiloss")
class ClassificationLoss(tf_keras.losses.Loss):
    """One of CLASSIFICATION_LOSSES, by name, with its parameters and variant (see
    :func:`classification_loss`)."""

    def __init__(self, loss: str, name: str | None = None, variant: str = variants.CORRECTED, **params):
        super().__init__(name=name or loss, reduction=tf_keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        self.params = resolve_params(loss, CLASSIFICATION_LOSSES, "classification", **params)
        self.loss = loss
        self.variant = variants.for_training(variant, loss)

    def activity_regularizer(self) -> EntropyRegularizer | None:
        """The softmax layer's regulariser this loss asks for (cce_entropy), else None (also when
        the published code's regulariser, which returns nothing, is reproduced)."""
        if self.loss in _ENTROPY_AS_ACTIVITY_REGULARIZER and not self.variant.has("entropy_unattached"):
            return EntropyRegularizer(self.params["beta"])
        return None

    def terms(self) -> LossTerms:
        """This loss as the numbers of :func:`per_example_loss` (what a shared training graph reads)."""
        params, regularizer = self.params, self.activity_regularizer()
        return LossTerms(
            base=_BASE[self.loss], gamma=params.get("gamma", 1.0), sigma=params.get("sigma", 0.0),
            smoothing_classes=2.0 if self.variant.has("smoothing_half") else None,
            lam=params.get("lam", 0.0), calibration_gradient=not self.variant.has("calibration_no_gradient"),
            beta=params["beta"] if "beta" in params and self.loss not in _ENTROPY_AS_ACTIVITY_REGULARIZER else 0.0,
            activity_beta=regularizer.beta if regularizer else 0.0)

    def call(self, y_true, y_pred):
        """Per example: the base term plus the batch-level penalties (broadcast), so Keras' batch
        mean is exactly the loss as defined and class weights reweight examples as they should."""
        t = self.terms()
        return per_example_loss(y_true, y_pred, base=lambda targets, p: base_loss(t.base, targets, p, t.gamma),
                                sigma=t.sigma, smoothing_classes=t.smoothing_classes, lam=t.lam,
                                calibration_gradient=float(t.calibration_gradient), beta=t.beta)

    def get_config(self):
        return {"loss": self.loss, "name": self.name, "variant": self.variant.name, **self.params}


def classification_loss(name: str, variant: str = variants.CORRECTED, **params) -> ClassificationLoss:
    """The Keras loss ``name`` ((y_true one-hot, y_pred softmax) → scalar) with the paper's defaults,
    overridden by ``params`` (``gamma``, ``sigma``, ``lam``, ``beta``; ``None`` = default).

    ``variant``: ``corrected``, ``published`` (the published code's flaws that act on this loss)
    or flaw names (:mod:`multiloss.variants`); a flaw that cannot act on ``name`` is refused."""
    return ClassificationLoss(name, variant=variant, **params)
