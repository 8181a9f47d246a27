"""One lung U-Net training for one loss, inside the active MLflow run.

The ``segment`` stage and the pruning benchmark share it. :func:`prepare` does what can fail on the
user's input (the loss and its parameters, the mask set) before a run opens; :func:`train_unet`
trains, keeps the best weights and logs params, tags, metrics and artifacts into the active run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import tf_keras

from multiloss import cpu_threads, names
from multiloss.data import provenance
from multiloss.data.datasets import mask_dataset
from multiloss.data.fingerprint import mask_set_fingerprint
from multiloss.data.readers import read_mask_set
from multiloss.data.split import SPLIT_SEED, VAL_FRACTION, random_split
from multiloss.losses import segmentation_loss
from multiloss.metrics.segmentation import (
    dice_coefficient,
    lung_iou,
    segmentation_scores,
)
from multiloss.models import precision
from multiloss.models.unet import build_unet
from multiloss.plots import mask_overlays
from multiloss.tracking import metadata, store
from multiloss.training import distribution_strategy, fit_keeping_best, seed_everything

LOSS_PARAMETERS = ("alpha", "beta", "gamma")
SHOWN = 6              # validation images drawn in val_predictions.png


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Everything one U-Net training reads; ``loss_params`` holds only what the user set (None:
    the loss's paper value).

    The fields without a default are the segment stage's parameters, whose defaults MLproject
    declares; the validation split is not a stage parameter (the same split for every loss and seed).
    """

    loss: str
    data: str
    loss_params: dict[str, float | None]
    img_size: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    encoder_weights: str
    bn_momentum: float | None
    patience: int
    strategy: str
    precision: str                 # a training policy (models.precision); the registered model is float32
    jit_compile: bool              # XLA, refused where TensorFlow sees no GPU
    val_fraction: float = VAL_FRACTION
    split_seed: int = SPLIT_SEED

    def __post_init__(self):
        precision.check_precision(self.precision)
        precision.check_jit_compile(self.jit_compile)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object]) -> UNetConfig:
        """The config of the segment stage's parsed parameters (``alpha``, ``beta``, ``gamma`` among
        them); a field that is no stage parameter keeps its default unless ``parameters`` names it."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"loss_params"}
        return cls(loss_params={k: parameters[k] for k in LOSS_PARAMETERS},
                   **{k: parameters[k] for k in fields if k in parameters})


@dataclasses.dataclass
class PreparedTraining:
    """A config with its loss built and its mask set read and split (``pairs.subset``)."""

    config: UNetConfig
    loss: tf_keras.losses.Loss
    pairs: pd.DataFrame

    @property
    def train(self) -> pd.DataFrame:
        return self.pairs[self.pairs.subset == "train"]

    @property
    def val(self) -> pd.DataFrame:
        return self.pairs[self.pairs.subset == "val"]


@dataclasses.dataclass
class TrainedUNet:
    model: tf_keras.Model
    prepared: PreparedTraining
    fit: dict[str, float]              # best_epoch, best_val_loss, epochs_run, train_images_per_s
    scores: pd.Series                  # mean validation scores of the best weights (dice, ...)
    data_fingerprint: str
    synthetic: bool                    # trained on the built-in synthetic phantoms

    def registry_tags(self) -> dict[str, object]:
        """The tags every ``cxr-lung-seg`` version carries."""
        config = self.prepared.config
        return {names.LOSS_TAG: config.loss, **loss_param_keys(self.prepared.loss),
                names.DATA_FINGERPRINT_TAG: self.data_fingerprint, names.IMG_SIZE_TAG: config.img_size,
                "seed": config.seed, "precision": config.precision, "jit_compile": str(config.jit_compile).lower(),
                "val_loss": self.fit["best_val_loss"],
                "val_dice": float(self.scores["dice"]), names.SYNTHETIC_TAG: str(self.synthetic).lower()}

    def signature(self):
        size = self.prepared.config.img_size
        return metadata.image_signature(size, (size, size, 1))

    def summary(self) -> str:
        """One line for the run's description."""
        config = self.prepared.config
        return (f"U-Net, loss {config.loss}, at {config.img_size} px, seed {config.seed}: validation Dice "
                f"{float(self.scores['dice']):.3f}, lung IoU {float(self.scores['lung_iou']):.3f}; best epoch "
                f"{self.fit['best_epoch']} of {self.fit['epochs_run']}" + (" (synthetic phantoms)" if self.synthetic else ""))

    def card(self) -> str:
        """The version's model card."""
        config = self.prepared.config
        params = ", ".join(f"{k} = {v:g}" for k, v in self.prepared.loss.params.items()) or "none"
        return (metadata.synthetic_warning(self.synthetic)
                + f"Lung U-Net, loss **{config.loss}** ({params})"
                + f"\n\n- data: `{Path(config.data).resolve()}` (fingerprint `{self.data_fingerprint}`"
                + (", synthetic" if self.synthetic else "") + f"); {len(self.prepared.train)} training and "
                  f"{len(self.prepared.val)} validation image/mask pairs"
                + f"\n- input: {config.img_size}×{config.img_size}×3 float32 in [0, 1]; output: lung probability per pixel"
                + f"\n- trained in {precision.describe(config.precision, config.jit_compile)}; the registered "
                  "model computes in float32"
                + f"\n- seed {config.seed}; {config.epochs} epochs max, kept epoch {self.fit['best_epoch']} "
                  "(lowest validation loss)"
                + "\n- validation: " + ", ".join(f"{k} {float(v):.4f}" for k, v in self.scores.items())
                + "\n- limits: scored on its own validation split; segment_eval scores it on held-out images")


def loss_param_keys(loss) -> dict[str, object]:
    """``loss_alpha``, ...: the loss's resolved parameters, as params and version tags name them."""
    return {f"loss_{k}": v for k, v in loss.params.items()}


def prepare(config: UNetConfig) -> PreparedTraining:
    """Build the loss (a parameter it lacks fails here) and read and split the mask set."""
    loss = segmentation_loss(config.loss, **config.loss_params)
    pairs = read_mask_set(config.data)
    pairs["subset"] = random_split(len(pairs), config.val_fraction, config.split_seed)
    return PreparedTraining(config, loss, pairs)


def compiled_unet(config: UNetConfig, loss: tf_keras.losses.Loss) -> tf_keras.Model:
    """A fresh U-Net compiled as a training compiles it (call it in the strategy's scope): its
    layers compute under the training's policy (the sigmoid output in float32; only this build
    reads the global policy, which is restored after it), with XLA if ``jit_compile``."""
    model = precision.cast(build_unet(config.encoder_weights, config.bn_momentum), config.precision)
    # legacy Adam: the same updates, about half the first epoch's graph build
    model.compile(optimizer=precision.optimizer(tf_keras.optimizers.legacy.Adam(config.lr), config.precision),
                  loss=loss, metrics=[dice_coefficient, lung_iou], jit_compile=config.jit_compile)
    return model


def train_unet(prepared: PreparedTraining) -> TrainedUNet:
    """Train, keep the lowest-val_loss weights, score them on the validation split, and log it all
    into the active run (params, tags, per-epoch metrics, ``val_predictions.png``, ``split.csv``)."""
    config, loss, pairs = prepared.config, prepared.loss, prepared.pairs
    train, val = prepared.train, prepared.val
    seed_everything(config.seed)
    data_print = mask_set_fingerprint(pairs, root=config.data)
    _log_settings(prepared, data_print)

    strategy = distribution_strategy(config.strategy)
    batch = config.batch_size * strategy.num_replicas_in_sync
    train_ds = mask_dataset(train["image"], train["masks"], img_size=config.img_size, batch_size=batch,
                            shuffle=True, augment=True, seed=config.seed)
    val_ds = mask_dataset(val["image"], val["masks"], img_size=config.img_size, batch_size=batch)
    with strategy.scope():
        model = compiled_unet(config, loss)
    fit = fit_keeping_best(model, train_ds, val_ds, epochs=config.epochs, images_per_epoch=len(train),
                           patience=config.patience)
    mlflow.log_metrics(dict(fit))

    images, truth = (np.concatenate(parts) for parts in zip(*val_ds.as_numpy_iterator()))
    predicted = model.predict(images, verbose=0)[..., 0] > 0.5
    scores = segmentation_scores(truth[..., 0] > 0.5, predicted).mean()
    mlflow.log_metrics({f"val_{k}": float(v) for k, v in scores.items()})
    with tempfile.TemporaryDirectory() as tmp:
        shown = slice(0, min(SHOWN, len(images)))
        mask_overlays(images[shown, ..., 0], truth[shown, ..., 0] > 0.5, predicted[shown],
                      Path(tmp) / "val_predictions.png")
        pairs.assign(masks=[";".join(m) for m in pairs["masks"]]).to_csv(Path(tmp) / "split.csv", index=False)
        mlflow.log_artifacts(tmp)
    trained = TrainedUNet(model, prepared, fit, scores, data_print, provenance.is_synthetic(config.data))
    mlflow.set_tag(names.SYNTHETIC_TAG, str(trained.synthetic).lower())
    metadata.describe_run(trained.summary())
    return trained


def _log_settings(prepared: PreparedTraining, data_print: str) -> None:
    config = prepared.config
    params = {name: getattr(config, name) for name in (
        "loss", "data", "img_size", "epochs", "batch_size", "lr", "seed", "encoder_weights", "bn_momentum",
        "patience", "strategy", "precision", "jit_compile", "split_seed")}
    store.log_params({**params, "data": str(Path(config.data).resolve()),
                      "jit_compile": str(config.jit_compile).lower(), "n_train": len(prepared.train),
                      "n_val": len(prepared.val), **loss_param_keys(prepared.loss), **cpu_threads.logged()})
    mlflow.set_tags({names.STAGE_TAG: "segment", names.LOSS_TAG: config.loss, names.DATA_FINGERPRINT_TAG: data_print})
    metadata.log_splits({"train": _pair_rows(prepared.train), "validation": _pair_rows(prepared.val)},
                        source=str(Path(config.data).resolve()), digest=data_print, name=Path(config.data).resolve().name)


def _pair_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"image": pairs["image"].astype(str), "masks": [";".join(map(str, m)) for m in pairs["masks"]]})
