"""The lung U-Net: segmentation-models' U-Net with an EfficientNet-B0 encoder, sigmoid output.

Built for any input size divisible by 32, so one registered model serves the demo's small images
and the paper's 512 px. ``encoder_weights="imagenet"`` downloads from the internet; offline it
fails, so the default is no pre-training and a local weights file (an EfficientNet-B0 "notop" HDF5,
loaded by layer name) is accepted instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import segmentation_models as sm
import tf_keras

BACKBONE = "efficientnetb0"
NO_WEIGHTS = ("", "none", "None", "null")
SIZE_MULTIPLE = 32   # the encoder halves the image five times


def check_size(name: str, size: int) -> int:
    """``size`` if the U-Net can take it, else an error naming the parameter."""
    if size % SIZE_MULTIPLE:
        raise ValueError(f"parameter {name} must be a multiple of {SIZE_MULTIPLE} "
                         f"(the U-Net halves it five times), got {size}")
    return size


def set_batchnorm_momentum(model: tf_keras.Model, momentum: float | None) -> tf_keras.Model:
    """Faster-moving BatchNorm statistics for short trainings on small data: with Keras' 0.99 a
    few hundred steps leave the inference statistics far behind the training ones, and validation
    scores lag and swing. ``None`` keeps the architecture's own value (the paper's setting)."""
    if momentum is not None:
        if not 0 < momentum < 1:
            raise ValueError(f"bn_momentum must be in (0, 1), got {momentum}")
        for layer in model.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = momentum
    return model


def build_unet(encoder_weights: str | None = None, bn_momentum: float | None = None) -> tf_keras.Model:
    """A fresh U-Net; ``encoder_weights``: None / "none", "imagenet", or a local ``.h5`` file."""
    return set_batchnorm_momentum(_build(encoder_weights), bn_momentum)


def _build(encoder_weights: str | None) -> tf_keras.Model:
    if encoder_weights is None or encoder_weights in NO_WEIGHTS:
        return sm.Unet(BACKBONE, encoder_weights=None, input_shape=(None, None, 3), classes=1, activation="sigmoid")
    if encoder_weights == "imagenet":
        try:
            return sm.Unet(BACKBONE, encoder_weights="imagenet", input_shape=(None, None, 3),
                           classes=1, activation="sigmoid")
        except Exception as err:  # urllib/HTTP/OS errors: all mean "could not fetch"
            raise RuntimeError(
                f"encoder_weights=imagenet needs to download the EfficientNet-B0 weights and failed "
                f"({type(err).__name__}: {err}); use encoder_weights=none or a local .h5 file") from err
    path = Path(encoder_weights)
    if not path.is_file():
        raise FileNotFoundError(f"encoder_weights {encoder_weights!r}: no such weights file "
                                "(expected none, imagenet, or a local EfficientNet-B0 .h5)")
    model = sm.Unet(BACKBONE, encoder_weights=None, input_shape=(None, None, 3), classes=1, activation="sigmoid")
    before = model.get_layer("stem_conv").get_weights()[0].copy()
    try:
        model.load_weights(str(path), by_name=True, skip_mismatch=False)
    except Exception as err:
        raise ValueError(f"encoder_weights {path}: cannot load into the EfficientNet-B0 encoder ({err})") from err
    if np.array_equal(before, model.get_layer("stem_conv").get_weights()[0]):
        # load_weights(by_name=True) silently skips names it does not find
        raise ValueError(f"encoder_weights {path}: no EfficientNet-B0 layer (e.g. stem_conv) found in the file")
    return model
