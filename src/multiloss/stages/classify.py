"""Entry point ``classify``: train one classifier for one loss on a registered U-Net's encoder, score
it on validation and test (SPEC §8), log everything, register a ``cxr-classifier`` version."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import tf_keras

from multiloss import registry, tracking
from multiloss.data.classes import CLASSES
from multiloss.data.fingerprint import fingerprint
from multiloss.data.pipeline import image_dataset, label_indices
from multiloss.data.readers import find_kermany_root, read_kermany
from multiloss.data.split import patient_split, write_split_csv
from multiloss.evaluation import predictions_frame, score_split, split_figures
from multiloss.losses import CLASSIFICATION_LOSSES, classification_loss
from multiloss.metrics.classification import CI_METHODS
from multiloss.models.classifier import build_classifier
from multiloss.stages.cli import integer, optional_float
from multiloss.training import STRATEGIES, distribution_strategy, fit_keeping_best, seed_everything

LOSS_PARAMETERS = ("gamma", "sigma", "lam", "beta")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="classify", description=__doc__)
    parser.add_argument("--loss", required=True, choices=list(CLASSIFICATION_LOSSES))
    for name in LOSS_PARAMETERS:
        parser.add_argument(f"--{name}", type=optional_float(name), default=None,
                            help="empty: the paper's value for this loss")
    parser.add_argument("--data", required=True, help="Kermany-layout dataset (usually the crop stage's output)")
    parser.add_argument("--encoder", default=f"models:/{registry.SEGMENTATION_MODEL}@champion",
                        help="model URI of the U-Net whose encoder is transferred")
    parser.add_argument("--img-size", type=integer("img_size", 32), default=128)
    parser.add_argument("--epochs", type=integer("epochs", 1), default=20)
    parser.add_argument("--batch-size", type=integer("batch_size", 1), default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=integer("seed", 0), default=0)
    parser.add_argument("--augment", choices=("none", "paper"), default="none",
                        help="paper: the U-Net's flip/±2 px/±5° augmentation on training images")
    parser.add_argument("--class-weights", choices=("none", "balanced"), default="none")
    parser.add_argument("--ci-method", choices=CI_METHODS, default="bootstrap")
    parser.add_argument("--bn-momentum", type=optional_float("bn_momentum"), default=None)
    parser.add_argument("--patience", type=integer("patience", 1), default=5)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", type=integer("split_seed", 0), default=42,
                        help="seed of the patient-grouped validation split (fixed across losses)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default")
    return parser.parse_args(argv)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return {k: float(len(labels) / (len(CLASSES) * c)) for k, c in enumerate(counts) if c}


def main(argv=None) -> None:
    args = parse_args(argv)
    loss = classification_loss(args.loss, **{k: getattr(args, k) for k in LOSS_PARAMETERS})
    frame = read_kermany(args.data)
    root = find_kermany_root(args.data)
    split = patient_split(frame, args.val_fraction, args.split_seed)
    parts = {"train": split[split.subset == "train"], "val": split[split.subset == "val"],
             "test": frame[frame.split == "test"]}
    labels = {name: label_indices(part["label"]) for name, part in parts.items()}
    seed_everything(args.seed)

    with tracking.stage_run("classification", run_name=f"classify-{args.loss}"):
        data_print = fingerprint(frame["path"], root=root)
        encoder_version = registry.resolve_version(args.encoder)
        tracking.log_params({"loss": args.loss, **{f"loss_{k}": v for k, v in loss.params.items()},
                             "data": str(Path(args.data).resolve()), "encoder": args.encoder,
                             "encoder_version": encoder_version, "img_size": args.img_size, "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
                             "seed": args.seed, "augment": args.augment, "class_weights": args.class_weights, "ci_method": args.ci_method,
                             "bn_momentum": args.bn_momentum, "patience": args.patience,
                             "split_seed": args.split_seed, "strategy": args.strategy,
                             **{f"n_{name}": len(part) for name, part in parts.items()}})
        mlflow.set_tags({"stage": "classify", "loss": args.loss, "data_fingerprint": data_print})

        strategy = distribution_strategy(args.strategy)
        batch = args.batch_size * strategy.num_replicas_in_sync
        datasets = {name: image_dataset(part["path"], part["label"], img_size=args.img_size, batch_size=batch,
                                        shuffle=name == "train", seed=args.seed,
                                        augment=name == "train" and args.augment == "paper")
                    for name, part in parts.items()}
        with strategy.scope():
            unet = registry.load_keras(args.encoder)
            model = build_classifier(unet, activity_regularizer=loss.activity_regularizer(),
                                     bn_momentum=args.bn_momentum)
            model.compile(optimizer=tf_keras.optimizers.SGD(args.lr, momentum=args.momentum), loss=loss,
                          metrics=["accuracy"])
        weights = balanced_class_weights(labels["train"]) if args.class_weights == "balanced" else None
        result = fit_keeping_best(model, datasets["train"], datasets["val"], epochs=args.epochs,
                                  images_per_epoch=len(parts["train"]), patience=args.patience,
                                  class_weight=weights)
        mlflow.log_metrics(result)

        headline = {}
        with tempfile.TemporaryDirectory() as tmp:
            write_split_csv(split, Path(tmp) / "validation_split.csv", root=root)
            for name in ("val", "test"):
                probs = model.predict(datasets[name], verbose=0)
                scores = score_split(labels[name], probs, args.ci_method, seed=args.seed)
                mlflow.log_metrics({f"{name}_{k}": v for k, v in scores.items()})
                headline[name] = scores
                predictions_frame(parts[name]["path"], labels[name], probs).to_csv(
                    Path(tmp) / f"{name}_predictions.csv", index=False)
                split_figures(tmp, name, labels[name], probs, f"{args.loss}")
            mlflow.log_artifacts(tmp)

        version = registry.log_and_register(model, registry.CLASSIFIER_MODEL, {
            "loss": args.loss, **{f"loss_{k}": v for k, v in loss.params.items()},
            "data_fingerprint": data_print, "img_size": args.img_size, "seed": args.seed,
            "encoder_version": encoder_version,
            **{f"{split_name}_{k}": round(headline[split_name][k], 6)
               for split_name in ("val", "test") for k in ("mcc", "accuracy", "ece", "auroc_micro")}})
        print(f"classify: registered {registry.CLASSIFIER_MODEL} version {version.version} (loss {args.loss}; "
              f"val MCC {headline['val']['mcc']:.4f}, test MCC {headline['test']['mcc']:.4f}, "
              f"test ECE {headline['test']['ece']:.4f})")


if __name__ == "__main__":
    main()
