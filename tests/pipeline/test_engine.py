"""The ``main`` pipeline: profiles, parameters, skipped steps, and resume after a kill."""

import importlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from multiloss import names
from multiloss.pipeline import engine
from multiloss.pipeline.workers import WorkerError
from multiloss.stages import main as main_stage
from multiloss.tracking import store

REPO = Path(__file__).resolve().parents[2]
PROJECT = engine.entry_points()
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
    profile = engine.load_profile(name)
    for stage in ("synth", "segment", "segment_eval", "crop", "classify", "ensemble", "gradcam"):
        if stage in PROJECT:       # entry points other sessions add may not be there yet
            engine.resolve_params(stage, PROJECT[stage], engine._settings(profile, stage))
    assert set(profile["segment"]["losses"]) | set(profile["classify"]["losses"]) and profile["layout"]


def test_unknown_profile_and_parameter_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"profile 'nope': no file .*nope\.yaml \(profiles in .*demo"):
        engine.load_profile("nope")
    with pytest.raises(ValueError, match="entry point segment has no parameter colour"):
        engine.resolve_params("segment", PROJECT["segment"], {"colour": "red"})


def test_params_are_strings_with_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lungs").mkdir()
    params = engine.resolve_params("segment", PROJECT["segment"], {"loss": "bce", "data": "lungs", "img_size": 64})
    assert params["data"] == str(tmp_path / "lungs") and params["img_size"] == "64"
    assert params["alpha"] == "" and params["patience"] == str(PROJECT["segment"]["parameters"]["patience"]["default"])
    module, argv = engine.stage_argv(PROJECT["segment"], params)
    assert module == "multiloss.stages.segment"
    parsed = importlib.import_module(module).parse_args(argv)
    assert (parsed.loss, parsed.img_size, parsed.alpha, parsed.data) == ("bce", 64, None, str(tmp_path / "lungs"))


def test_overrides_apply_to_both_trainings_and_leave_the_profile_alone():
    profile = engine.load_profile("demo")
    changed = engine.with_overrides(profile, img_size=96, epochs=2, seg_losses="bce, focal", cls_losses="cce")
    assert [changed[s]["img_size"] for s in ("segment", "classify")] == [96, 96]
    assert [changed[s]["epochs"] for s in ("segment", "classify")] == [2, 2]
    assert changed["segment"]["losses"] == ["bce", "focal"] and changed["classify"]["losses"] == ["cce"]
    assert profile["segment"]["losses"] != ["bce", "focal"]
    with pytest.raises(ValueError, match=r"the classify losses name cce, kld more than once \(main's cls_losses"):
        engine.with_overrides(profile, cls_losses="cce,kld,focal,kld,cce")


def test_a_step_without_entry_point_is_skipped_and_recorded(tmp_path, capsys):
    project = tmp_path / "MLproject"
    project.write_text(yaml.safe_dump({"name": "x", "entry_points": {"synth": PROJECT["synth"]}}))
    store.configure()
    client = mlflow.MlflowClient()
    parent = client.create_run(store.ensure_experiment("pipeline")).info.run_id
    pipeline = engine.Pipeline(parent, project_file=project)
    assert pipeline.step("gradcam.champion", "gradcam", {"model": "m"}) is None
    assert "step gradcam.champion skipped: MLproject has no entry point 'gradcam'" in capsys.readouterr().out
    assert pipeline.steps["gradcam.champion"]["how"] == "skipped"


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

    out = run(profile, "--until", "crop")
    assert "step synth reuses run" in out and "step segment.bce reuses run" in out
    assert "step segment_eval reuses run" in out and "main: step crop: multiloss.stages.crop" in out
    assert "1 steps ran, 3 reused" in out
    champion = client.get_model_version_by_alias(names.SEGMENTATION_MODEL, "champion")
    assert client.get_run(champion.run_id).info.status == "FINISHED"


def synth_step(name: str, out: Path, **given) -> engine.Step:
    return engine.Step(name, "synth", {"out": out, "n_seg": 2, "n_cls": 13, "size": 32, "seed": 0, **given})


def pipeline_run() -> tuple[mlflow.MlflowClient, str]:
    """A client of the test's store, and a new parent run."""
    store.configure()
    client = mlflow.MlflowClient()
    return client, client.create_run(store.ensure_experiment("pipeline")).info.run_id


def children(client, parent: str) -> dict[str, mlflow.entities.Run]:
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent}'")
    return {run.info.run_name: run for run in runs}


def status(client, parent: str, name: str) -> str | None:
    run = children(client, parent).get(name)
    return run.info.status if run else None


@pytest.mark.slow
def test_independent_steps_run_beside_a_worker_and_a_failure_stops_what_had_not_started(tmp_path, monkeypatch):
    client, parent = pipeline_run()
    pipeline = engine.Pipeline(parent, workers=2)
    try:
        steps = [synth_step(f"synth.{k}", tmp_path / f"s{k}", seed=k) for k in range(3)]
        run_ids = pipeline.run_steps(steps)
        runs = children(client, pipeline.parent_run_id)
        assert [runs[f"synth.{k}"].info.run_id for k in range(3)] == run_ids
        assert list(pipeline.steps) == ["synth.0", "synth.1", "synth.2"]       # in order, whoever ran them
        assert {run.info.status for run in runs.values()} == {"FINISHED"}
        # the worker took the first step; this process the last
        assert runs["synth.0"].data.tags[names.PROCESS_TAG] == "worker 1"
        assert runs["synth.2"].data.tags[names.PROCESS_TAG] == "main"
        assert (tmp_path / "s0" / "chest_xray").is_dir()

        assert pipeline.run_steps(steps) == run_ids
        assert {step["how"] for step in pipeline.steps.values()} == {"reused"}

        # The worker takes synth.bad (refused by its argument parser), this process synth.6 once
        # synth.bad has failed; then no one starts synth.5.
        launch = engine.launch

        def after_the_failure(job):
            deadline = time.monotonic() + 120
            while status(client, pipeline.parent_run_id, "synth.bad") != "FAILED":
                assert time.monotonic() < deadline, "synth.bad never failed"
                time.sleep(0.2)
            return launch(job)

        monkeypatch.setattr(engine, "launch", after_the_failure)
        bad = synth_step("synth.bad", tmp_path / "bad", n_cls=1)
        with pytest.raises(WorkerError, match=r"(?s)step synth\.bad: in worker 1 .*SystemExit"):
            pipeline.run_steps([bad, synth_step("synth.5", tmp_path / "s5", seed=5),
                                synth_step("synth.6", tmp_path / "s6", seed=6)])
        runs = children(client, pipeline.parent_run_id)
        assert runs["synth.bad"].info.status == "FAILED" and "synth.bad" not in pipeline.steps
        assert runs["synth.6"].info.status == "FINISHED" and pipeline.steps["synth.6"]["how"] == "ran"
        assert "synth.5" not in runs and "synth.5" not in pipeline.steps
        with pytest.raises(ValueError, match="distinct names, got synth.0, synth.0"):
            pipeline.run_steps([steps[0], steps[0]])
    finally:
        pipeline.close()


@pytest.mark.slow
def test_an_interrupt_kills_the_workers_and_ends_their_unfinished_runs_killed(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.HOLD_ENV, "synth.held")       # the worker inherits it and holds that step
    client, parent = pipeline_run()
    pipeline = engine.Pipeline(parent, workers=2)
    seen = {}

    def interrupted(job):
        """This process's step: wait until the worker's step is running, then Ctrl-C."""
        seen["worker"] = pipeline._helpers[0].process
        deadline = time.monotonic() + 120
        while "synth.held" not in children(client, pipeline.parent_run_id):
            assert time.monotonic() < deadline, "the worker never started its step"
            time.sleep(0.2)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_steps([synth_step("synth.held", tmp_path / "held"), synth_step("synth.1", tmp_path / "s1")])
    assert not seen["worker"].is_alive() and pipeline._helpers == []
    held = children(client, pipeline.parent_run_id)["synth.held"]
    assert held.info.status == "KILLED" and "synth.held" not in pipeline.steps


def test_a_profile_whose_workers_is_not_a_count_is_named(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({**TINY, "workers": "two"}))
    with pytest.raises(ValueError, match=r"profile .*bad\.yaml: workers must be a whole number of processes, got 'two'"):
        main_stage.main(["--profile", str(profile)])
