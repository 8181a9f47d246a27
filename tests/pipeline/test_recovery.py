"""Recovery: a dead pipeline and its unfinished children are ended KILLED, on a throw-away store."""

import os
import subprocess
import sys

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
    for key, value in recovery.process_tags(os.getpid()).items():
        client.set_tag(dead, key, value)
    client.set_tag(dead, names.PID_TAG, str(dead_pid()))
    done = finished_run("segment", {}, parent=dead)
    stuck = finished_run("classify", {}, status="RUNNING", parent=dead)
    client.create_registered_model("cxr-classifier")
    client.create_model_version("cxr-classifier", "file:///nowhere", run_id=stuck)

    alive = finished_run("main", {}, status="RUNNING")
    for key, value in recovery.process_tags().items():
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
    assert recovery._process_alive(os.getpid(), pid_start) is (pid_start == "" or recovery._process_start(os.getpid()) == "")
