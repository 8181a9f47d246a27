"""Seeded CXR-like phantoms with exact lung masks, written in the real datasets' on-disk layouts.

The suite must run out of the box with nothing downloaded, and its readers must be exercised on
the layouts users really have, so the phantoms are written as a Kermany ``chest_xray`` tree, a
Montgomery ``MontgomerySet`` tree and an ``images/`` + ``masks/`` pair folder.

Each phantom is drawn from one ``numpy.random.Generator``; :func:`write_synthetic` seeds one per
image with ``[seed, stream, index]``, so any image can be regenerated alone, in any order.

Orientation: radiograph convention, patient facing the viewer. ``right_lung`` is the patient's
right lung, on the *image left*; ``left_lung`` is the patient's left lung, on the *image right*,
partly hidden by the heart shadow (the heart is not lung, so the masks exclude it).

Classes: ``normal`` has no opacity; ``bacterial`` has one dense, smooth-edged lobar consolidation
confined to one lung; ``viral`` has faint patchy and reticular opacity spread over both lungs.
Every random draw that shapes the anatomy, exposure and noise happens before the label-specific
draws, so the same generator state rendered with two labels gives the same radiograph apart
from the opacity: that is what lets the tests check the opacities in isolation.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from multiloss.data import layout
from multiloss.data.classes import CLASSES
from multiloss.data.imageio import read_gray, write_image
from multiloss.files import replacing, replacing_folder

GENERATOR_VERSION = 1
MIN_SIZE, MAX_SIZE = 32, 2048

# ``image_sizes``: ``square`` writes every image at the rendering size; ``real`` renders at that
# size and resizes each file to its dataset's real pixel size, so readers, crop and serving meet
# the memory and decode costs of the real data. Kermany's radiographs vary per image (long side
# about 1,000-3,000 px, landscape and portrait); Montgomery's are 4020 x 4892 (width x height);
# the lung-mask pair set is written 2048 x 2048, the size of the common public lung-mask sets.
SQUARE, REAL = "square", "real"
IMAGE_SIZES = (SQUARE, REAL)
KERMANY_LONG_SIDE = (1000, 3000)
KERMANY_ASPECT = (0.6, 1.0)          # short side / long side
MONTGOMERY_SIZE = (4020, 4892)       # (width, height)
PAIR_SIZE = (2048, 2048)
_SUBPIXEL = 4  # cv2 fixed-point bits: polygons keep sub-pixel accuracy at small sizes
_JPEG_QUALITY = 95

# Stream ids in the per-image seed [seed, stream, index]; one per kind of output.
_STREAM_CLS, _STREAM_SEG, _STREAM_HOLDOUT, _STREAM_PLAN, _STREAM_SIZE = 0, 1, 2, 3, 4


@dataclass(frozen=True, eq=False)
class Phantom:
    """One rendered radiograph and its exact lung masks (patient convention, see module doc)."""

    image: np.ndarray
    right_lung: np.ndarray
    left_lung: np.ndarray
    label: str

    @property
    def lung_mask(self) -> np.ndarray:
        """Both lungs: what a segmentation mask marks."""
        return self.right_lung | self.left_lung


@dataclass(frozen=True)
class _Anatomy:
    """Label-independent state of one phantom, in pixel space."""

    size: int
    right: np.ndarray  # bool, patient's right lung (image left)
    left: np.ndarray  # bool, patient's left lung (image right)
    tissue: np.ndarray  # float32 brightness of everything but lung air
    air: np.ndarray  # float32 darkening by lung air (soft-edged at the mask boundary)
    edge: float  # blur (px) of the lung boundary, applied to opacities too
    v: np.ndarray  # normalized vertical anatomical coordinate of every pixel


# ---------------------------------------------------------------------------------------------
# Geometry: outlines in normalized anatomical coordinates (x right, y down, unit square), mapped
# to pixels by one random similarity transform per image.


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Corner-cutting of a closed polygon: turns a few control points into a smooth organ."""
    for _ in range(iterations):
        nxt = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * nxt, 0.25 * points + 0.75 * nxt], axis=1)
        points = points.reshape(-1, 2)
    return points


def _ellipse(center, axes, angle_deg: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    a = np.deg2rad(angle_deg)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack([center[0] + x * np.cos(a) - y * np.sin(a),
                     center[1] + x * np.sin(a) + y * np.cos(a)], axis=1)


def _superellipse(center, axes, exponent: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = 2.0 / exponent
    return np.stack([center[0] + axes[0] * np.sign(c) * np.abs(c) ** p,
                     center[1] + axes[1] * np.sign(s) * np.abs(s) ** p], axis=1)


# Patient's right lung (image left), clockwise from the apex; the left lung mirrors it.
_RIGHT_LUNG = np.array([
    (0.34, 0.15), (0.25, 0.20), (0.18, 0.33), (0.145, 0.52), (0.13, 0.70), (0.135, 0.81),
    (0.20, 0.775), (0.30, 0.735), (0.41, 0.745), (0.44, 0.60), (0.43, 0.44), (0.42, 0.27),
    (0.40, 0.18),
])
_MEDIAL = _RIGHT_LUNG[:, 0] > 0.38
_BASAL = _RIGHT_LUNG[:, 1] > 0.72


def _lung_outline(rng: np.random.Generator, patient_left: bool) -> np.ndarray:
    """Smooth lung field with jittered control points, width and inspiration depth."""
    pts = _RIGHT_LUNG + rng.normal(0.0, 0.007, _RIGHT_LUNG.shape)
    apex_y = pts[:, 1].min()
    pts[:, 1] = apex_y + (pts[:, 1] - apex_y) * rng.uniform(0.93, 1.06)
    pts[:, 0] = 0.44 - (0.44 - pts[:, 0]) * rng.uniform(0.94, 1.06)
    if patient_left:
        pts[:, 0] = 1.0 - pts[:, 0]
        pts[_MEDIAL, 0] += 0.02  # the mediastinum bulges left: a slightly smaller field
        pts[_BASAL, 1] += 0.015  # the left hemidiaphragm sits a little lower
    return _chaikin(pts, 3)


def _pose(size: int, rng: np.random.Generator) -> np.ndarray:
    """2x3 affine from normalized coordinates to pixels: scale, rotation, shift."""
    scale = rng.uniform(0.85, 1.1)
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    shift = rng.uniform(-0.04, 0.04, 2)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    center = np.array([0.5, 0.5])
    offset = center + shift - rot @ center
    return size * np.hstack([rot, offset[:, None]])


def _to_pixels(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ pose[:, :2].T + pose[:, 2]


def _fixed(pts_px: np.ndarray) -> np.ndarray:
    return np.round(pts_px * (1 << _SUBPIXEL)).astype(np.int32).reshape(-1, 1, 2)


def _fill(size: int, polygons: list[np.ndarray]) -> np.ndarray:
    """Hard (non-antialiased) fill, so masks are exactly the drawn geometry."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_fixed(p) for p in polygons], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL)
    return canvas.astype(bool)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _normalized_grid(size: int, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (u, v) of every pixel, for shading that follows the pose."""
    x, y = _pixel_grid(size)
    inv = np.linalg.inv(pose[:, :2]).astype(np.float32)
    dx, dy = x - np.float32(pose[0, 2]), y - np.float32(pose[1, 2])
    return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def _gauss(energy: np.ndarray) -> np.ndarray:
    """exp(-energy), cut off before float32 underflow: denormals make exp 30x slower."""
    return np.exp(-np.minimum(energy, 40.0))


def _smooth_noise(size: int, rng: np.random.Generator, grid: int) -> np.ndarray:
    """Band-limited noise: a coarse random grid upsampled, zero mean, unit-ish std."""
    coarse = rng.standard_normal((grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------
# Anatomy: masks first, then the radiograph rendered from them.


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A Python float: NumPy scalars would silently promote float32 images to float64."""
    return float(rng.uniform(low, high))


def _rib_curves(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Posterior ribs (out from the spine, then down laterally) and anterior ribs (down-in)."""
    spacing = _uniform(rng, 0.056, 0.076)
    y0 = _uniform(rng, 0.10, 0.14)
    t = np.linspace(0.0, 1.0, 12)
    posterior, anterior = [], []
    while y0 < 0.78:
        reach = _uniform(rng, 0.32, 0.37)
        x = 0.475 - reach * t
        arch, drop = _uniform(rng, 0.02, 0.035), _uniform(rng, 0.09, 0.13)
        y = y0 - arch * np.sin(0.8 * np.pi * t) + drop * t ** 2
        ax = 0.14 + 0.25 * t
        ay = y0 + 0.07 + 0.09 * t - 0.02 * np.sin(np.pi * t)
        for mirror in (False, True):
            posterior.append(np.stack([1.0 - x if mirror else x, y + 0.006 * mirror], axis=1))
            anterior.append(np.stack([1.0 - ax if mirror else ax, ay], axis=1))
        y0 += spacing * _uniform(rng, 0.93, 1.07)
    return posterior, anterior


def _clavicles(rng: np.random.Generator) -> list[np.ndarray]:
    t = np.linspace(0.0, 1.0, 12)
    x = 0.45 - 0.32 * t
    y = _uniform(rng, 0.15, 0.2) - 0.08 * t + 0.025 * np.sin(np.pi * t)
    return [np.stack([x, y], axis=1), np.stack([1.0 - x, y], axis=1)]


def _stroke(size: int, pose: np.ndarray, curves: list[np.ndarray], width: float) -> np.ndarray:
    """Bands along curves (ribs, clavicles) as a 0..1 float layer; the final blur smooths them."""
    canvas = np.zeros((size, size), np.uint8)
    thickness = max(1, int(round(width * size)))
    cv2.polylines(canvas, [_fixed(_to_pixels(pose, c)) for c in curves], False, 1,
                  thickness=thickness, lineType=cv2.LINE_8, shift=_SUBPIXEL)
    return canvas.astype(np.float32)


def _heart(rng: np.random.Generator) -> np.ndarray:
    """Heart shadow: an ellipse tilted from the hilum down to the apex, left of the midline."""
    center = (0.59 + _uniform(rng, -0.015, 0.015), 0.655 + _uniform(rng, -0.02, 0.02))
    axes = (0.165 * _uniform(rng, 0.92, 1.08), 0.105 * _uniform(rng, 0.9, 1.1))
    return _ellipse(center, axes, _uniform(rng, 22.0, 36.0))  # long axis down towards the apex


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Drop the specks the heart can leave at a lung's tip: a manual mask is one region."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _anatomy(size: int, rng: np.random.Generator) -> _Anatomy:
    """Draw the label-independent radiograph: body, spine, heart, lungs, ribs, texture."""
    pose = _pose(size, rng)
    u, v = _normalized_grid(size, pose)

    def px(pts: np.ndarray) -> np.ndarray:
        return _to_pixels(pose, pts)

    trunk = _superellipse((0.5, 0.6), (_uniform(rng, 0.42, 0.47), 0.6), _uniform(rng, 2.4, 3.0))
    neck = np.array([(0.37, -0.2), (0.63, -0.2), (0.63, 0.2), (0.37, 0.2)])
    body = (_fill(size, [px(trunk)]) | _fill(size, [px(neck)])).astype(np.float32)
    heart = _fill(size, [px(_heart(rng))])
    right = _largest_component(_fill(size, [px(_lung_outline(rng, patient_left=False))]) & ~heart)
    left = _largest_component(_fill(size, [px(_lung_outline(rng, patient_left=True))]) & ~heart)

    posterior, anterior = _rib_curves(rng)
    rib_w = _uniform(rng, 0.016, 0.024)
    ribs = np.minimum(_stroke(size, pose, posterior, rib_w)
                      + 0.5 * _stroke(size, pose, anterior, 0.8 * rib_w), 1.0)
    bones = ribs + 1.3 * _stroke(size, pose, _clavicles(rng), _uniform(rng, 0.022, 0.03))

    scale = size / 256.0
    edge = 1.2 * scale
    body_s = _blur(body, 1.5 * scale)
    lungs_s = _blur((right | left).astype(np.float32), edge)
    heart_s = _blur(heart.astype(np.float32), 2.0 * scale)
    bones = _blur(bones, max(0.5, 0.6 * scale))

    profile = np.clip(1.0 - 0.35 * ((u - 0.5) / 0.45) ** 2, 0.55, 1.0)
    vertebrae = 1.0 + 0.12 * np.cos((2 * np.pi / 0.05) * v)
    spine = _gauss(np.square(np.square((u - 0.5) / 0.04))) * vertebrae
    hilar = _gauss((np.minimum((u - 0.39) ** 2, (u - 0.61) ** 2) + (v - 0.46) ** 2) / 0.018)
    apical = np.clip((0.45 - v) / 0.3, 0.0, 1.0)
    vessels = _smooth_noise(size, rng, int(rng.integers(9, 15)))

    rib_amp = _uniform(rng, 0.06, 0.1)
    tissue = 0.02 + body_s * (0.52 * profile + 0.17 * spine + 0.025 * heart_s
                              + rib_amp * bones * (0.45 + 0.55 * lungs_s))
    depth = _uniform(rng, 0.32, 0.40)
    darkness = depth * (1.0 - 0.4 * hilar + 0.08 * apical) * (1.0 + 0.09 * vessels)
    return _Anatomy(size, right, left, tissue.astype(np.float32),
                    (lungs_s * darkness).astype(np.float32), edge, v)


# ---------------------------------------------------------------------------------------------
# Opacities: the fraction of lung air replaced by fluid or infiltrate, zero outside the masks.


def _normal_opacity(anatomy: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    return np.zeros_like(anatomy.air)


def _bacterial_opacity(anatomy: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """One dense lobar consolidation: a smooth blob in one lobe (upper/middle/lower) of one lung."""
    lung = anatomy.right if rng.integers(2) == 0 else anatomy.left
    ys, xs = np.nonzero(lung)
    top, height = ys.min(), ys.max() - ys.min() + 1
    cy = top + height * (float(rng.choice([0.22, 0.5, 0.76])) + _uniform(rng, -0.05, 0.05))
    band = np.abs(ys - cy) < 0.06 * height
    row_x = xs[band] if band.any() else xs
    width = row_x.max() - row_x.min() + 1
    cx = float(np.median(row_x)) + _uniform(rng, -0.12, 0.12) * width

    size = anatomy.size
    blob = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(3, 6))):
        center = (cx + rng.normal(0, 0.12) * width, cy + rng.normal(0, 0.06) * height)
        axes = (_uniform(rng, 0.25, 0.45) * width, _uniform(rng, 0.1, 0.18) * height)
        poly = _ellipse(center, axes, _uniform(rng, -30, 30), n=48)
        cv2.fillPoly(blob, [_fixed(poly)], 1.0, lineType=cv2.LINE_8, shift=_SUBPIXEL)
    blob = _blur(blob, 0.04 * height)
    shape = np.clip((blob - 0.2) / 0.5, 0.0, 1.0)
    shape = shape * shape * (3.0 - 2.0 * shape)  # smoothstep: dense core, soft rim
    density = _uniform(rng, 0.72, 0.92) * (1.0 + 0.06 * _smooth_noise(size, rng, 20))
    return np.clip(density * shape, 0.0, 1.0) * lung


def _viral_opacity(anatomy: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Diffuse bilateral patchy + reticular opacity, heavier in the lower zones."""
    size = anatomy.size
    lungs = anatomy.right | anatomy.left
    weight = ((0.4 + np.clip(anatomy.v - 0.2, 0.0, 1.0)) * lungs).ravel()
    patches = np.zeros((size, size), np.float32)
    for sigma_n, count in ((0.018, rng.integers(25, 45)), (0.009, rng.integers(50, 90))):
        layer = np.zeros(size * size, np.float32)
        idx = rng.choice(weight.size, size=int(count), p=weight / weight.sum())
        np.add.at(layer, idx, rng.uniform(0.5, 1.0, idx.size).astype(np.float32))
        sigma = max(0.7, sigma_n * size)
        patches += _blur(layer.reshape(size, size), sigma) * np.float32(2.0 * np.pi * sigma ** 2)
    web = _gauss((_smooth_noise(size, rng, max(8, size // 10)) / 0.3) ** 2)
    haze = 0.5 + np.clip(anatomy.v - 0.3, 0.0, 0.5)
    opacity = (_uniform(rng, 0.3, 0.42) * np.minimum(patches, 1.3) + _uniform(rng, 0.12, 0.2) * web
               + _uniform(rng, 0.12, 0.2) * haze)
    return np.clip(opacity, 0.0, 1.0) * lungs


_OPACITY = {"normal": _normal_opacity, "bacterial": _bacterial_opacity, "viral": _viral_opacity}


# ---------------------------------------------------------------------------------------------
# Rendering.


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return int(size)


def render_phantom(size: int, label: str, rng: np.random.Generator) -> Phantom:
    """Render one phantom of class ``label``; same generator state -> same phantom."""
    size = _check_size(size)
    if label not in _OPACITY:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    anatomy = _anatomy(size, rng)
    gain, gamma = _uniform(rng, 0.85, 1.15), _uniform(rng, 0.8, 1.25)
    offset = _uniform(rng, -0.04, 0.05)
    blur_px = _uniform(rng, 0.3, 0.9) * size / 256.0
    noise = rng.standard_normal((size, size), dtype=np.float32) * _uniform(rng, 0.006, 0.025)

    opacity = _OPACITY[label](anatomy, rng)
    air = anatomy.air if label == "normal" else anatomy.air * (1.0 - _blur(opacity, anatomy.edge))
    bright = np.clip(anatomy.tissue - air, 0.0, 1.0)
    image = np.clip(_blur(gain * bright ** gamma + offset, blur_px) + noise, 0.0, 1.0)
    return Phantom(np.round(image * 255.0).astype(np.uint8), anatomy.right, anatomy.left, label)


# ---------------------------------------------------------------------------------------------
# Writing the datasets.


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_out_free(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {out} already exists and is not an empty folder; "
                         "choose a new path or empty it")


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, image, jpeg_quality=_JPEG_QUALITY)


def _plan_kermany(n_cls: int, seed: int) -> tuple[list[tuple[str, str, str]], dict]:
    """File names per (split, class): patients of 1-3 images, numbers unique across everything."""
    rng = np.random.default_rng([seed, _STREAM_PLAN])
    n_test = max(1, round(0.2 * n_cls))
    sizes = {"train": n_cls - n_test, "test": n_test}
    patient = int(rng.integers(1, 20))
    running = {"bacterial": int(rng.integers(1, 10)), "viral": int(rng.integers(1, 10))}
    plan, counts = [], {split: {c: 0 for c in CLASSES} for split in sizes}
    for split, total in sizes.items():
        for label in CLASSES:
            left = total
            while left > 0:
                k = min(int(rng.integers(1, 4)), left)
                for j in range(1, k + 1):
                    if label == "normal":
                        name = f"NORMAL/IM-{patient:04d}-{j:04d}.jpeg"
                    else:
                        kind = "bacteria" if label == "bacterial" else "virus"
                        name = f"PNEUMONIA/person{patient}_{kind}_{running[label]}.jpeg"
                        running[label] += 1
                    plan.append((split, label, name))
                left -= k
                patient += int(rng.integers(1, 4))
            counts[split][label] = total
    return plan, counts


def _jobs(n_seg: int, n_cls: int, seed: int) -> tuple[list[tuple], dict, int]:
    """Every file to write as (stream, index, label, relative paths...), plus counts."""
    plan, counts = _plan_kermany(n_cls, seed)
    jobs = [(_STREAM_CLS, i, label, f"{layout.KERMANY}/{split}/{name}")
            for i, (split, label, name) in enumerate(plan)]
    for i in range(1, n_seg + 1):
        jobs.append((_STREAM_SEG, i, CLASSES[i % 3],
                     f"{layout.LUNGS}/{layout.PAIR_IMAGES}/lung_{i:04d}.png",
                     f"{layout.LUNGS}/{layout.PAIR_MASKS}/lung_{i:04d}_mask.png"))
    n_holdout = max(4, n_seg // 4)
    for i in range(1, n_holdout + 1):
        label = CLASSES[i % 3]
        name = f"MCUCXR_{i:04d}_{0 if label == 'normal' else 1}.png"
        jobs.append((_STREAM_HOLDOUT, i, label, f"{layout.HOLDOUT}/{layout.MONTGOMERY_IMAGES}/{name}",
                     *(f"{layout.HOLDOUT}/{layout.MONTGOMERY_MASKS}/{side}/{name}" for side in layout.MONTGOMERY_SIDES)))
    return jobs, counts, n_holdout


def file_size(stream: int, index: int, seed: int, image_sizes: str, size: int) -> tuple[int, int]:
    """(width, height) of one written file: the rendering size, or its dataset's real size (a
    Kermany size is drawn from its own generator, so rendering draws nothing different)."""
    if image_sizes == SQUARE:
        return size, size
    if stream == _STREAM_HOLDOUT:
        return MONTGOMERY_SIZE
    if stream == _STREAM_SEG:
        return PAIR_SIZE
    rng = np.random.default_rng([seed, _STREAM_SIZE, index])
    long_side = int(rng.integers(KERMANY_LONG_SIDE[0], KERMANY_LONG_SIDE[1] + 1))
    short_side = int(round(long_side * _uniform(rng, *KERMANY_ASPECT)))
    return (long_side, short_side) if rng.integers(2) else (short_side, long_side)


def _resized(image: np.ndarray, width: int, height: int, mask: bool = False) -> np.ndarray:
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_CUBIC)


def _run_job(root: Path, size: int, seed: int, image_sizes: str, job: tuple) -> None:
    stream, index, label, image_path, *mask_paths = job
    phantom = render_phantom(size, label, np.random.default_rng([seed, stream, index]))
    width, height = file_size(stream, index, seed, image_sizes, size)
    _write_image(root / image_path, _resized(phantom.image, width, height))

    def write_mask(path: str, mask: np.ndarray) -> None:
        _write_image(root / path, _resized(mask.astype(np.uint8) * 255, width, height, mask=True))
    if stream == _STREAM_SEG:
        write_mask(mask_paths[0], phantom.lung_mask)
    elif stream == _STREAM_HOLDOUT:
        write_mask(mask_paths[0], phantom.left_lung)
        write_mask(mask_paths[1], phantom.right_lung)


def _check_image_sizes(image_sizes: str) -> str:
    if image_sizes not in IMAGE_SIZES:
        raise ValueError(f"image_sizes must be one of {', '.join(IMAGE_SIZES)}, got {image_sizes!r}")
    return image_sizes


def _params(n_seg: int, n_cls: int, size: int, seed: int, image_sizes: str) -> dict:
    """The manifest's parameters; ``image_sizes`` only when not square, so earlier manifests match."""
    params = {"n_seg": n_seg, "n_cls": n_cls, "size": size, "seed": seed}
    return params if image_sizes == SQUARE else {**params, "image_sizes": image_sizes}


def write_synthetic(out: str | os.PathLike, *, n_seg: int, n_cls: int, size: int, seed: int,
                    image_sizes: str = SQUARE) -> dict:
    """Write the synthetic Kermany, pair and Montgomery sets under ``out``, all or nothing.

    Phantoms are rendered at ``size``; ``image_sizes`` says at which pixel sizes they are written
    (see :data:`IMAGE_SIZES`).

    ``out`` must not exist or be empty. Files are built in a hidden sibling folder that is renamed
    to ``out`` at the end, so a failure never leaves a half-written dataset (or touches ``out``).
    Returns the summary also written to ``out/synth.json``.
    """
    n_seg = _check_count("n_seg", n_seg, 1)
    n_cls = _check_count("n_cls", n_cls, 2)
    seed = _check_count("seed", seed, 0)
    size = _check_size(size)
    image_sizes = _check_image_sizes(image_sizes)
    out = Path(out)
    _check_out_free(out)
    jobs, counts, n_holdout = _jobs(n_seg, n_cls, seed)
    summary = {"params": _params(n_seg, n_cls, size, seed, image_sizes),
               "counts": counts, "n_seg": n_seg, "n_holdout": n_holdout,
               "generator_version": GENERATOR_VERSION}

    with replacing_folder(out, before_swap=lambda: _check_out_free(out)) as tmp:
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_job, tmp, size, seed, image_sizes, job) for job in jobs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()  # do not keep writing into a folder about to be removed
                raise
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def ensure_synthetic(out: str | os.PathLike, *, n_seg: int, n_cls: int, size: int,
                     seed: int, image_sizes: str = SQUARE) -> tuple[dict, bool]:
    """(summary, reused): reuse ``out`` if an identical complete synth wrote it, else write it.

    Re-running a pipeline must not regenerate (and re-timestamp) its data, yet must never mix two
    datasets: a folder written with other parameters, or holding anything else, is refused.
    """
    out = Path(out)
    manifest = out / "synth.json"
    if not manifest.is_file():
        return write_synthetic(out, n_seg=n_seg, n_cls=n_cls, size=size, seed=seed,
                               image_sizes=image_sizes), False
    try:
        summary = json.loads(manifest.read_text())
        params, version = summary["params"], summary["generator_version"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"out {out}: unreadable synthetic manifest {manifest} ({err})") from err
    wanted = _params(n_seg, n_cls, size, seed, _check_image_sizes(image_sizes))
    if params != wanted or version != GENERATOR_VERSION:
        raise ValueError(f"out {out} holds synthetic data written with {params} (generator "
                         f"version {version}), not {wanted} (version {GENERATOR_VERSION}); "
                         "choose another folder or remove it")
    jobs, _, _ = _jobs(n_seg, n_cls, seed)
    missing = [rel for job in jobs for rel in job[3:] if not (out / rel).is_file()]
    if missing:
        raise ValueError(f"out {out}: synthetic data is incomplete, {len(missing)} files missing "
                         f"(first: {out / missing[0]}); remove the folder and write it again")
    return summary, True


# ---------------------------------------------------------------------------------------------
# Preview.


def _preview_rows(out: Path, per_class: int) -> list[tuple[str, list[Path]]]:
    train = out / layout.KERMANY / "train"
    patterns = {"normal": ("NORMAL", "*.jpeg"), "bacterial": ("PNEUMONIA", "*_bacteria_*.jpeg"),
                "viral": ("PNEUMONIA", "*_virus_*.jpeg")}
    rows = []
    for label in CLASSES:
        folder, pattern = patterns[label]
        files = sorted((train / folder).glob(pattern))[:per_class]
        if not files:
            raise ValueError(f"{train / folder}: no {label} images ({pattern})")
        rows.append((label, files))
    seg = sorted((out / layout.LUNGS / layout.PAIR_IMAGES).glob("*.png"))[:per_class]
    if not seg:
        raise ValueError(f"{out / layout.LUNGS / layout.PAIR_IMAGES}: no segmentation images")
    rows.append(("segmentation", seg))
    return rows


def _with_contour(image_path: Path) -> np.ndarray:
    image = read_gray(image_path)
    mask = read_gray(image_path.parent.parent / layout.PAIR_MASKS / f"{image_path.stem}_mask.png")
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 40, 40), max(1, image.shape[0] // 160))
    return rgb


def preview_grid(out: str | os.PathLike, path_png: str | os.PathLike, per_class: int = 4) -> Path:
    """Draw train examples per class and segmentation pairs from the written files (read back)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    per_class = _check_count("per_class", per_class, 1)
    out, path_png = Path(out), Path(path_png)
    rows = _preview_rows(out, per_class)
    fig = Figure(figsize=(2.2 * per_class, 2.4 * len(rows)))
    axes = fig.subplots(len(rows), per_class, squeeze=False)
    for r, (label, files) in enumerate(rows):
        for c in range(per_class):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(files):
                continue
            if label == "segmentation":
                ax.imshow(_with_contour(files[c]))
            else:
                ax.imshow(read_gray(files[c]), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{label}\n{files[c].name}", fontsize=7)
    fig.tight_layout()
    path_png.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path_png
