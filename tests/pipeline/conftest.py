"""Helpers of the pipeline tests."""

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT

from multiloss import names
from multiloss.tracking import store


def finished_run(entry_point, params, code="c1", data="d1", status="FINISHED", parent=None) -> str:
    client = mlflow.MlflowClient()
    tags = {MLFLOW_PROJECT_ENTRY_POINT: entry_point, names.CODE_VERSION_TAG: code, names.INPUT_FINGERPRINT_TAG: data}
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    run = client.create_run(store.ensure_experiment("pipeline"), tags=tags)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id
