"""The synthetic phantoms: reproducible, exact masks, distinct classes, real layouts, atomic writes."""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from multiloss.data import synthetic
from multiloss.data.classes import CLASSES
from multiloss.data.synthetic import (
    Phantom,
    preview_grid,
    render_phantom,
    write_synthetic,
)


def _phantom(label: str, *key: int, size: int = 128) -> Phantom:
    return render_phantom(size, label, np.random.default_rng(list(key)))


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _opacity_gain(label: str, *key: int, size: int = 128) -> tuple[Phantom, np.ndarray]:
    """The same generator state rendered as ``label`` and as normal: the difference is the opacity."""
    sick, normal = _phantom(label, *key, size=size), _phantom("normal", *key, size=size)
    assert np.array_equal(sick.lung_mask, normal.lung_mask)
    return sick, sick.image.astype(np.int16) - normal.image.astype(np.int16)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- render_phantom ------------------------------------------------------------------------------


def test_phantom_types_and_orientation():
    p = _phantom("normal", 0, 1, size=96)
    assert p.image.dtype == np.uint8 and p.image.shape == (96, 96)
    assert p.right_lung.dtype == bool and p.left_lung.shape == (96, 96)
    assert not (p.right_lung & p.left_lung).any()
    assert np.array_equal(p.lung_mask, p.right_lung | p.left_lung)
    # Patient's right lung is on the image left, and the heart makes the left lung smaller.
    assert np.nonzero(p.right_lung)[1].mean() < 48 < np.nonzero(p.left_lung)[1].mean()
    assert p.left_lung.sum() < p.right_lung.sum()
    assert 0.15 < p.lung_mask.mean() < 0.45
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.label = "viral"


def _solidity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    return cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour))


def test_heart_shadow_is_cut_out_of_the_left_lung():
    """As in manual masks: the heart notch makes the left lung clearly non-convex."""
    phantoms = [_phantom("normal", 13, i) for i in range(12)]
    right = np.mean([_solidity(p.right_lung) for p in phantoms])
    left = np.mean([_solidity(p.left_lung) for p in phantoms])
    assert left < right - 0.04


def test_same_seed_same_bytes_other_seed_differs():
    a, b = _phantom("viral", 3, 7), _phantom("viral", 3, 7)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.lung_mask, b.lung_mask)
    c = _phantom("viral", 3, 8)
    assert a.image.tobytes() != c.image.tobytes()
    assert not np.array_equal(a.lung_mask, c.lung_mask)


def test_nuisance_factors_vary():
    phantoms = [_phantom("normal", 5, i, size=96) for i in range(12)]
    areas = [p.lung_mask.sum() for p in phantoms]
    centers = [np.nonzero(p.lung_mask)[1].mean() for p in phantoms]
    means = [p.image.mean() for p in phantoms]
    assert np.ptp(areas) > 0.1 * np.mean(areas)
    assert np.ptp(centers) > 2.0
    assert np.ptp(means) > 10.0


def test_masks_are_exact_lungs_darker_than_the_tissue_around_them():
    for i in range(6):
        p = _phantom("normal", 11, i)
        ring = _dilate(p.lung_mask, 8) & ~_dilate(p.lung_mask, 3)
        assert p.image[p.lung_mask].mean() + 30 < p.image[ring].mean()
        # No tissue-bright pixel inside the mask: the heart shadow is cut out of the lung.
        assert (p.image[p.lung_mask] > np.median(p.image[ring])).mean() < 0.01


@pytest.mark.parametrize("label", ["bacterial", "viral"])
def test_opacity_stays_inside_the_lungs(label):
    for i in range(4):
        sick, gain = _opacity_gain(label, 21, i)
        changed = np.abs(gain) > 2
        assert changed.sum() > 50
        assert not (changed & ~_dilate(sick.lung_mask, 3)).any()


def test_bacterial_is_dense_and_in_one_lung_only():
    sides = set()
    for i in range(8):
        sick, gain = _opacity_gain("bacterial", 31, i)
        means = [gain[sick.right_lung].mean(), gain[sick.left_lung].mean()]
        hit = int(np.argmax(means))
        sides.add(hit)
        inner = [m & ~_dilate(~m, 3) for m in (sick.right_lung, sick.left_lung)]
        assert gain[inner[1 - hit]].max() <= 2, "the other lung must be untouched"
        assert np.percentile(gain[inner[hit]], 95) > 40, "a consolidation is dense"
    assert sides == {0, 1}


def test_viral_is_bilateral_and_fainter_than_bacterial():
    for i in range(6):
        sick, gain = _opacity_gain("viral", 41, i)
        for lung in (sick.right_lung, sick.left_lung):
            assert gain[lung].mean() > 4
            assert (gain[lung] > 3).mean() > 0.5, "diffuse: most of each lung is affected"
        _, bact = _opacity_gain("bacterial", 41, i)
        assert np.percentile(gain[sick.lung_mask], 99) < np.percentile(bact[sick.lung_mask], 99)


def test_render_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label.*'covid'"):
        render_phantom(64, "covid", rng)
    with pytest.raises(ValueError, match="size.*16"):
        render_phantom(16, "normal", rng)


def test_simple_lung_features_separate_the_classes():
    """Guards against classes a model cannot tell apart: per-lung mean/std already do it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(p: Phantom) -> list[float]:
        img = p.image.astype(np.float32)
        tissue = np.median(img[~p.lung_mask & (img > np.percentile(img, 50))])
        floor = np.percentile(img, 1)
        img = (img - floor) / max(tissue - floor, 1.0)
        stats = [f(img[m]) for m in (p.right_lung, p.left_lung) for f in (np.mean, np.std)]
        return stats + [abs(stats[0] - stats[2])]

    def dataset(seed: int, per_class: int):
        rows = [(features(_phantom(label, seed, c, i, size=64)), c)
                for i in range(per_class) for c, label in enumerate(CLASSES)]
        return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])

    x_train, y_train = dataset(1, 60)
    x_test, y_test = dataset(2, 40)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    assert model.fit(x_train, y_train).score(x_test, y_test) > 0.8


# --- write_synthetic -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = write_synthetic(out, n_seg=6, n_cls=7, size=64, seed=3)
    return out, summary


def test_summary_matches_json_and_files(written):
    out, summary = written
    assert json.loads((out / "synth.json").read_text()) == summary
    assert summary["params"] == {"n_seg": 6, "n_cls": 7, "size": 64, "seed": 3}
    assert summary["generator_version"] == 1
    assert summary["counts"] == {"train": {c: 6 for c in CLASSES}, "test": {c: 1 for c in CLASSES}}
    assert summary["n_seg"] == 6 and summary["n_holdout"] == 4
    for split, counts in summary["counts"].items():
        root = out / "chest_xray" / split
        assert len(list((root / "NORMAL").glob("IM-*.jpeg"))) == counts["normal"]
        assert len(list((root / "PNEUMONIA").glob("person*_bacteria_*.jpeg"))) == counts["bacterial"]
        assert len(list((root / "PNEUMONIA").glob("person*_virus_*.jpeg"))) == counts["viral"]
    images = sorted((out / "lungs" / "images").iterdir())
    assert [p.name for p in images] == [f"lung_{i:04d}.png" for i in range(1, 7)]
    assert sorted(p.name for p in (out / "lungs" / "masks").iterdir()) == \
        [f"lung_{i:04d}_mask.png" for i in range(1, 7)]
    cxr = sorted(p.name for p in (out / "MontgomerySet" / "CXR_png").iterdir())
    assert len(cxr) == 4 and all(re.fullmatch(r"MCUCXR_\d{4}_[01]\.png", n) for n in cxr)
    assert {n[-5] for n in cxr} == {"0", "1"}
    for side in ("leftMask", "rightMask"):
        assert sorted(p.name for p in (out / "MontgomerySet" / "ManualMask" / side).iterdir()) == cxr
    assert not list(out.parent.glob(".data.tmp-*"))


def test_written_images_and_masks_are_consistent(written):
    out, _ = written
    for image_path in (out / "lungs" / "images").iterdir():
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "lungs" / "masks" / f"{image_path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape == (64, 64) and image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        count, _, stats, centroids = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
        assert count == 3 and sorted(centroids[1:, 0] > 32) == [False, True], "one lung per side"
        ring = _dilate(mask > 0, 5) & ~_dilate(mask > 0, 2)
        assert image[mask > 0].mean() + 15 < image[ring].mean()
    mont = out / "MontgomerySet"
    for image_path in (mont / "CXR_png").iterdir():
        left = cv2.imread(str(mont / "ManualMask" / "leftMask" / image_path.name), cv2.IMREAD_UNCHANGED)
        right = cv2.imread(str(mont / "ManualMask" / "rightMask" / image_path.name), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(left)) == set(np.unique(right)) == {0, 255}
        assert not ((left > 0) & (right > 0)).any()
        # Montgomery's leftMask is the patient's left lung: the image right side.
        assert np.nonzero(left)[1].mean() > 32 > np.nonzero(right)[1].mean()
    jpeg = next((out / "chest_xray" / "train" / "NORMAL").iterdir())
    assert jpeg.read_bytes()[:2] == b"\xff\xd8"
    assert cv2.imread(str(jpeg), cv2.IMREAD_UNCHANGED).shape == (64, 64)


def _patients(out: Path, split: str) -> dict[str, list[str]]:
    """Patient id -> class of each image; ids are per naming scheme (IM- or person)."""
    found: dict[str, list[str]] = {}
    for path in (out / "chest_xray" / split).rglob("*.jpeg"):
        if m := re.fullmatch(r"IM-(\d{4,})-(\d{4})", path.stem):
            found.setdefault(m.group(1), []).append("normal")
        else:
            m = re.fullmatch(r"person(\d+)_(bacteria|virus)_(\d+)", path.stem)
            assert m, path.name
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def test_patients_are_disjoint_and_small(written):
    out, _ = written
    train, test = _patients(out, "train"), _patients(out, "test")
    assert not set(train) & set(test)
    for patients in (train, test):
        for kinds in patients.values():
            assert 1 <= len(kinds) <= 3 and len(set(kinds)) == 1
    for kind in ("bacteria", "virus"):
        running = [p.stem.rsplit("_", 1)[1] for p in (out / "chest_xray").rglob(f"person*_{kind}_*.jpeg")]
        assert len(running) == len(set(running)) == 7, "running image numbers are unique per kind"


def test_real_readers_read_the_synthetic_layouts(written):
    from multiloss.data.readers import (
        class_counts,
        read_kermany,
        read_montgomery,
        read_pairs,
    )

    out, summary = written
    frame = read_kermany(out)
    counts = class_counts(frame)
    for split in ("train", "test"):
        assert counts.loc[split].to_dict() == summary["counts"][split]
    assert not set(frame[frame.split == "train"].patient) & set(frame[frame.split == "test"].patient)
    assert len(read_montgomery(out / "MontgomerySet")) == summary["n_holdout"]
    assert len(read_pairs(out / "lungs")) == summary["n_seg"]


def test_same_seed_same_files_other_seed_differs(tmp_path, written):
    out, _ = written
    again = tmp_path / "again"
    write_synthetic(again, n_seg=6, n_cls=7, size=64, seed=3)
    assert _tree_digest(again) == _tree_digest(out)
    other = tmp_path / "other"
    write_synthetic(other, n_seg=6, n_cls=7, size=64, seed=4)
    digest, base = _tree_digest(other), _tree_digest(out)
    assert digest["lungs/images/lung_0001.png"] != base["lungs/images/lung_0001.png"]


def test_empty_out_folder_is_accepted(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    write_synthetic(out, n_seg=1, n_cls=2, size=32, seed=0)
    assert (out / "synth.json").is_file()
    assert json.loads((out / "synth.json").read_text())["counts"]["test"] == {c: 1 for c in CLASSES}


def test_non_empty_out_is_refused_and_kept(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match=re.escape(str(out))):
        write_synthetic(out, n_seg=1, n_cls=2, size=32, seed=0)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


@pytest.mark.parametrize("kwargs, name, value", [
    ({"n_seg": 0}, "n_seg", "0"),
    ({"n_cls": 1}, "n_cls", "1"),
    ({"size": 31}, "size", "31"),
    ({"size": 4096}, "size", "4096"),
    ({"seed": -1}, "seed", "-1"),
    ({"n_cls": 2.5}, "n_cls", "2.5"),
    ({"image_sizes": "full"}, "image_sizes", "full"),
])
def test_bad_parameters_are_named(tmp_path, kwargs, name, value):
    params = {"n_seg": 1, "n_cls": 2, "size": 32, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(value)}"):
        write_synthetic(tmp_path / "out", **params)
    assert not list(tmp_path.iterdir())


def test_failure_leaves_no_temp_folder_and_no_out(tmp_path, monkeypatch):
    real_write = synthetic._write_image
    calls = []

    def failing_write(path, image):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        real_write(path, image)

    monkeypatch.setattr(synthetic, "_write_image", failing_write)
    with pytest.raises(OSError, match="simulated"):
        write_synthetic(tmp_path / "out", n_seg=4, n_cls=6, size=32, seed=0)
    assert not list(tmp_path.iterdir()), "neither out nor its temp folder may remain"


def test_preview_grid_reads_back_and_writes_png(written, tmp_path):
    out, _ = written
    png = preview_grid(out, tmp_path / "sub" / "preview.png", per_class=2)
    assert png == tmp_path / "sub" / "preview.png"
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 200 and image.shape[2] == 3
    assert [p.name for p in png.parent.iterdir()] == ["preview.png"]
    with pytest.raises(ValueError, match="no .*images"):
        preview_grid(tmp_path / "nothing", tmp_path / "x.png")


def test_ensure_synthetic_reuses_identical_output_only(tmp_path):
    out = tmp_path / "data"
    params = {"n_seg": 2, "n_cls": 3, "size": 32, "seed": 5}
    summary, reused = synthetic.ensure_synthetic(out, **params)
    assert not reused and summary == json.loads((out / "synth.json").read_text())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again, reused = synthetic.ensure_synthetic(out, **params)
    assert reused and again == summary
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*'seed': 6"):
        synthetic.ensure_synthetic(out, **(params | {"seed": 6}))
    next((out / "lungs" / "masks").iterdir()).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        synthetic.ensure_synthetic(out, **params)
    assert {p for p in out.rglob("*") if p.is_file()} < set(before)


def test_real_image_sizes_write_each_dataset_at_its_pixel_size(tmp_path):
    """Rendered at 64 px, written at Montgomery's 4020 x 4892, the pair set's 2048 x 2048 and a
    per-image Kermany size; each mask has its image's shape and is the rendered mask scaled up."""
    out = tmp_path / "real"
    params = {"n_seg": 1, "n_cls": 2, "size": 64, "seed": 3}
    summary = write_synthetic(out, **params, image_sizes="real")
    assert summary["params"] == params | {"image_sizes": "real"}
    holdout = sorted((out / "MontgomerySet" / "CXR_png").glob("*.png"))
    for image in holdout:
        for path in (image, *(out / "MontgomerySet" / "ManualMask" / side / image.name
                              for side in ("leftMask", "rightMask"))):
            assert cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape == (4892, 4020), path
    pair = cv2.imread(str(out / "lungs" / "images" / "lung_0001.png"), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(out / "lungs" / "masks" / "lung_0001_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert pair.shape == mask.shape == (2048, 2048) and set(np.unique(mask)) == {0, 255}
    rendered = synthetic.render_phantom(64, CLASSES[1], np.random.default_rng([3, 1, 1]))
    assert np.array_equal(cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST) > 0, rendered.lung_mask)
    shapes = {cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape for p in (out / "chest_xray").rglob("*.jpeg")}
    low, high = synthetic.KERMANY_LONG_SIDE
    assert len(shapes) > 1 and all(low <= max(s) <= high and min(s) >= 0.6 * max(s) - 1 for s in shapes)
    square = write_synthetic(tmp_path / "square", **params)
    assert square["params"] == params          # square manifests keep their earlier form
    with pytest.raises(ValueError, match="image_sizes"):
        synthetic.ensure_synthetic(out, **params)
