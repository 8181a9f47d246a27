"""Reading chest X-rays and lung masks from disk, with errors that name the file.

Everything a model sees is 8-bit grayscale: 16-bit, RGB and RGBA inputs are converted here,
in one place, so the readers, the tf.data pipelines and the cropping stage agree pixel for pixel.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from multiloss.files import replacing

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A dataset file or folder that cannot be used as it is; the message names it."""


def is_image_file(path: Path) -> bool:
    """An image by suffix, skipping hidden files and macOS resource forks (``._x.jpeg``)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; an error if there are none."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise DataError(f"{folder}: folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
    if not data:
        raise DataError(f"{path}: file is empty")
    return data


def jpeg_end(data: bytes) -> int | None:
    """Where a JPEG's end-of-image marker ends, found by walking its segments and scans (so an EOI
    inside an embedded thumbnail does not count); None when the data stops before it."""
    pos, n = 2, len(data)                        # after SOI
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None                          # lost sync: not a well-formed segment
        marker = data[pos + 1]
        if marker == 0xFF:                       # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:                       # EOI
            return pos + 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2                             # standalone markers carry no length
            continue
        if pos + 3 >= n:
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:                       # start of scan: entropy-coded data up to the next marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return None
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    pos += 1 if following == 0xFF else 2     # stuffed byte, restart marker, fill
                    continue
                break
    return None


def _check_complete(path: Path, data: bytes) -> None:
    """Catch truncated JPEG/PNG files, which OpenCV would otherwise decode half-grey. Bytes after a
    JPEG's end-of-image marker (some exporters append them) are not a truncation."""
    tail = data.rstrip(b"\x00\r\n\t ")
    if data[:2] == b"\xff\xd8":
        if not tail.endswith(b"\xff\xd9") and jpeg_end(data) is None:
            raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail[-12:]:
            raise DataError(f"{path}: truncated PNG (no IEND chunk)")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the header, after checking the file is complete; no full decode."""
    path = Path(path)
    data = _read_bytes(path)
    _check_complete(path, data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    return height, width


def _to_uint8(path: Path, pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        # Scanners store 10-, 12- or 14-bit data in 16-bit containers; scale by the smallest
        # such depth that holds the image's maximum so a 12-bit radiograph is not left black.
        top = int(pixels.max())
        bits = next(b for b in (8, 10, 12, 14, 16) if top < (1 << b))
        scaled = pixels.astype(np.float32) * (255.0 / ((1 << bits) - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise DataError(f"{path}: unsupported pixel type {pixels.dtype} (expected 8- or 16-bit)")


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """An image as 8-bit grayscale (H, W); 16-bit, RGB and RGBA are converted, not rejected."""
    path = Path(path)
    data = _read_bytes(path)
    _check_complete(path, data)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise DataError(f"{path}: not a readable image (decoder failed)")
    return to_gray8(pixels, str(path))


def to_gray8(pixels: np.ndarray, source: str) -> np.ndarray:
    """Decoded pixels (cv2's BGR/BGRA order for colour) as 8-bit grayscale (H, W); ``source``
    names the image in errors. The one conversion for files and for arrays handed to a model."""
    pixels = _to_uint8(Path(source), pixels)
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels == 4:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        elif channels in (1, 2):  # gray, gray + alpha
            pixels = pixels[:, :, 0]
        else:
            raise DataError(f"{source}: unsupported image with {channels} channels")
    elif pixels.ndim != 2:
        raise DataError(f"{source}: expected a (H, W) or (H, W, channels) image, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def read_mask(paths: str | os.PathLike | tuple | list) -> np.ndarray:
    """A binary mask (H, W) bool; several files (Montgomery's left and right lung) are ORed.

    A pixel is foreground above half the file's maximum, so 0/1, 0/255 and JPEG-noisy masks
    all read the same.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    mask = None
    for path in paths:
        gray = read_gray(path)
        top = int(gray.max())
        part = gray > top / 2 if top > 0 else np.zeros(gray.shape, bool)
        if mask is None:
            mask = part
        elif part.shape != mask.shape:
            raise DataError(f"{path}: mask is {part.shape[1]}x{part.shape[0]} but {paths[0]} is "
                            f"{mask.shape[1]}x{mask.shape[0]}")
        else:
            mask |= part
    if mask is None:
        raise DataError("read_mask: no mask file given")
    return mask


def encode_image(pixels: np.ndarray, suffix: str, jpeg_quality: int = 95) -> bytes:
    """The file bytes ``write_image`` writes for ``suffix`` (e.g. ``.jpeg``, ``.png``)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, pixels, params)
    if not ok:
        raise DataError(f"cannot encode image as {suffix}")
    return buf.tobytes()


def as_if_written(pixels: np.ndarray, suffix: str) -> np.ndarray:
    """``pixels`` after a write to and read from a ``suffix`` file (lossy for JPEG): what a model
    trained on written files saw, for serving the same input without writing."""
    return cv2.imdecode(np.frombuffer(encode_image(pixels, suffix), np.uint8), cv2.IMREAD_UNCHANGED)


def write_image(path: str | os.PathLike, pixels: np.ndarray, jpeg_quality: int = 95) -> None:
    """Encode by suffix and write through a temporary name, so a crash leaves no half file."""
    path = Path(path)
    try:
        data = encode_image(pixels, path.suffix, jpeg_quality)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    with replacing(path) as tmp:
        tmp.write_bytes(data)
