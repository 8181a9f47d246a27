"""Where a sweep's study lives, and how a dead worker's trial is found and requeued.

Workers share one study through an Optuna storage: a journal file on one machine (the default,
under the tracking store) or an RDB URL for many. A crashed worker's trial is found by heartbeat
(RDBStorage's own; Optuna's JournalStorage has none, so :class:`HeartbeatJournalStorage` keeps
heartbeats in the journal), failed, and requeued with its parameters by :class:`RetryStaleTrial`,
which also ends its MLflow run KILLED.
"""

from __future__ import annotations

import random
import re
import threading
import time
import warnings
from pathlib import Path

import mlflow
import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from multiloss import paths

MAX_RETRIES = 3
RDB_OPEN_ATTEMPTS = 5
# Trial attributes the storage's machinery reads and writes.
RUN_ID_ATTR = "mlflow_run_id"
HEARTBEAT_ATTR = "sweep.heartbeat"
RETRY_ATTR = "failed_trial"        # set by RetryHeartbeatStaleTrialCallback on a requeued trial


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


def open_rdb_storage(url: str, heartbeat: int) -> _CachedStorage:
    """RDBStorage in the cache Optuna wraps it in for a study, so that the worker claiming trials and
    the study running them share one object: claimed through a bare RDBStorage, a trial is unknown
    to the study's cache and its first parameter fails (KeyError).

    Opening is tried again on a clash: workers started together on an empty database all create
    Optuna's tables, and all but one get a duplicate-object error from PostgreSQL (the next try
    finds the tables)."""
    for attempt in range(1, RDB_OPEN_ATTEMPTS + 1):
        try:
            return _CachedStorage(RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                             heartbeat_stale_trial_callback=RetryStaleTrial()))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == RDB_OPEN_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.2, 0.5) * attempt)


def open_storage(spec: str, heartbeat: int = 60):
    """``""``: the journal file under the tracking store; a URL with ``://``: an RDB (PostgreSQL,
    MySQL, SQLite); anything else: a journal file at that path. Heartbeats every ``heartbeat`` s,
    stale after twice that."""
    if "://" in spec:
        return open_rdb_storage(spec, heartbeat)
    path = Path(spec) if spec else default_journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat, 2 * heartbeat, RetryStaleTrial())


def storage_label(spec: str) -> str:
    return redact(spec) if spec else str(default_journal_path())


def heartbeat_enabled(storage) -> bool:
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """Beats for one trial from a thread while the trial trains (a no-op without heartbeats)."""

    def __init__(self, storage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if heartbeat_enabled(self._storage):
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
