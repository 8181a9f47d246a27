"""Entry point ``classify``: train one classifier for one loss on a registered U-Net's encoder, score
it on validation and test (SPEC §8), log everything, register a ``cxr-classifier`` version."""

from __future__ import annotations

import argparse

from multiloss import names
from multiloss.classification.train import (  # noqa: F401
    LOSS_PARAMETERS,
    ClassifierConfig,
    balanced_class_weights,
    train_classifier,
)
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.metrics.classification import CI_METHODS
from multiloss.stages.cli import integer, optional_float
from multiloss.tracking import registry, store
from multiloss.training import STRATEGIES

# The training arguments the sweep stage forwards to every trial (everything but the loss).
TRAINING_ARGUMENTS = ("data", "encoder", "img_size", "epochs", "batch_size", "lr", "momentum", "seed", "augment",
                      "class_weights", "ci_method", "bn_momentum", "patience", "val_fraction", "split_seed",
                      "strategy")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The classifier training options, shared with the sweep stage (one place for their defaults)."""
    parser.add_argument("--data", required=True, help="Kermany-layout dataset (usually the crop stage's output)")
    parser.add_argument("--encoder", default=f"models:/{names.SEGMENTATION_MODEL}@champion",
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="classify", description=__doc__)
    parser.add_argument("--loss", required=True, choices=list(CLASSIFICATION_LOSSES))
    for name in LOSS_PARAMETERS:
        parser.add_argument(f"--{name}", type=optional_float(name), default=None,
                            help="empty: the paper's value for this loss")
    add_training_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    config = ClassifierConfig(loss=args.loss, loss_params={k: getattr(args, k) for k in LOSS_PARAMETERS},
                              **{k: getattr(args, k) for k in TRAINING_ARGUMENTS})
    with store.stage_run(names.CLASSIFICATION_EXPERIMENT, run_name=f"classify-{args.loss}"):
        trained = train_classifier(config)
        version = registry.log_and_register(trained.model, names.CLASSIFIER_MODEL, trained.registry_tags())
    headline = trained.scores
    print(f"classify: registered {names.CLASSIFIER_MODEL} version {version.version} (loss {args.loss}; "
          f"val MCC {headline['val']['mcc']:.4f}, test MCC {headline['test']['mcc']:.4f}, "
          f"test ECE {headline['test']['ece']:.4f})")


if __name__ == "__main__":
    main()
