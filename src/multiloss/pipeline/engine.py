"""The pipeline engine: each step a child run of one parent run, a finished step reused.

Steps run in this process: each gets its child run (parameters logged as strings, tags for reuse),
and the stage's own ``main(argv)`` joins it through ``MLFLOW_RUN_ID``, exactly as under
``mlflow run``. A subprocess per step would pay the TensorFlow import again for each of ~20 steps;
Keras state is cleared between steps instead. The argv comes from the entry point's command in
MLproject, so a step runs what ``mlflow run`` runs. With ``workers`` > 1, independent steps (the
U-Nets, the classifiers) also run in long-lived worker processes beside this one, each taking the
next step when it is free. Which steps make a pipeline is :mod:`multiloss.pipeline.chain`'s business.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import gc
import importlib
import json
import multiprocessing
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from multiloss import names, paths, project
from multiloss.pipeline import recovery, reuse
from multiloss.pipeline.workers import Worker, WorkerDied, WorkerError
from multiloss.team import gpus
from multiloss.tracking import registry, store

# A test hook: the step named here stops, its child run RUNNING, until the process is killed.
HOLD_ENV = "MULTILOSS_HOLD_STEP"


def entry_points(project_file: Path = paths.PROJECT_FILE) -> dict[str, dict]:
    """MLproject's entry points (another project file's, for tests)."""
    if Path(project_file) == paths.PROJECT_FILE:
        return copy.deepcopy(project.entry_points())     # callers may fill in a copy
    return yaml.safe_load(Path(project_file).read_text())["entry_points"]


def resolve_params(entry_point: str, spec: dict, given: dict[str, object]) -> dict[str, str]:
    """Every parameter of the entry point as the string it will be logged as: the given value or
    the default; ``path`` parameters made absolute."""
    declared = spec["parameters"]
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"entry point {entry_point} has no parameter {', '.join(unknown)} "
                         f"(it has {', '.join(declared)})")
    params = {}
    for name, declaration in declared.items():
        value = str(given.get(name, declaration.get("default", "")))
        params[name] = str(Path(value).resolve()) if declaration.get("type") == "path" else value
    return params


def stage_argv(spec: dict, params: dict[str, str]) -> tuple[str, list[str]]:
    """The module and argv of the entry point's command, filled with ``params``."""
    words = shlex.split(spec["command"].format(**{k: shlex.quote(v) for k, v in params.items()}))
    at = words.index("-m")
    return words[at + 1], words[at + 2:]


def alias_targets(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``name@alias`` -> version for each pair; '' where the alias is not set."""
    targets = {}
    for name, alias in pairs:
        try:
            targets[f"{name}@{alias}"] = str(registry.alias_version(name, alias).version)
        except ValueError:
            targets[f"{name}@{alias}"] = ""
    return targets


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the chain. ``aliases``: registry aliases the step sets; a run is reused only
    while they still point where it left them. ``output_intact(run)``: False when the files the run
    wrote are gone."""
    name: str
    entry_point: str
    given: dict
    input_fingerprint: str = ""
    aliases: tuple[tuple[str, str], ...] = ()
    output_intact: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Launch:
    """What starting a step's child run takes, resolved by the parent; picklable for a worker."""
    experiment_id: str
    parent_run_id: str
    name: str
    entry_point: str
    spec: dict
    params: dict[str, str]
    code: str
    input_fingerprint: str
    source_tags: tuple[tuple[str, str], ...] = ()


# The launcher's tags a step's run repeats, so the UI shows each child's source and git commit.
SOURCE_TAGS = (MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT, MLFLOW_GIT_BRANCH, MLFLOW_GIT_REPO_URL,
               MLFLOW_USER, MLFLOW_PROJECT_ENV)


def launch(job: Launch) -> str:
    """Create the step's child run and run the stage's ``main(argv)`` in it, in this process; the
    run ends KILLED on an interrupt, FAILED if the stage failed before its run began."""
    client = mlflow.MlflowClient()
    run = client.create_run(job.experiment_id, run_name=job.name, tags={
        **dict(job.source_tags), MLFLOW_PARENT_RUN_ID: job.parent_run_id, MLFLOW_PROJECT_ENTRY_POINT: job.entry_point, names.STEP_TAG: job.name,
        names.CODE_VERSION_TAG: job.code, names.INPUT_FINGERPRINT_TAG: job.input_fingerprint,
        names.PROCESS_TAG: _process_label()})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in job.params.items()])
    module_name, argv = stage_argv(job.spec, job.params)
    print(f"main: step {job.name}: {module_name} {shlex.join(argv)} (run {run_id})", flush=True)
    outer = os.environ.get("MLFLOW_RUN_ID")
    os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        while os.environ.get(HOLD_ENV) == job.name:
            print(f"main: holding step {job.name} (run {run_id}) in process {os.getpid()} for {HOLD_ENV}",
                  flush=True)
            time.sleep(60)
        importlib.import_module(module_name).main(argv)
    except KeyboardInterrupt:
        recovery.end_run_killed(run_id)
        raise
    except BaseException:
        if client.get_run(run_id).info.status == "RUNNING":      # it failed before its run began
            client.set_terminated(run_id, "FAILED")
        raise
    finally:
        if outer is None:
            os.environ.pop("MLFLOW_RUN_ID", None)
        else:
            os.environ["MLFLOW_RUN_ID"] = outer
        _clear_keras()
    status = client.get_run(run_id).info.status
    if status != "FINISHED":
        raise RuntimeError(f"step {job.name}: run {run_id} ended {status}")
    return run_id


def _process_label() -> str:
    name = multiprocessing.current_process().name
    return "main" if name == "MainProcess" else name


def _launch_in_worker(job: Launch) -> tuple[str, dict]:
    """:func:`launch` in a worker; also hands back the models the step kept in the worker's
    memory, so that the parent's later steps rebuild them instead of reading them from disk."""
    before = set(registry.kept_models())
    run_id = launch(job)
    return run_id, {source: kept for source, kept in registry.kept_models().items() if source not in before}


_worker_models = contextlib.ExitStack()


def _worker_setup() -> None:
    """Once per worker: the parent's tracking store, and a model store for the worker's life."""
    store.configure()
    _worker_models.enter_context(registry.models_kept_in_memory())


class Pipeline:
    """Runs steps as children of ``parent_run_id`` and records which run did each step.

    ``workers`` > 1: :meth:`run_steps` runs independent steps that many at a time, this process
    and ``workers - 1`` spawned worker processes (:mod:`multiloss.pipeline.workers`), kept until :meth:`close`.
    """

    def __init__(self, parent_run_id: str, *, fresh: bool = False, project_file: Path = paths.PROJECT_FILE,
                 workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.client = mlflow.MlflowClient()
        self.parent_run_id = parent_run_id
        parent = self.client.get_run(parent_run_id)
        self.experiment_id = parent.info.experiment_id
        self.source_tags = tuple((k, v) for k, v in parent.data.tags.items() if k in SOURCE_TAGS)
        self.fresh = fresh
        self.workers = workers
        self.entry_points = entry_points(project_file)
        self.steps: dict[str, dict] = {}
        self._helpers: list[Worker] = []
        self._started_helpers = 0
        # one GPU per process on a machine with several (this process takes the first), before
        # TensorFlow lists its devices; more workers than GPUs is refused (see multiloss.team.gpus)
        self._gpu_envs = gpus.worker_environments(workers, gpus.visible_gpus())
        gpus.apply(self._gpu_envs[0])

    def has(self, entry_point: str) -> bool:
        return entry_point in self.entry_points

    def step(self, name: str, entry_point: str, given: dict[str, object], input_fingerprint: str = "", *,
             aliases: list[tuple[str, str]] = (), output_intact=None) -> str | None:
        """The run id of step ``name``: a reused finished run, or a new child run of the stage.
        Returns None (and says so) when MLproject has no such entry point. See :class:`Step`."""
        return self.run_steps([Step(name, entry_point, given, input_fingerprint, tuple(aliases), output_intact)])[0]

    def run_steps(self, steps: list[Step]) -> list[str | None]:
        """The run ids of independent steps, in order: reused where possible, the others run up to
        ``workers`` at a time. If one fails, no further step starts, those running finish, and its
        error is raised; an interrupt kills the workers and ends their runs KILLED."""
        step_names = [step.name for step in steps]
        if len(set(step_names)) != len(step_names):
            raise ValueError(f"steps run together need distinct names, got {', '.join(step_names)}")
        outcomes: dict[int, tuple[str | None, str, dict]] = {}
        jobs: dict[int, Launch] = {}
        for index, step in enumerate(steps):
            if not self.has(step.entry_point):
                print(f"main: step {step.name} skipped: MLproject has no entry point {step.entry_point!r}",
                      flush=True)
                outcomes[index] = (None, "skipped", {})
                continue
            spec = self.entry_points[step.entry_point]
            params = resolve_params(step.entry_point, spec, step.given)
            code = reuse.code_version(stage_argv(spec, params)[0], spec)
            if not self.fresh:
                found = reuse.find_reusable(step.entry_point, params, code, step.input_fingerprint)
                if found is not None and self._still_valid(found, step.aliases, step.output_intact):
                    print(f"main: step {step.name} reuses run {found.info.run_id}", flush=True)
                    outcomes[index] = (found.info.run_id, "reused", params)
                    continue
            jobs[index] = Launch(self.experiment_id, self.parent_run_id, step.name, step.entry_point, spec, params,
                                 code, step.input_fingerprint, self.source_tags)
        ran: dict[int, str] = {}
        errors: dict[int, BaseException] = {}
        try:
            self._run(jobs, ran, errors)
        finally:                                  # interrupted too: what finished is recorded
            for index, step in enumerate(steps):
                if index in ran:
                    if step.aliases:
                        self.client.set_tag(ran[index], names.ALIASES_TAG,
                                            json.dumps(alias_targets(list(step.aliases)), sort_keys=True))
                    outcomes[index] = (ran[index], "ran", jobs[index].params)
                if index in outcomes:
                    run_id, how, params = outcomes[index]
                    self._record(step.name, step.entry_point, params, run_id, how)
        if errors:
            raise errors[min(errors)]
        return [outcomes[index][0] for index in range(len(steps))]

    def _run(self, jobs: dict[int, Launch], ran: dict[int, str], errors: dict[int, BaseException]) -> None:
        """Fill ``ran`` (index -> run id) and ``errors``. Each worker takes jobs from the front of the
        queue, this process from the back (alone: in order), each the next one as soon as it is free."""
        queue, lock, stop = collections.deque(jobs), threading.Lock(), threading.Event()
        dead: list[Worker] = []

        def take(front: bool) -> int | None:
            with lock:
                if stop.is_set() or not queue:
                    return None
                return queue.popleft() if front else queue.pop()

        def feed(worker: Worker) -> None:
            while (index := take(front=True)) is not None:
                try:
                    ran[index], kept = worker.call(_launch_in_worker, jobs[index])
                    registry.keep_models(kept)
                except (WorkerError, WorkerDied) as error:
                    errors[index] = type(error)(f"step {jobs[index].name}: {error}")
                    if isinstance(error, WorkerDied):
                        dead.append(worker)
                    stop.set()
                except Exception as error:          # noqa: BLE001 - e.g. a job or an answer that does not pickle
                    errors[index] = error
                    stop.set()

        threads = []
        try:
            helpers = self._start_helpers(min(self.workers - 1, len(jobs) - 1))
            threads = [threading.Thread(target=feed, args=(worker,), daemon=True) for worker in helpers]
            for thread in threads:
                thread.start()
            while (index := take(front=not threads)) is not None:
                try:
                    ran[index] = launch(jobs[index])
                except (Exception, SystemExit) as error:    # raised once the running steps have finished
                    errors[index] = error
                    stop.set()
            for thread in threads:
                thread.join()
        except BaseException:                    # an interrupt (SIGTERM, Ctrl-C): stop everything now
            stop.set()
            self._kill_helpers()
            for thread in threads:
                thread.join(10)
            recovery.end_unfinished_children(self.parent_run_id, self.experiment_id)
            raise
        if dead:
            for worker in dead:
                worker.kill()
            self._helpers = [worker for worker in self._helpers if worker not in dead]
            recovery.end_unfinished_children(self.parent_run_id, self.experiment_id)

    def _start_helpers(self, count: int) -> list[Worker]:
        """``count`` live workers: those already started (dead ones dropped), then new ones."""
        for worker in [w for w in self._helpers if not w.process.is_alive()]:
            worker.kill()
            self._helpers.remove(worker)
        while len(self._helpers) < count:
            self._started_helpers += 1
            taken = [worker.env for worker in self._helpers]
            env = next(e for e in self._gpu_envs[1:] if not e or e not in taken)
            self._helpers.append(Worker(self._started_helpers, _worker_setup, env=env))
        return self._helpers[:max(count, 0)]

    def _kill_helpers(self) -> None:
        for worker in self._helpers:
            worker.kill()
        self._helpers = []

    def close(self) -> None:
        """Stop the worker processes (each after the step it is running)."""
        for worker in self._helpers:
            worker.close()
        self._helpers = []

    def _still_valid(self, run, aliases, output_intact) -> bool:
        if aliases and run.data.tags.get(names.ALIASES_TAG) != json.dumps(alias_targets(list(aliases)), sort_keys=True):
            print(f"main: run {run.info.run_id} not reused: the registry aliases it set have moved since", flush=True)
            return False
        if output_intact is not None and not output_intact(run):
            print(f"main: run {run.info.run_id} not reused: the files it wrote are missing or changed", flush=True)
            return False
        return True

    def _record(self, name, entry_point, params, run_id, how) -> None:
        self.steps[name] = {"entry_point": entry_point, "run_id": run_id, "how": how, "params": params}
        if run_id:
            self.client.set_tag(self.parent_run_id, f"step.{name}", run_id)
            self.client.set_tag(self.parent_run_id, f"step.{name}.reused", str(how == "reused").lower())
        self.client.log_dict(self.parent_run_id, self.steps, "steps.json")

    def run_ids(self, prefix: str) -> list[str]:
        return [s["run_id"] for n, s in self.steps.items() if n.split(".")[0] == prefix and s["run_id"]]


def _clear_keras() -> None:
    """Free the last step's models, then freeze what survives (TensorFlow, the models kept in
    memory, ~1M objects) out of the collector's reach: each later full collection, in this step's
    tracing and at its end, then scans only the new objects."""
    from multiloss.classification import graph
    graph.clear_session()
    gc.collect()
    gc.freeze()
