"""Recovery: a dead pipeline and its unfinished children are ended KILLED, on a throw-away store."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from multiloss import names
from multiloss.pipeline import recovery
from multiloss.tracking import store
from tests.pipeline.conftest import finished_run


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_dead_pipeline_and_its_running_children_are_killed_and_their_versions_deleted():
    store.configure()
    client = mlflow.MlflowClient()
    dead = finished_run("main", {}, status="RUNNING")
    for key, value in store.process_tags(os.getpid()).items():
        client.set_tag(dead, key, value)
    client.set_tag(dead, names.PID_TAG, str(dead_pid()))
    done = finished_run("segment", {}, parent=dead)
    stuck = finished_run("classify", {}, status="RUNNING", parent=dead)
    client.create_registered_model("cxr-classifier")
    client.create_model_version("cxr-classifier", "file:///nowhere", run_id=stuck)

    alive = finished_run("main", {}, status="RUNNING")
    for key, value in store.process_tags().items():
        client.set_tag(alive, key, value)
    alive_child = finished_run("classify", {}, status="RUNNING", parent=alive)

    assert set(recovery.end_dead_pipelines()) == {dead, stuck}
    status = {run_id: client.get_run(run_id).info.status for run_id in (dead, done, stuck, alive, alive_child)}
    assert status == {dead: "KILLED", done: "FINISHED", stuck: "KILLED", alive: "RUNNING", alive_child: "RUNNING"}
    assert client.search_model_versions(f"run_id='{stuck}'") == []
    assert recovery.end_dead_pipelines() == []


@pytest.mark.parametrize("pid_start", ["", "1"])
def test_a_reused_pid_is_not_the_pipeline_process(pid_start):
    # the pid is ours (alive); a start time that differs means another process got the pid
    assert recovery._process_alive(os.getpid(), pid_start) is (pid_start == "" or recovery.process_start(os.getpid()) == "")


def launcher_orphan(tmp_path) -> str:
    """A run exactly as ``mlflow run`` leaves it when MLflow's own check of a ``path`` parameter
    fails after the launcher created the run: RUNNING, with no process to end it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: orphan\nentry_points:\n  main:\n    parameters:\n      images: {type: path, default: x}\n"
        "    command: python -c pass\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=store.tracking_uri())
    result = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(project), "--env-manager",
                             "local", "--experiment-name", "pipeline", "-P", f"images={tmp_path / 'nowhere'}"],
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0 and "no such file or directory" in result.stderr, result.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["pipeline"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    return runs[0].info.run_id


def test_runs_without_a_live_process_are_ended_and_others_left_alone(tmp_path):
    """A run whose own process tags name a dead process of this host is KILLED with its children that
    have no process of their own; a launcher's run whose command never started is FAILED once that is
    clearly stale; a run of another host, or with nothing that says it is dead, is left alone."""
    store.ensure_experiment("pipeline")
    client = mlflow.MlflowClient()
    orphan = launcher_orphan(tmp_path)

    def tagged(run_id, tags):
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        return run_id

    gone = dead_pid()
    dead_stage = tagged(finished_run("classify", {}, status="RUNNING"),
                        {**store.process_tags(os.getpid()), names.PID_TAG: str(gone)})
    client.create_registered_model("cxr-classifier")
    client.create_model_version("cxr-classifier", "file:///nowhere", run_id=dead_stage)
    own_child_alive = tagged(finished_run("sweep", {}, status="RUNNING", parent=dead_stage), store.process_tags())
    plain_child = finished_run("sweep", {}, status="RUNNING", parent=dead_stage)
    elsewhere = tagged(finished_run("classify", {}, status="RUNNING"),
                       {**store.process_tags(os.getpid()), names.PID_TAG: str(gone), names.HOST_TAG: "another-host"})
    notebook = finished_run("classify", {}, status="RUNNING")
    started = tagged(orphan_like(client), {"mlflow.project.backend": "local"})

    fresh = recovery.end_dead_pipelines()
    assert set(fresh) == {dead_stage, plain_child}               # the launcher's run is not stale yet
    later = recovery.end_dead_pipelines(now=time.time() + recovery.LAUNCH_GRACE_S + 1)
    assert later == [orphan]
    status = {run_id: client.get_run(run_id).info.status
              for run_id in (orphan, dead_stage, own_child_alive, plain_child, elsewhere, notebook, started)}
    assert status == {orphan: "FAILED", dead_stage: "KILLED", own_child_alive: "RUNNING", plain_child: "KILLED",
                      elsewhere: "RUNNING", notebook: "RUNNING", started: "RUNNING"}
    assert client.search_model_versions(f"run_id='{dead_stage}'") == []
    assert recovery.end_dead_pipelines(now=time.time() + recovery.BUILD_GRACE_S + 1) == []


def orphan_like(client) -> str:
    """A launcher's run as the orphan's, created an hour ago."""
    experiment = store.ensure_experiment("pipeline")
    return client.create_run(experiment, start_time=int((time.time() - 3600) * 1000), tags={
        "mlflow.source.type": "PROJECT", "mlflow.project.entryPoint": "classify"}).info.run_id


def test_a_dead_pid_of_another_boot_or_machine_of_the_same_name_is_left_alone():
    """Two machines (or containers) may share a host name: only a run of this boot is judged."""
    store.configure()
    client = mlflow.MlflowClient()
    elsewhere = finished_run("main", {}, status="RUNNING")
    for key, value in {**store.process_tags(os.getpid()), names.PID_TAG: str(dead_pid()),
                       names.BOOT_TAG: "another-boot"}.items():
        client.set_tag(elsewhere, key, value)
    here = finished_run("main", {}, status="RUNNING")
    for key, value in {**store.process_tags(os.getpid()), names.PID_TAG: str(dead_pid())}.items():
        client.set_tag(here, key, value)
    assert recovery.end_dead_pipelines() == [here]
    assert client.get_run(elsewhere).info.status == "RUNNING"


def test_a_running_child_whose_parent_is_gone_does_not_stop_the_clean_up():
    store.configure()
    client = mlflow.MlflowClient()
    orphan = finished_run("classify", {}, status="RUNNING", parent="0" * 32)
    assert recovery.end_dead_pipelines() == []
    assert client.get_run(orphan).info.status == "RUNNING"
