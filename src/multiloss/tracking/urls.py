"""Addresses of experiments and runs in the MLflow UI: the one place that builds them.

MLflow 3.17's UI opens an experiment in GenAI mode (traces, evaluations) unless the address carries
``workflowType=machine_learning`` (the browser then remembers it), so every address we print does:
``<ui>/#/experiments/<id>?workflowType=machine_learning`` and ``.../runs/<run id>?...``. ``<ui>`` is
the tracking server when the store is one (it serves the UI too), else the ``mlflow ui`` of
``python -m multiloss.tracking ui-command``.
"""

from __future__ import annotations

import mlflow

from multiloss.tracking import store

WORKFLOW_QUERY = "workflowType=machine_learning"


def ui_root(tracking_uri: str | None = None) -> str:
    """The UI's address for ``tracking_uri`` (default: the suite's): the server itself for an
    http(s) store, else where ui_command serves the store."""
    uri = tracking_uri or store.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://{store.UI_HOST}:{store.UI_PORT}"


def ui_url(experiment_id: str, run_id: str | None = None, *, tracking_uri: str | None = None) -> str:
    """The UI address of experiment ``experiment_id``, or of its run ``run_id``, in the UI's
    model-training mode."""
    route = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{ui_root(tracking_uri)}/{route}?{WORKFLOW_QUERY}"


def run_url(run_id: str) -> str:
    """The UI address of run ``run_id`` (its experiment looked up in the store)."""
    store.configure()
    return ui_url(mlflow.MlflowClient().get_run(run_id).info.experiment_id, run_id)
