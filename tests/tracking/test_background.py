"""Run files written in the background: the work goes on while they are written, and a run is
FINISHED only once all of them are logged; a write that fails fails its run and is raised."""

import threading
import time

import mlflow
import pytest

from multiloss.tracking import background, store

WAIT = 20       # seconds a gated write waits for the test to open its gate before giving up


def artifacts(run_id: str) -> set[str]:
    return {f.path for f in mlflow.MlflowClient().list_artifacts(run_id)}


def status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def gated_write(gate: threading.Event, name: str = "figure.txt"):
    """A write that waits until the test opens ``gate``: had it run in the caller's thread, the
    caller could never open the gate and the write fails."""
    def write(folder):
        if not gate.wait(WAIT):
            raise TimeoutError("the write ran in the caller's thread (or nobody opened its gate)")
        (folder / name).write_text("drawn")
    return write


def test_outside_a_stage_files_are_logged_before_log_files_returns():
    with mlflow.start_run() as run:
        background.log_files(lambda folder: (folder / "now.txt").write_text("x"))
        assert artifacts(run.info.run_id) == {"now.txt"}


def test_a_stage_goes_on_while_its_files_are_written_and_ends_only_once_they_are_logged():
    gate = threading.Event()
    with store.stage_run("classification") as run:
        background.log_files(gated_write(gate))
        assert artifacts(run.info.run_id) == set()       # not yet: the write waits for the gate
        gate.set()                                       # the stage went on: it can open the gate
    assert artifacts(run.info.run_id) == {"figure.txt"}
    assert status(run.info.run_id) == "FINISHED"


def test_a_run_left_while_its_files_are_written_stays_running_until_they_are_logged():
    gate = threading.Event()
    with background.deferring():
        run = mlflow.start_run()
        run_id = run.info.run_id
        background.log_files(gated_write(gate))
        background.end_run(run_id)
        assert mlflow.active_run() is None               # this thread has left it ...
        assert status(run_id) == "RUNNING"               # ... but it is not finished
        gate.set()
    assert status(run_id) == "FINISHED" and artifacts(run_id) == {"figure.txt"}


def test_a_run_with_nothing_pending_ends_at_once():
    with background.deferring():
        run = mlflow.start_run()
        background.end_run(run.info.run_id)
        assert status(run.info.run_id) == "FINISHED" and mlflow.active_run() is None


@pytest.mark.parametrize("fails", ["before the run is left", "after the run is left"])
def test_a_failed_write_fails_its_run_and_is_raised_naming_it(fails):
    gate, failed = threading.Event(), threading.Event()

    def broken(folder):
        if fails == "after the run is left" and not gate.wait(WAIT):
            raise TimeoutError("nobody opened the gate")
        failed.set()
        raise OSError("disk full")

    with pytest.raises(RuntimeError, match="could not be logged: disk full") as raised:
        with background.deferring():
            run = mlflow.start_run()
            background.log_files(broken)
            if fails == "before the run is left":
                failed.wait(WAIT)
                time.sleep(0.2)                          # its future is marked failed by now
            background.end_run(run.info.run_id)
            gate.set()
    assert run.info.run_id in str(raised.value)
    assert status(run.info.run_id) == "FAILED" and mlflow.active_run() is None


def test_a_run_ended_failed_waits_for_its_files_and_stays_failed():
    gate = threading.Event()
    with background.deferring():
        run = mlflow.start_run()
        background.log_files(gated_write(gate))
        threading.Timer(0.5, gate.set).start()
        background.end_run(run.info.run_id, "FAILED")
        assert artifacts(run.info.run_id) == {"figure.txt"}     # waited for before the end
    assert status(run.info.run_id) == "FAILED"


def test_an_error_in_the_stage_is_raised_as_is_after_its_files_are_logged():
    gate = threading.Event()
    with pytest.raises(ValueError, match="the stage's own error"):
        with store.stage_run("classification") as run:
            background.log_files(gated_write(gate))
            gate.set()
            raise ValueError("the stage's own error")
    assert artifacts(run.info.run_id) == {"figure.txt"}
    assert status(run.info.run_id) == "FAILED"
