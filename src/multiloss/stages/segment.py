"""Entry point ``segment``: train one lung U-Net for one loss, log it, register ``cxr-lung-seg``."""

from __future__ import annotations

import argparse

from multiloss import names
from multiloss.losses import SEGMENTATION_LOSSES
from multiloss.models.precision import POLICIES
from multiloss.segmentation import train
from multiloss.stages.cli import (
    StageParser,
    integer,
    jit_compile,
    optional_float,
    unet_size,
)
from multiloss.tracking import registry, store
from multiloss.training import STRATEGIES


def parser() -> StageParser:
    parser = StageParser("segment", description=__doc__)
    parser.parameter("loss", required=True, choices=list(SEGMENTATION_LOSSES))
    parser.parameter("data", required=True, help="image/mask pairs: images/ + masks/, or a Montgomery layout")
    parser.parameter("img_size", type=unet_size("img_size"))
    parser.parameter("epochs", type=integer("epochs", 1))
    parser.parameter("batch_size", type=integer("batch_size", 1))
    parser.parameter("lr", type=float)
    parser.parameter("seed", type=integer("seed", 0))
    for name in train.LOSS_PARAMETERS:
        parser.parameter(name, type=optional_float(name))
    parser.parameter("encoder_weights", help="none, imagenet (needs internet), or a local .h5")
    parser.parameter("bn_momentum", type=optional_float("bn_momentum"),
                     help="BatchNorm momentum (empty: the architecture's 0.99; 0.9 suits short CPU runs)")
    parser.parameter("patience", type=integer("patience", 1))
    parser.parameter("strategy", choices=STRATEGIES)
    parser.parameter("precision", choices=POLICIES,
                     help="training dtype policy: mixed_bfloat16 on Ampere+ GPUs, mixed_float16 on older ones")
    parser.parameter("jit_compile", type=jit_compile("jit_compile"), help="XLA; true only where a GPU is visible")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    prepared = train.prepare(train.UNetConfig.from_parameters(vars(args)))   # fails before a run opens
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name=f"segment-{args.loss}"):
        trained = train.train_unet(prepared)
        version = registry.log_and_register(trained.model, names.SEGMENTATION_MODEL, trained.registry_tags(),
                                            signature=trained.signature(), card=trained.card())
        print(f"segment: registered {names.SEGMENTATION_MODEL} version {version.version} "
              f"(loss {args.loss}, val Dice {trained.scores['dice']:.4f})")


if __name__ == "__main__":
    main()
