"""Training plumbing shared by the stages: distribution strategy, callbacks, best checkpoint.

``strategy``: ``default`` (the one visible device), ``mirrored`` (tf.distribute.MirroredStrategy
over all local GPUs, or the CPUs given), ``multiworker`` (MultiWorkerMirroredStrategy, configured by
``TF_CONFIG``). No home-made scheduler.
"""

from __future__ import annotations

import time

import mlflow
import numpy as np
import tensorflow as tf
import tf_keras

from multiloss import names

STRATEGIES = ("default", "mirrored", "multiworker")


def momentum_sgd(lr: float, momentum: float):
    """SGD with momentum, the paper's optimizer, as tf_keras' legacy class: it updates each variable
    in one fused kernel (ResourceApplyKerasMomentum) where the newer class runs several small ops a
    variable, and it gives the same weights to the last bit (``tests/test_training.py``)."""
    return tf_keras.optimizers.legacy.SGD(lr, momentum=momentum)


def optimizer_variables(optimizer) -> list[tf.Variable]:
    """An optimizer's own variables (step count and slots): a property on tf_keras' newer
    optimizers, a method on the legacy ones; a LossScaleOptimizer's are its inner optimizer's."""
    found = optimizer.variables
    return list(found() if callable(found) else found)


def distribution_strategy(name: str = "default", devices: list[str] | None = None) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def seed_everything(seed: int) -> None:
    tf_keras.utils.set_random_seed(seed)


class MlflowEpochLogger(tf_keras.callbacks.Callback):
    """Logs every epoch's metrics (and learning rate, and images/s) to the active run as curves
    under ``epoch/<name>``, and prints one progress line, so a long training is visible both in the
    terminal and in the UI. The plain names are left to the kept model's final scores."""

    def __init__(self, images_per_epoch: int, total_epochs: int, prefix: str = ""):
        super().__init__()
        self.prefix = prefix
        self.images_per_epoch = images_per_epoch
        self.total_epochs = total_epochs
        self.images_per_second: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        if self._train_seconds is None:      # validation inside fit: the training part has ended
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        train_seconds = self._train_seconds or seconds
        metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        metrics["lr"] = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))
        metrics["train_images_per_s"] = self.images_per_epoch / train_seconds
        metrics["seconds"] = seconds         # the epoch's wall time, its validation included
        self.images_per_second.append(metrics["train_images_per_s"])
        mlflow.log_metrics({f"{names.EPOCH_CURVE_PREFIX}{self.prefix}{k}": v for k, v in metrics.items()}, step=epoch)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "seconds")
        print(f"epoch {epoch + 1}/{self.total_epochs} ({seconds:.1f} s): {shown}", flush=True)


def create_training_variables(model: tf_keras.Model, element_spec) -> None:
    """Create the optimizer's slots and the compiled loss and metric trackers before ``fit``.

    Keras creates them inside the first training step, and a ``tf.function`` that creates variables
    is traced a second time without them: the whole forward and backward graph twice, optimised
    twice, which is most of a first epoch on CPU. Made here, eagerly on a zero batch of one (no
    random op runs, no weight changes), ``fit`` traces its step once. Not under a distribution
    strategy (its metric variables sum over replicas and cannot be updated outside them): Keras
    makes them there, as before.
    """
    if model.distribute_strategy is not tf.distribute.get_strategy():
        return
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer               # mixed_float16: its slots are the inner one's
    legacy = isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer)      # it has no _built: its slots tell
    made = bool(optimizer.weights) if legacy else getattr(optimizer, "_built", False)
    if model.compiled_loss.built and model.compiled_metrics.built and made:
        return                      # a model trained before (a shared graph): all made, nothing to trace
    x_spec, y_spec = element_spec[0], element_spec[1]
    zeros = lambda spec: tf.zeros([1, *spec.shape[1:]], spec.dtype)          # noqa: E731
    x, y = tf.nest.map_structure(zeros, x_spec), tf.nest.map_structure(zeros, y_spec)
    y_pred = model(x, training=False)
    model.compute_loss(x, y, y_pred)
    model.compute_metrics(x, y, y_pred, None)
    model.reset_metrics()
    if legacy:
        optimizer._create_all_weights(model.trainable_variables)
    else:
        optimizer.build(model.trainable_variables)


class KeepBestWeights(tf_keras.callbacks.Callback):
    """Holds a copy of the weights (BatchNorm statistics included) of the epoch with the lowest
    ``val_loss``, as ``ModelCheckpoint(save_best_only=True, save_weights_only=True)`` would, but in
    memory: writing an EfficientNet-B0 to HDF5 at each better epoch took longer than the epoch's
    validation at demo scale. A NaN loss is never the best."""

    def __init__(self, monitor: str = "val_loss"):
        super().__init__()
        self.monitor = monitor
        self.best = np.inf
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is not None and current < self.best:
            self.best, self.weights = float(current), self.model.get_weights()

    def restore(self) -> None:
        """Put the best epoch's weights back (no-op when no epoch had a finite loss)."""
        if self.weights is not None:
            self.model.set_weights(self.weights)


def repeated_for_fit(dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, int | None]:
    """``dataset`` repeated, with its batches per pass (``fit``'s ``steps_per_epoch`` or
    ``validation_steps``), so that Keras keeps one iterator where it would make two and drop one at
    each epoch (tens of milliseconds each on CPU): for training one for all epochs, for validation
    one per epoch. Each epoch still reads exactly one whole pass, and a shuffle or augmentation
    draws anew per pass as it does per iterator. A dataset whose length is unknown or infinite is
    returned as it is, with None."""
    batches = int(dataset.cardinality())
    if batches <= 0:                   # tf.data.UNKNOWN_CARDINALITY, INFINITE_CARDINALITY, or empty
        return dataset, None
    return dataset.repeat(), batches


def best_epoch_of(val_losses) -> tuple[int, float]:
    """The epoch (from 1) whose weights :class:`KeepBestWeights` restores, and its loss: the lowest
    finite one; when none is finite nothing is restored, so the last epoch's (NaN)."""
    losses = np.asarray(val_losses, float)
    finite = np.isfinite(losses)
    if not finite.any():
        return len(losses), float(losses[-1])
    index = int(np.argmin(np.where(finite, losses, np.inf)))
    return index + 1, float(losses[index])


def fit_keeping_best(model: tf_keras.Model, train, val, *, epochs: int, images_per_epoch: int,
                     patience: int, class_weight: dict | None = None, extra_callbacks=(),
                     metric_prefix: str = "") -> dict:
    """Fit with reduce-on-plateau and early stopping, then restore the lowest-val_loss weights.

    Returns the best epoch (counted from 1, as the progress lines), its validation loss (also as
    ``val_loss``, the kept model's), and the steady training images/s (epochs 2+, validation excluded).
    """
    logger = MlflowEpochLogger(images_per_epoch, epochs, metric_prefix)
    create_training_variables(model, train.element_spec)
    best = KeepBestWeights()
    callbacks = [
        logger,          # first, so it logs the learning rate this epoch used
        best,
        tf_keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                             patience=max(1, patience // 2), verbose=0),
        tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, verbose=0),
        *extra_callbacks,
    ]
    train, steps_per_epoch = repeated_for_fit(train)
    if steps_per_epoch is not None:
        # Keras' per-epoch path makes one training iterator it never reads before the first epoch,
        # which draws the first permutation; so does this one, so every epoch gets the batches it
        # got before and a training's scores do not change.
        iter(train)
    val, validation_steps = repeated_for_fit(val)
    history = model.fit(train, validation_data=val, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_steps=validation_steps, verbose=0,
                        callbacks=callbacks, class_weight=class_weight)
    best.restore()
    val_loss = history.history["val_loss"]
    best_epoch, best_val_loss = best_epoch_of(val_loss)
    rates = logger.images_per_second
    return {"best_epoch": best_epoch, "best_val_loss": best_val_loss, "val_loss": best_val_loss,
            "epochs_run": len(val_loss),
            "train_images_per_s": float(np.mean(rates[1:] if len(rates) > 1 else rates))}
