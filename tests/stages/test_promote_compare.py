"""promote compares and remembers: a candidate no better than the alias holder moves only with
force=true, on the holder's and candidate's own predictions where both logged them, and every move
is a run of the promotions experiment and a tag on both versions."""

import json

import mlflow
import numpy as np
import pytest
import tf_keras

from multiloss import names
from multiloss.classification.scoring import predictions_frame
from multiloss.data.classes import CLASSES
from multiloss.stages import promote
from multiloss.tracking import promotions, ranking, registry, store

DATA = "a1" * 32
LABELS = np.random.default_rng(0).integers(0, 3, 60)


@pytest.fixture
def classifier(register_classifier, tmp_path):
    """A factory: a cxr-classifier version with ``val_mcc`` (a tag) and, given ``hits``, validation
    predictions that get that share of the images right."""
    def make(val_mcc: float, hits: float | None = None, aliases=()) -> str:
        tags = {names.DATA_FINGERPRINT_TAG: DATA, names.IMG_SIZE_TAG: 64, ranking.ENCODER_TAG: "1", "val_mcc": val_mcc}
        model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])
        version = register_classifier(tags=tags, aliases=aliases, model=model)
        if hits is not None:
            right = np.arange(len(LABELS)) < hits * len(LABELS)
            predicted = np.where(right, LABELS, (LABELS + 1) % 3)
            probs = np.full((len(LABELS), 3), 0.1)
            probs[np.arange(len(LABELS)), predicted] = 0.8
            paths = [f"/data/train/{CLASSES[y]}/{i:03d}.png" for i, y in enumerate(LABELS)]
            path = tmp_path / f"v{version.version}" / "val_predictions.csv"
            path.parent.mkdir()
            predictions_frame(paths, LABELS, probs).to_csv(path, index=False)
            mlflow.MlflowClient().log_artifact(version.run_id, str(path))
        return str(version.version)
    store.configure()
    return make


def champion() -> str:
    return str(registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION).version)


def moves(model=names.CLASSIFIER_MODEL) -> list:
    return mlflow.search_runs(experiment_names=[names.PROMOTIONS_EXPERIMENT], output_format="list",
                              filter_string=f"tags.model = '{model}'", order_by=["attributes.start_time ASC"])


def test_a_version_no_better_than_the_holder_moves_only_by_force_and_each_move_is_recorded(classifier, capsys):
    holder = classifier(0.8, aliases=[names.CHAMPION])
    worse = classifier(0.7)
    with pytest.raises(SystemExit, match=f"version {worse} is not better than version {holder}, which holds "
                                         r"cxr-classifier@champion: val_mcc 0.7 vs 0.8 \(values only: no per-image "
                                         r"predictions\); pass force=true"):
        promote.main(["--version", worse])
    assert champion() == holder and moves() == []

    assert promote.main(["--version", worse, "--force", "true"]) == worse == champion()
    (run,) = moves()
    assert run.data.tags["from_version"] == holder and run.data.tags["to_version"] == worse
    assert run.data.tags["forced"] == "true" and run.data.tags["who"]
    assert run.data.metrics["difference"] == pytest.approx(-0.1)
    client = mlflow.MlflowClient()
    taken = json.loads(client.get_model_version(names.CLASSIFIER_MODEL, worse).tags["promotion.to.champion"])
    given = json.loads(client.get_model_version(names.CLASSIFIER_MODEL, holder).tags["promotion.from.champion"])
    assert taken == given and taken["from"] == holder and taken["to"] == worse and taken["run_id"] == run.info.run_id
    assert taken["comparison"]["key"] == "val_mcc" and taken["forced"] is True


def test_the_comparison_is_paired_on_the_images_both_versions_predicted(classifier):
    holder = classifier(0.5, hits=0.6, aliases=[names.CHAMPION])
    better = classifier(0.9, hits=0.95)
    assert promote.main([]) == better == champion()
    (run,) = moves()
    record = json.loads(mlflow.MlflowClient().get_model_version(names.CLASSIFIER_MODEL, better)
                        .tags["promotion.to.champion"])
    assert record["comparison"]["method"] == "paired bootstrap over the 60 val images"
    assert record["comparison"]["difference"] == pytest.approx(0.4)          # the tagged values
    assert run.data.metrics["p_value"] < 0.01 and run.data.metrics["low"] > 0
    assert record["forced"] is False and record["from"] == holder


def test_a_best_that_only_ties_the_holder_leaves_the_alias_and_records_nothing(classifier, capsys):
    first = classifier(0.8)
    holder = classifier(0.8, aliases=[names.CHAMPION])
    assert promote.main([]) == holder == champion()
    assert f"stays at version {holder}: the best of the pool, version {first}, ties it" in capsys.readouterr().out
    assert moves() == []


def test_a_first_assignment_is_recorded_from_unset(classifier):
    only = classifier(0.8)
    assert promote.main([]) == only
    (run,) = moves()
    assert run.data.tags["from_version"] == "" and run.data.tags["to_version"] == only


def test_comparison_says_which_side_is_better_for_lower_is_better_scores():
    lower = promotions.Comparison("val_ece", 0.10, 0.05, -0.05, float("nan"), float("nan"), float("nan"), "values")
    assert lower.better()
    assert not promotions.Comparison("val_mcc", 0.8, 0.8, 0.0, 0, 0, 1.0, "paired").better()


def test_a_published_variant_model_is_not_in_the_pool_of_a_corrected_holder(register_classifier):
    def make(val_mcc, flaws=None, aliases=()):
        tags = {names.DATA_FINGERPRINT_TAG: DATA, names.IMG_SIZE_TAG: 64, ranking.ENCODER_TAG: "1", "val_mcc": val_mcc}
        if flaws:
            tags.update({names.VARIANT_TAG: "published", names.FLAWS_TAG: flaws})
        model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])
        return str(register_classifier(tags=tags, aliases=aliases, model=model).version)

    store.configure()
    holder = make(0.7, aliases=[names.CHAMPION])
    published = make(0.95, flaws="calibration_no_gradient")
    better = make(0.8)
    assert promote.main([]) == better == champion()
    (run,) = moves()
    assert run.data.tags["to_version"] == better and published != better and holder != better
