"""Grad-CAM against hand-computed maps, on classifier- and ensemble-shaped models, the overlay's
threshold, and the gradcam stage end to end on a registered classifier."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras

from multiloss import names
from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.datasets import image_dataset
from multiloss.data.imageio import DataError
from multiloss.gradcam import (
    default_layer,
    find_layer,
    gradcam,
    images_to_explain,
    overlay,
    source_run,
    trained_img_size,
)
from multiloss.models.classifier import DEEPEST_CONV, build_classifier
from multiloss.models.unet import build_unet
from multiloss.stages import gradcam as gradcam_stage
from multiloss.tracking import store

layers = tf_keras.layers


def linear_model(kernel: np.ndarray, dense: np.ndarray, bias: np.ndarray, shape=(6, 7, 2)) -> tf_keras.Model:
    """1×1 linear conv (fixed ``kernel``) → GAP → Dense(softmax, fixed ``dense``, ``bias``)."""
    inputs = tf_keras.Input(shape)
    features = layers.Conv2D(kernel.shape[1], 1, use_bias=False, name="conv")(inputs)
    outputs = layers.Dense(dense.shape[1], activation="softmax", name="head")(layers.GlobalAveragePooling2D()(features))
    model = tf_keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([kernel[None, None]])
    model.get_layer("head").set_weights([dense, bias])
    return model


def relu_normalised(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0)
    return cam / cam.max()


def test_map_is_the_relu_of_the_class_logit_channel_combination():
    # logit_c = mean(A) · W[:, c] + b_c, so ∂logit_c/∂A_k = W[k, c] / (H·W) at every pixel and the
    # map is ReLU(A · W[:, c]) up to scale; the softmax probability would weight by W[:, c] − W·p.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(2, 3))
    dense = np.array([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0], [0.5, 1.0, -1.5]])
    bias = np.array([0.1, -0.2, 0.3])
    model = linear_model(kernel, dense, bias)
    images = rng.normal(size=(4, 6, 7, 2)).astype(np.float32)
    features = images @ kernel                                   # (N, H, W, 3)
    probs = model.predict(images, verbose=0)
    for c in range(3):
        maps = gradcam(model, images, class_index=c)
        assert maps.shape == (4, 6, 7)
        for i in range(4):
            np.testing.assert_allclose(maps[i], relu_normalised(features[i] @ dense[:, c]), atol=1e-5)
            softmax_weights = dense[:, c] - dense @ probs[i]
            assert not np.allclose(maps[i], relu_normalised(features[i] @ softmax_weights), atol=1e-2)
    predicted = gradcam(model, images)
    for i, c in enumerate(probs.argmax(1)):
        np.testing.assert_allclose(predicted[i], relu_normalised(features[i] @ dense[:, c]), atol=1e-5)


def patch_model() -> tf_keras.Model:
    """Class 1 ('patch') scores the mean of a strided 3×3 box filter of the brightness, class 0 its
    negative: class 1's evidence lies where the image is bright."""
    inputs = tf_keras.Input((32, 32, 1))
    features = layers.Conv2D(1, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    outputs = layers.Dense(2, activation="softmax", name="head")(layers.GlobalAveragePooling2D()(features))
    model = tf_keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.full((3, 3, 1, 1), 1 / 9), np.array([-0.1])])
    model.get_layer("head").set_weights([np.array([[-4.0, 4.0]]), np.zeros(2)])
    return model


def test_map_lights_the_patch_that_drives_the_prediction_and_a_map_without_evidence_is_zero():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 0.05, (32, 32, 1)).astype(np.float32)
    image[4:12, 20:28] = 1.0                                     # top-right quadrant
    model = patch_model()
    assert model.predict(image[None], verbose=0).argmax() == 1
    heat = gradcam(model, image[None])[0]
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert row < 16 <= col
    assert heat[6:10, 21:25].min() > 0.9 and heat[4:12, 20:28].mean() > 0.7   # blurred by the stride
    assert heat[16:].max() < 0.05 and heat[:, :14].max() < 0.05
    # class 0's gradient is negative on every channel: ReLU leaves nothing, and the map stays 0, not NaN
    no_evidence = gradcam(model, image[None], class_index=0)
    assert np.isfinite(no_evidence).all() and not no_evidence.any()
    dark = gradcam(model, np.zeros((2, 32, 32, 1), np.float32))
    assert dark.shape == (2, 32, 32) and np.isfinite(dark).all() and not dark.any()


def test_no_activation_before_the_explained_layer_is_held_while_the_gradient_is_taken():
    """Memory: the tape records only what follows the explained layer. Recording the whole forward
    pass kept every activation of every member of a 512 px model-level ensemble until the
    gradient (out of memory); here a probe after the explained layer looks, while the gradient
    flows through it, whether the layer before it still has an output alive."""
    import gc
    import weakref

    earlier_outputs, alive = [], []

    class Recorded(tf_keras.layers.Conv2D):
        def call(self, inputs):
            outputs = super().call(inputs)
            earlier_outputs.append(weakref.ref(outputs))
            return outputs

    class Probe(tf_keras.layers.Layer):
        def call(self, inputs):
            @tf.custom_gradient
            def identity(x):
                def grad(upstream):
                    gc.collect()
                    alive.append(any(ref() is not None for ref in earlier_outputs))
                    return upstream
                return tf.identity(x), grad
            return identity(inputs)

    tf_keras.utils.set_random_seed(0)
    image = tf_keras.Input((12, 12, 3))
    features = tf_keras.layers.Conv2D(4, 3, padding="same", name="explained")(Recorded(6, 3, padding="same")(image))
    pooled = tf_keras.layers.GlobalAveragePooling2D()(Probe()(features))
    model = tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax")(pooled))
    maps = gradcam(model, np.random.default_rng(0).random((2, 12, 12, 3)), layer="explained", batch_size=2)
    assert maps.shape == (2, 12, 12) and earlier_outputs and alive == [False]


def test_bad_layers_and_classes_are_named():
    model = patch_model()
    images = np.zeros((1, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="no layer 'nope'.*conv"):
        gradcam(model, images, layer="nope")
    with pytest.raises(ValueError, match="layer 'head' outputs shape .*feature map"):
        gradcam(model, images, layer="head")
    with pytest.raises(ValueError, match=r"class_index must lie in \[0, 1\]"):
        gradcam(model, images, class_index=2)
    with pytest.raises(ValueError, match=r"one class or one per image \(1\), got shape \(2,\)"):
        gradcam(model, images, class_index=[0, 1])
    with pytest.raises(ValueError, match="batch shaped"):
        gradcam(model, images[0])
    assert model.get_layer("conv").call.__func__ is layers.Conv2D.call     # the catch is undone


def test_default_layer_of_the_classifier_also_when_nested():
    tf_keras.utils.set_random_seed(0)
    classifier = build_classifier(build_unet())
    assert default_layer(classifier) == DEEPEST_CONV
    inputs = tf_keras.Input((None, None, 3))
    wrapped = tf_keras.Model(inputs, classifier(inputs))
    assert default_layer(wrapped) == f"{classifier.name}/{DEEPEST_CONV}"
    images = np.random.default_rng(2).random((2, 64, 64, 3)).astype(np.float32)
    maps = gradcam(classifier, images)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(gradcam(wrapped, images), maps, atol=1e-5)


def members_and_ensemble(nested: bool):
    """Two members cut at their ``cls_conv``, concatenated → Conv2D(8, 1×1) → GAP → Dense(3,
    softmax): nested member Models with their own inputs (as loaded from the registry), or the
    same layers inlined on the ensemble's input."""
    tf_keras.utils.set_random_seed(3)
    convs = {name: layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{name}_cls_conv")
             for name in ("a", "b")}
    inputs = tf_keras.Input((16, 16, 3))
    if nested:
        members = {}
        for name, conv in convs.items():
            own = tf_keras.Input((16, 16, 3))
            members[name] = tf_keras.Model(own, conv(own), name=f"member_{name}")
        cut = [members[name](inputs) for name in convs]
    else:
        cut = [conv(inputs) for conv in convs.values()]
    x = layers.Conv2D(8, 1, activation="relu", name="ensemble_conv")(layers.Concatenate()(cut))
    gap = layers.GlobalAveragePooling2D()(x)
    head = layers.Dense(3, activation="softmax", name="ensemble_softmax")
    return tf_keras.Model(inputs, head(gap)), convs, gap, head


def textbook_gradcam(model, feature_tensor, gap_tensor, head, images, classes) -> np.ndarray:
    """Grad-CAM through a functional 'grad model' from the inputs to [feature map, pooled features]."""
    grad_model = tf_keras.Model(model.inputs, [feature_tensor, gap_tensor])
    with tf.GradientTape() as tape:
        features, pooled = grad_model(images, training=False)
        logits = pooled @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    weights = tf.reduce_mean(tape.gradient(score, features), axis=(1, 2))
    return np.stack([relu_normalised(cam) for cam in tf.einsum("nhwc,nc->nhw", features, weights).numpy()])


def test_model_level_ensemble_default_layer_and_nested_member_layers(tmp_path):
    nested, convs, _, _ = members_and_ensemble(nested=True)
    inlined, inlined_convs, gap, head = members_and_ensemble(nested=False)
    inlined.set_weights(nested.get_weights())
    assert default_layer(nested) == "ensemble_conv" and default_layer(inlined) == "ensemble_conv"
    assert find_layer(nested, "member_a/a_cls_conv") is convs["a"]
    with pytest.raises(ValueError, match="no layer 'nope'"):
        find_layer(nested, "member_a/nope")

    images = np.random.default_rng(4).random((3, 16, 16, 3)).astype(np.float32)
    classes = nested.predict(images, verbose=0).argmax(1)
    for layer, inlined_layer in (("ensemble_conv", "ensemble_conv"), ("member_a/a_cls_conv", "a_cls_conv"),
                                 ("member_b/b_cls_conv", "b_cls_conv")):
        expected = textbook_gradcam(inlined, inlined.get_layer(inlined_layer).output, gap, head, images, classes)
        np.testing.assert_allclose(gradcam(inlined, images, inlined_layer), expected, atol=1e-5)
        np.testing.assert_allclose(gradcam(nested, images, layer), expected, atol=1e-5)

    nested.save(tmp_path / "ensemble", save_format="tf")       # the format mlflow.tensorflow logs
    loaded = tf_keras.models.load_model(tmp_path / "ensemble")
    np.testing.assert_allclose(gradcam(loaded, images, "member_b/b_cls_conv"),
                               gradcam(nested, images, "member_b/b_cls_conv"), atol=1e-5)


def test_overlay_thresholds_the_float_map_before_any_8_bit_conversion():
    image = np.full((2, 3), 100, np.uint8)
    # 0.5018 ≥ 0.5017 keeps its colour; as 8 bits it would be int(127.96) = 127 < 127.93 and vanish
    heat = np.array([[0.5018, 0.3, 1.0], [0.0, 0.5017, 0.5016]])
    out = overlay(image, heat, alpha=0.5, threshold=0.5017)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    plain = np.array([100, 100, 100])
    coloured = [(0, 0), (0, 2), (1, 1)]
    for i, j in coloured:
        assert not np.array_equal(out[i, j], plain), (i, j)
    for i, j in [(0, 1), (1, 0), (1, 2)]:
        np.testing.assert_array_equal(out[i, j], plain)
    np.testing.assert_array_equal(overlay(image / 255.0, heat, alpha=0.0), np.repeat(image[..., None], 3, 2))
    hot = overlay(np.zeros((1, 1), np.uint8), np.ones((1, 1)), alpha=1.0)[0, 0]
    assert hot[0] > 100 and hot[2] < 50                           # the top of jet is red
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        overlay(image, heat, threshold=51)                          # a 0–255 threshold is refused
    with pytest.raises(ValueError, match="heatmap is 3x2 but the image is 4x4"):
        overlay(np.zeros((4, 4), np.uint8), heat)
    with pytest.raises(ValueError, match="float pixels"):
        overlay(np.full((2, 3), 100.0), heat)


def test_images_to_explain_from_a_kermany_layout_a_folder_or_a_file(kermany_dir):
    picked = images_to_explain(kermany_dir, per_class=1, seed=0)
    assert list(picked["label"]) == ["normal", "bacterial", "viral"]
    assert all("/test/" in p for p in picked["path"])
    again = images_to_explain(kermany_dir, per_class=1, seed=0)
    pd.testing.assert_frame_equal(picked, again)
    normals = {images_to_explain(kermany_dir, per_class=1, seed=s)["path"][0] for s in range(8)}
    assert len(normals) == 2                                     # the seed picks among both test normals
    assert list(images_to_explain(kermany_dir, per_class=5)["label"]) == ["normal"] * 2 + ["bacterial", "viral"]
    folder = next(kermany_dir.rglob("test/NORMAL"))
    assert list(images_to_explain(folder)["label"]) == ["", ""]
    one = images_to_explain(folder / "IM-0001-0001.jpeg")
    assert len(one) == 1 and one["path"][0].endswith("IM-0001-0001.jpeg")
    with pytest.raises(DataError, match="images .*missing: no such file or folder"):
        images_to_explain(kermany_dir / "missing")


@pytest.mark.slow
def test_gradcam_stage_logs_overlays_and_the_models_own_probabilities(kermany_dir, register_classifier):
    tf_keras.utils.set_random_seed(5)
    model = build_classifier(build_unet())
    version = register_classifier({"img_size": 64}, aliases=[names.CHAMPION], seed=None, model=model,
                                  run_name="untrained classifier")

    gradcam_stage.main(["--images", str(kermany_dir), "--per-class", "1", "--threshold", "0.2"])

    client = mlflow.MlflowClient()
    run = client.search_runs([store.ensure_experiment("classification")], "tags.stage = 'gradcam'")[0]
    assert run.data.params["img_size"] == "64" and run.data.params["layer"] == DEEPEST_CONV
    assert run.data.params["model_version"] == str(version.version)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gradcam.csv", "gradcam_grid.png", "gradcam"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "gradcam")) == 3
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gradcam.csv"))
    assert list(table["label"]) == ["normal", "bacterial", "viral"] and set(table["layer"]) == {DEEPEST_CONV}
    expected = model.predict(image_dataset(table["path"], img_size=64, batch_size=2), verbose=0)
    np.testing.assert_allclose(table[PROBABILITY_COLUMNS].to_numpy(), expected, atol=1e-5)
    assert list(table["predicted"]) == [("normal", "bacterial", "viral")[k] for k in expected.argmax(1)]

    client.delete_model_version_tag(names.CLASSIFIER_MODEL, version.version, "img_size")
    with pytest.raises(SystemExit, match="pass the parameter img_size"):
        gradcam_stage.main(["--model", f"models:/{names.CLASSIFIER_MODEL}/{version.version}",
                            "--images", str(Path(table["path"][0]))])


def test_image_size_comes_from_the_run_that_logged_a_model(tmp_path):
    model = tf_keras.Sequential([tf_keras.Input((4,)), layers.Dense(3, activation="softmax")])
    with store.stage_run("ensembles", run_name="model-level ensemble") as run:
        store.log_params({"img_size": 96})
        info = mlflow.tensorflow.log_model(model, name="model_level_top2", pip_requirements=[])
    assert info.model_uri.startswith("models:/m-")
    for uri in (info.model_uri, f"runs:/{run.info.run_id}/model_level_top2"):
        version, source = source_run(uri)
        assert version is None and source.info.run_id == run.info.run_id
        assert trained_img_size(uri, version, source) == 96
    assert source_run(str(tmp_path / "saved_model")) == (None, None)
    with pytest.raises(SystemExit, match="pass the parameter img_size"):
        trained_img_size("x", None, None)
