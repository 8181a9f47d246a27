"""Ranking registered versions by a metric (tracking.ranking), and the promote stage that uses it."""

import pytest
import tf_keras

from multiloss import names
from multiloss.tracking import ranking, registry, store


def test_selection_key_and_direction():
    assert ranking.selection_key("mcc", "val") == "val_mcc"
    assert ranking.selection_key("test_mcc", "test") == "test_mcc"
    assert ranking.selection_key("val_mcc", "test") == "test_mcc"      # the split comes from select_on
    with pytest.raises(ValueError, match="select_on must be one of"):
        ranking.selection_key("mcc", "train")
    assert ranking.higher_is_better("val_mcc") and ranking.higher_is_better("holdout_dice")
    assert not ranking.higher_is_better("val_ece") and not ranking.higher_is_better("nll")


def test_rank_versions_reads_run_metrics_then_tags_and_keeps_one_per_loss():
    import mlflow

    store.configure()
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])
    made = []
    for loss, mcc, ece in (("cce", 0.5, 0.2), ("focal", 0.9, 0.1), ("cce", 0.7, 0.05), ("kld", None, 0.3)):
        with store.stage_run("classification", run_name=loss):
            if mcc is not None:
                mlflow.log_metric("val_mcc", mcc)
            version = registry.log_and_register(model, names.CLASSIFIER_MODEL, {"loss": loss, "val_ece": ece})
            made.append(str(version.version))
    by_mcc = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_mcc")
    assert [str(r.version.version) for r in by_mcc] == [made[1], made[2], made[0]]     # kld has no val_mcc
    assert [r.value for r in ranking.distinct_by_tag(by_mcc, "loss")] == [0.9, 0.7]
    by_ece = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_ece")              # from the tags, low first
    assert [r.value for r in by_ece] == [0.05, 0.1, 0.2, 0.3]
    only_cce = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_mcc", tags={"loss": "cce"})
    assert [r.value for r in only_cce] == [0.7, 0.5]

    from multiloss.stages import promote
    assert promote.main(["--metric", "val_mcc"]) == made[1]
    assert promote.main(["--metric", "val_ece", "--alias", "calibrated"]) == made[2]
    assert promote.main(["--version", made[0]]) == made[0]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(names.CLASSIFIER_MODEL, "champion").version) == made[0]
    with pytest.raises(SystemExit, match="no version of cxr-classifier has a 'test_auroc'"):
        promote.main(["--metric", "test_auroc"])
    with pytest.raises(ValueError, match="has no version 99"):
        promote.main(["--version", "99"])

