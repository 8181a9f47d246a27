"""The registered end-to-end model (``cxr-ensemble``): raw chest X-rays in, class probabilities out.

It repeats exactly what training saw: the top-K U-Nets at the segmentation size, the AND of their
masks, the lung crop, resize and contrast stretch of the crop stage, the codec round trip of the
cropped files (JPEG for Kermany data), the classifier-size resize; then the members and the
ensemble's combiner. Every Keras model travels inside the pyfunc's artifacts, so it serves without
the registry it came from.

Served, it takes the images themselves (an ``image_base64`` column of base64 JPEG/PNG bytes). A
``path`` column is read only under the folders named in ``MULTILOSS_SERVE_ROOTS`` (none by
default), so a client can neither read the server's disk nor learn what is on it. A bad input
answers HTTP 400 with a message naming the row and the reason; ``params={"on_error": "skip"}``
answers the good rows and gives each bad one its reason in an ``error`` column.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import model_input, resize_gray
from multiloss.data.imageio import (
    DataError,
    _check_complete,
    as_if_written,
    list_images,
    read_gray,
    to_gray8,
)
from multiloss.ensembles.combiners import majority_probs, mean_probs, weighted_mean
from multiloss.segmentation.crop import crop_lungs
from multiloss.segmentation.masks import and_ensemble, predict_probabilities

COMBINERS = ("majority", "mean", "weighted", "stacking")
CHUNK = 32          # images preprocessed and predicted at a time

BYTES_COLUMN = "image_base64"   # base64-encoded JPEG or PNG file bytes: the documented input
PATH_COLUMN = "path"            # files or folders, read only under ROOTS_ENV when served
ARRAY_COLUMN = "image"          # pixel arrays (in-process callers)
INPUT_COLUMNS = (BYTES_COLUMN, PATH_COLUMN, ARRAY_COLUMN)
ROOTS_ENV = "MULTILOSS_SERVE_ROOTS"   # folders (os.pathsep-separated) a served model may read paths under
ON_ERROR_PARAM, ON_ERROR_CHOICES = "on_error", ("raise", "skip")
ERROR_COLUMN = "error"
SYNTHETIC_COLUMN = "synthetic"           # true: trained on the built-in phantoms, not chest X-rays
SHOWN_ERRORS = 5    # bad images named in one 400 answer

# What a base64 image may be: the formats a REST client sends, not every decoder OpenCV carries.
_MAGIC = ((b"\xff\xd8\xff", ".jpeg"), (b"\x89PNG\r\n\x1a\n", ".png"))

_log = logging.getLogger(__name__)


@dataclass
class Item:
    """One image a request names: its request row, the file it came from (None for an image sent
    in the request) and either its pixels and codec or why it cannot be used."""

    row: int
    path: str | None
    image: np.ndarray | None = None
    codec: str | None = None
    error: str | None = None
    file: str | None = None   # a file's real path: decoded when its chunk is predicted, not before

    def pixels(self) -> np.ndarray:
        """Its 8-bit grayscale pixels; a file is read now (DataError or OSError if it cannot be), so
        that a folder of full-resolution X-rays is held one chunk at a time, never whole."""
        return self.image if self.file is None else read_gray(self.file)


def path_roots() -> tuple[str, ...] | None:
    """The real folders a ``path`` input may be read under; None: anywhere.

    ``MULTILOSS_SERVE_ROOTS`` when set (empty: none); else none at all when MLflow's scoring
    server runs this model (it marks its process as serving), anywhere for an in-process caller
    and for ``mlflow models predict``, whose input file is the operator's own."""
    raw = os.environ.get(ROOTS_ENV)
    if raw is not None:
        return tuple(os.path.realpath(r) for r in raw.split(os.pathsep) if r.strip())
    if _MLFLOW_IS_IN_SERVING_ENVIRONMENT.get() and not _in_batch_predict():
        return ()
    return None


def _in_batch_predict() -> bool:
    """Whether MLflow's batch predictor (``mlflow models predict``, ``mlflow.models.predict``)
    called us: it marks the process as serving too, but reads a file the operator wrote. Looked up
    on the call stack; should MLflow rename it, paths are refused there too (never the reverse)."""
    from mlflow.pyfunc import scoring_server

    target = getattr(getattr(scoring_server, "_predict", None), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is target:
            return True
        frame = frame.f_back
    return False


def _under(path: str, roots: tuple[str, ...]) -> str | None:
    """The real path of ``path`` (symlinks and ``..`` resolved) when it lies under one of
    ``roots``, else None. Decided on the string alone, so it says nothing about existence."""
    try:
        real = os.path.realpath(path)
    except (ValueError, OSError):       # an embedded NUL, a symlink loop
        return None
    for root in roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return real
    return None


def _refused(row: int, shown: str) -> str:
    return f"row {row}: path {shown!r} is not under a folder this server may read ({ROOTS_ENV})"


def _empty(value) -> bool:
    """A cell that gives no image: null, NaN (a column missing in some rows) or blank text."""
    return (value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
            or (isinstance(value, str) and not value.strip()))


def decode_base64_image(text, source: str) -> tuple[np.ndarray, str]:
    """(8-bit grayscale pixels, codec) of a base64-encoded JPEG or PNG; errors name ``source``.

    Line breaks are allowed (``base64`` wraps at 76 columns); anything else that is not base64 is
    refused rather than skipped. The codec is the format's suffix, as a file's would be."""
    if isinstance(text, str):
        text = text.encode("ascii", errors="replace")
    if not isinstance(text, (bytes, bytearray)):
        raise DataError(f"{source}: expected base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(b"".join(bytes(text).split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(f"{source}: not valid base64 ({err})") from None
    if not data:
        raise DataError(f"{source}: no bytes")
    codec = next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), None)
    if codec is None:
        raise DataError(f"{source}: not a JPEG or PNG file (the decoded bytes start with neither signature)")
    _check_complete(source, data)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise DataError(f"{source}: not a readable image (decoder failed)")
    return to_gray8(pixels, source), codec


def _path_items(row: int, entry, roots: tuple[str, ...] | None) -> list[Item]:
    """The images of one ``path`` entry (a file, or a folder's image files), each checked against
    ``roots``; a problem becomes the item's error, not an exception."""
    shown = str(entry)
    if roots is not None:
        real = _under(shown, roots)
        if real is None:
            return [Item(row, shown, error=_refused(row, shown))]
    else:
        real = shown
    try:
        if not Path(real).is_dir():
            return [_read_file(row, shown, real)]
        files = list_images(Path(real))
    except (DataError, OSError, ValueError) as err:
        return [Item(row, shown, error=f"row {row}: {err}")]
    items = []
    for file in files:
        name = str(Path(shown) / file.name)
        if roots is not None and _under(str(file), roots) is None:   # a symlink out of the folder
            items.append(Item(row, name, error=_refused(row, name)))
        else:
            items.append(_read_file(row, name, str(file)))
    return items


def _read_file(row: int, name: str, real: str) -> Item:
    return Item(row, name, codec=Path(name).suffix.lower(), file=real)


def _load(items: list[Item]) -> list[np.ndarray | None]:
    """The pixels of ``items``; an image that cannot be read gets its reason and None."""
    pixels = []
    for item in items:
        try:
            pixels.append(item.pixels())
        except (DataError, OSError, ValueError) as err:
            item.error = f"row {item.row}: {err}"
            pixels.append(None)
    return pixels


def _array_item(row: int, value) -> Item:
    try:
        return Item(row, None, _array_to_gray(np.asarray(value), f"row {row} ({ARRAY_COLUMN})"))
    except (DataError, ValueError, TypeError) as err:
        return Item(row, None, error=str(err) if str(err).startswith("row ") else f"row {row}: {err}")


def request_items(model_input, roots: tuple[str, ...] | None = None) -> list[Item]:
    """Every image a request names, in request order, bad ones carrying their reason.

    A request is a DataFrame (or a dict of columns) with an ``image_base64``, ``path`` or ``image``
    column (several may be present: each row fills exactly one), a list of paths, or arrays: one
    image (H, W) or (H, W, 3|4 RGB), or a batch (N, H, W) or (N, H, W, 3|4). ``roots``: the folders
    paths may be read under (None: anywhere). A request no row of which can be read (no known
    column, no rows) raises DataError."""
    if isinstance(model_input, dict):
        try:
            model_input = pd.DataFrame(model_input)
        except ValueError as err:
            raise DataError(f"the request's columns cannot form a table ({err})") from None
    if isinstance(model_input, pd.DataFrame):
        return _frame_items(model_input, roots)
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "USO" and model_input.ndim <= 1:     # e.g. JSON {"inputs": [...]}
            raise DataError(f"the request is a bare list ({model_input.size} values), not a table; send an "
                            f"{BYTES_COLUMN!r} column (base64 JPEG/PNG bytes) or a {PATH_COLUMN!r} column")
        single = model_input.ndim == 2 or (model_input.ndim == 3 and model_input.shape[-1] in (3, 4))
        arrays = [model_input] if single else list(model_input)
        if not arrays:
            raise DataError("no images given")
        return [_array_item(i, a) for i, a in enumerate(arrays)]
    if isinstance(model_input, (str, os.PathLike)):
        model_input = [model_input]
    entries = list(model_input)
    if not entries:
        raise DataError("no images given")
    return [item for i, entry in enumerate(entries) for item in _path_items(i, entry, roots)]


def _frame_items(frame: pd.DataFrame, roots) -> list[Item]:
    columns = [c for c in INPUT_COLUMNS if c in frame.columns]
    if not columns:
        raise DataError(f"the request needs an {BYTES_COLUMN!r} column (base64-encoded JPEG or PNG bytes) or a "
                        f"{PATH_COLUMN!r} column (files or folders under {ROOTS_ENV}); it has columns "
                        f"{[str(c) for c in frame.columns]}")
    if frame.empty:
        raise DataError(f"no images given: the request's {columns} column has no rows")
    items = []
    for row, values in enumerate(frame[columns].itertuples(index=False, name=None)):
        given = [(c, v) for c, v in zip(columns, values) if not _empty(v)]
        if not given:
            items.append(Item(row, None, error=f"row {row}: no image ({' and '.join(columns)} empty)"))
        elif len(given) > 1:
            items.append(Item(row, None, error=f"row {row}: fills {' and '.join(c for c, _ in given)}; "
                                               "give one image per row"))
        elif given[0][0] == BYTES_COLUMN:
            source = f"row {row} ({BYTES_COLUMN})"
            try:
                image, codec = decode_base64_image(given[0][1], source)
                items.append(Item(row, None, image, codec))
            except DataError as err:
                items.append(Item(row, None, error=str(err)))
        elif given[0][0] == PATH_COLUMN:
            items.extend(_path_items(row, given[0][1], roots))
        else:
            items.append(_array_item(row, given[0][1]))
    return items


def expand_inputs(model_input, roots: tuple[str, ...] | None = None) -> tuple[list[str], list[np.ndarray], list]:
    """(names, 8-bit grayscale originals, codecs) of the images a request names, for library
    callers: the first bad image raises DataError naming it.

    See :func:`request_items` for the request forms. A file's name is its path, an image sent in
    the request its row number. The codec of a file is its own suffix (the crop stage writes each
    crop with its source's suffix), of base64 bytes their format's; an array's is None (the model's
    default)."""
    items = request_items(model_input, roots)
    pixels = _load([item for item in items if not item.error])
    bad = next((item for item in items if item.error), None)
    if bad is not None:
        raise DataError(bad.error)
    return ([item.path if item.path is not None else str(item.row) for item in items],
            pixels, [item.codec for item in items])


def _array_to_gray(image: np.ndarray, source: str) -> np.ndarray:
    """An array made what the file reader would give for the same image.

    RGB(A) is reordered to OpenCV's BGR(A), floats in [0, 1] or [0, 255] become 8 bits, 16-bit is
    scaled by its bit depth, then comes the same gray conversion."""
    if image.dtype.kind not in "uif" or image.size == 0:
        raise DataError(f"{source}: expected a non-empty array of pixel numbers, got dtype {image.dtype}, "
                        f"shape {image.shape}")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., [2, 1, 0, 3][: image.shape[-1]]]
    if image.dtype.kind == "f":
        top = 1.0 if image.max() <= 1.0 else 255.0
        image = np.clip(np.rint(image.astype(np.float64) / top * 255), 0, 255).astype(np.uint8)
    elif image.dtype.kind == "i" or image.dtype.itemsize > 2:
        image = np.clip(image, 0, 65535).astype(np.uint16 if image.max() > 255 else np.uint8)
    return to_gray8(image, source)


def pipeline_config(crop_summary: dict, cls_size: int, cropped_paths, synthetic: bool = False) -> dict:
    """What the pyfunc needs to repeat the crop stage on raw images.

    The crop's sizes and margin (from ``crop.json``), the classifiers' size, the codec for
    array inputs (the cropped files' most common suffix; a file input uses its own), and whether
    its models were trained on synthetic phantoms (every answer then says so)."""
    suffixes = Counter(Path(p).suffix.lower() for p in cropped_paths)
    return {"seg_size": int(crop_summary["seg_size"]), "crop_size": int(crop_summary["img_size"]),
            "margin": float(crop_summary["margin"]), "cls_size": int(cls_size),
            "codec": suffixes.most_common(1)[0][0] if suffixes else "", "classes": list(CLASSES),
            "synthetic": bool(synthetic)}


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


def pipeline_signature() -> ModelSignature:
    """What the served model answers and the ``on_error`` parameter (the scoring server passes a
    request's params only to a model whose signature names them).

    No input schema: MLflow would then drop every column it does not list, before our check could
    name a wrong one, and turn in-process lists of paths and array batches into empty tables. The
    accepted columns are :data:`INPUT_COLUMNS`, checked by :func:`request_items`."""
    outputs = Schema([ColSpec("string", "path", required=False), ColSpec("long", "row"),
                      *[ColSpec("double", c) for c in PROBABILITY_COLUMNS],
                      ColSpec("string", "predicted", required=False), ColSpec("boolean", SYNTHETIC_COLUMN),
                      ColSpec("string", ERROR_COLUMN, required=False)])
    return ModelSignature(inputs=None, outputs=outputs,
                          params=ParamSchema([ParamSpec(ON_ERROR_PARAM, "string", ON_ERROR_CHOICES[0])]))


def bad_request(message: str) -> MlflowException:
    """The error the scoring server answers with HTTP 400 and ``message``, and no traceback (it
    adds one only to exceptions that are not MlflowExceptions)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _on_error(params) -> str:
    value = (params or {}).get(ON_ERROR_PARAM, ON_ERROR_CHOICES[0])
    if value not in ON_ERROR_CHOICES:
        raise bad_request(f"params.{ON_ERROR_PARAM} must be one of {list(ON_ERROR_CHOICES)}, got {value!r}")
    return value


def _bad_rows_message(bad: list[Item], total: int) -> str:
    shown = "; ".join(item.error for item in bad[:SHOWN_ERRORS])
    if total == 1:
        return shown
    more = f"; and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
    return (f"{shown}{more} ({len(bad)} of {total} images cannot be used; "
            f"params {{\"{ON_ERROR_PARAM}\": \"skip\"}} answers the others)")


class EnsemblePipeline(mlflow.pyfunc.PythonModel):
    """The served ensemble: segment → crop → members → combine.

    ``config``: seg_size, crop_size, cls_size, margin, codec, combiner, weights; artifacts:
    ``segmenter<i>``, ``part<i>`` (classifiers or model-level ensembles, each image →
    probabilities) and optionally ``stacker``."""

    def load_context(self, context):
        import multiloss  # noqa: F401  (tf-keras before TensorFlow)
        from multiloss.tracking.keras_files import weights_read_at_once

        artifacts = context.artifacts
        self.config = json.loads(Path(artifacts["config"]).read_text())
        load = lambda key: mlflow.tensorflow.load_model(artifacts[key])  # noqa: E731
        with weights_read_at_once():
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
        """One answer row per image: ``path`` (None for an image sent in the request), ``row`` (the
        request row it came from), the class probabilities and ``predicted``.

        A bad request, or with ``on_error="raise"`` (the default) any bad image, raises the
        MlflowException the scoring server answers with 400 and our message; with ``"skip"`` a bad
        image's row has NaN probabilities and its reason in ``error``. Any other failure is the
        model's, not the client's: logged here, answered 500 without the traceback."""
        on_error = _on_error(params)
        try:
            items = request_items(model_input, path_roots())
        except DataError as err:
            raise bad_request(str(err)) from None
        bad = [item for item in items if item.error]
        if bad and on_error == "raise":
            raise bad_request(_bad_rows_message(bad, len(items)))
        good = [k for k, item in enumerate(items) if not item.error]
        probs = np.full((len(items), len(CLASSES)), np.nan)
        for start in range(0, len(good), CHUNK):     # files are read a chunk at a time
            chunk = good[start:start + CHUNK]
            pixels = _load([items[k] for k in chunk])
            unreadable = [items[k] for k in chunk if items[k].error]
            if unreadable and on_error == "raise":
                raise bad_request(_bad_rows_message(unreadable, len(items)))
            readable = [(k, p) for k, p in zip(chunk, pixels) if p is not None]
            if not readable:
                continue
            try:
                probs[[k for k, _ in readable]] = self.predict_arrays([p for _, p in readable],
                                                                      [items[k].codec for k, _ in readable])
            except Exception as err:
                _log.exception("cxr-ensemble failed on a request of %d images", len(good))
                raise MlflowException(f"the model failed while predicting ({type(err).__name__}); the server's "
                                      "log has the details", error_code=INTERNAL_ERROR) from err
        text = lambda values: pd.Series(values, dtype=object)  # noqa: E731  (None stays None: JSON null)
        frame = pd.DataFrame(probs, columns=PROBABILITY_COLUMNS)
        frame.insert(0, "row", [item.row for item in items])
        frame.insert(0, "path", text([item.path for item in items]))
        frame["predicted"] = text([None if item.error else CLASSES[int(np.argmax(p))] for item, p in zip(items, probs)])
        # a model trained on phantoms answers every request, and says so in every row
        frame[SYNTHETIC_COLUMN] = bool(self.config.get("synthetic", False))
        if on_error == "skip":
            frame[ERROR_COLUMN] = text([item.error for item in items])
        return frame


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def package_wheel(out_dir: Path, requires: list[str] | None = None) -> Path:
    """A wheel of the ``multiloss`` package this process runs (its .py files, nothing else), so the
    served model installs our code where it is served (``--env-manager uv``/``virtualenv``) instead of
    needing a checkout. Written directly (a wheel is a zip with a dist-info folder): no build backend,
    no build folder in the checkout, ~0.1 s. Written at ``out_dir/multiloss-wheel-<digest>/``: the
    folder names the code's digest, so MLflow's environment cache (keyed by the requirement lines)
    builds a new environment when the code changes."""
    package = Path(__file__).resolve().parents[1]
    files = sorted(f for f in package.rglob("*.py") if "__pycache__" not in f.parts)
    contents = {f"multiloss/{f.relative_to(package).as_posix()}": f.read_bytes() for f in files}
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in contents.items())).hexdigest()
    try:
        version = importlib.metadata.version("multiloss")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    info = f"multiloss-{version}.dist-info"
    metadata = "".join([f"Metadata-Version: 2.1\nName: multiloss\nVersion: {version}\n",
                        "Summary: the chest X-ray ensemble's code, as served\nRequires-Python: >=3.11\n",
                        *(f"Requires-Dist: {r}\n" for r in (requires or []))])
    contents[f"{info}/METADATA"] = metadata.encode()
    contents[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: multiloss\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in contents.items())
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder = Path(out_dir) / f"multiloss-wheel-{digest[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"multiloss-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in contents.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return wheel


def log_pipeline(*, segmenters: list, parts: list, combiner: str, config: dict, weights=None, stacker=None,
                 name: str = "model", pip_requirements=None):
    """Save every model into a temporary folder and log the pyfunc into the active run, unregistered
    (:func:`multiloss.tracking.registry.register_with_tags` registers it, tags and all)."""
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
        # Our code travels as a wheel among the artifacts, installed by a requirement line relative to
        # the model folder (MLflow installs requirements from there), so `mlflow models serve
        # --env-manager uv` builds an environment that unpickles EnsemblePipeline. Not code_paths of
        # the whole package: MLflow puts code paths first on sys.path of every process that loads the
        # model, and processes it spawns then import that copy, which has no MLproject.
        wheel = package_wheel(Path(tmp), requires=pip_requirements)
        artifacts["code_wheel"] = str(wheel.parent)
        requirement = f"artifacts/{wheel.parent.name}/{wheel.name}"
        requirements = ({"extra_pip_requirements": [requirement]} if pip_requirements is None
                        else {"pip_requirements": [*pip_requirements, requirement]})
        package = Path(__file__).resolve().parent
        # no input example: MLflow would load every model and predict it while logging
        return mlflow.pyfunc.log_model(name=name, python_model=EnsemblePipeline(), artifacts=artifacts,
                                       code_paths=[str(package)], signature=pipeline_signature(),
                                       **requirements)
