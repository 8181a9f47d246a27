"""Recovery: the clean-up of runs whose process died, so that a restart redoes only what did not
finish and no run looks alive that nothing will ever end.

The rule :func:`end_dead_pipelines` applies to every RUNNING run of the store:

- A run tagged with its process (host, pid, the pid's start time: ``store.process_tags``; every
  stage run, the pipeline's parent run and sweep trials)
  whose host is this one and whose process is gone was killed (SIGKILL leaves no chance to say
  so): it is marked KILLED, and so are its RUNNING children that carry no process of their own
  (a pipeline's steps); a child with its own process tags is judged by its own process (a sweep
  trial of a live worker under a dead worker's parent run keeps running).
- A run ``mlflow run`` created whose command never started is FAILED once that is clearly stale.
  The launcher tags the run it creates ``mlflow.source.type=PROJECT`` and
  ``mlflow.project.entryPoint``, and ``mlflow.project.backend`` only once the command has started;
  a launcher that failed in between (MLflow's own check of a ``path`` parameter) leaves it
  RUNNING, with no process of ours to tag it. With ``--env-manager local`` the command starts
  within a second of the run's creation, so such a run is stale after :data:`LAUNCH_GRACE_S`;
  one whose environment was being built (``mlflow.project.env`` set) after :data:`BUILD_GRACE_S`.
- Anything else is left alone: a run of another host (its process cannot be checked from here),
  a run whose command started but which carries no process tags (another stage's, a notebook's).

A run ended KILLED also loses the model versions it registered, so that no alias can later be
pointed at a model of a run that did not finish.
"""

from __future__ import annotations

import os
import socket
import time

import mlflow
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_BACKEND,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_SOURCE_TYPE,
)

from multiloss import names
from multiloss.tracking.store import boot_id, process_start

# How long a launcher's run may wait for its command before it is clearly an orphan.
LAUNCH_GRACE_S = 10 * 60           # --env-manager local: the command starts at once
BUILD_GRACE_S = 24 * 3600          # conda, virtualenv, docker: the environment is built first


def on_this_machine(tags: dict, host: str | None = None) -> bool:
    """Whether a run's process tags name this machine: its host name and, where recorded, its boot
    id (two machines or containers may share a host name; a pid means nothing on another one)."""
    if tags.get(names.HOST_TAG) != (host or socket.gethostname()):
        return False
    boot = tags.get(names.BOOT_TAG)
    return boot is None or boot == boot_id()


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or process_start(pid) in ("", start)


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


def end_dead_pipelines(now: float | None = None) -> list[str]:
    """End the RUNNING runs of this store that nothing will end (see the module's rule): KILLED for
    a dead process of this host and its children without a process of their own, whatever the
    parent's status (``mlflow run``'s launcher marks a parent FAILED if it outlives its process);
    FAILED for a launcher's run whose command never started. ``now``: the time to judge staleness
    at (seconds since the epoch; default the clock). Returns the ids of the runs it ended."""
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    host = socket.gethostname()
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'")
    owners = {run.info.run_id: run for run in running if names.PID_TAG in run.data.tags}
    children: dict[str, list[Run]] = {}
    for run in running:
        parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
        if parent:
            children.setdefault(parent, []).append(run)
            if parent not in owners:
                try:
                    owners[parent] = client.get_run(parent)
                except mlflow.exceptions.MlflowException:
                    continue        # a parent deleted or purged: nothing to judge the child by
    ended = []
    for owner in owners.values():
        tags = owner.data.tags
        if names.PID_TAG not in tags or not on_this_machine(tags, host):
            continue            # no process of ours, or one on another machine: we cannot tell
        if _process_alive(int(tags[names.PID_TAG]), tags.get(names.PID_START_TAG, "")):
            continue
        for child in children.get(owner.info.run_id, []):
            if names.PID_TAG in child.data.tags or child.info.run_id in ended:
                continue        # judged by its own process
            deleted = end_run_killed(child.info.run_id)
            ended.append(child.info.run_id)
            print(f"main: run {child.info.run_id} ({child.info.run_name}) of a dead process's run marked KILLED"
                  + (f"; deleted {', '.join(deleted)}" if deleted else ""), flush=True)
        if owner.info.status == "RUNNING" and owner.info.run_id not in ended:
            deleted = end_run_killed(owner.info.run_id)
            ended.append(owner.info.run_id)
            print(f"main: run {owner.info.run_id} ({owner.info.run_name}; process {tags[names.PID_TAG]} is gone) "
                  f"marked KILLED" + (f"; deleted {', '.join(deleted)}" if deleted else ""), flush=True)
    now = time.time() if now is None else now
    for run in running:
        if run.info.run_id not in ended and launch_never_started(run, now):
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
            print(f"main: run {run.info.run_id} ({run.info.run_name}) of `mlflow run -e "
                  f"{run.data.tags[MLFLOW_PROJECT_ENTRY_POINT]}` never started its command; marked FAILED", flush=True)
    return ended


def launch_never_started(run: Run, now: float) -> bool:
    """A RUNNING run ``mlflow run`` created, whose command had not started long after (see the module)."""
    tags = run.data.tags
    if tags.get(MLFLOW_SOURCE_TYPE) != "PROJECT" or MLFLOW_PROJECT_ENTRY_POINT not in tags:
        return False
    if MLFLOW_PROJECT_BACKEND in tags or names.PID_TAG in tags:
        return False            # the command started: its own process ends it
    grace = BUILD_GRACE_S if MLFLOW_PROJECT_ENV in tags else LAUNCH_GRACE_S
    return now - run.info.start_time / 1000 > grace
