"""Trainable ensembles (SPEC §9): the stacking meta-learner and the model-level ensemble.

Model level: every member is cut at its deepest convolution and frozen; the features are
concatenated and a new 1×1 convolution (to 512), GAP and Dense(3, softmax) are trained — all the
new layers, unlike the published code, which froze the 1×1 convolution. The new layers are shared
between the full image model and a head that runs on precomputed member features, so training can
use cached features (the members are frozen, so the features never change) and the full model
carries the trained weights without copying.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf
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
    """The meta-learner fitted on out-of-sample member predictions (the validation split's): the
    members never saw these images, so the learner learns how far to trust each one."""
    member_probs = np.asarray(member_probs)
    tf_keras.utils.set_random_seed(seed)
    model = build_stacking(member_probs.shape[0], member_probs.shape[2])
    # full-batch steps, run ``epochs`` at a time in one graph call: Keras' per-epoch overhead
    # would otherwise cost more than the training itself (1.8 s vs 0.3 s a fit)
    model.compile(optimizer=tf_keras.optimizers.Adam(lr), loss="categorical_crossentropy",
                  steps_per_execution=epochs)
    targets = np.eye(member_probs.shape[2], dtype=np.float32)[np.asarray(labels, int)]
    batch = tf.data.Dataset.from_tensors((stacking_inputs(member_probs), targets)).repeat(epochs)
    model.fit(batch, epochs=1, verbose=0)
    return model


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
    """A model-level ensemble: ``full`` maps images to class probabilities; ``features`` maps
    images to the concatenated member features; ``head`` maps those features to probabilities.
    ``head`` and ``full`` share the trainable layers."""

    def __init__(self, members: list[tf_keras.Model], names: list[str], n_classes: int = len(CLASSES),
                 filters: int = 512):
        if len(members) < 2:
            raise ValueError(f"a model-level ensemble needs at least 2 members, got {len(members)}")
        cut = [member_features(m, f"member{i}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", n).strip("_"))
               for i, (m, n) in enumerate(zip(members, names), start=1)]
        image = tf_keras.Input((None, None, 3), name="image")
        concatenated = tf_keras.layers.Concatenate(name="ensemble_concat")([f(image) for f in cut])
        self.features = tf_keras.Model(image, concatenated, name="member_features")

        conv = tf_keras.layers.Conv2D(filters, 1, activation="relu", name=ENSEMBLE_CONV)
        gap = tf_keras.layers.GlobalAveragePooling2D(name="ensemble_gap")
        dense = tf_keras.layers.Dense(n_classes, activation="softmax", name="ensemble_softmax")
        channels = sum(int(f.output.shape[-1]) for f in cut)
        feature_in = tf_keras.Input((None, None, channels), name="member_features")
        self.head = tf_keras.Model(feature_in, dense(gap(conv(feature_in))), name="model_level_head")
        self.full = tf_keras.Model(image, dense(gap(conv(concatenated))), name=f"model_level_{len(members)}")
