"""Lung cropping (paper §2.2): AND the top models' masks, keep the lung bounding box, resize
(bicubic), stretch contrast by saturating the darkest and brightest 1 %, normalise to [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SATURATE = 0.01      # share of pixels saturated at each end by the contrast stretch
BOX_MARGIN = 0.02    # bounding-box margin, as a share of the image side


def and_masks(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bitwise AND of K thresholded masks shaped (K, H, W): lung only where every model agrees."""
    return np.all(np.asarray(probabilities) > threshold, axis=0)


def lung_box(mask: np.ndarray, margin: float = BOX_MARGIN) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), end-exclusive, of the mask's foreground plus a margin; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    pad_y, pad_x = round(margin * height), round(margin * width)
    return (max(rows[0] - pad_y, 0), max(cols[0] - pad_x, 0),
            min(rows[-1] + 1 + pad_y, height), min(cols[-1] + 1 + pad_x, width))


def scale_box(box: tuple[int, int, int, int], from_shape: tuple[int, int], to_shape: tuple[int, int]):
    """A box found on a mask of ``from_shape`` in the pixel grid of ``to_shape`` (rounded outward)."""
    sy, sx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    top, left, bottom, right = box
    return (int(np.floor(top * sy)), int(np.floor(left * sx)),
            min(int(np.ceil(bottom * sy)), to_shape[0]), min(int(np.ceil(right * sx)), to_shape[1]))


def contrast_stretch(image: np.ndarray, saturate: float = SATURATE) -> np.ndarray:
    """Float image in [0, 1]: the ``saturate`` quantile maps to 0, the ``1 − saturate`` one to 1."""
    image = np.asarray(image, np.float32)
    low, high = np.quantile(image, [saturate, 1 - saturate])
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


@dataclass(frozen=True)
class Cropped:
    image: np.ndarray                 # uint8, img_size × img_size, contrast-stretched
    box: tuple[int, int, int, int] | None   # in the original image's pixels; None: mask was empty


def crop_lungs(original: np.ndarray, mask: np.ndarray, img_size: int, margin: float = BOX_MARGIN) -> Cropped:
    """Crop ``original`` (any size) to the box of ``mask`` (any size, same framing), resize, stretch.

    An empty mask leaves the image uncropped (resized and stretched only); the caller counts it.
    """
    box = lung_box(mask, margin)
    if box is not None:
        box = scale_box(box, mask.shape, original.shape[:2])
        top, left, bottom, right = box
        original = original[top:bottom, left:right]
    resized = cv2.resize(original, (img_size, img_size), interpolation=cv2.INTER_CUBIC)
    stretched = contrast_stretch(resized)
    return Cropped(np.rint(stretched * 255).astype(np.uint8), box)
