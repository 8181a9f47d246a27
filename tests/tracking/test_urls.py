"""The UI addresses the suite prints: in the UI's model-training mode, on routes the installed UI has."""

from pathlib import Path

import mlflow
import pytest

from multiloss import names
from multiloss.tracking import store, urls


def test_experiment_and_run_addresses_open_the_model_training_mode():
    assert urls.ui_url("3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert urls.ui_url("3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_a_tracking_server_is_its_own_ui(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.team.example/")
    assert urls.ui_url("7") == "https://mlflow.team.example/#/experiments/7?workflowType=machine_learning"
    assert urls.ui_root("sqlite:///elsewhere.db") == "http://127.0.0.1:5000"


def test_the_installed_ui_has_these_routes_and_this_parameter():
    """Our address shapes, checked against the MLflow UI this environment serves."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    sources = [p.read_text(errors="ignore") for p in bundle.glob("main.*.js")]
    if not sources:
        pytest.skip("this MLflow install has no UI bundle")
    text = "".join(sources)
    assert '"/experiments/:experimentId"' in text and '"/experiments/:experimentId/runs/:runUuid"' in text
    key, value = urls.WORKFLOW_QUERY.split("=")
    assert f'"{key}"' in text and f'MACHINE_LEARNING="{value}"' in text
    assert f'"{names.EXPERIMENT_KIND_TAG}"' in text and f'"{names.EXPERIMENT_KIND}"' in text


def test_the_cli_and_run_url_print_addresses_of_this_stores_experiments_and_runs(capsys):
    assert store.main(["init"]) == 0
    out = capsys.readouterr().out
    ids = store.ensure_experiments()
    for name, experiment_id in ids.items():
        assert f"experiment {name!r}: id {experiment_id}, {urls.ui_url(experiment_id)}" in out
    assert store.main(["ui-command"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == store.ui_command()             # what `make ui` runs
    assert urls.ui_url(ids[names.PIPELINE_EXPERIMENT]) in captured.err
    run = mlflow.MlflowClient().create_run(ids[names.PIPELINE_EXPERIMENT])
    assert urls.run_url(run.info.run_id) == urls.ui_url(ids[names.PIPELINE_EXPERIMENT], run.info.run_id)
