"""Temperature scaling: recovery of a known temperature, optimality against a brute-force grid, by-hand
values, invariants and input errors."""

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.metrics import log_loss

from multiloss.metrics.calibration import (
    TEMPERATURE_BOUNDS,
    fit_temperature,
    temperature_scaled,
)


def sampled(seed, n, sharpen, classes=3, scale=1.5):
    """Labels drawn from softmax(z) and the predictions softmax(sharpen·z): the true T is ``sharpen``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, classes))
    truth = softmax(z, axis=1)
    labels = (rng.random(n)[:, None] > truth.cumsum(1)).sum(1)
    return labels, softmax(sharpen * z, axis=1)


def reference_nll(labels, probs, temperature):
    """NLL of softmax(log p / T), computed here with SciPy and scikit-learn, not with the library."""
    scaled = softmax(np.log(np.clip(probs, 1e-15, 1)) / temperature, axis=1)
    return log_loss(labels, scaled, labels=np.arange(probs.shape[1]))


@pytest.mark.parametrize("sharpen", [3.0, 0.5])
def test_recovers_a_known_temperature(sharpen):
    # Over 30 seeds at n = 20 000 the fitted T / true T has mean 0.998 and sd 0.011: 5 % is ~4.5 sd.
    labels, probs = sampled(seed=7, n=20_000, sharpen=sharpen)
    assert fit_temperature(probs, labels) == pytest.approx(sharpen, rel=0.05)


@pytest.mark.parametrize("seed,sharpen,classes", [(0, 2.0, 3), (1, 0.7, 4), (2, 1.0, 2), (3, 5.0, 3)])
def test_fitted_nll_beats_t1_and_a_brute_force_grid(seed, sharpen, classes):
    labels, probs = sampled(seed, n=400, sharpen=sharpen, classes=classes)
    fitted = fit_temperature(probs, labels)
    assert TEMPERATURE_BOUNDS[0] <= fitted <= TEMPERATURE_BOUNDS[1]
    at_fit = reference_nll(labels, probs, fitted)
    grid = np.exp(np.linspace(np.log(0.2), np.log(20.0), 1001))
    z = np.log(np.clip(probs, 1e-15, 1))[None] / grid[:, None, None]
    best_on_grid = (logsumexp(z, axis=2) - z[:, np.arange(len(labels)), labels]).mean(1).min()
    assert at_fit <= reference_nll(labels, probs, 1.0) + 1e-12
    assert at_fit <= best_on_grid + 1e-9


def test_over_confident_predictions_get_t_above_one_and_under_confident_below():
    labels, probs = sampled(seed=11, n=3000, sharpen=2.5)
    assert fit_temperature(probs, labels) > 1.5
    labels, probs = sampled(seed=11, n=3000, sharpen=0.4)
    assert fit_temperature(probs, labels) < 0.7


def test_fit_follows_a_rescaling_of_the_inputs():
    # Sharpening the inputs by T0 divides the temperature they need by T0.
    labels, probs = sampled(seed=5, n=2000, sharpen=2.0)
    fitted = fit_temperature(probs, labels)
    assert fit_temperature(temperature_scaled(probs, 2.0), labels) == pytest.approx(fitted / 2.0, rel=1e-5)


def test_one_hot_labels_fit_like_class_indices():
    labels, probs = sampled(seed=4, n=500, sharpen=2.0)
    assert fit_temperature(probs, np.eye(3)[labels]) == pytest.approx(fit_temperature(probs, labels), rel=1e-12)


@pytest.mark.parametrize("classes", [2, 4])
def test_uniform_probabilities_return_one(classes):
    labels = np.arange(60) % classes
    assert fit_temperature(np.full((60, classes), 1.0 / classes), labels) == 1.0


def test_a_validation_set_all_right_stops_at_the_lower_bound():
    # Every label is the argmax: the NLL falls all the way to T → 0, so the fit ends at the bound.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 100)
    probs = softmax(rng.normal(size=(100, 3)) + 3 * np.eye(3)[labels], axis=1)
    right = probs.argmax(1) == labels
    labels, probs = labels[right], probs[right]
    assert len(labels) > 50
    assert fit_temperature(probs, labels) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)


def test_temperature_scaling_by_hand():
    # softmax(log p / 2) ∝ sqrt(p): [0.8, 0.2] → [√.8, √.2] / (√.8 + √.2) = [2/3, 1/3].
    np.testing.assert_allclose(temperature_scaled([[0.8, 0.2]], 2.0), [[2 / 3, 1 / 3]], rtol=1e-12)
    # T = 1/2 squares: [0.8, 0.2] → [0.64, 0.04] / 0.68.
    np.testing.assert_allclose(temperature_scaled([[0.8, 0.2]], 0.5), [[0.64 / 0.68, 0.04 / 0.68]], rtol=1e-12)


def test_temperature_one_is_the_identity():
    _, probs = sampled(seed=1, n=200, sharpen=1.0, classes=4)
    np.testing.assert_allclose(temperature_scaled(probs, 1.0), probs, rtol=1e-12, atol=1e-15)
    # Unnormalised rows come back renormalised.
    np.testing.assert_allclose(temperature_scaled(3 * probs, 1.0), probs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0, 30.0])
def test_scaling_keeps_the_argmax_and_sums_to_one(temperature):
    _, probs = sampled(seed=2, n=500, sharpen=1.0, classes=5)
    scaled = temperature_scaled(probs, temperature)
    assert scaled.shape == probs.shape
    np.testing.assert_allclose(scaled.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(scaled.argmax(1), probs.argmax(1))
    top, scaled_top = probs.max(1), scaled.max(1)
    if temperature > 1:
        assert (scaled_top <= top + 1e-12).all() and (scaled_top < top).any()
    elif temperature < 1:
        assert (scaled_top >= top - 1e-12).all() and (scaled_top > top).any()


@pytest.mark.parametrize("probs,labels,message", [
    (np.full(4, 0.5), [0, 1, 0, 1], "must be 2-D"),
    (np.full((2, 2, 2), 0.5), [0, 1], "must be 2-D"),
    (np.zeros((0, 3)), [], "no rows"),
    (np.ones((3, 1)), [0, 0, 0], "at least 2 classes"),
    (np.full((3, 2), 0.5), [0, 1], "labels must be 3 class indices"),
    (np.full((3, 2), 0.5), [0, 1, 2], r"labels must lie in \[0, 2\)"),
    (np.full((3, 2), 0.5), [0, -1, 1], r"labels must lie in \[0, 2\)"),
    (np.full((3, 2), 0.5), [0.0, 0.5, 1.0], "whole class indices"),
    (np.full((3, 2), 0.5), np.eye(3), "one-hot labels must have shape"),
    ([[0.5, 0.5], [-0.1, 1.1]], [0, 1], "finite and non-negative"),
    ([[0.5, 0.5], [np.nan, 1.0]], [0, 1], "finite and non-negative"),
    ([[0.5, 0.5], [0.0, 0.0]], [0, 1], "positive sum"),
])
def test_fit_temperature_rejects_bad_inputs(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(probs, labels)


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.nan, np.inf])
def test_temperature_scaled_rejects_bad_temperatures(temperature):
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        temperature_scaled([[0.3, 0.7]], temperature)


def test_temperature_scaled_rejects_bad_shapes():
    with pytest.raises(ValueError, match="temperature_scaled: probs must be 2-D"):
        temperature_scaled([0.3, 0.7], 2.0)
