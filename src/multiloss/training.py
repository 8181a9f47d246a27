"""Training plumbing shared by the stages: distribution strategy, callbacks, best checkpoint.

``strategy``: ``default`` (the one visible device), ``mirrored`` (tf.distribute.MirroredStrategy
over all local GPUs, or the CPUs given), ``multiworker`` (MultiWorkerMirroredStrategy, configured by
``TF_CONFIG``). No home-made scheduler.
"""

from __future__ import annotations

import os
import tempfile
import time

import mlflow
import numpy as np
import tensorflow as tf
import tf_keras

STRATEGIES = ("default", "mirrored", "multiworker")


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
    """Logs every epoch's metrics (and learning rate, and images/s) to the active run, and prints
    one progress line, so a long training is visible both in the terminal and in the UI."""

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
        self.images_per_second.append(metrics["train_images_per_s"])
        mlflow.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=epoch)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"epoch {epoch + 1}/{self.total_epochs} ({seconds:.1f} s): {shown}", flush=True)


def fit_keeping_best(model: tf_keras.Model, train, val, *, epochs: int, images_per_epoch: int,
                     patience: int, class_weight: dict | None = None, extra_callbacks=(),
                     metric_prefix: str = "") -> dict:
    """Fit with reduce-on-plateau and early stopping, then restore the lowest-val_loss weights.

    Returns the best epoch (counted from 1, as the progress lines) and its validation loss, and
    the steady training images/s (epochs 2+, validation excluded).
    """
    logger = MlflowEpochLogger(images_per_epoch, epochs, metric_prefix)
    with tempfile.TemporaryDirectory() as tmp:
        best_path = os.path.join(tmp, "best.weights.h5")
        callbacks = [
            logger,          # first, so it logs the learning rate this epoch used
            tf_keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True,
                                               save_weights_only=True, verbose=0),
            tf_keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                 patience=max(1, patience // 2), verbose=0),
            tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, verbose=0),
            *extra_callbacks,
        ]
        history = model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=callbacks,
                            class_weight=class_weight)
        model.load_weights(best_path)
    val_loss = history.history["val_loss"]
    best_epoch = int(np.argmin(val_loss)) + 1
    rates = logger.images_per_second
    return {"best_epoch": best_epoch, "best_val_loss": float(val_loss[best_epoch - 1]),
            "epochs_run": len(val_loss),
            "train_images_per_s": float(np.mean(rates[1:] if len(rates) > 1 else rates))}
