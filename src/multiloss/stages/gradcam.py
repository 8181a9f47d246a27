"""Entry point ``gradcam``: Grad-CAM heatmaps (SPEC §10) of a classifier or a model-level ensemble on a
few images, logged as overlays (one figure per image and a grid) with a CSV of the predictions."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import image_dataset
from multiloss.gradcam import (
    default_layer,
    find_layer,
    gradcam,
    images_to_explain,
    overlay_figure,
    overlay_grid,
)
from multiloss.stages.cli import integer
from multiloss.tracking import registry, store

BATCH_SIZE = 16
DEFAULT_EXPERIMENT = names.CLASSIFICATION_EXPERIMENT


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gradcam", description=__doc__)
    parser.add_argument("--model", default=f"models:/{names.CLASSIFIER_MODEL}@champion",
                        help="model URI: models:/name@alias, models:/name/N, models:/m-<id>, runs:/<id>/model")
    parser.add_argument("--images", required=True,
                        help="a Kermany-layout dataset (per_class test images per class), a folder of images, or one image")
    parser.add_argument("--layer", default="", help="convolution to explain, member/layer inside a nested model; "
                                                    "empty: the deepest Conv2D")
    parser.add_argument("--img-size", type=integer("img_size", 0), default=0,
                        help="0: the img_size the model was trained at (its version tag or its run's parameter)")
    parser.add_argument("--per-class", type=integer("per_class", 1), default=2)
    parser.add_argument("--seed", type=integer("seed", 0), default=0)
    parser.add_argument("--alpha", type=fraction("alpha"), default=0.4, help="overlay opacity")
    parser.add_argument("--threshold", type=fraction("threshold"), default=0.0,
                        help="heat (0..1) below which the image is left uncoloured")
    return parser.parse_args(argv)


def source_run(uri: str) -> tuple[ModelVersion | None, Run | None]:
    """(registered version or None, the run that logged the model or None) behind a model URI."""
    client = mlflow.MlflowClient()
    number = registry.resolve_version(uri)
    if number:
        name = uri.removeprefix("models:/").partition("@")[0].partition("/")[0]
        version = client.get_model_version(name, number)
        return version, client.get_run(version.run_id) if version.run_id else None
    if uri.startswith("runs:/"):
        return None, client.get_run(uri.removeprefix("runs:/").split("/")[0])
    if uri.startswith("models:/m-"):
        logged = mlflow.get_logged_model(uri.removeprefix("models:/").split("/")[0])
        return None, client.get_run(logged.source_run_id) if logged.source_run_id else None
    return None, None


def trained_img_size(uri: str, version: ModelVersion | None, run: Run | None) -> int:
    """The image size the model was trained at: its version's ``img_size`` tag, else its run's parameter."""
    for where, values in (("version tag", version.tags if version else {}),
                          ("run parameter", run.data.params if run else {})):
        text = values.get("img_size")
        if text:
            try:
                return int(float(text))
            except ValueError:
                raise SystemExit(f"gradcam: {uri}: {where} img_size is {text!r}, not a number; "
                                 "pass the parameter img_size") from None
    raise SystemExit(f"gradcam: cannot tell the image size {uri} was trained at (no img_size tag or run "
                     "parameter); pass the parameter img_size")


def title(label: str, probabilities: np.ndarray) -> str:
    top = int(probabilities.argmax())
    predicted = f"predicted {CLASSES[top]} ({probabilities[top]:.2f})"
    return f"true {label} · {predicted}" if label else predicted


def main(argv=None) -> None:
    args = parse_args(argv)
    picked = images_to_explain(args.images, args.per_class, args.seed)
    store.configure()
    version, run = source_run(args.model)
    img_size = args.img_size or trained_img_size(args.model, version, run)
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id).name if run else DEFAULT_EXPERIMENT

    with store.stage_run(experiment, run_name="gradcam") as active:
        model = registry.load_keras(args.model)
        layer = args.layer or default_layer(model)
        find_layer(model, layer)
        store.log_params({"model": args.model, "model_version": version.version if version else "",
                             "images": str(Path(args.images).resolve()), "layer": layer, "img_size": img_size,
                             "per_class": args.per_class, "seed": args.seed, "alpha": args.alpha,
                             "threshold": args.threshold, "n_images": len(picked)})
        mlflow.set_tags({names.STAGE_TAG: "gradcam", "model_run_id": run.info.run_id if run else ""})

        dataset = image_dataset(picked["path"], img_size=img_size, batch_size=BATCH_SIZE, cache=False)
        images = np.concatenate(list(dataset.as_numpy_iterator()))
        probabilities = model.predict(images, batch_size=BATCH_SIZE, verbose=0)
        heatmaps = gradcam(model, images, layer, class_index=probabilities.argmax(1), batch_size=BATCH_SIZE)

        table = picked.copy()
        table["predicted"] = [CLASSES[k] for k in probabilities.argmax(1)]
        table[PROBABILITY_COLUMNS] = probabilities
        table["layer"] = layer
        titles = [title(label, p) for label, p in zip(picked["label"], probabilities)]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "gradcam"
            folder.mkdir()
            for k, (path, heatmap) in enumerate(zip(picked["path"], heatmaps)):
                overlay_figure(images[k], heatmap, folder / f"{k:03d}_{Path(path).stem}.png", titles[k],
                               args.alpha, args.threshold)
            overlay_grid(images, heatmaps, titles, Path(tmp) / "gradcam_grid.png", args.alpha, args.threshold)
            table.to_csv(Path(tmp) / "gradcam.csv", index=False)
            mlflow.log_artifacts(tmp)
        logged_to = mlflow.MlflowClient().get_experiment(active.info.experiment_id).name
        print(f"gradcam: {len(picked)} maps of {args.model} at layer {layer} ({img_size} px) "
              f"logged to experiment {logged_to!r}")


if __name__ == "__main__":
    main()
