"""System metrics are opt-in (MLflow's own switch) and carry the process's node id."""

import socket
import time

import mlflow

from multiloss.tracking import store


def test_a_stage_run_logs_system_metrics_under_its_node_id_only_when_asked(monkeypatch):
    with store.stage_run("data", run_name="quiet") as run:
        pass
    quiet = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert not [k for k in quiet if k.startswith("system/")]

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_NODE_ID", raising=False)
    with store.stage_run("data", run_name="measured") as run:
        time.sleep(1.5)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    prefix = f"system/{socket.gethostname()}/main/"
    assert store.node_id() == f"{socket.gethostname()}/main"
    assert any(k.startswith(prefix) and "cpu_utilization" in k for k in logged), sorted(logged)
