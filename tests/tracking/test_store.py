"""Tracking URI resolution, experiment creation and stage runs, against throw-away stores."""

from pathlib import Path

import mlflow

from multiloss import names, paths
from multiloss.tracking import store


def test_default_store_is_sqlite_under_the_project_mlruns(tmp_path):
    home = tmp_path / "home"   # MULTILOSS_HOME, set by the autouse fixture
    assert paths.project_root() == home.resolve()
    assert store.tracking_uri() == f"sqlite:///{home.resolve()}/mlruns/mlflow.db"
    assert store.artifact_root() == home.resolve() / "mlruns" / "artifacts"
    assert store.uses_default_store()


def test_checkout_is_the_root_without_multiloss_home(monkeypatch):
    monkeypatch.delenv("MULTILOSS_HOME")
    root = paths.project_root()
    assert (root / "MLproject").is_file() and (root / "src" / "multiloss").is_dir()


def test_user_tracking_uri_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/team.db")
    assert store.tracking_uri() == f"sqlite:///{tmp_path}/team.db"
    assert not store.uses_default_store()


def test_experiments_are_created_once_with_artifacts_in_our_store():
    ids = store.ensure_experiments()
    assert set(ids) == {"data", "segmentation", "classification", "sweeps", "ensembles", "pipeline",
                        "ablation", "promotions"}
    assert store.ensure_experiments() == ids
    experiment = mlflow.MlflowClient().get_experiment(ids["segmentation"])
    assert experiment.artifact_location == (store.artifact_root() / "segmentation").as_uri()
    assert Path(store.default_tracking_uri().removeprefix("sqlite:///")).is_file()


def test_stage_run_logs_to_the_named_experiment_and_artifacts_land_in_the_store(tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with store.stage_run("data", run_name="probe") as run:
        mlflow.log_param("answer", 42)
        mlflow.log_artifact(str(note))
    finished = mlflow.MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params == {"answer": "42"}
    assert finished.info.experiment_id == store.ensure_experiment("data")
    assert (store.artifact_root() / "data" / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"


def test_stage_run_joins_the_run_mlflow_run_created_and_tags_its_experiment(monkeypatch):
    store.configure()
    client = mlflow.MlflowClient()
    launched = client.create_experiment("made-by-mlflow-run")              # mlflow run --experiment-name ...
    launcher_run = client.create_run(launched)
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher_run.info.run_id)
    with store.stage_run("data") as run:
        assert run.info.run_id == launcher_run.info.run_id
    assert client.get_experiment(launched).tags[names.EXPERIMENT_KIND_TAG] == names.EXPERIMENT_KIND


def test_cli(capsys):
    assert store.main(["uri"]) == 0
    assert capsys.readouterr().out.strip() == store.tracking_uri()
    assert store.main(["ui-command"]) == 0
    assert "--host 127.0.0.1" in capsys.readouterr().out
    assert store.main(["bogus"]) == 2


def test_log_params_keeps_what_mlflow_run_logged_and_adds_the_resolved_spelling(monkeypatch):
    store.configure()
    launcher_run = mlflow.MlflowClient().create_run(store.ensure_experiment("data"))
    mlflow.MlflowClient().log_param(launcher_run.info.run_id, "out", "data/synthetic")
    mlflow.MlflowClient().log_param(launcher_run.info.run_id, "seed", "0")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher_run.info.run_id)
    with store.stage_run("data"):
        store.log_params({"out": "/abs/data/synthetic", "seed": 0, "n_seg": 12})
    params = mlflow.MlflowClient().get_run(launcher_run.info.run_id).data.params
    assert params == {"out": "data/synthetic", "resolved.out": "/abs/data/synthetic", "seed": "0", "n_seg": "12"}


def test_experiments_open_in_the_uis_model_training_mode_old_ones_too_unless_someone_chose_a_kind():
    store.configure()
    client = mlflow.MlflowClient()
    untagged = client.create_experiment(names.DATA_EXPERIMENT)              # a store from before the tag
    inferred = client.create_experiment(names.SWEEPS_EXPERIMENT,
                                        tags={names.EXPERIMENT_KIND_TAG: "genai_development_inferred"})
    client.create_experiment(names.ABLATION_EXPERIMENT, tags={names.EXPERIMENT_KIND_TAG: "genai_development"})
    assert store.main(["init"]) == 0
    ids = store.ensure_experiments()
    assert ids[names.DATA_EXPERIMENT] == untagged and ids[names.SWEEPS_EXPERIMENT] == inferred
    kinds = {name: client.get_experiment(i).tags[names.EXPERIMENT_KIND_TAG] for name, i in ids.items()}
    assert kinds == {**dict.fromkeys(names.EXPERIMENTS, names.EXPERIMENT_KIND),
                     names.ABLATION_EXPERIMENT: "genai_development"}

