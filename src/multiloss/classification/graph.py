"""One traced classifier training graph per architecture, reused by every later training in the process.

Keras traces a model's train, validation and predict functions on their first call and keeps them
for the model's life, so a process that trains the same network many times (a pipeline's twelve
losses, a sweep's trials, the ablation) pays tracing and graph optimisation once if it keeps the
model: the loss's kind and numbers are variables the traced step reads (:class:`RuntimeLoss`), and
each training starts by resetting the model exactly (:meth:`ClassifierGraph.reset`): the encoder
from the U-Net's weights, the head from the training's seed, optimizer slots, step count and
learning rate. The loss a run logs and registers is still the plain named ClassificationLoss: the
runtime form is a training detail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator

import tensorflow as tf
import tf_keras
from tf_keras.src.backend import RandomGenerator
from tf_keras.src.engine.base_layer import BaseRandomLayer

from multiloss.data.classes import CLASSES
from multiloss.losses.classification import (
    BASE_TERMS,
    ClassificationLoss,
    base_loss,
    entropy,
    per_example_loss,
)
from multiloss.models import precision
from multiloss.models.classifier import HEAD_LAYERS, build_classifier
from multiloss.tracking import registry
from multiloss.training import momentum_sgd, optimizer_variables


class RuntimeLoss(tf_keras.losses.Loss):
    """Every classification loss at once: :meth:`set` writes one loss's terms into variables
    (base term index, γ, σ, smoothing divisor, λ, calibration gradient switch, β) that the traced
    step reads, so a new loss needs no new trace."""

    def __init__(self):
        super().__init__(name="classification_loss", reduction=tf_keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        variable = lambda value, dtype=tf.float32: tf.Variable(value, dtype=dtype, trainable=False)  # noqa: E731
        self.base = variable(0, tf.int32)
        self.gamma, self.sigma = variable(1.0), variable(0.0)
        self.smoothing_classes = variable(float(len(CLASSES)))
        self.lam, self.calibration_gradient, self.beta = variable(0.0), variable(1.0), variable(0.0)

    def set(self, loss: ClassificationLoss) -> None:
        terms = loss.terms()
        self.base.assign(BASE_TERMS.index(terms.base))
        self.gamma.assign(terms.gamma)
        self.sigma.assign(terms.sigma)
        self.smoothing_classes.assign(terms.smoothing_classes or float(len(CLASSES)))
        self.lam.assign(terms.lam)
        self.calibration_gradient.assign(float(terms.calibration_gradient))
        self.beta.assign(terms.beta)

    def call(self, y_true, y_pred):
        def base(targets, probs):           # only the chosen branch runs, and only it has a gradient
            branches = [lambda kind=kind: base_loss(kind, targets, probs, self.gamma) for kind in BASE_TERMS]
            return tf.switch_case(tf.convert_to_tensor(self.base), branches)
        return per_example_loss(y_true, y_pred, base=base, sigma=self.sigma, smoothing_classes=self.smoothing_classes,
                                lam=self.lam, calibration_gradient=self.calibration_gradient, beta=self.beta)


class RuntimeEntropyRegularizer(tf_keras.regularizers.Regularizer):
    """The softmax layer's ``−β·H(p)`` (cce_entropy's penalty) with β a variable: 0 for the
    losses that have none, which adds exactly zero."""

    def __init__(self):
        self.beta = tf.Variable(0.0, trainable=False)

    def __call__(self, activations):
        return -self.beta * tf.reduce_sum(entropy(activations))

    def get_config(self):
        return {"beta": float(self.beta.numpy())}


def seed_dropout_from_variables(model: tf_keras.Model) -> list[RandomGenerator]:
    """Give every random layer (the encoder's drop-connect) a generator whose state is a variable.

    Keras' default dropout ops take their seeds from the global seed when the step is traced, so a
    traced step reused by a training of another seed would repeat the first training's masks; a
    generator's state is reset per training (:meth:`ClassifierGraph.reset`). Keras exposes no public
    switch for one model, hence its RandomGenerator, made before the first trace."""
    generators = []
    for layer in model.submodules:
        if isinstance(layer, BaseRandomLayer):
            layer._random_generator = RandomGenerator(seed=0, rng_type=RandomGenerator.RNG_STATEFUL)
            layer._random_generator._maybe_init()
            generators.append(layer._random_generator)
    return generators


@dataclasses.dataclass(frozen=True)
class GraphKey:
    """What the traced step depends on beyond the variables :meth:`ClassifierGraph.reset` writes."""

    architecture: str              # the U-Net config's digest
    strategy: str
    bn_momentum: float | None      # a layer attribute the trace reads as a constant
    momentum: float                # SGD's, likewise
    metrics: tuple[str, ...]       # the extra compiled metrics' configs
    precision: str                 # the layers' dtype policy (models.precision), fixed when they are made
    jit_compile: bool              # XLA: compiled into the traced functions


@dataclasses.dataclass
class ClassifierGraph:
    """A compiled classifier whose traced functions every training with the same key reuses."""

    model: tf_keras.Model
    unet: tf_keras.Model           # shares its encoder layers with ``model``
    loss: RuntimeLoss
    regularizer: RuntimeEntropyRegularizer
    strategy: tf.distribute.Strategy
    dropout: list[RandomGenerator]
    trainings: int = 0

    @classmethod
    def build(cls, unet: tf_keras.Model, key: GraphKey, strategy: tf.distribute.Strategy,
              extra_metrics=()) -> ClassifierGraph:
        with strategy.scope():
            loss, regularizer = RuntimeLoss(), RuntimeEntropyRegularizer()
            # the encoder rebuilt under the training's policy (a registered U-Net is float32), the
            # head made under it (its softmax in float32); the global policy is restored after
            unet = precision.cast(unet, key.precision)
            with precision.policy(key.precision):
                model = build_classifier(unet, activity_regularizer=regularizer, bn_momentum=key.bn_momentum)
            dropout = seed_dropout_from_variables(model)
            sgd = momentum_sgd(0.01, key.momentum)
            model.compile(optimizer=precision.optimizer(sgd, key.precision), loss=loss,
                          metrics=["accuracy", *extra_metrics], jit_compile=key.jit_compile)
        return cls(model, unet, loss, regularizer, strategy, dropout)

    def reset(self, *, loss: ClassificationLoss, lr: float, seed: int, unet_weights=None) -> None:
        """Make the model what a fresh build would be for this training: the U-Net's weights
        (``None``: those it has, on a graph just built from it) with their BatchNorm statistics,
        a head drawn from ``seed`` (each layer's own initializer, seeded), dropout masks drawn
        from ``seed``, zero optimizer slots and step count, learning rate ``lr``, and ``loss``'s terms.
        Under mixed_float16 the optimizer's loss scale goes back to its initial value (not zero)."""
        if unet_weights is not None:
            self.unet.set_weights(unet_weights)
        for number, name in enumerate(HEAD_LAYERS):
            layer = self.model.get_layer(name)
            for attribute in ("kernel", "bias"):
                initializer = getattr(layer, f"{attribute}_initializer")
                config = {**initializer.get_config(), **({"seed": seed * len(HEAD_LAYERS) + number}
                                                         if "seed" in initializer.get_config() else {})}
                variable = getattr(layer, attribute)
                variable.assign(type(initializer).from_config(config)(variable.shape, variable.dtype))
        for number, generator in enumerate(self.dropout):
            generator._generator.reset_from_seed(seed * len(self.dropout) + number)
        optimizer = self.model.optimizer
        for variable in optimizer_variables(optimizer):
            variable.assign(tf.zeros_like(variable))
        precision.reset_loss_scale(optimizer)
        optimizer.learning_rate.assign(lr)
        self.loss.set(loss)
        self.regularizer.beta.assign(loss.terms().activity_beta)      # the softmax layer's share
        self.trainings += 1

    def tracing_counts(self) -> dict[str, int]:
        """How many times each of Keras' traced functions has been traced (0: not yet made)."""
        model = self.model
        return {name: (getattr(model, f"{name}_function").experimental_get_tracing_count()
                       if getattr(model, f"{name}_function", None) is not None else 0)
                for name in ("train", "test", "predict")}


# "0": every training builds and traces its own graph, as before graphs were shared (to compare
# the two paths, e.g. bench/classifier_steps.py; a stage, sweep or pipeline started with it set).
SHARED_GRAPH_ENV = "MULTILOSS_SHARED_GRAPH"


def sharing_graphs() -> bool:
    value = os.environ.get(SHARED_GRAPH_ENV, "1").strip().lower()
    if value not in ("0", "1", "false", "true"):
        raise ValueError(f"{SHARED_GRAPH_ENV} must be 1 or 0, got {value!r}")
    return value in ("1", "true")


# This process's graphs, by key: a few EfficientNet-B0 classifiers at most (one per image size and
# architecture a process trains).
_graphs: dict[GraphKey, ClassifierGraph] = {}


def metric_configs(metrics) -> tuple[str, ...]:
    return tuple(json.dumps({"class": type(m).__name__, **m.get_config()}, sort_keys=True, default=str)
                 for m in metrics)


def classifier_graph(encoder_uri: str, *, strategy: str, bn_momentum: float | None, momentum: float,
                     precision: str, jit_compile: bool, extra_metrics=(),
                     reuse: bool | None = None) -> tuple[ClassifierGraph, list | None]:
    """The graph to train on ``encoder_uri``'s U-Net and the U-Net weights to reset it to (None:
    the graph was just built from that U-Net). ``reuse=False`` builds a new graph from a freshly
    loaded U-Net every time, as each training did before graphs were shared (for comparison);
    ``None``: :data:`SHARED_GRAPH_ENV` decides.

    With ``reuse``, the graph key's metrics are ``extra_metrics``' configs: the metric objects of
    the training that built the graph are the compiled ones, and later trainings read theirs from
    the epoch logs."""
    from multiloss.training import distribution_strategy

    if not (sharing_graphs() if reuse is None else reuse):
        unet = registry.load_keras(encoder_uri)
        key = GraphKey(registry.architecture_digest(unet.get_config()), strategy, bn_momentum, momentum,
                       metric_configs(extra_metrics), precision, jit_compile)
        return ClassifierGraph.build(unet, key, distribution_strategy(strategy), extra_metrics), None
    config, weights, loaded = registry.keras_config_and_weights(encoder_uri)
    key = GraphKey(registry.architecture_digest(config), strategy, bn_momentum, momentum, metric_configs(extra_metrics),
                   precision, jit_compile)
    graph = _graphs.get(key)
    if graph is None:
        unet = loaded or registry.load_keras(encoder_uri)
        graph = _graphs[key] = ClassifierGraph.build(unet, key, distribution_strategy(strategy), extra_metrics)
        return graph, None
    return graph, weights


def tracing_counts() -> dict[str, int]:
    """Traces of this process's shared graphs so far, summed by function (train, test, predict)."""
    totals = {"train": 0, "test": 0, "predict": 0}
    for graph in _graphs.values():
        for name, count in graph.tracing_counts().items():
            totals[name] += count
    return totals


@contextlib.contextmanager
def kernel_cache_kept() -> Iterator[None]:
    """Within this block TensorFlow's eager kernel cache is never cleared. That cache holds the
    shared graphs' instantiated, optimised functions, and two calls every training makes clear it:
    ``tf_keras.backend.clear_session()`` and ``tf.random.set_seed``. After each, the next training's
    first train and validation steps instantiate and optimise their whole graphs again (seconds on
    CPU), though nothing was traced. Both reach the cache through one function, replaced here by a
    no-op for the block. The seeds it would reset are those of stateful random kernels, and the
    shared step has none (its dropout draws from generators that :meth:`ClassifierGraph.reset`
    reseeds)."""
    from tensorflow.python import pywrap_tfe

    clear = pywrap_tfe.TFE_ContextClearCaches
    pywrap_tfe.TFE_ContextClearCaches = lambda handle: None
    try:
        yield
    finally:
        pywrap_tfe.TFE_ContextClearCaches = clear


def clear_session() -> None:
    """``tf_keras.backend.clear_session()`` (free the last models' Keras state, reset layer names)
    but, while this process holds shared graphs, keeping the kernel cache (:func:`kernel_cache_kept`)."""
    with kernel_cache_kept() if _graphs else contextlib.nullcontext():
        tf_keras.backend.clear_session()


def seed_training(seed: int) -> None:
    """:func:`multiloss.training.seed_everything` (Python, NumPy and TensorFlow's global seed) but,
    while this process holds shared graphs, keeping the kernel cache (:func:`kernel_cache_kept`)."""
    from multiloss.training import seed_everything

    with kernel_cache_kept() if _graphs else contextlib.nullcontext():
        seed_everything(seed)


def forget_graphs() -> None:
    """Drop this process's graphs (their memory goes with the next collection)."""
    _graphs.clear()
