"""The classifier of the paper: a lung U-Net's encoder cut at ``block5c_add`` (CXR-specific features
learned by segmentation), then ZeroPadding2D → Conv2D(512, 3×3) → GAP → Dense(3, softmax)."""

from __future__ import annotations

import tf_keras

from multiloss.data.classes import CLASSES
from multiloss.models.unet import set_batchnorm_momentum

CUT_LAYER = "block5c_add"
DEEPEST_CONV = "cls_conv"      # the layer model-level ensembles cut at and Grad-CAM looks at
SOFTMAX = "cls_softmax"
HEAD_LAYERS = (DEEPEST_CONV, SOFTMAX)   # the layers with weights on top of the encoder


def encoder_from_unet(unet: tf_keras.Model, cut_layer: str = CUT_LAYER) -> tf_keras.Model:
    """The U-Net's encoder up to ``cut_layer``, sharing the U-Net's layers (and so its weights)."""
    try:
        features = unet.get_layer(cut_layer).output
    except ValueError as err:
        raise ValueError(f"the encoder model has no layer {cut_layer!r}; is it an EfficientNet-B0 U-Net?") from err
    return tf_keras.Model(unet.inputs, features, name="encoder")


def build_classifier(unet: tf_keras.Model, *, activity_regularizer=None, bn_momentum: float | None = None,
                     n_classes: int = len(CLASSES)) -> tf_keras.Model:
    """Encoder + head; ``activity_regularizer`` goes on the softmax layer (the cce_entropy loss).
    The head's other layers compute under Keras' global policy (see :mod:`multiloss.models.precision`),
    the softmax layer in float32 under every policy, so the probabilities and the losses are float32."""
    encoder = encoder_from_unet(unet)
    x = tf_keras.layers.ZeroPadding2D(name="cls_zeropad")(encoder.output)
    x = tf_keras.layers.Conv2D(512, 3, activation="relu", name=DEEPEST_CONV)(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="cls_gap")(x)
    out = tf_keras.layers.Dense(n_classes, activation="softmax", activity_regularizer=activity_regularizer,
                                dtype="float32", name=SOFTMAX)(x)
    return set_batchnorm_momentum(tf_keras.Model(encoder.inputs, out, name="cxr_classifier"), bn_momentum)
