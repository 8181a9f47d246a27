"""The U-Net builder: tf-keras model, any size divisible by 32, local encoder weights, clear errors."""

import numpy as np
import pytest
import tf_keras

from multiloss.models.unet import build_unet


def test_unet_takes_any_multiple_of_32():
    model = build_unet()
    assert isinstance(model, tf_keras.Model)
    assert model.predict(np.zeros((1, 64, 96, 3), np.float32), verbose=0).shape == (1, 64, 96, 1)


def test_local_encoder_weights_are_loaded_by_layer_name(tmp_path):
    source = build_unet()
    path = tmp_path / "encoder.h5"
    source.save_weights(str(path))
    model = build_unet(str(path))
    np.testing.assert_array_equal(model.get_layer("block5c_dwconv").get_weights()[0],
                                  source.get_layer("block5c_dwconv").get_weights()[0])


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_weights .*nope.h5.*no such weights file"):
        build_unet(str(tmp_path / "nope.h5"))


@pytest.mark.slow
def test_one_training_step_under_mirrored_strategy_on_two_cpus(python_on_two_cpus):
    words = python_on_two_cpus("""
        from multiloss.losses import segmentation_loss
        from multiloss.models.unet import build_unet
        with strategy.scope():
            model = build_unet()
            model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=segmentation_loss("bce_dice"))
        x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
        before = model.get_weights()[0].copy()
        history = model.fit(x, (x[..., :1] > 0.5).astype(np.float32), batch_size=4, epochs=1, verbose=0)
        print("replicas", strategy.num_replicas_in_sync, "changed", not np.allclose(before, model.get_weights()[0]),
              "loss", history.history["loss"][0])
    """).split()
    assert words[words.index("replicas") + 1] == "2" and words[words.index("changed") + 1] == "True"


def test_weights_file_without_encoder_layers_is_refused(tmp_path):
    other = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="unrelated")])
    path = tmp_path / "other.h5"
    other.save_weights(str(path))
    with pytest.raises(ValueError, match="no EfficientNet-B0 layer"):
        build_unet(str(path))
