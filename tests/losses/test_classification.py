"""Classification losses: NumPy computations, Keras' own losses where they coincide, gradients."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from multiloss.losses import CLASSIFICATION_LOSSES, classification_loss
from multiloss.losses.classification import EntropyRegularizer

RNG = np.random.default_rng(0)
Y = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 8)]
LOGITS = RNG.normal(size=(8, 3)).astype(np.float32) * 2
P = (np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)).astype(np.float32)


def np_entropy(p):
    return -(p * np.log(p)).sum(1)


def np_calibration(y, p):
    return abs((p.argmax(1) == y.argmax(1)).mean() - p.max(1).mean())


def np_base(kind, y, p, gamma=1.0):
    if kind == "cce":
        return -(y * np.log(p)).sum(1)
    if kind == "focal":
        return -(y * (1 - p) ** gamma * np.log(p)).sum(1)
    if kind == "kld":
        return (y * np.log(np.clip(y, 1e-7, 1) / p)).sum(1)
    return np.maximum(((1 - y) * p).max(1) - (y * p).sum(1) + 1, 0)


def np_loss(name, y, p, gamma=1.0, sigma=None, lam=None, beta=None):
    base = {"focal": "focal", "kld": "kld", "hinge": "hinge"}.get(name.split("_")[-1], "cce")   # *_entropy: cce
    targets = (1 - sigma) * y + sigma / 3 if sigma is not None else y
    total = np_base(base, targets, p, gamma).mean()
    if lam is not None:
        total += lam * np_calibration(y, p)
    if beta is not None and name == "cal_neg_entropy":
        total -= beta * np_entropy(p).mean()
    return total


@pytest.mark.parametrize("name", list(CLASSIFICATION_LOSSES))
def test_loss_matches_numpy(name):
    params = CLASSIFICATION_LOSSES[name]
    value = float(classification_loss(name)(Y, P))
    assert value == pytest.approx(np_loss(name, Y, P, **params), rel=1e-5)


def test_paper_values():
    assert CLASSIFICATION_LOSSES["cal_neg_entropy"] == {"beta": 0.001, "lam": 10.0}
    assert CLASSIFICATION_LOSSES["ls_cce"] == {"sigma": 0.2}
    assert CLASSIFICATION_LOSSES["cal_focal"] == {"gamma": 1.0, "lam": 1.0}
    assert len(CLASSIFICATION_LOSSES) == 12


def test_agrees_with_keras_losses_where_they_coincide():
    y, p = tf.constant(Y), tf.constant(P)
    pairs = [
        ("cce", {}, tf_keras.losses.CategoricalCrossentropy()),
        ("ls_cce", {"sigma": 0.3}, tf_keras.losses.CategoricalCrossentropy(label_smoothing=0.3)),
        ("kld", {}, tf_keras.losses.KLDivergence()),
        ("hinge", {}, tf_keras.losses.CategoricalHinge()),
        ("focal", {"gamma": 2.0}, tf_keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0)),
    ]
    for name, params, keras_loss in pairs:
        assert float(classification_loss(name, **params)(y, p)) == pytest.approx(float(keras_loss(y, p)), rel=1e-5), name


def test_label_smoothing_divides_by_the_class_count():
    # with sigma = 1 every target is uniform 1/3: the smoothed CCE is the cross-entropy to uniform
    value = float(classification_loss("ls_cce", sigma=1.0)(Y, P))
    assert value == pytest.approx((-np.log(P).sum(1) / 3).mean(), rel=1e-5)


def gradient(loss, logits=LOGITS):
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(tf.constant(Y), tf.nn.softmax(z))
    return tape.gradient(value, z).numpy()


@pytest.mark.parametrize("name", ["cal_cce", "cal_kld", "cal_focal", "cal_hinge", "cal_neg_entropy"])
def test_lambda_changes_the_gradient(name):
    assert not np.allclose(gradient(classification_loss(name, lam=0.5)), gradient(classification_loss(name, lam=20.0)))


def test_calibration_gradient_is_lambda_times_the_confidence_gradient():
    g_base = gradient(classification_loss("cce"))
    g_cal = gradient(classification_loss("cal_cce", lam=5.0))
    z = tf.Variable(LOGITS)
    with tf.GradientTape() as tape:
        conf = tf.reduce_mean(tf.reduce_max(tf.nn.softmax(z), -1))
    sign = np.sign(P.max(1).mean() - (P.argmax(1) == Y.argmax(1)).mean())
    np.testing.assert_allclose(g_cal - g_base, 5.0 * sign * tape.gradient(conf, z).numpy(), atol=1e-6)


def test_beta_changes_the_gradient_of_cal_neg_entropy():
    assert not np.allclose(gradient(classification_loss("cal_neg_entropy", beta=1e-3)),
                           gradient(classification_loss("cal_neg_entropy", beta=1.0)))


def test_cce_entropy_regularises_the_softmax_layer_and_beta_changes_its_gradient():
    x = RNG.normal(size=(8, 5)).astype(np.float32)

    def kernel_gradient(beta):
        loss = classification_loss("cce_entropy", beta=beta)
        tf_keras.utils.set_random_seed(0)
        dense = tf_keras.layers.Dense(3, activation="softmax", activity_regularizer=loss.activity_regularizer())
        model = tf_keras.Sequential([tf_keras.Input((5,)), dense])
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            total = loss(Y, out) + tf.add_n(model.losses)
        return tape.gradient(total, dense.kernel).numpy(), float(tf.add_n(model.losses)), out.numpy()

    g_small, reg_small, out = kernel_gradient(0.1)
    g_large, reg_large, _ = kernel_gradient(5.0)
    assert not np.allclose(g_small, g_large)
    assert reg_small == pytest.approx(-0.1 * np_entropy(out).mean(), rel=1e-5)    # attached, batch mean
    assert classification_loss("cce").activity_regularizer() is None


def test_foreign_parameter_and_unknown_loss_are_named():
    with pytest.raises(ValueError, match=r"classification loss 'cce' has no parameter lam \(it has no parameters\)"):
        classification_loss("cce", lam=1.0)
    with pytest.raises(ValueError, match=r"'cal_focal' has no parameter sigma \(it has gamma, lam\)"):
        classification_loss("cal_focal", sigma=0.1)
    with pytest.raises(ValueError, match="unknown classification loss 'dice'"):
        classification_loss("dice")


def test_round_trip_through_keras_serialization():
    loss = classification_loss("cal_neg_entropy", beta=0.01)
    again = tf_keras.losses.deserialize(tf_keras.losses.serialize(loss))
    assert again.loss == "cal_neg_entropy" and again.params == loss.params
    assert float(again(Y, P)) == pytest.approx(float(loss(Y, P)))
    reg = EntropyRegularizer(2.0)
    assert tf_keras.regularizers.deserialize(tf_keras.regularizers.serialize(reg)).beta == 2.0


def test_class_weights_reweight_examples():
    """Keras sample weights pick examples: weight 1 on class 0 only is the loss of class 0 alone."""
    loss = classification_loss("focal")
    weights = (Y.argmax(1) == 0).astype(np.float32)
    weighted = float(loss(Y, P, sample_weight=weights))
    only = float(classification_loss("focal")(Y[weights == 1], P[weights == 1]))
    assert weighted == pytest.approx(only * weights.sum() / len(Y), rel=1e-5)


def test_the_classifier_carries_the_entropy_regulariser():
    from multiloss.models.classifier import build_classifier
    from multiloss.models.unet import build_unet
    model = build_classifier(build_unet(), activity_regularizer=classification_loss("cce_entropy").activity_regularizer())
    model(np.zeros((2, 32, 32, 3), np.float32), training=True)
    assert model.get_layer("cls_softmax").activity_regularizer.beta == 2.0
    assert len(model.losses) == 1
