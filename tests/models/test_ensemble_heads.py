"""The trainable ensembles: the stacking meta-learner and the model-level ensemble's layers."""

import numpy as np
import pytest
import tf_keras

from multiloss.models.classifier import DEEPEST_CONV
from multiloss.models.ensemble_heads import (
    ENSEMBLE_CONV,
    ModelLevel,
    build_stacking,
    fit_stacking,
    stacking_inputs,
    stacking_predict,
)


def test_stacking_inputs_put_each_image_members_side_by_side():
    probs = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)      # 2 members, 3 images
    rows = stacking_inputs(probs)
    assert rows.shape == (3, 6)
    np.testing.assert_array_equal(rows[1], [3, 4, 5, 12, 13, 14])


def test_stacking_learns_to_trust_the_good_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    good = np.eye(3)[labels] * 0.8 + 0.2 / 3
    noise = rng.dirichlet(np.ones(3), size=(2, 150))
    model = fit_stacking(np.stack([noise[0], good, noise[1]]), labels, epochs=200, seed=0)
    new_labels = rng.integers(0, 3, 60)
    new = np.stack([rng.dirichlet(np.ones(3), 60), np.eye(3)[new_labels] * 0.8 + 0.2 / 3, rng.dirichlet(np.ones(3), 60)])
    predicted = model.predict(stacking_inputs(new), verbose=0).argmax(1)
    assert (predicted == new_labels).mean() > 0.95


def test_stacking_fit_takes_the_steps_keras_adam_would_take():
    """The NumPy steps against Keras' own full-batch Adam fit from the same seeded weights."""
    import tensorflow as tf
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), size=(2, 40))
    ours = fit_stacking(probs, labels, epochs=25, lr=0.01, seed=3)

    tf_keras.utils.set_random_seed(3)
    start = build_stacking(2).get_weights()
    tf_keras.utils.set_random_seed(3)
    reference = build_stacking(2)
    reference.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    batch = tf.data.Dataset.from_tensors((stacking_inputs(probs), np.eye(3, dtype=np.float32)[labels])).repeat(25)
    reference.fit(batch, epochs=1, verbose=0)
    for mine, theirs, first in zip(ours.get_weights(), reference.get_weights(), start):
        assert not np.allclose(theirs, first)                          # 25 steps moved every weight
        np.testing.assert_allclose(mine, theirs, atol=2e-5)
    np.testing.assert_allclose(stacking_predict(ours, probs), reference.predict(stacking_inputs(probs), verbose=0),
                               atol=1e-5)


def tiny_member(seed: int) -> tf_keras.Model:
    """Classifier-shaped: ... → cls_conv → GAP → Dense(3, softmax)."""
    tf_keras.utils.set_random_seed(seed)
    image = tf_keras.Input((None, None, 3))
    x = tf_keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(image)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.Conv2D(8, 3, activation="relu", padding="same", name=DEEPEST_CONV)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax", name="cls_softmax")(x))


def test_model_level_trains_only_its_new_layers_and_shares_them_with_the_head():
    members = [tiny_member(1), tiny_member(2)]
    before = [m.get_weights() for m in members]
    ensemble = ModelLevel(members, ["a", "b"], filters=16)
    # the 1×1 convolution is trainable (the published code froze it), the members are not
    trainable = {w.name.split("/")[0] for w in ensemble.full.trainable_weights}
    assert trainable == {ENSEMBLE_CONV, "ensemble_softmax"}
    assert ensemble.full.get_layer(ENSEMBLE_CONV).kernel_size == (1, 1)
    images = np.random.default_rng(0).random((6, 16, 16, 3)).astype(np.float32)
    features = ensemble.features.predict(images, verbose=0)
    assert features.shape == (6, 8, 8, 16)                       # two members × 8 channels
    labels = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    conv, dense = (ensemble.full.get_layer(n).get_weights() for n in (ENSEMBLE_CONV, "ensemble_softmax"))
    ensemble.head.compile(optimizer=tf_keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    ensemble.head.fit(features, labels, epochs=3, verbose=0)
    np.testing.assert_allclose(ensemble.full.predict(images, verbose=0), ensemble.head.predict(features, verbose=0),
                               atol=1e-6)
    for member, weights in zip(members, before):
        for now, then in zip(member.get_weights(), weights):
            np.testing.assert_array_equal(now, then)
    for name, then in ((ENSEMBLE_CONV, conv), ("ensemble_softmax", dense)):     # both new layers trained
        assert not np.allclose(ensemble.full.get_layer(name).get_weights()[0], then[0]), name


def test_the_published_model_level_ensemble_trains_only_its_last_dense_layer():
    """Flaw head_dense_only: the 1×1 convolution keeps its seeded random weights, on cached
    features and through the full image model alike."""
    members = [tiny_member(1), tiny_member(2)]
    tf_keras.utils.set_random_seed(7)
    ensemble = ModelLevel(members, ["a", "b"], filters=16, freeze_conv=True)
    tf_keras.utils.set_random_seed(7)
    corrected = ModelLevel(members, ["a", "b"], filters=16)
    for model in (ensemble.full, ensemble.head):
        assert [layer.name for layer in model.layers if layer.trainable_weights] == ["ensemble_softmax"]
        assert [w.name.split("/")[0] for w in model.trainable_weights] == ["ensemble_softmax"] * 2
    conv, dense = (ensemble.full.get_layer(n).get_weights() for n in (ENSEMBLE_CONV, "ensemble_softmax"))
    for mine, theirs in zip(conv, corrected.full.get_layer(ENSEMBLE_CONV).get_weights()):
        np.testing.assert_array_equal(mine, theirs)                  # the same seeded initial weights
    images = np.random.default_rng(0).random((6, 16, 16, 3)).astype(np.float32)
    labels = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    for model, x in ((ensemble.head, ensemble.features.predict(images, verbose=0)), (ensemble.full, images)):
        model.compile(optimizer=tf_keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
        model.fit(x, labels, epochs=3, verbose=0)
        for now, then in zip(ensemble.full.get_layer(ENSEMBLE_CONV).get_weights(), conv):
            np.testing.assert_array_equal(now, then)
        moved = ensemble.full.get_layer("ensemble_softmax").get_weights()
        assert not np.allclose(moved[0], dense[0]) and not np.allclose(moved[1], dense[1])
        dense = moved


def test_model_level_refuses_a_member_without_the_cut_layer():
    plain = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(2, 1, name="other")])
    with pytest.raises(ValueError, match="member b: no layer 'cls_conv'"):
        ModelLevel([tiny_member(0), plain], ["a", "b"])

