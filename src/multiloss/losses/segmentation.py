"""Binary lung-segmentation losses on sigmoid outputs ``y_pred`` in (0, 1).

Every loss returns one value per image and lets Keras average over the batch (so sample weights
and distribution strategies scale it correctly). Overlap losses (Dice, Tversky) are per image, so a
small lung counts as much as a large one; smoothing of 1 keeps an empty mask finite.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from multiloss.losses.params import resolve_params

EPSILON = 1e-7
SMOOTH = 1.0

# The paper's settings: one table, read by the factory, the stage and the registry tags.
# bce_dice: alpha·BCE + beta·Dice; focal: alpha on the lung class, gamma; tversky / focal_tversky:
# alpha weighs false negatives, beta false positives, focal exponent 1/gamma.
SEGMENTATION_LOSSES: dict[str, dict[str, float]] = {
    "bce": {},
    "bce_dice": {"alpha": 0.5, "beta": 0.5},
    "focal": {"alpha": 0.25, "gamma": 1.0},
    "tversky": {"alpha": 0.7, "beta": 0.3},
    "focal_tversky": {"alpha": 0.7, "beta": 0.3, "gamma": 4.0 / 3.0},
}


def _flat(y_true, y_pred):
    y_true = tf.cast(y_true, y_pred.dtype)
    batch = tf.shape(y_pred)[0]
    return tf.reshape(y_true, [batch, -1]), tf.clip_by_value(tf.reshape(y_pred, [batch, -1]), EPSILON, 1 - EPSILON)


def binary_crossentropy(y_true, y_pred):
    t, p = _flat(y_true, y_pred)
    return tf.reduce_mean(-(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p)), axis=1)


def dice_loss(y_true, y_pred):
    """Per image ``1 − (2·TP + 1)/(Σy + Σp + 1)``, shape (batch,)."""
    t, p = _flat(y_true, y_pred)
    tp = tf.reduce_sum(t * p, axis=1)
    return 1 - (2 * tp + SMOOTH) / (tf.reduce_sum(t, 1) + tf.reduce_sum(p, 1) + SMOOTH)


def tversky_index(y_true, y_pred, alpha, beta):
    """Per image ``(TP + 1)/(TP + alpha·FN + beta·FP + 1)``, shape (batch,)."""
    t, p = _flat(y_true, y_pred)
    tp = tf.reduce_sum(t * p, axis=1)
    fn = tf.reduce_sum(t * (1 - p), axis=1)
    fp = tf.reduce_sum((1 - t) * p, axis=1)
    return (tp + SMOOTH) / (tp + alpha * fn + beta * fp + SMOOTH)


class _SegmentationLoss(tf_keras.losses.Loss):
    """A loss returning one value per image, averaged over the batch by Keras."""

    name_in_table: str = ""

    def __init__(self, name=None, **params):
        super().__init__(name=name or self.name_in_table, reduction=tf_keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        self.params = params

    def get_config(self):
        return {"name": self.name, **self.params}


@tf_keras.saving.register_keras_serializable(package="multiloss")
class BinaryCrossentropy(_SegmentationLoss):
    name_in_table = "bce"

    def call(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred)


@tf_keras.saving.register_keras_serializable(package="multiloss")
class BCEDice(_SegmentationLoss):
    name_in_table = "bce_dice"

    def call(self, y_true, y_pred):
        return (self.params["alpha"] * binary_crossentropy(y_true, y_pred)
                + self.params["beta"] * dice_loss(y_true, y_pred))


@tf_keras.saving.register_keras_serializable(package="multiloss")
class BinaryFocal(_SegmentationLoss):
    """``−α_t (1 − p_t)^γ log p_t``: α on the lung class, 1 − α on the background."""

    name_in_table = "focal"

    def call(self, y_true, y_pred):
        t, p = _flat(y_true, y_pred)
        alpha, gamma = self.params["alpha"], self.params["gamma"]
        lung = -t * alpha * tf.pow(1 - p, gamma) * tf.math.log(p)
        background = -(1 - t) * (1 - alpha) * tf.pow(p, gamma) * tf.math.log(1 - p)
        return tf.reduce_mean(lung + background, axis=1)


@tf_keras.saving.register_keras_serializable(package="multiloss")
class Tversky(_SegmentationLoss):
    name_in_table = "tversky"

    def call(self, y_true, y_pred):
        return 1 - tversky_index(y_true, y_pred, self.params["alpha"], self.params["beta"])


@tf_keras.saving.register_keras_serializable(package="multiloss")
class FocalTversky(_SegmentationLoss):
    """``(1 − TI)^(1/γ)`` per image, averaged."""

    name_in_table = "focal_tversky"

    def call(self, y_true, y_pred):
        index = tversky_index(y_true, y_pred, self.params["alpha"], self.params["beta"])
        return tf.pow(tf.maximum(1 - index, 0.0), 1 / self.params["gamma"])


_CLASSES = {cls.name_in_table: cls for cls in (BinaryCrossentropy, BCEDice, BinaryFocal, Tversky, FocalTversky)}


def segmentation_loss(name: str, **params) -> tf_keras.losses.Loss:
    """The Keras loss ``name`` with the paper's defaults, overridden by ``params``."""
    resolved = resolve_params(name, SEGMENTATION_LOSSES, "segmentation", **params)
    return _CLASSES[name](**resolved)
