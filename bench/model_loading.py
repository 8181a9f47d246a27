"""Benchmark: loading a logged model through MLflow, with its weights read at once and without.

Every stage after segmentation loads models from the registry: crop and segment_eval the U-Nets,
classify the encoder, ensemble its members, the served pipeline all of them. This logs our U-Net
and classifier as the registry logs them (the inference copy, MLflow's tensorflow flavour, into a
local folder), then loads each with ``mlflow.tensorflow.load_model``, as tf_keras reads it and
within :func:`multiloss.tracking.keras_files.weights_read_at_once`, alternating in one process. It
also checks that both loads give the same weights.

    .venv/bin/python bench/model_loading.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np

import multiloss  # noqa: F401  (pins tf-keras before TensorFlow loads)
from multiloss.models.classifier import build_classifier
from multiloss.models.unet import build_unet
from multiloss.tracking.keras_files import weights_read_at_once
from multiloss.tracking.registry import inference_copy

WAYS = {"as tf_keras reads it": contextlib.nullcontext, "weights read at once (ours)": weights_read_at_once}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    unet = build_unet()
    models = {"U-Net": unet, "classifier": build_classifier(unet)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in models.items():
            folder = Path(tmp) / label
            mlflow.tensorflow.save_model(inference_copy(model), folder)
            size = sum(f.stat().st_size for f in folder.rglob("*.keras")) / 2**20
            seconds = {way: [] for way in WAYS}
            for _ in range(args.repeats):
                weights = []
                for way, block in WAYS.items():
                    started = time.perf_counter()
                    with block():
                        loaded = mlflow.tensorflow.load_model(str(folder))
                    seconds[way].append(time.perf_counter() - started)
                    weights.append(loaded.get_weights())
                assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True)), "the weights differ"
            plain, ours = (statistics.median(seconds[way]) for way in WAYS)
            rows.append((label, size, plain, ours))
    print(f"{args.repeats} loads each way per model, alternating; the same weights: yes\n")
    print("| model | .keras MB | as tf_keras reads it, median s | weights read at once, median s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for label, size, plain, ours in rows:
        print(f"| {label} | {size:.1f} | {plain:.2f} | {ours:.2f} | {ours / plain:.2f} |")


if __name__ == "__main__":
    main()
