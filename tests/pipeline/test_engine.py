"""The pipeline engine: parameters as strings, a skipped step, steps beside a worker, an interrupt."""

import importlib
import os
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from multiloss import names
from multiloss.pipeline import engine
from multiloss.pipeline.workers import WorkerError
from multiloss.tracking import store

PROJECT = engine.entry_points()


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="entry point segment has no parameter colour"):
        engine.resolve_params("segment", PROJECT["segment"], {"colour": "red"})


def test_params_are_strings_with_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lungs").mkdir()
    # Our entry points declare data folders as strings (checked by the stage, so a mistyped one
    # fails before the launcher creates a run); a ``path`` parameter is still made absolute.
    as_path = {**PROJECT["segment"], "parameters": {**PROJECT["segment"]["parameters"],
                                                    "data": {"type": "path", "default": "x"}}}
    params = engine.resolve_params("segment", as_path, {"loss": "bce", "data": "lungs", "img_size": 64})
    assert params["data"] == str(tmp_path / "lungs") and params["img_size"] == "64"
    assert engine.resolve_params("segment", PROJECT["segment"], {"loss": "bce", "data": "lungs"})["data"] == "lungs"
    assert params["alpha"] == "" and params["patience"] == str(PROJECT["segment"]["parameters"]["patience"]["default"])
    module, argv = engine.stage_argv(PROJECT["segment"], params)
    assert module == "multiloss.stages.segment"
    parsed = importlib.import_module(module).parse_args(argv)
    assert (parsed.loss, parsed.img_size, parsed.alpha, parsed.data) == ("bce", 64, None, str(tmp_path / "lungs"))


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
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")        # two GPUs (none here): one per process
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)    # restored after the test
    pipeline = engine.Pipeline(parent, workers=2)
    try:
        steps = [synth_step(f"synth.{k}", tmp_path / f"s{k}", seed=k) for k in range(3)]
        run_ids = pipeline.run_steps(steps)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        assert pipeline._helpers[0].call(os.getenv, "CUDA_VISIBLE_DEVICES") == "5"
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
