"""Logging, registering, tagging, promoting and loading models in the MLflow model registry.

Models are logged for inference: an uncompiled copy without optimizer state (a third of the size,
and loading needs no custom loss), with our own pins as pip requirements (inferring them loads the
model in a subprocess). Promotion uses aliases, never the deprecated stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import re
import weakref
from collections.abc import Iterator

import mlflow
import numpy as np
import tf_keras
from mlflow.entities.model_registry import ModelVersion

from multiloss.paths import CHECKOUT
from multiloss.tracking import metadata
from multiloss.tracking.keras_files import weights_read_at_once


def pip_requirements() -> list[str]:
    """Our runtime pins: the checkout's requirements.txt (also what conda.yaml installs), else the
    installed package's metadata (pyproject reads the same file)."""
    path = CHECKOUT / "requirements.txt"
    if path.is_file():
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return [line for line in lines if line]
    requires = importlib.metadata.requires("multiloss") or []
    return [r for r in requires if "extra ==" not in r]


def _without_training_terms(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    config = layer.get_config()
    if config.get("activity_regularizer") is not None:
        config["activity_regularizer"] = None     # a training-only penalty (cce_entropy)
    if "dtype" in config:
        config["dtype"] = "float32"               # a mixed training policy is not the model's (models.precision)
    return layer.__class__.from_config(config)


def _has_training_terms(model: tf_keras.Model) -> bool:
    if getattr(model, "optimizer", None) is not None:
        return True
    return any(getattr(layer, "activity_regularizer", None) is not None
               or getattr(layer, "compute_dtype", "float32") != "float32"
               or (isinstance(layer, tf_keras.Model) and _has_training_terms(layer)) for layer in model.layers)


def architecture_digest(config: dict) -> str:
    """A short digest of a Keras model config: same digest, same layers and shapes."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# model -> its inference copy, and architecture digest -> that copy: cloning an EfficientNet-B0
# costs a second or two, setting a copy's weights nothing. A process's shared classifier graph is
# one model trained again and again; a pipeline's U-Nets are a new model each, of one architecture.
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_copies_by_architecture: dict[str, tf_keras.Model] = {}


def inference_copy(model: tf_keras.Model) -> tf_keras.Model:
    """An uncompiled float32 copy with the same weights: no optimizer state, no loss or regulariser
    to deserialize, so serving it needs none of our code, and no mixed training policy (every layer
    computes in float32). A model that has none of these already (one loaded from the registry, an
    ensemble of such) is returned as it is: cloning a U-Net is not free. One copy is made per
    architecture (the model's config) and given the model's current weights at each call, so save
    what one call returns before the next."""
    if not _has_training_terms(model):
        return model
    copy = _copies.get(model)
    if copy is None:
        architecture = architecture_digest(model.get_config())
        copy = _copies_by_architecture.get(architecture)
        if copy is None:
            copy = _copies_by_architecture[architecture] = tf_keras.models.clone_model(
                model, clone_function=_without_training_terms)
        _copies[model] = copy
    copy.set_weights(model.get_weights())
    return copy


def log_keras(model: tf_keras.Model, name: str = "model", *, keep_in_memory: bool = False, signature=None):
    """Log the inference copy of ``model`` into the active run, unregistered; returns MLflow's
    ModelInfo, whose ``model_uri`` (``models:/m-<id>``) loads it back. ``keep_in_memory``: also
    within :func:`models_kept_in_memory` (not for a sweep's every trial: ~16 MB each).
    ``signature``: what serving checks requests against (:func:`metadata.image_signature`). No
    input example: MLflow would load the model back and predict it while logging."""
    logged = inference_copy(model)
    info = mlflow.tensorflow.log_model(logged, name=name, pip_requirements=pip_requirements(), signature=signature)
    if keep_in_memory and _kept is not None:
        _keep(info.model_uri, logged)
    return info


def log_and_register(model: tf_keras.Model, registered_name: str, tags: dict[str, object], *,
                     signature=None, card: str | None = None) -> ModelVersion:
    """Log ``model`` into the active run, register it as a new version with ``tags`` and give it
    ``card`` as its description (see :func:`log_keras` for ``signature``)."""
    logged = inference_copy(model)
    info = mlflow.tensorflow.log_model(logged, name="model", pip_requirements=pip_requirements(), signature=signature)
    version = str(register_with_tags(info.model_uri, registered_name, tags).version)
    if card is not None:
        metadata.describe_version(registered_name, version, card)
    registered = mlflow.MlflowClient().get_model_version(registered_name, version)
    if _kept is not None:
        _keep(registered.source, logged)
    return registered


def register_with_tags(model_uri: str, registered_name: str, tags: dict[str, object]) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``registered_name`` (created if missing) carrying
    ``tags`` from its creation, as :func:`tag_text` writes them: one registry call, not one a tag
    (each a round trip to a team server), and no version is ever seen without its tags."""
    return mlflow.register_model(model_uri, registered_name, await_registration_for=300,
                                 tags={key: tag_text(value) for key, value in tags.items()})


def tag_version(registered_name: str, version: str, tags: dict[str, object]) -> None:
    """Set ``tags`` on one version, each value as text (the registry stores strings). A float is stored
    in full (its ``repr``, which reads back to the same number): values are rounded only in display."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, tag_text(value))


def tag_text(value: object) -> str:
    """A tag's stored text: ``repr(float(value))`` for a Python or NumPy float, ``str`` otherwise."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def untag_version(registered_name: str, version: str, keys) -> None:
    """Remove the tags ``keys`` from one version (a key it does not carry is skipped)."""
    client = mlflow.MlflowClient()
    carried = client.get_model_version(registered_name, str(version)).tags
    for key in keys:
        if key in carried:
            client.delete_model_version_tag(registered_name, str(version), key)


def version_uri(registered_name: str, version: str) -> str:
    """``models:/name/N``: a reference to one version that no alias move can change."""
    return f"models:/{registered_name}/{version}"


def alias_version(registered_name: str, alias: str) -> ModelVersion:
    """The version ``name@alias`` points at now, with a message naming both when there is none."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(registered_name, alias)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"models:/{registered_name}@{alias}: registered model {registered_name!r} "
                         f"has no alias {alias!r}") from err


def versions(registered_name: str, only: list[str] | None = None) -> list[ModelVersion]:
    """All versions of a registered model (or the ``only`` ones), oldest first, aliases filled in."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name='{registered_name}'")
    numbers = sorted((int(v.version) for v in found))
    if only:
        missing = sorted(set(only) - {str(n) for n in numbers})
        if missing:
            raise ValueError(f"{registered_name} has no version {', '.join(missing)} (it has {numbers})")
        numbers = [n for n in numbers if str(n) in set(only)]
    # search results carry empty aliases; a get fills them in
    return [client.get_model_version(registered_name, str(n)) for n in numbers]


def set_alias(registered_name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before (or None)."""
    client = mlflow.MlflowClient()
    try:
        before = str(client.get_model_version_by_alias(registered_name, alias).version)
    except mlflow.exceptions.MlflowException:
        before = None
    client.set_registered_model_alias(registered_name, alias, str(version))
    return before


def delete_aliases_beyond(registered_name: str, prefix: str, keep: int) -> list[str]:
    """Remove ``{prefix}{k}`` aliases for k > keep (a smaller top-K must not leave old members)."""
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model(registered_name).aliases
    removed = [a for a in aliases if a.startswith(prefix) and a[len(prefix):].isdigit() and int(a[len(prefix):]) > keep]
    for alias in removed:
        client.delete_registered_model_alias(registered_name, alias)
    return removed


def resolve_version(uri: str) -> str:
    """The version number behind ``models:/name@alias`` or ``models:/name/N``; '' for other URIs."""
    if not uri.startswith("models:/"):
        return ""
    name, _, ref = uri.removeprefix("models:/").partition("@")
    if ref:
        return str(alias_version(name, ref).version)
    name, _, number = name.partition("/")
    return number


# Within models_kept_in_memory(): registered model source -> (class, config, weights), snapshots
# taken when the version was registered or first loaded, so what callers do to their copies never
# reaches them.
_kept: dict[str, tuple[type, dict, list[np.ndarray]]] | None = None
# Within the same block: source -> the one model handed to every ``shared`` load (callers that only
# predict with it), so it is built, and its predict function traced, once.
_shared: dict[str, tf_keras.Model] = {}
LOGGED_MODEL_URI = re.compile(r"models:/m-[0-9a-f]+")


@contextlib.contextmanager
def models_kept_in_memory() -> Iterator[None]:
    """Within this block, every registered version registered or loaded is kept in memory
    (architecture and weights), and a later load of it is rebuilt from memory. A pipeline or a
    sweep in one process loads the same U-Net for every classifier: reading an EfficientNet-B0
    U-Net back costs ~6 s, rebuilding it ~2 s. A version's model never changes, and each load is
    its own model, so callers may train or freeze what they get."""
    global _kept, _shared
    outer, outer_shared = _kept, _shared
    if outer is None:
        _kept, _shared = {}, {}
    try:
        yield
    finally:
        _kept, _shared = outer, outer_shared


def kept_models() -> dict[str, tuple[type, dict, list[np.ndarray]]]:
    """What :func:`models_kept_in_memory` holds now (empty outside it): source -> snapshot."""
    return dict(_kept or {})


def keep_models(snapshots: dict[str, tuple[type, dict, list[np.ndarray]]]) -> None:
    """Add snapshots another process took (:func:`kept_models` there); a no-op outside the block."""
    if _kept is not None:
        _kept.update(snapshots)


def _keep(source: str, model: tf_keras.Model) -> None:
    _kept[source] = (type(model), model.get_config(), [np.array(w) for w in model.get_weights()])


def _registered_source(uri: str) -> str | None:
    """The logged model behind ``models:/name/N``, ``models:/name@alias`` or ``models:/m-<id>``
    (a logged model itself); None for other URIs (``runs:/``, ``models:/name/latest``), which are
    always read from the store."""
    if LOGGED_MODEL_URI.fullmatch(uri):
        return uri
    name = uri.removeprefix("models:/").partition("@")[0].partition("/")[0]
    version = resolve_version(uri)
    if not version.isdigit():
        return None
    return mlflow.MlflowClient().get_model_version(name, version).source


def keras_config_and_weights(uri: str) -> tuple[dict, list[np.ndarray], tf_keras.Model | None]:
    """A registered or logged Keras model's config and weights, without building it when
    :func:`models_kept_in_memory` holds it (third item None); else the model is loaded (and kept)
    and handed back as the third item, so a caller that needs it builds nothing twice."""
    source = _registered_source(uri) if _kept is not None else None
    if source is not None and source in _kept:
        _, config, weights = _kept[source]
        return config, weights, None
    model = load_keras(uri)
    return model.get_config(), model.get_weights(), model


def load_keras(uri: str, *, shared: bool = False) -> tf_keras.Model:
    """A registered or logged Keras model, e.g. ``models:/cxr-lung-seg@champion`` (see
    :func:`models_kept_in_memory`). ``shared``: the caller only predicts with it (it may freeze it,
    never changes its weights), so within that block every shared load of a version gets the same
    model: rebuilding a network (~1.5-2 s for an EfficientNet-B0) and tracing its predict function
    are paid once per process, not once per step that reads it. A load that is not shared always
    gets a model of its own, built from the snapshot, whatever shared loads did to theirs."""
    source = _registered_source(uri) if _kept is not None else None
    if shared and source in _shared:
        return _shared[source]
    if source is not None and source in _kept:
        cls, config, weights = _kept[source]
        model = cls.from_config(config)
        model.set_weights(weights)
    else:
        with weights_read_at_once():
            model = mlflow.tensorflow.load_model(uri)
        if source is not None:
            _keep(source, model)
    if shared and source is not None:
        _shared[source] = model
    return model
