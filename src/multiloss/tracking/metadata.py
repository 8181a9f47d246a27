"""What MLflow shows a reader besides numbers: model signatures and input examples, the data splits
a run used (its Datasets), run descriptions, registered models' descriptions and versions' cards."""

from __future__ import annotations

import time
import warnings

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from multiloss import names

# The registered models' descriptions (set once, when a model is first registered).
MODEL_DESCRIPTIONS = {
    names.SEGMENTATION_MODEL: "Lung U-Net (EfficientNet-B0 encoder, sigmoid output): one gray chest X-ray replicated "
                              "to 3 channels in [0, 1], size a multiple of 32, in; the lung probability per pixel "
                              "out. Its encoder is what every cxr-classifier starts from.",
    names.CLASSIFIER_MODEL: "Chest X-ray classifier (the lung U-Net's encoder cut at block5c_add, then "
                            "Conv 3x3x512, GAP, Dense softmax): a lung-cropped image in, the probabilities of "
                            "normal, bacterial and viral pneumonia out. One version per loss, seed and data set.",
    names.ENSEMBLE_MODEL: "End-to-end chest X-ray ensemble: a raw image in (base64 bytes, a pixel array, or a "
                          "path under the server's allowed folders); lung segmentation, crop and the top-K "
                          "classifiers' combination inside; the three class probabilities and the predicted "
                          "class out.",
}


def image_signature(img_size: int, outputs: tuple[int, ...]) -> ModelSignature:
    """A Keras image model's signature: a batch of ``img_size``² 3-channel float32 images in,
    ``(batch, *outputs)`` float32 out, so serving refuses a wrongly shaped request."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, img_size, img_size, 3), "image")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *outputs), "output")]))


def image_example(img_size: int) -> np.ndarray:
    """One mid-gray image at the model's size: what a request looks like."""
    return np.full((1, img_size, img_size, 3), 0.5, np.float32)


def log_splits(parts: dict[str, pd.DataFrame], *, source: str, digest: str, name: str) -> None:
    """Log each split (context -> its rows) as a run input, so the Datasets column shows what the
    run trained, validated and tested on. The digest is the data's fingerprint (equal data,
    equal digest), cut to MLflow's length."""
    for context, frame in parts.items():
        if context not in names.DATASET_CONTEXTS:
            raise ValueError(f"unknown dataset context {context!r}; use one of {names.DATASET_CONTEXTS}")
        with warnings.catch_warnings():     # MLflow registers its local-folder source twice, and says so
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(frame.reset_index(drop=True), source=source, name=f"{name}-{context}",
                                              digest=digest[:36])
        _log_input(dataset, context)


# What SQLite, PostgreSQL and MySQL say when a row another process just inserted is inserted again.
_UNIQUE_VIOLATIONS = ("unique constraint", "duplicate key", "duplicate entry")
_INPUT_ATTEMPTS = 5


def _log_input(dataset, context: str) -> None:
    """``mlflow.log_input``, again after a unique-constraint refusal: processes logging the same new
    dataset at once (a pipeline's workers) race between MLflow's lookup and its insert, and the
    loser's transaction is rolled back whole, so a retry finds the dataset and only links it."""
    for attempt in range(1, _INPUT_ATTEMPTS + 1):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as err:
            if attempt == _INPUT_ATTEMPTS or not any(s in str(err).lower() for s in _UNIQUE_VIOLATIONS):
                raise
            time.sleep(0.05 * attempt)


def describe_run(text: str) -> None:
    """The active run's description (the UI's Description box)."""
    mlflow.set_tag(names.NOTE_TAG, text)


def describe_version(registered_name: str, version: str, card: str) -> None:
    """The version's description (its model card); the registered model gets its own description
    the first time one of its versions is described."""
    client = mlflow.MlflowClient()
    if not client.get_registered_model(registered_name).description and registered_name in MODEL_DESCRIPTIONS:
        client.update_registered_model(registered_name, description=MODEL_DESCRIPTIONS[registered_name])
    client.update_model_version(registered_name, str(version), description=card)


def synthetic_warning(synthetic: bool) -> str:
    return ("**Trained on synthetic phantoms** (the built-in generator), not on chest X-rays: it says nothing "
            "about real images, and its scores are the phantoms'.\n\n") if synthetic else ""
