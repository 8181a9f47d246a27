"""The GPU options on a CPU: mixed precision policies per training (layers in 16 bits, variables,
outputs and losses in float32, the global policy restored), float32 registered models that reload
and predict within a stated tolerance, the loss scale reset of a shared mixed_float16 graph, and
jit_compile refused without a GPU before any run."""

import mlflow
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from multiloss import names
from multiloss.classification import graph
from multiloss.data.synthetic import write_synthetic
from multiloss.losses import classification_loss
from multiloss.models import precision
from multiloss.models.classifier import DEEPEST_CONV, SOFTMAX
from multiloss.models.unet import build_unet
from multiloss.pipeline import profiles
from multiloss.stages import classify, segment, sweep
from multiloss.tracking import registry, store
from multiloss.training import create_training_variables, optimizer_variables

COMPUTE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# A reloaded (float32) model against the in-memory one it was logged from, max |Δ| of its outputs
# (probabilities): the in-memory model computes in 16 bits. Measured on the untrained 32 px U-Net:
# 1.7e-4 (bfloat16), 4.2e-5 (float16); exact (0) against the in-memory model's float32 copy.
RELOAD_TOLERANCE = {"float32": 1e-6, "mixed_bfloat16": 5e-3, "mixed_float16": 1e-3}
NO_GPU = pytest.mark.skipif(precision.gpu_visible(), reason="jit_compile is refused only where no GPU is visible")


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


def test_the_policy_block_restores_the_policy_before_it_even_on_an_error():
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision.policy("mixed_float16"):
            assert tf_keras.mixed_precision.global_policy().name == "mixed_float16"
            raise RuntimeError("a failed build")
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="parameter precision must be one of float32, mixed_bfloat16, mixed_float16"):
        with precision.policy("float16"):
            pass


def test_a_cast_unet_computes_under_the_policy_with_float32_variables_and_a_float32_sigmoid():
    tf_keras.utils.set_random_seed(0)
    unet = build_unet()
    assert precision.cast(unet, "float32") is unet
    for policy in ("mixed_bfloat16", "mixed_float16"):
        model = precision.cast(unet, policy)
        inner = [layer for layer in model.layers if not isinstance(layer, tf_keras.layers.InputLayer)]
        assert {layer.compute_dtype for layer in inner if layer.name != "sigmoid"} == {COMPUTE[policy]}
        assert model.get_layer("sigmoid").compute_dtype == "float32" and model.output.dtype == tf.float32
        assert {v.dtype for v in model.weights} == {tf.float32}
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), unet.get_weights()))
        assert tf_keras.mixed_precision.global_policy().name == "float32"      # set for the build only


def tiny_classifier(policy: str, seed: int = 0) -> tf_keras.Model:
    """Conv → BatchNorm → GAP → softmax, cast to ``policy`` (the softmax, its output layer, in float32)."""
    tf_keras.utils.set_random_seed(seed)
    image = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Conv2D(8, 3, activation="relu")(image)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return precision.cast(tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax")(x)), policy)


def test_a_cast_rebuilds_layer_classes_no_registry_names():
    class LocalDropout(tf_keras.layers.Dropout):      # as efficientnet's FixedDropout, made per build
        pass

    image = tf_keras.Input((8, 8, 3))
    x = LocalDropout(0.1)(tf_keras.layers.Conv2D(4, 1)(image))
    model = precision.cast(tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax")(x)), "mixed_bfloat16")
    assert isinstance(model.layers[2], LocalDropout) and model.layers[2].compute_dtype == "bfloat16"


def test_a_logged_model_is_float32_and_reloads_within_the_stated_tolerance():
    store.configure()
    x = images()
    for policy in precision.POLICIES:
        model = tiny_classifier(policy)
        assert model.layers[1].compute_dtype == COMPUTE[policy]
        with store.stage_run(names.CLASSIFICATION_EXPERIMENT, run_name=f"tiny {policy}"):
            uri = registry.log_keras(model).model_uri
        reloaded = mlflow.tensorflow.load_model(uri)
        assert {layer.compute_dtype for layer in reloaded.layers} == {"float32"}, policy
        in_memory, back = model(x, training=False).numpy(), reloaded(x, training=False).numpy()
        assert back.dtype == in_memory.dtype == np.float32
        np.testing.assert_allclose(back, in_memory, atol=RELOAD_TOLERANCE[policy], err_msg=policy)
        np.testing.assert_allclose(back, precision.cast(model, "float32")(x, training=False).numpy(), atol=1e-6)


def test_graphs_of_different_policies_are_not_shared_and_a_mixed_float16_reset_restores_the_loss_scale(
        register_unet):
    with registry.models_kept_in_memory():
        uri = registry.version_uri(names.SEGMENTATION_MODEL, register_unet().version)
        settings = dict(strategy="default", bn_momentum=None, momentum=0.9, jit_compile=False, reuse=True)
        half, _ = graph.classifier_graph(uri, precision="mixed_float16", **settings)
        full, _ = graph.classifier_graph(uri, precision="float32", **settings)
        again, weights = graph.classifier_graph(uri, precision="mixed_float16", **settings)
    try:
        assert again is half and full is not half and weights is not None
        assert tf_keras.mixed_precision.global_policy().name == "float32"
        assert full.model.get_layer(DEEPEST_CONV).compute_dtype == "float32"
        assert half.model.get_layer(DEEPEST_CONV).compute_dtype == "float16"
        assert half.model.get_layer("block5c_add").compute_dtype == "float16"        # the encoder, rebuilt
        assert half.model.get_layer(SOFTMAX).compute_dtype == "float32" and half.model.output.dtype == tf.float32
        optimizer = half.model.optimizer
        assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
        assert not isinstance(full.model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

        x, y = images(), np.eye(3, dtype="float32")[[0, 1, 2, 0]]
        create_training_variables(half.model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4).element_spec)
        initial = float(optimizer.initial_scale)
        # where a previous training left them: a lowered scale, a count of good steps, slots and steps
        optimizer._loss_scale.current_loss_scale.assign(4.0)
        optimizer.dynamic_counter.assign(7)
        slots = optimizer_variables(optimizer)
        for variable in slots:
            variable.assign(tf.ones_like(variable))
        half.reset(loss=classification_loss("cce"), lr=0.01, seed=0, unet_weights=weights)
        assert float(optimizer.loss_scale) == initial == 2.0 ** 15
        assert int(optimizer.dynamic_counter) == 0 and int(optimizer.iterations) == 0
        assert slots and all(not np.any(v.numpy()) for v in optimizer_variables(optimizer))
        assert float(optimizer.learning_rate) == pytest.approx(0.01)

        # a few steps train (an overflowing first step only halves the scale)
        half.model.run_eagerly = True
        kernel = half.model.get_layer(DEEPEST_CONV).kernel.numpy().copy()
        for _ in range(3):
            half.model.train_on_batch(x, y)
        assert float(optimizer.loss_scale) >= 1.0
        assert not np.array_equal(half.model.get_layer(DEEPEST_CONV).kernel.numpy(), kernel)
    finally:
        graph.forget_graphs()


@NO_GPU
@pytest.mark.parametrize("stage,required", [
    (segment, ["--loss", "bce", "--data", "lungs"]),
    (classify, ["--loss", "cce", "--data", "cropped"]),
    (sweep, ["--loss", "cal_cce", "--data", "cropped"]),
])
def test_jit_compile_is_refused_without_a_gpu_by_the_stage_parsers_naming_the_parameter(stage, required, capsys):
    with pytest.raises(SystemExit) as exit:
        stage.parse_args([*required, "--jit-compile", "true"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "parameter jit_compile: true is refused: TensorFlow sees no GPU" in err and "jit_compile=false" in err
    assert stage.parse_args([*required, "--jit-compile", "false"]).jit_compile is False
    with pytest.raises(SystemExit):
        stage.parse_args([*required, "--precision", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err


@NO_GPU
def test_jit_compile_is_refused_by_the_configs_and_main_before_any_run(tmp_path):
    args = vars(segment.parse_args(["--loss", "bce", "--data", "lungs"]))
    from multiloss.segmentation.train import UNetConfig
    with pytest.raises(ValueError, match="parameter jit_compile: true is refused"):
        UNetConfig.from_parameters({**args, "jit_compile": True})
    from multiloss.classification.train import ClassifierConfig
    with pytest.raises(ValueError, match="parameter jit_compile: true is refused"):
        ClassifierConfig.from_defaults("cce", "data", jit_compile=True)
    with pytest.raises(ValueError, match="parameter precision must be one of"):
        ClassifierConfig.from_defaults("cce", "data", precision="half")
    assert ClassifierConfig.from_defaults("cce", "data").jit_compile is False       # MLproject's "false"

    paper = profiles.load_profile("paper")
    profiles.check_training_options(paper, "paper")                                # float32, no XLA
    assert profiles.stage_settings(paper, "classify")["jit_compile"] == "false"     # as MLproject spells it
    paper["classify"]["jit_compile"] = True
    with pytest.raises(ValueError, match="profile paper: classify.jit_compile: true is refused"):
        profiles.check_training_options(paper, "paper")
    from multiloss.stages import main
    profile = tmp_path / "gpu.yaml"
    profile.write_text("segment: {losses: [bce], jit_compile: true}\nclassify: {losses: [cce]}\n")
    with pytest.raises(SystemExit, match="main: profile .*gpu.yaml: segment.jit_compile: true is refused"):
        main.main(["--profile", str(profile)])
    assert not (tmp_path / "home" / "mlruns").exists()                                # no store, no run


@pytest.mark.slow
def test_a_mixed_bfloat16_segment_run_logs_its_policy_registers_float32_and_restores_the_policy(tmp_path):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=8, n_cls=2, size=32, seed=0)
    with registry.models_kept_in_memory():          # what the registry logged, as later steps read it
        segment.main(["--loss", "bce", "--data", str(data / "lungs"), "--img-size", "32", "--epochs", "1",
                      "--batch-size", "4", "--patience", "1", "--precision", "mixed_bfloat16"])
        (_, config, weights), = registry.kept_models().values()
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    assert tf_keras.layers.Dense(1).compute_dtype == "float32"                      # a later training's layers
    assert {str(layer["config"].get("dtype", "float32")) for layer in config["layers"]} == {"float32"}
    assert {w.dtype for w in weights} == {np.dtype("float32")}
    version = registry.versions(names.SEGMENTATION_MODEL)[-1]
    assert version.tags["precision"] == "mixed_bfloat16" and version.tags["jit_compile"] == "false"
    assert "trained in mixed_bfloat16" in version.description
    params = mlflow.MlflowClient().get_run(version.run_id).data.params
    assert params["precision"] == "mixed_bfloat16" and params["jit_compile"] == "false"
    assert "resolved.jit_compile" not in params
