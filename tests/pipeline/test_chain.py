"""The chain of stages as the ``main`` stage runs it: its parameters, a bad profile, and resume
after a kill."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from multiloss import names
from multiloss.pipeline import chain, engine
from multiloss.stages import main as main_stage
from multiloss.tracking import store, urls

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data": "synthetic",
    "synth": {"out": "data/synthetic", "n_seg": 8, "n_cls": 13, "size": 64, "seed": 0},
    "segment": {"losses": ["bce"], "img_size": 32, "epochs": 1, "batch_size": 4, "patience": 1},
    "segment_eval": {"top_k": 1},
    "crop": {"out": "data/cropped"},
    "classify": {"losses": ["cce"], "img_size": 32, "epochs": 1, "batch_size": 4, "patience": 1},
}


def test_parameters_parse_and_bad_values_are_named(capsys):
    args = main_stage.parse_args(["--seeds", "0,1,2", "--fresh", "true", "--until", "crop", "--img-size", "64.0"])
    assert (args.seeds, args.fresh, args.until, args.img_size) == ([0, 1, 2], True, "crop", 64)
    for bad, message in ((["--seeds", "0,0"], "parameter seeds must be distinct"),
                         (["--fresh", "maybe"], "parameter fresh must be true or false"),
                         (["--until", "train"], "invalid choice: 'train'")):
        with pytest.raises(SystemExit):
            main_stage.parse_args(bad)
        assert message in capsys.readouterr().err


def test_an_image_size_the_chain_cannot_take_is_refused(capsys):
    assert main_stage.parse_args(["--img-size", "0"]).img_size == 0          # the profile's
    with pytest.raises(SystemExit):
        main_stage.parse_args(["--img-size", "100"])
    assert "parameter img_size must be 0 (the profile's) or a multiple of 32" in capsys.readouterr().err


def test_more_workers_than_gpus_is_refused_before_any_run(tmp_path, monkeypatch):
    """One GPU per process: main and each worker take one, so workers may not pass the GPUs seen."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with pytest.raises(SystemExit, match=r"main: parameter workers=2 but 1 GPU\(s\) are visible \(7\)"):
        main_stage.main(["--profile", str(profile), "--workers", "2"])
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_data_folder_without_the_layout_is_named_before_any_run(tmp_path):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    with pytest.raises(SystemExit, match=rf"main: parameter data: {tmp_path / 'nowhere'} is not a folder"):
        main_stage.main(["--profile", str(profile), "--data", str(tmp_path / "nowhere")])
    (tmp_path / "mine" / "lungs").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"main: parameter data: .*mine has no MontgomerySet/, chest_xray/"):
        main_stage.main(["--profile", str(profile), "--data", str(tmp_path / "mine")])
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_profile_whose_workers_is_not_a_count_is_named(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({**TINY, "workers": "two"}))
    with pytest.raises(ValueError, match=r"profile .*bad\.yaml: workers must be a whole number of processes, got 'two'"):
        main_stage.main(["--profile", str(profile)])


def registered(client, name: str, count: int) -> list[str]:
    """``count`` versions of ``name`` (their models are never loaded here), oldest first."""
    client.create_registered_model(name)
    run = client.create_run(store.ensure_experiment("pipeline")).info.run_id
    return [str(client.create_model_version(name, "file:///nowhere", run_id=run).version) for _ in range(count)]


def test_later_steps_read_the_versions_earlier_steps_chose_not_the_aliases():
    """Aliases are shared by every pipeline on the store: after another process moved them, the
    chain still hands crop, classify and gradcam exactly what its segment_eval and ensemble chose."""
    store.configure()
    client = mlflow.MlflowClient()
    experiment = store.ensure_experiment("pipeline")
    unets = registered(client, names.SEGMENTATION_MODEL, 3)
    evaluated = client.create_run(experiment, tags={names.TOP_VERSIONS_TAG: "3,1"}).info.run_id
    for alias, version in ((names.CHAMPION, "2"), (names.top_alias(1), "2"), (names.top_alias(2), "2")):
        client.set_registered_model_alias(names.SEGMENTATION_MODEL, alias, version)   # moved meanwhile
    assert chain.chosen_segmenters(evaluated) == ["3", "1"]
    given, fingerprint = chain.crop_inputs(evaluated, "kermany-print")
    assert given == {"members": "3,1", "top_k": 2}
    assert json.loads(fingerprint)["members"] == [chain.version_reference(names.SEGMENTATION_MODEL, v)
                                                  for v in ("3", "1")]
    assert chain.champion_encoder(evaluated) == f"models:/{names.SEGMENTATION_MODEL}/3"
    untagged = client.create_run(experiment).info.run_id
    with pytest.raises(RuntimeError, match=rf"segment_eval run {untagged} carries no {names.TOP_VERSIONS_TAG} tag"):
        chain.chosen_segmenters(untagged)
    assert unets == ["1", "2", "3"]

    classifiers = registered(client, names.CLASSIFIER_MODEL, 3)
    ensembled = client.create_run(experiment, tags={names.MODEL_LEVEL_URI_TAG: "models:/m-0123abcd"}).info.run_id
    client.log_param(ensembled, "members", "2,3")
    client.set_registered_model_alias(names.CLASSIFIER_MODEL, names.CHAMPION, "1")       # moved meanwhile
    assert chain.gradcam_models(ensembled) == {names.CHAMPION: f"models:/{names.CLASSIFIER_MODEL}/2",
                                               "ensemble": "models:/m-0123abcd"}
    assert classifiers == ["1", "2", "3"]


def command(profile: Path, *args) -> list[str]:
    return [sys.executable, "-m", "multiloss.stages.main", "--profile", str(profile), *args]


def launch(profile: Path, *args, hold: str) -> subprocess.Popen:
    """main in its own process group (so the test can kill the group), holding step ``hold``."""
    return subprocess.Popen(command(profile, *args), cwd=REPO, env={**os.environ, engine.HOLD_ENV: hold},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run(profile: Path, *args) -> str:
    result = subprocess.run(command(profile, *args), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def wait_for_hold(process: subprocess.Popen) -> tuple[str, str]:
    """Read main's output until it holds a step; returns (step, run id)."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if found := re.match(r"main: holding step (\S+) \(run (\w+)\)", line):
            return found.group(1), found.group(2)
    raise AssertionError("main ended without holding:\n" + "".join(seen[-40:]))


def statuses(client) -> dict[str, str]:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_id: r.info.status for r in runs}


@pytest.mark.slow
def test_killed_pipeline_resumes_where_it_stopped(tmp_path):
    """SIGKILL, then SIGTERM, then a run to the end: each start redoes only what did not finish."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(TINY))
    out = run(profile, "--until", "synth")               # until the first stage: that stage only
    assert "1 steps ran, 0 reused" in out and "segment." not in out
    first = launch(profile, "--until", "crop", hold="segment_eval")
    _, held_first = wait_for_hold(first)
    os.killpg(first.pid, signal.SIGKILL)                 # no chance to clean up
    first.wait()
    store.configure()
    client = mlflow.MlflowClient()
    first_parent = client.get_run(held_first).data.tags["mlflow.parentRunId"]
    assert statuses(client)[held_first] == statuses(client)[first_parent] == "RUNNING"

    second = launch(profile, "--until", "crop", hold="crop")
    _, held_second = wait_for_hold(second)
    os.killpg(second.pid, signal.SIGTERM)                # main ends its runs itself
    out = "".join(second.stdout)
    assert second.wait() == 143, out[-3000:]
    second_parent = client.get_run(held_second).data.tags["mlflow.parentRunId"]
    after = statuses(client)
    assert after[held_first] == after[first_parent] == after[held_second] == after[second_parent] == "KILLED"

    out = run(profile, "--until", "classify")
    assert "step synth reuses run" in out and "step segment.bce reuses run" in out
    assert "step segment_eval reuses run" in out and "main: step crop: multiloss.stages.crop" in out
    assert "2 steps ran, 3 reused" in out
    champion = client.get_model_version_by_alias(names.SEGMENTATION_MODEL, "champion")
    assert client.get_run(champion.run_id).info.status == "FINISHED"
    # crop and classify got the exact versions segment_eval chose, not the aliases
    parent_id = re.search(r"parent run (\w+)", out).group(1)
    assert f"main: in the MLflow UI (`make ui`): {urls.run_url(parent_id)}" in out
    parent = client.get_run(parent_id).data.tags
    chosen = client.get_run(parent["step.segment_eval"]).data.tags[names.TOP_VERSIONS_TAG]
    assert client.get_run(parent["step.crop"]).data.params["members"] == chosen
    encoder = client.get_run(parent["step.classify.cce.seed0"]).data.params["encoder"]
    assert encoder == f"models:/{names.SEGMENTATION_MODEL}/{chosen.split(',')[0]}"
