"""The whole pipeline: every stage a child run of one parent run, a finished step reused.

Steps run in this process: each gets its child run (parameters logged as strings, tags for reuse),
and the stage's own ``main(argv)`` joins it through ``MLFLOW_RUN_ID``, exactly as under
``mlflow run``. A subprocess per step would pay the TensorFlow import again for each of ~20 steps
(6.5 s each on an idle 2-core CPU, measured); Keras state is cleared between steps instead. The
argv comes from the entry point's command in MLproject, so a step runs what ``mlflow run`` runs.
With ``workers`` > 1, the independent steps of a stage (the U-Nets, the classifiers) also run in
long-lived worker processes beside this one, each taking the next step when it is free.

Profiles (``experiments/<name>.yaml``) hold every setting of a pipeline, in one place each.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import importlib
import json
import multiprocessing
import os
import shlex
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT

from multiloss import names, paths
from multiloss.data.fingerprint import fingerprint, mask_set_fingerprint
from multiloss.data.readers import find_kermany_root, read_kermany, read_mask_set
from multiloss.pipeline import reuse
from multiloss.pipeline.workers import Worker, WorkerDied, WorkerError
from multiloss.tracking import registry, store

# A test hook: the step named here stops, its child run RUNNING, until the process is killed.
HOLD_ENV = "MULTILOSS_HOLD_STEP"
STAGES = ("synth", "segment", "segment_eval", "crop", "classify", "ensemble", "gradcam", "report")


def home_path(path: str | os.PathLike) -> Path:
    """A profile's path: relative ones live under the project root (``MULTILOSS_HOME`` if set),
    beside the tracking store, so that one home holds a pipeline's data and runs."""
    return (paths.project_root() / path).resolve()


def load_profile(name: str) -> dict:
    """``experiments/<name>.yaml``, or a YAML file given by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else paths.CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in paths.CONFIG_DIR.glob("*.yaml")))
        raise ValueError(f"profile {name!r}: no file {path} (profiles in {paths.CONFIG_DIR}: {known})")
    return yaml.safe_load(path.read_text())


def entry_points(project_file: Path = paths.PROJECT_FILE) -> dict[str, dict]:
    return yaml.safe_load(project_file.read_text())["entry_points"]


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


def registered_version(run_id: str, name: str) -> str:
    found = mlflow.MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        raise RuntimeError(f"run {run_id} registered no version of {name}")
    return str(max(int(v.version) for v in found))


def version_reference(name: str, version: str) -> str:
    """``name/version:source run``: unique across stores, unlike a version number."""
    return f"{name}/{version}:{mlflow.MlflowClient().get_model_version(name, version).run_id}"


def alias_targets(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``name@alias`` -> version for each pair; '' where the alias is not set."""
    client = mlflow.MlflowClient()
    targets = {}
    for name, alias in pairs:
        try:
            targets[f"{name}@{alias}"] = str(client.get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException:
            targets[f"{name}@{alias}"] = ""
    return targets


def kermany_fingerprint(folder: str | os.PathLike) -> str:
    return fingerprint(read_kermany(folder)["path"], root=find_kermany_root(folder))


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


def launch(job: Launch) -> str:
    """Create the step's child run and run the stage's ``main(argv)`` in it, in this process; the
    run ends KILLED on an interrupt, FAILED if the stage failed before its run began."""
    client = mlflow.MlflowClient()
    run = client.create_run(job.experiment_id, run_name=job.name, tags={
        MLFLOW_PARENT_RUN_ID: job.parent_run_id, MLFLOW_PROJECT_ENTRY_POINT: job.entry_point, names.STEP_TAG: job.name,
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
        reuse.end_run_killed(run_id)
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
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self.fresh = fresh
        self.workers = workers
        self.entry_points = entry_points(project_file)
        self.steps: dict[str, dict] = {}
        self._helpers: list[Worker] = []
        self._started_helpers = 0

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
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"steps run together need distinct names, got {', '.join(names)}")
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
                                 code, step.input_fingerprint)
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
            reuse.end_unfinished_children(self.parent_run_id, self.experiment_id)
            raise
        if dead:
            for worker in dead:
                worker.kill()
            self._helpers = [worker for worker in self._helpers if worker not in dead]
            reuse.end_unfinished_children(self.parent_run_id, self.experiment_id)

    def _start_helpers(self, count: int) -> list[Worker]:
        """``count`` live workers: those already started (dead ones dropped), then new ones."""
        for worker in [w for w in self._helpers if not w.process.is_alive()]:
            worker.kill()
            self._helpers.remove(worker)
        while len(self._helpers) < count:
            self._started_helpers += 1
            self._helpers.append(Worker(self._started_helpers, _worker_setup))
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
    tracing and at its end, then scans only the new objects (about 1 s saved per step)."""
    import tf_keras
    tf_keras.backend.clear_session()
    gc.collect()
    gc.freeze()


def _registered(run) -> bool:
    """A training run's model version is still in the registry."""
    return bool(mlflow.MlflowClient().search_model_versions(f"run_id='{run.info.run_id}'"))


def _tag_matches(folder_fingerprint, tag: str = names.DATA_FINGERPRINT_TAG):
    def intact(run) -> bool:
        try:
            return folder_fingerprint() == run.data.tags.get(tag)
        except (OSError, ValueError):
            return False
    return intact


def with_overrides(profile: dict, *, img_size: int = 0, epochs: int = 0, seg_losses: str = "",
                   cls_losses: str = "") -> dict:
    """The profile with main's overrides: ``img_size`` every image size of the chain (U-Net,
    crop, classifier), ``epochs`` the most epochs of each U-Net and each classifier."""
    profile = json.loads(json.dumps(profile))
    for stage, losses in (("segment", seg_losses), ("classify", cls_losses)):
        if img_size:
            profile[stage]["img_size"] = img_size
        if epochs:
            profile[stage]["epochs"] = epochs
        if losses.strip():
            profile[stage]["losses"] = [name.strip() for name in losses.split(",") if name.strip()]
        twice = sorted({name for name in profile[stage]["losses"] if profile[stage]["losses"].count(name) > 1})
        if twice:
            raise ValueError(f"the {stage} losses name {', '.join(twice)} more than once "
                             f"(main's {'seg' if stage == 'segment' else 'cls'}_losses or the profile)")
    return profile


def _settings(profile: dict, stage: str) -> dict:
    return {k: v for k, v in (profile.get(stage) or {}).items() if k != "losses"}


def run_chain(pipeline: Pipeline, profile: dict, data: str, seeds: list[int],
              until: str = STAGES[-1]) -> dict[str, str | None]:
    """synth (no data) → segment ×losses → segment_eval → crop → classify ×losses ×seeds →
    ensemble → gradcam (champion classifier, model-level ensemble) → report, stopping after
    stage ``until``. Returns the run ids of segment_eval, ensemble and report (None if not run).
    Models stay in memory between steps (:func:`registry.models_kept_in_memory`)."""
    with registry.models_kept_in_memory():
        try:
            return _run_chain(pipeline, profile, data, seeds, until)
        finally:
            pipeline.close()


def _run_chain(pipeline: Pipeline, profile: dict, data: str, seeds: list[int], until: str) -> dict[str, str | None]:
    runs = dict.fromkeys(("segment_eval", "ensemble", "report"))

    def stop_after(stage: str) -> bool:
        return STAGES.index(until) <= STAGES.index(stage)
    data = data or profile.get("data") or "synthetic"
    layout = profile["layout"]
    if data == "synthetic":
        root = home_path(profile["synth"]["out"])
        synth = {**profile["synth"], "out": root}
        pipeline.step("synth", "synth", synth, output_intact=_tag_matches(
            lambda: fingerprint(read_kermany(root / layout["kermany"])["path"], root=root)))
    else:
        root = Path(data).resolve() if data != profile.get("data") else home_path(data)
        if not root.is_dir():
            raise ValueError(f"data {data!r} is not a folder (expected {', '.join(layout.values())} inside)")
    lungs, holdout, kermany = (root / layout[k] for k in ("lungs", "holdout", "kermany"))

    segment = _settings(profile, "segment")
    seg_print = mask_set_fingerprint(read_mask_set(lungs), root=lungs)
    seg_runs = pipeline.run_steps([Step(f"segment.{loss}", "segment", {**segment, "loss": loss, "data": lungs},
                                        seg_print, output_intact=_registered)
                                   for loss in profile["segment"]["losses"]])
    seg_versions = [registered_version(run_id, names.SEGMENTATION_MODEL) for run_id in seg_runs]
    if stop_after("segment"):
        return runs

    top_k = int(profile["segment_eval"]["top_k"])
    seg_aliases = [(names.SEGMENTATION_MODEL, a) for a in [names.CHAMPION, *(names.top_alias(k) for k in range(1, top_k + 1))]]
    eval_run = pipeline.step("segment_eval", "segment_eval", {
        **_settings(profile, "segment_eval"), "data": holdout, "img_size": segment["img_size"],
        "versions": ",".join(seg_versions)}, mask_set_fingerprint(read_mask_set(holdout), root=holdout),
        aliases=seg_aliases)
    runs["segment_eval"] = eval_run
    if stop_after("segment_eval"):
        return runs

    targets = alias_targets(seg_aliases)
    members = [version_reference(names.SEGMENTATION_MODEL, targets[f"{names.SEGMENTATION_MODEL}@top{k}"])
               for k in range(1, top_k + 1)]
    classify = _settings(profile, "classify")
    cropped = home_path(profile["crop"]["out"])
    pipeline.step("crop", "crop", {**_settings(profile, "crop"), "out": cropped, "data": kermany, "top_k": top_k,
                                   "img_size": classify["img_size"], "seg_size": segment["img_size"]},
                  json.dumps({"source": kermany_fingerprint(kermany), "members": members}),
                  output_intact=_tag_matches(lambda: fingerprint(read_kermany(cropped)["path"], root=cropped)))
    if stop_after("crop"):
        return runs

    cropped_print = kermany_fingerprint(cropped)
    champion = targets[f"{names.SEGMENTATION_MODEL}@champion"]
    encoder_input = json.dumps({"data": cropped_print,
                                "encoder": version_reference(names.SEGMENTATION_MODEL, champion)})
    pipeline.run_steps([Step(f"classify.{loss}.seed{seed}", "classify", {
        **classify, "loss": loss, "data": cropped, "seed": seed,
        "encoder": f"models:/{names.SEGMENTATION_MODEL}/{champion}"}, encoder_input, output_intact=_registered)
        for seed in seeds for loss in profile["classify"]["losses"]])
    if stop_after("classify"):
        return runs

    pool = [version_reference(names.CLASSIFIER_MODEL, str(v.version))
            for v in registry.versions(names.CLASSIFIER_MODEL)]
    ensemble_run = pipeline.step("ensemble", "ensemble", {**_settings(profile, "ensemble"), "data": cropped,
                                                          "seed": seeds[0]},
                                 json.dumps({"data": cropped_print, "pool": pool}),
                                 aliases=[(names.CLASSIFIER_MODEL, names.CHAMPION),
                                          (names.ENSEMBLE_MODEL, names.CHAMPION)])
    runs["ensemble"] = ensemble_run
    if stop_after("ensemble"):
        return runs

    for model_name, uri in _gradcam_models(ensemble_run).items():
        if not uri:
            print(f"main: step gradcam.{model_name} skipped: no {model_name} model to explain", flush=True)
            continue
        pipeline.step(f"gradcam.{model_name}", "gradcam", {**_settings(profile, "gradcam"), "model": uri,
                                                           "images": cropped},
                      json.dumps({"data": cropped_print, "model": _model_reference(uri)}))
    if stop_after("gradcam"):
        return runs

    runs["report"] = pipeline.step("report", "report", {
        "segment_eval_run": eval_run, "classify_runs": ",".join(pipeline.run_ids("classify")),
        "ensemble_run": ensemble_run or "", "dataset_label": "synthetic" if data == "synthetic" else "real"})
    return runs


def _gradcam_models(ensemble_run: str | None) -> dict[str, str]:
    """champion: the champion classifier (a fixed version); ensemble: the model-level ensemble the
    ensemble step tagged."""
    champion = alias_targets([(names.CLASSIFIER_MODEL, names.CHAMPION)])[f"{names.CLASSIFIER_MODEL}@{names.CHAMPION}"]
    models = {names.CHAMPION: f"models:/{names.CLASSIFIER_MODEL}/{champion}" if champion else ""}
    models["ensemble"] = (mlflow.MlflowClient().get_run(ensemble_run).data.tags.get("model_level_uri", "")
                          if ensemble_run else "")
    return models


def _model_reference(uri: str) -> str:
    if uri.startswith("models:/"):
        name, _, version = uri.removeprefix("models:/").partition("/")
        if version.isdigit():
            return version_reference(name, version)
    return uri


def report_text(run_id: str | None) -> str:
    """The Markdown report a report run logged ('' when there is none)."""
    if not run_id:
        return ""
    for artifact in mlflow.MlflowClient().list_artifacts(run_id):
        if artifact.path.endswith(".md"):
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact.path, dst_path=tmp)
                return Path(local).read_text(encoding="utf-8")
    return ""
