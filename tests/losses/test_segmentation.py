"""Segmentation losses against NumPy computations and segmentation-models' own losses."""

import numpy as np
import pytest
import segmentation_models as sm
import tensorflow as tf

from multiloss.losses import SEGMENTATION_LOSSES, segmentation_loss

RNG = np.random.default_rng(0)
TRUE = (RNG.random((3, 6, 5, 1)) > 0.6).astype(np.float32)
TRUE[2] = 0.0                                    # one image with no lung at all
PRED = RNG.uniform(0.02, 0.98, (3, 6, 5, 1)).astype(np.float32)


def per_image(a):
    return a.reshape(len(a), -1)


def np_bce(t, p):
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def np_dice_loss(t, p):
    t, p = per_image(t), per_image(p)
    return np.mean(1 - (2 * (t * p).sum(1) + 1) / (t.sum(1) + p.sum(1) + 1))


def np_tversky_index(t, p, a, b):
    t, p = per_image(t), per_image(p)
    tp, fn, fp = (t * p).sum(1), (t * (1 - p)).sum(1), ((1 - t) * p).sum(1)
    return (tp + 1) / (tp + a * fn + b * fp + 1)


EXPECTED = {
    "bce": lambda t, p, **k: np_bce(t, p),
    "bce_dice": lambda t, p, alpha, beta: alpha * np_bce(t, p) + beta * np_dice_loss(t, p),
    "focal": lambda t, p, alpha, gamma: np.mean(-t * alpha * (1 - p) ** gamma * np.log(p)
                                                - (1 - t) * (1 - alpha) * p ** gamma * np.log(1 - p)),
    "tversky": lambda t, p, alpha, beta: np.mean(1 - np_tversky_index(t, p, alpha, beta)),
    "focal_tversky": lambda t, p, alpha, beta, gamma: np.mean((1 - np_tversky_index(t, p, alpha, beta)) ** (1 / gamma)),
}


@pytest.mark.parametrize("name", list(SEGMENTATION_LOSSES))
def test_loss_matches_numpy_at_the_paper_defaults(name):
    value = float(segmentation_loss(name)(TRUE, PRED))
    assert value == pytest.approx(EXPECTED[name](TRUE, PRED, **SEGMENTATION_LOSSES[name]), rel=1e-5)


def test_paper_defaults():
    assert SEGMENTATION_LOSSES["bce_dice"] == {"alpha": 0.5, "beta": 0.5}
    assert SEGMENTATION_LOSSES["focal"] == {"alpha": 0.25, "gamma": 1.0}
    assert SEGMENTATION_LOSSES["tversky"] == {"alpha": 0.7, "beta": 0.3}
    assert SEGMENTATION_LOSSES["focal_tversky"]["gamma"] == pytest.approx(4 / 3)


def test_overridden_parameter_is_used():
    value = float(segmentation_loss("tversky", alpha=0.2, beta=0.8)(TRUE, PRED))
    assert value == pytest.approx(EXPECTED["tversky"](TRUE, PRED, alpha=0.2, beta=0.8), rel=1e-5)
    assert value != pytest.approx(float(segmentation_loss("tversky")(TRUE, PRED)), rel=1e-3)


def test_dice_agrees_with_segmentation_models_per_image_dice():
    ours = float(segmentation_loss("bce_dice", alpha=0.0, beta=1.0)(TRUE, PRED))
    theirs = float(sm.losses.DiceLoss(per_image=True, smooth=1.0)(tf.constant(TRUE), tf.constant(PRED)))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_focal_agrees_with_segmentation_models_binary_focal():
    ours = float(segmentation_loss("focal", alpha=0.25, gamma=2.0)(TRUE, PRED))
    theirs = float(sm.losses.BinaryFocalLoss(alpha=0.25, gamma=2.0)(tf.constant(TRUE), tf.constant(PRED)))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_perfect_prediction_scores_near_zero_for_overlap_losses():
    perfect = np.clip(TRUE, 1e-7, 1 - 1e-7)
    for name in ("bce_dice", "tversky", "focal_tversky"):
        assert float(segmentation_loss(name, **({"alpha": 0.0} if name == "bce_dice" else {}))(TRUE, perfect)) < 1e-3


def test_unknown_loss_and_foreign_parameter_are_named():
    with pytest.raises(ValueError, match="unknown segmentation loss 'dice'"):
        segmentation_loss("dice")
    with pytest.raises(ValueError, match=r"segmentation loss 'bce' has no parameter gamma \(it has no parameters\)"):
        segmentation_loss("bce", gamma=2)
    with pytest.raises(ValueError, match=r"'tversky' has no parameter gamma \(it has alpha, beta\)"):
        segmentation_loss("tversky", gamma=2)


def test_loss_round_trips_through_keras_serialization():
    import tf_keras
    loss = segmentation_loss("focal_tversky", alpha=0.6)
    again = tf_keras.losses.deserialize(tf_keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.params == loss.params
    assert float(again(TRUE, PRED)) == pytest.approx(float(loss(TRUE, PRED)))


def test_losses_are_per_image_so_sample_weights_select_images():
    for name in SEGMENTATION_LOSSES:
        loss = segmentation_loss(name)
        weights = np.array([1.0, 0.0, 0.0], np.float32)
        assert float(loss(TRUE, PRED, sample_weight=weights)) == pytest.approx(
            float(loss(TRUE[:1], PRED[:1])) / 3, rel=1e-5), name
