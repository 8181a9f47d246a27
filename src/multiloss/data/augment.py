"""The paper's U-Net augmentation: shifts of ±2 px, horizontal flip, rotations of ±5°.

One affine matrix per example is applied to the image (bilinear) and to its mask (nearest), so the
two stay aligned pixel for pixel.
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_SHIFT_PX = 2
MAX_ROTATION_DEG = 5.0


def affine_matrix(height: int, width: int, angle_deg, shift_x, shift_y) -> tf.Tensor:
    """The 8-vector of ImageProjectiveTransformV3 mapping output to input pixels.

    Forward map: rotate by ``angle_deg`` (counter-clockwise on screen) about the image centre, then
    shift by (shift_x, shift_y) pixels; the returned transform is its inverse, as the op wants.
    """
    angle = tf.cast(angle_deg, tf.float32) * (math.pi / 180.0)
    tx = tf.cast(shift_x, tf.float32)
    ty = tf.cast(shift_y, tf.float32)
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # With y pointing down, an on-screen counter-clockwise rotation is R = [[c, s], [-s, c]];
    # the inverse map is p_in = R^T (p_out - c - t) + c.
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    ux, uy = cx + tx, cy + ty
    a2 = cx - (a0 * ux + a1 * uy)
    b2 = cy - (b0 * ux + b1 * uy)
    zero = tf.zeros([], tf.float32)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def _warp(image: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    shape = tf.shape(image)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis], output_shape=shape[:2],
        interpolation=interpolation, fill_mode="NEAREST", fill_value=0.0)[0]


def apply_affine(image, mask, angle_deg, shift_x, shift_y, flip):
    """Flip (if ``flip``), then rotate and shift, image (H, W, C) and mask (H, W, 1) alike.

    Returns (image, mask), or the image alone when ``mask`` is None (classification images).
    """
    image = tf.convert_to_tensor(image, tf.float32)
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    shape = tf.shape(image)
    transform = affine_matrix(shape[0], shape[1], angle_deg, shift_x, shift_y)
    warped = _warp(image, transform, "BILINEAR")
    if mask is None:
        return warped
    mask = tf.convert_to_tensor(mask, tf.float32)
    mask = tf.cond(flip, lambda: tf.image.flip_left_right(mask), lambda: mask)
    return warped, _warp(mask, transform, "NEAREST")


def random_affine(image, mask, seed):
    """One random draw of the paper's augmentation; ``seed`` is a stateless [2] seed."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    angle = tf.random.stateless_uniform([], seeds[0], -MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    shift = tf.random.stateless_uniform([2], seeds[1], -MAX_SHIFT_PX, MAX_SHIFT_PX + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
    return apply_affine(image, mask, angle, shift[0], shift[1], flip)
