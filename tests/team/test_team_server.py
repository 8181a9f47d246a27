"""The team server as a lab uses it (README, "A tracking server for a team"): MLflow with basic auth
on PostgreSQL, artifacts proxied. No credentials: 401. An editor runs a tiny ``main`` over HTTP
and a rerun reuses every step; a reader can look but cannot start runs, register versions or move
aliases (403, nothing changed); ``mlflow models serve`` serves the registry's champion with the
credentials in the environment."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException

from multiloss import names
from multiloss.team.postgres import free_port
from multiloss.team.server import ADMIN_PASSWORD_ENV
from tests.conftest import tiny_ensemble_models
from tests.pipeline.test_chain import TINY

pytestmark = pytest.mark.team

REPO = Path(__file__).resolve().parents[2]


def http_status(url: str, method: str = "GET", auth=None, json=None) -> int:
    return requests.request(method, url, auth=auth, json=json, timeout=30).status_code


def test_a_client_without_credentials_gets_401_and_a_wrong_password_too(team, as_user):
    search = f"{team.url}/api/2.0/mlflow/experiments/search"
    assert http_status(search, "POST", json={"max_results": 1}) == 401
    assert http_status(search, "POST", auth=("reader", "not-the-password"), json={"max_results": 1}) == 401
    assert http_status(search, "POST", auth=("reader", team.passwords["reader"]), json={"max_results": 1}) == 200
    assert http_status(f"{team.url}/health") == 200          # the liveness probe needs no login
    as_user(None)
    with pytest.raises(MlflowException, match="401"):
        mlflow.MlflowClient().search_experiments()


def run_main(team, profile: Path, home: Path) -> str:
    env = {**team.env("editor"), "MULTILOSS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "multiloss.stages.main", "--profile", str(profile),
                             "--until", "segment_eval"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def forbidden(action) -> None:
    """``action`` is refused by the server with 403."""
    with pytest.raises(MlflowException) as refused:
        action()
    assert refused.value.get_http_status_code() == 403, refused.value.message


def test_an_editor_runs_main_over_http_a_rerun_reuses_every_step_and_a_reader_changes_nothing(team, as_user,
                                                                                              tmp_path):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    first = run_main(team, profile, tmp_path / "home")
    assert "3 steps ran, 0 reused" in first, first[-3000:]
    again = run_main(team, profile, tmp_path / "home")
    assert "0 steps ran, 3 reused" in again, again[-3000:]
    for step in ("synth", "segment.bce", "segment_eval"):
        assert f"step {step} reuses run" in again

    client = mlflow.MlflowClient()
    parent_id = re.search(r"parent run (\w+)", first).group(1)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.user_id == "editor"
    champion = client.get_model_version_by_alias(names.SEGMENTATION_MODEL, names.CHAMPION)
    assert champion.run_id == parent.data.tags["step.segment.bce"]
    # the model's files went through the server's artifact proxy into its folder, not to this machine's paths
    assert client.get_run(champion.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(team.stack.artifacts.rglob("MLmodel"))
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{names.SEGMENTATION_MODEL}@{names.CHAMPION}",
                                                     dst_path=str(tmp_path / "model"))
    assert (Path(downloaded) / "MLmodel").is_file()

    # the reader sees everything and changes nothing
    experiment_id = parent.info.experiment_id
    def state():
        runs = client.search_runs([experiment_id], max_results=1000)
        versions = client.search_model_versions(f"name = '{names.SEGMENTATION_MODEL}'")
        model = client.get_registered_model(names.SEGMENTATION_MODEL)
        return (sorted(r.info.run_id for r in runs), sorted(v.version for v in versions), dict(model.aliases))
    before = state()
    as_user("reader")
    assert state() == before                                       # READ: it may look
    forbidden(lambda: client.create_run(experiment_id))
    forbidden(lambda: client.create_model_version(names.SEGMENTATION_MODEL, champion.source, run_id=champion.run_id))
    forbidden(lambda: client.set_registered_model_alias(names.SEGMENTATION_MODEL, "reader-pick", champion.version))
    forbidden(lambda: client.delete_registered_model_alias(names.SEGMENTATION_MODEL, names.CHAMPION))
    forbidden(lambda: client.set_tag(parent_id, "reader", "was here"))
    as_user("editor")
    assert state() == before and "reader" not in client.get_run(parent_id).data.tags


def tiny_ensemble_version() -> str:
    """A ``cxr-ensemble`` version (the suite's serving pyfunc) with tiny untrained members, logged
    and registered over HTTP, with the champion alias: what is tested is the serving, not the model."""

    from multiloss.ensembles import serving
    from multiloss.tracking import registry, store

    segmenters, classifiers = tiny_ensemble_models()
    config = serving.pipeline_config({"seg_size": 16, "img_size": 16, "margin": 0.02}, 16, ["scan.png"],
                                     synthetic=True)
    with store.stage_run(names.ENSEMBLES_EXPERIMENT, run_name="tiny served ensemble"):
        info = serving.log_pipeline(segmenters=segmenters, parts=classifiers, combiner="mean",
                                    config=config, pip_requirements=["mlflow"])
    version = str(registry.register_with_tags(info.model_uri, names.ENSEMBLE_MODEL, {}).version)
    registry.set_alias(names.ENSEMBLE_MODEL, names.CHAMPION, version)
    return version


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (the CLI and its uvicorn), SIGKILL after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert process.poll() is None, f"mlflow models serve ended:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"mlflow models serve never answered:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def test_the_team_registrys_champion_is_served_with_the_credentials_in_the_environment(team, as_user, tmp_path):
    version = tiny_ensemble_version()
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**team.env("reader"), "TF_CPP_MIN_LOG_LEVEL": "3",     # reading the registry is enough to serve
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # the scoring server is the venv's `uvicorn`, on PATH once the venv is active (README)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                   f"models:/{names.ENSEMBLE_MODEL}@{names.CHAMPION}", "--env-manager", "local",
                                   "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, log)
        # the README's request: one scan's file bytes, base64-encoded
        ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8))
        assert ok
        request = {"dataframe_split": {"columns": ["image_base64"],
                                       "data": [[base64.b64encode(png.tobytes()).decode("ascii")]]}}
        answer = requests.post(f"{url}/invocations", json=request, timeout=300)
        assert answer.status_code == 200, answer.text[:2000]
        (row,) = answer.json()["predictions"]
        assert row["row"] == 0 and row["path"] is None and row["predicted"] in ("normal", "bacterial", "viral")
        assert sum(row[f"p_{c}"] for c in ("normal", "bacterial", "viral")) == pytest.approx(1, abs=1e-5)
    finally:
        stop_group(server)
    served = mlflow.MlflowClient().get_model_version_by_alias(names.ENSEMBLE_MODEL, names.CHAMPION)
    assert served.version == version


def test_make_team_server_refuses_to_start_without_an_admin_password(tmp_path):
    recipe = subprocess.run(["make", "-s", "-n", "--no-print-directory", "team-server"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    (command,) = [line for line in recipe.splitlines() if "multiloss.team start" in line]
    folder = tmp_path / "team"
    env = {k: v for k, v in os.environ.items() if k != ADMIN_PASSWORD_ENV}
    refused = subprocess.run(f"{command} --folder {folder}", shell=True, cwd=REPO, env=env, capture_output=True,
                             text=True)
    assert refused.returncode == 2
    assert f"team server: {ADMIN_PASSWORD_ENV} is not set" in refused.stderr
    assert not folder.exists()                               # nothing was started or written
    short = subprocess.run(f"{command} --folder {folder}", shell=True, cwd=REPO, capture_output=True, text=True,
                           env={**env, ADMIN_PASSWORD_ENV: "short"})
    assert short.returncode == 2 and f"{ADMIN_PASSWORD_ENV} must be at least 12 characters" in short.stderr


def test_the_cli_tells_the_stack_it_runs(team):
    folder = str(team.stack.folder)
    status = subprocess.run([sys.executable, "-m", "multiloss.team", "status", "--folder", folder],
                            capture_output=True, text=True, check=True).stdout
    assert f"mlflow: {team.url} (process " in status and f"postgres: 127.0.0.1:{team.stack.postgres.port}" in status
    storage = subprocess.run([sys.executable, "-m", "multiloss.team", "storage-url", "--folder", folder],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert storage == team.stack.storage_url() and storage.startswith("postgresql://multiloss:")
    assert team.stack.postgres.databases() == ["mlflow", "mlflow_auth", "optuna", "postgres"]
    assert oct(team.stack.secrets_file.stat().st_mode & 0o777) == "0o600"
    assert oct(team.stack.auth_config.stat().st_mode & 0o777) == "0o600"


def test_starting_a_running_stack_again_keeps_it_and_names_what_does_not_fit(team, capsys):
    port = int(team.url.rsplit(":", 1)[1])
    pid = team.stack.server_pid()
    assert team.stack.start(team.passwords["admin"], port=port) == team.url
    assert capsys.readouterr().err == ""
    assert team.stack.start("not-the-admins-password") == team.url
    assert f"{ADMIN_PASSWORD_ENV} is not the 'admin' user's password on this server (HTTP 401)" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"already runs on port {port}, not {port + 1}; stop it first"):
        team.stack.start(team.passwords["admin"], port=port + 1)
    assert team.stack.server_pid() == pid and team.stack.tracking_uri == team.url
