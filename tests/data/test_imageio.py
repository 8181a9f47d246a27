"""Image and mask reading: conversions to 8-bit grayscale and errors that name the file."""

import cv2
import numpy as np
import pytest

from multiloss.data.imageio import DataError, read_gray, read_mask, write_image
from tests.conftest import write_gray, write_mask


def test_twelve_bit_png_in_sixteen_bit_container_is_scaled_by_its_depth(tmp_path):
    pixels = np.array([[0, 1000], [2000, 4095]], np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), pixels)
    out = read_gray(tmp_path / "x.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.rint(pixels / 4095 * 255).astype(np.uint8))


def test_full_range_sixteen_bit_png(tmp_path):
    pixels = np.array([[0, 65535], [32768, 257]], np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), pixels)
    np.testing.assert_array_equal(read_gray(tmp_path / "x.png"), [[0, 255], [128, 1]])


def test_rgb_and_rgba_become_gray_like_opencv(tmp_path):
    rng = np.random.default_rng(1)
    bgra = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    cv2.imwrite(str(tmp_path / "rgb.png"), bgra[:, :, :3])
    expected = cv2.cvtColor(bgra[:, :, :3], cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(read_gray(tmp_path / "rgba.png"), expected)
    np.testing.assert_array_equal(read_gray(tmp_path / "rgb.png"), expected)


def test_truncated_jpeg_is_named(tmp_path):
    path = write_gray(tmp_path / "person1_bacteria_1.jpeg", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"person1_bacteria_1\.jpeg: truncated JPEG"):
        read_gray(path)


def _jpeg(pixels, progressive=False) -> bytes:
    ok, encoded = cv2.imencode(".jpeg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90,
                                                 cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_bytes_after_the_end_of_image_marker_are_not_a_truncation(tmp_path, progressive):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)
    data = _jpeg(pixels, progressive)
    path = tmp_path / "person3_virus_15.jpeg"
    path.write_bytes(data + b"\x00" * 7 + b"exporter trailer\xff\x00")
    np.testing.assert_array_equal(read_gray(path), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))


def test_a_truncated_jpeg_with_a_thumbnail_and_a_trailer_is_still_truncated(tmp_path):
    """The thumbnail's own end-of-image marker and the appended bytes must not pass for the image's."""
    rng = np.random.default_rng(1)
    thumbnail = _jpeg(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    app1 = b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumbnail
    data = _jpeg(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    whole = data[:2] + app1 + data[2:]
    path = tmp_path / "IM-0001-0001.jpeg"
    path.write_bytes(whole + b"trailer")
    assert read_gray(path).shape == (64, 64)             # whole, with both: fine
    path.write_bytes(whole[: len(whole) * 2 // 3] + b"trailer")
    with pytest.raises(DataError, match=r"IM-0001-0001\.jpeg: truncated JPEG"):
        read_gray(path)


def test_truncated_png_is_named(tmp_path):
    path = write_gray(tmp_path / "MCUCXR_0001_0.png", size=(64, 64))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"MCUCXR_0001_0\.png: truncated PNG"):
        read_gray(path)


@pytest.mark.parametrize("content, problem", [(b"", "file is empty"), (b"not an image at all", "not a readable image")])
def test_unreadable_files_are_named(tmp_path, content, problem):
    path = tmp_path / "IM-0001-0001.jpeg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"IM-0001-0001\.jpeg: {problem}"):
        read_gray(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.png: cannot read file"):
        read_gray(tmp_path / "nope.png")


def test_mask_threshold_works_for_zero_one_and_zero_255(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.array([[0, 1], [1, 0]], np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.array([[0, 255], [0, 0]], np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), [[False, True], [True, False]])
    np.testing.assert_array_equal(read_mask([tmp_path / "a.png", tmp_path / "b.png"]), [[False, True], [True, False]])
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((2, 2), np.uint8))
    assert not read_mask(tmp_path / "empty.png").any()


def test_left_or_right_masks_of_different_size_are_refused(tmp_path):
    left = write_mask(tmp_path / "left.png", size=(40, 48))
    right = write_mask(tmp_path / "right.png", size=(40, 50))
    with pytest.raises(DataError, match="right.png: mask is 50x40 but .*left.png is 48x40"):
        read_mask([left, right])


def test_write_image_round_trip_leaves_no_temporary_file(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_image(tmp_path / "x.png", pixels)
    np.testing.assert_array_equal(read_gray(tmp_path / "x.png"), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
