"""tf.data pipelines and the paper's augmentation: values, shapes, and image/mask alignment."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from multiloss.data.augment import apply_affine, random_affine
from multiloss.data.datasets import image_dataset, load_image, mask_dataset, one_hot
from multiloss.data.imageio import DataError
from tests.conftest import write_gray


def blob_mask(size=48, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (int(rng.integers(15, 33)), int(rng.integers(15, 33))), (12, 7), float(rng.integers(0, 180)), 0, 360, 1, -1)
    return mask


def test_image_dataset_resizes_bicubic_and_scales_to_unit(tmp_path):
    paths = [write_gray(tmp_path / f"x{i}.png", size=(50, 70), seed=i) for i in range(3)]
    ds = image_dataset(paths, ["normal", "viral", "bacterial"], img_size=32, batch_size=2)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(2, 32, 32, 3), (1, 32, 32, 3)]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    reference = cv2.resize(cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE), (32, 32), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(images[1, :, :, 0], reference / 255.0, atol=1e-6)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])


def test_shuffle_is_seeded_and_changes_each_epoch(tmp_path):
    paths = [write_gray(tmp_path / f"x{i}.png", size=(8, 8), value=i * 10) for i in range(12)]
    ds = image_dataset(paths, img_size=8, batch_size=12, shuffle=True, seed=5, channels=1)
    first, second = (next(iter(ds)).numpy()[:, 0, 0, 0] for _ in range(2))
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    again = image_dataset(paths, img_size=8, batch_size=12, shuffle=True, seed=5, channels=1)
    np.testing.assert_array_equal(next(iter(again)).numpy()[:, 0, 0, 0], first)


def test_unknown_label_and_unreadable_file_are_named(tmp_path):
    with pytest.raises(DataError, match="unknown class label"):
        one_hot(["normal", "covid"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage")
    ds = image_dataset([bad], img_size=8, batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"broken\.png: not a readable image"):
        list(ds)


@pytest.mark.parametrize("angle, tx, ty, flip", [(5.0, 2, -1, False), (-3.5, 0, 2, True), (0.0, -2, 0, False)])
def test_affine_matches_opencv(angle, tx, ty, flip):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((40, 40)).astype(np.float32), (7, 7), 2)
    source = image[:, ::-1] if flip else image
    matrix = cv2.getRotationMatrix2D((19.5, 19.5), angle, 1.0)
    matrix[:, 2] += (tx, ty)
    expected = cv2.warpAffine(source, matrix, (40, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ours, _ = apply_affine(image[..., None], np.zeros((40, 40, 1)), angle, tx, ty, tf.constant(flip))
    inner = (slice(4, -4), slice(4, -4))   # borders differ only in how each library extends the edge
    np.testing.assert_allclose(ours.numpy()[..., 0][inner], expected[inner], atol=2e-3)


def test_augmentation_moves_image_and_mask_together(tmp_path):
    images, masks = [], []
    for i in range(6):
        mask = blob_mask(seed=i)
        images.append(write_gray(tmp_path / f"img{i}.png", value=0))
        cv2.imwrite(str(images[-1]), mask * 255)          # the image *is* the mask, drawn in gray
        masks.append(tmp_path / f"mask{i}.png")
        cv2.imwrite(str(masks[-1]), mask * 255)
    plain = mask_dataset(images, masks, img_size=48, batch_size=6, channels=1)
    augmented = mask_dataset(images, masks, img_size=48, batch_size=6, augment=True, seed=1, channels=1)
    x0, y0 = next(iter(plain))
    x1, y1 = next(iter(augmented))
    x2, _ = next(iter(augmented))
    assert set(np.unique(y1)) <= {0.0, 1.0}
    assert not np.array_equal(y0.numpy(), y1.numpy())      # something moved
    assert not np.array_equal(x1.numpy(), x2.numpy())      # and moves differently each epoch
    for image, mask in zip(x1.numpy(), y1.numpy()):
        drawn = image[..., 0] > 0.5
        inter = np.logical_and(drawn, mask[..., 0] > 0.5).sum()
        union = np.logical_or(drawn, mask[..., 0] > 0.5).sum()
        assert inter / union > 0.95


def test_random_affine_draws_within_the_papers_ranges():
    marker = np.zeros((41, 41, 1), np.float32)
    marker[20, 20] = 1.0   # the centre pixel moves only by the shift (rotation is about the centre)
    for s in range(20):
        _, moved = random_affine(marker, marker, tf.constant([s, 7], tf.int64))
        y, x = np.argwhere(moved.numpy()[..., 0] > 0)[0]
        assert abs(y - 20) <= 2 and abs(x - 20) <= 2


def test_mask_dataset_reads_left_or_right(montgomery_dir):
    from multiloss.data.readers import read_montgomery
    frame = read_montgomery(montgomery_dir)
    _, mask = next(iter(mask_dataset(frame["image"], frame["masks"], img_size=48, batch_size=2)))
    # leftMask box rows 5:35 cols 30:44, rightMask rows 5:35 cols 4:18 in a 40x48 image
    expected = np.zeros((40, 48), np.float32)
    expected[5:35, 30:44] = 1
    expected[5:35, 4:18] = 1
    expected = cv2.resize(expected, (48, 48), interpolation=cv2.INTER_LINEAR) > 0.5
    np.testing.assert_array_equal(mask.numpy()[0, ..., 0], expected)


def test_load_image_keeps_size_when_it_matches(tmp_path):
    path = write_gray(tmp_path / "x.png", size=(16, 16), seed=3)
    np.testing.assert_array_equal(load_image(str(path), 16), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_image_augmentation_changes_images_each_epoch_and_keeps_labels(tmp_path):
    paths = [write_gray(tmp_path / f"x{i}.png", size=(32, 32), seed=i) for i in range(4)]
    ds = image_dataset(paths, ["normal", "viral", "bacterial", "viral"], img_size=32, batch_size=4,
                       augment=True, seed=3)
    (x1, y1), (x2, y2) = next(iter(ds)), next(iter(ds))
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert x1.shape == (4, 32, 32, 3) and not np.allclose(x1.numpy(), x2.numpy())
    plain = next(iter(image_dataset(paths, img_size=32, batch_size=4, augment=True, seed=3)))
    assert plain.shape == (4, 32, 32, 3)


def test_a_set_past_the_memory_limit_is_cached_in_a_file_and_reads_back_alike(tmp_path, monkeypatch):
    """Memory must not grow with the data set: past MEMORY_CACHE_BYTES the decoded images go to a
    file, which a later dataset of the same images and size reads back without decoding, even
    after an epoch that stopped early."""
    from multiloss.data import datasets

    paths = [write_gray(tmp_path / f"x{i}.png", size=(20, 30), seed=i) for i in range(6)]
    in_memory = np.concatenate([b[0] for b in image_dataset(paths, img_size=16, batch_size=4)])
    monkeypatch.setattr(datasets, "MEMORY_CACHE_BYTES", 5 * 16 * 16)        # five images fit, six do not
    assert datasets.cache_target(5, (16, 16), ["image", paths[:5]]) == ""
    target = datasets.cache_target(6, (16, 16), ["image", paths])
    assert target and target != datasets.cache_target(6, (24, 24), ["image", paths])

    decoded = []
    real_read = datasets.read_gray
    monkeypatch.setattr(datasets, "read_gray", lambda path: decoded.append(path) or real_read(path))
    first = image_dataset(paths, img_size=16, batch_size=4)
    next(iter(first))                                    # an epoch cut short leaves no half cache behind
    full = np.concatenate([b[0] for b in first])
    assert any(name.endswith(".index") for name in os.listdir(os.path.dirname(target)))
    decoded.clear()
    again = np.concatenate([b[0] for b in image_dataset(paths, img_size=16, batch_size=4)])
    assert decoded == []                                 # read back from the file, not decoded again
    np.testing.assert_array_equal(full, in_memory)
    np.testing.assert_array_equal(again, in_memory)


def test_the_shuffle_buffer_is_bounded_in_bytes_and_still_yields_every_image_once(tmp_path, monkeypatch):
    from multiloss.data import datasets

    paths = [write_gray(tmp_path / f"x{i}.png", size=(8, 8), value=i * 10) for i in range(12)]
    assert datasets.shuffle_buffer(12, (8, 8)) == 12
    monkeypatch.setattr(datasets, "SHUFFLE_BUFFER_BYTES", 3 * 8 * 8)
    assert datasets.shuffle_buffer(12, (8, 8)) == 3 and datasets.shuffle_buffer(12, (2, 8, 8)) == 1
    ds = image_dataset(paths, img_size=8, batch_size=12, shuffle=True, seed=5, channels=1)
    order = np.rint(next(iter(ds)).numpy()[:, 0, 0, 0] * 255).astype(int).tolist()
    assert sorted(order) == [i * 10 for i in range(12)] and order != sorted(order)


def with_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)


def test_pipelines_run_without_autotuning_and_yield_what_an_autotuned_one_yields(tmp_path, montgomery_dir):
    """Autotuning's model thread made each dropped iterator wait about a second; turning it off
    must change nothing a training reads: the same images, augmentations and order, epoch by epoch."""
    paths = [write_gray(tmp_path / f"x{i}.png", size=(24, 24), seed=i) for i in range(10)]
    labels = ["normal", "viral", "bacterial", "viral", "normal"] * 2
    from multiloss.data.readers import read_montgomery
    frame = read_montgomery(montgomery_dir)
    made = {"images": lambda: image_dataset(paths, labels, img_size=16, batch_size=4, shuffle=True, augment=True, seed=2),
            "pairs": lambda: mask_dataset(frame["image"], frame["masks"], img_size=16, batch_size=2, shuffle=True,
                                          augment=True, seed=2)}
    for kind, make in made.items():
        ours, tuned = make(), with_autotune(make())
        assert ours.options().autotune.enabled is False and tuned.options().autotune.enabled is True, kind
        for _ in range(2):                     # two epochs: the reshuffle and the new draws agree too
            for a, b in zip(ours.as_numpy_iterator(), tuned.as_numpy_iterator(), strict=True):
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y, err_msg=kind)
