"""Optuna sweeps of one classification loss's parameters over the paper's grids (SPEC §6, §7, §13).

A worker (one ``sweep`` process) opens a study in a shared storage and takes trials until the
grid or the trial budget is used up; any number of workers, on one machine (the default journal
file) or many (an RDB URL), share one study. Each trial is a classify training run, nested in
MLflow under the sweep's parent run.

Decisions that make several workers safe:

- ``sampler=grid`` puts every grid point in Optuna's trial queue once, when the study is created,
  and workers claim queued trials with the storage's compare-and-set (WAITING → RUNNING), so each
  point is trained once. (Optuna's GridSampler hands out points by trial number and, at the grid's
  end, re-runs a point another worker is still running.)
- The budget counts trials begun (retries of a crashed trial are not new trials) and is checked
  before a worker takes a trial, so it holds across workers (like ``MaxTrialsCallback``, but
  before rather than after a trial).
- A crashed worker's trial is found by heartbeat (RDBStorage's own; Optuna 5.0's JournalStorage
  has none, so :class:`HeartbeatJournalStorage` keeps heartbeats in the journal), failed, and
  requeued with its parameters by ``RetryHeartbeatStaleTrialCallback``; its MLflow run is closed
  as KILLED.
- The MLflow parent is the run of the worker that created the study (its id is a study user
  attribute); every worker's trials are nested directly under it, and a joining worker's own run
  is nested under it too. Whichever worker finds the study idle at its end (nothing running,
  nothing left to take) logs the summary onto the parent and registers the best trial's model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # optuna's matplotlib plots use pyplot; never a display

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.storages._heartbeat import BaseHeartbeat  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from multiloss import (
    names,
    paths,  # noqa: E402
)
from multiloss.files import replacing  # noqa: E402
from multiloss.losses import CLASSIFICATION_LOSSES  # noqa: E402
from multiloss.report.tables import write_table  # noqa: E402
from multiloss.tracking import registry  # noqa: E402

SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
# What a trial minimises: validation cross-entropy of the predicted probabilities. A loss's own
# value is not comparable across its parameters (a larger λ adds a larger penalty), so neither the
# study nor the pruner may compare it; NLL is the same yardstick for every trial (and is proper,
# so it rewards calibration, the point of the cal_* losses).
OBJECTIVE = "val_nll"
EPOCH_METRIC = "cross_entropy"   # compiled in, so Keras reports val_cross_entropy every epoch
MAX_RETRIES = 3
MIN_EPOCHS = 2   # epochs every trial runs before a pruner may stop it
READY_TIMEOUT_S = 120

# Study and trial attributes this module writes.
PARENT_ATTR = "sweep.parent_run_id"
CONFIG_ATTR = "sweep.config"
READY_ATTR = "sweep.ready"
RUN_ID_ATTR = "mlflow_run_id"
MODEL_URI_ATTR = "model_uri"
TAGS_ATTR = "registry_tags"
HEARTBEAT_ATTR = "sweep.heartbeat"
RETRY_ATTR = "failed_trial"        # set by RetryHeartbeatStaleTrialCallback on a requeued trial

# Parameters whose values may differ between workers of one study (paths and devices are per machine).
PER_MACHINE = ("data", "strategy")

Report = Callable[[int, float], None]
Objective = Callable[[optuna.Trial, dict[str, float], Report], float]


# --- grids and search spaces ---------------------------------------------------------------------

def grid_parameters() -> list[str]:
    return sorted({name for params in CLASSIFICATION_LOSSES.values() for name in params})


def read_grid(path: str | Path) -> dict[str, list[float]]:
    """A grid file: parameter name → list of values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a grid file maps parameter names to lists of values")
    known = grid_parameters()
    grid = {}
    for name, values in data.items():
        if name not in known:
            raise ValueError(f"{path}: unknown parameter {name!r}; grid parameters are {', '.join(known)}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {name} must be a non-empty list of numbers, got {values!r}")
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {name} must be a list of numbers, got {values!r}") from None
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{path}: {name} lists a value twice: {values!r}")
        grid[name] = numbers
    return grid


def load_grid(override: str | Path | None = None) -> dict[str, list[float]]:
    """The paper's grids (experiments/sweep_grids.yaml), with the parameters ``override`` lists replaced."""
    grid = read_grid(paths.SWEEP_GRIDS)
    if override:
        grid.update(read_grid(override))
    return grid


def search_space(loss: str, grid: dict[str, list[float]]) -> dict[str, list[float]]:
    """The grid restricted to the parameters ``loss`` has (SPEC §7), in the loss table's order."""
    if loss not in CLASSIFICATION_LOSSES:
        raise ValueError(f"unknown classification loss {loss!r}; choose one of {', '.join(CLASSIFICATION_LOSSES)}")
    names = list(CLASSIFICATION_LOSSES[loss])
    if not names:
        swept = [name for name, params in CLASSIFICATION_LOSSES.items() if params]
        raise ValueError(f"loss {loss!r} has no parameters to sweep (train it with the classify stage); "
                         f"losses with parameters: {', '.join(swept)}")
    missing = [name for name in names if name not in grid]
    if missing:
        raise ValueError(f"the grid has no values for {', '.join(missing)}, which loss {loss!r} needs")
    return {name: list(grid[name]) for name in names}


def grid_points(space: dict[str, list[float]], seed: int) -> list[dict[str, float]]:
    """Every combination, in a seeded shuffled order (a partial budget then spreads over the grid)."""
    points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    random.Random(seed).shuffle(points)
    return points


# --- settings ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """One worker's parameters; ``training`` is what every trial's classify training gets (the
    keyword arguments of ClassifierConfig, without the loss and its parameters)."""

    loss: str
    space: dict[str, list[float]]
    training: dict[str, object]
    sampler: str = "grid"
    n_trials: int = 0
    pruner: str = "none"
    seed: int = 0
    study: str = ""
    storage: str = ""
    heartbeat: int = 60

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.n_trials < 0 or (self.sampler == "tpe" and self.n_trials < 1):
            raise ValueError(f"n_trials must be >= 1 with sampler=tpe (0 means the whole grid only for sampler=grid), "
                             f"got {self.n_trials}")
        if self.heartbeat < 1:
            raise ValueError(f"heartbeat must be >= 1 second, got {self.heartbeat}")

    @property
    def study_name(self) -> str:
        return self.study or f"sweep-{self.loss}"

    @property
    def n_points(self) -> int:
        return len(list(itertools.product(*self.space.values())))

    @property
    def budget(self) -> int:
        """How many trials the study runs in all (across workers, retries not counted)."""
        if self.sampler == "grid":
            return min(self.n_trials, self.n_points) if self.n_trials else self.n_points
        return self.n_trials

    def study_config(self) -> dict[str, object]:
        """What every worker of one study must agree on."""
        return {"loss": self.loss, "sampler": self.sampler, "space": self.space, "seed": self.seed,
                "training": {k: v for k, v in self.training.items() if k not in PER_MACHINE}}


# --- storage -------------------------------------------------------------------------------------

def default_journal_path() -> Path:
    return paths.store_dir() / "optuna" / "journal.log"


def redact(url: str) -> str:
    """A storage URL without its password, fit for a tag."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage whose trials beat: each RUNNING trial's worker writes the time into the
    journal every ``heartbeat_interval`` s; a trial silent for ``grace_period`` s is stale (its
    worker died) and Optuna's ``fail_stale_trials`` fails it and calls ``stale_trial_callback``."""

    def __init__(self, backend, heartbeat_interval: int, grace_period: int, stale_trial_callback=None):
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A requeued trial carries its predecessor's last beat: its own start counts too.
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            last = max(started, trial.system_attrs.get(HEARTBEAT_ATTR, 0.0))
            if now - last > self._grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_trial_callback


class RetryStaleTrial:
    """Requeue a dead worker's trial with its parameters (Optuna's retry callback) and close its
    MLflow run as KILLED, so the UI keeps no run that looks alive."""

    def __init__(self, max_retry: int = MAX_RETRIES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._retry(study, trial)
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "retried", "true")
            client.set_terminated(run_id, "KILLED")
        print(f"sweep: trial {trial.number} of {study.study_name} lost its worker; requeued", flush=True)


def open_storage(spec: str, heartbeat: int = 60):
    """``""``: the journal file under the tracking store; a URL with ``://``: an RDB (PostgreSQL,
    MySQL, SQLite); anything else: a journal file at that path. Heartbeats every ``heartbeat`` s,
    stale after twice that."""
    if "://" in spec:
        return RDBStorage(spec, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=RetryStaleTrial())
    path = Path(spec) if spec else default_journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat, 2 * heartbeat, RetryStaleTrial())


def storage_label(spec: str) -> str:
    return redact(spec) if spec else str(default_journal_path())


# --- study ---------------------------------------------------------------------------------------

def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Steps are epochs counted from 1; values are each trial's best validation NLL so far (see
    :func:`run_trial`). Median: once one trial has finished, stop a trial (from epoch MIN_EPOCHS)
    whose best so far is worse than the median of the finished trials' best by the same epoch.
    Hyperband: rungs from a quarter of ``epochs`` (at least MIN_EPOCHS) up to ``epochs``, keeping
    the best third at each; in the first epochs every trial sits near ln 3, so an earlier first
    rung ranks trials by noise (the benchmark's lowest final NLL was cut at epoch 2)."""
    first = max(1, min(MIN_EPOCHS, epochs))
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=first)
    if name == "hyperband":
        rung = max(first, epochs // 4)
        return optuna.pruners.HyperbandPruner(min_resource=rung, max_resource=max(rung, epochs), reduction_factor=3)
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def make_sampler(settings: SweepSettings, created: bool) -> optuna.samplers.BaseSampler:
    """Grid trials all come from the queue, so the sampler is never asked (a seeded random one
    stands by). TPE lies about running trials (constant liar) so parallel workers spread out; the
    study's creator is seeded, joiners draw their own seed so their start-up draws differ."""
    if settings.sampler == "grid":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=settings.seed if created else None, constant_liar=True,
                                          n_startup_trials=max(1, min(10, settings.budget // 3)))


def open_study(settings: SweepSettings, storage, parent_run_id: str) -> tuple[optuna.Study, bool]:
    """Create the study (this worker's run becomes the parent; the grid is queued) or join it.

    A joiner waits until the creator has finished setting the study up, then checks that it was
    started with the same loss, sampler, grid, seed and training parameters.
    """
    pruner = make_pruner(settings.pruner, int(settings.training.get("epochs", 1)))
    name = settings.study_name
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                    sampler=make_sampler(settings, True), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(settings, False),
                                  pruner=pruner)
        _wait_until_ready(study, settings)
        return study, False
    study.set_user_attr(CONFIG_ATTR, json.loads(json.dumps(settings.study_config())))
    study.set_user_attr(PARENT_ATTR, parent_run_id)
    if settings.sampler == "grid":
        for point in grid_points(settings.space, settings.seed):
            study.enqueue_trial(point)
    study.set_user_attr(READY_ATTR, True)
    return study, True


def _wait_until_ready(study: optuna.Study, settings: SweepSettings) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study.study_name!r} in {storage_label(settings.storage)} was created but "
                               f"never set up (its creator died?); delete it (optuna delete-study) or use another study name")
        time.sleep(0.5)
    stored = study.user_attrs[CONFIG_ATTR]
    mine = json.loads(json.dumps(settings.study_config()))
    for key in mine:
        if stored.get(key) != mine[key]:
            raise ValueError(f"study {study.study_name!r} was started with {key}={stored.get(key)!r} but this "
                             f"worker has {key}={mine[key]!r}; use the same parameters or another study name")


# --- the worker loop -----------------------------------------------------------------------------

@dataclasses.dataclass
class SweepOutcome:
    study: optuna.Study
    created: bool
    parent_run_id: str
    trials_run: list[int]
    summary: dict[str, object] | None = None     # set by the worker that found the study idle
    registered_version: str | None = None


def _is_retry(trial: FrozenTrial) -> bool:
    return RETRY_ATTR in trial.system_attrs


def _claim(storage, trial: FrozenTrial) -> bool:
    """Compare-and-set WAITING → RUNNING: True for exactly one worker."""
    try:
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _heartbeat_enabled(storage) -> bool:
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def next_trial(study: optuna.Study, storage, settings: SweepSettings) -> optuna.Trial | None:
    """The trial this worker runs next, or None when the grid or the budget is used up.

    Dead workers' trials are failed and requeued first; requeued trials run before new ones.
    """
    if _heartbeat_enabled(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    for trial in (t for t in waiting if _is_retry(t)):
        if _claim(storage, trial):
            return optuna.Trial(study, trial._trial_id)
    begun = sum(1 for t in trials if t.state != TrialState.WAITING and not _is_retry(t))
    if begun >= settings.budget:
        return None
    if settings.sampler == "grid":
        for trial in (t for t in waiting if not _is_retry(t)):
            if _claim(storage, trial):
                return optuna.Trial(study, trial._trial_id)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "heartbeat is meant for Study.optimize": we beat ourselves
        return study.ask()


class _Heartbeat:
    """Beats for one trial from a thread while the trial trains (a no-op without heartbeats)."""

    def __init__(self, storage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if _heartbeat_enabled(self._storage):
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _beat(self):
        interval = self._storage.get_heartbeat_interval()
        while True:
            self._storage.record_heartbeat(self._trial_id)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def run_trial(study: optuna.Study, storage, trial: optuna.Trial, objective: Objective,
              settings: SweepSettings, parent_run_id: str) -> TrialState:
    """Run one trial as an MLflow run nested under the sweep's parent and tell Optuna its outcome.

    The objective calls ``report(epoch, value)`` after each epoch (epochs from 1); Optuna records
    the best value so far, the pruners' yardstick. Validation NLL spikes in early epochs (3.8 and
    11.3 at epoch 3 of good trials in bench/sweep_pruning.py): raw, a spike in a finished trial kept
    poor trials alive under the median rule (118 of 192 epochs spent instead of 90 on the same
    curves) and cut the best trial under Hyperband. When the pruner says so (before the last
    epoch), ``report`` raises TrialPruned and the trial ends PRUNED in Optuna and FINISHED, tagged
    ``pruned=true``, in MLflow. Any other error fails both and is re-raised. The raw per-epoch
    values are in the trial's MLflow run.
    """
    last_epoch = int(settings.training.get("epochs", 0))
    best = [float("nan")]

    def report(epoch: int, value: float) -> None:
        if not np.isnan(value) and not value >= best[0]:     # NaN (diverged) never counts as better
            best[0] = value
        trial.report(best[0], step=epoch)                   # NaN only while every value was NaN
        if epoch != last_epoch and trial.should_prune():   # stopping after the last epoch saves nothing
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch} ({OBJECTIVE} {value:.4g}, "
                                     f"best {best[0]:.4g})")

    state, value = TrialState.COMPLETE, None
    experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    try:
        with _Heartbeat(storage, trial._trial_id):
            params = {name: trial.suggest_categorical(name, values) for name, values in settings.space.items()}
            retry_of = storage.get_trial(trial._trial_id).system_attrs.get(RETRY_ATTR)
            tags = {"sweep.role": "trial", "sweep.study": study.study_name, "sweep.trial": str(trial.number),
                    "loss": settings.loss, **({"sweep.retry_of": str(retry_of)} if retry_of is not None else {})}
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{study.study_name}-trial-{trial.number}",
                                  nested=True, tags=tags) as run:
                mlflow.set_tag(MLFLOW_PARENT_RUN_ID, parent_run_id)   # directly under the sweep, whichever worker
                trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
                mlflow.log_params({f"loss_{name}": v for name, v in params.items()})
                try:
                    value = float(objective(trial, params, report))
                    mlflow.log_metric(f"trial_{OBJECTIVE}", value)
                except optuna.TrialPruned as pruned:   # caught inside the run, so it ends FINISHED
                    state = TrialState.PRUNED
                    mlflow.set_tag("pruned", "true")
                    print(f"sweep: {pruned}", flush=True)
                finally:
                    mlflow.log_metric("trial_epochs", len(storage.get_trial(trial._trial_id).intermediate_values))
    except BaseException:   # the MLflow run has ended FAILED; Optuna records the same
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return state


def study_idle(study: optuna.Study, settings: SweepSettings) -> bool:
    """Nothing running and nothing left that any worker would take."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return False
    if any(t.state == TrialState.WAITING and _is_retry(t) for t in trials):
        return False
    begun = sum(1 for t in trials if t.state != TrialState.WAITING and not _is_retry(t))
    if begun >= settings.budget:
        return True
    return settings.sampler == "grid" and not any(t.state == TrialState.WAITING for t in trials)


def run_sweep(settings: SweepSettings, objective: Objective | None = None) -> SweepOutcome:
    """One worker, inside the active MLflow run (the stage's): join or create the study, run trials
    until none is left for it, and, if the study is then idle, summarise it and register its best.

    ``objective`` defaults to a classify training (:func:`classifier_objective`); tests pass a cheap one.
    """
    own_run = mlflow.active_run()
    if own_run is None:
        raise RuntimeError("run_sweep needs an active MLflow run (use store.stage_run)")
    storage = open_storage(settings.storage, settings.heartbeat)
    study, created = open_study(settings, storage, own_run.info.run_id)
    parent_run_id = study.user_attrs[PARENT_ATTR]
    role = {"sweep.role": "parent"} if created else {"sweep.role": "worker", MLFLOW_PARENT_RUN_ID: parent_run_id}
    mlflow.set_tags({**role, "sweep.study": study.study_name, "sweep.storage": storage_label(settings.storage),
                     "sweep.sampler": settings.sampler, "sweep.pruner": settings.pruner, "loss": settings.loss})
    print(f"sweep: {'created' if created else 'joined'} study {study.study_name!r} in "
          f"{storage_label(settings.storage)} ({settings.sampler}, {settings.n_points} grid points, "
          f"budget {settings.budget} trials, pruner {settings.pruner})", flush=True)
    objective = objective or classifier_objective(settings)
    outcome = SweepOutcome(study, created, parent_run_id, [])
    with registry.models_kept_in_memory():     # every trial starts from the same encoder
        while (trial := next_trial(study, storage, settings)) is not None:
            state = run_trial(study, storage, trial, objective, settings, parent_run_id)
            outcome.trials_run.append(trial.number)
            print(f"sweep: trial {trial.number} {state.name.lower()}", flush=True)
    if study_idle(study, settings):
        outcome.summary = summarise(study, settings, parent_run_id)
        outcome.registered_version = register_best(study, parent_run_id)
        if parent_run_id != own_run.info.run_id:
            mlflow.MlflowClient().set_terminated(parent_run_id, "FINISHED")
    else:
        print("sweep: other workers still have trials running; the last one to finish summarises", flush=True)
    return outcome


# --- the classify objective ----------------------------------------------------------------------

def improves_on_finished(study: optuna.Study, value: float) -> bool:
    finished = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return not finished or value < min(finished)


def classifier_objective(settings: SweepSettings) -> Objective:
    """A trial = a classify training (in this process), pruned on the validation cross-entropy of
    each epoch, valued by the validation NLL of the kept (lowest-val_loss) weights. Only a trial
    that beats every finished one logs its model, so the best trial's model is always there to be
    registered and the others cost no disk."""
    import tf_keras

    from multiloss.classification import train

    def objective(trial: optuna.Trial, params: dict[str, float], report: Report) -> float:
        config = train.ClassifierConfig(loss=settings.loss, loss_params=params, **settings.training)

        def hook(epoch: int, logs: dict) -> None:
            report(epoch + 1, float(logs[f"val_{EPOCH_METRIC}"]))

        try:
            trained = train.train_classifier(
                config, epoch_hooks=[hook], extra_metrics=[tf_keras.metrics.CategoricalCrossentropy(name=EPOCH_METRIC)])
            value = trained.scores["val"]["nll"]
            if improves_on_finished(trial.study, value):
                trial.set_user_attr(MODEL_URI_ATTR, train.log_unregistered(trained))
                trial.set_user_attr(TAGS_ATTR, {k: str(v) for k, v in trained.registry_tags().items()})
            return value
        finally:
            tf_keras.backend.clear_session()   # one worker trains many models

    return objective


# --- summary and registration --------------------------------------------------------------------

def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, parameters, value, epochs run, retry origin, MLflow run id."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name, **t.params, OBJECTIVE: t.value,
                     "epochs": len(t.intermediate_values), "retry_of": t.system_attrs.get(RETRY_ATTR, ""),
                     "run_id": t.user_attrs.get(RUN_ID_ATTR, "")})
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def _save_plot(axes, path: Path) -> None:
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(figure)


def sweep_plots(study: optuna.Study, space: dict[str, list[float]], folder: Path) -> list[Path]:
    """Optimization history, per-epoch values (what the pruner saw) and, for two or more
    parameters, parameter importances."""
    from optuna.visualization import matplotlib as plots

    folder = Path(folder)
    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            _save_plot(plots.plot_optimization_history(study), folder / "optimization_history.png")
            written.append(folder / "optimization_history.png")
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            _save_plot(plots.plot_intermediate_values(study), folder / "intermediate_values.png")
            written.append(folder / "intermediate_values.png")
        varied = [name for name in space if len({t.params.get(name) for t in complete}) > 1]
        if len(space) >= 2 and len(complete) >= 2 and varied:
            _save_plot(plots.plot_param_importances(study), folder / "param_importances.png")
            written.append(folder / "param_importances.png")
    return written


def summarise(study: optuna.Study, settings: SweepSettings, parent_run_id: str) -> dict[str, object]:
    """Log onto the parent run: best parameters and value (tags ``best.*``, metric ``best_value``),
    counts, epochs spent, the table of all trials (CSV and Markdown) and the plots."""
    client = mlflow.MlflowClient()
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    epochs = sum(len(t.intermediate_values) for t in trials)
    summary: dict[str, object] = {**{f"n_{k}": v for k, v in counts.items()}, "epochs_spent": epochs}
    tags = {f"sweep.{k}": str(v) for k, v in summary.items()}
    if counts["complete"]:
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                        "best_run_id": best.user_attrs.get(RUN_ID_ATTR, "")})
        tags.update({"best.trial": str(best.number), "best.value": f"{best.value:.6g}",
                     "best.run_id": summary["best_run_id"], "best.objective": OBJECTIVE,
                     **{f"best.{name}": str(v) for name, v in best.params.items()}})
        client.log_metric(parent_run_id, "best_value", best.value)
    client.log_metric(parent_run_id, "epochs_spent", epochs)
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        table = trials_table(study)
        write_table(table, tmp, "trials")
        sweep_plots(study, settings.space, Path(tmp))
        client.log_artifacts(parent_run_id, tmp, artifact_path="sweep")
    print(f"sweep: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed; "
          f"{epochs} epochs" + (f"; best trial {summary['best_trial']} {OBJECTIVE} {summary['best_value']:.4f} "
                                f"{summary['best_params']}" if counts["complete"] else ""), flush=True)
    return summary


def register_best(study: optuna.Study, parent_run_id: str) -> str | None:
    """Register the best trial's model as a ``cxr-classifier`` version tagged with the sweep, study
    and trial (once: a version already tagged with this study and trial is returned as is)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    model_uri = best.user_attrs.get(MODEL_URI_ATTR)
    if not model_uri:
        return None
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name='{names.CLASSIFIER_MODEL}'"):
        if version.tags.get("sweep_study") == study.study_name and version.tags.get("sweep_trial") == str(best.number):
            return str(version.version)
    from multiloss.classification.train import register_logged

    version = register_logged(model_uri, {**best.user_attrs.get(TAGS_ATTR, {}), "sweep_study": study.study_name,
                                          "sweep_trial": best.number, "sweep_run_id": parent_run_id,
                                          "sweep_objective": OBJECTIVE, "sweep_value": f"{best.value:.6g}"})
    print(f"sweep: registered {names.CLASSIFIER_MODEL} version {version.version} (trial {best.number})", flush=True)
    return str(version.version)
