"""The published variants of the classification losses: each flaw reproduced exactly, and only where
it applies."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from multiloss import variants
from multiloss.losses import classification_loss

RNG = np.random.default_rng(1)
X = RNG.normal(size=(32, 6)).astype(np.float32)
Y = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 32)]


def tiny_model(seed: int = 0, activity_regularizer=None) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((6,))
    hidden = tf_keras.layers.Dense(8, activation="relu")(inputs)
    out = tf_keras.layers.Dense(3, activation="softmax", activity_regularizer=activity_regularizer)(hidden)
    return tf_keras.Model(inputs, out)


def weight_gradients(loss) -> list[np.ndarray]:
    model = tiny_model()
    with tf.GradientTape() as tape:
        value = loss(Y, model(X))
    return [g.numpy() for g in tape.gradient(value, model.trainable_weights)]


@pytest.mark.parametrize("calibrated, base, params", [
    ("cal_cce", "cce", {}), ("cal_kld", "kld", {}), ("cal_focal", "focal", {"gamma": 2.0}),
    ("cal_hinge", "hinge", {}),
])
def test_published_calibration_term_leaves_exactly_the_base_gradient(calibrated, base, params):
    published = weight_gradients(classification_loss(calibrated, variant="published", lam=10.0, **params))
    expected = weight_gradients(classification_loss(base, **params))
    corrected = weight_gradients(classification_loss(calibrated, lam=10.0, **params))
    assert all(np.array_equal(a, b) for a, b in zip(published, expected))       # identical, not close
    assert not all(np.allclose(a, b) for a, b in zip(corrected, expected))      # the corrected term acts


def test_published_calibration_term_still_moves_the_loss_value():
    p = tiny_model()(X)
    published = float(classification_loss("cal_cce", variant="published", lam=10.0)(Y, p))
    base = float(classification_loss("cce")(Y, p))
    assert published > base                                     # the constant is in the value


def test_published_cal_cce_and_cce_trained_with_one_seed_end_with_the_same_weights():
    trained = {}
    for name, loss in (("cce", classification_loss("cce")),
                       ("cal_cce", classification_loss("cal_cce", variant="published"))):
        model = tiny_model(seed=3)
        model.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
        model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        trained[name] = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(trained["cce"], trained["cal_cce"]))
    corrected = tiny_model(seed=3)
    corrected.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss=classification_loss("cal_cce"))
    corrected.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert not all(np.allclose(a, b) for a, b in zip(trained["cce"], corrected.get_weights()))


def test_published_cce_entropy_carries_no_regularisation_loss():
    published = classification_loss("cce_entropy", variant="published")
    corrected = classification_loss("cce_entropy")
    assert published.activity_regularizer() is None
    assert published.variant.flaws == ("entropy_unattached",)
    model = tiny_model(activity_regularizer=published.activity_regularizer())
    model(X)
    assert model.losses == []
    regularised = tiny_model(activity_regularizer=corrected.activity_regularizer())
    regularised(X)
    assert len(regularised.losses) == 1 and float(regularised.losses[0]) < 0      # -beta * entropy


def test_published_ls_focal_smooths_by_sigma_over_two():
    p = tiny_model()(X).numpy()
    sigma, gamma = 0.2, 1.0
    for variant, classes in (("published", 2), ("corrected", 3)):
        targets = (1 - sigma) * Y + sigma / classes
        expected = -(targets * (1 - p) ** gamma * np.log(p)).sum(1).mean()
        value = float(classification_loss("ls_focal", variant=variant, sigma=sigma, gamma=gamma)(Y, p))
        assert value == pytest.approx(expected, rel=1e-5)


def test_ls_cce_has_no_published_flaw():
    loss = classification_loss("ls_cce", variant="published")
    assert loss.variant.flaws == () and loss.variant.name == "corrected"      # trained, and tagged, as corrected
    p = tiny_model()(X)
    assert float(loss(Y, p)) == float(classification_loss("ls_cce")(Y, p))


@pytest.mark.parametrize("loss, variant, message", [
    ("cce", "smoothing_half", "smoothing_half does not apply to loss 'cce' (it applies to ls_focal)"),
    ("cal_cce", "entropy_unattached", "entropy_unattached does not apply to loss 'cal_cce'"),
    ("cce", "calibration_no_gradient", "does not apply to loss 'cce'"),
    ("cal_cce", "test_selection", "test_selection is a flaw of the ensemble stage"),
    ("cal_cce", "head_dense_only", "head_dense_only is a flaw of the ensemble stage"),
    ("cal_cce", "no_such_flaw", "unknown flaw no_such_flaw"),
])
def test_a_variant_that_does_not_apply_is_refused_by_name(loss, variant, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        classification_loss(loss, variant=variant)


def test_the_variant_survives_a_save_and_reload():
    loss = classification_loss("cal_neg_entropy", variant="published", lam=2.0)
    again = tf_keras.losses.deserialize(tf_keras.losses.serialize(loss))
    assert again.variant == loss.variant and again.params == loss.params
    assert again.variant.flaws == ("calibration_no_gradient",)
    old = tf_keras.losses.deserialize(tf_keras.losses.serialize(classification_loss("cal_cce")))
    assert old.variant.name == variants.CORRECTED
