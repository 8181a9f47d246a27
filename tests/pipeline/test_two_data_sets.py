"""Two pipelines of different data, started at once against one MLflow server (SQLite backend,
proxied artifacts): each finishes with its own members, U-Nets and report, and neither takes an
alias from the other's versions; then promote and sweep on the second data set keep to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from multiloss import names
from multiloss.stages import promote, sweep
from multiloss.tracking import registry

REPO = Path(__file__).resolve().parents[2]


def profile(label: str, seed: int) -> dict:
    return {
        "data": "synthetic",
        "synth": {"out": f"data/{label}", "n_seg": 8, "n_cls": 13, "size": 64, "seed": seed},
        "segment": {"losses": ["bce"], "img_size": 32, "epochs": 1, "batch_size": 4, "patience": 1},
        "segment_eval": {"top_k": 1},
        "crop": {"out": f"data/{label}-cropped"},
        "classify": {"losses": ["cce", "focal"], "img_size": 32, "epochs": 1, "batch_size": 4, "patience": 1},
        # 1-epoch models on 13 phantoms may well be degenerate; this test is about data sets, not quality.
        "ensemble": {"top_k": "2", "epochs": 1, "batch_size": 4, "patience": 1, "include_degenerate": "true"},
        "gradcam": {"per_class": 1},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The server's URL, the home, and per data set: its parent run id."""
    home = tmp_path_factory.mktemp("team")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{home / 'server.db'}", "--artifacts-destination", str(home / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        env.update(MLFLOW_TRACKING_URI=url, MULTILOSS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
        launched = {}
        for label, seed in (("a", 0), ("b", 1)):
            path = home / f"{label}.yaml"
            path.write_text(yaml.safe_dump(profile(label, seed)))
            launched[label] = subprocess.Popen([sys.executable, "-m", "multiloss.stages.main", "--profile", str(path)],
                                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True)
        outputs = {label: p.communicate(timeout=1500)[0] for label, p in launched.items()}
        for label, p in launched.items():
            assert p.returncode == 0, f"pipeline {label}:\n{outputs[label][-4000:]}"
        parents = {label: out.rsplit("(parent run ", 1)[1].split(")")[0] for label, out in outputs.items()}
        yield url, home, parents
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def on_server(team, monkeypatch):
    url, home, parents = team
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MULTILOSS_HOME", str(home))
    mlflow.set_tracking_uri(url)
    return mlflow.MlflowClient(), home, parents


def steps(client, parent: str) -> dict[str, mlflow.entities.Run]:
    """A pipeline's step runs by step name (the parent's step.<name> tags)."""
    tags = client.get_run(parent).data.tags
    return {key.removeprefix("step."): client.get_run(value) for key, value in tags.items()
            if key.startswith("step.") and not key.endswith(".reused")}


def data_print(client, run) -> str:
    return run.data.tags[names.DATA_FINGERPRINT_TAG]


@pytest.mark.slow
def test_each_pipeline_uses_its_own_models_and_takes_no_alias_of_the_other(on_server):
    client, _, parents = on_server
    prints = {}
    for label, parent in parents.items():
        ran = steps(client, parent)
        cropped = ran["crop"]
        prints[label] = data_print(client, ran["classify.cce.seed0"])
        # crop used exactly the U-Net segment_eval chose, and that U-Net was trained on this pipeline's data
        chosen = ran["segment_eval"].data.tags[names.TOP_VERSIONS_TAG]
        assert cropped.data.params["members"] == chosen
        trained_on = client.get_model_version(names.SEGMENTATION_MODEL, chosen).run_id
        assert trained_on == ran["segment.bce"].info.run_id
        # the classifiers start from that exact U-Net, and the ensemble's members are this data's
        for loss in ("cce", "focal"):
            assert ran[f"classify.{loss}.seed0"].data.params["encoder"] == f"models:/{names.SEGMENTATION_MODEL}/{chosen}"
        members = ran["ensemble"].data.params["members"].split(",")
        assert {client.get_model_version(names.CLASSIFIER_MODEL, v).tags[names.DATA_FINGERPRINT_TAG]
                for v in members} == {prints[label]}
        # the report reads this pipeline's classify runs only
        reported = ran["report"].data.params["classify_runs"].split(",")
        assert {data_print(client, client.get_run(r)) for r in reported} == {prints[label]}
    assert prints["a"] != prints["b"]

    # one data set holds each plain champion; the other's champion is data-qualified, on its own version
    for model in (names.CLASSIFIER_MODEL, names.ENSEMBLE_MODEL):
        plain = registry.alias_version(model, names.CHAMPION).tags[names.DATA_FINGERPRINT_TAG]
        assert plain in prints.values(), model
        other = next(p for p in prints.values() if p != plain)
        qualified = registry.alias_version(model, names.data_alias(names.CHAMPION, other))
        assert qualified.tags[names.DATA_FINGERPRINT_TAG] == other, model


@pytest.mark.slow
def test_promote_and_sweep_on_one_data_set_keep_to_it(on_server, tmp_path, capsys):
    client, home, parents = on_server
    b = steps(client, parents["b"])
    b_print = data_print(client, b["classify.cce.seed0"])
    holder = registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION)
    b_versions = {str(v.version) for v in registry.versions(names.CLASSIFIER_MODEL)
                  if v.tags.get(names.DATA_FINGERPRINT_TAG) == b_print}

    # promote within B's pool: the alias lands on a B version; the plain champion moves off other data only by force
    promote.main(["--model", names.CLASSIFIER_MODEL, "--alias", "best-b", "--data-fingerprint", b_print[:12],
                  "--include-degenerate", "true"])
    assert str(registry.alias_version(names.CLASSIFIER_MODEL, "best-b").version) in b_versions
    if holder.tags.get(names.DATA_FINGERPRINT_TAG) != b_print:
        with pytest.raises(SystemExit, match="force"):
            promote.main(["--model", names.CLASSIFIER_MODEL, "--data-fingerprint", b_print[:12],
                          "--include-degenerate", "true"])
        assert registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION).version == holder.version

    # a sweep of one grid point on A, then the same on B: B's study is its own and runs its trial
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"lam": [1.0]}))
    for label in ("a", "b"):
        ran = steps(client, parents[label])
        encoder = ran["classify.cce.seed0"].data.params["encoder"]
        sweep.main(["--loss", "cal_cce", "--grid", str(grid), "--data", ran["crop"].data.params["out"],
                    "--encoder", encoder, "--img-size", "32", "--epochs", "1", "--batch-size", "4",
                    "--patience", "1", "--ci-method", "wald"])
        out = capsys.readouterr().out
        assert "sweep: created study" in out and "this worker ran 1 trial(s)" in out, out[-2000:]


@pytest.mark.slow
def test_what_a_reader_sees_in_mlflow_after_a_tiny_pipeline(on_server):
    """Signatures, dataset inputs, descriptions, the synthetic flag (tags, card, served answer),
    stable ensemble metric names, and the report and scores on the pipeline's own run."""
    import re

    import numpy as np
    import pandas as pd

    client, home, parents = on_server
    for model in (names.SEGMENTATION_MODEL, names.CLASSIFIER_MODEL, names.ENSEMBLE_MODEL):
        assert client.get_registered_model(model).description, model
        for version in registry.versions(model):
            assert mlflow.models.get_model_info(f"models:/{model}/{version.version}").signature is not None
            assert version.description and version.description.startswith("**Trained on synthetic phantoms**")
            assert version.tags[names.SYNTHETIC_TAG] == "true"
    for parent in parents.values():
        ran = steps(client, parent)
        parent_run = client.get_run(parent)
        assert "report.md" in {a.path for a in client.list_artifacts(parent)}
        assert {"ensemble.test_mcc", "segment_eval.champion_dice_mean"} <= set(parent_run.data.metrics)
        assert "steps ran" in parent_run.data.tags[names.NOTE_TAG]
        for name, run in ran.items():
            for tag in ("mlflow.source.name", "mlflow.source.type", "mlflow.user"):
                assert run.data.tags.get(tag) == parent_run.data.tags[tag], (name, tag)
            if name.startswith(("classify.", "segment.", "ensemble")):
                assert run.data.tags[names.NOTE_TAG], name
            if name.startswith(("classify.", "segment.")):
                contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
                want = {"train", "validation", "test"} if name.startswith("classify.") else {"train", "validation"}
                assert contexts == want, name
        metrics = set(ran["ensemble"].data.metrics)
        assert not [m for m in metrics if re.search(r"_v\d|top_\d", m)]
        assert {"top2.majority.mcc", "member.cce.mcc", "member.focal.mcc"} <= metrics

    champion = mlflow.pyfunc.load_model(f"models:/{names.ENSEMBLE_MODEL}@{names.CHAMPION}")
    image = next((home / "data" / "a" / "chest_xray" / "test").rglob("*.jpeg"))
    answer = champion.predict(pd.DataFrame({"path": [str(image)]}))
    assert answer["synthetic"].tolist() == [True] and np.isfinite(answer["p_normal"]).all()
