"""Recovery: the clean-up of pipelines that died, so that a restart redoes only what did not finish.

A pipeline tags its parent run with its host, process id and process start time; a RUNNING
pipeline whose process is gone was killed (SIGKILL leaves no chance to say so), and so were its
RUNNING children: :func:`end_dead_pipelines` marks them KILLED and deletes any model version they
registered, so that no alias can later be pointed at a model of a run that did not finish.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from multiloss import names


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing): a reused
    pid has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags(pid: int | None = None) -> dict[str, str]:
    """What identifies the running pipeline process, for :func:`end_dead_pipelines`."""
    pid = os.getpid() if pid is None else pid
    return {names.HOST_TAG: socket.gethostname(), names.PID_TAG: str(pid), names.PID_START_TAG: _process_start(pid)}


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _process_start(pid) in ("", start)


def delete_registered_versions(run_id: str) -> list[str]:
    """Delete the model versions a run registered (``name/version`` of each)."""
    client = mlflow.MlflowClient()
    deleted = []
    for version in client.search_model_versions(f"run_id='{run_id}'"):
        client.delete_model_version(version.name, version.version)
        deleted.append(f"{version.name}/{version.version}")
    return deleted


def end_run_killed(run_id: str) -> list[str]:
    """Mark a run that did not finish KILLED and delete the model versions it registered."""
    mlflow.MlflowClient().set_terminated(run_id, "KILLED")
    return delete_registered_versions(run_id)


def end_unfinished_children(parent_run_id: str, experiment_id: str) -> list[str]:
    """Mark KILLED (deleting what they registered) the RUNNING children of a pipeline that is
    alive but whose workers were killed: nothing else will end them. Returns their ids."""
    client = mlflow.MlflowClient()
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    ended = []
    for child in client.search_runs([experiment_id], query):
        deleted = end_run_killed(child.info.run_id)
        ended.append(child.info.run_id)
        print(f"main: run {child.info.run_id} ({child.info.run_name}) did not finish; marked KILLED"
              + (f"; deleted {', '.join(deleted)}" if deleted else ""), flush=True)
    return ended


def end_dead_pipelines() -> list[str]:
    """Mark KILLED every RUNNING pipeline run of this host whose process is gone, and every
    RUNNING child of such a pipeline (deleting what it registered), whatever the parent's status
    (``mlflow run``'s launcher marks the parent FAILED if it outlives its pipeline process).
    Returns the ids of the runs it ended."""
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    host = socket.gethostname()
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'")
    pipelines = {run.info.run_id: run for run in running if names.PID_TAG in run.data.tags}
    children: dict[str, list[Run]] = {}
    for run in running:
        parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
        if parent:
            children.setdefault(parent, []).append(run)
            if parent not in pipelines:
                pipelines[parent] = client.get_run(parent)
    ended = []
    for pipeline in pipelines.values():
        tags = pipeline.data.tags
        if names.PID_TAG not in tags or tags.get(names.HOST_TAG) != host:
            continue            # not a pipeline, or one on another machine: we cannot tell
        if _process_alive(int(tags[names.PID_TAG]), tags.get(names.PID_START_TAG, "")):
            continue
        for child in children.get(pipeline.info.run_id, []):
            deleted = end_run_killed(child.info.run_id)
            ended.append(child.info.run_id)
            print(f"main: run {child.info.run_id} ({child.info.run_name}) of a dead pipeline marked KILLED"
                  + (f"; deleted {', '.join(deleted)}" if deleted else ""), flush=True)
        if pipeline.info.status == "RUNNING":
            client.set_terminated(pipeline.info.run_id, "KILLED")
            ended.append(pipeline.info.run_id)
            print(f"main: pipeline run {pipeline.info.run_id} (process {tags[names.PID_TAG]} is gone) marked KILLED",
                  flush=True)
    return ended
