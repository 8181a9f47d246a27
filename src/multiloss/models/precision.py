"""Training precision and XLA: the GPU options of the U-Net and classifier trainings.

``precision``: ``float32`` (the default, everywhere), ``mixed_bfloat16`` (Ampere and later GPUs:
A100, H100, H200; no loss scaling needed) or ``mixed_float16`` (older GPUs with tensor cores: V100,
T4; the optimizer is wrapped in a dynamic LossScaleOptimizer). Under a mixed policy the layers
compute in 16 bits and keep float32 variables; a model's output layers (the U-Net's sigmoid, the
classifier's softmax) compute in float32, and so do the losses.

A policy is a training setting, never a model's: the registry holds float32 models whatever the
training precision (:func:`multiloss.tracking.registry.inference_copy` casts the copy it logs), so
crop, segment_eval, Grad-CAM, the ensembles and serving read the same kind of model, and a
classifier trained under one policy on a U-Net trained under another gets its encoder rebuilt under
its own (:func:`cast`). Keras reads the global policy when it makes a layer: :func:`policy` sets it
for a build only and puts the previous one back, so that a later float32 training in the same
process is float32.

``jit_compile`` (XLA) is refused unless TensorFlow sees a GPU: on a CPU it is ~10x slower and fails
on the U-Net decoder's gradient (SPEC §2).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import tensorflow as tf
import tf_keras

FLOAT32 = "float32"
POLICIES = (FLOAT32, "mixed_bfloat16", "mixed_float16")
LOSS_SCALED = "mixed_float16"          # the policy whose optimizer needs loss scaling


def check_precision(name: str, what: str = "parameter precision") -> str:
    """``name`` if it is a known policy, else an error naming ``what`` (the parameter) and the choices."""
    if name not in POLICIES:
        raise ValueError(f"{what} must be one of {', '.join(POLICIES)}, got {name!r}")
    return name


def gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def check_jit_compile(jit_compile: bool, what: str = "parameter jit_compile") -> bool:
    """``jit_compile`` if it may be used here: True is refused when TensorFlow sees no GPU, with
    an error naming ``what`` (the parameter)."""
    if jit_compile and not gpu_visible():
        raise ValueError(
            f"{what}: true is refused: TensorFlow sees no GPU here, and XLA on a CPU is about "
            "10x slower and fails on the U-Net decoder's gradient (SPEC §2); pass jit_compile=false, "
            "or run on a machine with a GPU")
    return jit_compile


@contextlib.contextmanager
def policy(name: str) -> Iterator[tf_keras.mixed_precision.Policy]:
    """Keras' global dtype policy ``name`` inside the block, the previous one after it (also on an error)."""
    check_precision(name)
    before = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield tf_keras.mixed_precision.global_policy()
    finally:
        tf_keras.mixed_precision.set_global_policy(before)


def _serialized(name: str):
    """How a layer's config writes the policy ``name`` (a string for float32, a dict for mixed ones)."""
    return tf_keras.layers.Layer(dtype=name).get_config()["dtype"]


def _rewrite(config: dict, dtype, keep_float32: set[str], float32) -> dict:
    layers = []
    for layer in config["layers"]:
        layer = dict(layer, config=dict(layer["config"]))
        if layer["class_name"] == "InputLayer":           # its dtype is the input tensor's, not a policy
            pass
        elif "layers" in layer["config"]:                  # a nested model
            layer["config"] = _rewrite(layer["config"], dtype, keep_float32, float32)
        else:
            # a copy each: no two layers' configs share one dict
            layer["config"]["dtype"] = copy.deepcopy(float32 if layer["config"]["name"] in keep_float32 else dtype)
        layers.append(layer)
    return {**config, "layers": layers}


def output_layers(model: tf_keras.Model) -> set[str]:
    """The names of the layers whose outputs are ``model``'s outputs."""
    return {tensor._keras_history.layer.name for tensor in tf.nest.flatten(model.outputs)}


def cast(model: tf_keras.Model, name: str, keep_float32: Iterable[str] | None = None) -> tf_keras.Model:
    """A functional ``model`` rebuilt with its layers computing under policy ``name`` (the same
    weights: variables are float32 under every policy), but ``keep_float32`` (default: the output
    layers, so the model's outputs are float32). ``model`` itself when it already is that."""
    keep = output_layers(model) if keep_float32 is None else set(keep_float32)
    wanted = {layer.name: FLOAT32 if layer.name in keep else name for layer in model.layers
              if not isinstance(layer, tf_keras.layers.InputLayer)}
    if all(model.get_layer(n).dtype_policy.name == p for n, p in wanted.items()) \
            and model.dtype_policy.name == name:
        return model
    config = _rewrite(model.get_config(), _serialized(name), keep, _serialized(FLOAT32))
    # the layers' own classes: efficientnet's FixedDropout is made per build, and Keras' registry
    # of custom objects may not name it (it gave back the class name after a clear_session)
    classes = {type(layer).__name__: type(layer) for layer in model.submodules
               if isinstance(layer, tf_keras.layers.Layer)}
    with policy(name):
        rebuilt = model.__class__.from_config(config, custom_objects=classes)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def optimizer(inner, name: str):
    """``inner``, wrapped in a dynamic LossScaleOptimizer under ``mixed_float16``."""
    if check_precision(name) == LOSS_SCALED:
        return tf_keras.mixed_precision.LossScaleOptimizer(inner)
    return inner


def reset_loss_scale(optimizer) -> None:
    """Put a LossScaleOptimizer's loss scale back to its initial value and its count of good steps
    to zero, as a fresh one has them (a no-op for any other optimizer). Its ``variables`` are the
    inner optimizer's: zeroing those leaves the scale where the last training left it."""
    if not isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer) or not optimizer.dynamic:
        return
    state = optimizer._loss_scale           # Keras exposes the scale as a tensor only; its variable is here
    state.current_loss_scale.assign(optimizer.initial_scale)
    state.counter.assign(0)


def describe(name: str, jit_compile: bool) -> str:
    """``mixed_bfloat16, XLA``: one phrase for a run's card."""
    return name + (", XLA (jit_compile)" if jit_compile else "")
