"""Multi-loss ensemble deep learning for chest X-ray classification, tracked with MLflow.

Importing the package pins the Keras flavour before TensorFlow is loaded anywhere:
segmentation-models 1.0.1 only builds a working model on tf-keras (Keras 2 semantics), and
with ``SM_FRAMEWORK`` alone TensorFlow 2.21 hands it Keras 3 without a word.
"""

import os
import sys

_REQUIRED_ENV = {"TF_USE_LEGACY_KERAS": "1", "SM_FRAMEWORK": "tf.keras"}


def _pin_keras_flavour() -> None:
    for name, value in _REQUIRED_ENV.items():
        current = os.environ.get(name)
        if current is not None and current != value:
            raise RuntimeError(
                f"multiloss needs {name}={value} but the environment sets {name}={current!r}; "
                f"unset it or set it to {value!r}"
            )
        os.environ[name] = value
    if "segmentation_models" in sys.modules and "tf_keras" not in sys.modules:
        raise RuntimeError(
            "segmentation_models was imported before multiloss and bound itself to Keras 3; "
            "import multiloss first"
        )


_pin_keras_flavour()
# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides our own progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
