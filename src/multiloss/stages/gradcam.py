"""Entry point ``gradcam``: Grad-CAM heatmaps of a classifier or a model-level ensemble on a few images.

Logged as overlays (one figure per image and a grid) with a CSV of the model's predictions, in the
experiment of the run that trained the model, so the maps sit beside what they explain.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow

from multiloss import names
from multiloss.gradcam import (
    chosen_layer,
    explain_images,
    explained_model,
    images_to_explain,
)
from multiloss.stages.cli import StageParser, integer
from multiloss.tracking import registry, store


def fraction(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"parameter {name} must be a number in [0, 1], got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"parameter {name} must lie in [0, 1], got {value}")
        return value
    parse.__name__ = name
    return parse


def parser() -> StageParser:
    stage = StageParser("gradcam", __doc__)
    stage.parameter("model", help="model URI: models:/name@alias, models:/name/N, models:/m-<id>, runs:/<id>/model")
    stage.parameter("images", required=True,
                    help="a Kermany-layout dataset (per_class test images per class), a folder of images, or one image")
    stage.parameter("layer",
                    help="convolution to explain, member/layer inside a nested model; empty: the deepest Conv2D")
    stage.parameter("img_size", type=integer("img_size", 0),
                    help="0: the img_size the model was trained at (its version tag or its run's parameter)")
    stage.parameter("per_class", type=integer("per_class", 1))
    stage.parameter("seed", type=integer("seed", 0))
    stage.parameter("alpha", type=fraction("alpha"), help="overlay opacity")
    stage.parameter("threshold", type=fraction("threshold"),
                    help="heat (0..1) below which the image is left uncoloured")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    picked = images_to_explain(args.images, args.per_class, args.seed)
    store.configure()
    explained = explained_model(args.model, args.img_size)

    with store.stage_run(explained.experiment, run_name="gradcam") as active:
        model = registry.load_keras(args.model, shared=True)
        layer = chosen_layer(model, args.layer)
        store.log_params({"model": args.model, "model_version": explained.version.version if explained.version else "",
                          "images": str(Path(args.images).resolve()), "layer": layer, "img_size": explained.img_size,
                          "per_class": args.per_class, "seed": args.seed, "alpha": args.alpha,
                          "threshold": args.threshold, "n_images": len(picked)})
        mlflow.set_tags({names.STAGE_TAG: "gradcam",
                         "model_run_id": explained.run.info.run_id if explained.run else ""})
        with tempfile.TemporaryDirectory() as tmp:
            explain_images(model, picked, explained.img_size, layer, tmp, args.alpha, args.threshold)
            mlflow.log_artifacts(tmp)
        logged_to = mlflow.MlflowClient().get_experiment(active.info.experiment_id).name
        print(f"gradcam: {len(picked)} maps of {args.model} at layer {layer} ({explained.img_size} px) "
              f"logged to experiment {logged_to!r}")


if __name__ == "__main__":
    main()
