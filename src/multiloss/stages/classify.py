"""Entry point ``classify``: train one classifier for one loss on a registered U-Net's encoder, score
it on validation and test, log everything, register a ``cxr-classifier`` version."""

from __future__ import annotations

import argparse
import dataclasses

from multiloss import names, variants
from multiloss.classification.train import (
    LOSS_PARAMETERS,
    ClassifierConfig,
    pin_encoder,
    register,
    train_classifier,
)
from multiloss.data.readers import read_kermany
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.metrics.classification import CI_METHODS
from multiloss.models.precision import POLICIES
from multiloss.stages.cli import (
    StageParser,
    integer,
    jit_compile,
    optional_float,
    unet_size,
)
from multiloss.tracking import store
from multiloss.training import STRATEGIES

# The training arguments: the fields of ClassifierConfig that are stage parameters (MLproject
# declares them and their defaults), but the loss and its parameters. The sweep stage forwards them
# to every trial; the other fields (SGD momentum, the validation split) keep the library's values.
TRAINING_ARGUMENTS = tuple(field.name for field in dataclasses.fields(ClassifierConfig)
                           if field.name not in ("loss", "loss_params") and field.default is dataclasses.MISSING)
# How the command line reads each training argument.
_READ = {
    "data": {"required": True, "help": "Kermany-layout dataset (usually the crop stage's output)"},
    "encoder": {"help": "model URI of the U-Net whose encoder is transferred"},
    "img_size": {"type": unet_size("img_size"), "help": "a multiple of 32 (the encoder halves it five times)"},
    "epochs": {"type": integer("epochs", 1)},
    "batch_size": {"type": integer("batch_size", 1)},
    "lr": {"type": float},
    "seed": {"type": integer("seed", 0)},
    "augment": {"choices": ("none", "paper"), "help": "paper: the U-Net's flip/±2 px/±5° augmentation on training images"},
    "class_weights": {"choices": ("none", "balanced")},
    "ci_method": {"choices": CI_METHODS},
    "bn_momentum": {"type": optional_float("bn_momentum")},
    "patience": {"type": integer("patience", 1)},
    "strategy": {"choices": STRATEGIES},
    "precision": {"choices": POLICIES, "help": "training dtype policy: mixed_bfloat16 on Ampere+ GPUs, mixed_float16 "
                                              "on older ones; the registered model is float32"},
    "jit_compile": {"type": jit_compile("jit_compile"), "help": "XLA; true only where a GPU is visible"},
    "variant": {"help": "corrected, published, or flaws of the published code to reproduce (comma-separated): "
                        + ", ".join(f.name for f in variants.FLAWS if f.scope == variants.LOSS)},
}


def add_training_arguments(parser: StageParser) -> None:
    """The classifier training parameters, shared with the sweep stage."""
    for name in TRAINING_ARGUMENTS:
        parser.parameter(name, **_READ[name])


def training_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The parsed training arguments, as ClassifierConfig's keyword arguments."""
    return {name: getattr(args, name) for name in TRAINING_ARGUMENTS}


def parser() -> StageParser:
    parser = StageParser("classify", description=__doc__)
    parser.parameter("loss", required=True, choices=list(CLASSIFICATION_LOSSES))
    for name in LOSS_PARAMETERS:
        parser.parameter(name, type=optional_float(name), help="empty: the paper's value for this loss")
    add_training_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def check_data(stage: str, data: str) -> None:
    """Refuse a ``data`` that is not a Kermany-layout dataset before any run exists, naming the
    parameter and the path (MLproject declares it a string: MLflow's own check of a ``path``
    fails the launcher after it created the run, which then stays RUNNING)."""
    try:
        read_kermany(data)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{stage}: parameter data: {err}") from None


def check_variant(stage: str, variant: str, loss: str) -> None:
    """Refuse a variant that cannot act on ``loss``, before any run exists."""
    try:
        variants.for_training(variant, loss)
    except ValueError as err:
        raise SystemExit(f"{stage}: {err}") from None


def main(argv=None) -> None:
    args = parse_args(argv)
    check_variant("classify", args.variant, args.loss)
    check_data("classify", args.data)
    store.configure()                  # the registry the encoder is read from is this store's
    try:
        encoder = pin_encoder(args.encoder)[0]
    except ValueError as err:
        raise SystemExit(f"classify: {err}") from None
    config = ClassifierConfig(loss=args.loss, loss_params={k: getattr(args, k) for k in LOSS_PARAMETERS},
                              **{**training_arguments(args), "encoder": encoder})
    suffix = "" if args.variant == variants.CORRECTED else f"-{args.variant}"
    with store.stage_run(names.CLASSIFICATION_EXPERIMENT, run_name=f"classify-{args.loss}{suffix}"):
        trained = train_classifier(config)
        version = register(trained)
    headline = trained.scores
    print(f"classify: registered {names.CLASSIFIER_MODEL} version {version.version} (loss {args.loss}, "
          f"variant {trained.loss.variant.name}; "
          f"val MCC {headline['val']['mcc']:.4f}, test MCC {headline['test']['mcc']:.4f}, "
          f"test ECE {headline['test']['ece']:.4f})")


if __name__ == "__main__":
    main()
