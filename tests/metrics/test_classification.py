"""Classification scores, intervals and paired tests: by hand and against scikit-learn / SciPy."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    matthews_corrcoef,
    roc_auc_score,
)

from multiloss.metrics.classification import (
    brier_score,
    classification_scores,
    expected_calibration_error,
    mcc_bootstrap_ci,
    mcc_interval,
    mcnemar_exact,
    paired_bootstrap_mcc_difference,
    proportion_ci,
    reliability_bins,
    resampled_mcc,
)


def random_predictions(seed, n=200, skill=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_agree_with_scikit_learn(seed):
    y, p = random_predictions(seed)
    s = classification_scores(y, p)
    onehot = np.eye(3)[y]
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert s["mcc"] == pytest.approx(matthews_corrcoef(y, p.argmax(1)))
    assert s["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="weighted"))
    assert s["auroc_micro"] == pytest.approx(roc_auc_score(onehot.ravel(), p.ravel()))
    assert s["auroc_macro"] == pytest.approx(np.mean([roc_auc_score(onehot[:, k], p[:, k]) for k in range(3)]))
    assert s["nll"] == pytest.approx(log_loss(y, p))
    assert s["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean())


def test_ece_by_hand():
    # two bins used: conf 0.9 (2 images, 1 right) and conf 0.5 (2 images, both right)
    p = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.5))
    conf, acc, count = reliability_bins(y, p)
    assert conf.tolist() == pytest.approx([0.5, 0.9]) and acc.tolist() == [1.0, 0.5] and count.tolist() == [2, 2]


def test_perfectly_calibrated_and_perfect_predictions():
    y = np.array([0, 1, 2, 0])
    assert brier_score(y, np.eye(3)[y]) == 0.0
    assert expected_calibration_error(y, np.eye(3)[y]) == 0.0


def test_wald_interval_by_hand():
    low, high = proportion_ci(0.9, 624, "wald")
    half = 1.959963984540054 * np.sqrt(0.9 * 0.1 / 624)
    assert (low, high) == pytest.approx((0.9 - half, 0.9 + half))


def test_clopper_pearson_is_the_beta_interval_and_wilson_the_score_interval():
    low, high = proportion_ci(0.75, 40, "clopper-pearson")
    assert low == pytest.approx(stats.beta.ppf(0.025, 30, 11)) and high == pytest.approx(stats.beta.ppf(0.975, 31, 10))
    low, high = proportion_ci(0.75, 40, "wilson")
    z = stats.norm.ppf(0.975)
    centre = (0.75 + z * z / 80) / (1 + z * z / 40)
    half = z / (1 + z * z / 40) * np.sqrt(0.75 * 0.25 / 40 + z * z / 6400)
    assert (low, high) == pytest.approx((centre - half, centre + half))


def test_interval_errors_are_named():
    with pytest.raises(ValueError, match="method clopper-pearson needs a value in"):
        proportion_ci(-0.2, 100, "clopper-pearson")
    with pytest.raises(ValueError, match="method must be wald"):
        proportion_ci(0.5, 100, "exact")


def test_mcc_bootstrap_is_seeded_and_brackets_the_estimate():
    y, p = random_predictions(3)
    pred = p.argmax(1)
    ci = mcc_bootstrap_ci(y, pred, n_resamples=500, seed=7)
    assert ci == mcc_bootstrap_ci(y, pred, n_resamples=500, seed=7)
    assert ci[0] < matthews_corrcoef(y, pred) < ci[1]
    assert mcc_interval(y, pred, "wald") == proportion_ci(matthews_corrcoef(y, pred), len(y), "wald")


def test_resampled_mcc_equals_scikit_learn_per_resample():
    y, p = random_predictions(5, n=80)
    pred = p.argmax(1)
    index = np.random.default_rng(2).integers(0, 80, (40, 80))
    index[0] = 0                                   # one resample of a single image: MCC undefined → 0
    expected = [matthews_corrcoef(y[i], pred[i]) for i in index]
    np.testing.assert_allclose(resampled_mcc(y, pred, index), expected, atol=1e-12)


def test_mcnemar_exact_by_hand():
    y = np.zeros(10, int)
    a = np.array([0] * 7 + [1] * 3)          # right on the first 7
    b = np.array([0, 1, 1, 1, 1, 1, 0, 0, 0, 1])
    # a right & b wrong: indices 1-5 -> 5; a wrong & b right: 7, 8 -> 2
    assert mcnemar_exact(y, a, b) == pytest.approx(2 * stats.binom.cdf(2, 7, 0.5))
    assert mcnemar_exact(y, a, a) == 1.0


def test_paired_bootstrap_difference():
    y, p = random_predictions(4, n=300, skill=3.0)
    good = p.argmax(1)
    bad = np.where(np.random.default_rng(0).random(300) < 0.5, good, (good + 1) % 3)
    result = paired_bootstrap_mcc_difference(y, good, bad, n_resamples=300, seed=1)
    assert result["difference"] > 0 and result["low"] > 0 and result["p_value"] < 0.01
    same = paired_bootstrap_mcc_difference(y, good, good, n_resamples=50)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_binomial_mcc_intervals_work_for_negative_mcc():
    y = np.array([0, 1, 2] * 20)
    wrong = (y + 1) % 3
    for method in ("clopper-pearson", "wilson"):
        low, high = mcc_interval(y, wrong, method)
        assert -1 <= low < matthews_corrcoef(y, wrong) < high <= 1


def test_every_interval_method_says_what_it_is_for_the_mcc():
    from multiloss.metrics.classification import CI_METHODS, MCC_INTERVAL_LABELS

    assert set(MCC_INTERVAL_LABELS) == set(CI_METHODS)
    for method in ("clopper-pearson", "wilson"):
        assert "proportion interval on (MCC + 1)/2" in MCC_INTERVAL_LABELS[method]
