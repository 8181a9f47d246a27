"""Prediction-level ensembles on arrays, with known answers."""

import numpy as np
import pytest

from multiloss.ensembles.combiners import (
    log_loss_of,
    majority_probs,
    majority_vote,
    mean_probs,
    optimize_weights,
    out_of_fold,
    vote_shares,
    weighted_mean,
)


def noisy_members(seed=0, n=120, skills=(0.5, 1.0, 2.0)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    members = []
    for skill in skills:
        logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[y]
        members.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return np.stack(members), y


def test_majority_vote_and_tie_goes_to_higher_mean_probability():
    # image 0: votes 2 for class 1; image 1: one vote each for 0, 2 and 1 -> mean decides
    members = np.array([
        [[0.1, 0.8, 0.1], [0.50, 0.20, 0.30]],
        [[0.2, 0.7, 0.1], [0.05, 0.15, 0.80]],
        [[0.6, 0.3, 0.1], [0.30, 0.40, 0.30]],
    ])
    # image 1 means: class 0 0.283, class 1 0.25, class 2 0.467 -> class 2 (not index-order 0)
    assert majority_vote(members).tolist() == [1, 2]
    np.testing.assert_allclose(vote_shares(members)[0], [1 / 3, 2 / 3, 0])


def test_tie_is_not_broken_by_class_index():
    members = np.array([[[0.6, 0.0, 0.4]], [[0.45, 0.0, 0.55]]])   # one vote each; class 0 has the higher mean
    assert majority_vote(members).tolist() == [0]
    members = np.array([[[0.51, 0.0, 0.49]], [[0.1, 0.0, 0.9]]])   # class 2 has the higher mean
    assert majority_vote(members).tolist() == [2]


def test_means():
    members, _ = noisy_members()
    np.testing.assert_allclose(mean_probs(members), members.mean(0))
    np.testing.assert_allclose(weighted_mean(members, [1, 0, 0]), members[0])
    with pytest.raises(ValueError, match="one weight per member"):
        weighted_mean(members, [0.5, 0.5])
    with pytest.raises(ValueError, match="shaped \\(members, images, classes\\)"):
        mean_probs(members[0])


def test_a_perfect_member_gets_almost_all_the_weight():
    members, y = noisy_members(1)
    perfect = np.full_like(members[0], 0.005)
    perfect[np.arange(len(y)), y] = 0.99
    weights = optimize_weights(np.concatenate([members, perfect[None]]), y)
    assert weights[-1] > 0.95


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weights_are_valid_and_never_worse_than_the_best_member(seed):
    members, y = noisy_members(seed, skills=(0.3, 1.2, 1.0, 0.8))
    weights = optimize_weights(members, y, seed=seed)
    assert weights.shape == (4,) and (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    best_single = min(log_loss_of(m, y) for m in members)
    assert log_loss_of(weighted_mean(members, weights), y) <= best_single + 1e-12
    assert log_loss_of(weighted_mean(members, weights), y) <= log_loss_of(mean_probs(members), y) + 1e-12


def test_weights_are_seeded():
    members, y = noisy_members(5)
    np.testing.assert_array_equal(optimize_weights(members, y, seed=3), optimize_weights(members, y, seed=3))


def test_label_count_is_checked():
    members, y = noisy_members()
    with pytest.raises(ValueError, match="one label per image"):
        optimize_weights(members, y[:-1])


def test_complementary_members_get_weights_that_beat_each_of_them():
    # member 0 knows class 0 from the rest, member 1 tells 1 from 2; neither alone is good
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    first = np.where((y == 0)[:, None], [0.9, 0.05, 0.05], [0.1, 0.45, 0.45])
    second = np.where((y == 0)[:, None], [0.34, 0.33, 0.33],
                      np.where((y == 1)[:, None], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]))
    probs = np.stack([first, second])
    w = optimize_weights(probs, y, seed=0)
    combined = log_loss_of(weighted_mean(probs, w), y)
    assert combined < min(log_loss_of(p, y) for p in probs) - 0.03      # 0.469 vs 0.517 here
    assert 0.2 < w[0] < 0.8


def test_majority_probs_agree_with_the_vote_including_ties():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=(4, 200))       # 4 members: many 2–2 ties
    np.testing.assert_array_equal(majority_probs(probs).argmax(1), majority_vote(probs))
    np.testing.assert_allclose(majority_probs(probs).sum(1), 1.0)


def test_out_of_fold_never_fits_on_the_image_it_predicts():
    probs = np.zeros((1, 23, 3))
    probs[0, :, 0] = np.arange(23)            # image id carried in the probabilities
    labels = np.arange(23) % 3

    def fit_predict(train_probs, train_labels, held_probs):
        seen = set(train_probs[0, :, 0])
        assert not seen & set(held_probs[0, :, 0])
        assert len(seen) + len(held_probs[0]) == 23
        return np.tile([1.0, 0.0, 0.0], (held_probs.shape[1], 1)) * held_probs[0, :, :1]

    result = out_of_fold(fit_predict, probs, labels, folds=5, seed=0)
    np.testing.assert_array_equal(result[:, 0], np.arange(23))     # every image predicted exactly once

