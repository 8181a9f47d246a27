"""One classifier training for one loss, inside the active MLflow run: the body shared by the
``classify`` stage and every sweep trial (a trial is a classify training run, in-process, so a
worker imports TensorFlow once and a per-epoch hook can prune it)."""

from __future__ import annotations

import dataclasses
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import numpy as np
import tf_keras

from multiloss import cpu_threads, helper_process, names, variants
from multiloss.classification.graph import classifier_graph, seed_training
from multiloss.classification.scoring import (
    degenerate_from_scores,
    degenerate_tags,
    predictions_frame,
    score_split,
    split_figures,
)
from multiloss.data import provenance
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import image_dataset, label_indices
from multiloss.data.fingerprint import kermany_fingerprint
from multiloss.data.readers import find_kermany_root, read_kermany
from multiloss.data.split import (
    SPLIT_SEED,
    VAL_FRACTION,
    patient_split,
    write_split_csv,
)
from multiloss.losses import CLASSIFICATION_LOSSES, classification_loss
from multiloss.losses.classification import ClassificationLoss
from multiloss.metrics.classification import MCC_INTERVAL_LABELS
from multiloss.models import precision
from multiloss.models.unet import check_size
from multiloss.project import boolean_text, declared_parameters
from multiloss.tracking import background, metadata, registry, store
from multiloss.training import fit_keeping_best

# The parameters any classification loss takes (each loss takes some of them), in the loss table's order.
LOSS_PARAMETERS = tuple(dict.fromkeys(name for params in CLASSIFICATION_LOSSES.values() for name in params))
# Headline scores copied onto a registered version's tags (the registry stores no metrics).
TAGGED_SCORES = ("mcc", "accuracy", "ece", "auroc_micro")

EpochHook = Callable[[int, dict], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Everything one training reads; ``loss_params`` holds only what the user set (None: the
    loss's paper value).

    The fields without a default are the classify stage's parameters, whose defaults MLproject
    declares: :meth:`from_defaults` builds a config from those. The others (the paper's SGD
    momentum, the validation split, fixed across losses) only a library caller changes.
    """

    loss: str
    loss_params: dict[str, float | None]
    data: str
    encoder: str
    img_size: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    seed: int
    augment: str
    class_weights: str
    ci_method: str
    bn_momentum: float | None
    patience: int
    variant: str
    val_fraction: float = VAL_FRACTION
    split_seed: int = SPLIT_SEED
    strategy: str
    precision: str                 # a training policy (models.precision); the registered model is float32
    jit_compile: bool              # XLA, refused where TensorFlow sees no GPU

    def __post_init__(self):
        check_size("img_size", self.img_size)     # the encoder halves it five times
        precision.check_precision(self.precision)
        precision.check_jit_compile(self.jit_compile)

    @classmethod
    def from_defaults(cls, loss: str, data: str, **overrides) -> ClassifierConfig:
        """The config the classify stage builds for ``loss`` on ``data`` from MLproject's defaults,
        with ``overrides`` (field name -> value): a library caller or a test repeats no default."""
        def read(text: str, hint):
            if hint is int:
                return int(float(text))            # MLproject floats: "20" or "20.0"
            if hint is bool:
                return bool(boolean_text(text))
            if hint == float | None:
                return None if text.strip().lower() in ("", "none", "default") else float(text)
            return hint(text)

        hints = typing.get_type_hints(cls)
        declared = {name: str(spec["default"]) for name, spec in declared_parameters("classify").items()}
        values = {name: read(text, hints[name]) for name, text in declared.items()
                  if name in hints and name not in LOSS_PARAMETERS}
        loss_params = {name: read(declared[name], float | None) for name in LOSS_PARAMETERS}
        return cls(**{**values, "loss": loss, "data": data, "loss_params": loss_params, **overrides})


@dataclasses.dataclass
class TrainedClassifier:
    model: tf_keras.Model
    loss: ClassificationLoss
    config: ClassifierConfig
    fit: dict[str, float]              # best_epoch, best_val_loss, epochs_run, train_images_per_s
    scores: dict[str, dict[str, float]]  # split -> score_split result
    data_fingerprint: str
    encoder_version: str
    synthetic: bool                    # trained on the built-in synthetic phantoms

    def registry_tags(self) -> dict[str, object]:
        """The tags every ``cxr-classifier`` version carries: what it was trained on and how, its
        headline scores, so versions can be compared without opening their runs, and whether it is
        degenerate on validation (pools leave such a version out; see scoring.degenerate_tags)."""
        return {names.LOSS_TAG: self.config.loss, **{f"loss_{k}": v for k, v in self.loss.params.items()},
                **variants.tags(self.loss.variant),
                names.DATA_FINGERPRINT_TAG: self.data_fingerprint, names.IMG_SIZE_TAG: self.config.img_size,
                "seed": self.config.seed, "encoder_version": self.encoder_version,
                "precision": self.config.precision, "jit_compile": str(self.config.jit_compile).lower(),
                **{f"{split}_{k}": self.scores[split][k] for split in ("val", "test") for k in TAGGED_SCORES},
                **degenerate_tags(self.scores["val"]), names.SYNTHETIC_TAG: str(self.synthetic).lower()}

    def signature(self):
        return metadata.image_signature(self.config.img_size, (len(CLASSES),))

    def summary(self) -> str:
        """One line for the run's description: what was trained, and its headline scores."""
        val, test = self.scores["val"], self.scores["test"]
        return (f"{self.config.loss} ({self.loss.variant.name}) at {self.config.img_size} px, seed {self.config.seed}: "
                f"val MCC {val['mcc']:.3f}, test MCC {test['mcc']:.3f} [{test['mcc_low']:.3f}, {test['mcc_high']:.3f}], "
                f"test ECE {test['ece']:.3f}; best epoch {self.fit['best_epoch']} of {self.fit['epochs_run']}"
                + (" (synthetic phantoms)" if self.synthetic else ""))

    def card(self) -> str:
        """The version's model card (its description in the registry)."""
        config, val, test = self.config, self.scores["val"], self.scores["test"]
        params = ", ".join(f"{k} = {v:g}" for k, v in self.loss.params.items()) or "none"
        interval = MCC_INTERVAL_LABELS[config.ci_method]
        limits = [f"validated and selected on a patient-level split of the training images ({config.val_fraction:.0%}); "
                  "the test split was used for nothing but the scores below"]
        if degenerate_from_scores(val):
            limits.append(f"degenerate on validation ({degenerate_from_scores(val)}): left out of ensembles")
        return (metadata.synthetic_warning(self.synthetic)
                + f"**{config.loss}** classifier, variant **{self.loss.variant.name}**"
                + (f" (published flaws: {', '.join(self.loss.variant.flaws)})" if self.loss.variant.flaws else "")
                + f"\n\n- data: `{Path(config.data).resolve()}` (fingerprint `{self.data_fingerprint}`"
                + (", synthetic" if self.synthetic else "") + ")"
                + f"\n- input: {config.img_size}×{config.img_size}×3 float32 in [0, 1]; output: probabilities of "
                + ", ".join(CLASSES)
                + f"\n- loss parameters: {params}; seed {config.seed}; encoder version {self.encoder_version}; "
                  f"{config.epochs} epochs max, kept epoch {self.fit['best_epoch']} (lowest validation loss)"
                + f"\n- trained in {precision.describe(config.precision, config.jit_compile)}; the registered "
                  "model computes in float32"
                + f"\n- validation: MCC {val['mcc']:.4f}, accuracy {val['accuracy']:.4f}, ECE {val['ece']:.4f}"
                + f"\n- test: MCC {test['mcc']:.4f} [{test['mcc_low']:.4f}, {test['mcc_high']:.4f}] ({interval}), "
                  f"accuracy {test['accuracy']:.4f}, AUROC {test['auroc_micro']:.4f}, ECE {test['ece']:.4f}"
                + "\n- limits: " + "; ".join(limits))


def pin_encoder(uri: str) -> tuple[str, str]:
    """``(models:/name/N, "models:/name/N (run <id>)")``: the version a registry URI names now, so
    that training reads exactly that one even if its alias moves meanwhile. Other URIs (a run's, a
    logged model's) already name one model and stand for themselves. Errors name the parameter."""
    if not uri.startswith("models:/") or registry.LOGGED_MODEL_URI.fullmatch(uri):
        return uri, uri
    name, _, alias = uri.removeprefix("models:/").partition("@")
    client = mlflow.MlflowClient()
    try:
        if alias:
            version = registry.alias_version(name, alias)
        else:
            name, _, number = name.partition("/")
            if number == "latest":
                numbers = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
                if not numbers:
                    raise ValueError(f"{uri}: registered model {name!r} has no versions")
                number = str(max(numbers))
            version = client.get_model_version(name, number)
    except ValueError as err:
        raise ValueError(f"parameter encoder: {err}") from None
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"parameter encoder: {uri}: {err.message}") from None
    pinned = registry.version_uri(name, str(version.version))
    return pinned, f"{pinned} (run {version.run_id})"


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return {k: float(len(labels) / (len(CLASSES) * c)) for k, c in enumerate(counts) if c}


def train_classifier(config: ClassifierConfig, *, epoch_hooks: Sequence[EpochHook] = (),
                     extra_metrics: Sequence[tf_keras.metrics.Metric] = (),
                     data_fingerprint: str | None = None, reuse_graph: bool | None = None) -> TrainedClassifier:
    """Train, keep the lowest-val_loss weights, score val and test, and log it all into the active run
    (the figures are drawn in the helper process; inside a stage's run they may still be when this
    returns: :mod:`multiloss.tracking.background`).

    ``epoch_hooks`` are called as ``hook(epoch, logs)`` after each epoch's validation (after the
    epoch's metrics are logged); an exception they raise (a pruned trial) ends the training there.
    ``extra_metrics`` are compiled in, so their per-epoch values appear in ``logs`` and in the run.
    ``data_fingerprint``: the data's, when the caller computed it (a sweep, once for all its trials).
    ``reuse_graph``: train this process's shared graph for the encoder's architecture
    (:mod:`multiloss.classification.graph`); False builds and traces a new one, as every training
    did before graphs were shared (the benchmark's baseline); None: as the environment says
    (``MULTILOSS_SHARED_GRAPH``, default 1).
    """
    loss = classification_loss(config.loss, variant=config.variant, **config.loss_params)
    frame = read_kermany(config.data)
    root = find_kermany_root(config.data)
    split = patient_split(frame, config.val_fraction, config.split_seed)
    parts = {"train": split[split.subset == "train"], "val": split[split.subset == "val"],
             "test": frame[frame.split == "test"]}
    labels = {name: label_indices(part["label"]) for name, part in parts.items()}
    seed_training(config.seed)

    data_print = data_fingerprint or kermany_fingerprint(config.data, frame)
    encoder_uri = pin_encoder(config.encoder)[0]            # resolved once: loaded and logged alike
    encoder_version = registry.resolve_version(encoder_uri)
    store.log_params({"loss": config.loss, **{f"loss_{k}": v for k, v in loss.params.items()},
                         "data": str(Path(config.data).resolve()), "encoder": config.encoder,
                         "encoder_version": encoder_version, "img_size": config.img_size, "epochs": config.epochs,
                         "batch_size": config.batch_size, "lr": config.lr, "momentum": config.momentum,
                         "seed": config.seed, "augment": config.augment, "class_weights": config.class_weights,
                         "ci_method": config.ci_method, "bn_momentum": config.bn_momentum,
                         "patience": config.patience, "split_seed": config.split_seed, "strategy": config.strategy,
                         "precision": config.precision, "jit_compile": str(config.jit_compile).lower(),
                         "variant": config.variant, **cpu_threads.logged(),
                         **{f"n_{name}": len(part) for name, part in parts.items()}})
    synthetic = provenance.is_synthetic(config.data)
    mlflow.set_tags({names.STAGE_TAG: "classify", names.LOSS_TAG: config.loss, names.DATA_FINGERPRINT_TAG: data_print,
                     names.MCC_INTERVAL_TAG: MCC_INTERVAL_LABELS[config.ci_method], **variants.tags(loss.variant),
                     names.SYNTHETIC_TAG: str(synthetic).lower()})
    metadata.log_splits({context: parts[name][["path", "label"]]
                         for context, name in zip(names.DATASET_CONTEXTS, ("train", "val", "test"))},
                        source=str(root), digest=data_print, name=Path(config.data).resolve().name)

    graph, unet_weights = classifier_graph(encoder_uri, strategy=config.strategy, bn_momentum=config.bn_momentum,
                                           momentum=config.momentum, precision=config.precision,
                                           jit_compile=config.jit_compile, extra_metrics=extra_metrics, reuse=reuse_graph)
    batch = config.batch_size * graph.strategy.num_replicas_in_sync
    datasets = {name: image_dataset(part["path"], part["label"], img_size=config.img_size, batch_size=batch,
                                    shuffle=name == "train", seed=config.seed,
                                    augment=name == "train" and config.augment == "paper")
                for name, part in parts.items()}
    graph.reset(loss=loss, lr=config.lr, seed=config.seed, unet_weights=unet_weights)
    model = graph.model
    weights = balanced_class_weights(labels["train"]) if config.class_weights == "balanced" else None
    hooks = [tf_keras.callbacks.LambdaCallback(on_epoch_end=hook) for hook in epoch_hooks]
    fit = fit_keeping_best(model, datasets["train"], datasets["val"], epochs=config.epochs,
                           images_per_epoch=len(parts["train"]), patience=config.patience,
                           class_weight=weights, extra_callbacks=hooks)
    mlflow.log_metrics(fit)

    scores = {}
    # validation and test in one predict call: one pass of the traced predict function
    probs = np.split(model.predict(datasets["val"].concatenate(datasets["test"]), verbose=0), [len(parts["val"])])
    with tempfile.TemporaryDirectory() as tmp:
        write_split_csv(split, Path(tmp) / "validation_split.csv", root=root)
        for name, split_probs in zip(("val", "test"), probs):
            scores[name] = score_split(labels[name], split_probs, config.ci_method, seed=config.seed)
            mlflow.log_metrics({f"{name}_{k}": v for k, v in scores[name].items()})
            predictions_frame(parts[name]["path"], labels[name], split_probs).to_csv(
                Path(tmp) / f"{name}_predictions.csv", index=False)
        mlflow.log_artifacts(tmp)
    background.log_files(lambda folder: _draw_split_figures(folder, labels, probs, config.loss))
    mlflow.set_tags(degenerate_tags(scores["val"]))       # decided on validation only, never on test
    trained = TrainedClassifier(model, loss, config, fit, scores, data_print, encoder_version, synthetic)
    metadata.describe_run(trained.summary())
    return trained


def _draw_split_figures(folder: Path, labels: dict[str, np.ndarray], probs: list[np.ndarray], title: str) -> None:
    """Each split's figures, drawn in the helper process (inside a stage's run, while the stage goes on)."""
    for name, split_probs in zip(("val", "test"), probs):
        helper_process.call(split_figures, folder, name, labels[name], split_probs, title)


def log_unregistered(trained: TrainedClassifier) -> str:
    """Log the model into the active run without registering it; returns its model URI (a sweep
    registers only its best trial's model, later, possibly from another worker)."""
    return registry.log_keras(trained.model, signature=trained.signature()).model_uri


def register(trained: TrainedClassifier):
    """Log and register ``trained`` as a new ``cxr-classifier`` version, tagged, with its card; the
    run's figures are drawn meanwhile, and if one could not be logged the version goes again (a
    version only of a run that is whole)."""
    version = registry.log_and_register(trained.model, names.CLASSIFIER_MODEL, trained.registry_tags(),
                                        signature=trained.signature(), card=trained.card())
    try:
        background.wait(mlflow.active_run().info.run_id)
    except RuntimeError:
        mlflow.MlflowClient().delete_model_version(names.CLASSIFIER_MODEL, version.version)
        raise
    return version


def register_logged(model_uri: str, tags: dict[str, object], card: str | None = None):
    """Register a logged model as a new ``cxr-classifier`` version, tag it and give it ``card``."""
    version = str(registry.register_with_tags(model_uri, names.CLASSIFIER_MODEL, tags).version)
    if card is not None:
        metadata.describe_version(names.CLASSIFIER_MODEL, version, card)
    return mlflow.MlflowClient().get_model_version(names.CLASSIFIER_MODEL, version)
