"""Fixtures: tiny on-disk copies of the real dataset layouts (real file names, a few files each),
in the manner of torchxrayvision's tests, so the real readers run without the real data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import multiloss  # noqa: F401  (pins the Keras flavour before any test imports TensorFlow)

# Real Kermany names: normals are IM-<patient>-<image> (some with a NORMAL2- prefix), pneumonia
# files person<patient>_{bacteria,virus}_<running index>.
KERMANY_FILES = {
    "train/NORMAL": ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-0927-0001.jpeg"],
    "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person10_virus_35.jpeg",
                        "person1000_bacteria_2931.jpeg", "person1000_virus_1681.jpeg"],
    "test/NORMAL": ["IM-0001-0001.jpeg", "NORMAL2-IM-0112-0001.jpeg"],
    "test/PNEUMONIA": ["person100_bacteria_475.jpeg", "person1680_virus_2897.jpeg"],
    "val/NORMAL": ["NORMAL2-IM-1427-0001.jpeg"],
    "val/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
}


def write_gray(path: Path, size=(40, 48), seed=0, value=None) -> Path:
    """A small random grayscale image (height, width) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size, dtype=np.uint8) if value is None else np.full(size, value, np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def write_mask(path: Path, size=(40, 48), box=(5, 5, 20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size, np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    assert cv2.imwrite(str(path), mask)
    return path


@pytest.fixture
def kermany_dir(tmp_path) -> Path:
    """The archive as it often unpacks: chest_xray/chest_xray/{train,test,val}, plus macOS debris."""
    root = tmp_path / "chest_xray" / "chest_xray"
    for seed, (folder, names) in enumerate(KERMANY_FILES.items()):
        for k, name in enumerate(names):
            write_gray(root / folder / name, seed=seed * 100 + k)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "NORMAL" / "._IM-0115-0001.jpeg").write_bytes(b"\0\1")
    return tmp_path / "chest_xray"


@pytest.fixture
def montgomery_dir(tmp_path) -> Path:
    root = tmp_path / "MontgomerySet"
    for name in ("MCUCXR_0001_0.png", "MCUCXR_0002_1.png"):
        write_gray(root / "CXR_png" / name)
        write_mask(root / "ManualMask" / "leftMask" / name, box=(5, 30, 35, 44))
        write_mask(root / "ManualMask" / "rightMask" / name, box=(5, 4, 35, 18))
    (root / "ClinicalReadings").mkdir()
    return tmp_path


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    root = tmp_path / "pairs"
    write_gray(root / "images" / "CHNCXR_0001_0.png")
    write_mask(root / "masks" / "CHNCXR_0001_0_mask.png")
    write_gray(root / "images" / "case2.png")
    write_mask(root / "masks" / "case2.png", box=(0, 0, 10, 10))
    return root


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test logs to its own throw-away store, never to the checkout's mlruns/."""
    monkeypatch.setenv("MULTILOSS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


TWO_CPU_PREAMBLE = """
import multiloss
import numpy as np, tensorflow as tf, tf_keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from multiloss.training import distribution_strategy
strategy = distribution_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
"""


@pytest.fixture
def python_on_two_cpus():
    """Runs code in a fresh Python whose CPU is split into two logical devices (possible only before
    TensorFlow starts), with ``strategy`` a MirroredStrategy over them; returns its stdout."""
    def run(body: str) -> str:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run([sys.executable, "-c", TWO_CPU_PREAMBLE + textwrap.dedent(body)], env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout
    return run


def _register(model_name: str, model, experiment: str, run_name: str, seed: int | None, tags, aliases):
    import tf_keras

    from multiloss.tracking import registry, store

    if seed is not None:
        tf_keras.utils.set_random_seed(seed)
    model = model() if callable(model) and not isinstance(model, tf_keras.Model) else model
    with store.stage_run(experiment, run_name=run_name):
        version = registry.log_and_register(model, model_name, dict(tags or {}))
    for alias in aliases:
        registry.set_alias(model_name, alias, version.version)
    return version


@pytest.fixture
def register_unet():
    """A factory: a U-Net (by default an untrained one, built after seeding with ``seed``) registered
    as a ``cxr-lung-seg`` version with ``tags`` and ``aliases``; returns the version."""
    from multiloss import names
    from multiloss.models.unet import build_unet

    def register(tags=None, aliases=(), seed: int | None = 0, run_name: str = "tiny unet", model=None):
        return _register(names.SEGMENTATION_MODEL, model or build_unet, names.SEGMENTATION_EXPERIMENT, run_name,
                         seed, tags, aliases)
    return register


@pytest.fixture
def register_classifier():
    """A factory: a classifier (by default an untrained one on an untrained U-Net's encoder, built
    after seeding with ``seed``) registered as a ``cxr-classifier`` version; returns the version."""
    from multiloss import names
    from multiloss.models.classifier import build_classifier
    from multiloss.models.unet import build_unet

    def register(tags=None, aliases=(), seed: int | None = 0, run_name: str = "tiny classifier", model=None):
        return _register(names.CLASSIFIER_MODEL, model or (lambda: build_classifier(build_unet())),
                         names.CLASSIFICATION_EXPERIMENT, run_name, seed, tags, aliases)
    return register


def tiny_ensemble_models(size: int = 16):
    """One untrained 1x1-conv segmenter and two untrained pooled-softmax classifiers at ``size``:
    the parts of a served ensemble whose serving, not quality, a test checks."""
    import tf_keras

    image = tf_keras.Input((size, size, 3))
    segmenter = tf_keras.Model(image, tf_keras.layers.Conv2D(1, 1, activation="sigmoid")(image))
    classifiers = []
    for seed in (0, 1):
        tf_keras.utils.set_random_seed(seed)
        image = tf_keras.Input((size, size, 3))
        pooled = tf_keras.layers.GlobalAveragePooling2D()(image)
        classifiers.append(tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax")(pooled)))
    return [segmenter], classifiers
