"""Segmentation scores by hand and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from multiloss.metrics.segmentation import (
    dice_coefficient,
    lung_iou,
    segmentation_scores,
    summarize,
)


def test_scores_of_a_hand_counted_example():
    truth = np.zeros((1, 4, 4), bool)
    truth[0, :2, :2] = True                 # 4 lung pixels
    predicted = np.zeros((1, 4, 4), bool)
    predicted[0, :2, 1:3] = True            # 4 predicted: TP 2, FP 2, FN 2, TN 10
    row = segmentation_scores(truth, predicted).iloc[0]
    assert row["pixel_accuracy"] == pytest.approx(12 / 16)
    assert row["dice"] == pytest.approx(4 / 8)
    assert row["lung_iou"] == pytest.approx(2 / 6)
    assert row["mean_iou"] == pytest.approx((2 / 6 + 10 / 14) / 2)


def test_scores_agree_with_scikit_learn_per_image():
    rng = np.random.default_rng(0)
    truth = rng.random((5, 9, 7)) > 0.5
    predicted = rng.random((5, 9, 7)) > 0.4
    table = segmentation_scores(truth, predicted)
    for i in range(5):
        t, p = truth[i].ravel(), predicted[i].ravel()
        assert table.loc[i, "dice"] == pytest.approx(f1_score(t, p))
        assert table.loc[i, "lung_iou"] == pytest.approx(jaccard_score(t, p))
        assert table.loc[i, "mean_iou"] == pytest.approx(jaccard_score(t, p, average="macro"))
    summary = summarize(table)
    assert summary["dice_mean"] == pytest.approx(table["dice"].mean())
    assert summary["dice_std"] == pytest.approx(np.std(table["dice"]))


def test_empty_truth_and_prediction_is_perfect():
    empty = np.zeros((1, 3, 3), bool)
    assert segmentation_scores(empty, empty).iloc[0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_training_metrics_match_the_evaluation_scores():
    rng = np.random.default_rng(1)
    truth = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.float32)
    probs = rng.random((4, 8, 8, 1)).astype(np.float32)
    table = segmentation_scores(truth[..., 0] > 0.5, probs[..., 0] > 0.5)
    assert float(dice_coefficient(truth, probs)) == pytest.approx(table["dice"].mean(), rel=1e-6)
    assert float(lung_iou(truth, probs)) == pytest.approx(table["lung_iou"].mean(), rel=1e-6)
