"""Two ``sweep`` workers in separate processes on one PostgreSQL Optuna storage, logging to the team
server: the one that joined is SIGKILLed mid-trial, the other retries its trial, and every grid
point ends COMPLETE or PRUNED exactly once under one parent run. The objective is the cheap one of
the journal test (tests/classification/test_sweeps.py): later trials look worse, so the median
pruner stops them."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from multiloss.classification.sweeps.storage import open_storage
from multiloss.classification.sweeps.study import PARENT_ATTR
from multiloss.tracking import store
from tests.classification.test_sweeps import children

pytestmark = pytest.mark.team

LAMS = [0.5, 1.0, 2.0, 5.0]

WORKER = textwrap.dedent("""
    import json, os, pathlib, sys, time
    import multiloss
    from multiloss.classification.sweeps.study import PARENT_ATTR, SweepSettings
    from multiloss.classification.sweeps.worker import run_sweep
    from multiloss.tracking import store

    folder, storage, lams = pathlib.Path(sys.argv[1]), sys.argv[2], [float(v) for v in sys.argv[3].split(",")]
    settings = SweepSettings("cal_cce", {"lam": lams}, {"epochs": 3}, study="team", storage=storage,
                             heartbeat=1, pruner="median")

    def objective(trial, params, report):
        # the worker whose run is the parent survives; the one that joined is killed in its first trial
        role = "survivor" if trial.study.user_attrs[PARENT_ATTR] == run.info.run_id else "doomed"
        (folder / f"started-{role}-{trial.number}").write_text(str(os.getpid()))
        if role == "doomed":
            time.sleep(600)
        if not (folder / "killed").exists():      # the survivor's first trial waits for the kill
            deadline = time.time() + 120
            while not (folder / "killed").exists() and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(2.5)                         # past the grace period (twice the 1 s heartbeat)
        for epoch in (1, 2, 3):
            report(epoch, trial.number + params["lam"] / 100 + 1 / epoch)
        return trial.number + params["lam"] / 100

    with store.stage_run("sweeps", run_name="team worker") as run:
        outcome = run_sweep(settings, objective)
    print("RAN", run.info.run_id, json.dumps(outcome.trials_run), flush=True)
""")


def started(folder, role: str) -> list:
    return sorted(folder.glob(f"started-{role}-*"))


def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_retried(team, as_user, tmp_path):
    storage = team.stack.storage_url()
    store.ensure_experiment("sweeps")        # the experiment exists before the workers race to create it
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = team.env("editor")
    workers = [subprocess.Popen([sys.executable, str(script), str(tmp_path), storage, ",".join(map(str, LAMS))],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    try:
        deadline = time.time() + 180
        while not (started(tmp_path, "doomed") and started(tmp_path, "survivor")):
            for worker in workers:
                assert worker.poll() is None, worker.stdout.read()[-3000:]
            assert time.time() < deadline, "the workers never both held a trial"
            time.sleep(0.2)
        doomed_pid = int(started(tmp_path, "doomed")[0].read_text())
        doomed = next(w for w in workers if w.pid == doomed_pid)
        survivor = next(w for w in workers if w is not doomed)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        (tmp_path / "killed").write_text("")
        out = survivor.communicate(timeout=180)[0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert survivor.returncode == 0, out[-3000:]
    assert doomed.returncode == -signal.SIGKILL
    ran = re.findall(r"^RAN (\S+) (\[.*\])$", out, re.M)
    assert len(ran) == 1, out[-3000:]
    survivor_run, trials_run = ran[0][0], json.loads(ran[0][1])

    study = optuna.load_study(study_name="team", storage=open_storage(storage, 1))
    trials = study.get_trials()
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1, [(t.number, t.state) for t in trials]
    killed = killed[0]
    assert killed.number == int(started(tmp_path, "doomed")[0].name.rsplit("-", 1)[1])
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params
    assert trials_run[1] == retry[0].number              # the survivor's next trial was the retry
    ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(ended) == len(trials) - 1 and sorted(t.params["lam"] for t in ended) == LAMS   # each point once
    assert {TrialState.COMPLETE, TrialState.PRUNED} == {t.state for t in ended}

    # MLflow: the survivor's run is the parent; the killed worker's run and every trial's are under it
    parent_id = study.user_attrs[PARENT_ATTR]
    assert parent_id == survivor_run
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.data.tags["sweep.role"] == "parent" and parent.info.status == "FINISHED"
    nested = children(parent_id)
    worker_runs = [r for r in nested if r.data.tags["sweep.role"] == "worker"]
    assert len(worker_runs) == 1 and worker_runs[0].data.tags["mlflow.parentRunId"] == parent_id
    trial_runs = {int(r.data.tags["sweep.trial"]): r for r in nested if r.data.tags["sweep.role"] == "trial"}
    assert sorted(trial_runs) == sorted(t.number for t in trials)
    assert {r.info.run_id for r in trial_runs.values()} == {t.user_attrs["mlflow_run_id"] for t in trials}
    dead = trial_runs[killed.number]
    assert dead.info.status == "KILLED" and dead.data.tags["retried"] == "true"
    assert trial_runs[retry[0].number].data.tags["sweep.retry_of"] == str(killed.number)
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    assert parent.data.tags["sweep.n_complete"] == str(n_complete)
    assert parent.data.tags["sweep.n_pruned"] == str(len(ended) - n_complete)
    assert os.environ["MLFLOW_TRACKING_URI"] == team.url      # all of it on the team server
