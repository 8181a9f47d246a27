"""The ablation's numbers, from what its runs logged: each training's validation and test
predictions, each ensemble run's score table and each sweep's trials.

Every score is recomputed from the logged per-image predictions with the suite's metrics, so the
paired tests and the temperature-scaling baseline see exactly the images the scores describe.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd

from multiloss import names
from multiloss.ablation.plan import Training
from multiloss.classification.scoring import read_predictions
from multiloss.ensembles.build import layout_key


@dataclass(frozen=True)
class Split:
    keys: list[str]                    # split/CLASS/file of each image
    labels: np.ndarray
    probs: np.ndarray


@dataclass(frozen=True)
class Trained:
    """One finished training of the ablation and what it logged."""

    training: Training
    run_id: str
    val: Split
    test: Split
    degenerate: str | None             # the reason, when its run is tagged degenerate


def _split(run_id: str, name: str) -> Split:
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{name}_predictions.csv",
                                                    dst_path=tmp)
        frame, labels, probs = read_predictions(local)
    keys = [layout_key(p) for p in frame["path"].astype(str)]
    order = np.argsort(keys)                     # one order for every run of the same data
    return Split([keys[i] for i in order], labels[order], probs[order])


def collect_trainings(trainings: list[Training], run_ids: list[str]) -> list[Trained]:
    """Each training's predictions, aligned image by image across runs (a run scored on other
    images than the first is an error naming both)."""
    client = mlflow.MlflowClient()
    found = []
    for training, run_id in zip(trainings, run_ids):
        tags = client.get_run(run_id).data.tags
        reason = tags.get(names.DEGENERATE_REASON_TAG, "flagged") if tags.get(names.DEGENERATE_TAG) == "true" else None
        found.append(Trained(training, run_id, _split(run_id, "val"), _split(run_id, "test"), reason))
    for other in found[1:]:
        for split in ("val", "test"):
            if getattr(other, split).keys != getattr(found[0], split).keys:
                raise ValueError(f"run {other.run_id} was scored on other {split} images than run {found[0].run_id}; "
                                 "an ablation compares models of one data set")
    return found


def ensemble_scores(run_id: str) -> pd.DataFrame:
    """An ensemble run's score table (one row per single model and ensemble)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="ensemble_scores.csv", dst_path=tmp)
        return pd.read_csv(local, index_col="name")


def sweep_trials(run_id: str) -> pd.DataFrame:
    """A sweep run's trials with each finished trial's test MCC and ECE (from its own run)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="sweep/trials.csv", dst_path=tmp)
        trials = pd.read_csv(local, index_col="trial")
    client = mlflow.MlflowClient()
    for score in ("test_mcc", "test_ece"):
        trials[score] = [client.get_run(r).data.metrics.get(score, np.nan) if isinstance(r, str) and r else np.nan
                         for r in trials["run_id"]]
    return trials



def latest_ablation(data_print: str) -> str | None:
    """The newest finished ablation run of the data with ``data_print`` (None if there is none)."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(names.ABLATION_EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id],
                               f"tags.{names.STAGE_TAG} = 'ablation' and attributes.status = 'FINISHED' and "
                               f"tags.{names.DATA_FINGERPRINT_TAG} = '{data_print}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None
