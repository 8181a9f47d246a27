"""One sweep study in Optuna: its settings, pruners and samplers, how a worker creates or joins
it, takes its next trial and runs it, and the default objective (a classify training).

A trial is a classify training in the worker's own process, so that a worker imports TensorFlow
once and a per-epoch hook can prune it.

A study is one search on one data set from one encoder: its identity (:meth:`SweepSettings.identity`)
holds the loss, sampler, grid, seed, every training parameter, the data's fingerprint and the
exact encoder version (``models:/name/N`` and its run), fixed once by :func:`pin_inputs` so that
an alias moving mid-sweep changes nothing. The default study name carries a hash of it, so new
data, a new champion U-Net or another training parameter starts a new study instead of resuming
a finished one; a study the user named refuses a worker whose identity differs, naming what.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
import warnings
from collections.abc import Callable

import mlflow
import numpy as np
import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from multiloss import names
from multiloss.classification.sweeps.grid import grid_points
from multiloss.classification.sweeps.storage import (
    RETRY_ATTR,
    RUN_ID_ATTR,
    Heartbeat,
    heartbeat_enabled,
    open_storage,
    storage_label,
)
from multiloss.data.fingerprint import kermany_fingerprint
from multiloss.tracking import background
from multiloss.tracking.store import process_tags

SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
# What a trial minimises: validation cross-entropy of the predicted probabilities. A loss's own
# value is not comparable across its parameters (a larger λ adds a larger penalty), so neither the
# study nor the pruner may compare it; NLL is the same yardstick for every trial (and is proper,
# so it rewards calibration, the point of the cal_* losses).
OBJECTIVE = "val_nll"
EPOCH_METRIC = "cross_entropy"   # compiled in, so Keras reports val_cross_entropy every epoch
MIN_EPOCHS = 2   # epochs every trial runs before a pruner may stop it
READY_TIMEOUT_S = 120

# Study and trial attributes (storage.py names those its machinery reads).
PARENT_ATTR = "sweep.parent_run_id"
CONFIG_ATTR = "sweep.config"
READY_ATTR = "sweep.ready"
MODEL_URI_ATTR = "model_uri"
TAGS_ATTR = "registry_tags"
CARD_ATTR = "model_card"

# Parameters whose values may differ between workers of one study (paths and devices are per machine;
# the data's fingerprint stands for the data in the study's identity).
PER_MACHINE = ("data", "strategy")
ENCODER_TAG = "sweep.encoder"   # on the sweep's runs and trials: the exact encoder version they train from

Report = Callable[[int, float], None]
Objective = Callable[[optuna.Trial, dict[str, float], Report], float]


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
    # Set by pin_inputs: the data's fingerprint and the encoder as "models:/name/N (run <id>)".
    data_fingerprint: str = ""
    encoder_version: str = ""

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
        """The user's name, else ``sweep-<loss>-<hash of the identity>``: one study per data set,
        encoder and settings."""
        if self.study:
            return self.study
        digest = hashlib.blake2b(json.dumps(self.identity(), sort_keys=True).encode(), digest_size=5)
        return f"sweep-{self.loss}-{digest.hexdigest()}"

    @property
    def pinned(self) -> bool:
        """The data is fingerprinted and the encoder fixed to one version (where training reads them)."""
        return (("data" not in self.training or bool(self.data_fingerprint))
                and ("encoder" not in self.training or bool(self.encoder_version)))

    @property
    def n_points(self) -> int:
        return len(list(itertools.product(*self.space.values())))

    @property
    def budget(self) -> int:
        """How many trials the study runs in all (across workers, retries not counted)."""
        if self.sampler == "grid":
            return min(self.n_trials, self.n_points) if self.n_trials else self.n_points
        return self.n_trials

    def identity(self) -> dict[str, object]:
        """What every worker of one study must agree on, as JSON values: the loss, sampler, grid and
        seed, every training parameter but the per-machine ones, the data fingerprint and the
        encoder version. The budget (``n_trials``), pruner, storage and heartbeat are not: a re-run
        with a larger budget resumes the study."""
        training = {k: v for k, v in self.training.items() if k not in PER_MACHINE and k != "encoder"}
        inputs = {"data_fingerprint": self.data_fingerprint} if "data" in self.training else {}
        if "encoder" in self.training:
            inputs["encoder"] = self.encoder_version or str(self.training["encoder"])
        return json.loads(json.dumps({"loss": self.loss, "sampler": self.sampler, "space": self.space,
                                      "sampler_seed": self.seed, **training, **inputs}))


def pin_inputs(settings: SweepSettings) -> SweepSettings:
    """The settings with the data fingerprinted and the encoder fixed to the version it names now
    (``models:/name@alias`` becomes ``models:/name/N``), once per worker, before its study opens.

    Errors name the parameter: ``data`` that is not a Kermany-layout dataset, an ``encoder`` whose
    alias or version is not in the registry.
    """
    if settings.pinned:
        return settings
    from multiloss.data.readers import read_kermany

    training, found = dict(settings.training), {}
    if "data" in training:
        try:
            frame = read_kermany(training["data"])
        except (OSError, ValueError) as err:
            raise ValueError(f"parameter data: {err}") from None
        found["data_fingerprint"] = kermany_fingerprint(training["data"], frame)
    if "encoder" in training:
        from multiloss.classification.train import pin_encoder

        training["encoder"], found["encoder_version"] = pin_encoder(str(training["encoder"]))
    return dataclasses.replace(settings, training=training, **found)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Steps are epochs counted from 1; values are each trial's best validation NLL so far (see
    :func:`run_trial`). Median: once one trial has finished, stop a trial (from epoch MIN_EPOCHS)
    whose best so far is worse than the median of the finished trials' best by the same epoch.
    Hyperband: rungs from a quarter of ``epochs`` (at least MIN_EPOCHS) up to ``epochs``, keeping
    the best third at each; in the first epochs every trial sits near ln 3, so an earlier first
    rung ranks trials by noise (in bench/sweep_pruning.py it cut the trial with the lowest final NLL)."""
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
    started with the same identity (:meth:`SweepSettings.identity`). ``settings`` must be pinned.
    """
    if not settings.pinned:
        raise ValueError("open_study needs pinned settings (pin_inputs): the data and encoder are part of the study")
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
    study.set_user_attr(CONFIG_ATTR, settings.identity())
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
    check_identity(study.study_name, study.user_attrs[CONFIG_ATTR], settings)


def check_identity(name: str, stored: dict, settings: SweepSettings) -> None:
    """Refuse a worker whose identity differs from the study's, naming the study and every
    difference (``key=<study's> there, <this worker's> here``)."""
    mine = settings.identity()
    differ = [f"{key}={stored.get(key, '(unset)')!r} there, {mine.get(key, '(unset)')!r} here"
              for key in sorted(set(stored) | set(mine)) if stored.get(key) != mine.get(key)]
    if differ:
        raise ValueError(f"study {name!r} in {storage_label(settings.storage)} was started with other settings than "
                         f"this worker's: {'; '.join(differ)}. Use the same ones, another study name, or no study "
                         f"name (the default is one study per data set, encoder and settings)")


def check_existing_study(settings: SweepSettings) -> None:
    """Before a worker's run exists: refuse it if a finished set-up of its study has another identity."""
    storage = open_storage(settings.storage, settings.heartbeat)
    try:
        study = optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        return                  # a new study
    if study.user_attrs.get(READY_ATTR):
        check_identity(study.study_name, study.user_attrs[CONFIG_ATTR], settings)


def _is_retry(trial: FrozenTrial) -> bool:
    return RETRY_ATTR in trial.system_attrs


def _claim(storage, trial: FrozenTrial) -> bool:
    """Compare-and-set WAITING → RUNNING: True for exactly one worker."""
    try:
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def next_trial(study: optuna.Study, storage, settings: SweepSettings) -> optuna.Trial | None:
    """The trial this worker runs next, or None when the grid or the budget is used up.

    Dead workers' trials are failed and requeued first; requeued trials run before new ones.
    """
    if heartbeat_enabled(storage):
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


def run_trial(study: optuna.Study, storage, trial: optuna.Trial, objective: Objective,
              settings: SweepSettings, parent_run_id: str) -> TrialState:
    """Run one trial as an MLflow run nested under the sweep's parent and tell Optuna its outcome.

    The objective calls ``report(epoch, value)`` after each epoch (epochs from 1); Optuna records
    the best value so far, the pruners' yardstick. Validation NLL spikes in early epochs even in
    good trials: raw, a spike in a finished trial keeps poor trials alive under the median rule and
    cuts the best trial under Hyperband (bench/sweep_pruning.py compares the pruners). When the pruner says so (before the last
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
        with Heartbeat(storage, trial._trial_id):
            params = {name: trial.suggest_categorical(name, values) for name, values in settings.space.items()}
            retry_of = storage.get_trial(trial._trial_id).system_attrs.get(RETRY_ATTR)
            tags = {"sweep.role": "trial", "sweep.study": study.study_name, "sweep.trial": str(trial.number),
                    names.LOSS_TAG: settings.loss, **input_tags(settings), **process_tags(),
                    **({"sweep.retry_of": str(retry_of)} if retry_of is not None else {})}
            run = mlflow.start_run(experiment_id=experiment_id, run_name=f"{study.study_name}-trial-{trial.number}",
                                   nested=True, tags=tags)
            try:
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
            except BaseException:
                background.end_run(run.info.run_id, "FAILED")
                raise
            background.end_run(run.info.run_id)   # FINISHED once its figures are logged; the next trial starts now
    except BaseException:   # the MLflow run has ended FAILED; Optuna records the same
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return state


def input_tags(settings: SweepSettings) -> dict[str, str]:
    """The tags that say which data and encoder version a sweep's runs and trials train on."""
    tags = {names.DATA_FINGERPRINT_TAG: settings.data_fingerprint} if settings.data_fingerprint else {}
    if "encoder" in settings.training:
        tags[ENCODER_TAG] = str(settings.training["encoder"])
    return tags


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


def improves_on_finished(study: optuna.Study, value: float) -> bool:
    finished = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return not finished or value < min(finished)


def classifier_objective(settings: SweepSettings) -> Objective:
    """A trial = a classify training (in this process), pruned on the validation cross-entropy of
    each epoch, valued by the validation NLL of the kept (lowest-val_loss) weights.

    Training arguments ``settings.training`` leaves out take the classify stage's defaults. Only a
    trial that beats every finished one logs its model, so the best trial's model is always there
    to be registered and the others cost no disk."""
    import tf_keras

    from multiloss.classification import graph, train

    def objective(trial: optuna.Trial, params: dict[str, float], report: Report) -> float:
        config = train.ClassifierConfig.from_defaults(settings.loss, loss_params=params, **settings.training)

        def hook(epoch: int, logs: dict) -> None:
            report(epoch + 1, float(logs[f"val_{EPOCH_METRIC}"]))

        try:
            trained = train.train_classifier(
                config, epoch_hooks=[hook], extra_metrics=[tf_keras.metrics.CategoricalCrossentropy(name=EPOCH_METRIC)],
                data_fingerprint=settings.data_fingerprint or None)
            value = trained.scores["val"]["nll"]
            if improves_on_finished(trial.study, value):
                trial.set_user_attr(MODEL_URI_ATTR, train.log_unregistered(trained))
                trial.set_user_attr(TAGS_ATTR, {k: str(v) for k, v in trained.registry_tags().items()})
                trial.set_user_attr(CARD_ATTR, trained.card())
            return value
        finally:
            graph.clear_session()   # one worker trains many models (its shared graph stays usable)

    return objective
