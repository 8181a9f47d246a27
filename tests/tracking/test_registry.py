"""A registered U-Net loads from the registry in a fresh process and predicts what it did before."""

import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest
import tf_keras

from multiloss import names, paths
from multiloss.models.unet import build_unet
from multiloss.tracking import registry, store


@pytest.fixture
def registered_unet(tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = build_unet()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    model.fit(x, (x[..., :1] > 0.5).astype(np.float32), epochs=1, verbose=0)   # BN statistics move
    with store.stage_run("segmentation", run_name="probe"):
        version = registry.log_and_register(model, names.SEGMENTATION_MODEL, {"loss": "bce", "img_size": 64})
    registry.set_alias(names.SEGMENTATION_MODEL, "champion", version.version)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "before.npy", model.predict(x, verbose=0))
    return version


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process_predicts_the_same_and_carries_tags(registered_unet, tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np, mlflow
        import multiloss
        from multiloss.tracking import store
        store.configure()
        model = mlflow.tensorflow.load_model("models:/cxr-lung-seg@champion")
        np.save({str(tmp_path / 'after.npy')!r}, model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
        pyfunc = mlflow.pyfunc.load_model("models:/cxr-lung-seg@champion")
        np.save({str(tmp_path / 'pyfunc.npy')!r}, np.asarray(pyfunc.predict(np.load({str(tmp_path / 'x.npy')!r}))))
    """)
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    before = np.load(tmp_path / "before.npy")
    np.testing.assert_allclose(np.load(tmp_path / "after.npy"), before, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "pyfunc.npy").reshape(before.shape), before, atol=1e-5)
    assert ((np.load(tmp_path / "after.npy") > 0.5) == (before > 0.5)).all()

    # the version carries its tags, the alias is visible and moving it reports where it was
    version = mlflow.MlflowClient().get_model_version(names.SEGMENTATION_MODEL, registered_unet.version)
    assert version.tags["loss"] == "bce" and version.tags["img_size"] == "64"
    assert registry.versions(names.SEGMENTATION_MODEL)[0].aliases == ["champion"]
    assert registry.set_alias(names.SEGMENTATION_MODEL, "champion", registered_unet.version) == str(registered_unet.version)
    with pytest.raises(ValueError, match="cxr-lung-seg has no version 7"):
        registry.versions(names.SEGMENTATION_MODEL, only=["7"])


def test_a_float_tag_is_stored_in_full_and_reads_back_to_the_same_number():
    for value in (0.1234567891234, 1 / 3, np.float64(2 / 3), np.float32(0.1), 1e-12):
        text = registry.tag_text(value)
        assert float(text) == float(value) and "np." not in text
    assert registry.tag_text(True) == "True" and registry.tag_text(64) == "64" and registry.tag_text("cce") == "cce"


def test_pip_requirements_are_our_pins():
    pins = registry.pip_requirements()
    assert "tensorflow==2.21.0" in pins and "mlflow==3.17.2" in pins and "tf-keras==2.21.0" in pins
    assert not any("pytest" in p for p in pins)


def test_pip_requirements_come_from_the_checkouts_requirements_file(monkeypatch):
    monkeypatch.delenv("MULTILOSS_HOME")
    lines = [l.strip() for l in (paths.CHECKOUT / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert registry.pip_requirements() == lines


def test_inference_copy_drops_training_only_regularisers_and_keeps_outputs():
    from multiloss.losses import classification_loss
    from multiloss.models.classifier import build_classifier
    model = build_classifier(build_unet(), activity_regularizer=classification_loss("cce_entropy").activity_regularizer())
    copy = registry.inference_copy(model)
    assert copy.get_layer("cls_softmax").activity_regularizer is None
    assert "multiloss" not in str(copy.get_config())
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_inference_copy_clones_only_what_carries_training_terms():
    inner = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, activity_regularizer="l2")])
    clean = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    assert registry.inference_copy(clean) is clean
    outer = tf_keras.Sequential([tf_keras.Input((4,)), inner])            # a regulariser one level down
    assert registry.inference_copy(outer) is not outer
    clean.compile(optimizer="sgd", loss="mse")                             # optimizer state: cloned
    assert registry.inference_copy(clean) is not clean


def _tiny_trained_model() -> tf_keras.Model:
    tf_keras.utils.set_random_seed(1)
    inputs = tf_keras.Input((4,))
    x = tf_keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    x = tf_keras.layers.BatchNormalization(name="norm")(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax", name="out")(x))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x = np.random.default_rng(1).random((16, 4)).astype(np.float32)
    model.fit(x, np.eye(3)[np.arange(16) % 3], epochs=1, verbose=0)      # BN statistics move
    return model


def test_a_version_is_registered_with_its_tags_and_card_in_place_of_one_call_a_tag(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tag was set after the version was created")
    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", refuse)
    with store.stage_run("classification", run_name="tags"):
        version = registry.log_and_register(_tiny_trained_model(), names.CLASSIFIER_MODEL,
                                            {"loss": "cce", "val_mcc": 1 / 3, "img_size": 64}, card="a card")
    stored = mlflow.MlflowClient().get_model_version(names.CLASSIFIER_MODEL, version.version)
    assert {k: stored.tags[k] for k in ("loss", "val_mcc", "img_size")} == {"loss": "cce", "val_mcc": repr(1 / 3),
                                                                           "img_size": "64"}
    assert stored.description == "a card" and version.tags == stored.tags


@pytest.fixture
def disk_loads(monkeypatch) -> list[str]:
    """The URIs read from the store, in order."""
    loads = []
    real_load = mlflow.tensorflow.load_model
    monkeypatch.setattr(mlflow.tensorflow, "load_model", lambda uri: loads.append(uri) or real_load(uri))
    return loads


def test_models_kept_in_memory_hand_out_independent_copies_of_what_was_registered(disk_loads):
    x = np.random.default_rng(2).random((5, 4)).astype(np.float32)
    first, second = _tiny_trained_model(), _tiny_trained_model()
    with store.stage_run("classification", run_name="outside"):
        outside = registry.log_and_register(first, names.CLASSIFIER_MODEL, {})
    registry.set_alias(names.CLASSIFIER_MODEL, "champion", outside.version)

    with registry.models_kept_in_memory():
        with store.stage_run("classification", run_name="inside"):
            inside = registry.log_and_register(second, names.CLASSIFIER_MODEL, {})
        copy = registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/{inside.version}")
        assert disk_loads == []                        # registered in this block: never read back
        np.testing.assert_allclose(copy.predict(x, verbose=0), second.predict(x, verbose=0), atol=1e-6)
        copy.get_layer("hidden").trainable = False     # what a caller may do to its copy
        copy.set_weights([np.zeros_like(w) for w in copy.get_weights()])
        tf_keras.backend.clear_session()               # as main does between steps
        again = registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/{inside.version}")
        assert again is not copy and again.get_layer("hidden").trainable
        np.testing.assert_allclose(again.predict(x, verbose=0), second.predict(x, verbose=0), atol=1e-6)

        # a version registered before the block is read from disk once, by number or alias
        by_alias = registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}@champion")
        by_alias.get_layer("norm").momentum = 0.5      # the model read from disk is the caller's too
        by_alias.get_layer("out").set_weights([np.zeros_like(w) for w in by_alias.get_layer("out").get_weights()])
        by_number = registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/{outside.version}")
        assert len(disk_loads) == 1 and by_number.get_layer("norm").momentum == 0.99
        np.testing.assert_allclose(by_number.predict(x, verbose=0), first.predict(x, verbose=0), atol=1e-6)
        registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/latest")
        assert len(disk_loads) == 2                    # not a version number: always read from the store

    registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/{inside.version}")
    assert len(disk_loads) == 3                        # outside the block every load reads the store


def test_shared_loads_get_one_model_a_version_and_never_change_what_others_load(disk_loads, monkeypatch):
    x = np.random.default_rng(4).random((5, 4)).astype(np.float32)
    trained = _tiny_trained_model()
    with store.stage_run("classification", run_name="before"):
        before = registry.log_and_register(trained, names.CLASSIFIER_MODEL, {})
    registry.set_alias(names.CLASSIFIER_MODEL, "champion", before.version)
    by_number = f"models:/{names.CLASSIFIER_MODEL}/{before.version}"
    builds = []
    real_from_config = tf_keras.Model.from_config.__func__
    monkeypatch.setattr(tf_keras.Model, "from_config",
                        classmethod(lambda cls, *a, **k: builds.append(cls) or real_from_config(cls, *a, **k)))

    with registry.models_kept_in_memory():
        first = registry.load_keras(by_number, shared=True)
        assert registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}@champion", shared=True) is first
        assert len(disk_loads) == 1
        loaded = len(builds)                                          # what the store's own loader built
        first.trainable = False                                       # what a shared caller may do (ensembles)
        np.testing.assert_allclose(first.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)
        own = registry.load_keras(by_number)                          # a training's copy: its own model
        assert own is not first and own.get_layer("hidden").trainable and len(builds) == loaded + 1
        own.set_weights([np.zeros_like(w) for w in own.get_weights()])
        assert registry.load_keras(by_number, shared=True) is first
        np.testing.assert_allclose(first.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)

        with store.stage_run("classification", run_name="inside"):   # registered here: built from memory once
            inside = registry.log_and_register(_tiny_trained_model(), names.CLASSIFIER_MODEL, {})
        inside_uri = f"models:/{names.CLASSIFIER_MODEL}/{inside.version}"
        assert registry.load_keras(inside_uri, shared=True) is registry.load_keras(inside_uri, shared=True)
        assert len(builds) == loaded + 2 and len(disk_loads) == 1

    outside = registry.load_keras(by_number, shared=True)             # outside the block nothing is shared
    assert outside is not first and registry.load_keras(by_number, shared=True) is not outside
    assert len(disk_loads) == 3
    with registry.models_kept_in_memory():                            # a new block starts empty
        assert registry.load_keras(by_number, shared=True) is not first and len(disk_loads) == 4


def test_a_logged_model_is_kept_only_when_asked_and_loads_back_by_its_uri(disk_loads):
    x = np.random.default_rng(3).random((5, 4)).astype(np.float32)
    kept, other = _tiny_trained_model(), _tiny_trained_model()
    with registry.models_kept_in_memory():
        with store.stage_run("ensembles", run_name="logged"):
            kept_uri = registry.log_keras(kept, "kept", keep_in_memory=True).model_uri
            other_uri = registry.log_keras(other, "other").model_uri
        assert registry.LOGGED_MODEL_URI.fullmatch(kept_uri)
        np.testing.assert_allclose(registry.load_keras(kept_uri).predict(x, verbose=0), kept.predict(x, verbose=0),
                                   atol=1e-6)
        assert disk_loads == []
        np.testing.assert_allclose(registry.load_keras(other_uri).predict(x, verbose=0), other.predict(x, verbose=0),
                                   atol=1e-6)
        assert disk_loads == [other_uri]


def test_models_of_one_architecture_share_one_inference_copy_that_carries_each_ones_weights():
    x = np.random.default_rng(5).random((5, 4)).astype(np.float32)
    tf_keras.backend.clear_session()                   # as main does between steps: the same layer names
    first = _tiny_trained_model()
    tf_keras.backend.clear_session()
    second = _tiny_trained_model()
    second.set_weights([w + 0.5 for w in second.get_weights()])
    assert registry.architecture_digest(first.get_config()) == registry.architecture_digest(second.get_config())
    copy = registry.inference_copy(first)
    np.testing.assert_allclose(copy.predict(x, verbose=0), first.predict(x, verbose=0), atol=1e-6)
    assert registry.inference_copy(second) is copy
    np.testing.assert_allclose(copy.predict(x, verbose=0), second.predict(x, verbose=0), atol=1e-6)
    assert copy.optimizer is None
    wider = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(5)])
    wider.compile(optimizer="sgd", loss="mse")
    assert registry.inference_copy(wider) is not copy and registry.inference_copy(wider).output_shape == (None, 5)


def test_the_inference_copy_of_a_model_trained_again_is_made_once_and_has_its_current_weights():
    inputs = tf_keras.Input((4,))
    outputs = tf_keras.layers.Dense(3, activation="softmax", activity_regularizer="l2")(inputs)
    model = tf_keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    first = registry.inference_copy(model)
    assert first.optimizer is None and first.layers[-1].activity_regularizer is None
    np.testing.assert_array_equal(first.get_weights()[0], model.get_weights()[0])
    model.set_weights([w + 1 for w in model.get_weights()])          # trained again
    second = registry.inference_copy(model)
    assert second is first
    np.testing.assert_array_equal(second.get_weights()[0], model.get_weights()[0])
