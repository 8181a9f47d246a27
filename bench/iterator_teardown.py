"""Benchmark: what an epoch's dropped iterator costs with tf.data's autotuning and without it.

Keras makes a new iterator over the training data every epoch, and one over the validation data,
and drops the last. With autotuning on, dropping one waited for the autotuner's thread. This runs
our training pipeline (decode, cache, shuffle, augment, batch, prefetch) over synthetic phantoms,
consumes each epoch with a busy loop per batch standing in for a training step, and times the
deletion of its iterator: our pipeline (autotuning off) and the same pipeline with autotuning on,
alternating epoch by epoch in one process. It also checks that both yield the same batches.

    .venv/bin/python bench/iterator_teardown.py [--epochs 8] [--step-ms 90]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import multiloss  # noqa: F401  (pins tf-keras before TensorFlow loads)
from multiloss.data.datasets import image_dataset
from multiloss.data.readers import read_kermany
from multiloss.data.synthetic import write_synthetic


def autotuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)


def epoch(ds: tf.data.Dataset, step_seconds: float, work: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """One pass, a busy ``step_seconds`` per batch; returns the iterator's deletion time and the batches."""
    iterator, batches = iter(ds), []
    for images, _ in iterator:
        batches.append(images.numpy())
        started = time.perf_counter()
        while time.perf_counter() - started < step_seconds:
            work @ work
    started = time.perf_counter()
    del iterator
    return time.perf_counter() - started, batches


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=90.0, help="busy time per batch (a demo CPU step: ~90 ms)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), n_seg=1, n_cls=96, size=128, seed=0)      # the demo's classifier set
        frame = read_kermany(Path(tmp) / "chest_xray")
        make = lambda: image_dataset(frame["path"], frame["label"], img_size=64, batch_size=16,  # noqa: E731
                                     shuffle=True, augment=True, seed=0)
        pipelines = {"ours (autotuning off)": make(), "autotuning on": autotuned(make())}
        work = np.random.default_rng(0).random((400, 400), dtype=np.float32)
        seconds = {label: [] for label in pipelines}
        for _ in range(args.epochs):
            yielded = {}
            for label, ds in pipelines.items():
                deletion, yielded[label] = epoch(ds, args.step_ms / 1000, work)
                seconds[label].append(deletion)
            assert all(np.array_equal(a, b) for a, b in zip(*yielded.values(), strict=True)), "the batches differ"
    print(f"{len(frame)} images, batches of 16, {args.epochs} epochs each, alternating; the same batches: yes\n")
    print("| pipeline | iterator deletion, median s | max s |\n|---|---:|---:|")
    for label, values in seconds.items():
        print(f"| {label} | {statistics.median(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
