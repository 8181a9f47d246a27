"""tf.data input pipelines for classification images and segmentation image/mask pairs.

Decoding goes through :mod:`multiloss.data.imageio` (the one place that converts 16-bit, RGB and
RGBA files), in parallel; decoded, resized 8-bit images are cached, so from the second epoch on the
model, not the loader, sets the pace. Shuffling and augmentation come after the cache and change
every epoch; prefetch overlaps loading with training.

Memory does not grow with the data set: a set whose decoded images pass ``MEMORY_CACHE_BYTES`` is
cached in a file instead (in this process's scratch folder, shared by every dataset of the same
images and size, so later trainings in the process read it back without decoding), and the
shuffle buffer holds at most ``SHUFFLE_BUFFER_BYTES`` of images.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from typing import Sequence

import cv2
import numpy as np
import tensorflow as tf

from multiloss.data.augment import random_affine
from multiloss.data.classes import CLASSES
from multiloss.data.imageio import DataError, read_gray, read_mask

# With tf.data's autotuning off (see without_autotune), an AUTOTUNE value stays at TensorFlow's
# starting choice instead of being tuned.
AUTOTUNE = tf.data.AUTOTUNE
MEMORY_CACHE_BYTES = 2 ** 30     # decoded images held in memory per dataset; past it, a file cache
SHUFFLE_BUFFER_BYTES = 2 ** 29   # images in a shuffle buffer; a smaller set is shuffled whole
_scratch: list[str] = []         # this process's folder of file caches, removed at exit


def load_image(path: str, img_size: int) -> np.ndarray:
    """8-bit grayscale, resized (bicubic, as the paper) to img_size × img_size."""
    return resize_gray(read_gray(path), img_size)


def resize_gray(pixels: np.ndarray, img_size: int) -> np.ndarray:
    if pixels.shape != (img_size, img_size):
        pixels = cv2.resize(pixels, (img_size, img_size), interpolation=cv2.INTER_CUBIC)
    return pixels


def load_mask(paths, img_size: int) -> np.ndarray:
    """0/1 uint8 mask at img_size: resized as a fraction (bilinear), then thresholded at one half."""
    mask = read_mask(paths).astype(np.float32)
    if mask.shape != (img_size, img_size):
        mask = cv2.resize(mask, (img_size, img_size), interpolation=cv2.INTER_LINEAR)
    return (mask > 0.5).astype(np.uint8)


def label_indices(labels: Sequence[str], source: str = "labels") -> np.ndarray:
    """Class indices in CLASSES order; an unknown label is an error naming it and ``source``."""
    index = {name: i for i, name in enumerate(CLASSES)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"{source}: unknown class label(s) {unknown}; expected one of {list(CLASSES)}")
    return np.array([index[name] for name in labels], dtype=int)


def one_hot(labels: Sequence[str]) -> np.ndarray:
    """One-hot targets in CLASSES order."""
    return np.eye(len(CLASSES), dtype=np.float32)[label_indices(labels)]


def _scratch_folder() -> str:
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix=f"multiloss-cache-{os.getpid()}-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def cache_target(n: int, out_shape, identity: Sequence) -> str:
    """Where a dataset of ``n`` uint8 arrays shaped ``out_shape`` is cached: '' (memory) while it
    fits in MEMORY_CACHE_BYTES, else a file named by ``identity`` (what was decoded, at what size)."""
    if n * int(np.prod(out_shape)) <= MEMORY_CACHE_BYTES:
        return ""
    digest = hashlib.sha256(repr([*identity, tuple(out_shape)]).encode()).hexdigest()[:20]
    return os.path.join(_scratch_folder(), digest)


def shuffle_buffer(n: int, out_shape) -> int:
    """Elements a shuffle buffer holds: all ``n`` when they fit in SHUFFLE_BUFFER_BYTES."""
    return max(1, min(n, SHUFFLE_BUFFER_BYTES // int(np.prod(out_shape))))


def _decoded(n: int, load, out_shape, cache: bool | str, identity: Sequence = ()) -> tf.data.Dataset:
    """Element i of a dataset of n decoded uint8 arrays, decoded in parallel by ``load(i)``;
    ``cache`` True: in memory or, past MEMORY_CACHE_BYTES, in a file named by ``identity``."""
    def load_tf(i):
        pixels = tf.numpy_function(lambda j: load(int(j)), [i], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, out_shape)

    ds = tf.data.Dataset.range(n).map(load_tf, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache(cache_target(n, out_shape, identity) if cache is True else str(cache))
    return ds


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` without tf.data's autotuning model. Its background thread made every iterator's
    deletion wait up to about a second (bench/iterator_teardown.py), and a fit drops iterators every
    epoch (Keras' own fit one for training and two a validation; training.fit_keeping_best one a
    validation): seconds of every fit. What a pipeline
    yields, and in what order, is the same either way (every map is deterministic)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def model_input(pixels: np.ndarray, channels: int = 3) -> np.ndarray:
    """uint8 images (N, S, S) → float32 (N, S, S, channels) in [0, 1], as the datasets feed them."""
    image = np.asarray(pixels, np.float32)[..., np.newaxis] / np.float32(255.0)
    return np.repeat(image, channels, axis=-1)


def _to_float(pixels: tf.Tensor, channels: int) -> tf.Tensor:
    image = tf.cast(pixels, tf.float32)[..., tf.newaxis] / 255.0
    return tf.repeat(image, channels, axis=-1) if channels > 1 else image


def image_dataset(paths: Sequence[str], labels: Sequence[str] | None = None, *, img_size: int,
                  batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0,
                  channels: int = 3, cache: bool | str = True, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of images (B, S, S, channels) in [0, 1], with one-hot labels if ``labels`` given.

    ``augment``: the same random flip/shift/rotation as the U-Net's, new every epoch.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError("image_dataset: no images given")
    size = (img_size, img_size)
    ds = _decoded(len(paths), lambda i: load_image(paths[i], img_size), size, cache, ("image", paths))
    if labels is not None:
        if len(labels) != len(paths):
            raise ValueError(f"image_dataset: {len(paths)} paths but {len(labels)} labels")
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(one_hot(list(labels))))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer(len(paths), size), seed=seed, reshuffle_each_iteration=True)
    if labels is None:
        ds = ds.map(lambda x: (_to_float(x, channels),), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (_to_float(x, channels), y), num_parallel_calls=AUTOTUNE)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda example, s: (random_affine(example[0], None, s), *example[1:]), num_parallel_calls=AUTOTUNE)
    if labels is None:
        ds = ds.map(lambda x: x)
    return without_autotune(ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE))


def mask_dataset(image_paths: Sequence[str], mask_paths: Sequence, *, img_size: int,
                 batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0,
                 channels: int = 3, cache: bool | str = True,
                 drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (image (B, S, S, channels) in [0, 1], mask (B, S, S, 1) in {0, 1}).

    ``mask_paths[i]`` is one path or a tuple of paths to OR (Montgomery's left and right lungs).
    With ``augment``, each example gets its own random flip/shift/rotation, new every epoch.
    """
    image_paths = [str(p) for p in image_paths]
    mask_paths = list(mask_paths)
    if not image_paths:
        raise DataError("mask_dataset: no images given")
    if len(mask_paths) != len(image_paths):
        raise ValueError(f"mask_dataset: {len(image_paths)} images but {len(mask_paths)} masks")
    size = (img_size, img_size)

    def load_pair(i: int) -> np.ndarray:
        return np.stack([load_image(image_paths[i], img_size), load_mask(mask_paths[i], img_size)])

    ds = _decoded(len(image_paths), load_pair, (2, *size), cache, ("pair", image_paths, [str(m) for m in mask_paths]))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer(len(image_paths), (2, *size)), seed=seed, reshuffle_each_iteration=True)

    def split(pair):
        return _to_float(pair[0], channels), tf.cast(pair[1], tf.float32)[..., tf.newaxis]

    ds = ds.map(split, num_parallel_calls=AUTOTUNE)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda pair, s: random_affine(pair[0], pair[1], s), num_parallel_calls=AUTOTUNE)
    return without_autotune(ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE))
