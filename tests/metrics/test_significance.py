"""Paired bootstrap, Holm's correction and mean ± std: by hand, against scikit-learn and the classification
metrics, and against slow reference loops written here."""


import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss, matthews_corrcoef

from multiloss.metrics.classification import (
    brier_score,
    classification_scores,
    expected_calibration_error,
    paired_bootstrap_mcc_difference,
)
from multiloss.metrics.significance import (
    STATISTICS,
    format_mean_std,
    holm,
    mean_std,
    paired_bootstrap,
)

NAMES = ("mcc", "ece", "nll", "brier", "accuracy")
HIGHER_IS_BETTER = {"mcc": True, "accuracy": True, "ece": False, "nll": False, "brier": False}

# The scores computed directly with scikit-learn and metrics.classification, on normalised probabilities.
REFERENCE = {
    "mcc": lambda y, p: matthews_corrcoef(y, p.argmax(1)),
    "ece": expected_calibration_error,
    "nll": lambda y, p: log_loss(y, np.clip(p, 1e-15, 1), labels=np.arange(p.shape[1])),
    "brier": brier_score,
    "accuracy": lambda y, p: accuracy_score(y, p.argmax(1)),
}


def two_models(seed, n=300, classes=3, gap=1.0):
    """Labels drawn from model a's probabilities (a is calibrated); b is a noisier, over-confident copy.

    ``gap`` scales how much worse b is: 0 gives two equally good, independently noisy models.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, classes))
    a = softmax(z, axis=1)
    labels = (rng.random(n)[:, None] > a.cumsum(1)).sum(1)
    if gap == 0:
        b = softmax(z + rng.normal(0.0, 0.5, z.shape), axis=1)
        a = softmax(z + rng.normal(0.0, 0.5, z.shape), axis=1)
    else:
        b = softmax((1 + 3 * gap) * (z + rng.normal(0.0, 2.0 * gap, z.shape)), axis=1)
    return labels, a, b


def test_the_table_names_the_five_statistics():
    assert tuple(STATISTICS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_identical_models_differ_by_nothing(name):
    labels, a, _ = two_models(0)
    result = paired_bootstrap(labels, a, a.copy(), name, n_resamples=500)
    assert result == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_a_clearly_better_model_is_significant(name):
    labels, a, b = two_models(1)
    result = paired_bootstrap(labels, a, b, name)
    assert result["p_value"] < 0.01
    if HIGHER_IS_BETTER[name]:
        assert 0 < result["low"] <= result["difference"] <= result["high"]
    else:
        assert result["low"] <= result["difference"] <= result["high"] < 0


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_difference_is_the_classification_scores_difference(name, seed):
    labels, a, b = two_models(seed, n=250, classes=4)
    a, b = 1.3 * a, 0.7 * b   # unnormalised rows are renormalised, as classification_scores does
    expected = classification_scores(labels, a)[name] - classification_scores(labels, b)[name]
    assert paired_bootstrap(labels, a, b, name, n_resamples=50)["difference"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_matches_a_slow_reference_bootstrap(name):
    # The resampling written out here as a loop over the documented draw, scored with REFERENCE.
    labels, a, b = two_models(4, n=50, gap=0.3)
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    index = np.random.default_rng(9).integers(0, 50, (60, 50))
    diffs = np.array([REFERENCE[name](labels[i], a[i]) - REFERENCE[name](labels[i], b[i]) for i in index])
    result = paired_bootstrap(labels, a, b, name, n_resamples=60, seed=9, level=0.9)
    low, high = np.quantile(diffs, [0.05, 0.95])
    assert result["low"] == pytest.approx(low, abs=1e-12)
    assert result["high"] == pytest.approx(high, abs=1e-12)
    assert result["p_value"] == pytest.approx(min(1.0, 2 * min((diffs <= 1e-12).mean(), (diffs >= -1e-12).mean())))


def test_mcc_agrees_with_paired_bootstrap_mcc_difference():
    labels, a, b = two_models(5, gap=0.2)
    ours = paired_bootstrap(labels, a, b, "mcc", n_resamples=1000, seed=3, level=0.9)
    theirs = paired_bootstrap_mcc_difference(labels, a.argmax(1), b.argmax(1), n_resamples=1000, seed=3, level=0.9)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12)


@pytest.mark.parametrize("name", ["mcc", "nll"])
def test_seeded_runs_repeat_and_seeds_differ(name):
    labels, a, b = two_models(6, gap=0.2)
    first = paired_bootstrap(labels, a, b, name, seed=1)
    assert paired_bootstrap(labels, a, b, name, seed=1) == first
    other = paired_bootstrap(labels, a, b, name, seed=2)
    assert other["difference"] == first["difference"]
    assert (other["low"], other["high"]) != (first["low"], first["high"])


@pytest.mark.parametrize("name", NAMES)
def test_swapping_the_models_negates_the_difference(name):
    labels, a, b = two_models(7, gap=0.2)
    forward = paired_bootstrap(labels, a, b, name, n_resamples=800)
    backward = paired_bootstrap(labels, b, a, name, n_resamples=800)
    assert backward["difference"] == pytest.approx(-forward["difference"], abs=1e-12)
    assert backward["low"] == pytest.approx(-forward["high"], abs=1e-12)
    assert backward["high"] == pytest.approx(-forward["low"], abs=1e-12)
    assert backward["p_value"] == pytest.approx(forward["p_value"], abs=1e-12)


def test_p_value_and_interval_tell_the_same_story():
    # p < 1 − level exactly when the interval leaves 0 out, up to the quantiles' interpolation; the
    # cases are chosen so that both outcomes occur.
    seen = set()
    for seed in range(12):
        labels, a, b = two_models(seed, n=150, gap=0.0 if seed % 2 else 0.05)
        for name in ("nll", "brier"):
            result = paired_bootstrap(labels, a, b, name, n_resamples=1000, seed=seed)
            excludes = result["low"] > 0 or result["high"] < 0
            if result["p_value"] < 0.04:
                assert excludes
                seen.add("significant")
            elif result["p_value"] > 0.06:
                assert not excludes
                seen.add("not significant")
    assert seen == {"significant", "not significant"}


def test_an_equal_pair_is_not_significant():
    labels, a, b = two_models(8, gap=0.0)
    result = paired_bootstrap(labels, a, b, "accuracy")
    assert result["p_value"] > 0.05 and result["low"] < 0 < result["high"]


def test_one_hot_labels_give_the_same_result():
    labels, a, b = two_models(9)
    assert paired_bootstrap(np.eye(3)[labels], a, b, "ece", n_resamples=200) == \
        paired_bootstrap(labels, a, b, "ece", n_resamples=200)


def test_unknown_statistic_lists_the_known_ones():
    labels, a, b = two_models(0, n=20)
    with pytest.raises(ValueError, match="unknown statistic 'auroc'; known: mcc, ece, nll, brier, accuracy"):
        paired_bootstrap(labels, a, b, "auroc")


@pytest.mark.parametrize("change,message", [
    (dict(probs_b=np.full((19, 3), 1 / 3)), "same shape"),
    (dict(labels=np.zeros(19, int)), "labels must be 20 class indices"),
    (dict(labels=np.full(20, 3)), r"labels must lie in \[0, 3\)"),
    (dict(probs_a=np.full(20, 0.5), probs_b=np.full(20, 0.5)), "must be 2-D"),
    (dict(n_resamples=0), "n_resamples must be a whole number >= 1"),
    (dict(n_resamples=2.5), "n_resamples must be a whole number >= 1"),
    (dict(level=1.0), r"level must be in \(0, 1\)"),
    (dict(level=0.0), r"level must be in \(0, 1\)"),
])
def test_paired_bootstrap_rejects_bad_inputs(change, message):
    labels, a, b = two_models(0, n=20)
    arguments = dict(labels=labels, probs_a=a, probs_b=b, statistic="mcc") | change
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(**arguments)


# Holm by hand: sort, multiply the i-th smallest by (m − i + 1), carry the running maximum, cap at 1.
HOLM_CASES = [
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    ([0.5], [0.5]),
    ([0.02, 0.02], [0.04, 0.04]),
    # sorted 0.01, 0.3, 0.6 → 0.03, 0.6, 0.6
    ([0.3, 0.6, 0.01], [0.6, 0.6, 0.03]),
    # the running maximum lifts the second: 0.03, 0.022 → 0.03
    ([0.01, 0.011, 0.5], [0.03, 0.03, 0.5]),
    ([0.4, 0.5], [0.8, 0.8]),
    ([0.6, 0.7], [1.0, 1.0]),
    ([0.0, 1.0], [0.0, 1.0]),
    ([], []),
]


@pytest.mark.parametrize("raw,adjusted", HOLM_CASES)
def test_holm_by_hand(raw, adjusted):
    np.testing.assert_allclose(holm(raw), adjusted, rtol=1e-12, atol=0)


def test_holm_passes_nans_through_and_does_not_count_them():
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04, 0.03, np.nan, 0.005]),
                               [0.03, np.nan, 0.06, 0.06, np.nan, 0.02], rtol=1e-12)
    assert np.isnan(holm([np.nan, np.nan])).all()


def test_holm_keeps_the_shape():
    table = np.array([[0.01, 0.04], [0.03, 0.005]])
    np.testing.assert_allclose(holm(table), [[0.03, 0.06], [0.06, 0.02]], rtol=1e-12)


def holm_rejections(p, alpha):
    """Holm's step-down procedure as a loop: reject in increasing order while p_(i) ≤ α/(m − i + 1)."""
    order = np.argsort(p)
    rejected = np.zeros(len(p), bool)
    for i, k in enumerate(order):
        if p[k] > alpha / (len(p) - i):
            break
        rejected[k] = True
    return rejected


@pytest.mark.parametrize("seed", range(5))
def test_holm_is_monotone_and_is_the_step_down_procedure(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.02, 4), rng.uniform(0, 1, 8)])
    adjusted = holm(p)
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all()
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    for alpha in (0.01, 0.05, 0.1, 0.2):
        np.testing.assert_array_equal(adjusted <= alpha, holm_rejections(p, alpha))


@pytest.mark.parametrize("bad", [[0.5, 1.2], [-0.1], [np.inf]])
def test_holm_rejects_values_outside_the_unit_interval(bad):
    with pytest.raises(ValueError, match="must lie in"):
        holm(bad)


def test_mean_std_by_hand():
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5 and std == pytest.approx(np.sqrt(5 / 3), rel=1e-12)   # Σ(x − 2.5)² = 5, ddof = 1
    mean, std = mean_std([0.7])
    assert mean == 0.7 and np.isnan(std)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_format_mean_std():
    # mean 0.812; sample std |0.824 − 0.8| / √2 = 0.01697
    assert format_mean_std([0.8, 0.824]) == "0.812 ± 0.017"
    assert format_mean_std([0.8, 0.824], digits=2) == "0.81 ± 0.02"
    assert format_mean_std([0.8123]) == "0.812"
    assert format_mean_std(np.array([0.81, 0.83, 0.79])) == "0.810 ± 0.020"
    with pytest.raises(ValueError, match="digits"):
        format_mean_std([0.8], digits=-1)
