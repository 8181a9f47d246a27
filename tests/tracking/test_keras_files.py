"""A ``.keras`` file loaded within ``weights_read_at_once`` is the model tf_keras loads without it,
read with no seek in the zip; MLflow's loader goes through it too, and saving is unchanged."""

from __future__ import annotations

import zipfile

import mlflow
import numpy as np
import pytest
import tf_keras
from tf_keras.src.saving import saving_lib

from multiloss.tracking.keras_files import weights_read_at_once


def trained_model() -> tf_keras.Model:
    """Compiled and trained one step: optimizer slots, BatchNorm statistics and weights all non-trivial."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3)(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 8, 8, 3), np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)],
              epochs=1, verbose=0)
    return model


@pytest.fixture
def zip_seeks(monkeypatch) -> list:
    """Every seek made in a zip member from here on."""
    calls = []
    seek = zipfile.ZipExtFile.seek

    def counted(self, *args, **kwargs):
        calls.append(args)
        return seek(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipExtFile, "seek", counted)
    return calls


def assert_same_model(expected: tf_keras.Model, actual: tf_keras.Model) -> None:
    assert actual.get_config() == expected.get_config()
    assert len(actual.get_weights()) == len(expected.get_weights())
    for want, got in zip(expected.get_weights(), actual.get_weights()):
        np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(1).random((4, 8, 8, 3), np.float32)
    np.testing.assert_array_equal(actual.predict(x, verbose=0), expected.predict(x, verbose=0))


def test_a_keras_file_read_at_once_is_the_model_keras_reads_with_no_seek_in_the_zip(tmp_path, zip_seeks):
    model = trained_model()
    path = tmp_path / "model.keras"
    model.save(path)
    plain = tf_keras.models.load_model(path)
    assert zip_seeks                              # what the block saves: h5py seeking inside the member
    zip_seeks.clear()
    original = saving_lib.H5IOStore
    with weights_read_at_once():
        read_at_once = tf_keras.models.load_model(path)
    assert not zip_seeks
    assert saving_lib.H5IOStore is original
    assert_same_model(plain, read_at_once)
    assert_same_model(model, read_at_once)
    # the optimizer's slots and step count, saved with a compiled model, come back too
    for want, got in zip(plain.optimizer.variables, read_at_once.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert int(read_at_once.optimizer.iterations.numpy()) == 1


def test_mlflows_loader_reads_through_the_block(tmp_path, zip_seeks):
    model = trained_model()
    mlflow.tensorflow.save_model(model, tmp_path / "logged")
    zip_seeks.clear()
    with weights_read_at_once():
        loaded = mlflow.tensorflow.load_model(str(tmp_path / "logged"))
    assert not zip_seeks
    assert_same_model(model, loaded)


def test_the_store_is_put_back_after_a_failed_load_and_a_save_within_the_block_is_unchanged(tmp_path):
    original = saving_lib.H5IOStore
    broken = tmp_path / "no_weights.keras"
    with zipfile.ZipFile(broken, "w") as archive:
        source = tmp_path / "model.keras"
        trained_model().save(source)
        with zipfile.ZipFile(source) as whole:
            for name in ("metadata.json", "config.json"):
                archive.writestr(name, whole.read(name))
    with pytest.raises(ValueError, match="model.weights.h5"), weights_read_at_once():
        tf_keras.models.load_model(broken)
    assert saving_lib.H5IOStore is original

    model = trained_model()
    with weights_read_at_once():
        model.save(tmp_path / "saved_within.keras")
    assert_same_model(model, tf_keras.models.load_model(tmp_path / "saved_within.keras"))
