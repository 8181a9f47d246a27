"""The registered end-to-end model (``cxr-ensemble``): raw chest X-rays in, class probabilities out.

It repeats exactly what training saw: the top-K U-Nets at the segmentation size, the AND of their
masks, the lung crop, resize and contrast stretch of the crop stage, the codec round trip of the
cropped files (JPEG for Kermany data), the classifier-size resize; then the members and the
ensemble's combiner. Every Keras model travels inside the pyfunc's artifacts, so it serves without
the registry it came from.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import model_input, resize_gray
from multiloss.data.imageio import as_if_written, list_images, read_gray, to_gray8
from multiloss.ensembles.combiners import majority_probs, mean_probs, weighted_mean
from multiloss.segmentation.crop import crop_lungs
from multiloss.segmentation.masks import and_ensemble, predict_probabilities

COMBINERS = ("majority", "mean", "weighted", "stacking")
CHUNK = 32          # images preprocessed and predicted at a time


def expand_inputs(model_input) -> tuple[list[str], list[np.ndarray], list[str]]:
    """(names, 8-bit grayscale originals, codecs) of the images a request names.

    A request is a DataFrame with a ``path`` column (files or folders of images) or an ``image``
    column (arrays), a list of paths, or arrays: one image (H, W) or (H, W, 3|4 RGB), or a batch
    (N, H, W) or (N, H, W, 3|4). The codec of a file is its own suffix (the crop stage writes each
    crop with its source's suffix); an array's is None (the model's default)."""
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            return expand_inputs(model_input["path"].tolist())
        if "image" in model_input.columns:
            return _arrays([np.asarray(v) for v in model_input["image"]])
        raise ValueError(f"input needs a 'path' or an 'image' column, got columns {list(model_input.columns)}")
    if isinstance(model_input, np.ndarray):
        single = model_input.ndim == 2 or (model_input.ndim == 3 and model_input.shape[-1] in (3, 4))
        return _arrays([model_input] if single else list(model_input))
    names, images, codecs = [], [], []
    for entry in model_input:
        path = Path(str(entry))
        for file in (list_images(path) if path.is_dir() else [path]):
            names.append(str(file))
            images.append(read_gray(file))
            codecs.append(file.suffix.lower())
    if not names:
        raise ValueError("no images given")
    return names, images, codecs


def _arrays(arrays: list[np.ndarray]) -> tuple[list[str], list[np.ndarray], list[None]]:
    """Arrays made what the file reader would give for the same images.

    RGB(A) is reordered to OpenCV's BGR(A), floats in [0, 1] or [0, 255] become 8 bits, 16-bit is
    scaled by its bit depth, then comes the same gray conversion."""
    if not arrays:
        raise ValueError("no images given")
    images = []
    for i, image in enumerate(arrays):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = image[..., [2, 1, 0, 3][: image.shape[-1]]]
        if image.dtype.kind == "f":
            top = 1.0 if image.max() <= 1.0 else 255.0
            image = np.clip(np.rint(image.astype(np.float64) / top * 255), 0, 255).astype(np.uint8)
        images.append(to_gray8(image, f"image {i}"))
    return [str(i) for i in range(len(images))], images, [None] * len(images)


def pipeline_config(crop_summary: dict, cls_size: int, cropped_paths) -> dict:
    """What the pyfunc needs to repeat the crop stage on raw images.

    The crop's sizes and margin (from ``crop.json``), the classifiers' size, and the codec for
    array inputs (the cropped files' most common suffix; a file input uses its own)."""
    suffixes = Counter(Path(p).suffix.lower() for p in cropped_paths)
    return {"seg_size": int(crop_summary["seg_size"]), "crop_size": int(crop_summary["img_size"]),
            "margin": float(crop_summary["margin"]), "cls_size": int(cls_size),
            "codec": suffixes.most_common(1)[0][0] if suffixes else "", "classes": list(CLASSES)}


def crop_inputs(originals: list[np.ndarray], segmenters: list, config: dict, codecs: list | None = None,
                batch_size: int = 8) -> np.ndarray:
    """Classifier inputs (N, S, S, 3) for raw images, the crop stage's way."""
    seg = model_input(np.stack([resize_gray(o, config["seg_size"]) for o in originals]))
    masks = and_ensemble([predict_probabilities(m, seg, batch_size) for m in segmenters])
    crops = []
    for original, mask, codec in zip(originals, masks, codecs or [None] * len(originals)):
        pixels = crop_lungs(original, mask, config["crop_size"], config["margin"]).image
        codec = codec or config.get("codec")
        if codec:
            pixels = as_if_written(pixels, codec)
        crops.append(resize_gray(pixels, config["cls_size"]))
    return model_input(np.stack(crops))


def combine(kind: str, part_probs: np.ndarray, weights=None, stacker=None) -> np.ndarray:
    """(N, C) from (K, N, C) member probabilities."""
    if kind == "majority":
        return majority_probs(part_probs)
    if kind == "mean":
        return mean_probs(part_probs)
    if kind == "weighted":
        return weighted_mean(part_probs, weights)
    if kind == "stacking":
        from multiloss.models.ensemble_heads import stacking_predict
        return stacking_predict(stacker, part_probs)
    raise ValueError(f"unknown combiner {kind!r}; expected one of {COMBINERS}")


class EnsemblePipeline(mlflow.pyfunc.PythonModel):
    """The served ensemble: segment → crop → members → combine.

    ``config``: seg_size, crop_size, cls_size, margin, codec, combiner, weights; artifacts:
    ``segmenter<i>``, ``part<i>`` (classifiers or model-level ensembles, each image →
    probabilities) and optionally ``stacker``."""

    def load_context(self, context):
        import multiloss  # noqa: F401  (tf-keras before TensorFlow)

        artifacts = context.artifacts
        self.config = json.loads(Path(artifacts["config"]).read_text())
        load = lambda key: mlflow.tensorflow.load_model(artifacts[key])  # noqa: E731
        self.segmenters = [load(f"segmenter{i}") for i in range(self.config["n_segmenters"])]
        self.parts = [load(f"part{i}") for i in range(self.config["n_parts"])]
        self.stacker = load("stacker") if "stacker" in artifacts else None

    def predict_arrays(self, originals: list[np.ndarray], codecs: list | None = None) -> np.ndarray:
        """Class probabilities (N, C), in chunks so a folder of full-size X-rays fits in memory."""
        codecs = codecs or [None] * len(originals)
        chunks = []
        for start in range(0, len(originals), CHUNK):
            inputs = crop_inputs(originals[start:start + CHUNK], self.segmenters, self.config,
                                 codecs[start:start + CHUNK])
            part_probs = np.stack([p.predict(inputs, batch_size=16, verbose=0) for p in self.parts])
            chunks.append(combine(self.config["combiner"], part_probs, self.config.get("weights"), self.stacker))
        probs = np.concatenate(chunks)
        return probs / probs.sum(1, keepdims=True)

    def predict(self, context, model_input, params=None):
        names, originals, codecs = expand_inputs(model_input)
        probs = self.predict_arrays(originals, codecs)
        frame = pd.DataFrame(probs, columns=PROBABILITY_COLUMNS)
        frame.insert(0, "path", names)
        frame["predicted"] = [CLASSES[i] for i in probs.argmax(1)]
        return frame


def log_pipeline(*, segmenters: list, parts: list, combiner: str, config: dict, weights=None, stacker=None,
                 name: str = "model", registered_model_name: str | None = None, pip_requirements=None):
    """Save every model into a temporary folder, log the pyfunc into the active run (and register it)."""
    from multiloss.tracking.registry import inference_copy

    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
    if combiner == "stacking" and stacker is None:
        raise ValueError("combiner 'stacking' needs the fitted stacker")
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        models = {f"{prefix}{i}": model for prefix, group in (("segmenter", segmenters), ("part", parts))
                  for i, model in enumerate(group)}
        if stacker is not None:
            models["stacker"] = stacker
        for key, model in models.items():
            # MLflow's own Keras format: the one our registered models are proven to reload from
            artifacts[key] = os.path.join(tmp, key)
            mlflow.tensorflow.save_model(inference_copy(model), artifacts[key], pip_requirements=pip_requirements)
        artifacts["config"] = os.path.join(tmp, "config.json")
        full_config = {**config, "combiner": combiner, "n_segmenters": len(segmenters), "n_parts": len(parts),
                       "weights": None if weights is None else [float(w) for w in weights]}
        Path(artifacts["config"]).write_text(json.dumps(full_config, indent=2))
        package = Path(__file__).resolve().parent
        return mlflow.pyfunc.log_model(name=name, python_model=EnsemblePipeline(), artifacts=artifacts,
                                       code_paths=[str(package)], registered_model_name=registered_model_name,
                                       pip_requirements=pip_requirements, await_registration_for=300)
