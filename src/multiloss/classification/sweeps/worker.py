"""One sweep worker: join or create the study, run trials until none is left, and summarise the
study if it is then idle.

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
- A crashed worker's trial is found by heartbeat, failed, and requeued with its parameters; its
  MLflow run is closed as KILLED (:mod:`multiloss.classification.sweeps.storage`).
- The MLflow parent is the run of the worker that created the study (its id is a study user
  attribute); every worker's trials are nested directly under it, and a joining worker's own run
  is nested under it too. Whichever worker finds the study idle at its end (nothing running,
  nothing left to take) logs the summary onto the parent and registers the best trial's model.
"""

from __future__ import annotations

import dataclasses

import mlflow
import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from multiloss import names
from multiloss.classification.sweeps.storage import open_storage, storage_label
from multiloss.classification.sweeps.study import (
    OBJECTIVE,
    PARENT_ATTR,
    Objective,
    SweepSettings,
    classifier_objective,
    input_tags,
    next_trial,
    open_study,
    pin_inputs,
    run_trial,
    study_idle,
)
from multiloss.classification.sweeps.summary import register_best, summarise
from multiloss.tracking import background, registry
from multiloss.tracking.store import process_tags


@dataclasses.dataclass
class SweepOutcome:
    study: optuna.Study
    created: bool
    parent_run_id: str
    trials_run: list[int]
    settings: SweepSettings                      # pinned: the data fingerprint and encoder version every trial used
    summary: dict[str, object] | None = None     # set by the worker that found the study idle
    registered_version: str | None = None


def progress(study: optuna.Study, number: int, state: TrialState) -> str:
    """``trial 3 complete: lam=2 val_nll 0.373; best so far 0.221 (trial 1, lam=1)``."""
    trials = study.get_trials(deepcopy=False)
    done = next(t for t in trials if t.number == number)
    point = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in done.params.items())
    value = f" {OBJECTIVE} {done.value:.4g}" if done.value is not None else ""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = min(complete, key=lambda t: t.value) if complete else None
    so_far = (f"; best so far {best.value:.4g} (trial {best.number}, "
              + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()) + ")"
              if best is not None else "; none complete yet")
    return f"trial {number} {state.name.lower()}: {point}{value}{so_far}"


def run_sweep(settings: SweepSettings, objective: Objective | None = None) -> SweepOutcome:
    """One worker, inside the active MLflow run (the stage's): join or create the study, run trials
    until none is left for it, and, if the study is then idle, summarise it and register its best.

    ``objective`` defaults to a classify training (:func:`classifier_objective`); tests pass a cheap one.
    Unpinned ``settings`` are pinned here (:func:`pin_inputs`); the stage pins them before its run.
    """
    own_run = mlflow.active_run()
    if own_run is None:
        raise RuntimeError("run_sweep needs an active MLflow run (use store.stage_run)")
    settings = pin_inputs(settings)
    storage = open_storage(settings.storage, settings.heartbeat)
    study, created = open_study(settings, storage, own_run.info.run_id)
    parent_run_id = study.user_attrs[PARENT_ATTR]
    role = {"sweep.role": "parent"} if created else {"sweep.role": "worker", MLFLOW_PARENT_RUN_ID: parent_run_id}
    mlflow.set_tags({**role, **process_tags(), "sweep.study": study.study_name,
                     "sweep.storage": storage_label(settings.storage), "sweep.sampler": settings.sampler,
                     "sweep.pruner": settings.pruner, names.LOSS_TAG: settings.loss, **input_tags(settings)})
    print(f"sweep: {'created' if created else 'joined'} study {study.study_name!r} in "
          f"{storage_label(settings.storage)} ({settings.sampler}, {settings.n_points} grid points, "
          f"budget {settings.budget} trials, pruner {settings.pruner})", flush=True)
    objective = objective or classifier_objective(settings)
    outcome = SweepOutcome(study, created, parent_run_id, [], settings)
    with registry.models_kept_in_memory():     # every trial starts from the same encoder
        while (trial := next_trial(study, storage, settings)) is not None:
            state = run_trial(study, storage, trial, objective, settings, parent_run_id)
            outcome.trials_run.append(trial.number)
            print(f"sweep: {progress(study, trial.number, state)}", flush=True)
    background.wait_all()                      # every trial's run FINISHED, with its figures
    if study_idle(study, settings):
        outcome.summary = summarise(study, settings, parent_run_id)
        outcome.registered_version = register_best(study, parent_run_id)
        if parent_run_id != own_run.info.run_id:
            mlflow.MlflowClient().set_terminated(parent_run_id, "FINISHED")
    else:
        print("sweep: other workers still have trials running; the last one to finish summarises", flush=True)
    return outcome
