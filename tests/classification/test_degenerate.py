"""Degenerate classifiers (classification.scoring): one class predicted for every validation image,
or a mean confidence within 0.02 of 1/C, is named with its reason; the decision reads validation
only, and the tags a classify run and its version carry say so."""

import numpy as np
import pytest

from multiloss import names
from multiloss.classification import scoring
from multiloss.classification.scoring import (
    DEGENERATE_CONFIDENCE_MARGIN,
    degenerate_from_scores,
    degenerate_reason,
    degenerate_tags,
    one_class_reason,
    prediction_summary,
    score_split,
)


def rows(*probabilities, repeat: int = 1) -> np.ndarray:
    """The given probability rows, the whole list repeated ``repeat`` times."""
    return np.array(list(probabilities) * repeat, float)


def cycling(top: float, n_classes: int = 3, n: int = 30) -> np.ndarray:
    """``n`` images whose largest probability is ``top``, on each class in turn (mean confidence
    ``top``, every class predicted)."""
    rest = (1 - top) / (n_classes - 1)
    out = np.full((n, n_classes), rest)
    out[np.arange(n), np.arange(n) % n_classes] = top
    return out


CONFIDENT = cycling(0.9)

CASES = {
    # name: (validation probabilities, reason or None)
    "healthy: confident, every class": (CONFIDENT, None),
    "healthy: two of three classes": (rows([0.9, 0.05, 0.05], [0.1, 0.8, 0.1], repeat=10), None),
    "one class, confident": (rows([0.05, 0.9, 0.05], repeat=40), "predicts bacterial for all 40 validation images"),
    "one class, barely": (rows([0.3, 0.3, 0.4], [0.1, 0.4, 0.5], repeat=3),
                          "predicts viral for all 6 validation images"),
    "uniform": (np.full((12, 3), 1 / 3),
                "predicts normal for all 12 validation images; mean confidence 0.333 within 0.02 of 1/3"),
    "confidence just inside 1/3 + 0.02": (cycling(0.353), "mean confidence 0.353 within 0.02 of 1/3"),
    "confidence just outside 1/3 + 0.02": (cycling(0.354), None),
    "confidence exactly 1/2 + 0.02 (inclusive)": (cycling(0.52, n_classes=2), "mean confidence 0.520 within 0.02 of 1/2"),
    "confidence just above 1/2 + 0.02": (cycling(0.5201, n_classes=2), None),
    "confidence 0.334 of 3": (cycling(0.334), "mean confidence 0.334 within 0.02 of 1/3"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_degenerate_reason_names_the_collapse_and_passes_a_healthy_model(case):
    probs, expected = CASES[case]
    assert degenerate_reason(probs) == expected


def test_the_margin_is_a_named_constant_of_two_hundredths():
    assert DEGENERATE_CONFIDENCE_MARGIN == 0.02
    assert degenerate_reason(cycling(1 / 3 + 0.019)) is not None
    assert degenerate_reason(cycling(1 / 3 + 0.021)) is None


def test_prediction_summary_counts_each_class_and_the_mean_confidence():
    probs = rows([0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1])
    summary = prediction_summary(probs)
    assert summary == pytest.approx({"predicted_normal": 2, "predicted_bacterial": 1, "predicted_viral": 0,
                                     "mean_confidence": (0.9 + 0.7 + 0.6) / 3})
    # float32 softmax rows that miss 1 are renormalised, as the scores are
    assert prediction_summary(probs.astype(np.float32) * 1.000001)["mean_confidence"] == \
        pytest.approx(summary["mean_confidence"], abs=1e-6)
    assert set(prediction_summary(cycling(0.9, n_classes=4))) == {"predicted_class0", "predicted_class1",
                                                                   "predicted_class2", "predicted_class3",
                                                                   "mean_confidence"}
    for bad in (np.zeros((0, 3)), np.ones(3), np.ones((4, 1))):
        with pytest.raises(ValueError, match="probabilities must be"):
            prediction_summary(bad)


def test_score_split_carries_what_the_decision_reads_and_decides_alike():
    for probs, expected in CASES.values():
        if probs.shape[1] != 3:
            continue
        scores = score_split(np.arange(len(probs)) % 3, probs, "wald")
        assert {"predicted_normal", "predicted_bacterial", "predicted_viral", "mean_confidence"} <= set(scores)
        assert degenerate_from_scores(scores) == expected == degenerate_reason(probs)


def test_the_tags_say_true_with_the_reason_or_false_without_one():
    collapsed = prediction_summary(rows([0.05, 0.9, 0.05], repeat=40))
    assert degenerate_tags(collapsed) == {names.DEGENERATE_TAG: "true",
                                          names.DEGENERATE_REASON_TAG: "predicts bacterial for all 40 validation images"}
    assert degenerate_tags(prediction_summary(CONFIDENT)) == {names.DEGENERATE_TAG: "false"}
    with pytest.raises(ValueError, match="predicted_<class>"):
        degenerate_tags({"mcc": 0.5})            # scores without the counts decide nothing


def test_one_class_on_test_is_worded_for_its_split():
    summary = prediction_summary(rows([0.9, 0.05, 0.05], repeat=150))
    assert one_class_reason(summary, "test") == "predicts normal for all 150 test images"
    assert one_class_reason(prediction_summary(CONFIDENT), "test") is None


def test_registry_tags_decide_on_validation_never_on_test():
    from multiloss.classification.train import ClassifierConfig, TrainedClassifier
    from multiloss.losses import classification_loss

    labels = np.arange(40) % 3
    healthy = score_split(labels, cycling(0.9, n=40), "wald")
    collapsed = score_split(labels, rows([0.05, 0.9, 0.05], repeat=40), "wald")

    def tags(val, test):
        trained = TrainedClassifier(model=None, loss=classification_loss("cce"),
                                    config=ClassifierConfig.from_defaults("cce", "d"), fit={},
                                    scores={"val": val, "test": test}, data_fingerprint="f" * 64, encoder_version="1",
                                    synthetic=True)
        return trained.registry_tags()

    on_test_only = tags(healthy, collapsed)
    assert on_test_only[names.DEGENERATE_TAG] == "false" and names.DEGENERATE_REASON_TAG not in on_test_only
    on_val = tags(collapsed, healthy)
    assert on_val[names.DEGENERATE_TAG] == "true"
    assert on_val[names.DEGENERATE_REASON_TAG] == "predicts bacterial for all 40 validation images"
    assert on_val["val_mcc"] == collapsed["mcc"]          # the other tags are still there, in full


def test_the_scoring_module_imports_without_tensorflow():
    """The report reads the decision from here: it must not drag TensorFlow in."""
    import subprocess
    import sys

    code = ("import sys, multiloss.classification.scoring, multiloss.report.comparison; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", scoring.__file__
