"""Run files written beside the work instead of in its way: a classifier's figures are drawn (in
the helper process) and logged from one background thread while the stage registers its model, or
while a sweep's next trial trains.

Integrity first: a run ends FINISHED only once every file given here is in its artifacts. Whoever
ends a run waits for its files (:func:`deferring` around a stage's run, :func:`end_run` for a run
that is left while they are still being written); a file that could not be written fails its run,
and the error is raised at the next wait. Outside :func:`deferring` files are written at once.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlflow

_state = threading.local()              # .deferring: depth of deferring() in this thread
_lock = threading.Lock()
_pending: dict[str, list[Future]] = {}  # run id -> its writes (and its deferred end), in order
_executor: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-files")
        return _executor


def _submit(run_id: str, job: Callable[[], None]) -> None:
    writer = _writer()
    with _lock:
        _pending.setdefault(run_id, []).append(writer.submit(job))


def _deferring_now() -> bool:
    return getattr(_state, "deferring", 0) > 0


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Inside, :func:`log_files` writes in the background; on leaving, every file given inside is
    logged (the first error among them is raised, unless the body itself raised)."""
    _state.deferring = getattr(_state, "deferring", 0) + 1
    try:
        yield
    except BaseException:
        wait_all(raise_errors=False)
        raise
    finally:
        _state.deferring -= 1
    wait_all()


def log_files(write: Callable[[Path], object]) -> None:
    """``write(folder)`` makes files in an empty folder; they are logged at the root of the active
    run's artifacts. In the background inside :func:`deferring`."""
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient(mlflow.get_tracking_uri())      # this store, whenever the job runs

    def job() -> None:
        with tempfile.TemporaryDirectory() as folder:
            write(Path(folder))
            client.log_artifacts(run_id, folder)

    if _deferring_now():
        _submit(run_id, job)
    else:
        job()


def wait(run_id: str, raise_errors: bool = True) -> None:
    """Block until the files (and a deferred end) given for ``run_id`` are done."""
    with _lock:
        jobs = _pending.pop(run_id, [])
    errors = [job.exception() for job in jobs]
    first = next((error for error in errors if error is not None), None)
    if first is not None and raise_errors:
        raise RuntimeError(f"run {run_id}: a file could not be logged: {first}") from first


def wait_all(raise_errors: bool = True) -> None:
    with _lock:
        run_ids = list(_pending)
    failures = []
    for run_id in run_ids:
        try:
            wait(run_id, raise_errors)
        except RuntimeError as error:
            failures.append(error)
    if failures:
        raise failures[0]


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """End run ``run_id`` (this thread's active run, as ``ActiveRun.__exit__`` would). If it ends
    FINISHED while its files are still being written, leave it now, RUNNING, and let the writer end
    it once they are logged (FAILED if one could not be), so that this thread can go on. MLflow has
    no public way to leave a run without ending it: it is "ended" RUNNING, which keeps it open."""
    active = mlflow.active_run()
    on_top = active is not None and active.info.run_id == run_id
    client = mlflow.MlflowClient(mlflow.get_tracking_uri())
    with _lock:
        earlier = list(_pending.get(run_id, []))
    if status == "FINISHED" and not all(job.done() for job in earlier):
        if on_top:
            mlflow.end_run("RUNNING")           # before the writer may end it: never after

        def finish() -> None:                   # runs after ``earlier``: one writer thread, in order
            ok = all(job.exception() is None for job in earlier)
            client.set_terminated(run_id, status if ok else "FAILED")

        _submit(run_id, finish)
        return
    if status != "FINISHED":
        wait(run_id, raise_errors=False)        # the caller raises its own error
    if any(job.exception() is not None for job in earlier):
        status = "FAILED"
    if on_top:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)
