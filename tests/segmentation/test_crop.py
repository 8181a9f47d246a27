"""Lung cropping: AND ensemble, bounding box, contrast stretch."""

import numpy as np
import pytest

from multiloss.segmentation.crop import (
    and_masks,
    contrast_stretch,
    crop_lungs,
    lung_box,
    scale_box,
)


def test_and_keeps_only_pixels_every_model_marks():
    probs = np.array([[[0.9, 0.9, 0.2]], [[0.6, 0.4, 0.9]], [[0.7, 0.8, 0.8]]])
    np.testing.assert_array_equal(and_masks(probs), [[True, False, False]])


def test_box_with_margin_clipped_to_the_image():
    mask = np.zeros((100, 50), bool)
    mask[10:60, 1:30] = True
    assert lung_box(mask, margin=0.0) == (10, 1, 60, 30)
    assert lung_box(mask, margin=0.05) == (5, 0, 65, 32)   # 5 rows, 2.5 -> 2 columns of margin
    assert lung_box(np.zeros((4, 4), bool)) is None


def test_box_scales_from_mask_grid_to_original():
    assert scale_box((8, 16, 24, 32), (32, 32), (64, 128)) == (16, 64, 48, 128)


def test_contrast_stretch_saturates_one_percent_each_side():
    image = np.arange(1000, dtype=np.float32)
    stretched = contrast_stretch(image)
    assert stretched.min() == 0 and stretched.max() == 1
    assert (stretched == 0).sum() == pytest.approx(10, abs=1)
    assert (stretched == 1).sum() == pytest.approx(10, abs=1)
    assert np.all(np.diff(stretched) >= 0)
    assert not contrast_stretch(np.full((4, 4), 7.0)).any()


def test_crop_cuts_the_box_from_the_full_resolution_image():
    original = np.zeros((200, 200), np.uint8)
    original[50:150, 40:120] = np.linspace(30, 220, 80, dtype=np.uint8)[None, :]
    mask = np.zeros((50, 50), bool)
    mask[12:38, 10:30] = True                  # the same region at a quarter of the resolution
    cropped = crop_lungs(original, mask, img_size=32, margin=0.0)
    assert cropped.box == (48, 40, 152, 120)
    assert cropped.image.shape == (32, 32) and cropped.image.dtype == np.uint8
    assert cropped.image.max() == 255 and cropped.image.min() == 0


def test_empty_mask_keeps_the_whole_image():
    original = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    cropped = crop_lungs(original, np.zeros((16, 16), bool), img_size=32)
    assert cropped.box is None and cropped.image.shape == (32, 32)
