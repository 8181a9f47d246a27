"""A final score as MLflow shows it (a run's latest value, the runs table, search_runs) is the kept
model's: each final-score name is logged once, equals the version's tag and the scored model's own
predictions, while per-epoch curves live under ``epoch/<name>``."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from multiloss import names
from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.synthetic import write_synthetic
from multiloss.stages import classify, segment
from multiloss.tracking import registry

# Version tags that are copies of a run's final score under the same name.
SCORE_TAGS = ("val_loss", "val_dice", "val_mcc", "test_mcc", "test_accuracy", "test_ece", "test_auroc_micro")


def assert_final_scores_are_the_kept_models(version, epochs: int) -> dict:
    client = mlflow.MlflowClient()
    run = client.get_run(version.run_id)
    finals = {k: v for k, v in run.data.metrics.items() if not k.startswith(names.EPOCH_CURVE_PREFIX)}
    for name in finals:
        assert len(client.get_metric_history(run.info.run_id, name)) == 1, f"{name} logged more than once"
    for tag in SCORE_TAGS:
        if tag in version.tags:
            assert finals[tag] == pytest.approx(float(version.tags[tag]), abs=1e-6), tag
    curve = [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")]
    assert len(curve) == epochs and finals["val_loss"] == pytest.approx(np.nanmin(curve))
    assert len(client.get_metric_history(run.info.run_id, "epoch/lr")) == epochs
    return finals


@pytest.mark.slow
def test_the_scores_mlflow_shows_are_the_restored_models(tmp_path):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=12, n_cls=15, size=48, seed=4)
    segment.main(["--loss", "bce", "--data", str(data / "lungs"), "--img-size", "32", "--epochs", "3",
                  "--batch-size", "4", "--patience", "3"])
    unet = registry.versions(names.SEGMENTATION_MODEL)[-1]
    assert_final_scores_are_the_kept_models(unet, epochs=3)

    classify.main(["--loss", "cce", "--data", str(data / "chest_xray"), "--img-size", "32", "--epochs", "3",
                   "--batch-size", "8", "--patience", "3", "--lr", "0.05", "--ci-method", "wald",
                   "--encoder", registry.version_uri(names.SEGMENTATION_MODEL, unet.version)])
    version = registry.versions(names.CLASSIFIER_MODEL)[-1]
    finals = assert_final_scores_are_the_kept_models(version, epochs=3)
    predictions = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                                                  artifact_path="val_predictions.csv"))
    probs = predictions[PROBABILITY_COLUMNS].to_numpy()
    labels = predictions["label"].map({"normal": 0, "bacterial": 1, "viral": 2}).to_numpy()
    assert finals["val_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == labels)))
