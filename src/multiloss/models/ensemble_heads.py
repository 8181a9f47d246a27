"""Trainable ensembles: the stacking meta-learner and the model-level ensemble.

Model level: every member is cut at its deepest convolution and frozen; the features are
concatenated and a new 1×1 convolution (to 512), GAP and Dense(3, softmax) are trained — all the
new layers, unlike the published code, which froze the 1×1 convolution at its (seeded) random
initial weights and trained the last Dense layer only (``freeze_conv=True`` reproduces that, the
variant flaw ``head_dense_only``). The new layers are shared
between the full image model and a head that runs on precomputed member features, so training can
use cached features (the members are frozen, so the features never change) and the full model
carries the trained weights without copying.
"""

from __future__ import annotations

import re

import numpy as np
import tf_keras

from multiloss.data.classes import CLASSES
from multiloss.models.classifier import DEEPEST_CONV

ENSEMBLE_CONV = "ensemble_conv"     # Grad-CAM's default layer for a model-level ensemble


def stacking_inputs(member_probs: np.ndarray) -> np.ndarray:
    """(K, N, C) member probabilities → (N, K·C) meta-learner inputs."""
    probs = np.asarray(member_probs, np.float32)
    return probs.transpose(1, 0, 2).reshape(probs.shape[1], -1)


def build_stacking(n_members: int, n_classes: int = len(CLASSES)) -> tf_keras.Model:
    inputs = tf_keras.Input((n_members * n_classes,), name="member_probs")
    x = tf_keras.layers.Dense(n_classes * n_members, activation="relu", name="stack_hidden")(inputs)
    out = tf_keras.layers.Dense(n_classes, activation="softmax", name="stack_softmax")(x)
    return tf_keras.Model(inputs, out, name=f"stacking_{n_members}")


def fit_stacking(member_probs: np.ndarray, labels: np.ndarray, *, epochs: int = 300, lr: float = 0.01,
                 seed: int = 0) -> tf_keras.Model:
    """The meta-learner fitted on out-of-sample member predictions (the validation split's).

    The members never saw these images, so the learner learns how far to trust each one.
    ``epochs`` full-batch Adam steps on the categorical cross-entropy, from Keras' seeded initial
    weights. The steps run in NumPy: the net is a few hundred weights, and an ensemble run fits it
    many times (out of fold, for each size of K), where building a Keras graph for every fit would
    cost more than the steps themselves."""
    member_probs = np.asarray(member_probs)
    tf_keras.utils.set_random_seed(seed)
    model = build_stacking(member_probs.shape[0], member_probs.shape[2])
    x = stacking_inputs(member_probs).astype(np.float64)
    targets = np.eye(member_probs.shape[2])[np.asarray(labels, int)]
    params = [w.astype(np.float64) for w in model.get_weights()]     # hidden kernel, bias, out kernel, bias
    moments = [np.zeros_like(w) for w in params]
    squares = [np.zeros_like(w) for w in params]
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7                        # Keras' Adam defaults
    for step in range(1, epochs + 1):
        hidden_kernel, hidden_bias, out_kernel, out_bias = params
        pre = x @ hidden_kernel + hidden_bias
        hidden = np.maximum(pre, 0.0)
        logits = hidden @ out_kernel + out_bias
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        d_logits = (probs - targets) / len(x)                         # mean cross-entropy through the softmax
        d_pre = (d_logits @ out_kernel.T) * (pre > 0)
        grads = [x.T @ d_pre, d_pre.sum(0), hidden.T @ d_logits, d_logits.sum(0)]
        rate = lr * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        for w, g, m, v in zip(params, grads, moments, squares):
            m += (1 - beta_1) * (g - m)
            v += (1 - beta_2) * (g * g - v)
            w -= rate * m / (np.sqrt(v) + epsilon)
    model.set_weights([w.astype(np.float32) for w in params])
    return model


def stacking_predict(model: tf_keras.Model, member_probs: np.ndarray) -> np.ndarray:
    """The fitted learner's (N, C) probabilities, without tracing a predict graph for a tiny net."""
    return model(stacking_inputs(member_probs), training=False).numpy()


def member_features(member: tf_keras.Model, name: str, layer: str = DEEPEST_CONV) -> tf_keras.Model:
    """``member`` up to ``layer``, frozen (its BatchNorm layers then run in inference mode)."""
    try:
        output = member.get_layer(layer).output
    except ValueError as err:
        raise ValueError(f"member {name.split('_', 1)[-1]}: no layer {layer!r} to cut at (is it a cxr-classifier?)") from err
    features = tf_keras.Model(member.inputs, output, name=name)
    features.trainable = False
    return features


class ModelLevel:
    """A model-level ensemble: the frozen members' features concatenated under new trainable layers.

    ``full`` maps images to class probabilities; ``features`` maps images to the concatenated member
    features (``member_feature_models``, in order); ``head`` maps those features to probabilities.
    ``head`` and ``full`` share the trainable layers, so training the head on cached features
    trains the full model. ``freeze_conv``: the published code's head, whose 1×1 convolution keeps
    its initial weights and only the last Dense layer trains."""

    def __init__(self, members: list[tf_keras.Model], names: list[str], n_classes: int = len(CLASSES),
                 filters: int = 512, freeze_conv: bool = False):
        if len(members) < 2:
            raise ValueError(f"a model-level ensemble needs at least 2 members, got {len(members)}")
        cut = [member_features(m, f"member{i}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", n).strip("_"))
               for i, (m, n) in enumerate(zip(members, names), start=1)]
        self.member_feature_models = cut      # each member's frozen features; ``features`` concatenates them
        self.freeze_conv = freeze_conv
        image = tf_keras.Input((None, None, 3), name="image")
        concatenated = tf_keras.layers.Concatenate(name="ensemble_concat")([f(image) for f in cut])
        self.features = tf_keras.Model(image, concatenated, name="member_features")

        conv = tf_keras.layers.Conv2D(filters, 1, activation="relu", name=ENSEMBLE_CONV, trainable=not freeze_conv)
        gap = tf_keras.layers.GlobalAveragePooling2D(name="ensemble_gap")
        dense = tf_keras.layers.Dense(n_classes, activation="softmax", name="ensemble_softmax")
        channels = sum(int(f.output.shape[-1]) for f in cut)
        feature_in = tf_keras.Input((None, None, channels), name="member_features")
        self.head = tf_keras.Model(feature_in, dense(gap(conv(feature_in))), name="model_level_head")
        self.full = tf_keras.Model(image, dense(gap(conv(concatenated))), name=f"model_level_{len(members)}")
