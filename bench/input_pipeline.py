"""Input pipeline benchmark: is the model, not the loader, the bottleneck?

Trains a small EfficientNet-B0 classifier (random init, 3 classes) on synthetic phantoms written to
disk at a realistic source resolution, and measures training images/s for

  1. ours       multiloss.data.pipeline.image_dataset (parallel decode, cache, prefetch)
  2. in-memory  the same decoded tensors held in memory (tf.data.from_tensor_slices)
  3. IDG        tf_keras ImageDataGenerator.flow_from_directory, as the published code loads

all in one process, side by side, then the model's achieved FLOP/s against this machine's measured
float32 matrix-multiply FLOP/s. Prints a table of ratios.

    .venv/bin/python bench/input_pipeline.py [--img-size 256] [--n-per-class 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf
import tf_keras

import multiloss  # noqa: F401  (pins tf-keras before TensorFlow loads)
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import image_dataset, one_hot
from multiloss.data.readers import read_kermany
from multiloss.data.synthetic import write_synthetic


class EpochTimer(tf_keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build_model(img_size: int) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.EfficientNetB0(weights=None, input_shape=(img_size, img_size, 3),
                                                 classes=len(CLASSES))
    model.compile(optimizer=tf_keras.optimizers.SGD(1e-3, momentum=0.9), loss="categorical_crossentropy")
    return model


def train_seconds(dataset_or_iterator, img_size: int, epochs: int, steps: int | None = None) -> list[float]:
    model = build_model(img_size)
    timer = EpochTimer()
    model.fit(dataset_or_iterator, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return timer.seconds


def loader_images_per_second(make_iterable, n_batches: int, batch_size: int, passes: int = 2) -> float:
    """Images/s a loader delivers with no model attached (the pass after the first, cache warm)."""
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        for i, _batch in enumerate(make_iterable()):
            if i + 1 == n_batches:
                break
        rates.append(n_batches * batch_size / (time.perf_counter() - start))
    return rates[-1]


def forward_flops(img_size: int) -> float:
    """Float operations of one forward pass (multiply-add = 2), from TensorFlow's graph profiler."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = build_model(img_size)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, img_size, img_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(),
                                            cmd="op", options=options)
    return float(profile.total_float_ops)


def matmul_flops_per_second(n: int = 2048, repeats: int = 20) -> float:
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    tf.matmul(a, b).numpy()   # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        c = tf.matmul(a, b)
    c.numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=1024, help="size of the images on disk (Kermany's are ~1000-2000 px)")
    parser.add_argument("--n-per-class", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="the first epoch is reported apart (cold cache)")
    parser.add_argument("--workdir", default=None, help="where to write the synthetic images (default: a temp folder)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is the cold one)")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-input-"))
    data = workdir / "synthetic"
    if not data.exists():
        write_synthetic(data, n_seg=1, n_cls=args.n_per_class, size=args.source_size, seed=0)
    frame = read_kermany(data / "chest_xray")
    frame = frame[frame["split"] == "train"].reset_index(drop=True)
    n = len(frame)
    paths, labels = frame["path"].tolist(), frame["label"].tolist()
    steps = n // args.batch_size
    n_trained = steps * args.batch_size
    print(f"{n} training images of {args.source_size} px on disk -> {args.img_size} px, batch {args.batch_size}, "
          f"{steps} steps/epoch, {args.epochs} epochs, {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'} inter-op threads")

    results = {}
    ours = image_dataset(paths, labels, img_size=args.img_size, batch_size=args.batch_size, shuffle=True,
                         seed=0, drop_remainder=True)
    results["ours (disk, parallel decode, cache)"] = train_seconds(ours, args.img_size, args.epochs)

    decoded = image_dataset(paths, img_size=args.img_size, batch_size=n)
    pixels = next(iter(decoded)).numpy()
    memory = (tf.data.Dataset.from_tensor_slices((pixels, one_hot(labels)))
              .shuffle(n, seed=0).batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    results["in-memory tensors"] = train_seconds(memory, args.img_size, args.epochs)

    flow_dir = workdir / "flow"
    shutil.rmtree(flow_dir, ignore_errors=True)
    for path, label in zip(paths, labels):
        (flow_dir / label).mkdir(parents=True, exist_ok=True)
        (flow_dir / label / Path(path).name).symlink_to(path)
    generator = tf_keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255.0).flow_from_directory(
        str(flow_dir), target_size=(args.img_size, args.img_size), color_mode="rgb", classes=list(CLASSES),
        class_mode="categorical", batch_size=args.batch_size, shuffle=True, seed=0, interpolation="bicubic")
    results["ImageDataGenerator.flow_from_directory"] = train_seconds(generator, args.img_size, args.epochs, steps)

    alone = {
        "ours (disk, parallel decode, cache)": loader_images_per_second(lambda: ours, steps, args.batch_size),
        "in-memory tensors": loader_images_per_second(lambda: memory, steps, args.batch_size),
        "ImageDataGenerator.flow_from_directory": loader_images_per_second(lambda: generator, steps, args.batch_size),
    }
    rate = {name: n_trained * (len(s) - 1) / sum(s[1:]) for name, s in results.items()}
    cold = {name: n_trained / s[0] for name, s in results.items()}
    memory_rate = rate["in-memory tensors"]
    idg_rate = rate["ImageDataGenerator.flow_from_directory"]
    print()
    print("| loader | training img/s, epoch 1 (cold) | training img/s, epochs 2+ | × in-memory | × ImageDataGenerator | loader alone img/s (no model) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in results:
        print(f"| {name} | {cold[name]:.1f} | {rate[name]:.1f} | {rate[name] / memory_rate:.2f} | "
              f"{rate[name] / idg_rate:.2f} | {alone[name]:.0f} |")

    fwd = forward_flops(args.img_size)
    train_per_image = 3 * fwd   # forward + backward ≈ 3 forward passes
    achieved = train_per_image * rate["ours (disk, parallel decode, cache)"]
    peak = matmul_flops_per_second()
    print()
    print("| quantity | value |")
    print("|---|---:|")
    print(f"| forward GFLOP / image at {args.img_size} px | {fwd / 1e9:.3f} |")
    print(f"| training GFLOP / image (3 × forward) | {train_per_image / 1e9:.3f} |")
    print(f"| achieved training GFLOP/s (ours) | {achieved / 1e9:.1f} |")
    print(f"| measured float32 matmul GFLOP/s (2048²) | {peak / 1e9:.1f} |")
    print(f"| achieved / matmul | {achieved / peak:.3f} |")


if __name__ == "__main__":
    main()
