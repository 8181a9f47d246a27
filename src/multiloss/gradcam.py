"""Grad-CAM: which parts of an image a classifier's class score comes from.

The score differentiated is the class's pre-softmax logit, not its probability. The probability's
gradient is ``p_c (w_c − Σ_j p_j w_j)``: it fades to nothing as ``p_c`` nears 1 (a confident
prediction gets an empty map) and mixes in the evidence for the other classes; the logit's gradient
is the class's own evidence alone (Selvaraju et al. use the score before the softmax for this
reason). When the model ends in a softmax (a Dense with softmax activation, or a Softmax /
Activation layer) the logit is rebuilt from that layer's input; any other output is used as it is.

The chosen layer's output is caught as the model runs eagerly rather than through a second
functional "grad model": a layer inside a nested sub-model (a member of a model-level ensemble,
addressed ``member/layer``) has no tensor in the outer model's graph, so no functional model from
the outer inputs can reach it, while catching it works the same for top-level and nested layers.

The last sections serve the ``gradcam`` stage: which images to explain, which model a URI names
(and the run and image size it was trained with), and the figures and table of one run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import image_dataset
from multiloss.data.imageio import DataError, is_image_file, list_images
from multiloss.data.readers import find_kermany_root, read_kermany
from multiloss.plots import save_figure
from multiloss.tracking import registry

COLORMAP = "jet"
NESTED = "/"          # "member/cls_conv": a layer inside the nested model "member"
BATCH_SIZE = 16       # images per forward and backward pass


def default_layer(model: tf_keras.Model) -> str:
    """The Conv2D nearest the output (the deepest), searching nested models met on the way.

    Functional models list their layers from the inputs to the output, so the search runs backwards:
    a classifier gives ``cls_conv``, a model-level ensemble its 1×1 convolution over the members.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, tf_keras.Model):
            inner = _default_layer_or_none(layer)
            if inner is not None:
                return f"{layer.name}{NESTED}{inner}"
        elif isinstance(layer, tf_keras.layers.Conv2D):
            return layer.name
    raise ValueError(f"model {model.name!r} has no Conv2D layer for Grad-CAM to look at")


def _default_layer_or_none(model: tf_keras.Model) -> str | None:
    try:
        return default_layer(model)
    except ValueError:
        return None


def conv_layer_names(model: tf_keras.Model) -> list[str]:
    """Every Conv2D, nested ones as ``member/layer``: the names :func:`find_layer` accepts."""
    names = []
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            names += [f"{layer.name}{NESTED}{inner}" for inner in conv_layer_names(layer)]
        elif isinstance(layer, tf_keras.layers.Conv2D):
            names.append(layer.name)
    return names


def find_layer(model: tf_keras.Model, name: str) -> tf_keras.layers.Layer:
    """The layer called ``name``; ``member/layer`` looks inside the nested model ``member``."""
    found = model
    for part in name.split(NESTED):
        if not isinstance(found, tf_keras.Model) or part not in {layer.name for layer in found.layers}:
            convs = ", ".join(conv_layer_names(model)[-8:]) or "none"
            raise ValueError(f"layer {name!r}: model {model.name!r} has no layer {part!r} there "
                             f"(its deepest convolutions: {convs})")
        found = found.get_layer(part)
    return found


def output_layer(model: tf_keras.Model) -> tf_keras.layers.Layer:
    """The layer producing the model's (single) output, looking through nested models."""
    if len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.outputs)} outputs; Grad-CAM needs one class-score output")
    layer = model.get_layer(model.output_names[0])
    while isinstance(layer, tf_keras.Model):
        layer = layer.get_layer(layer.output_names[0])
    return layer


def _is_softmax(activation) -> bool:
    return activation is not None and tf_keras.activations.serialize(activation) == "softmax"


def _logit_source(head: tf_keras.layers.Layer) -> str | None:
    """How the pre-softmax logits are rebuilt: "dense", "softmax" or None.

    From a softmax Dense's input, a softmax layer's input, or not at all (the output already is
    the score)."""
    if isinstance(head, tf_keras.layers.Dense) and _is_softmax(head.activation):
        return "dense"
    if isinstance(head, tf_keras.layers.Softmax):
        return "softmax"
    if isinstance(head, tf_keras.layers.Activation) and _is_softmax(head.activation):
        return "softmax"
    return None


@contextlib.contextmanager
def _caught(layer: tf_keras.layers.Layer, keep: str, tape: tf.GradientTape | None = None):
    """While the block runs, every call of ``layer`` appends its input or (watched) output to the yielded list.

    ``layer.call`` is restored afterwards, so the model is left as it was."""
    seen: list[tf.Tensor] = []
    own = vars(layer).get("call")
    original = layer.call

    def call(inputs, *args, **kwargs):
        outputs = original(inputs, *args, **kwargs)
        if keep == "input":
            seen.append(inputs)
        else:
            tape.watch(outputs)
            seen.append(outputs)
        return outputs

    layer.call = call
    try:
        yield seen
    finally:
        if own is None:
            del layer.call
        else:
            layer.call = own


def _class_indices(class_index, n: int, n_classes: int) -> np.ndarray | None:
    if class_index is None:
        return None
    try:
        indices = np.broadcast_to(np.asarray(class_index), (n,)).astype(int)
    except ValueError:
        raise ValueError(f"class_index must be one class or one per image ({n}), "
                         f"got shape {np.shape(class_index)}") from None
    if np.any(indices < 0) or np.any(indices >= n_classes):
        raise ValueError(f"class_index must lie in [0, {n_classes - 1}], got {sorted(set(indices.tolist()))}")
    return indices


def gradcam(model: tf_keras.Model, images, layer: str | None = None, class_index=None,
            batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the images' resolution.

    ``images``: the model's input batch (N, H, W, C); ``layer``: a Conv2D name (``member/layer``
    inside a nested model), default :func:`default_layer`; ``class_index``: one class or one per
    image, default each image's predicted class. Each map is ReLU(Σ_k ᾱ_k A_k), ᾱ_k the spatial mean
    of the class logit's gradient over channel k of the layer's output A, resized (bilinear) and
    divided by its maximum; a map with no positive evidence stays all zero.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch shaped (N, H, W, C), got shape {images.shape}")
    name = layer or default_layer(model)
    target = find_layer(model, name)
    head = output_layer(model)
    logits_from = _logit_source(head)
    if model.outputs[0].shape.rank != 2:
        raise ValueError(f"model {model.name!r} outputs shape {model.outputs[0].shape}; Grad-CAM needs (N, classes)")
    chosen = _class_indices(class_index, len(images), int(model.outputs[0].shape[1]))
    maps = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start:start + batch_size])
        with contextlib.ExitStack() as stack:
            # only what follows the watched layer is recorded: watching the model's variables would
            # keep every activation of the forward pass (of every member of an ensemble) until the
            # gradient, which at 512 px runs out of memory
            tape = stack.enter_context(tf.GradientTape(watch_accessed_variables=False))
            features = stack.enter_context(_caught(target, "output", tape))
            head_inputs = stack.enter_context(_caught(head, "input")) if logits_from else []
            outputs = model(batch, training=False)
            scores = _logits(head, head_inputs, logits_from) if logits_from else outputs
            picked = outputs.numpy().argmax(1) if chosen is None else chosen[start:start + len(batch)]
            score = tf.reduce_sum(tf.gather(scores, picked, axis=1, batch_dims=1))
        if len(features) != 1:
            raise ValueError(f"layer {name!r} ran {len(features)} times in one pass of the model; "
                             "Grad-CAM needs a layer that runs exactly once on the way to the output")
        activations = features[0]
        if activations.shape.rank != 4:
            raise ValueError(f"layer {name!r} outputs shape {activations.shape}; Grad-CAM needs a "
                             "feature map (N, H, W, C), e.g. a Conv2D")
        gradients = tape.gradient(score, activations)
        if gradients is None:
            raise ValueError(f"the class score does not depend on layer {name!r}")
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", activations, weights)).numpy()
        maps += [_normalised(_resized(cam, images.shape[1:3])) for cam in cams]
    return np.stack(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)


def _logits(head: tf_keras.layers.Layer, head_inputs: list[tf.Tensor], logits_from: str) -> tf.Tensor:
    if len(head_inputs) != 1:
        raise ValueError(f"output layer {head.name!r} ran {len(head_inputs)} times in one pass")
    if logits_from == "dense":
        logits = tf.matmul(head_inputs[0], head.kernel)
        return logits + head.bias if head.use_bias else logits
    return head_inputs[0]


def _resized(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear: it keeps values between their neighbours', so the map stays non-negative."""
    height, width = size
    if cam.shape == (height, width):
        return cam.astype(np.float32)
    return cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def _normalised(cam: np.ndarray) -> np.ndarray:
    top = float(cam.max())
    return cam / top if top > 0 else np.zeros_like(cam)


def _rgb_float(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from uint8 or [0, 1]-float, gray or RGB."""
    pixels = np.asarray(image)
    if pixels.dtype == np.uint8:
        pixels = pixels.astype(np.float32) / 255.0
    else:
        pixels = pixels.astype(np.float32)
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError("image: float pixels must lie in [0, 1] (pass 0–255 images as uint8)")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {pixels.shape}")


def overlay(image, heatmap, alpha: float = 0.4, threshold: float = 0.0) -> np.ndarray:
    """RGB uint8: ``image`` with the heatmap's colours blended in where the heat is at least ``threshold``.

    The colours weigh ``alpha``; elsewhere the image shows unchanged. ``threshold`` is a fraction of
    the map's [0, 1] range, compared with the float map before anything is converted to 8 bits: the
    published code thresholded the 0–255 map, whose truncation drops heat just above the threshold.
    The colours come from the float map too.
    """
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if not np.isfinite(heat).all() or heat.min() < 0 or heat.max() > 1:
        raise ValueError("heatmap values must lie in [0, 1] (as gradcam returns them)")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1] (a fraction of the heatmap's range), got {threshold}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb = _rgb_float(image)
    if rgb.shape[:2] != heat.shape:
        raise ValueError(f"heatmap is {heat.shape[1]}x{heat.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}")
    colours = matplotlib.colormaps[COLORMAP](heat)[..., :3]
    weight = np.where(heat >= threshold, alpha, 0.0)[..., None]
    blended = (1.0 - weight) * rgb + weight * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def overlay_figure(image, heatmap, path, title: str, alpha: float = 0.4, threshold: float = 0.0) -> Path:
    """The image and its Grad-CAM overlay side by side, under ``title``."""
    fig = Figure(figsize=(6.0, 3.3), layout="constrained")
    for k, pixels in enumerate((_rgb_float(image), overlay(image, heatmap, alpha, threshold))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(pixels)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def overlay_grid(images, heatmaps, titles: list[str], path, alpha: float = 0.4, threshold: float = 0.0,
                 columns: int = 4) -> Path:
    """All overlays in one figure, ``columns`` per row."""
    n = len(images)
    if n == 0:
        raise ValueError("overlay_grid: no images")
    rows = -(-n // columns)
    width = min(n, columns)
    fig = Figure(figsize=(2.8 * width, 3.0 * rows))
    for i in range(n):
        ax = fig.add_subplot(rows, width, i + 1)
        ax.imshow(overlay(images[i], heatmaps[i], alpha, threshold))
        ax.set_axis_off()
        ax.set_title(titles[i], fontsize=7)
    return save_figure(fig, path)


def images_to_explain(source: str | os.PathLike, per_class: int = 2, seed: int = 0) -> pd.DataFrame:
    """Columns path, label ('' when unknown) for the ``images`` a Grad-CAM run looks at.

    A Kermany-layout dataset gives ``per_class`` test images of each class, drawn with ``seed``; a
    folder gives all its images, a file itself.
    """
    path = Path(source)
    if path.is_file():
        if not is_image_file(path):
            raise DataError(f"images {path}: not an image file")
        return pd.DataFrame({"path": [str(path.resolve())], "label": [""]})
    if not path.exists():
        raise DataError(f"images {path}: no such file or folder")
    try:
        find_kermany_root(path)
    except DataError:   # not a Kermany layout: a plain folder of images
        files = list_images(path)
        return pd.DataFrame({"path": [str(f.resolve()) for f in files], "label": [""] * len(files)})
    test = read_kermany(path).query("split == 'test'")
    rng = np.random.default_rng(seed)
    picked = []
    for label in CLASSES:
        paths = sorted(test.loc[test["label"] == label, "path"])
        take = sorted(rng.choice(paths, size=min(per_class, len(paths)), replace=False))
        picked += [{"path": p, "label": label} for p in take]
    return pd.DataFrame(picked, columns=["path", "label"])


# ---------------------------------------------------------------------------------------------
# The model a Grad-CAM run explains, and the run that trained it.

@dataclass(frozen=True)
class ExplainedModel:
    """A model URI resolved: its version, its run, the image size it takes, its Grad-CAM run's experiment.

    The registered version and the run that logged the model are each None where the URI names none.
    """

    uri: str
    version: ModelVersion | None
    run: Run | None
    img_size: int
    experiment: str


def explained_model(uri: str, img_size: int = 0) -> ExplainedModel:
    """``uri`` resolved; ``img_size`` 0 stands for the size the model was trained at.

    The Grad-CAM run goes into the experiment of the run that logged the model, so the maps sit
    beside the model they explain; a model no run logged goes to the classification experiment.
    """
    version, run = source_run(uri)
    size = img_size or trained_img_size(uri, version, run)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id).name if run else names.CLASSIFICATION_EXPERIMENT
    return ExplainedModel(uri, version, run, size, experiment)


def source_run(uri: str) -> tuple[ModelVersion | None, Run | None]:
    """(registered version or None, the run that logged the model or None) behind a model URI.

    ``models:/name@alias`` and ``models:/name/N`` name a version, ``runs:/<id>/...`` a run and
    ``models:/m-<id>`` a logged model that knows its run; a path names neither.
    """
    client = mlflow.MlflowClient()
    number = registry.resolve_version(uri)
    if number:
        name = uri.removeprefix("models:/").partition("@")[0].partition("/")[0]
        version = client.get_model_version(name, number)
        return version, client.get_run(version.run_id) if version.run_id else None
    if uri.startswith("runs:/"):
        return None, client.get_run(uri.removeprefix("runs:/").split("/")[0])
    if uri.startswith("models:/m-"):
        logged = mlflow.get_logged_model(uri.removeprefix("models:/").split("/")[0])
        return None, client.get_run(logged.source_run_id) if logged.source_run_id else None
    return None, None


def trained_img_size(uri: str, version: ModelVersion | None, run: Run | None) -> int:
    """The image size the model was trained at: its version's ``img_size`` tag, else its run's parameter.

    A model explained at another size than it was trained at shows maps of features it never
    learned, so a size that cannot be found stops the stage (SystemExit) rather than being guessed.
    """
    for where, values, key in (("version tag", version.tags if version else {}, names.IMG_SIZE_TAG),
                               ("run parameter", run.data.params if run else {}, "img_size")):
        text = values.get(key)
        if text:
            try:
                return int(float(text))
            except ValueError:
                raise SystemExit(f"gradcam: {uri}: {where} img_size is {text!r}, not a number; "
                                 "pass the parameter img_size") from None
    raise SystemExit(f"gradcam: cannot tell the image size {uri} was trained at (no img_size tag or run "
                     "parameter); pass the parameter img_size")


# ---------------------------------------------------------------------------------------------
# One Grad-CAM run's figures and table.

def chosen_layer(model: tf_keras.Model, layer: str = "") -> str:
    """``layer``, checked to be in ``model``, or when empty the default (:func:`default_layer`).

    Checked before anything is computed or logged, so a misspelt layer fails at once and names the
    layers there are.
    """
    name = layer or default_layer(model)
    find_layer(model, name)
    return name


def prediction_title(label: str, probabilities: np.ndarray) -> str:
    """``true <label> · predicted <class> (<p>)``, or the prediction alone where the label is unknown."""
    top = int(probabilities.argmax())
    predicted = f"predicted {CLASSES[top]} ({probabilities[top]:.2f})"
    return f"true {label} · {predicted}" if label else predicted


def explain_images(model: tf_keras.Model, picked: pd.DataFrame, img_size: int, layer: str,
                   folder: str | os.PathLike, alpha: float = 0.4, threshold: float = 0.0) -> pd.DataFrame:
    """The Grad-CAM map of each picked image for the class the model predicts, written into ``folder``.

    ``picked`` is :func:`images_to_explain`'s table. Written: one figure per image under
    ``gradcam/`` (``<k>_<file stem>.png``), all of them in ``gradcam_grid.png``, and ``gradcam.csv``:
    ``picked`` with the predicted class, the class probabilities and the layer, which is returned.
    The predicted class is the one explained because the question is what a prediction rests on.
    """
    dataset = image_dataset(picked["path"], img_size=img_size, batch_size=BATCH_SIZE, cache=False)
    images = np.concatenate(list(dataset.as_numpy_iterator()))
    probabilities = model.predict(images, batch_size=BATCH_SIZE, verbose=0)
    heatmaps = gradcam(model, images, layer, class_index=probabilities.argmax(1), batch_size=BATCH_SIZE)

    table = picked.copy()
    table["predicted"] = [CLASSES[k] for k in probabilities.argmax(1)]
    table[PROBABILITY_COLUMNS] = probabilities
    table["layer"] = layer
    titles = [prediction_title(label, p) for label, p in zip(picked["label"], probabilities)]
    folder = Path(folder)
    figures = folder / "gradcam"
    figures.mkdir()
    for k, (path, heatmap) in enumerate(zip(picked["path"], heatmaps)):
        overlay_figure(images[k], heatmap, figures / f"{k:03d}_{Path(path).stem}.png", titles[k], alpha, threshold)
    overlay_grid(images, heatmaps, titles, folder / "gradcam_grid.png", alpha, threshold)
    table.to_csv(folder / "gradcam.csv", index=False)
    return table
