"""The ``main`` pipeline: profiles, parameters, skipped steps, and resume after a kill."""

import importlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from multiloss import registry, tracking, workflow
from multiloss.stages import main as main_stage

REPO = Path(__file__).resolve().parents[1]
PROJECT = workflow.entry_points()
TINY = {
    "data": "synthetic",
    "layout": {"lungs": "lungs", "holdout": "MontgomerySet", "kermany": "chest_xray"},
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


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_profiles_name_only_parameters_their_entry_points_have(name):
    profile = workflow.load_profile(name)
    for stage in ("synth", "segment", "segment_eval", "crop", "classify", "ensemble", "gradcam"):
        if stage in PROJECT:       # entry points other sessions add may not be there yet
            workflow.resolve_params(stage, PROJECT[stage], workflow._settings(profile, stage))
    assert set(profile["segment"]["losses"]) | set(profile["classify"]["losses"]) and profile["layout"]


def test_unknown_profile_and_parameter_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"profile 'nope': no file .*nope\.yaml \(profiles in .*demo"):
        workflow.load_profile("nope")
    with pytest.raises(ValueError, match="entry point segment has no parameter colour"):
        workflow.resolve_params("segment", PROJECT["segment"], {"colour": "red"})


def test_params_are_strings_with_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lungs").mkdir()
    params = workflow.resolve_params("segment", PROJECT["segment"], {"loss": "bce", "data": "lungs", "img_size": 64})
    assert params["data"] == str(tmp_path / "lungs") and params["img_size"] == "64"
    assert params["alpha"] == "" and params["patience"] == str(PROJECT["segment"]["parameters"]["patience"]["default"])
    module, argv = workflow.stage_argv(PROJECT["segment"], params)
    assert module == "multiloss.stages.segment"
    parsed = importlib.import_module(module).parse_args(argv)
    assert (parsed.loss, parsed.img_size, parsed.alpha, parsed.data) == ("bce", 64, None, str(tmp_path / "lungs"))


def test_overrides_apply_to_both_trainings_and_leave_the_profile_alone():
    profile = workflow.load_profile("demo")
    changed = workflow.with_overrides(profile, img_size=96, epochs=2, seg_losses="bce, focal", cls_losses="cce")
    assert [changed[s]["img_size"] for s in ("segment", "classify")] == [96, 96]
    assert [changed[s]["epochs"] for s in ("segment", "classify")] == [2, 2]
    assert changed["segment"]["losses"] == ["bce", "focal"] and changed["classify"]["losses"] == ["cce"]
    assert profile["segment"]["losses"] != ["bce", "focal"]


def test_a_step_without_entry_point_is_skipped_and_recorded(tmp_path, capsys):
    project = tmp_path / "MLproject"
    project.write_text(yaml.safe_dump({"name": "x", "entry_points": {"synth": PROJECT["synth"]}}))
    tracking.configure()
    client = mlflow.MlflowClient()
    parent = client.create_run(tracking.ensure_experiment("pipeline")).info.run_id
    pipeline = workflow.Pipeline(parent, project_file=project)
    assert pipeline.step("gradcam.champion", "gradcam", {"model": "m"}) is None
    assert "step gradcam.champion skipped: MLproject has no entry point 'gradcam'" in capsys.readouterr().out
    assert pipeline.steps["gradcam.champion"]["how"] == "skipped"


def command(profile: Path, *args) -> list[str]:
    return [sys.executable, "-m", "multiloss.stages.main", "--profile", str(profile), *args]


def launch(profile: Path, *args, hold: str) -> subprocess.Popen:
    """main in its own process group (so the test can kill the group), holding step ``hold``."""
    return subprocess.Popen(command(profile, *args), cwd=REPO, env={**os.environ, workflow.HOLD_ENV: hold},
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
    first = launch(profile, "--until", "crop", hold="segment_eval")
    _, held_first = wait_for_hold(first)
    os.killpg(first.pid, signal.SIGKILL)                 # no chance to clean up
    first.wait()
    tracking.configure()
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

    out = run(profile, "--until", "crop")
    assert "step synth reuses run" in out and "step segment.bce reuses run" in out
    assert "step segment_eval reuses run" in out and "main: step crop: multiloss.stages.crop" in out
    assert "1 steps ran, 3 reused" in out
    champion = client.get_model_version_by_alias(registry.SEGMENTATION_MODEL, "champion")
    assert client.get_run(champion.run_id).info.status == "FINISHED"
